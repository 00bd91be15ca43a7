"""refresh(): reads inside go to DynamoDB and replace their entries (Query, Scan,
BatchGetItem, the near cache, nesting with disabled()). GetItem on both paths,
and the race with a write, are in test_shared_behaviour.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

import ddbcache_hooks
from tests.conftest import REGION, Backend, CallCounter, make_table

QUERY = {
    "TableName": "pairs",
    "KeyConditionExpression": "pk = :p",
    "ExpressionAttributeValues": {":p": {"S": "p"}},
}


@pytest.fixture
def outside(aws: None) -> Any:
    """A client the cache does not see: its writes make entries out of date."""
    client = boto3.Session(region_name=REGION).client("dynamodb")
    make_table(client, "items")
    make_table(client, "pairs", ("pk", "S"), ("sk", "N"))
    for pk in ("a", "b"):
        client.put_item(TableName="items", Item={"pk": {"S": pk}, "v": {"S": "old"}})
    client.put_item(TableName="pairs", Item={"pk": {"S": "p"}, "sk": {"N": "1"}})
    return client


def registered(
    real_redis: Backend, namespace: str, **options: Any
) -> tuple[ddbcache_hooks.Registration, Any, CallCounter]:
    session = boto3.Session(region_name=REGION)
    registration = ddbcache_hooks.register(
        session, real_redis.client(), namespace=namespace, **options
    )
    client = session.client("dynamodb")
    return registration, client, CallCounter().attach(client)


@pytest.fixture
def cached(
    outside: Any, real_redis: Backend, namespace: str
) -> Iterator[tuple[ddbcache_hooks.Registration, Any, CallCounter]]:
    registration, client, calls = registered(real_redis, namespace)
    yield registration, client, calls
    registration.unregister()


def test_query_page_is_replaced(outside: Any, cached: tuple[Any, Any, CallCounter]) -> None:
    _, client, calls = cached
    client.query(**QUERY)
    outside.put_item(TableName="pairs", Item={"pk": {"S": "p"}, "sk": {"N": "2"}})
    assert client.query(**QUERY)["Count"] == 1  # the page, out of date
    with ddbcache_hooks.refresh():
        assert client.query(**QUERY)["Count"] == 2
    assert calls["Query"] == 2
    after = client.query(**QUERY)
    assert after["Count"] == 2 and after["CacheMetadata"]["CacheHit"] and calls["Query"] == 2


def test_batch_get_item_replaces_every_entry(
    outside: Any, cached: tuple[Any, Any, CallCounter]
) -> None:
    _, client, calls = cached
    request = {"items": {"Keys": [{"pk": {"S": "a"}}, {"pk": {"S": "b"}}]}}
    client.batch_get_item(RequestItems=request)
    for pk in ("a", "b"):
        outside.put_item(TableName="items", Item={"pk": {"S": pk}, "v": {"S": "new"}})
    with ddbcache_hooks.refresh():
        refreshed = client.batch_get_item(RequestItems=request)
    assert calls["BatchGetItem"] == 2
    assert sorted(i["v"]["S"] for i in refreshed["Responses"]["items"]) == ["new", "new"]
    assert refreshed["CacheMetadata"]["CacheHitCount"] == 0
    after = client.batch_get_item(RequestItems=request)
    assert after["CacheMetadata"]["CacheHitCount"] == 2 and calls["BatchGetItem"] == 2
    assert sorted(i["v"]["S"] for i in after["Responses"]["items"]) == ["new", "new"]


def test_a_scan_refresh_is_stored_before_admission(
    outside: Any, cached: tuple[Any, Any, CallCounter]
) -> None:
    _, client, calls = cached
    with ddbcache_hooks.refresh():  # scan_admission is 2: a plain first Scan is not stored
        client.scan(TableName="pairs")
    assert client.scan(TableName="pairs")["CacheMetadata"]["CacheHit"]
    assert calls["Scan"] == 1


def test_disabled_wins(outside: Any, cached: tuple[Any, Any, CallCounter]) -> None:
    registration, client, calls = cached
    key = {"pk": {"S": "a"}}
    client.get_item(TableName="items", Key=key)
    outside.put_item(TableName="items", Item={**key, "v": {"S": "new"}})
    with ddbcache_hooks.refresh(), ddbcache_hooks.disabled():
        assert client.get_item(TableName="items", Key=key)["Item"]["v"] == {"S": "new"}
    # Bypassed: the entry was neither read nor replaced.
    assert client.get_item(TableName="items", Key=key)["Item"]["v"] == {"S": "old"}
    assert calls["GetItem"] == 2 and registration.stats().get("refreshes", 0) == 0


def test_refresh_is_local_to_the_thread(outside: Any, cached: tuple[Any, Any, CallCounter]) -> None:
    _, client, calls = cached
    key = {"pk": {"S": "a"}}
    client.get_item(TableName="items", Key=key)
    seen: list[bool] = []
    with ddbcache_hooks.refresh():
        other = threading.Thread(
            target=lambda: seen.append(
                "CacheMetadata" in client.get_item(TableName="items", Key=key)
            )
        )
        other.start()
        other.join()
    assert seen == [True] and calls["GetItem"] == 1


def test_near_cache_copy_is_replaced(outside: Any, real_redis: Backend, namespace: str) -> None:
    registration, client, calls = registered(
        real_redis, namespace, near_cache=ddbcache_hooks.NearCache(max_items=10, ttl_ms=60_000)
    )
    key = {"pk": {"S": "a"}}
    try:
        client.get_item(TableName="items", Key=key)
        client.get_item(TableName="items", Key=key)  # from Redis, now held near too
        outside.put_item(TableName="items", Item={**key, "v": {"S": "new"}})
        assert client.get_item(TableName="items", Key=key)["Item"]["v"] == {"S": "old"}
        near_hits = registration.stats()["near_hits"]
        assert near_hits >= 1
        with ddbcache_hooks.refresh():
            client.get_item(TableName="items", Key=key)
        after = client.get_item(TableName="items", Key=key)
        assert after["Item"]["v"] == {"S": "new"} and after["CacheMetadata"]["CacheHit"]
        assert registration.stats()["near_hits"] == near_hits  # from Redis, not the old copy
        assert calls["GetItem"] == 2
    finally:
        registration.unregister()


def test_an_entry_another_caller_fills_is_left_to_it(
    outside: Any, cached: tuple[Any, Any, CallCounter]
) -> None:
    """The refresh finds a miss's lease: it reads DynamoDB at once and stores nothing."""
    registration, client, calls = cached
    key = {"pk": {"S": "a"}}
    nested: list[Any] = []

    def refresh_while_leased(**_: Any) -> None:
        if not nested:  # the outer miss holds the lease while its request is sent
            nested.append(None)
            with ddbcache_hooks.refresh():
                nested[0] = client.get_item(TableName="items", Key=key)

    client.meta.events.register("before-send.dynamodb.GetItem", refresh_while_leased)
    outer = client.get_item(TableName="items", Key=key)
    assert "CacheMetadata" not in outer and "CacheMetadata" not in nested[0]
    assert nested[0]["Item"] == outer["Item"]
    stats = registration.stats()
    assert stats["refreshes"] == 1 and stats.get("lease_waits", 0) == 0
    assert stats["fills"] == 1 and stats.get("fills_discarded", 0) == 0  # the outer's fill
    assert client.get_item(TableName="items", Key=key)["CacheMetadata"]["CacheHit"]
    assert calls["GetItem"] == 2
