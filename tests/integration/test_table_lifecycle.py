"""Deleted, recreated, missing and unknown: tables never serve ghosts.

Real boto3 clients, moto (in-process), a real Redis. "Another process" is a
second registration on its own session: it shares nothing with the first but
the Redis, exactly like a process (its key schemas live in its own memory).
"""

from __future__ import annotations

import logging
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import REGION, Backend, CallCounter, counting_redis, make_table

KEY = {"pk": {"S": "a"}}


@pytest.fixture
def registered(session: boto3.Session, redis_or_buckets: Backend, namespace: str) -> Any:
    """Registrations sharing one Redis, each on its own session (a process each)."""
    made = []

    def register(**options: Any) -> Any:
        own = boto3.Session(region_name=REGION)
        registration = ddbcache_hooks.register(
            own,
            redis_or_buckets.client(),
            namespace=namespace,
            **{**redis_or_buckets.options, **options},
        )
        made.append(registration)
        return own.client("dynamodb")

    yield register
    for registration in made:
        registration.unregister()


def served_from_cache(response: dict[str, Any]) -> bool:
    return "CacheMetadata" in response


def test_delete_and_recreate_serves_no_ghost_item_or_query(registered: Any) -> None:
    client = registered(query_admission=1)
    make_table(client, "tbl")
    client.put_item(TableName="tbl", Item={**KEY, "v": {"S": "old"}})
    query = {"TableName": "tbl", "KeyConditionExpression": "pk = :a"}
    query["ExpressionAttributeValues"] = {":a": {"S": "a"}}  # type: ignore[assignment]
    client.get_item(TableName="tbl", Key=KEY)
    client.query(**query)
    assert served_from_cache(client.get_item(TableName="tbl", Key=KEY))
    assert served_from_cache(client.query(**query))

    client.delete_table(TableName="tbl")
    make_table(client, "tbl")

    item = client.get_item(TableName="tbl", Key=KEY)
    assert "Item" not in item and not served_from_cache(item)
    page = client.query(**query)
    assert page["Items"] == [] and not served_from_cache(page)
    assert client.scan(TableName="tbl")["Items"] == []


def test_recreated_with_another_key_a_write_drops_the_right_entry_in_every_process(
    registered: Any,
) -> None:
    first, second = registered(), registered()
    make_table(first, "tbl")
    first.put_item(TableName="tbl", Item={**KEY, "v": {"N": "0"}})  # first learns (pk)
    second.put_item(TableName="tbl", Item={**KEY, "v": {"N": "0"}})  # second learns (pk) too

    first.delete_table(TableName="tbl")
    make_table(first, "tbl", ("pk", "S"), ("sk", "S"))
    key = {**KEY, "sk": {"S": "x"}}
    first.put_item(TableName="tbl", Item={**key, "v": {"N": "1"}})
    assert first.get_item(TableName="tbl", Key=key)["Item"]["v"] == {"N": "1"}
    assert served_from_cache(first.get_item(TableName="tbl", Key=key))

    # The second process still holds the old schema (pk): its write is projected onto
    # the wrong key, and the table's generation tells so: the whole table goes.
    calls = CallCounter().attach(second)
    second.put_item(TableName="tbl", Item={**key, "v": {"N": "2"}})
    assert calls["DescribeTable"] == 0
    for reader in (first, second):
        item = reader.get_item(TableName="tbl", Key=key)
        assert item["Item"]["v"] == {"N": "2"}
    # It learns the new schema (the first process stored it in Redis) and projects
    # correctly again.
    second.put_item(TableName="tbl", Item={**key, "v": {"N": "3"}})
    assert calls["DescribeTable"] == 0
    assert first.get_item(TableName="tbl", Key=key)["Item"]["v"] == {"N": "3"}
    assert served_from_cache(first.get_item(TableName="tbl", Key=key))


def test_a_table_deleted_elsewhere_is_dropped_by_resource_not_found(
    registered: Any, session: boto3.Session, caplog: pytest.LogCaptureFixture
) -> None:
    client = registered()
    make_table(client, "tbl")
    client.put_item(TableName="tbl", Item={**KEY, "v": {"S": "old"}})
    client.get_item(TableName="tbl", Key=KEY)
    assert served_from_cache(client.get_item(TableName="tbl", Key=KEY))
    session.client("dynamodb").delete_table(TableName="tbl")  # not a registered client

    calls = CallCounter().attach(client)
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="ddbcache_hooks"),
        pytest.raises(ClientError, match="ResourceNotFoundException"),
    ):
        client.put_item(TableName="tbl", Item={**KEY, "v": {"S": "new"}})
    # No DescribeTable of a table that is not there, and not a word about it.
    assert calls["DescribeTable"] == 0
    assert caplog.records == []
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        client.get_item(TableName="tbl", Key=KEY)  # the old item is gone from the cache


def test_resource_not_found_from_a_read_drops_the_table_too(
    registered: Any, session: boto3.Session
) -> None:
    client = registered(query_admission=1)
    make_table(client, "tbl")
    make_table(client, "other")
    client.put_item(TableName="tbl", Item=KEY)
    client.get_item(TableName="tbl", Key=KEY)
    session.client("dynamodb").delete_table(TableName="tbl")
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        client.query(
            TableName="tbl",
            KeyConditionExpression="pk = :a",
            ExpressionAttributeValues={":a": {"S": "a"}},
        )
    make_table(session.client("dynamodb"), "tbl")  # recreated elsewhere, empty
    assert "Item" not in client.get_item(TableName="tbl", Key=KEY)


def test_describe_table_failure_names_the_environment_variable(
    registered: Any, caplog: pytest.LogCaptureFixture, session: boto3.Session
) -> None:
    client = registered()
    make_table(client, "tbl")

    def deny(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDeniedException"}}, "DescribeTable")

    client.meta.events.register("before-call.dynamodb.DescribeTable", deny)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ddbcache_hooks"):
        client.put_item(TableName="tbl", Item=KEY)
    (record,) = caplog.records
    assert "DDBCACHE_KEY_SCHEMA=tbl=hash:range" in record.getMessage()
    assert "key_schema=" in record.getMessage()
    assert record.pathname.endswith("handlers.py")  # where it was decided, not the log wrapper


def test_round_trips_of_learning_checked_writes_and_lifecycle(
    session: boto3.Session, redis_server: RedisServer, namespace: str
) -> None:
    """Learning costs one Redis read; a write checked against the generation and a
    table lifecycle change cost one round trip each."""
    cache, counting = counting_redis(redis_server.port)
    registration = ddbcache_hooks.register(session, cache, namespace=namespace)
    try:
        client = session.client("dynamodb")
        make_table(client, "tbl")
        before = counting.sends
        client.put_item(TableName="tbl", Item={**KEY, "v": {"N": "1"}})
        # read generation + schema, store the learned schema, invalidate (+ check)
        assert counting.sends - before == 3
        before = counting.sends
        client.put_item(TableName="tbl", Item={**KEY, "v": {"N": "2"}})
        assert counting.sends - before == 1
        before = counting.sends
        client.delete_table(TableName="tbl")
        assert counting.sends - before == 1
    finally:
        registration.unregister()
