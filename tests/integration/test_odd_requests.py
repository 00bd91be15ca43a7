"""Odd and malformed requests: DynamoDB's answer always reaches the caller.

Nothing the library does may replace DynamoDB's answer or exception: a write
it cannot read invalidates its whole table (once), a read it cannot read
bypasses the cache, and a request DynamoDB would reject is never answered
from the cache. Real boto3 clients, moto over HTTP, a real Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import CallCounter, make_table

KEY = {"pk": {"S": "a"}}
LONE = {"pk": {"S": "\ud800"}}  # a lone surrogate: not UTF-8
ONE_TRY = {"retries": {"max_attempts": 1, "mode": "standard"}}


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What the caller sees, without the parts a cache may change."""
    try:
        response = call()
    except ClientError as exc:
        return "error", exc.response["Error"].get("Code")
    except Exception as exc:  # anything else is what must not happen
        return "raised", type(exc).__name__
    response.pop("ResponseMetadata", None)
    response.pop("CacheMetadata", None)
    return "ok", response


class Pair:
    """A registered client and an uncached one on the same moto server."""

    def __init__(self, moto_url: str, redis_url: str, namespace: str, **config: Any) -> None:
        cfg = Config(**ONE_TRY, **config)
        self.session = boto3.Session(region_name="us-east-1")
        self.registration = ddbcache_hooks.register(
            self.session, redis_url, namespace=namespace, key_schema={"items": "pk"}
        )
        self.cached = self.session.client("dynamodb", endpoint_url=moto_url, config=cfg)
        self.plain = boto3.Session(region_name="us-east-1").client(
            "dynamodb", endpoint_url=moto_url, config=cfg
        )
        self.calls = CallCounter().attach(self.cached)

    def same(self, call: Callable[[Any], Any]) -> tuple[str, Any]:
        """Run ``call`` uncached, then cached; both must see the same."""
        expected = outcome(lambda: call(self.plain))
        assert outcome(lambda: call(self.cached)) == expected
        return expected

    def cache(self, key: dict[str, Any], v: str) -> None:
        self.cached.put_item(TableName="items", Item={**key, "v": {"S": v}})
        self.cached.get_item(TableName="items", Key=key)
        assert "CacheMetadata" in self.cached.get_item(TableName="items", Key=key)

    def value(self, key: dict[str, Any]) -> str | None:
        item = self.cached.get_item(TableName="items", Key=key).get("Item")
        return item["v"]["S"] if item else None


@pytest.fixture
def pair(moto_url: str, redis_server: RedisServer, namespace: str) -> Iterator[Pair]:
    p = Pair(moto_url, redis_server.url, namespace)
    make_table(p.plain, "items")
    yield p
    p.registration.unregister()


# --- writes and reads the library cannot read ----------------------------------------


@pytest.mark.parametrize(
    "write",
    [
        lambda c: c.put_item(TableName="items", Item={**LONE, "v": {"S": "x"}}),
        lambda c: c.delete_item(TableName="items", Key=LONE),
        lambda c: c.update_item(
            TableName="items",
            Key=LONE,
            UpdateExpression="SET v = :v",
            ExpressionAttributeValues={":v": {"S": "x"}},
        ),
    ],
    ids=["put_item", "delete_item", "update_item"],
)
def test_unreadable_key_in_a_write_gets_dynamodbs_answer_and_drops_the_table(
    pair: Pair, write: Callable[[Any], Any]
) -> None:
    pair.cache(KEY, "old")
    pair.plain.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}})  # unseen write
    before = pair.registration.stats()["table_invalidations"]
    pair.same(write)
    assert pair.registration.stats()["table_invalidations"] == before + 1
    assert pair.value(KEY) == "new"  # the whole table went


def test_unreadable_item_in_a_batch_write_does_not_skip_the_others(pair: Pair) -> None:
    other = {"pk": {"S": "b"}}
    pair.cache(other, "old")
    before = pair.registration.stats()["table_invalidations"]
    pair.same(
        lambda c: c.batch_write_item(
            RequestItems={
                "items": [
                    {"DeleteRequest": {"Key": LONE}},
                    {"PutRequest": {"Item": {**other, "v": {"S": "new"}}}},
                ]
            }
        )
    )
    assert pair.value(other) == "new"
    assert pair.registration.stats()["table_invalidations"] == before + 1  # once, not per item


def test_unreadable_key_in_a_read_bypasses(pair: Pair) -> None:
    pair.same(lambda c: c.get_item(TableName="items", Key=LONE))
    bypasses = pair.registration.stats()["bypasses"]
    pair.same(lambda c: c.get_item(TableName="items", Key=LONE))
    assert pair.registration.stats()["bypasses"] == bypasses + 1
    assert pair.calls["GetItem"] == 2


def test_write_without_table_name_gets_dynamodbs_answer(
    moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    """With parameter_validation=False, botocore sends what it is given."""
    p = Pair(moto_url, redis_server.url, namespace, parameter_validation=False)
    try:
        make_table(p.plain, "items")
        for call in (
            lambda c: c.put_item(Item={**KEY, "v": {"S": "x"}}),
            lambda c: c.delete_item(TableName="items"),
            lambda c: c.batch_write_item(RequestItems={"items": [{"PutRequest": {}}]}),
            lambda c: c.transact_write_items(TransactItems=[{"Put": {"Item": KEY}}]),
            lambda c: c.execute_statement(),
        ):
            kind, _ = p.same(call)
            assert kind == "error"
    finally:
        p.registration.unregister()


def test_malformed_batch_write_drops_every_table_it_names(
    moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    p = Pair(moto_url, redis_server.url, namespace, parameter_validation=False)
    try:
        make_table(p.plain, "items")
        p.cache(KEY, "old")
        p.plain.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}})
        p.same(
            lambda c: c.batch_write_item(
                RequestItems={
                    "items": [
                        {"PutRequest": {"Item": {**KEY, "v": {"S": "new"}}}},
                        {"PutRequest": {}},
                    ]
                }
            )
        )
        assert p.value(KEY) == "new"
    finally:
        p.registration.unregister()


# --- requests DynamoDB rejects are never answered from the cache --------------------


def test_reserved_word_used_literally_is_not_served_the_placeholder_entry(pair: Pair) -> None:
    pair.cached.put_item(TableName="items", Item={**KEY, "name": {"S": "n"}})
    aliased = {"ProjectionExpression": "#n", "ExpressionAttributeNames": {"#n": "name"}}
    pair.cached.get_item(TableName="items", Key=KEY, **aliased)
    assert "CacheMetadata" in pair.cached.get_item(TableName="items", Key=KEY, **aliased)
    for _ in range(2):
        kind, code = pair.same(
            lambda c: c.get_item(TableName="items", Key=KEY, ProjectionExpression="name")
        )
        assert (kind, code) == ("error", "ValidationException")
    query = {
        "TableName": "items",
        "KeyConditionExpression": "pk = :a",
        "ExpressionAttributeValues": {":a": KEY["pk"]},
    }
    pair.cached.query(**query, **aliased)
    assert "CacheMetadata" in pair.cached.query(**query, **aliased)
    assert pair.same(lambda c: c.query(**query, ProjectionExpression="name"))[0] == "error"


@pytest.mark.parametrize(
    "bad",
    [{"ReturnConsumedCapacity": "BOGUS"}, {"ConsistentRead": "yes"}],
    ids=["capacity", "consistent"],
)
def test_invalid_values_outside_the_variant_are_not_served(
    moto_url: str, redis_server: RedisServer, namespace: str, bad: dict[str, Any]
) -> None:
    p = Pair(moto_url, redis_server.url, namespace, parameter_validation=False)
    try:
        make_table(p.plain, "items")
        p.cache(KEY, "v")
        before = p.calls["GetItem"]
        p.same(lambda c: c.get_item(TableName="items", Key=KEY, **bad))
        assert p.calls["GetItem"] == before + 1  # went to DynamoDB, whatever it answers
        if "ConsistentRead" in bad:  # per table (ReturnConsumedCapacity is not)
            p.same(lambda c: c.batch_get_item(RequestItems={"items": {"Keys": [KEY], **bad}}))
        else:
            p.same(lambda c: c.batch_get_item(RequestItems={"items": {"Keys": [KEY]}}, **bad))
        assert p.calls["BatchGetItem"] == 1
    finally:
        p.registration.unregister()


def test_bogus_capacity_mode_is_rejected_not_served(pair: Pair) -> None:
    pair.cache(KEY, "v")
    kind, code = pair.same(
        lambda c: c.get_item(TableName="items", Key=KEY, ReturnConsumedCapacity="BOGUS")
    )
    assert (kind, code) == ("error", "ValidationException")
