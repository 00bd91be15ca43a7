"""Build the API reference from the docstrings with pdoc (the nox session ``docs``).

    python docs/build_api_reference.py OUTPUT_DIRECTORY

The reference covers the public modules: ``ddbcache_hooks`` (the names of its
``__all__``), ``ddbcache_hooks.compat`` and ``ddbcache_hooks.streams``. The
build fails on any warning pdoc gives (an unresolvable name, a docstring it
cannot read) and on any public name without a docstring: classes, functions,
methods, properties and attributes. The keys of a ``TypedDict`` are documented
by the class docstring, which must name each of them.
"""

from __future__ import annotations

import sys
import typing
import warnings
from pathlib import Path

import pdoc
import pdoc.doc

MODULES = ("ddbcache_hooks", "ddbcache_hooks.compat", "ddbcache_hooks.streams")
PACKAGE = "ddbcache_hooks"


def undocumented(module: pdoc.doc.Module) -> list[str]:
    """Public names of the module (and of its classes) that have no docstring."""
    missing = [module.fullname] if not module.docstring.strip() else []

    def walk(namespace: pdoc.doc.Namespace[typing.Any]) -> None:
        for name, member in namespace.members.items():
            if name.startswith("_") or not member.taken_from[0].startswith(PACKAGE):
                continue  # private, or inherited from outside the package (Exception.args)
            documented = bool(member.docstring.strip())
            if not documented and isinstance(namespace, pdoc.doc.Class):
                documented = typing.is_typeddict(namespace.obj) and (
                    f"``{name}``" in namespace.docstring
                )
            if not documented:
                missing.append(member.fullname)
            if isinstance(member, pdoc.doc.Class):
                walk(member)

    walk(module)
    return missing


def main(output: Path) -> int:
    import ddbcache_hooks

    # The package imports its public names on first use; pdoc reads module dicts.
    for name in ddbcache_hooks.__all__:
        getattr(ddbcache_hooks, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.render.configure(docformat="google", show_source=False)
        pdoc.pdoc(*MODULES, output_directory=output)
        missing = [name for m in MODULES for name in undocumented(pdoc.doc.Module.from_name(m))]
    problems = [
        f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}"
        for w in caught
        # Deprecations inside third-party libraries are not this package's to fix.
        if not (
            issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))
            and "pdoc" not in w.filename
            and PACKAGE not in w.filename
        )
    ]
    problems += [f"no docstring: {name}" for name in missing]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"API reference: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"API reference written to {output}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
