"""Switching caching on with environment variables in applications that are not changed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import boto3
import pytest

from ddbcache_hooks._redis_server import RedisServer, free_port
from tests.conftest import make_table

APP = textwrap.dedent(
    """
    import boto3

    # An application that knows nothing about the cache: its own session and client,
    # made at import time.
    session = boto3.Session(region_name="us-east-1")
    client = session.client("dynamodb")

    for _ in range(2):
        response = client.get_item(TableName="items", Key={"pk": {"S": "a"}})
        print("HIT" if "CacheMetadata" in response else "MISS", response["Item"]["v"]["S"])
    """
)

SPAWNING_APP = textwrap.dedent(
    """
    import subprocess, sys
    print("parent", subprocess.run([sys.executable, sys.argv[1]], capture_output=True,
                                   text=True).stdout.split())
    """
)


@pytest.fixture
def app(tmp_path: Path, moto_url: str) -> Path:
    admin = boto3.Session(region_name="us-east-1").client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item={"pk": {"S": "a"}, "v": {"S": "1"}})
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


def run(command: list[str], moto_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command against the shared moto server, in a namespace of its own."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DDBCACHE_")}
    base["AWS_ENDPOINT_URL_DYNAMODB"] = moto_url
    base["DDBCACHE_NAMESPACE"] = "env" + uuid.uuid4().hex[:8]
    return subprocess.run(
        command, env={**base, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def test_enabled_by_environment(app: Path, moto_url: str, redis_server: RedisServer) -> None:
    result = run(
        [sys.executable, str(app)],
        moto_url,
        DDBCACHE_ENABLED="1",
        DDBCACHE_REDIS_URL=redis_server.url,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["MISS", "1", "HIT", "1"]
    assert result.stderr == ""


def test_without_the_variables_nothing_changes(app: Path, moto_url: str) -> None:
    result = run([sys.executable, str(app)], moto_url)
    assert result.returncode == 0 and result.stdout.split() == ["MISS", "1", "MISS", "1"]


def test_unreachable_redis_logs_one_warning_and_runs_uncached(app: Path, moto_url: str) -> None:
    result = run(
        [sys.executable, str(app)],
        moto_url,
        DDBCACHE_ENABLED="1",
        DDBCACHE_REDIS_URL=f"redis://:hunter2@127.0.0.1:{free_port()}",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["MISS", "1", "MISS", "1"]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "caching is off" in lines[0] and "Could not connect" in lines[0]
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DDBCACHE_TTL", "abc"),
        ("DDBCACHE_CONSISTENCY", "maybe"),
        ("DDBCACHE_TTL_CONFIG", "items=3"),
    ],
)
def test_bad_variable_is_named_and_the_app_runs_uncached(
    app: Path, moto_url: str, redis_server: RedisServer, variable: str, value: str
) -> None:
    result = run(
        [sys.executable, str(app)],
        moto_url,
        DDBCACHE_ENABLED="1",
        DDBCACHE_REDIS_URL=redis_server.url,
        **{variable: value},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["MISS", "1", "MISS", "1"]
    assert variable in result.stderr and "caching is off" in result.stderr


def test_missing_redis_url_is_reported(app: Path, moto_url: str) -> None:
    result = run([sys.executable, str(app)], moto_url, DDBCACHE_ENABLED="1")
    assert "DDBCACHE_REDIS_URL" in result.stderr and result.stdout.split()[2] == "MISS"


def test_ddbcache_run(app: Path, moto_url: str, redis_server: RedisServer) -> None:
    bindir = Path(sys.executable).parent
    result = run(
        [str(bindir / "ddbcache-run"), "--redis-url", redis_server.url, sys.executable, str(app)],
        moto_url,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["MISS", "1", "HIT", "1"]


def test_ddbcache_run_does_not_leak_into_children_unless_asked(
    app: Path, moto_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    spawner = tmp_path / "spawner.py"
    spawner.write_text(SPAWNING_APP)
    run_bin = str(Path(sys.executable).parent / "ddbcache-run")
    plain = run(
        [run_bin, "--redis-url", redis_server.url, sys.executable, str(spawner), str(app)], moto_url
    )
    assert "HIT" not in plain.stdout and plain.stdout.count("MISS") == 2, plain.stderr
    asked = run(
        [
            run_bin,
            "--children",
            "--redis-url",
            redis_server.url,
            sys.executable,
            str(spawner),
            str(app),
        ],
        moto_url,
    )
    assert "HIT" in asked.stdout, asked.stderr


def test_explicit_zero_wins_over_code(
    moto_url: str, redis_server: RedisServer, tmp_path: Path, namespace: str
) -> None:
    script = tmp_path / "coded.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import boto3, ddbcache_hooks
            session = boto3.Session(region_name="us-east-1")
            registration = ddbcache_hooks.register(
                session, {redis_server.url!r}, namespace={namespace!r}
            )
            client = session.client("dynamodb")
            for _ in range(2):
                r = client.get_item(TableName="items", Key={{"pk": {{"S": "a"}}}})
                print("HIT" if "CacheMetadata" in r else "MISS")
            print("active", registration.active)
            """
        )
    )
    admin = boto3.Session(region_name="us-east-1").client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item={"pk": {"S": "a"}})
    off = run([sys.executable, str(script)], moto_url, DDBCACHE_ENABLED="0")
    assert off.stdout.split() == ["MISS", "MISS", "active", "False"], off.stderr
    on = run([sys.executable, str(script)], moto_url)
    assert on.stdout.split() == ["MISS", "HIT", "active", "True"], on.stderr


def test_code_wins_over_environment(
    moto_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Options in code apply (here: another namespace), not the environment's."""
    script = tmp_path / "both.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import boto3, ddbcache_hooks
            session = boto3.Session(region_name="us-east-1")
            client = session.client("dynamodb")        # attached by the environment first
            registration = ddbcache_hooks.register(client, {redis_server.url!r}, namespace="code")
            for _ in range(2):
                client.get_item(TableName="items", Key={{"pk": {{"S": "a"}}}})
            print("code hits", registration.stats()["hits"])
            """
        )
    )
    admin = boto3.Session(region_name="us-east-1").client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item={"pk": {"S": "a"}})
    result = run(
        [sys.executable, str(script)],
        moto_url,
        DDBCACHE_ENABLED="1",
        DDBCACHE_REDIS_URL=redis_server.url,
        DDBCACHE_NAMESPACE="env",
    )
    assert result.stdout.split() == ["code", "hits", "1"], result.stderr


def test_no_import_cost_without_the_variable() -> None:
    """The start-up hook imports nothing unless DDBCACHE_ENABLED is set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDBCACHE_")}
    quiet = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], env=env, capture_output=True, text=True
    )
    assert "ddbcache" not in quiet.stderr
    site_packages = {Path(p) for p in sys.path if p.endswith("site-packages")}
    assert any((d / "ddbcache_hooks.pth").exists() for d in site_packages), "hook not installed"
    loud = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"],
        env={**env, "DDBCACHE_ENABLED": "1", "DDBCACHE_REDIS_URL": "redis://x"},
        capture_output=True,
        text=True,
    )
    assert "ddbcache_hooks._autoload" in loud.stderr
    assert "botocore" not in loud.stderr  # nothing heavy until the application imports botocore


HANDLE_APP = textwrap.dedent(
    """
    import boto3, ddbcache_hooks

    early = ddbcache_hooks.current()  # before any client: made now
    print("early", type(early).__name__, early is not None and early.from_environment)
    if early is None:
        raise SystemExit(0)
    client = boto3.Session(region_name="us-east-1").client("dynamodb")

    def read():
        r = client.get_item(TableName="items", Key={"pk": {"S": "a"}})
        return "HIT" if "CacheMetadata" in r else "MISS"

    print(read(), read())
    registration = ddbcache_hooks.current()
    print("same", registration is early, "hits", registration.stats()["item_hits"])
    print("invalidated", registration.invalidate("items", {"pk": {"S": "a"}}), read())
    registration.unregister()
    print("after", ddbcache_hooks.current(), read(), read())
    """
)


def test_current_is_the_environment_registration(
    moto_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    script = tmp_path / "handle.py"
    script.write_text(HANDLE_APP)
    admin = boto3.Session(region_name="us-east-1").client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item={"pk": {"S": "a"}})
    # This worktree's package, for the start-up hook too (site adds PYTHONPATH first).
    root = str(Path(__file__).parents[2])
    on = run(
        [sys.executable, str(script)],
        moto_url,
        DDBCACHE_ENABLED="1",
        DDBCACHE_REDIS_URL=redis_server.url,
        PYTHONPATH=root,
    )
    assert on.returncode == 0, on.stderr
    assert on.stdout.split("\n")[:-1] == [
        "early Registration True",
        "MISS HIT",
        "same True hits 1",
        "invalidated True MISS",
        "after None MISS MISS",  # unregistered: no handle, nothing cached
    ], on.stderr
    off = run([sys.executable, str(script)], moto_url, PYTHONPATH=root)
    assert off.returncode == 0 and off.stdout == "early NoneType False\n", off.stderr
