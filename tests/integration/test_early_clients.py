"""Clients made before ``register()``: a write through any client of a registered
session never leaves a registered client serving the value it replaced.

botocore copies a session's hooks into a client when it creates it; the
package tracks the DynamoDB clients each session creates from its import on,
and ``register(session)`` attaches to them (README, "Which clients are cached").
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import boto3

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import REGION, make_table

A = {"pk": {"S": "a"}}
ROOT = Path(__file__).resolve().parents[2]


def value(client: Any) -> tuple[str, bool]:
    answer = client.get_item(TableName="items", Key=A)
    return answer["Item"]["v"]["S"], "CacheMetadata" in answer


def test_a_client_made_before_register_invalidates_and_is_cached(
    session: boto3.Session, redis_server: RedisServer, namespace: str
) -> None:
    early = session.client("dynamodb")  # before register(): no hooks from botocore
    make_table(early, "items")
    early.put_item(TableName="items", Item={**A, "v": {"S": "1"}})
    registration = ddbcache_hooks.register(session, redis_server.url, namespace=namespace)
    try:
        late = session.client("dynamodb")
        assert [value(late), value(late)] == [("1", False), ("1", True)]
        early.put_item(TableName="items", Item={**A, "v": {"S": "2"}})
        reads = [value(late) for _ in range(20)]
        stale = sum(v != "2" for v, _ in reads)
        print(f"20 reads after the early client's write: {stale} stale")
        assert stale == 0
        assert value(early) == ("2", True)  # and it is served from the cache too
    finally:
        registration.unregister()


def test_register_again_after_unregister_covers_the_clients_made_meanwhile(
    session: boto3.Session, redis_server: RedisServer, namespace: str
) -> None:
    first = ddbcache_hooks.register(session, redis_server.url, namespace=namespace)
    c = session.client("dynamodb")
    make_table(c, "items")
    first.unregister()
    between = session.client("dynamodb")  # made while nothing is registered
    second = ddbcache_hooks.register(session, redis_server.url, namespace=namespace)
    try:
        reader = session.client("dynamodb")
        for writer in (c, between):
            for n in range(3):
                writer.put_item(TableName="items", Item={**A, "v": {"S": f"{id(writer)}-{n}"}})
                assert value(reader)[0] == f"{id(writer)}-{n}"
                assert value(reader) == (f"{id(writer)}-{n}", True)
    finally:
        second.unregister()


def test_a_client_made_before_the_package_was_imported_is_not_covered(
    redis_server: RedisServer, namespace: str, moto_url: str
) -> None:
    """What README says: such a client is unknown to the session's registration;
    registering the client itself covers it."""
    script = textwrap.dedent(
        f"""
        import boto3
        session = boto3.Session(region_name={REGION!r})
        early = session.client("dynamodb", endpoint_url={moto_url!r})
        import ddbcache_hooks
        from ddbcache_hooks import plugin, tracking
        ddbcache_hooks.register(session, {redis_server.url!r}, namespace={namespace!r})
        print("tracked", len(tracking.clients_of(session.events)))
        print("attached by the session", early in plugin._attached)
        ddbcache_hooks.register(early, {redis_server.url!r}, namespace={namespace!r})
        print("attached by itself", early in plugin._attached)
        """
    )
    # No DDBCACHE_* variable: with one, the start-up hook imports the package before
    # the script runs (then even this client is tracked).
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDBCACHE_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == [
        "tracked 0",
        "attached by the session False",
        "attached by itself True",
    ], out.stdout
