"""The reference CacheClient's two documented uses, through the drop-in constructor only."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import boto3
import pytest
import redis
from boto3.dynamodb.conditions import Key
from redis.backoff import NoBackoff
from redis.retry import Retry

from ddbcache_hooks._redis_server import RedisServer
from ddbcache_hooks.compat import CacheClient
from tests.conftest import CallCounter, make_table

KEY = {"pk": {"S": "a"}}


@pytest.fixture
def redis_client(redis_server: RedisServer, namespace: str) -> redis.Redis:
    return redis.Redis(port=redis_server.port, decode_responses=True)  # as the reference's README


@pytest.fixture
def raw(aws: None) -> Any:
    client = boto3.client("dynamodb", region_name="us-east-1")
    make_table(client, "items")
    make_table(client, "orders", ("pk", "S"), ("sk", "N"))
    return client


# --- the client form: CacheClient(boto3.client("dynamodb"), redis_client) ---------------


def test_get_item_miss_hit_and_invalidation_on_every_write_path(
    raw: Any, redis_client: redis.Redis, namespace: str
) -> None:
    client = CacheClient(raw, redis_client, ttl=60, namespace=namespace)
    calls = CallCounter().attach(raw)
    writes = [
        lambda: client.put_item(TableName="items", Item={**KEY, "v": {"S": "put"}}),
        lambda: client.update_item(
            TableName="items",
            Key=KEY,
            UpdateExpression="SET v = :v",
            ExpressionAttributeValues={":v": {"S": "update"}},
        ),
        lambda: client.batch_write_item(
            RequestItems={"items": [{"PutRequest": {"Item": {**KEY, "v": {"S": "batch"}}}}]}
        ),
        lambda: client.transact_write_items(
            TransactItems=[{"Put": {"TableName": "items", "Item": {**KEY, "v": {"S": "tx"}}}}]
        ),
        lambda: client.delete_item(TableName="items", Key=KEY),
    ]
    raw.put_item(TableName="items", Item={**KEY, "v": {"S": "start"}})
    for write in writes:
        miss = client.get_item(TableName="items", Key=KEY)
        hit = client.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" not in miss and hit["CacheMetadata"]["CacheHit"]
        assert "ResponseMetadata" in miss and "ResponseMetadata" not in hit  # the reference's
        assert hit.get("Item") == miss.get("Item")
        write()
    assert "Item" not in client.get_item(TableName="items", Key=KEY)
    assert calls["GetItem"] == len(writes) + 1


def test_write_through_from_the_environment_leaves_cache_client_alone(
    raw: Any, redis_client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DDBCACHE_WRITE_THROUGH", "1")
    client = CacheClient(raw, redis_client, ttl=60, namespace=namespace)
    calls = CallCounter().attach(raw)
    client.delete_item(TableName="items", Key=KEY)  # learns nothing it could store
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "put"}})
    assert "CacheMetadata" not in client.get_item(TableName="items", Key=KEY)
    assert calls["GetItem"] == 1
    assert client.registration.stats()["write_fills"] == 0


def test_query_scan_purgatory_and_batch_counts(
    raw: Any, redis_client: redis.Redis, namespace: str
) -> None:
    client = CacheClient(
        raw, redis_client, ttl_config={"query": 30, "scan": 30}, namespace=namespace
    )
    for i in range(3):
        raw.put_item(TableName="orders", Item={"pk": {"S": "c"}, "sk": {"N": str(i)}})
    query = {
        "TableName": "orders",
        "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": "c"}},
    }
    queries = [client.query(**query) for _ in range(2)]
    assert ["CacheMetadata" in q for q in queries] == [False, True]
    scans = [client.scan(TableName="orders") for _ in range(3)]
    assert ["CacheMetadata" in s for s in scans] == [False, False, True]  # purgatory first
    # The reference's shape: no ResponseMetadata on what the cache answered.
    assert ["ResponseMetadata" in r for r in [*queries, *scans]] == [True, False, True, True, False]
    request = {
        "orders": {
            "Keys": [{"pk": {"S": "c"}, "sk": {"N": "0"}}, {"pk": {"S": "x"}, "sk": {"N": "1"}}]
        }
    }
    batches = [client.batch_get_item(RequestItems=request) for _ in range(2)]
    assert not any("ResponseMetadata" in b for b in batches)  # the reference's, even a miss
    first, second = (b["CacheMetadata"] for b in batches)
    assert (first["CacheHitCount"], first["CacheMissCount"]) == (0, 2)
    assert (second["CacheHitCount"], second["CacheMissCount"]) == (2, 0)
    assert second["StronglyConsistentCount"] == 0 and "Time" in second and "Client" in second


def test_the_client_passed_in_stays_uncached(
    raw: Any, redis_client: redis.Redis, namespace: str
) -> None:
    client = CacheClient(raw, redis_client, namespace=namespace)
    raw.put_item(TableName="items", Item=KEY)
    client.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" in client.get_item(TableName="items", Key=KEY)
    for _ in range(3):
        assert "CacheMetadata" not in raw.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" not in raw.query(
            TableName="items",
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "a"}},
        )
    # Its writes still invalidate, so the cache never serves what they replaced.
    raw.put_item(TableName="items", Item={**KEY, "v": {"S": "raw write"}})
    after = client.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" not in after and after["Item"]["v"] == {"S": "raw write"}


def test_paginators_read_through_the_cache(
    raw: Any, redis_client: redis.Redis, namespace: str
) -> None:
    client = CacheClient(raw, redis_client, namespace=namespace)
    for i in range(5):
        raw.put_item(TableName="orders", Item={"pk": {"S": "p"}, "sk": {"N": str(i)}})
    params = {
        "TableName": "orders",
        "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": "p"}},
        "PaginationConfig": {"PageSize": 2},
    }
    first = list(client.get_paginator("query").paginate(**params))
    second = list(client.get_paginator("query").paginate(**params))
    assert [p["Items"] for p in first] == [p["Items"] for p in second]
    assert all("CacheMetadata" in p and "ResponseMetadata" not in p for p in second)
    assert not any("CacheMetadata" in p for p in raw.get_paginator("query").paginate(**params))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0}, "Default ttl must be a positive integer: 0"),
        ({"ttl": "60"}, "Default ttl must be a positive integer: 60"),
        ({"ttl_config": {"items": 5}}, "Unknown ttl_config keys: {'items'}"),
        ({"ttl_config": {"query": -5}}, "ttl_query must be a positive integer"),
    ],
)
def test_same_validation_errors_as_the_reference(
    raw: Any, redis_client: redis.Redis, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        CacheClient(raw, redis_client, **kwargs)
    assert str(raised.value) == message


def test_unreachable_redis_fails_at_once(raw: Any) -> None:
    from ddbcache_hooks._redis_server import free_port

    with pytest.raises(Exception, match="Could not connect to Redis"):
        CacheClient(raw, redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0)))


def test_unknown_attributes_raise_like_the_reference(raw: Any, redis_client: redis.Redis) -> None:
    client = CacheClient(raw, redis_client)
    with pytest.raises(AttributeError, match="'CacheClient' object has no attribute 'nope'"):
        client.nope  # noqa: B018


# --- the resource form: dynamodb_resource.meta.client = CacheClient(...) ----------------


def test_resource_tables_are_cached_and_invalidated(
    aws: None, redis_client: redis.Redis, namespace: str
) -> None:
    dynamodb_resource = boto3.resource("dynamodb", region_name="us-east-1")
    make_table(dynamodb_resource.meta.client, "orders", ("pk", "S"), ("sk", "N"))
    original = dynamodb_resource.meta.client
    dynamodb_resource.meta.client = CacheClient(original, redis_client, ttl=60, namespace=namespace)
    table = dynamodb_resource.Table("orders")
    calls = CallCounter().attach(original)
    table.put_item(Item={"pk": "c", "sk": 1, "total": Decimal("9.5"), "tags": {"x"}})
    first = table.get_item(Key={"pk": "c", "sk": 1})
    second = table.get_item(Key={"pk": "c", "sk": 1})
    assert second["CacheMetadata"]["CacheHit"] and "ResponseMetadata" not in second
    assert (
        first["Item"]
        == second["Item"]
        == {
            "pk": "c",
            "sk": Decimal("1"),
            "total": Decimal("9.5"),
            "tags": {"x"},
        }
    )
    assert calls["GetItem"] == 1
    writes = [
        lambda: table.update_item(
            Key={"pk": "c", "sk": 1},
            UpdateExpression="SET #t = :t",
            ExpressionAttributeNames={"#t": "total"},
            ExpressionAttributeValues={":t": Decimal("10")},
        ),
        lambda: table.put_item(Item={"pk": "c", "sk": 1, "total": Decimal("11")}),
        lambda: table.delete_item(Key={"pk": "c", "sk": 1}),
    ]
    for write in writes:
        table.get_item(Key={"pk": "c", "sk": 1})
        write()
        assert "CacheMetadata" not in table.get_item(Key={"pk": "c", "sk": 1})
    with table.batch_writer() as batch:
        batch.put_item(Item={"pk": "c", "sk": 2, "total": Decimal("1")})
    table.get_item(Key={"pk": "c", "sk": 2})
    with table.batch_writer() as batch:
        batch.put_item(Item={"pk": "c", "sk": 2, "total": Decimal("2")})
    after = table.get_item(Key={"pk": "c", "sk": 2})
    assert "CacheMetadata" not in after and after["Item"]["total"] == Decimal("2")
    results = [table.query(KeyConditionExpression=Key("pk").eq("c")) for _ in range(2)]
    assert "CacheMetadata" in results[1] and results[1]["Items"] == results[0]["Items"]
    scans = [table.scan() for _ in range(3)]
    assert ["CacheMetadata" in s for s in scans] == [False, False, True]
    # The client the resource had before keeps working uncached (it speaks Python types:
    # the resource put its transformations on it).
    for _ in range(2):
        assert "CacheMetadata" not in original.get_item(
            TableName="orders", Key={"pk": "c", "sk": 2}
        )


def test_query_and_scan_pages_keep_the_references_ttl_only_behaviour(
    raw: Any, redis_client: redis.Redis, namespace: str
) -> None:
    """The reference's documented behaviour: writes leave Query/Scan pages to their TTL."""
    client = CacheClient(raw, redis_client, namespace=namespace)
    query = {
        "TableName": "orders",
        "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": "c"}},
    }
    client.query(**query)
    for _ in range(2):
        client.scan(TableName="orders")
    client.put_item(TableName="orders", Item={"pk": {"S": "c"}, "sk": {"N": "1"}})
    after, scan = client.query(**query), client.scan(TableName="orders")
    assert "CacheMetadata" in after and after["Count"] == 0
    assert "CacheMetadata" in scan and scan["Count"] == 0
