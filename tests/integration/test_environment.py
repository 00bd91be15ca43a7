"""Switching caching on with environment variables in applications that are not changed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


ROOT = Path(__file__).resolve().parents[2]
#: Runs a script after the start-up hook of this source tree (whatever hook is installed:
#: activation is idempotent, so an installed hook that ran first changes nothing).
WITH_HOOK = (
    "import runpy, sys\n"
    f"exec(open({str(ROOT / 'ddbcache_hooks' / 'ddbcache_hooks.pth')!r}).read())\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def run(command: list[str], moto_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command against the shared moto server, in a namespace of its own."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DDBCACHE_")}
    base["PYTHONPATH"] = str(ROOT)  # this tree's package, not another installed copy
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


# --- what used to be silent is said, once, with the fix --------------------------------


def hooked(app: Path) -> list[str]:
    return [sys.executable, "-c", WITH_HOOK, str(app)]


def test_unknown_variable_is_named_with_the_closest_known_one(
    app: Path, moto_url: str, redis_server: RedisServer
) -> None:
    result = run(
        hooked(app),
        moto_url,
        DDBCACHE_ENABLED="1",
        DDBCACHE_REDIS_URL=redis_server.url,
        DDBCACHE_TTLL="5",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["MISS", "1", "HIT", "1"]
    assert result.stderr.splitlines() == [
        "ddbcache-hooks: unknown variable DDBCACHE_TTLL is ignored; did you mean DDBCACHE_TTL?"
    ]


def test_misspelt_switch_is_named_although_nothing_is_switched_on(
    app: Path, moto_url: str, redis_server: RedisServer
) -> None:
    result = run(hooked(app), moto_url, DDBCACHE_ENABLE="1", DDBCACHE_REDIS_URL=redis_server.url)
    assert result.stdout.split() == ["MISS", "1", "MISS", "1"], result.stderr
    assert result.stderr.splitlines() == [
        "ddbcache-hooks: unknown variable DDBCACHE_ENABLE is ignored; "
        "did you mean DDBCACHE_ENABLED?"
    ]


@pytest.mark.parametrize("spelling", ["Yes", "ON", "true"])
def test_enabled_takes_every_boolean_spelling(
    app: Path, moto_url: str, redis_server: RedisServer, spelling: str
) -> None:
    result = run(
        hooked(app), moto_url, DDBCACHE_ENABLED=spelling, DDBCACHE_REDIS_URL=redis_server.url
    )
    assert result.stdout.split() == ["MISS", "1", "HIT", "1"], result.stderr
    assert result.stderr == ""


def test_enabled_that_is_not_a_boolean_is_said_by_the_app_and_by_info(
    app: Path, moto_url: str, redis_server: RedisServer
) -> None:
    env = {"DDBCACHE_ENABLED": "maybe", "DDBCACHE_REDIS_URL": redis_server.url}
    result = run(hooked(app), moto_url, **env)
    assert result.returncode == 0 and result.stdout.split() == ["MISS", "1", "MISS", "1"]
    said = "DDBCACHE_ENABLED must be a boolean (1/0, true/false, yes/no, on/off), got 'maybe'"
    assert result.stderr.splitlines() == [f"ddbcache-hooks: {said}; caching is off"]
    info = run([sys.executable, "-m", "ddbcache_hooks", "info"], moto_url, **env)
    assert info.returncode == 2 and f"ddbcache info: {said}" in info.stderr.splitlines()


def test_bad_number_names_the_variable_and_the_form(
    app: Path, moto_url: str, redis_server: RedisServer
) -> None:
    result = run(
        hooked(app),
        moto_url,
        DDBCACHE_ENABLED="1",
        DDBCACHE_REDIS_URL=redis_server.url,
        DDBCACHE_TTL="abc",
    )
    assert result.stdout.split() == ["MISS", "1", "MISS", "1"], result.stderr
    assert result.stderr.splitlines() == [
        "ddbcache-hooks: DDBCACHE_TTL must be a positive whole number of seconds, got 'abc'; "
        "caching is off"
    ]


def test_bad_signing_key_is_not_echoed(app: Path, moto_url: str, redis_server: RedisServer) -> None:
    result = run(
        hooked(app),
        moto_url,
        DDBCACHE_ENABLED="1",
        DDBCACHE_REDIS_URL=redis_server.url,
        DDBCACHE_SIGNING_KEY="s3cret-key",
    )
    assert "DDBCACHE_SIGNING_KEY" in result.stderr and "caching is off" in result.stderr
    assert "s3cret" not in result.stderr


RELOADING_APP = textwrap.dedent(
    """
    # A development server's reloader: the child it starts serves the application.
    import os, subprocess, sys
    env = {**os.environ, "WERKZEUG_RUN_MAIN": "true"}
    sys.exit(subprocess.run([sys.executable, sys.argv[1]], env=env).returncode)
    """
)


def test_reloader_child_under_ddbcache_run_is_said_once(
    app: Path, moto_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    reloader = tmp_path / "reloader.py"
    reloader.write_text(RELOADING_APP)
    run_bin = str(Path(sys.executable).parent / "ddbcache-run")
    command = [sys.executable, str(reloader), str(app)]
    plain = run([run_bin, "--redis-url", redis_server.url, *command], moto_url)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.split() == ["MISS", "1", "MISS", "1"]
    lines = plain.stderr.splitlines()
    assert len(lines) == 1, plain.stderr
    assert lines[0].startswith("ddbcache-hooks: DynamoDB clients in this process (pid ")
    assert (
        "are not cached: ddbcache-run caches only the command it started (pid " in lines[0]
        and "and this is a reloader's child process (WERKZEUG_RUN_MAIN is set), which serves "
        "the application. Run `ddbcache-run --children ...` to cache here too"
        in lines[0]
    )
    asked = run([run_bin, "--children", "--redis-url", redis_server.url, *command], moto_url)
    assert asked.stdout.split() == ["MISS", "1", "HIT", "1"], asked.stderr
    assert asked.stderr == ""


def test_any_child_that_makes_clients_is_told_too(
    app: Path, moto_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    spawner = tmp_path / "spawner.py"
    spawner.write_text(RELOADING_APP.replace('"WERKZEUG_RUN_MAIN": "true"', ""))
    run_bin = str(Path(sys.executable).parent / "ddbcache-run")
    result = run(
        [run_bin, "--redis-url", redis_server.url, sys.executable, str(spawner), str(app)],
        moto_url,
    )
    assert result.stdout.split() == ["MISS", "1", "MISS", "1"], result.stderr
    assert "and this is a process the command started. Run `ddbcache-run --children" in (
        result.stderr
    )


def test_child_that_makes_no_dynamodb_client_says_nothing(
    moto_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    quiet = tmp_path / "quiet.py"
    quiet.write_text("import boto3\nboto3.Session(region_name='us-east-1').client('s3')\n")
    spawner = tmp_path / "spawner.py"
    spawner.write_text(RELOADING_APP)
    run_bin = str(Path(sys.executable).parent / "ddbcache-run")
    result = run(
        [run_bin, "--redis-url", redis_server.url, sys.executable, str(spawner), str(quiet)],
        moto_url,
    )
    assert result.returncode == 0 and result.stderr == ""


DEFAULT_SESSION_APP = textwrap.dedent(
    """
    import boto3, ddbcache_hooks, sys
    ddbcache_hooks.register(boto3.Session(), sys.argv[1], namespace=sys.argv[2])
    for _ in range(2):
        client = boto3.client("dynamodb", region_name="us-east-1")   # the default session
        response = client.get_item(TableName="items", Key={"pk": {"S": "a"}})
        print("HIT" if "CacheMetadata" in response else "MISS")
    """
)


def test_client_of_an_unregistered_session_is_said_once_with_the_fix(
    moto_url: str, redis_server: RedisServer, tmp_path: Path, namespace: str
) -> None:
    admin = boto3.Session(region_name="us-east-1").client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item={"pk": {"S": "a"}})
    script = tmp_path / "default_session.py"
    script.write_text(DEFAULT_SESSION_APP)
    result = run([sys.executable, str(script), redis_server.url, namespace], moto_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["MISS", "MISS"]
    assert result.stderr.splitlines() == [
        "ddbcache-hooks: a DynamoDB client made from boto3's default session "
        "(boto3.client() / boto3.resource()) is not cached: register() was given 1 other "
        "session. Call ddbcache_hooks.register() with no session to cache the default "
        "session, or make the clients from the registered session"
    ]
    fixed = script.read_text().replace("register(boto3.Session(), ", "register(None, ")
    script.write_text(fixed)
    result = run([sys.executable, str(script), redis_server.url, namespace], moto_url)
    assert result.stdout.split() == ["MISS", "HIT"] and result.stderr == "", result.stderr


OTHER_SESSION_APP = textwrap.dedent(
    """
    import boto3, ddbcache_hooks, sys
    registered = boto3.Session(region_name="us-east-1")
    ddbcache_hooks.register(registered, sys.argv[1], namespace=sys.argv[2])
    mine = registered.client("dynamodb")
    late = boto3.Session(region_name="us-east-1").client("dynamodb")
    ddbcache_hooks.register(late, sys.argv[1], namespace=sys.argv[2])   # registered itself
    for client in (mine, late, mine, late):
        response = client.get_item(TableName="items", Key={"pk": {"S": "a"}})
        print("HIT" if "CacheMetadata" in response else "MISS")
    other = boto3.Session(region_name="us-east-1").client("dynamodb")
    other.get_item(TableName="items", Key={"pk": {"S": "a"}})
    other.get_item(TableName="items", Key={"pk": {"S": "a"}})
    """
)


def test_clients_of_registered_sessions_or_registered_themselves_say_nothing(
    moto_url: str, redis_server: RedisServer, tmp_path: Path, namespace: str
) -> None:
    admin = boto3.Session(region_name="us-east-1").client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item={"pk": {"S": "a"}})
    script = tmp_path / "other_session.py"
    script.write_text(OTHER_SESSION_APP)
    result = run([sys.executable, str(script), redis_server.url, namespace], moto_url)
    assert result.stdout.split() == ["MISS", "HIT", "HIT", "HIT"], result.stderr
    assert result.stderr.splitlines() == [
        "ddbcache-hooks: a DynamoDB client made from a session that is not registered is not "
        "cached (register() was given 1 other session). Register the session the application "
        "uses, or make the clients from the registered session"
    ]


@pytest.fixture
def password_url(redis_server: RedisServer) -> Iterator[str]:
    """The test server's URL as an ACL user with a password."""
    import redis

    user, password = "u" + uuid.uuid4().hex[:8], "pw-" + uuid.uuid4().hex[:8]
    admin = redis.Redis(host=redis_server.host, port=redis_server.port)
    admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
    try:
        yield f"redis://{user}:{password}@{redis_server.host}:{redis_server.port}/0"
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


def test_one_info_line_says_caching_is_on(
    session: boto3.Session,
    password_url: str,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import ddbcache_hooks

    password = password_url.split(":")[2].split("@")[0]
    masked = password_url.replace(password, "****")
    with caplog.at_level("INFO", logger="ddbcache_hooks"):
        registration = ddbcache_hooks.register(session, password_url, namespace=namespace)
        session.client("dynamodb")
    try:
        lines = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
        assert lines == [
            f"ddbcache-hooks: caching DynamoDB reads of a boto3 session in {masked} "
            f"(namespace {namespace!r}, sync, single node)"
        ]
        assert password not in caplog.text
    finally:
        registration.unregister()


def test_environment_activation_says_caching_is_on(
    app: Path, moto_url: str, password_url: str
) -> None:
    logged = app.with_name("logged.py")
    logged.write_text(
        "import logging\n"
        "logging.basicConfig(level=logging.INFO, format='%(name)s %(levelname)s %(message)s')\n"
        + app.read_text()
    )
    result = run(
        [sys.executable, str(logged)],
        moto_url,
        DDBCACHE_ENABLED="1",
        DDBCACHE_REDIS_URL=password_url,
    )
    assert result.stdout.split() == ["MISS", "1", "HIT", "1"], result.stderr
    password = password_url.split(":")[2].split("@")[0]
    assert password not in result.stderr
    namespace = re.search(r"namespace '(env[0-9a-f]{8})'", result.stderr)
    assert namespace is not None, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("ddbcache_hooks ")]
    assert ours == [
        "ddbcache_hooks INFO ddbcache-hooks: caching DynamoDB reads of every DynamoDB client "
        "(environment "
        f"activation) in {password_url.replace(password, '****')} "
        f"(namespace {namespace.group(1)!r}, sync, single node)"
    ]


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
def test_the_info_line_says_async_and_cluster(
    redis_cluster: Any, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    import aioboto3

    import ddbcache_hooks

    async def main() -> None:
        registration = await ddbcache_hooks.register_async(
            aioboto3.Session(region_name="us-east-1"), redis_cluster.url, namespace=namespace
        )
        registration.unregister()

    with caplog.at_level("INFO", logger="ddbcache_hooks"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "caching DynamoDB reads" in r.getMessage()]
    assert lines == [
        f"ddbcache-hooks: caching DynamoDB reads of an aioboto3 session in {redis_cluster.url} "
        f"(namespace {namespace!r}, async, cluster)"
    ]


AIO_APP = textwrap.dedent(
    """
    import asyncio
    import aioboto3

    # An aioboto3 application that knows nothing about the cache.
    async def main():
        session = aioboto3.Session(region_name="us-east-1")
        async with session.client("dynamodb") as client:
            for _ in range(2):
                response = await client.get_item(TableName="items", Key={"pk": {"S": "a"}})
                print("HIT" if "CacheMetadata" in response else "MISS", response["Item"]["v"]["S"])

    asyncio.run(main())
    """
)

MIXED_APP = textwrap.dedent(
    """
    import asyncio
    import aioboto3
    import boto3

    # boto3 for the sync helpers, aioboto3 for the request handlers: one process.
    sync = boto3.Session(region_name="us-east-1").client("dynamodb")
    key = {"pk": {"S": "a"}}

    def read():
        response = sync.get_item(TableName="items", Key=key)
        return ("HIT" if "CacheMetadata" in response else "MISS") + ":" + response["Item"]["v"]["S"]

    async def write(value):
        async with aioboto3.Session(region_name="us-east-1").client("dynamodb") as client:
            await client.put_item(TableName="items", Item={**key, "v": {"S": value}})

    print(read(), read())
    asyncio.run(write("2"))
    print(read(), read())
    asyncio.run(write("3"))
    print(read())
    """
)


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


@pytest.mark.aio
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # An unchanged aioboto3 app gets hits.
        (AIO_APP, ["MISS", "1", "HIT", "1"]),
        # A boto3 read after an aioboto3 write of the same process is never stale.
        (MIXED_APP, ["MISS:1", "HIT:1", "MISS:2", "HIT:2", "MISS:3"]),
    ],
    ids=["aioboto3-app", "mixed-boto3-aioboto3"],
)
def test_environment_activation_covers_aioboto3(
    source: str,
    expected: list[str],
    tmp_path: Path,
    app: Path,
    moto_url: str,
    redis_server: RedisServer,
) -> None:
    path = tmp_path / "aio_app.py"
    path.write_text(source)
    result = run(
        [sys.executable, str(path)],
        moto_url,
        DDBCACHE_ENABLED="1",
        DDBCACHE_REDIS_URL=redis_server.url,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "own"),
    [
        (["/venv/bin/python", "/venv/bin/ddbcache", "info"], True),
        (["/venv/bin/python", "/venv/bin/ddbcache-run", "flask", "run"], True),
        (["python", "-m", "ddbcache_hooks", "info"], True),
        (["python", "app.py"], False),
        (["python", "-m", "flask", "run", "--debug"], False),
        (["python", "-c", "pass"], False),
    ],
)
def test_the_commands_report_the_variables_themselves(argv: list[str], own: bool) -> None:
    """`ddbcache info` says a bad variable once, not once from the start-up hook and again."""
    from ddbcache_hooks._autoload import own_command

    assert own_command(argv) is own


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
