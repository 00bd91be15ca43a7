"""An unchanged application reads ``ResponseMetadata`` on every answer, hit or miss.

Logging middleware and retry wrappers commonly read ``HTTPStatusCode`` and
``RequestId``; with ``response_metadata="synthesize"`` (the default) a hit has
both, with values no DynamoDB answer has; ``"omit"`` restores the reference's
shape. Stale-if-error answers are covered in test_stale_if_error.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pytest

import ddbcache_hooks
from tests.conftest import Backend, CallCounter, make_table

#: What DynamoDB's request ids look like (upper case; moto mixes cases): a synthesized
#: one must never match.
DYNAMODB_REQUEST_ID = re.compile(r"^[A-Za-z0-9]{52}$")


def log_response(response: dict[str, Any], seen: list[tuple[int, str, str | None]]) -> None:
    """What an application's logging middleware does with every answer, unchanged."""
    meta = response["ResponseMetadata"]
    seen.append((meta["HTTPStatusCode"], meta["RequestId"], meta["HTTPHeaders"].get("x-ddbcache")))


@pytest.fixture
def app(
    session: boto3.Session, real_redis: Backend, namespace: str
) -> Iterator[tuple[ddbcache_hooks.Registration, Any]]:
    registration = ddbcache_hooks.register(session, real_redis.client(), namespace=namespace)
    client = session.client("dynamodb")
    make_table(client, "items")
    make_table(client, "pairs", ("pk", "S"), ("sk", "N"))
    for i in range(5):
        client.put_item(TableName="pairs", Item={"pk": {"S": "p"}, "sk": {"N": str(i)}})
    client.put_item(TableName="items", Item={"pk": {"S": "a"}, "v": {"N": "1.5"}})
    client.put_item(TableName="items", Item={"pk": {"S": "b"}, "v": {"N": "2"}})
    yield registration, client
    registration.unregister()


def assert_miss_then_hit(seen: list[tuple[int, str, str | None]]) -> None:
    (miss_status, miss_id, miss_source), (hit_status, hit_id, hit_source) = seen
    assert miss_status == hit_status == 200
    assert miss_source is None and DYNAMODB_REQUEST_ID.match(miss_id)  # moto's, as DynamoDB's
    assert hit_source == "hit" and hit_id.startswith("ddbcache-")
    assert not DYNAMODB_REQUEST_ID.match(hit_id)


def test_client_get_item(app: tuple[Any, Any]) -> None:
    _, client = app
    calls = CallCounter().attach(client)
    seen: list[tuple[int, str, str | None]] = []
    for _ in range(2):
        log_response(client.get_item(TableName="items", Key={"pk": {"S": "a"}}), seen)
    assert_miss_then_hit(seen)
    assert calls["GetItem"] == 1


def test_each_hit_has_its_own_request_id(app: tuple[Any, Any]) -> None:
    _, client = app
    client.get_item(TableName="items", Key={"pk": {"S": "a"}})
    ids = {
        client.get_item(TableName="items", Key={"pk": {"S": "a"}})["ResponseMetadata"]["RequestId"]
        for _ in range(20)
    }
    assert len(ids) == 20


def test_resource_table(session: boto3.Session, app: tuple[Any, Any]) -> None:
    table = session.resource("dynamodb").Table("items")
    calls = CallCounter().attach(table.meta.client)
    seen: list[tuple[int, str, str | None]] = []
    answers = [table.get_item(Key={"pk": "a"}) for _ in range(2)]
    for answer in answers:
        log_response(answer, seen)
    assert_miss_then_hit(seen)
    assert answers[1]["Item"] == {"pk": "a", "v": Decimal("1.5")}
    assert calls["GetItem"] == 1


def test_paginator_pages(app: tuple[Any, Any]) -> None:
    _, client = app
    calls = CallCounter().attach(client)
    params = {
        "TableName": "pairs",
        "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": "p"}},
        "PaginationConfig": {"PageSize": 2},
    }
    runs = [list(client.get_paginator("query").paginate(**params)) for _ in range(2)]
    assert len(runs[0]) == 3 and calls["Query"] == 3
    for miss, hit in zip(*runs, strict=True):
        seen: list[tuple[int, str, str | None]] = []
        log_response(miss, seen)
        log_response(hit, seen)
        assert_miss_then_hit(seen)
    full = client.get_paginator("query").paginate(**params).build_full_result()
    assert len(full["Items"]) == 5 and calls["Query"] == 3


def test_batch_get_item(app: tuple[Any, Any]) -> None:
    _, client = app
    calls = CallCounter().attach(client)
    keys = [{"pk": {"S": "a"}}, {"pk": {"S": "b"}}]
    seen: list[tuple[int, str, str | None]] = []
    for _ in range(2):
        log_response(client.batch_get_item(RequestItems={"items": {"Keys": keys}}), seen)
    assert_miss_then_hit(seen)  # the second is assembled from the cache alone
    assert calls["BatchGetItem"] == 1
    # Part hit, part DynamoDB: the real call's own ResponseMetadata is kept.
    partial = client.batch_get_item(RequestItems={"items": {"Keys": [*keys, {"pk": {"S": "c"}}]}})
    assert partial["CacheMetadata"]["CacheHitCount"] == 2 and calls["BatchGetItem"] == 2
    assert DYNAMODB_REQUEST_ID.match(partial["ResponseMetadata"]["RequestId"])
    assert "x-ddbcache" not in partial["ResponseMetadata"]["HTTPHeaders"]


def test_omit_restores_the_reference_shape(
    session: boto3.Session, real_redis: Backend, namespace: str
) -> None:
    registration = ddbcache_hooks.register(
        session, real_redis.client(), namespace=namespace, response_metadata="omit"
    )
    try:
        client = session.client("dynamodb")
        make_table(client, "items")
        client.put_item(TableName="items", Item={"pk": {"S": "a"}})
        miss, hit = (client.get_item(TableName="items", Key={"pk": {"S": "a"}}) for _ in "12")
        assert "ResponseMetadata" in miss and "CacheMetadata" not in miss
        assert "ResponseMetadata" not in hit and hit["CacheMetadata"]["CacheHit"] is True
        keys = {"items": {"Keys": [{"pk": {"S": "a"}}]}}
        assert "ResponseMetadata" not in client.batch_get_item(RequestItems=keys)
    finally:
        registration.unregister()


def test_environment_variable(
    session: boto3.Session, real_redis: Backend, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DDBCACHE_RESPONSE_METADATA", "omit")
    registration = ddbcache_hooks.register(session, real_redis.client(), namespace=namespace)
    try:
        assert registration.settings.response_metadata == "omit"
    finally:
        registration.unregister()
    monkeypatch.setenv("DDBCACHE_RESPONSE_METADATA", "sometimes")
    with pytest.raises(ddbcache_hooks.ConfigurationError, match="DDBCACHE_RESPONSE_METADATA"):
        ddbcache_hooks.register(session, real_redis.client(), namespace=namespace)
