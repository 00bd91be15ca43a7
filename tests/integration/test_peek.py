"""Registration.peek(): what a read would find, and Redis unchanged by looking.

Runs on a single Redis node and on a 3-master cluster (the entry, the table's
tokens and TIME may be on different nodes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import BUCKETS, REGION, Backend, _cluster, _real, make_table

KEY = {"pk": {"S": "a"}}


@pytest.fixture(params=["redis", "cluster", "cluster-buckets"])
def store(request: pytest.FixtureRequest) -> Backend:
    if request.param == "cluster":
        return Backend("cluster", _cluster(request.getfixturevalue("redis_cluster")))
    if request.param == "cluster-buckets":
        cluster = _cluster(request.getfixturevalue("redis_cluster"))
        return Backend("cluster-buckets", cluster, {"cluster_buckets": BUCKETS})
    return Backend("redis", _real(request.getfixturevalue("redis_server")))


def snapshot(client: Any, namespace: str) -> dict[Any, Any]:
    """Every key of the namespace with its type and contents."""
    out: dict[Any, Any] = {}
    for key in client.scan_iter(match=f"{namespace}*"):
        kind = client.type(key)
        out[key] = (kind, client.hgetall(key) if kind == b"hash" else client.get(key))
    return out


@pytest.fixture
def cached(
    session: boto3.Session, store: Backend, namespace: str
) -> Iterator[tuple[ddbcache_hooks.Registration, Any, Any]]:
    registration = ddbcache_hooks.register(
        session,
        store.client(),
        namespace=namespace,
        ttl=1,
        stale_if_error_s=30,
        **store.options,
    )
    client = session.client("dynamodb")
    make_table(client, "items")
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}, "w": {"S": "2"}})
    time.sleep(1.0)  # past the settle window of that write
    yield registration, client, store.client()
    registration.unregister()


def test_absent_fresh_variants_and_expired_in_grace(
    cached: tuple[ddbcache_hooks.Registration, Any, Any], namespace: str
) -> None:
    registration, client, redis = cached
    absent = registration.peek("items", KEY)
    assert absent.cached and not absent.present and absent.variants == 0 and absent.size == 0
    client.get_item(TableName="items", Key=KEY)
    client.get_item(TableName="items", Key=KEY, ProjectionExpression="v")
    before = snapshot(redis, namespace)
    fresh = registration.peek("items", {"pk": "a"})  # Python values work too
    assert fresh.present and not fresh.negative and not fresh.leased and not fresh.settling
    assert fresh.item == {**KEY, "v": {"S": "1"}, "w": {"S": "2"}}
    assert fresh.variants == 2 and fresh.size > 0 and not fresh.near
    assert fresh.age_s is not None and 0 <= fresh.age_s < 1
    assert fresh.ttl_s is not None and 0 < fresh.ttl_s <= 1
    projected = registration.peek("items", KEY, ProjectionExpression="v")
    assert projected.present and projected.item == {"v": {"S": "1"}}
    assert registration.peek("items", KEY, ProjectionExpression="w").present is False
    assert snapshot(redis, namespace) == before  # looking changed nothing
    time.sleep(1.1)
    expired = registration.peek("items", KEY)
    assert not expired.present and expired.item is None and expired.ttl_s is None
    assert expired.grace_s is not None and 25 < expired.grace_s <= 30
    assert expired.age_s is not None and expired.age_s > 1
    missing = registration.peek("items", {"pk": {"S": "nobody"}})
    assert not missing.present and missing.grace_s is None
    client.get_item(TableName="items", Key={"pk": {"S": "nobody"}})
    assert registration.peek("items", {"pk": {"S": "nobody"}}).negative is True


def test_leased_and_settling(
    cached: tuple[ddbcache_hooks.Registration, Any, Any], namespace: str
) -> None:
    registration, client, redis = cached
    during: list[Any] = []

    def look(**_: Any) -> None:  # the miss holds its lease while DynamoDB is asked
        before = snapshot(redis, namespace)
        during.append(registration.peek("items", KEY))
        assert snapshot(redis, namespace) == before

    client.meta.events.register("before-send.dynamodb.GetItem", look)
    client.get_item(TableName="items", Key=KEY)
    assert during[0].leased and not during[0].present
    assert not registration.peek("items", KEY).leased  # filled: the lease is gone
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}})
    after_write = registration.peek("items", KEY)
    assert after_write.settling and not after_write.present and after_write.variants == 0


def test_near_cache_copy(session: boto3.Session, real_redis: Backend, namespace: str) -> None:
    registration = ddbcache_hooks.register(
        session,
        real_redis.client(),
        namespace=namespace,
        near_cache=ddbcache_hooks.NearCache(max_items=10, ttl_ms=60_000),
    )
    try:
        client = session.client("dynamodb")
        make_table(client, "items")
        client.put_item(TableName="items", Item=KEY)
        client.get_item(TableName="items", Key=KEY)  # filled in Redis
        assert not registration.peek("items", KEY).near
        client.get_item(TableName="items", Key=KEY)  # a Redis hit: now held near too
        assert registration.peek("items", KEY).near
    finally:
        registration.unregister()


def test_bad_arguments_are_named(
    cached: tuple[ddbcache_hooks.Registration, Any, Any],
) -> None:
    registration, _, _ = cached
    with pytest.raises(ValueError, match="ProjectionExpression"):
        registration.peek("items", KEY, Projection="v")
    with pytest.raises(ValueError, match="invalid key"):
        registration.peek("items", {"pk": {"S": "a", "N": "1"}})


def test_a_table_that_is_not_cached(
    session: boto3.Session, real_redis: Backend, namespace: str
) -> None:
    registration = ddbcache_hooks.register(
        session, real_redis.client(), namespace=namespace, exclude_tables=["items"]
    )
    try:
        make_table(session.client("dynamodb"), "items")
        peek = registration.peek("items", KEY)
        assert not peek.cached and not peek.present
    finally:
        registration.unregister()


@pytest.mark.aio
def test_async_peek(moto_url: str, redis_server: RedisServer, namespace: str) -> None:
    import aioboto3

    admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item=KEY)

    async def main() -> None:
        session = aioboto3.Session(region_name=REGION)
        registration = await ddbcache_hooks.register_async(
            session, redis_server.url, namespace=namespace
        )
        try:
            async with session.client("dynamodb", endpoint_url=moto_url) as client:
                assert not (await registration.peek("items", KEY)).present
                await client.get_item(TableName="items", Key=KEY)
                peek = await registration.peek("items", KEY)
                assert peek.present and peek.item == KEY
        finally:
            registration.unregister()

    asyncio.run(main())
