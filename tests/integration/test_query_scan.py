"""Query and Scan caching, through real boto3 clients, on every backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from boto3.dynamodb.conditions import Attr, Key

import ddbcache_hooks
from tests.conftest import NO_SETTLE, CallCounter, make_table, registered


@pytest.fixture
def cache(
    session: boto3.Session, backend: Any, namespace: str
) -> Iterator[ddbcache_hooks.Registration]:
    """As conftest's, without the settle window: pages are warmed right after the
    writes that made them (conftest.NO_SETTLE)."""
    yield from registered(session, backend, namespace, **NO_SETTLE)


@pytest.fixture
def orders(session: boto3.Session, cache: ddbcache_hooks.Registration) -> Any:
    """Table with a range key, a GSI and an LSI, and 12 items under one partition."""
    c = session.client("dynamodb")
    make_table(
        c,
        "orders",
        ("pk", "S"),
        ("sk", "N"),
        gsi=("by_status", "status", "S"),
        lsi=("by_total", "total", "N"),
    )
    for i in range(12):
        c.put_item(
            TableName="orders",
            Item={
                "pk": {"S": "customer"},
                "sk": {"N": str(i)},
                "status": {"S": "open" if i % 2 else "paid"},
                "total": {"N": str(100 - i)},
                "blob": {"B": bytes([i, 255])},
            },
        )
    return c


QUERY: dict[str, Any] = {
    "TableName": "orders",
    "KeyConditionExpression": "pk = :p",
    "ExpressionAttributeValues": {":p": {"S": "customer"}},
}


def test_query_miss_then_hit(orders: Any) -> None:
    calls = CallCounter().attach(orders)
    miss = orders.query(**QUERY)
    hit = orders.query(**QUERY)
    assert "CacheMetadata" not in miss and "ResponseMetadata" in miss
    assert hit["CacheMetadata"]["CacheHit"]
    assert hit["ResponseMetadata"]["HTTPHeaders"]["x-ddbcache"] == "hit"
    assert hit["Items"] == miss["Items"] and hit["Count"] == 12
    assert calls["Query"] == 1


@pytest.mark.parametrize(
    "change",
    [
        {"ExpressionAttributeValues": {":p": {"S": "other"}}},
        {"Limit": 3},
        {"ScanIndexForward": False},
        {"ProjectionExpression": "sk"},
        {"Select": "COUNT"},
        {
            "FilterExpression": "#s = :s",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":p": {"S": "customer"}, ":s": {"S": "open"}},
        },
        {"ExclusiveStartKey": {"pk": {"S": "customer"}, "sk": {"N": "3"}}},
    ],
)
def test_every_data_parameter_is_part_of_the_key(orders: Any, change: dict[str, Any]) -> None:
    orders.query(**QUERY)
    assert "CacheMetadata" not in orders.query(**{**QUERY, **change})
    assert "CacheMetadata" in orders.query(**{**QUERY, **change})


def test_return_consumed_capacity_is_not_part_of_the_key(orders: Any) -> None:
    orders.query(**QUERY)
    assert "CacheMetadata" in orders.query(**QUERY, ReturnConsumedCapacity="TOTAL")


def test_indexes_and_filters(orders: Any) -> None:
    on_gsi = {
        "TableName": "orders",
        "IndexName": "by_status",
        "KeyConditionExpression": "#s = :s",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":s": {"S": "open"}},
    }
    on_lsi = {
        **QUERY,
        "IndexName": "by_total",
        "KeyConditionExpression": "pk = :p AND total > :t",
        "ExpressionAttributeValues": {":p": {"S": "customer"}, ":t": {"N": "95"}},
    }
    for params in (on_gsi, on_lsi):
        miss = orders.query(**params)
        hit = orders.query(**params)
        assert hit["Items"] == miss["Items"] and "CacheMetadata" in hit
    assert orders.query(**on_gsi)["Count"] == 6 and orders.query(**on_lsi)["Count"] == 5


@pytest.mark.parametrize("mode", ["TOTAL", "INDEXES", "NONE"])
def test_capacity_shapes_on_query_hits(orders: Any, mode: str) -> None:
    on_gsi = {
        "TableName": "orders",
        "IndexName": "by_status",
        "KeyConditionExpression": "#s = :s",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":s": {"S": "paid"}},
    }
    for params in (QUERY, on_gsi):
        miss = orders.query(**params, ReturnConsumedCapacity=mode)
        hit = orders.query(**params, ReturnConsumedCapacity=mode)
        assert "CacheMetadata" in hit
        if mode == "NONE":
            assert "ConsumedCapacity" not in hit
            continue
        assert _structure(hit["ConsumedCapacity"]) == _structure(miss["ConsumedCapacity"])
        assert _units(hit["ConsumedCapacity"]) == {0.0}


def test_capacity_indexes_on_a_hit_filled_without_capacity(orders: Any) -> None:
    """The fill did not ask: the index kind comes from the table's description."""
    for index, kind, key in (
        ("by_status", "GlobalSecondaryIndexes", "status"),
        ("by_total", "LocalSecondaryIndexes", "total"),
    ):
        params: dict[str, Any] = {
            "TableName": "orders",
            "IndexName": index,
            "KeyConditionExpression": "pk = :p" if key == "total" else "#k = :k",
            "ExpressionAttributeValues": {":p": {"S": "customer"}}
            if key == "total"
            else {":k": {"S": "paid"}},
        }
        if key == "status":
            params["ExpressionAttributeNames"] = {"#k": "status"}
        orders.query(**params)
        hit = orders.query(**params, ReturnConsumedCapacity="INDEXES")
        assert hit["ConsumedCapacity"] == {
            "TableName": "orders",
            "CapacityUnits": 0.0,
            "Table": {"CapacityUnits": 0.0},
            kind: {index: {"CapacityUnits": 0.0}},
        }


def _structure(capacity: Any) -> Any:
    if isinstance(capacity, dict):
        return {k: _structure(v) for k, v in capacity.items() if k != "CapacityUnits"} | {
            "units": "CapacityUnits" in capacity
        }
    return capacity


def _units(capacity: Any) -> set[float]:
    found = set()
    if isinstance(capacity, dict):
        for k, v in capacity.items():
            found |= {v} if k == "CapacityUnits" else _units(v)
    return found


def test_pages_are_cached_one_by_one(orders: Any) -> None:
    calls = CallCounter().attach(orders)

    def all_pages() -> list[list[dict[str, Any]]]:
        pages, start = [], None
        while True:
            extra = {"ExclusiveStartKey": start} if start else {}
            page = orders.query(**QUERY, Limit=5, **extra)
            pages.append(page["Items"])
            start = page.get("LastEvaluatedKey")
            if not start:
                return pages

    first = all_pages()
    assert calls["Query"] == 3 and [len(p) for p in first] == [5, 5, 2]
    assert all_pages() == first and calls["Query"] == 3
    paginator = orders.get_paginator("query")
    pages = list(paginator.paginate(**QUERY, PaginationConfig={"PageSize": 5}))
    assert [p["Items"] for p in pages] == first and calls["Query"] == 3
    assert all("CacheMetadata" in p for p in pages)


def test_empty_pages_are_cached(orders: Any) -> None:
    empty = {**QUERY, "ExpressionAttributeValues": {":p": {"S": "nobody"}}}
    assert orders.query(**empty)["Items"] == []
    hit = orders.query(**empty)
    assert hit["Items"] == [] and hit["Count"] == 0 and "CacheMetadata" in hit


def _hit(response: dict[str, Any]) -> bool:
    return "CacheMetadata" in response


OTHER = {**QUERY, "ExpressionAttributeValues": {":p": {"S": "other"}}}
LSI_QUERY = {**QUERY, "IndexName": "by_total"}
GSI_QUERY: dict[str, Any] = {
    "TableName": "orders",
    "IndexName": "by_status",
    "KeyConditionExpression": "#s = :s",
    "ExpressionAttributeNames": {"#s": "status"},
    "ExpressionAttributeValues": {":s": {"S": "open"}},
}


def _warm_pages(orders: Any) -> None:
    orders.put_item(
        TableName="orders",
        Item={"pk": {"S": "other"}, "sk": {"N": "1"}, "status": {"S": "open"}, "total": {"N": "1"}},
    )
    for _ in range(2):  # Scan admission: stored on the second identical call
        for request in (QUERY, OTHER, LSI_QUERY, GSI_QUERY):
            orders.query(**request)
        orders.scan(TableName="orders")
    assert all(_hit(orders.query(**r)) for r in (QUERY, OTHER, LSI_QUERY, GSI_QUERY))
    assert _hit(orders.scan(TableName="orders"))


@pytest.mark.parametrize(
    "write",
    [
        lambda c: c.put_item(
            TableName="orders",
            Item={"pk": {"S": "customer"}, "sk": {"N": "99"}, "status": {"S": "open"}},
        ),
        lambda c: c.update_item(
            TableName="orders",
            Key={"pk": {"S": "customer"}, "sk": {"N": "3"}},
            UpdateExpression="SET #s = :s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": {"S": "paid"}},
        ),
        lambda c: c.delete_item(
            TableName="orders", Key={"pk": {"S": "customer"}, "sk": {"N": "3"}}
        ),
        lambda c: c.batch_write_item(
            RequestItems={
                "orders": [{"DeleteRequest": {"Key": {"pk": {"S": "customer"}, "sk": {"N": "3"}}}}]
            }
        ),
        lambda c: c.transact_write_items(
            TransactItems=[
                {
                    "Delete": {
                        "TableName": "orders",
                        "Key": {"pk": {"S": "customer"}, "sk": {"N": "3"}},
                    }
                }
            ]
        ),
    ],
    ids=["put", "update", "delete", "batch", "transaction"],
)
def test_a_write_drops_its_partitions_pages_gsi_and_scan_only(orders: Any, write: Any) -> None:
    _warm_pages(orders)
    before = orders.query(**QUERY)
    write(orders)
    after = orders.query(**QUERY)
    assert not _hit(after) and after["Items"] != before["Items"]
    assert not _hit(orders.query(**LSI_QUERY))  # an LSI shares the table's partition key
    assert not _hit(orders.query(**GSI_QUERY))  # a GSI's partition is not known
    assert not _hit(orders.scan(TableName="orders"))
    assert _hit(orders.query(**OTHER))  # the other partition's page keeps serving
    assert _hit(orders.query(**QUERY))  # refilled


def test_a_write_to_another_partition_keeps_the_page(orders: Any) -> None:
    orders.query(**QUERY)
    orders.put_item(TableName="orders", Item={"pk": {"S": "else"}, "sk": {"N": "1"}})
    assert _hit(orders.query(**QUERY))
    numeric = {"pk": {"S": "customer"}, "sk": {"N": "1.0"}}  # the same item: numbers by value
    orders.update_item(
        TableName="orders",
        Key=numeric,
        UpdateExpression="SET flag = :f",
        ExpressionAttributeValues={":f": {"N": "7"}},
    )
    assert not _hit(orders.query(**QUERY))


def test_invalidate_drops_the_items_partition_pages(
    orders: Any, cache: ddbcache_hooks.Registration
) -> None:
    orders.query(**QUERY)
    orders.query(**OTHER)
    assert cache.invalidate("orders", {"pk": "customer", "sk": 3}) is True
    assert not _hit(orders.query(**QUERY)) and _hit(orders.query(**OTHER))


def test_legacy_key_conditions_are_narrowed_too(orders: Any) -> None:
    legacy = {
        "TableName": "orders",
        "KeyConditions": {
            "pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "customer"}]},
            "sk": {"ComparisonOperator": "GT", "AttributeValueList": [{"N": "5"}]},
        },
    }
    orders.query(**legacy)
    orders.put_item(TableName="orders", Item={"pk": {"S": "else"}, "sk": {"N": "1"}})
    assert _hit(orders.query(**legacy))
    orders.put_item(TableName="orders", Item={"pk": {"S": "customer"}, "sk": {"N": "50"}})
    after = orders.query(**legacy)
    assert not _hit(after) and after["Count"] == 7


def test_a_fill_that_raced_a_write_to_its_partition_is_never_served(
    session: boto3.Session, orders: Any
) -> None:
    """The page read DynamoDB before the write and fills after it: the next lookup misses."""
    writer = session.client("dynamodb")
    racing = [True]

    def write_meanwhile(**_: Any) -> None:
        if racing and racing.pop():
            writer.put_item(TableName="orders", Item={"pk": {"S": "customer"}, "sk": {"N": "77"}})

    orders.meta.events.register_first("after-call.dynamodb.Query", write_meanwhile)
    old = orders.query(**QUERY)
    new = orders.query(**QUERY)
    assert old["Count"] == 12 and not _hit(new) and new["Count"] == 13
    assert _hit(orders.query(**QUERY))


def test_strict_mode_never_reads_a_gsi_consistently(
    session: boto3.Session, backend: Any, namespace: str
) -> None:
    """DynamoDB rejects ConsistentRead on a GSI: a strict miss there reads as asked."""
    registration = ddbcache_hooks.register(
        session, backend.client(), namespace=namespace, **backend.options, consistency="strict"
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "tbl", ("pk", "S"), ("sk", "N"), gsi=("by_s", "s", "S"))
        c.put_item(TableName="tbl", Item={"pk": {"S": "a"}, "sk": {"N": "1"}, "s": {"S": "x"}})
        gsi = {**GSI_QUERY, "TableName": "tbl", "IndexName": "by_s"}
        gsi["ExpressionAttributeNames"] = {"#s": "s"}
        gsi["ExpressionAttributeValues"] = {":s": {"S": "x"}}
        assert c.query(**gsi)["Count"] == 1
        assert _hit(c.query(**gsi))
    finally:
        registration.unregister()


def test_ttl_mode_leaves_pages_to_their_ttl(
    session: boto3.Session, backend: Any, namespace: str
) -> None:
    registration = ddbcache_hooks.register(
        session, backend.client(), namespace=namespace, **backend.options, query_invalidation="ttl"
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "tbl")
        q = {
            "TableName": "tbl",
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "a"}},
        }
        before = c.query(**q)
        c.put_item(TableName="tbl", Item={"pk": {"S": "a"}})
        after = c.query(**q)
        assert _hit(after) and after["Count"] == before["Count"] == 0
    finally:
        registration.unregister()


def test_settle_window_bounds_page_fills_after_a_write(
    session: boto3.Session, backend: Any, namespace: str
) -> None:
    registration = ddbcache_hooks.register(
        session, backend.client(), namespace=namespace, **backend.options, settle_ms=400
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "tbl")
        q = {
            "TableName": "tbl",
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "a"}},
        }
        c.put_item(TableName="tbl", Item={"pk": {"S": "a"}})  # opens a 400 ms window for "a"
        c.query(**q)  # filled with at most the rest of the window
        assert _hit(c.query(**q))
        time.sleep(0.45)
        assert not _hit(c.query(**q))  # expired with the window
        assert _hit(c.query(**q))  # now with the full TTL
        time.sleep(0.45)
        assert _hit(c.query(**q))
    finally:
        registration.unregister()


def test_table_query_shares_entries_with_low_level_calls(
    session: boto3.Session, orders: Any
) -> None:
    table = session.resource("dynamodb").Table("orders")
    calls = CallCounter().attach(table.meta.client)
    low = orders.query(
        TableName="orders",
        KeyConditionExpression="pk = :p",
        FilterExpression="#st = :s",
        ExpressionAttributeNames={"#st": "status"},
        ExpressionAttributeValues={":p": {"S": "customer"}, ":s": {"S": "open"}},
    )
    high = table.query(
        KeyConditionExpression=Key("pk").eq("customer"), FilterExpression=Attr("status").eq("open")
    )
    assert "CacheMetadata" in high and calls["Query"] == 0
    assert [item["sk"] for item in high["Items"]] == [int(i["sk"]["N"]) for i in low["Items"]]
    assert isinstance(high["Items"][0]["blob"], boto3.dynamodb.types.Binary)


def test_scan_admission_miss_miss_hit(orders: Any) -> None:
    calls = CallCounter().attach(orders)
    results = [orders.scan(TableName="orders") for _ in range(3)]
    assert ["CacheMetadata" in r for r in results] == [False, False, True]
    assert calls["Scan"] == 2
    assert results[2]["Items"] == results[0]["Items"]


def test_scan_admission_is_configurable(
    session: boto3.Session, backend: Any, namespace: str
) -> None:
    registration = ddbcache_hooks.register(
        session,
        backend.client(),
        namespace=namespace,
        **backend.options,
        scan_admission=1,
        query_admission=2,
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "tbl")
        assert ["CacheMetadata" in c.scan(TableName="tbl") for _ in range(2)] == [False, True]
        q = {
            "TableName": "tbl",
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "x"}},
        }
        assert ["CacheMetadata" in c.query(**q) for _ in range(3)] == [False, False, True]
    finally:
        registration.unregister()


def test_parallel_scan_segments_never_share(orders: Any) -> None:
    seen = []
    for _ in range(3):
        for segment in range(2):
            seen.append(orders.scan(TableName="orders", Segment=segment, TotalSegments=2))
    seg0, seg1 = seen[4], seen[5]
    assert "CacheMetadata" in seg0 and "CacheMetadata" in seg1
    keys0 = {i["sk"]["N"] for i in seg0["Items"]}
    keys1 = {i["sk"]["N"] for i in seg1["Items"]}
    assert keys0.isdisjoint(keys1) and len(keys0 | keys1) == 12


def test_table_scan_through_resource(session: boto3.Session, orders: Any) -> None:
    table = session.resource("dynamodb").Table("orders")
    results = [table.scan(FilterExpression=Attr("total").gt(95)) for _ in range(3)]
    assert "CacheMetadata" in results[2] and results[2]["Count"] == 5
    assert results[2]["Items"] == results[0]["Items"]


def test_consistent_queries_and_scans_bypass(orders: Any) -> None:
    calls = CallCounter().attach(orders)
    for _ in range(3):
        assert "CacheMetadata" not in orders.query(**QUERY, ConsistentRead=True)
        assert "CacheMetadata" not in orders.scan(TableName="orders", ConsistentRead=True)
    assert calls["Query"] == 3 and calls["Scan"] == 3


def test_query_ttl(session: boto3.Session, backend: Any, namespace: str) -> None:
    registration = ddbcache_hooks.register(
        session, backend.client(), namespace=namespace, **backend.options, ttl_config={"query": 1}
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "tbl")
        q = {
            "TableName": "tbl",
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "x"}},
        }
        c.query(**q)
        assert "CacheMetadata" in c.query(**q)
        time.sleep(1.1)
        assert "CacheMetadata" not in c.query(**q)
    finally:
        registration.unregister()


def test_transact_get_and_select_statements_pass_through(orders: Any) -> None:
    calls = CallCounter().attach(orders)
    key = {"pk": {"S": "customer"}, "sk": {"N": "1"}}
    for _ in range(2):
        r = orders.transact_get_items(TransactItems=[{"Get": {"TableName": "orders", "Key": key}}])
        assert "CacheMetadata" not in r
        s = orders.execute_statement(Statement="SELECT * FROM orders WHERE pk = 'customer'")
        assert "CacheMetadata" not in s
    assert calls["TransactGetItems"] == 2 and calls["ExecuteStatement"] == 2
