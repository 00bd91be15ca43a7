"""register() / register_async() options are typed: mypy --strict catches a wrong one."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

RIGHT = """
    from typing_extensions import Unpack

    import ddbcache_hooks
    from ddbcache_hooks import NearCache, Options, Registration, TablePolicy


    def sync() -> Registration:
        return ddbcache_hooks.register(
            None,
            "redis://localhost:6379",
            ttl=60,
            ttl_config={"query": 30},
            consistency="strict",
            include_tables=["orders", "users*"],
            tables={"prices": TablePolicy(stale_if_error_s=0)},
            near_cache=NearCache(max_items=100, ttl_ms=500),
            response_metadata="omit",
        )


    async def aio() -> None:
        await ddbcache_hooks.register_async(None, "redis://localhost:6379", namespace="app")


    def wrapper(**options: Unpack[Options]) -> Registration:
        return ddbcache_hooks.register(None, "redis://localhost:6379", **options)
"""

WRONG = """
    import ddbcache_hooks


    async def main() -> None:
        ddbcache_hooks.register(None, "redis://localhost:6379", ttll=60)
        ddbcache_hooks.register(None, "redis://localhost:6379", consistency="strong")
        ddbcache_hooks.register(None, "redis://localhost:6379", ttl="60")
        await ddbcache_hooks.register_async(None, "redis://localhost:6379", namspace="app")
"""


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """mypy --strict on both examples (one run: the package is checked once)."""
    from mypy import api

    where = tmp_path_factory.mktemp("typed")
    for name, text in (("right.py", RIGHT), ("wrong.py", WRONG)):
        (where / name).write_text(textwrap.dedent(text))
    config = where / "mypy.ini"
    # This worktree's package, not an installed copy; its own modules' findings
    # (untyped botocore and the like) are not what is tested here.
    config.write_text(f"[mypy]\nmypy_path = {ROOT}\nfollow_imports = silent\n")
    stdout, stderr, _ = api.run(
        [
            "--strict",
            "--config-file",
            str(config),
            "--cache-dir",
            str(where / "cache"),
            "--no-error-summary",
            str(where / "right.py"),
            str(where / "wrong.py"),
        ]
    )
    assert not stderr, stderr
    report: dict[str, list[str]] = {"right.py": [], "wrong.py": []}
    for line in stdout.splitlines():
        name = Path(line.split(":", 1)[0]).name
        report.setdefault(name, []).append(line)
    return report


def test_right_options_pass(mypy_report: dict[str, list[str]]) -> None:
    assert mypy_report["right.py"] == []
    assert set(mypy_report) == {"right.py", "wrong.py"}  # nothing reported elsewhere


def test_wrong_options_fail(mypy_report: dict[str, list[str]]) -> None:
    errors = [line for line in mypy_report["wrong.py"] if ": error: " in line]
    print("\n".join(errors))
    wrong = "\n".join(errors)
    assert 'Unexpected keyword argument "ttll" for "register"' in wrong
    assert 'Unexpected keyword argument "namspace" for "register_async"' in wrong
    strong = "Literal['strong']"
    assert f'Argument "consistency" to "register" has incompatible type "{strong}"' in wrong
    assert 'Argument "ttl" to "register" has incompatible type "str"' in wrong
    assert len(errors) == 4
