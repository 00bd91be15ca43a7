"""Held invalidations reach Redis without the writer's help: in the background, and at exit.

A writer process (a real subprocess) writes while Redis cannot take the
invalidation, then goes idle or exits; another process reads. The old entry
must stop being served as soon as Redis takes writes again, without the
writer making another call.

Redis is cut off for the writer alone (its ACL user is switched off and its
connections killed), not restarted: a restarted server is another server
(a new replication id) and discards the old entry by itself.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
import redis

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import REGION, make_table

KEY = {"pk": {"S": "a"}}

WRITER = textwrap.dedent(
    """
    import json, sys, time
    import boto3, ddbcache_hooks
    from ddbcache_hooks import resilience

    moto_url, redis_url, namespace, mode = sys.argv[1:5]
    if mode == "exit":  # no background retry in time: only the exit flush can deliver
        resilience.RETRY_FIRST_S = resilience.RETRY_MAX_S = 3600
    session = boto3.Session(region_name="us-east-1")
    registration = ddbcache_hooks.register(
        session, redis_url, namespace=namespace, breaker_threshold=1
    )
    c = session.client("dynamodb", endpoint_url=moto_url)
    print("ready", flush=True)
    sys.stdin.readline()  # Redis is down now
    c.put_item(TableName="items", Item={"pk": {"S": "a"}, "v": {"S": "new"}})
    if mode == "exit":
        time.sleep(0.5)  # the worker's first attempt (Redis still down) is made, none after
    print("written", len(registration._protocol.backlog), flush=True)
    sys.stdin.readline()  # idle until told to report, then exit without another call
    print(json.dumps(registration.stats()), flush=True)
    """
)


ASYNC_WRITER = textwrap.dedent(
    """
    import asyncio, json, sys
    import aioboto3, ddbcache_hooks
    from ddbcache_hooks import resilience

    moto_url, redis_url, namespace, mode = sys.argv[1:5]
    resilience.RETRY_FIRST_S = resilience.RETRY_MAX_S = 3600  # only the exit flush delivers


    async def main():
        session = aioboto3.Session(region_name="us-east-1")
        registration = await ddbcache_hooks.register_async(
            session, redis_url, namespace=namespace, breaker_threshold=1
        )
        loop = asyncio.get_running_loop()
        async with session.client("dynamodb", endpoint_url=moto_url) as c:
            print("ready", flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)
            await c.put_item(TableName="items", Item={"pk": {"S": "a"}, "v": {"S": "new"}})
            await asyncio.sleep(0.5)  # the worker's first attempt is made, none after
            print("written", len(registration._protocol.backlog), flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)
            print(json.dumps(registration.stats()), flush=True)


    asyncio.run(main())  # the loop is gone before the interpreter exits
    """
)


class Writer:
    def __init__(self, tmp_path: Path, moto_url: str, redis_url: str, namespace: str, mode: str):
        script = tmp_path / "writer.py"
        script.write_text(ASYNC_WRITER if mode == "async exit" else WRITER)
        self.process = subprocess.Popen(
            [sys.executable, str(script), moto_url, redis_url, namespace, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.line() == "ready"

    def line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def tell(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def finish(self) -> str:
        self.tell()
        report = self.line()
        assert self.process.wait(timeout=30) == 0
        return report


class Shared:
    """One server; the writer connects as its own ACL user, which can be cut off."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.admin = redis.Redis(port=server.port)
        self.admin.acl_setuser(
            "writer",
            enabled=True,
            passwords=["+secret"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
        self.url = self.server.url
        self.writer_url = f"redis://writer:secret@127.0.0.1:{server.port}"

    def cut_writer(self) -> None:
        """Redis is down for the writer: it can neither use nor open a connection."""
        self.admin.acl_setuser("writer", enabled=False)
        self.admin.client_kill_filter(user="writer")

    def restore_writer(self) -> None:
        self.admin.acl_setuser("writer", enabled=True)


@pytest.fixture
def shared_server() -> Iterator[Shared]:
    with RedisServer() as server:
        shared = Shared(server)
        yield shared
        shared.admin.close()


@pytest.fixture
def reader(
    moto_url: str, shared_server: Shared, namespace: str
) -> Iterator[Callable[[], tuple[bool, str]]]:
    session = boto3.Session(region_name=REGION)
    # settle_ms=0: the old entry keeps its full TTL (a fill right after a write
    # would otherwise expire with the settle window, and nothing would be stale).
    registration = ddbcache_hooks.register(
        session, shared_server.url, namespace=namespace, settle_ms=0
    )
    c = session.client("dynamodb", endpoint_url=moto_url)
    make_table(c, "items")
    c.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
    c.get_item(TableName="items", Key=KEY)

    def read() -> tuple[bool, str]:
        """(a cache hit, the value); Redis errors of the reader show as misses."""
        response = c.get_item(TableName="items", Key=KEY)
        return "CacheMetadata" in response, response["Item"]["v"]["S"]

    assert read() == (True, "old")
    yield read
    registration.unregister()


def until(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll (bounded) for what another process does in the background."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


def test_an_idle_writers_invalidation_is_replayed_in_the_background(
    tmp_path: Path,
    moto_url: str,
    shared_server: Shared,
    namespace: str,
    reader: Callable[[], tuple[bool, str]],
) -> None:
    writer = Writer(tmp_path, moto_url, shared_server.writer_url, namespace, "idle")
    shared_server.cut_writer()
    writer.tell()
    assert writer.line() == "written 1"  # held: Redis was down
    assert reader() == (True, "old")  # stale until the invalidation lands
    shared_server.restore_writer()
    # The writer makes no call from here on; only its background worker can help.
    # (Without it, the reader would be served "old" for the entry's whole TTL.)
    assert until(lambda: reader() == (True, "new"))  # served from Redis again, not stale
    assert '"backlog_replayed": 1' in writer.finish()


@pytest.mark.parametrize("mode", ["exit", pytest.param("async exit", marks=pytest.mark.aio)])
def test_held_invalidations_are_flushed_at_exit(
    mode: str,
    tmp_path: Path,
    moto_url: str,
    shared_server: Shared,
    namespace: str,
    reader: Callable[[], tuple[bool, str]],
) -> None:
    writer = Writer(tmp_path, moto_url, shared_server.writer_url, namespace, mode)
    shared_server.cut_writer()
    writer.tell()
    assert writer.line() == "written 1"
    shared_server.restore_writer()
    # The old entry is still served: this writer retries nothing before it exits.
    assert reader() == (True, "old")
    writer.finish()  # interpreter exit delivers what is held
    assert reader() == (False, "new")


def test_a_full_redis_serves_hits_and_keeps_the_breaker_closed(
    namespace: str, aws: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="ddbcache_hooks")
    with RedisServer(extra_args=["--maxmemory-policy", "noeviction"]) as server:
        session = boto3.Session(region_name=REGION)
        registration = ddbcache_hooks.register(
            session, server.url, namespace=namespace, breaker_threshold=1
        )
        c = session.client("dynamodb")
        make_table(c, "items")
        other = {"pk": {"S": "b"}}
        for key in (KEY, other):
            c.put_item(TableName="items", Item={**key, "v": {"S": "old"}})
        c.get_item(TableName="items", Key=KEY)  # cached before Redis fills up
        admin = redis.Redis(port=server.port)
        for n in range(200):
            admin.set(f"junk{n}", b"x" * 10_000)
        admin.config_set("maxmemory", "1mb")  # now over the limit: writes are refused
        for _ in range(5):
            assert "CacheMetadata" in c.get_item(TableName="items", Key=KEY)  # hits go on
            assert c.get_item(TableName="items", Key=other)["Item"]["v"] == {"S": "old"}
        stats = registration.stats()
        assert stats["redis_oom"] >= 5 and stats["errors"] == 0 and stats["breaker_opened"] == 0
        assert registration._protocol.breaker.state == "closed"
        # Replacing a table's tokens deletes first: a full server still takes it
        # (docs/consistency.md, "A full Redis"), and nothing is held.
        assert registration.invalidate_table("items") is True
        assert not registration._protocol.backlog
        assert "CacheMetadata" not in c.get_item(TableName="items", Key=KEY)
        admin.config_set("maxmemory", "0")  # room again: the cache fills again
        c.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" in c.get_item(TableName="items", Key=KEY)
        assert registration.stats()["backlog_replayed"] == 0
        registration.unregister()
