"""What a reply that never reached its caller leaves behind, and writes that changed nothing.

A stalled Redis, a cancelled task, a field too big to read in time: the cache
must not leave a lease that makes later readers wait, a key that times out on
every call, or a write that DynamoDB applied but nobody invalidated.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
import redis
from botocore.exceptions import ClientError
from redis.backoff import NoBackoff
from redis.retry import Retry

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import REGION, make_table

KEY = {"pk": {"S": "a"}}


def item_hashes(server: RedisServer, namespace: str) -> dict[bytes, dict[bytes, bytes]]:
    """Every item hash of the namespace (entries, leases, markers)."""
    admin = redis.Redis(port=server.port)
    found = {}
    for key in admin.scan_iter(match=f"{namespace}*"):
        if admin.type(key) == b"hash":
            fields = admin.hgetall(key)
            if any(name[:2] in (b"e:", b"l:", b"s") for name in fields):
                found[key] = fields
    return found


def leases(server: RedisServer, namespace: str) -> list[bytes]:
    return [
        name
        for fields in item_hashes(server, namespace).values()
        for name in fields
        if name.startswith(b"l:")
    ]


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``check`` (bounded) for background work to finish."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


@pytest.fixture
def sync_cache(redis_server: RedisServer, namespace: str, aws: None) -> Iterator[tuple[Any, Any]]:
    session = boto3.Session(region_name=REGION)
    registration = ddbcache_hooks.register(
        session, redis_server.url, namespace=namespace, redis_timeout_ms=50
    )
    c = session.client("dynamodb")
    make_table(c, "items")
    yield registration, c
    registration.unregister()


# --- stalls --------------------------------------------------------------------------


def asleep(port: int) -> bool:
    """Whether the server fails to answer a PING within 20 ms."""
    probe = redis.Redis(
        port=port, socket_timeout=0.02, socket_connect_timeout=0.02, retry=Retry(NoBackoff(), 0)
    )
    try:
        probe.ping()
    except (redis.TimeoutError, redis.ConnectionError):  # connecting sends commands too
        return True
    finally:
        probe.close()
    return False


@pytest.mark.parametrize("stall", ["DEBUG SLEEP", "CLIENT PAUSE"])
def test_a_lookup_that_timed_out_in_a_stall_leaves_no_lease(
    stall: str, namespace: str, aws: None
) -> None:
    with RedisServer(extra_args=["--enable-debug-command", "yes"]) as server:
        session = boto3.Session(region_name=REGION)
        registration = ddbcache_hooks.register(
            session, server.url, namespace=namespace, redis_timeout_ms=50
        )
        c = session.client("dynamodb")
        make_table(c, "items")
        c.put_item(TableName="items", Item=KEY)
        admin = redis.Redis(port=server.port)
        sleeper = None
        if stall == "DEBUG SLEEP":
            sleeper = threading.Thread(target=admin.execute_command, args=("DEBUG", "SLEEP", "0.5"))
            sleeper.start()
            assert eventually(lambda: asleep(server.port), timeout=5)
        else:
            admin.execute_command("CLIENT", "PAUSE", "400", "ALL")
        assert c.get_item(TableName="items", Key=KEY)["Item"] == KEY  # served by DynamoDB
        assert registration.stats()["errors"] >= 1  # the lookup timed out in the stall
        if sleeper is not None:
            sleeper.join()
        time.sleep(0.5)  # past the stall in every case: the late lookup has run
        assert leases(server, namespace) == []
        waits = registration.stats()["lease_waits"]
        c.get_item(TableName="items", Key=KEY)  # a miss that fills: nobody else's lease
        assert "CacheMetadata" in c.get_item(TableName="items", Key=KEY)
        assert registration.stats()["lease_waits"] == waits
        registration.unregister()


def test_two_lookups_that_timed_out_give_every_lease_back(
    sync_cache: tuple[Any, Any], redis_server: RedisServer, namespace: str
) -> None:
    """Two lookups of one item lost their replies; the server kept the first one's lease.

    The second found that lease held (a wait) and remembered its own token
    too. Both tokens are released, so the lease the server kept goes and the
    next reader does not wait for a fill that never comes.
    """
    from ddbcache_hooks import store
    from ddbcache_hooks.handlers import drive

    registration, c = sync_cache
    c.put_item(TableName="items", Item=KEY)
    c.get_item(TableName="items", Key=KEY)  # a fill: learn the item's key and field
    ((key, fields),) = item_hashes(redis_server, namespace).items()
    field = next(name for name in fields if name.startswith(b"e:"))[2:].decode()
    c.put_item(TableName="items", Item=KEY)  # the entry goes
    protocol, transport = registration._protocol, registration._transport
    first, second = store.new_token(), store.new_token()
    request = store.LookupRequest(key.decode(), field, key.decode() + ":t", first, 60_000)
    (reply,) = drive(store.lookup([request], 60_000), transport, lambda table: None)
    assert reply.status == 2  # the first lookup's lease, its reply lost
    protocol.orphans.add_leases([(key.decode(), field, first)])
    protocol.orphans.add_leases([(key.decode(), field, second)])  # the waiter's token
    protocol.wake()
    assert eventually(lambda: leases(redis_server, namespace) == [])
    waits = registration.stats()["lease_waits"]
    started = time.monotonic()
    c.get_item(TableName="items", Key=KEY)  # a miss that fills: nobody else's lease
    assert time.monotonic() - started < 0.15
    assert registration.stats()["lease_waits"] == waits
    assert "CacheMetadata" in c.get_item(TableName="items", Key=KEY)


# --- garbage -------------------------------------------------------------------------


def test_a_garbage_field_is_deleted_in_the_background_once(
    sync_cache: tuple[Any, Any],
    redis_server: RedisServer,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registration, c = sync_cache
    c.put_item(TableName="items", Item=KEY)
    c.get_item(TableName="items", Key=KEY)
    [(key, fields)] = item_hashes(redis_server, namespace).items()
    [entry_field] = [name for name in fields if name.startswith(b"e:")]
    admin = redis.Redis(port=redis_server.port)
    admin.hset(key, entry_field, b"\x00" * (64 << 20))  # 64 MiB where an entry was
    with caplog.at_level(logging.WARNING, logger="ddbcache_hooks"):
        assert c.get_item(TableName="items", Key=KEY)["Item"] == KEY
        # Either the lookup timed out on it (the key is deleted in the background),
        # or the hit read got it in time and it failed to decode (the lookup
        # script that drops it runs next): the garbage goes either way.
        assert eventually(lambda: admin.hstrlen(key, entry_field) < 1 << 20)
        for _ in range(5):
            assert c.get_item(TableName="items", Key=KEY)["Item"] == KEY
    # The background worker counts the key after deleting it: the count may trail.
    assert eventually(
        lambda: registration.stats()["poisoned_keys"] + registration.stats()["corrupt_entries"] >= 1
    )
    stats = registration.stats()
    assert stats["poisoned_keys"] <= 1 and stats["breaker_opened"] == 0
    assert stats["hits"] >= 4  # cached again at once
    assert caplog.text.count("larger than any cache entry") == stats["poisoned_keys"]


# --- writes that changed nothing ------------------------------------------------------


def test_a_rejected_write_invalidates_nothing(sync_cache: tuple[Any, Any]) -> None:
    registration, c = sync_cache
    c.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}})
    c.get_item(TableName="items", Key=KEY)
    before = registration.stats()
    with pytest.raises(ClientError) as rejected:
        c.put_item(TableName="items", Item={"other": {"S": "no key attribute"}})
    assert rejected.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as failed:
        c.put_item(
            TableName="items",
            Item={**KEY, "v": {"S": "2"}},
            ConditionExpression="attribute_not_exists(pk)",
        )
    assert failed.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    after = registration.stats()
    assert after["writes_rejected"] == 2
    assert after["invalidations"] == before["invalidations"]
    assert after["table_invalidations"] == before["table_invalidations"]
    hit = c.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" in hit and hit["Item"]["v"] == {"S": "1"}


def test_a_write_with_an_unknown_outcome_still_invalidates(sync_cache: tuple[Any, Any]) -> None:
    registration, c = sync_cache
    c.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}})
    c.get_item(TableName="items", Key=KEY)

    def fail(**_: Any) -> None:
        raise ConnectionResetError("the connection dropped after sending")

    # After the request was sent and applied (an event every supported botocore emits).
    c.meta.events.register_first("response-received.dynamodb.PutItem", fail)
    with pytest.raises(ConnectionResetError):
        c.put_item(TableName="items", Item={**KEY, "v": {"S": "2"}})
    c.meta.events.unregister("response-received.dynamodb.PutItem", fail)
    assert registration.stats()["invalidations"] >= 1
    response = c.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" not in response and response["Item"]["v"] == {"S": "2"}


class Interrupt(BaseException):
    """Like KeyboardInterrupt or gevent.Timeout: botocore runs no after-call-error for it."""


def test_an_interrupted_sync_write_is_invalidated(
    sync_cache: tuple[Any, Any], redis_server: RedisServer, namespace: str
) -> None:
    registration, c = sync_cache
    other = boto3.Session(region_name=REGION)  # another process, as far as the cache knows
    reader = ddbcache_hooks.register(other, redis_server.url, namespace=namespace)
    r = other.client("dynamodb")
    c.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
    r.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" in r.get_item(TableName="items", Key=KEY)

    def interrupt(**_: Any) -> None:
        raise Interrupt

    c.meta.events.register_first("after-call.dynamodb.PutItem", interrupt)
    with pytest.raises(Interrupt):  # DynamoDB applied it; the caller never heard back
        c.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}})
    assert registration.stats()["writes_cancelled"] == 1
    # The writer makes no further call: its background worker delivers.
    assert eventually(lambda: r.get_item(TableName="items", Key=KEY)["Item"]["v"]["S"] == "new")
    reader.unregister()


# --- cancellation (aiobotocore) -----------------------------------------------------


async def _stall(**_: Any) -> None:
    await asyncio.sleep(30)


def _async_case(
    moto_url: str,
    redis_server: RedisServer,
    namespace: str,
    body: Callable[[Any, Any, Any], Any],
    stall_on: str | None = None,
    **options: Any,
) -> None:
    import aioboto3

    admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})

    async def main() -> None:
        session = aioboto3.Session(region_name=REGION)
        registration = await ddbcache_hooks.register_async(
            session, redis_server.url, namespace=namespace, **options
        )
        try:
            async with session.client("dynamodb", endpoint_url=moto_url) as c:
                if stall_on is not None:  # runs before the cache's own handler
                    c.meta.events.register_first(stall_on, _stall)
                await body(registration, c, admin)
        finally:
            registration.unregister()

    asyncio.run(main())


async def _wait(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not check():
        await asyncio.sleep(0.02)
    return check()


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
def test_a_cancelled_async_write_is_invalidated(
    moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    async def body(registration: Any, c: Any, admin: Any) -> None:
        await c.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" in await c.get_item(TableName="items", Key=KEY)
        c.meta.events.register_first("after-call.dynamodb.PutItem", _stall)
        with pytest.raises(asyncio.TimeoutError):  # DynamoDB applied it; the caller gave up
            await asyncio.wait_for(
                c.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}}), 1.0
            )
        assert admin.get_item(TableName="items", Key=KEY)["Item"]["v"] == {"S": "new"}
        assert registration.stats()["writes_cancelled"] == 1
        assert await _wait(lambda: not registration._work.handed_over)
        response = await c.get_item(TableName="items", Key=KEY)
        assert response["Item"]["v"] == {"S": "new"}

    _async_case(moto_url, redis_server, namespace, body)


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
def test_a_cancelled_invalidation_is_completed(
    moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    async def body(registration: Any, c: Any, admin: Any) -> None:
        await c.get_item(TableName="items", Key=KEY)
        pool = registration._transport.client.connection_pool
        held = await pool.get_connection()  # the only connection is busy elsewhere
        with pytest.raises(asyncio.TimeoutError):  # cancelled waiting for a connection
            await asyncio.wait_for(
                c.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}}), 0.15
            )
        await pool.release(held)
        assert await _wait(
            lambda: not registration._work.handed_over and not registration._protocol.backlog
        )
        response = await c.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" not in response and response["Item"]["v"] == {"S": "new"}

    _async_case(
        moto_url, redis_server, namespace, body, redis_max_connections=1, redis_pool_wait_ms=1000
    )


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
def test_a_cancelled_async_miss_gives_its_lease_back(
    moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    async def body(registration: Any, c: Any, admin: Any) -> None:
        c.meta.events.register_first("after-call.dynamodb.GetItem", _stall)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.get_item(TableName="items", Key=KEY), 0.5)
        c.meta.events.unregister("after-call.dynamodb.GetItem", _stall)
        assert await _wait(lambda: registration.stats()["leases_released"] == 1)
        assert leases(redis_server, namespace) == []
        await c.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" in await c.get_item(TableName="items", Key=KEY)
        assert registration.stats()["lease_waits"] == 0

    _async_case(moto_url, redis_server, namespace, body, lease_ms=60_000)
