"""BatchGetItem: hits from the cache, one real call for the misses, negative entries."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import (
    CallCounter,
    CountingConnection,
    access_denied,
    counting_redis,
    make_table,
)


def key(pk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}}


@pytest.fixture
def tables(session: boto3.Session, cache: ddbcache_hooks.Registration) -> Any:
    c = session.client("dynamodb")
    for name in ("aaa", "bbb", "ccc"):
        make_table(c, name)
        for pk in ("1", "2", "3"):
            c.put_item(TableName=name, Item={**key(pk), "v": {"S": f"{name}{pk}"}})
    return c


REQUEST = {
    "aaa": {"Keys": [key("1"), key("2"), key("missing-a")]},
    "bbb": {"Keys": [key("3"), key("missing-b")], "ProjectionExpression": "v"},
    "ccc": {"Keys": [key("1"), key("2")], "ConsistentRead": True},
}


def values(response: dict[str, Any]) -> dict[str, list[str]]:
    return {t: sorted(i["v"]["S"] for i in items) for t, items in response["Responses"].items()}


def test_first_call_counts_then_all_hits(tables: Any) -> None:
    calls = CallCounter().attach(tables)
    first = tables.batch_get_item(RequestItems=REQUEST)
    assert values(first) == {"aaa": ["aaa1", "aaa2"], "bbb": ["bbb3"], "ccc": ["ccc1", "ccc2"]}
    meta = first["CacheMetadata"]
    assert (meta["CacheHitCount"], meta["CacheMissCount"], meta["StronglyConsistentCount"]) == (
        0,
        5,
        2,
    )
    assert {"Time", "Client"} <= set(meta)
    # A call that went to DynamoDB keeps DynamoDB's own ResponseMetadata.
    assert "x-ddbcache" not in first["ResponseMetadata"]["HTTPHeaders"]
    assert first["UnprocessedKeys"] == {}
    second = tables.batch_get_item(RequestItems=REQUEST)
    assert values(second) == values(first)
    meta = second["CacheMetadata"]
    assert (meta["CacheHitCount"], meta["CacheMissCount"], meta["StronglyConsistentCount"]) == (
        5,
        0,
        2,
    )
    # Table c (ConsistentRead) still went to DynamoDB, alone.
    assert calls["BatchGetItem"] == 2
    assert set(json.loads(calls.bodies[-1][1])["RequestItems"]) == {"ccc"}


def test_all_hits_make_no_real_call(tables: Any) -> None:
    request = {"aaa": REQUEST["aaa"], "bbb": REQUEST["bbb"]}
    tables.batch_get_item(RequestItems=request)
    calls = CallCounter().attach(tables)
    response = tables.batch_get_item(RequestItems=request)
    assert calls["BatchGetItem"] == 0
    assert values(response) == {"aaa": ["aaa1", "aaa2"], "bbb": ["bbb3"]}
    assert response["CacheMetadata"]["CacheHitCount"] == 5
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-ddbcache"] == "hit"


def test_partial_hit_sends_only_the_missing_keys(tables: Any) -> None:
    tables.get_item(TableName="aaa", Key=key("1"))  # one key already cached
    calls = CallCounter().attach(tables)
    response = tables.batch_get_item(
        RequestItems={"aaa": {"Keys": [key("1"), key("2"), key("missing")]}}
    )
    assert calls["BatchGetItem"] == 1
    sent = json.loads(calls.bodies[0][1])["RequestItems"]
    assert sent == {"aaa": {"Keys": [key("2"), key("missing")]}}
    assert values(response) == {"aaa": ["aaa1", "aaa2"]}
    assert response["CacheMetadata"]["CacheHitCount"] == 1


def test_entries_are_shared_with_get_item(tables: Any) -> None:
    tables.batch_get_item(RequestItems={"aaa": {"Keys": [key("1"), key("missing")]}})
    assert "CacheMetadata" in tables.get_item(TableName="aaa", Key=key("1"))
    absent = tables.get_item(TableName="aaa", Key=key("missing"))
    assert "CacheMetadata" in absent and "Item" not in absent
    tables.get_item(TableName="bbb", Key=key("2"), ProjectionExpression="v")
    again = tables.batch_get_item(
        RequestItems={"bbb": {"Keys": [key("2")], "ProjectionExpression": "v"}}
    )
    assert again["CacheMetadata"]["CacheHitCount"] == 1
    assert again["Responses"]["bbb"] == [{"v": {"S": "bbb2"}}]


def test_writes_invalidate_batch_entries(tables: Any) -> None:
    tables.batch_get_item(RequestItems={"aaa": {"Keys": [key("1")]}})
    tables.put_item(TableName="aaa", Item={**key("1"), "v": {"S": "changed"}})
    response = tables.batch_get_item(RequestItems={"aaa": {"Keys": [key("1")]}})
    assert (
        values(response) == {"aaa": ["changed"]} and response["CacheMetadata"]["CacheHitCount"] == 0
    )


def test_unprocessed_keys_are_returned_and_never_cached_as_absent(tables: Any) -> None:
    def leave_key_2_unprocessed(parsed: dict[str, Any], **_: Any) -> None:
        parsed["Responses"]["aaa"] = [
            i for i in parsed["Responses"]["aaa"] if i["pk"] != key("2")["pk"]
        ]
        parsed["UnprocessedKeys"] = {"aaa": {"Keys": [key("2")]}}

    tables.meta.events.register_first("after-call.dynamodb.BatchGetItem", leave_key_2_unprocessed)
    first = tables.batch_get_item(RequestItems={"aaa": {"Keys": [key("1"), key("2")]}})
    tables.meta.events.unregister("after-call.dynamodb.BatchGetItem", leave_key_2_unprocessed)
    assert first["UnprocessedKeys"] == {"aaa": {"Keys": [key("2")]}}
    assert values(first) == {"aaa": ["aaa1"]}
    second = tables.get_item(TableName="aaa", Key=key("2"))
    assert "CacheMetadata" not in second and second["Item"]["v"] == {"S": "aaa2"}


@pytest.mark.parametrize(
    "projection",
    [
        {"ProjectionExpression": "v"},
        {"ProjectionExpression": "#v", "ExpressionAttributeNames": {"#v": "v"}},
        {"AttributesToGet": ["v"]},
    ],
)
def test_projection_without_the_key_still_caches(tables: Any, projection: dict[str, Any]) -> None:
    """The real call asks for the key too (to match items to keys); the caller never sees it."""
    request = {"aaa": {"Keys": [key("1"), key("missing")], **projection}}
    calls = CallCounter().attach(tables)
    first = tables.batch_get_item(RequestItems=request)
    again = tables.batch_get_item(RequestItems=request)
    assert first["Responses"] == again["Responses"] == {"aaa": [{"v": {"S": "aaa1"}}]}
    assert again["CacheMetadata"]["CacheHitCount"] == 2 and calls["BatchGetItem"] == 1
    direct = tables.get_item(TableName="aaa", Key=key("1"), **projection)
    assert direct["Item"] == {"v": {"S": "aaa1"}} and "CacheMetadata" in direct


def test_projection_that_names_the_key_keeps_it(tables: Any) -> None:
    request = {"aaa": {"Keys": [key("1")], "ProjectionExpression": "pk, v"}}
    tables.batch_get_item(RequestItems=request)
    again = tables.batch_get_item(RequestItems=request)
    assert again["Responses"]["aaa"] == [{"pk": {"S": "1"}, "v": {"S": "aaa1"}}]


@pytest.mark.parametrize("mode", ["TOTAL", "INDEXES"])
def test_consumed_capacity_lists_every_table(tables: Any, mode: str) -> None:
    tables.batch_get_item(RequestItems={"aaa": REQUEST["aaa"]})
    response = tables.batch_get_item(
        RequestItems={"aaa": REQUEST["aaa"], "bbb": REQUEST["bbb"]}, ReturnConsumedCapacity=mode
    )
    capacity = {c["TableName"]: c for c in response["ConsumedCapacity"]}
    assert set(capacity) == {"aaa", "bbb"}
    assert capacity["aaa"]["CapacityUnits"] == 0.0  # served wholly from the cache
    assert capacity["bbb"]["CapacityUnits"] > 0.0  # what the real call read
    all_hits = tables.batch_get_item(
        RequestItems={"aaa": REQUEST["aaa"]}, ReturnConsumedCapacity=mode
    )
    expected = {"TableName": "aaa", "CapacityUnits": 0.0}
    if mode == "INDEXES":
        expected["Table"] = {"CapacityUnits": 0.0}
    assert all_hits["ConsumedCapacity"] == [expected]
    assert "ConsumedCapacity" not in tables.batch_get_item(RequestItems={"aaa": REQUEST["aaa"]})


def test_resource_batch_get_item(session: boto3.Session, tables: Any) -> None:
    resource = session.resource("dynamodb")
    request = {"aaa": {"Keys": [{"pk": "1"}, {"pk": "2"}]}}
    resource.batch_get_item(RequestItems=request)
    response = resource.batch_get_item(RequestItems=request)
    assert sorted(i["v"] for i in response["Responses"]["aaa"]) == ["aaa1", "aaa2"]
    assert response["CacheMetadata"]["CacheHitCount"] == 2


@pytest.fixture
def counted(
    session: boto3.Session, redis_server: RedisServer, namespace: str
) -> Iterator[tuple[Any, type[CountingConnection]]]:
    cache, Counting = counting_redis(redis_server.port)
    registration = ddbcache_hooks.register(session, cache, namespace=namespace)
    c = session.client("dynamodb")
    for name in ("aaa", "bbb", "ccc"):
        make_table(c, name)
    yield c, Counting
    registration.unregister()


@pytest.mark.parametrize("size", [6, 30, 100])
def test_round_trips_do_not_grow_with_the_batch(counted: tuple[Any, Any], size: int) -> None:
    c, counter = counted
    per_table = [size // 3 + (1 if i < size % 3 else 0) for i in range(3)]
    request = {
        name: {"Keys": [key(f"{name}-{i}") for i in range(n)]}
        for name, n in zip(("aaa", "bbb", "ccc"), per_table, strict=True)
    }
    half = {name: {"Keys": spec["Keys"][::2]} for name, spec in request.items()}
    c.batch_get_item(RequestItems=half)  # warm half of the keys
    calls = CallCounter().attach(c)
    before = counter.sends
    response = c.batch_get_item(RequestItems=request)
    # Plain reads of every key, the lookup script for the misses, one fill round trip.
    assert counter.sends - before == 3
    assert calls["BatchGetItem"] == 1
    sent = json.loads(calls.bodies[0][1])["RequestItems"]
    assert sum(len(s["Keys"]) for s in sent.values()) == size - sum(
        len(s["Keys"]) for s in half.values()
    )
    before = counter.sends
    again = c.batch_get_item(RequestItems=request)
    assert counter.sends - before == 1 and calls["BatchGetItem"] == 1
    assert again["CacheMetadata"]["CacheHitCount"] == size
    assert response["CacheMetadata"]["CacheHitCount"] == sum(len(s["Keys"]) for s in half.values())


def test_each_table_of_a_batch_is_proved_for_the_caller(
    session: boto3.Session, tables: Any, cache: ddbcache_hooks.Registration
) -> None:
    """Credentials DynamoDB refuses one table of a batch: the batch gets DynamoDB's error;
    the table it may read keeps its hits."""
    # Past the settle window of the fixture's writes, so that the entries live their TTL.
    time.sleep(cache.settings.settle_ms / 1000 + 0.05)
    tables.batch_get_item(RequestItems={"aaa": REQUEST["aaa"], "bbb": REQUEST["bbb"]})
    dave = session.client(
        "dynamodb", aws_access_key_id="AKIADAVEEXAMPLE", aws_secret_access_key="dave"
    )
    cache.attach_client(dave)
    calls = CallCounter().attach(dave)

    def refuse_bbb(request: Any, **_: Any) -> Any:
        return access_denied() if b'"bbb"' in request.body else None

    dave.meta.events.register("before-send.dynamodb", refuse_bbb)
    first = dave.batch_get_item(RequestItems={"aaa": REQUEST["aaa"]})
    assert first["CacheMetadata"]["CacheHitCount"] == 0  # its first read of aaa: DynamoDB
    assert (
        dave.batch_get_item(RequestItems={"aaa": REQUEST["aaa"]})["CacheMetadata"]["CacheHitCount"]
        == 3
    )
    for _ in range(2):  # bbb is in the cache, but DynamoDB refuses dave: so does the cache
        with pytest.raises(ClientError) as raised:
            dave.batch_get_item(RequestItems={"aaa": REQUEST["aaa"], "bbb": REQUEST["bbb"]})
        assert raised.value.response["Error"]["Code"] == "AccessDeniedException"
    with pytest.raises(ClientError):
        dave.get_item(TableName="bbb", Key=key("3"))
    assert (
        dave.batch_get_item(RequestItems={"aaa": REQUEST["aaa"]})["CacheMetadata"]["CacheHitCount"]
        == 3
    )
    assert calls["BatchGetItem"] == 3 and calls["GetItem"] == 1
