"""Exact Redis round-trip counts (DESIGN §7) and the lease race, on a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from ddbcache_hooks.scripts import READ_HITS
from tests.conftest import (
    NO_SETTLE,
    CallCounter,
    CountingConnection,
    commands_of,
    counting_redis,
    make_table,
    prove_read_access,
)

KEY = {"pk": {"S": "a"}}


@pytest.fixture
def counted(
    session: boto3.Session, redis_server: RedisServer, namespace: str
) -> Iterator[tuple[Any, type[CountingConnection]]]:
    """A client registered with a Redis client that counts round trips."""
    cache, Counting = counting_redis(redis_server.port)
    registration = ddbcache_hooks.register(
        session,
        cache,
        namespace=namespace,
        key_schema={"items": "pk", "pairs": ("pk", "sk")},
    )
    c = session.client("dynamodb")
    make_table(c, "items")
    make_table(c, "pairs", ("pk", "S"), ("sk", "N"))
    Counting.sends = 0
    yield c, Counting
    registration.unregister()


def rounds(counter: type[CountingConnection], action: Any) -> int:
    before = counter.sends
    action()
    return counter.sends - before


def sent_by(counter: type[CountingConnection], action: Any) -> list[list[tuple[bytes, ...]]]:
    """The commands ``action`` sent, one list per round trip."""
    before = len(counter.sent)
    action()
    return [commands_of(packed) for packed in counter.sent[before:]]


def test_hit_is_one_command_miss_three_round_trips(counted: tuple[Any, Any]) -> None:
    """A hit is one command with one reply (the read-only hit script). A miss is
    that, the lookup script (lease) and the fill."""
    c, counter = counted
    c.put_item(TableName="items", Item=KEY)
    prove_read_access(c, "items")
    assert rounds(counter, lambda: c.get_item(TableName="items", Key=KEY)) == 3
    (hit,) = sent_by(counter, lambda: c.get_item(TableName="items", Key=KEY))
    assert [command[:2] for command in hit] == [(b"EVALSHA", READ_HITS.sha.encode())]
    other = {"pk": {"S": "b"}}
    assert rounds(counter, lambda: c.get_item(TableName="items", Key=other)) == 3
    assert rounds(counter, lambda: c.get_item(TableName="items", Key=other)) == 1
    keys = [{"pk": {"S": str(i)}} for i in range(99)] + [KEY]
    batch = {"items": {"Keys": keys}}
    # 99 misses and a hit: the hit read, the lookup script, the real call's fills.
    assert rounds(counter, lambda: c.batch_get_item(RequestItems=batch)) == 3
    # 100 hits: one round trip, the HMGETs of the entries and their table's tokens,
    # then one hit script (after them) for the server's clock and identity.
    (hits,) = sent_by(counter, lambda: c.batch_get_item(RequestItems=batch))
    assert [command[0] for command in hits] == [b"HMGET"] * 101 + [b"EVALSHA"]
    assert hits[-1][:3] == (b"EVALSHA", READ_HITS.sha.encode(), b"1")


def test_a_restarted_server_reloads_the_hit_script(
    counted: tuple[Any, Any], redis_server: RedisServer
) -> None:
    """A server that forgot its scripts (restart, SCRIPT FLUSH) answers NOSCRIPT:
    the script is loaded and the hit read sent again."""
    c, counter = counted
    c.put_item(TableName="items", Item=KEY)
    prove_read_access(c, "items")
    c.get_item(TableName="items", Key=KEY)
    redis.Redis(port=redis_server.port).script_flush()
    assert "CacheMetadata" in c.get_item(TableName="items", Key=KEY)
    assert rounds(counter, lambda: c.get_item(TableName="items", Key=KEY)) == 1


@pytest.mark.parametrize(
    "write",
    [
        lambda c: c.put_item(TableName="items", Item={**KEY, "v": {"S": "x"}}),
        lambda c: c.update_item(
            TableName="items",
            Key=KEY,
            UpdateExpression="SET v = :v",
            ExpressionAttributeValues={":v": {"S": "y"}},
        ),
        lambda c: c.delete_item(TableName="items", Key=KEY),
    ],
    ids=["put", "update", "delete"],
)
def test_single_item_write_is_one_round_trip(counted: tuple[Any, Any], write: Any) -> None:
    c, counter = counted
    assert rounds(counter, lambda: write(c)) == 1


QUERY: dict[str, Any] = {
    "TableName": "pairs",
    "KeyConditionExpression": "pk = :p AND sk > :s",
    "ExpressionAttributeValues": {":p": {"S": "a"}, ":s": {"N": "0"}},
}


@pytest.mark.parametrize("mode", ["partition", "write", "ttl"])
def test_query_pages_hit_one_miss_three_write_one_in_every_mode(
    session: boto3.Session, redis_server: RedisServer, namespace: str, mode: str
) -> None:
    """The partition token is read with the entry (by the hit script or the lookup)."""
    cache, counter = counting_redis(redis_server.port)
    registration = ddbcache_hooks.register(
        session,
        cache,
        namespace=namespace,
        key_schema={"pairs": ("pk", "sk")},
        query_invalidation=mode,
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "pairs", ("pk", "S"), ("sk", "N"))
        c.put_item(TableName="pairs", Item={"pk": {"S": "a"}, "sk": {"N": "1"}})
        assert rounds(counter, lambda: c.query(**QUERY)) == 3
        assert rounds(counter, lambda: c.query(**QUERY)) == 1
        scan = [rounds(counter, lambda: c.scan(TableName="pairs")) for _ in range(3)]
        # Admission: not leased, then leased and filled, then a hit; each of the
        # first two reads its hits first.
        assert scan == [2, 3, 1]
        put = {"pk": {"S": "a"}, "sk": {"N": "2"}}
        assert rounds(counter, lambda: c.put_item(TableName="pairs", Item=put)) == 1
        assert rounds(counter, lambda: c.delete_item(TableName="pairs", Key=put)) == 1
        writes = [
            {"PutRequest": {"Item": {"pk": {"S": str(i)}, "sk": {"N": "1"}}}} for i in range(25)
        ]
        assert rounds(counter, lambda: c.batch_write_item(RequestItems={"pairs": writes})) == 1
        statement = {
            "Statement": "UPDATE pairs SET v = ? WHERE pk = ? AND sk = ?",
            "Parameters": [{"S": "x"}, {"S": "a"}, {"N": "1"}],
        }
        assert rounds(counter, lambda: c.execute_statement(**statement)) == 1
    finally:
        registration.unregister()


def test_batched_writes_are_one_round_trip(counted: tuple[Any, Any]) -> None:
    c, counter = counted
    items = [{"PutRequest": {"Item": {"pk": {"S": str(i)}}}} for i in range(25)]
    assert rounds(counter, lambda: c.batch_write_item(RequestItems={"items": items})) == 1
    transaction = [
        {"Delete": {"TableName": "items", "Key": {"pk": {"S": str(i)}}}} for i in range(10)
    ]
    assert rounds(counter, lambda: c.transact_write_items(TransactItems=transaction)) == 1


def test_put_learns_the_key_schema_once(
    session: boto3.Session, redis_server: RedisServer, namespace: str
) -> None:
    """Without key_schema, the first PutItem of a table costs one DescribeTable."""
    registration = ddbcache_hooks.register(
        session, redis.Redis(port=redis_server.port), namespace=namespace
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        calls = CallCounter().attach(c)
        for value in "abc":
            c.put_item(TableName="items", Item={**KEY, "v": {"S": value}})
        assert calls["DescribeTable"] == 1
        # A second process (a new registration) finds the schema in Redis.
        other = boto3.Session(region_name="us-east-1")
        second = ddbcache_hooks.register(
            other, redis.Redis(port=redis_server.port), namespace=namespace
        )
        try:
            c2 = other.client("dynamodb")
            calls2 = CallCounter().attach(c2)
            c2.put_item(TableName="items", Item=KEY)
            assert calls2["DescribeTable"] == 0
        finally:
            second.unregister()
    finally:
        registration.unregister()


def test_fill_racing_a_write_is_discarded(
    session: boto3.Session, redis_server: RedisServer, namespace: str
) -> None:
    """Reader reads the old value, a write lands and invalidates, then the reader fills.

    The interleaving is forced with a handler registered before the library's:
    it runs after DynamoDB answered the read and before the fill.
    """
    writer = boto3.Session(region_name="us-east-1").client("dynamodb")
    raced = []

    def write_between_read_and_fill(**_: Any) -> None:
        if not raced:
            raced.append(True)
            writer.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}})

    session.events.register("after-call.dynamodb.GetItem", write_between_read_and_fill)
    registration = ddbcache_hooks.register(
        session, redis.Redis(port=redis_server.port), namespace=namespace
    )
    ddbcache_hooks.register(writer, redis.Redis(port=redis_server.port), namespace=namespace)
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        c.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
        first = c.get_item(TableName="items", Key=KEY)
        assert first["Item"]["v"] == {"S": "old"}  # what DynamoDB returned before the write
        assert registration.stats()["fills_discarded"] == 1
        after = c.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" not in after and after["Item"]["v"] == {"S": "new"}
    finally:
        registration.unregister()


def test_concurrent_misses_wait_for_one_filler(
    session: boto3.Session, redis_server: RedisServer, namespace: str
) -> None:
    """The first miss holds the lease while DynamoDB answers slowly; the others wait for it."""
    registration = ddbcache_hooks.register(
        session, redis.Redis(port=redis_server.port), namespace=namespace, lease_wait_ms=5000
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        c.put_item(TableName="items", Item=KEY)
        calls = CallCounter().attach(c)
        release = threading.Event()
        # Runs before the library's handler: the filler holds its lease until released.
        c.meta.events.register_first("after-call.dynamodb.GetItem", lambda **_: release.wait(5))
        results: list[dict[str, Any]] = []

        def read() -> None:
            results.append(c.get_item(TableName="items", Key=KEY))

        threads = [threading.Thread(target=read) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while registration.stats()["lease_waits"] < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert registration.stats()["lease_waits"] == 7, registration.stats()
        release.set()
        for t in threads:
            t.join()
        assert calls["GetItem"] == 1
        assert sum("CacheMetadata" in r for r in results) == 7
        assert all(r["Item"] == KEY for r in results)
    finally:
        registration.unregister()


def test_a_zlib_entry_of_the_previous_format_is_a_hit(
    session: boto3.Session, redis_server: RedisServer, namespace: str
) -> None:
    """A large entry an older release stored (zlib) is served by one writing zstd."""
    from ddbcache_hooks.codec import COMPRESSED, ZSTD, Codec

    old_session = boto3.Session(region_name="us-east-1")
    old = ddbcache_hooks.register(
        old_session, redis.Redis(port=redis_server.port), namespace=namespace
    )
    old._protocol.codec = Codec(
        compress_min_bytes=old._protocol.codec.compress_min_bytes, zstd=False
    )
    new = ddbcache_hooks.register(session, redis.Redis(port=redis_server.port), namespace=namespace)
    try:
        writer = old_session.client("dynamodb")
        make_table(writer, "items")
        big = {**KEY, "v": {"S": "x" * 40_000}}
        writer.put_item(TableName="items", Item=big)
        writer.get_item(TableName="items", Key=KEY)  # the old release fills
        key = old._protocol.planner.item_key(*old.table_refs("items"), KEY)
        stored = redis.Redis(port=redis_server.port).hget(key, "e:")
        assert stored is not None and stored[2] & (COMPRESSED | ZSTD) == COMPRESSED
        reader = session.client("dynamodb")
        calls = CallCounter().attach(reader)
        hit = reader.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" in hit and hit["Item"] == big and calls["GetItem"] == 0
    finally:
        old.unregister()
        new.unregister()


@pytest.mark.parametrize("write_through", [False, True])
def test_write_through_costs_one_round_trip_more_per_write(
    session: boto3.Session, redis_server: RedisServer, namespace: str, write_through: bool
) -> None:
    """Off: a write is one round trip. On: the intent before the send, then the
    completion (the item's invalidation and its fill in one script): two; the hit
    that follows is one, with no DynamoDB read."""
    cache, counter = counting_redis(redis_server.port)
    registration = ddbcache_hooks.register(
        session, cache, namespace=namespace, key_schema={"items": "pk"}, write_through=write_through
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        prove_read_access(c)
        calls = CallCounter().attach(c)
        for op in (
            lambda: c.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}}),
            lambda: c.update_item(
                TableName="items",
                Key=KEY,
                UpdateExpression="SET v = :v",
                ExpressionAttributeValues={":v": {"S": "2"}},
                ReturnValues="ALL_NEW",
            ),
            lambda: c.delete_item(TableName="items", Key=KEY),
        ):
            assert rounds(counter, op) == (2 if write_through else 1)
            c.get_item(TableName="items", Key=KEY)
        assert calls["GetItem"] == (0 if write_through else 3)
    finally:
        registration.unregister()


def test_entries_filled_before_the_upgrade_are_one_command_hits(
    session: boto3.Session, counted: tuple[Any, Any], redis_server: RedisServer, namespace: str
) -> None:
    """The previous releases looked up with the lookup script only (the key layout and
    the entry format are unchanged): what such a process filled is a hit here, read
    with one command."""
    c, counter = counted
    old_session = boto3.Session(region_name="us-east-1")
    old = ddbcache_hooks.register(
        old_session, redis.Redis(port=redis_server.port), namespace=namespace, **NO_SETTLE
    )
    lookup = old._protocol._lookup
    old._protocol._lookup = lambda slots, **kw: lookup(slots, **{**kw, "hits_first": False})
    try:
        writer = old_session.client("dynamodb")
        prove_read_access(writer)
        writer.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
        writer.get_item(TableName="items", Key=KEY)  # the old lookup leases and fills
        prove_read_access(c)
        (hit,) = sent_by(counter, lambda: c.get_item(TableName="items", Key=KEY))
        assert [command[:2] for command in hit] == [(b"EVALSHA", READ_HITS.sha.encode())]
        answer = c.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" in answer and answer["Item"]["v"] == {"S": "old"}
    finally:
        old.unregister()


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
def test_an_async_hit_is_one_command(
    redis_server: RedisServer, namespace: str, moto_url: str
) -> None:
    """The async path reads hits with the same one command, one reply."""
    import asyncio

    import aioboto3
    import redis.asyncio as aredis

    sent: list[bytes] = []

    class Counting(aredis.Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            data = command if isinstance(command, (bytes, str)) else b"".join(command)
            sent.append(data.encode() if isinstance(data, str) else bytes(data))
            await super().send_packed_command(command, check_health)

    admin = boto3.Session(region_name="us-east-1").client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item=KEY)

    async def main() -> None:
        session = aioboto3.Session(region_name="us-east-1")
        pool = aredis.ConnectionPool(port=redis_server.port, connection_class=Counting)
        registration = await ddbcache_hooks.register_async(
            session, aredis.Redis(connection_pool=pool), namespace=namespace
        )
        try:
            async with session.client("dynamodb", endpoint_url=moto_url) as c:
                for _ in range(3):  # the access check's read, the fill, then a hit
                    await c.get_item(TableName="items", Key=KEY)
                before = len(sent)
                answer = await c.get_item(TableName="items", Key=KEY)
                assert "CacheMetadata" in answer
                hit = [commands_of(packed) for packed in sent[before:]]
                assert [[command[:2] for command in trip] for trip in hit] == [
                    [(b"EVALSHA", READ_HITS.sha.encode())]
                ]
        finally:
            registration.unregister()

    asyncio.run(main())
