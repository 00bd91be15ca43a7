"""Write-through (opt-in): writes store the item they produced, guarded by write intents.

Against a real Redis server and a real 3-master cluster, through boto3 clients
(moto). Every case where a write must store nothing has a test: DynamoDB
applied nothing, the outcome is unknown, Redis failed at either step, or
something touched the item between the intent and the write's completion.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from redis.exceptions import ConnectionError as RedisConnectionError

import ddbcache_hooks
from ddbcache_hooks import writethrough
from ddbcache_hooks.handlers import drive
from ddbcache_hooks.streams import records
from tests.conftest import (
    REGION,
    Backend,
    CallCounter,
    _cluster,
    _real,
    make_table,
    prove_read_access,
)

KEY = {"pk": {"S": "a"}}
ARN = f"arn:aws:dynamodb:{REGION}:123456789012:table/items"


@pytest.fixture(params=["redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "redis":
        return Backend("redis", _real(request.getfixturevalue("redis_server")))
    return Backend("cluster", _cluster(request.getfixturevalue("redis_cluster")))


@pytest.fixture
def cache(
    session: boto3.Session, backend: Backend, namespace: str
) -> Iterator[ddbcache_hooks.Registration]:
    registration = ddbcache_hooks.register(
        session, backend.client(), namespace=namespace, **backend.options, write_through=True
    )
    yield registration
    registration.unregister()


@pytest.fixture
def client(client: Any) -> Any:
    """conftest's client, its read access to the table proved: a write-through fill
    is then served to it (a first read would go to DynamoDB whatever the cache holds)."""
    prove_read_access(client)
    return client


def get(client: Any, **extra: Any) -> dict[str, Any]:
    response: dict[str, Any] = client.get_item(TableName="items", Key=KEY, **extra)
    return response


def skipped(cache: ddbcache_hooks.Registration, reason: str) -> int:
    count: int = cache.stats()[f"write_fills_skipped_{reason}"]
    return count


def warm(client: Any) -> None:
    """A first write teaches the process the table's key schema (PutItem needs it)."""
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "warm"}})


def test_put_fills_and_the_hit_equals_a_consistent_read(
    client: Any, calls: CallCounter, cache: ddbcache_hooks.Registration
) -> None:
    warm(client)
    item = {
        **KEY,
        "n": {"N": "1.5"},
        "tags": {"SS": ["x", "y"]},
        "nums": {"NS": ["1", "20"]},
        "blob": {"B": b"\x00\x01"},
        "m": {"M": {"l": {"L": [{"BOOL": True}, {"NULL": True}]}}},
    }
    client.put_item(TableName="items", Item=item)
    hit = get(client)
    assert hit["CacheMetadata"]["CacheHit"] is True
    assert calls["GetItem"] == 0
    strong = get(client, ConsistentRead=True)
    assert calls["GetItem"] == 1
    assert _as_sets(hit["Item"]) == _as_sets(strong["Item"])
    assert cache.stats()["write_fills"] == 1  # the first write could not tell the key


def test_numbers_are_stored_as_dynamodb_returns_them(
    client: Any, cache: ddbcache_hooks.Registration
) -> None:
    warm(client)
    client.put_item(TableName="items", Item={**KEY, "n": {"N": "01.50"}, "e": {"N": "1E+2"}})
    assert get(client)["Item"] == {**KEY, "n": {"N": "1.5"}, "e": {"N": "100"}}


def test_an_unrenderable_number_only_invalidates(
    client: Any, calls: CallCounter, cache: ddbcache_hooks.Registration
) -> None:
    warm(client)
    get(client)
    # moto accepts 39 digits; DynamoDB would not, and the cache cannot tell how it renders them
    client.put_item(TableName="items", Item={**KEY, "n": {"N": "1" * 39}})
    assert "CacheMetadata" not in get(client)
    assert skipped(cache, "unrenderable") == 1


def test_update_all_new_fills_other_return_values_do_not(
    client: Any, calls: CallCounter, cache: ddbcache_hooks.Registration
) -> None:
    warm(client)
    update = {
        "TableName": "items",
        "Key": KEY,
        "UpdateExpression": "SET v = :v",
    }
    answer = client.update_item(
        **update, ExpressionAttributeValues={":v": {"S": "new"}}, ReturnValues="ALL_NEW"
    )
    assert answer["Attributes"] == {**KEY, "v": {"S": "new"}}  # what the caller asked for
    assert get(client)["Item"] == {**KEY, "v": {"S": "new"}}
    assert calls["GetItem"] == 0
    answer = client.update_item(**update, ExpressionAttributeValues={":v": {"S": "newer"}})
    assert "Attributes" not in answer  # never asked for ALL_NEW behind the caller's back
    assert get(client)["Item"] == {**KEY, "v": {"S": "newer"}}
    assert calls["GetItem"] == 1
    assert skipped(cache, "no_image") == 1


def test_delete_fills_a_negative_entry(client: Any, calls: CallCounter) -> None:
    warm(client)
    client.delete_item(TableName="items", Key=KEY)
    hit = get(client)
    assert "Item" not in hit and hit["CacheMetadata"]["CacheHit"] is True
    assert calls["GetItem"] == 0


def test_a_put_before_the_key_schema_is_known_only_invalidates(
    client: Any, calls: CallCounter, cache: ddbcache_hooks.Registration
) -> None:
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}})
    assert skipped(cache, "key_unknown") == 1
    assert "CacheMetadata" not in get(client)


def test_a_failed_condition_stores_nothing_and_releases_the_intent(
    client: Any, calls: CallCounter, cache: ddbcache_hooks.Registration, backend: Backend
) -> None:
    warm(client)
    get(client)  # cached by the read
    with pytest.raises(ClientError):
        client.put_item(
            TableName="items",
            Item={**KEY, "v": {"S": "never"}},
            ConditionExpression="attribute_not_exists(pk)",
        )
    assert get(client)["Item"] == {**KEY, "v": {"S": "warm"}}
    assert skipped(cache, "rejected") == 1
    assert not _intents(backend, cache)


def test_an_unknown_outcome_stores_nothing(
    session: boto3.Session, client: Any, calls: CallCounter, cache: ddbcache_hooks.Registration
) -> None:
    warm(client)

    def lost(**_: Any) -> None:
        raise ReadTimeoutError(endpoint_url="http://dynamodb")  # applied, answer lost

    client.meta.events.register_first("needs-retry.dynamodb.PutItem", lost)
    with pytest.raises(ReadTimeoutError):
        client.put_item(TableName="items", Item={**KEY, "v": {"S": "lost"}})
    client.meta.events.unregister("needs-retry.dynamodb.PutItem", lost)
    assert get(client)["Item"] == {**KEY, "v": {"S": "lost"}}
    assert calls["GetItem"] == 1  # a miss: nothing was stored
    assert skipped(cache, "uncertain") == 1


def test_redis_down_at_before_call_stores_nothing(
    client: Any, calls: CallCounter, cache: ddbcache_hooks.Registration, monkeypatch: Any
) -> None:
    warm(client)

    def down(*_: Any, **__: Any) -> Any:
        raise RedisConnectionError("down")
        yield  # pragma: no cover

    monkeypatch.setattr(writethrough, "register", down)
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "x"}})
    monkeypatch.undo()
    assert skipped(cache, "redis") == 1
    assert get(client)["Item"] == {**KEY, "v": {"S": "x"}}
    assert calls["GetItem"] == 1


def test_redis_down_at_after_call_stores_nothing_and_replays_the_invalidation(
    client: Any, calls: CallCounter, cache: ddbcache_hooks.Registration, monkeypatch: Any
) -> None:
    warm(client)
    assert get(client)["Item"]["v"] == {"S": "warm"}  # cached

    def down(*_: Any, **__: Any) -> Any:
        raise RedisConnectionError("down")
        yield  # pragma: no cover

    monkeypatch.setattr(writethrough, "with_calls", down)
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "y"}})
    monkeypatch.undo()
    assert skipped(cache, "redis") == 1
    assert get(client)["Item"] == {**KEY, "v": {"S": "y"}}  # the backlog replayed first
    assert calls["GetItem"] == 2  # the read of "warm", and a miss now


def test_a_stream_record_between_intent_and_completion_stores_nothing(
    client: Any, calls: CallCounter, cache: ddbcache_hooks.Registration
) -> None:
    warm(client)
    protocol, transport = cache._protocol, cache._transport

    def stream_record(**_: Any) -> None:
        drive(records.apply(protocol, [(ARN, KEY)]), transport, lambda table: None)

    client.meta.events.register("before-send.dynamodb.PutItem", stream_record)
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "z"}})
    client.meta.events.unregister("before-send.dynamodb.PutItem", stream_record)
    assert skipped(cache, "intervened") == 1
    assert get(client)["Item"] == {**KEY, "v": {"S": "z"}}
    assert calls["GetItem"] == 1


def test_a_table_drop_between_intent_and_completion_stores_nothing_that_is_served(
    client: Any, calls: CallCounter, cache: ddbcache_hooks.Registration, backend: Backend
) -> None:
    warm(client)

    def drop(**_: Any) -> None:
        cache.invalidate_table("items")

    client.meta.events.register("before-send.dynamodb.PutItem", drop)
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "t"}})
    client.meta.events.unregister("before-send.dynamodb.PutItem", drop)
    if backend.name == "redis":
        assert skipped(cache, "table") == 1
    # On a cluster the token lives on another node: the entry is stored under the
    # old token, and a lookup never serves it.
    assert get(client)["Item"] == {**KEY, "v": {"S": "t"}}
    assert calls["GetItem"] == 1


def test_a_second_intent_in_between_stores_neither(
    session: boto3.Session, client: Any, calls: CallCounter, cache: ddbcache_hooks.Registration
) -> None:
    warm(client)
    other = session.client("dynamodb")

    def second_writer(**_: Any) -> None:
        other.put_item(TableName="items", Item={**KEY, "v": {"S": "second"}})

    client.meta.events.register("before-send.dynamodb.PutItem", second_writer)
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "first"}})
    client.meta.events.unregister("before-send.dynamodb.PutItem", second_writer)
    # The second write completed while the first was in flight: the first's intent
    # was live (second: busy), and the second's completion spoiled it (first: intervened).
    assert skipped(cache, "busy") == 1
    assert skipped(cache, "intervened") == 1
    assert get(client)["Item"] == {**KEY, "v": {"S": "first"}}
    assert calls["GetItem"] == 1


def test_off_by_default_no_extra_round_trip(session: boto3.Session, backend: Backend) -> None:
    registration = ddbcache_hooks.register(session, backend.client(), namespace="off")
    try:
        client = session.client("dynamodb")
        make_table(client, "items")
        calls = CallCounter().attach(client)
        client.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}})
        client.put_item(TableName="items", Item={**KEY, "v": {"S": "2"}})
        get(client)
        assert calls["GetItem"] == 1
        stats = registration.stats()
        assert stats["write_fills"] == 0 and stats["write_fills_skipped"] == 0
    finally:
        registration.unregister()


def _intents(backend: Backend, cache: ddbcache_hooks.Registration) -> list[bytes]:
    redis_client = backend.client()
    key = cache._protocol.planner.item_key(cache.table_refs("items")[0], KEY)
    return [f for f in redis_client.hkeys(key) if f.startswith(b"w:")]


def _as_sets(item: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in item.items():
        ((kind, inner),) = value.items()
        if kind in ("SS", "NS", "BS"):
            out[name] = {kind: frozenset(inner)}
        elif kind == "M":
            out[name] = {kind: _as_sets(inner)}
        else:
            out[name] = value
    return out


def test_a_decoding_redis_client_works_the_same(
    session: boto3.Session, backend: Backend, namespace: str
) -> None:
    registration = ddbcache_hooks.register(
        session,
        backend.client(decode_responses=True),
        namespace=namespace,
        **backend.options,
        write_through=True,
        key_schema={"items": "pk"},
        signing_key=b"k" * 32,
    )
    try:
        client = session.client("dynamodb")
        make_table(client, "items")
        prove_read_access(client)
        calls = CallCounter().attach(client)
        client.put_item(TableName="items", Item={**KEY, "b": {"B": b"\xff\x00"}})
        assert get(client)["Item"] == {**KEY, "b": {"B": b"\xff\x00"}}
        assert calls["GetItem"] == 0 and registration.stats()["write_fills"] == 1
    finally:
        registration.unregister()


def test_a_crashed_writer_blocks_fills_of_its_item_until_its_intent_expires(
    client: Any, cache: ddbcache_hooks.Registration, monkeypatch: Any
) -> None:
    """An intent whose writer never completes (crashed after sending) keeps other
    writes of the item from storing anything until it expires, then they store again."""
    monkeypatch.setattr(writethrough, "INTENT_MS", 1500)
    warm(client)
    protocol, transport = cache._protocol, cache._transport
    crashed = writethrough.target(
        protocol.planner,
        protocol.planner.plan("DeleteItem", {"TableName": "items", "Key": KEY}, _location(cache)),
    )
    assert isinstance(crashed, writethrough.Intent)
    drive(
        writethrough.register(crashed, protocol.token_ttl_ms, cluster=protocol.cluster),
        transport,
        lambda table: None,
    )
    started = time.monotonic()
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "blocked"}})
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "still blocked"}})
    assert cache.stats()["write_fills"] == 0
    assert skipped(cache, "busy") == 2
    time.sleep(max(0.0, 1.6 - (time.monotonic() - started)))
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "stored"}})
    assert cache.stats()["write_fills"] == 1
    assert get(client)["CacheMetadata"]["CacheHit"] is True


def _location(cache: ddbcache_hooks.Registration) -> Any:
    ((_, hooks),) = list(cache._clients.items())[-1:]
    return hooks.location


def test_resource_writes_fill_what_resource_reads_return(
    session: boto3.Session, client: Any, calls: CallCounter
) -> None:
    from decimal import Decimal

    from boto3.dynamodb.types import Binary

    warm(client)
    table = session.resource("dynamodb").Table("items")
    CallCounter.attach(calls, table.meta.client)
    item = {
        "pk": "a",
        "n": Decimal("1.50"),
        "big": Decimal("1E+3"),
        "tags": {"x", "y"},
        "b": Binary(b"\x00\x01"),
        "nested": {"l": [Decimal("0.10"), True, None]},
    }
    table.put_item(Item=item)
    hit = table.get_item(Key={"pk": "a"})
    assert hit["CacheMetadata"]["CacheHit"] is True
    strong = table.get_item(Key={"pk": "a"}, ConsistentRead=True)
    assert hit["Item"] == strong["Item"]
    assert str(hit["Item"]["n"]) == "1.5" and str(hit["Item"]["big"]) == "1000"
