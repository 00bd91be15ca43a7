"""A full Redis (``maxmemory`` under ``noeviction``) never costs an invalidation.

A real server is filled with junk keys until it refuses writes; a control
proves it refuses a script whose first command needs memory. Then a write
through one registration (this process) and reads through another (a second
process, its own connections): every read after the write returned sees the
write, though the reader's old entries are still there and hits need no memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
from redis.exceptions import OutOfMemoryError

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import REGION, _binary, _valkey_binary, make_table
from tests.readers import A, Reader

READS = 40


@pytest.fixture(scope="module", params=["redis", "valkey"])
def full_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    binary = _binary() if request.param == "redis" else _valkey_binary()
    with RedisServer(binary, extra_args=["--maxmemory-policy", "noeviction"]) as server:
        yield server


@pytest.fixture
def server(full_server: RedisServer) -> Iterator[RedisServer]:
    admin = redis.Redis(full_server.host, full_server.port)
    admin.config_set("maxmemory", 0)
    admin.flushall()
    yield full_server
    admin.config_set("maxmemory", 0)
    admin.flushall()
    admin.close()


def fill_memory(server: RedisServer) -> None:
    """Junk keys until the server refuses writes; then the control."""
    admin = redis.Redis(server.host, server.port)
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", used + 2 * 1024 * 1024)
    count = 0
    for size in (16384, 1024, 64, 1):  # smaller and smaller: until a tiny one is refused
        for _ in range(100_000):
            count += 1
            try:
                admin.set(f"junk:{count}", b"x" * size)
            except OutOfMemoryError:
                break
        else:
            raise AssertionError("the server never refused a write")
    # Memory hovers at the limit (a closed connection's buffers are freed): hold
    # it half a megabyte above, as junk that keeps arriving would.
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", used - 512 * 1024)
    # Control: a script whose first command needs memory is refused (how the
    # token scripts were written before), one that deleted first is not.
    write = "redis.call('HSET', KEYS[1], 'q', 'x')"
    with pytest.raises(OutOfMemoryError):
        admin.eval("redis.call('HGET', KEYS[1], 'q'); " + write, 1, "c")
    admin.eval("redis.pcall('HDEL', KEYS[1], '~'); " + write, 1, "c")
    admin.close()


def setup(moto_url: str, server: RedisServer, namespace: str, mode: str = "partition") -> Any:
    """The table with A = "1" (written by a client outside the cache) and a reader
    holding it in the cache; a writer registration that knows nothing yet."""
    admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "tbl")
    admin.put_item(TableName="tbl", Item={**A, "v": {"S": "1"}})
    reader = Reader(moto_url, server.url, namespace, query_invalidation=mode)
    kind = "get" if mode == "partition" else "query"
    assert reader.read(kind, 2) == [("1", False), ("1", True)]
    session = boto3.Session(region_name=REGION)
    writer = ddbcache_hooks.register(
        session, server.url, namespace=namespace, query_invalidation=mode
    )
    return admin, reader, writer, session.client("dynamodb", endpoint_url=moto_url)


def stale_after(reader: Reader, want: str | None, kind: str = "get") -> int:
    values = reader.read(kind, READS)
    stale = sum(value != want for value, _ in values)
    print(f"{READS} reads after the write: {stale} stale")
    return stale


def full_and_served(server: RedisServer, reader: Reader, kind: str = "get") -> None:
    fill_memory(server)
    # Hits need no memory: the full server still serves the old value.
    assert reader.read(kind, 3) == [("1", True)] * 3


def test_item_write_without_a_known_schema(
    moto_url: str, server: RedisServer, namespace: str
) -> None:
    _, reader, writer, client = setup(moto_url, server, namespace)
    try:
        full_and_served(server, reader)
        client.put_item(TableName="tbl", Item={**A, "v": {"S": "2"}})
        assert stale_after(reader, "2") == 0
    finally:
        reader.close()
        writer.unregister()


def test_table_recreate(moto_url: str, server: RedisServer, namespace: str) -> None:
    _, reader, writer, client = setup(moto_url, server, namespace)
    try:
        full_and_served(server, reader)
        client.delete_table(TableName="tbl")
        make_table(client, "tbl")
        assert stale_after(reader, None) == 0
        client.put_item(TableName="tbl", Item={**A, "v": {"S": "2"}})
        assert stale_after(reader, "2") == 0
    finally:
        reader.close()
        writer.unregister()


def test_write_mode_write(moto_url: str, server: RedisServer, namespace: str) -> None:
    _, reader, writer, client = setup(moto_url, server, namespace, mode="write")
    try:
        full_and_served(server, reader, "query")
        client.update_item(
            TableName="tbl",
            Key=A,
            UpdateExpression="SET v = :v",
            ExpressionAttributeValues={":v": {"S": "2"}},
        )
        assert stale_after(reader, "2", "query") == 0
    finally:
        reader.close()
        writer.unregister()


def test_invalidate_table(moto_url: str, server: RedisServer, namespace: str) -> None:
    admin, reader, writer, _ = setup(moto_url, server, namespace)
    try:
        full_and_served(server, reader)
        admin.put_item(TableName="tbl", Item={**A, "v": {"S": "2"}})  # outside the cache
        assert writer.invalidate_table("tbl") is True
        assert stale_after(reader, "2") == 0
    finally:
        reader.close()
        writer.unregister()
