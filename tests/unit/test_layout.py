"""The package's structure: no import cycle, no room too large, the layers apart.

Imports are read from each module's AST (top-level, inside functions and under
``TYPE_CHECKING`` alike: a type-only or late import is still a dependency a
reader must follow), so the check needs nothing imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ddbcache_hooks"
#: A file above this is two rooms.
MAX_LINES = 910


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The package modules an ``import from`` names (relative or absolute)."""
    if node.level:
        base = module.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, *(node.module.split(".") if node.module else [])])
    else:
        target = node.module or ""
    found = []
    for alias in node.names:
        candidate = f"{target}.{alias.name}"
        if candidate in MODULES:
            found.append(candidate)  # ``from . import store``: the submodule
        elif target in MODULES:
            found.append(target)
    return found


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    deps: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            deps.update(_resolve(module, path.name == "__init__.py", node))
        elif isinstance(node, ast.Import):
            deps.update(alias.name for alias in node.names if alias.name in MODULES)
    deps.discard(module)
    return deps


def graph() -> dict[str, set[str]]:
    return {module: imports_of(module) for module in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(edges.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve_to_package_modules() -> None:
    deps = imports_of("ddbcache_hooks.transport")
    assert {"ddbcache_hooks.connections", "ddbcache_hooks.scripts"} <= deps
    assert "ddbcache_hooks.transport" in imports_of("ddbcache_hooks.streams.consumer")


def test_the_package_has_no_import_cycle() -> None:
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_two_rooms(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES})"


def test_the_pure_layers_do_no_io() -> None:
    """The planner, the protocol and the store's operations never reach a Redis client."""
    edges = graph()
    io = {"ddbcache_hooks.transport", "ddbcache_hooks.connections", "ddbcache_hooks.plugin"}
    for module in (
        "ddbcache_hooks.store",
        "ddbcache_hooks.scripts",
        "ddbcache_hooks.plan",
        "ddbcache_hooks.keys",
        "ddbcache_hooks.protocol",
        "ddbcache_hooks.writes",
    ):
        assert not edges[module] & io, f"{module} imports {sorted(edges[module] & io)}"
    store = (PACKAGE / "store.py").read_text()
    for name in ("class SyncTransport", "class AsyncTransport", "redis.Redis", "RedisCluster"):
        assert name not in store, f"store.py holds {name}"
