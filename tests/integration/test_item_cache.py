"""GetItem caching and item invalidation, through real boto3 clients (moto).

Runs once per backend: a real Redis server, a real 3-master cluster, fakeredis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import boto3
import pytest
from boto3.dynamodb.conditions import Attr
from botocore.exceptions import ClientError, ReadTimeoutError

import ddbcache_hooks
from tests.conftest import CallCounter

KEY = {"pk": {"S": "a"}}


def get(client: Any, **extra: Any) -> dict[str, Any]:
    response: dict[str, Any] = client.get_item(TableName="items", Key=KEY, **extra)
    return response


def test_miss_then_hit(client: Any, calls: CallCounter) -> None:
    client.put_item(TableName="items", Item={**KEY, "v": {"N": "1"}})
    miss = get(client)
    assert "ResponseMetadata" in miss and "CacheMetadata" not in miss
    hit = get(client)
    assert hit["Item"] == {**KEY, "v": {"N": "1"}}
    assert "ConsumedCapacity" not in hit
    assert hit["ResponseMetadata"]["HTTPHeaders"]["x-ddbcache"] == "hit"
    meta = hit["CacheMetadata"]
    assert meta["CacheHit"] is True and meta["Client"] == f"Python {ddbcache_hooks.__version__}"
    assert time.strptime(meta["CachedTime"], "%Y-%m-%d %H:%M:%SZ")
    assert calls["GetItem"] == 1


def test_table_resource_miss_then_hit(
    session: boto3.Session, client: Any, calls: CallCounter
) -> None:
    table = session.resource("dynamodb").Table("items")
    CallCounter.attach(calls, table.meta.client)
    table.put_item(Item={"pk": "a", "n": Decimal("1.5"), "tags": {"x", "y"}})
    first = table.get_item(Key={"pk": "a"})
    second = table.get_item(Key={"pk": "a"})
    assert first["Item"] == second["Item"] == {"pk": "a", "n": Decimal("1.5"), "tags": {"x", "y"}}
    assert "CacheMetadata" in second
    assert second["ResponseMetadata"]["HTTPHeaders"]["x-ddbcache"] == "hit"
    assert calls["GetItem"] == 1


def test_client_and_resource_share_entries(session: boto3.Session, client: Any) -> None:
    table = session.resource("dynamodb").Table("items")
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
    get(client)  # cached through the client
    assert table.get_item(Key={"pk": "a"})["CacheMetadata"]["CacheHit"]
    table.put_item(Item={"pk": "a", "v": "new"})  # a resource write drops the client's entry
    after = get(client)
    assert "CacheMetadata" not in after and after["Item"]["v"] == {"S": "new"}
    assert table.get_item(Key={"pk": "a"})["Item"]["v"] == "new"


def _writes(session: boto3.Session) -> dict[str, Callable[[Any], Any]]:
    table = session.resource("dynamodb").Table("items")

    def batch_writer_put(c: Any) -> None:
        with table.batch_writer() as batch:
            batch.put_item(Item={"pk": "a", "v": "new"})

    def batch_writer_delete(c: Any) -> None:
        with table.batch_writer() as batch:
            batch.delete_item(Key={"pk": "a"})

    return {
        "put_item": lambda c: c.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}}),
        "update_item": lambda c: c.update_item(
            TableName="items",
            Key=KEY,
            UpdateExpression="SET v = :v",
            ExpressionAttributeValues={":v": {"S": "new"}},
        ),
        "delete_item": lambda c: c.delete_item(TableName="items", Key=KEY),
        "batch_write_put": lambda c: c.batch_write_item(
            RequestItems={"items": [{"PutRequest": {"Item": {**KEY, "v": {"S": "new"}}}}]}
        ),
        "batch_write_delete": lambda c: c.batch_write_item(
            RequestItems={"items": [{"DeleteRequest": {"Key": KEY}}]}
        ),
        "transact_put": lambda c: c.transact_write_items(
            TransactItems=[{"Put": {"TableName": "items", "Item": {**KEY, "v": {"S": "new"}}}}]
        ),
        "transact_update": lambda c: c.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": "items",
                        "Key": KEY,
                        "UpdateExpression": "SET v = :v",
                        "ExpressionAttributeValues": {":v": {"S": "new"}},
                    }
                }
            ]
        ),
        "transact_delete": lambda c: c.transact_write_items(
            TransactItems=[{"Delete": {"TableName": "items", "Key": KEY}}]
        ),
        "resource_put": lambda c: table.put_item(Item={"pk": "a", "v": "new"}),
        "resource_update": lambda c: table.update_item(
            Key={"pk": "a"}, UpdateExpression="SET v = :v", ExpressionAttributeValues={":v": "new"}
        ),
        "resource_delete": lambda c: table.delete_item(Key={"pk": "a"}),
        "batch_writer_put": batch_writer_put,
        "batch_writer_delete": batch_writer_delete,
    }


WRITE_PATHS = sorted(_writes(boto3.Session(region_name="us-east-1")))


@pytest.mark.parametrize("path", WRITE_PATHS)
def test_every_write_path_invalidates(
    path: str, session: boto3.Session, client: Any, calls: CallCounter
) -> None:
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
    get(client)
    assert "CacheMetadata" in get(client)
    _writes(session)[path](client)
    after = get(client)
    assert "CacheMetadata" not in after, f"{path} left a stale entry"
    assert after.get("Item", {}).get("v") in (None, {"S": "new"})
    assert calls["GetItem"] == 2


def test_write_that_fails_after_reaching_dynamodb_still_invalidates(client: Any) -> None:
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
    get(client)

    def lose_response(**_: Any) -> None:
        raise ReadTimeoutError(endpoint_url="https://dynamodb")

    client.meta.events.register_first("needs-retry.dynamodb.PutItem", lose_response)
    with pytest.raises(ReadTimeoutError):
        client.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}})
    client.meta.events.unregister("needs-retry.dynamodb.PutItem", lose_response)
    after = get(client)
    assert "CacheMetadata" not in after and after["Item"]["v"] == {"S": "new"}


def test_cancelled_transaction_invalidates(client: Any) -> None:
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
    get(client)
    with pytest.raises(ClientError) as raised:
        client.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": "items",
                        "Item": {**KEY, "v": {"S": "new"}},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            ]
        )
    assert raised.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert "CacheMetadata" not in get(client)


def test_unprocessed_batch_items_are_not_invalidated(
    client: Any, cache: ddbcache_hooks.Registration
) -> None:
    other = {"pk": {"S": "b"}}
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
    client.put_item(TableName="items", Item={**other, "v": {"S": "old"}})
    get(client)
    client.get_item(TableName="items", Key=other)

    def leave_b_unprocessed(parsed: dict[str, Any], **_: Any) -> None:
        parsed["UnprocessedItems"] = {"items": [{"DeleteRequest": {"Key": other}}]}

    client.meta.events.register_first("after-call.dynamodb.BatchWriteItem", leave_b_unprocessed)
    client.batch_write_item(
        RequestItems={"items": [{"DeleteRequest": {"Key": KEY}}, {"DeleteRequest": {"Key": other}}]}
    )
    assert "CacheMetadata" not in get(client)
    assert "CacheMetadata" in client.get_item(TableName="items", Key=other)


def test_consistent_reads_bypass(
    client: Any, calls: CallCounter, cache: ddbcache_hooks.Registration
) -> None:
    client.put_item(TableName="items", Item=KEY)
    for _ in range(3):
        assert "CacheMetadata" not in get(client, ConsistentRead=True)
    assert calls["GetItem"] == 3
    assert cache.stats()["bypasses"] == 3
    assert "CacheMetadata" not in get(client)  # the first eventually consistent read misses


def test_missing_items_are_cached(client: Any, calls: CallCounter) -> None:
    assert "Item" not in get(client)
    hit = get(client)
    assert "Item" not in hit and hit["CacheMetadata"]["CacheHit"]
    assert calls["GetItem"] == 1
    client.put_item(TableName="items", Item=KEY)  # creating the item drops the negative entry
    assert get(client)["Item"] == KEY


def test_negative_entries_use_their_own_ttl(
    session: boto3.Session, backend: Any, namespace: str
) -> None:
    registration = ddbcache_hooks.register(
        session,
        backend.client(),
        namespace=namespace,
        **backend.options,
        ttl_config={"item_negative": 1, "item": 60},
        settle_ms=0,  # the put below must not shorten the positive entry's TTL
    )
    try:
        c = session.client("dynamodb")
        from tests.conftest import make_table

        make_table(c, "items")
        c.put_item(TableName="items", Item={"pk": {"S": "present"}})
        for key in ({"pk": {"S": "present"}}, KEY):
            c.get_item(TableName="items", Key=key)
        time.sleep(1.1)
        assert "CacheMetadata" not in c.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" in c.get_item(TableName="items", Key={"pk": {"S": "present"}})
    finally:
        registration.unregister()


def test_projections_are_separate_entries_dropped_by_one_write(
    client: Any, calls: CallCounter
) -> None:
    client.put_item(TableName="items", Item={**KEY, "a": {"S": "1"}, "b": {"S": "2"}})
    only_a = {"ProjectionExpression": "a"}
    only_b = {"ProjectionExpression": "#b", "ExpressionAttributeNames": {"#b": "b"}}
    assert get(client, **only_a)["Item"] == {"a": {"S": "1"}}
    assert get(client, **only_b)["Item"] == {"b": {"S": "2"}}
    assert get(client, **only_a)["Item"] == {"a": {"S": "1"}}
    assert get(client, **only_b)["CacheMetadata"]["CacheHit"]
    assert calls["GetItem"] == 2
    client.update_item(
        TableName="items",
        Key=KEY,
        UpdateExpression="SET a = :x, b = :x",
        ExpressionAttributeValues={":x": {"S": "9"}},
    )
    for projection, name in ((only_a, "a"), (only_b, "b")):
        after = get(client, **projection)
        assert "CacheMetadata" not in after and after["Item"] == {name: {"S": "9"}}
    assert calls["GetItem"] == 4


def test_placeholder_spelling_does_not_split_entries(
    session: boto3.Session, client: Any, calls: CallCounter
) -> None:
    client.put_item(TableName="items", Item={**KEY, "a": {"S": "1"}})
    get(client, ProjectionExpression="a")
    hit = get(client, ProjectionExpression="#x", ExpressionAttributeNames={"#x": "a"})
    assert hit["CacheMetadata"]["CacheHit"] and calls["GetItem"] == 1


@pytest.mark.parametrize("mode", ["NONE", "TOTAL", "INDEXES"])
def test_capacity_on_hits(client: Any, mode: str) -> None:
    client.put_item(TableName="items", Item=KEY)
    miss = get(client, ReturnConsumedCapacity=mode)
    hit = get(client, ReturnConsumedCapacity=mode)
    if mode == "NONE":
        assert "ConsumedCapacity" not in hit
        return
    expected = {"TableName": "items", "CapacityUnits": 0.0}
    if mode == "INDEXES":
        expected["Table"] = {"CapacityUnits": 0.0}
    assert hit["ConsumedCapacity"] == expected
    assert set(hit["ConsumedCapacity"]) == set(miss["ConsumedCapacity"])


def test_capacity_asked_only_by_the_hit(client: Any) -> None:
    client.put_item(TableName="items", Item=KEY)
    get(client)  # filled without capacity
    assert get(client, ReturnConsumedCapacity="INDEXES")["ConsumedCapacity"] == {
        "TableName": "items",
        "CapacityUnits": 0.0,
        "Table": {"CapacityUnits": 0.0},
    }
    get(client, ReturnConsumedCapacity="TOTAL")
    assert "ConsumedCapacity" not in get(client)


def test_numbers_are_keys_by_value(client: Any, calls: CallCounter) -> None:
    client.put_item(TableName="pairs", Item={"pk": {"S": "a"}, "sk": {"N": "1.0"}, "v": {"S": "x"}})
    for spelling in ("1", "1.0", "1E0", "01"):
        response = client.get_item(TableName="pairs", Key={"pk": {"S": "a"}, "sk": {"N": spelling}})
        assert response["Item"]["v"] == {"S": "x"}
    assert calls["GetItem"] == 1
    client.delete_item(TableName="pairs", Key={"pk": {"S": "a"}, "sk": {"N": "1.00"}})
    assert "Item" not in client.get_item(
        TableName="pairs", Key={"pk": {"S": "a"}, "sk": {"N": "1"}}
    )


def test_table_arn_while_own_account_unknown(client: Any, calls: CallCounter) -> None:
    """The ARN may name this very table: its reads bypass, its writes drop the name's entries."""
    arn = client.describe_table(TableName="items")["Table"]["TableArn"]
    client.put_item(TableName="items", Item=KEY)
    assert "CacheMetadata" not in client.get_item(TableName=arn, Key=KEY)
    assert "CacheMetadata" not in client.get_item(TableName=arn, Key=KEY)
    assert calls["GetItem"] == 2
    get(client)
    assert "CacheMetadata" in get(client)
    client.delete_item(TableName=arn, Key=KEY)
    assert "Item" not in get(client)


def test_decode_responses_client_round_trips_binary(
    session: boto3.Session, backend: Any, namespace: str
) -> None:
    registration = ddbcache_hooks.register(
        session, backend.client(decode_responses=True), namespace=namespace, **backend.options
    )
    try:
        c = session.client("dynamodb")
        from tests.conftest import make_table

        make_table(c, "bins", ("pk", "B"), ("sk", "N"))
        key = {"pk": {"B": b"\x00\xff\xfe binary"}, "sk": {"N": "1.0"}}
        item = {
            **key,
            "blob": {"B": bytes(range(256))},
            "set": {"BS": [b"\x00", b"\xff\x80", b"text"]},
            "nested": {"M": {"b": {"B": b"\xc3\x28"}, "l": {"L": [{"B": b"\x80"}]}}},
        }
        c.put_item(TableName="bins", Item=item)
        read_as = {"pk": key["pk"], "sk": {"N": "1"}}
        first = c.get_item(TableName="bins", Key=read_as)
        second = c.get_item(TableName="bins", Key=read_as)
        assert second["CacheMetadata"]["CacheHit"]
        assert second["Item"] == first["Item"]
        assert second["Item"]["blob"]["B"] == bytes(range(256))
        assert sorted(second["Item"]["set"]["BS"]) == sorted([b"\x00", b"\xff\x80", b"text"])
        table = session.resource("dynamodb").Table("bins")
        resource_hit = table.get_item(Key={"pk": b"\x00\xff\xfe binary", "sk": 1})
        assert resource_hit["Item"]["blob"].value == bytes(range(256))
    finally:
        registration.unregister()


def test_writes_with_filters_from_resource_conditions(session: boto3.Session, client: Any) -> None:
    table = session.resource("dynamodb").Table("items")
    table.put_item(Item={"pk": "a", "v": 1})
    table.get_item(Key={"pk": "a"})
    table.put_item(Item={"pk": "a", "v": 2}, ConditionExpression=Attr("v").eq(1))
    assert table.get_item(Key={"pk": "a"})["Item"]["v"] == 2


def test_hits_are_read_without_the_lookup_script(backend: Any, client: Any, cache: Any) -> None:
    """A hit sends only the read-only hit script: one batch, no lookup script."""
    keys = [{"pk": {"S": str(i)}} for i in range(12)]  # spread over a cluster's masters
    for key in keys:
        client.put_item(TableName="items", Item=key)
    # Filled after the writes' settle window: an entry filled inside it lives at most
    # the window, and on a slow machine would expire (a miss runs the script) below.
    time.sleep(cache._protocol.settings.settle_ms / 1000 + 0.1)
    for key in keys:
        client.get_item(TableName="items", Key=key)
    sent: list[tuple[str, ...]] = []
    execute = cache._transport.execute

    def recording(calls: Any, errors_as_values: bool = False) -> Any:
        sent.append(tuple(c.script.name if c.script else c.args[0] for c in calls))
        return execute(calls, errors_as_values)

    cache._transport.execute = recording
    try:
        for key in keys:
            assert "CacheMetadata" in client.get_item(TableName="items", Key=key)
    finally:
        del cache._transport.execute
    # One node, or a cluster with buckets (the entry and its bucket's tokens share a
    # slot): one command; a cluster without: one per slot.
    per_hit = ("read_hits", "read_hits") if backend.name.endswith("cluster") else ("read_hits",)
    assert sent == [per_hit] * len(keys)
