"""Memoized plans (plan.Planner._item_ids) never cross tables, Regions, accounts,
namespaces or settings: the same request bytes read through two registrations
and in two Regions each get their own entry."""

from __future__ import annotations

from typing import Any

import boto3
import redis

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from ddbcache_hooks.keys import Location
from tests.conftest import CallCounter, make_table, prove_read_access

KEY = {"pk": {"S": "same"}}


def _value(client: Any, table: str = "items") -> str:
    return str(client.get_item(TableName=table, Key=KEY)["Item"]["v"]["S"])


def test_the_same_request_in_two_regions_and_two_registrations(
    aws: None, redis_server: RedisServer, namespace: str
) -> None:
    first, second = boto3.Session(region_name="us-east-1"), boto3.Session(region_name="us-east-1")
    one = ddbcache_hooks.register(first, redis.Redis(port=redis_server.port), namespace=namespace)
    # Another namespace and other settings, on the same Redis.
    two = ddbcache_hooks.register(
        second,
        redis.Redis(port=redis_server.port),
        namespace=namespace + "-2",
        key_schema={"items": "pk"},
    )
    try:
        east = first.client("dynamodb")
        west = first.client("dynamodb", region_name="eu-west-1")
        other = second.client("dynamodb")
        for client, value in ((east, "east"), (west, "west")):
            make_table(client, "items")
            prove_read_access(client)
            client.put_item(TableName="items", Item={**KEY, "v": {"S": value}})
        prove_read_access(other)
        calls = {name: CallCounter().attach(c) for name, c in (("east", east), ("west", west))}
        for _ in range(3):  # misses fill, then hits: each Region keeps its own value
            assert _value(east) == "east"
            assert _value(west) == "west"
        assert calls["east"]["GetItem"] == 1 and calls["west"]["GetItem"] == 1
        # The second registration's own entry, filled by its own miss.
        other_calls = CallCounter().attach(other)
        east.put_item(TableName="items", Item={**KEY, "v": {"S": "east-2"}})
        for _ in range(3):
            assert _value(other) == "east-2"
        assert other_calls["GetItem"] == 1
        # The first registration saw the write (it made it): its entry is gone too.
        assert _value(east) == "east-2"
        # The same request bytes, planned for each place, name different keys.
        planner = one._protocol.planner
        params = {"TableName": "items", "Key": KEY}
        ids = {
            where: planner.plan("GetItem", params, Location("aws", region, account)).slots[0].key  # type: ignore[union-attr]
            for where, region, account in (
                ("east", "us-east-1", ""),
                ("west", "eu-west-1", ""),
                ("east, other account", "us-east-1", "123456789012"),
            )
        }
        arn = {"TableName": "arn:aws:dynamodb:us-east-1:210987654321:table/items", "Key": KEY}
        foreign = planner.plan("GetItem", arn, Location("aws", "us-east-1", "123456789012"))
        ids["a foreign account's table by ARN"] = foreign.slots[0].key  # type: ignore[union-attr]
        assert len(set(ids.values())) == 3, ids  # the own account's name is the same table
        assert ids["a foreign account's table by ARN"] not in (ids["east"], ids["west"])
        second_key = two._protocol.planner.plan("GetItem", params, Location("aws", "us-east-1"))
        assert second_key.slots[0].key != ids["east"]  # type: ignore[union-attr]
    finally:
        one.unregister()
        two.unregister()


def test_memo_is_bounded_and_keeps_answers_exact(aws: None, redis_server: RedisServer) -> None:
    from ddbcache_hooks import plan as plan_module
    from ddbcache_hooks.keys import item_digest

    registration = ddbcache_hooks.register(
        boto3.Session(region_name="us-east-1"),
        redis.Redis(port=redis_server.port),
        namespace="memo-bound",
    )
    try:
        planner = registration._protocol.planner
        here = Location("aws", "us-east-1")
        (table,) = here.refs("items")
        for i in range(plan_module.MEMO_SIZE + 100):
            key = {"pk": {"N": str(i)}}
            got = planner.plan("GetItem", {"TableName": "items", "Key": key}, here)
            assert got.slots[0].key == planner.layout.item(table, item_digest(table, key))  # type: ignore[union-attr]
        assert len(planner._memo) == plan_module.MEMO_SIZE
        # "1" and "1.0" are one number: two memo entries, one item.
        a = planner.plan("GetItem", {"TableName": "items", "Key": {"pk": {"N": "1"}}}, here)
        b = planner.plan("GetItem", {"TableName": "items", "Key": {"pk": {"N": "1.0"}}}, here)
        assert a.slots[0].key == b.slots[0].key  # type: ignore[union-attr]
        # A projection is another variant of the same item.
        c = planner.plan(
            "GetItem",
            {"TableName": "items", "Key": {"pk": {"N": "1"}}, "ProjectionExpression": "pk"},
            here,
        )
        assert c.slots[0].key == a.slots[0].key and c.slots[0].field != a.slots[0].field  # type: ignore[union-attr]
    finally:
        registration.unregister()


def test_memo_under_threads_never_fails_a_plan(aws: None, redis_server: RedisServer) -> None:
    """Eight threads planning distinct requests past the bound at once: every plan is
    exact and none fails while another thread evicts."""
    import threading

    from ddbcache_hooks import plan as plan_module
    from ddbcache_hooks.keys import item_digest

    registration = ddbcache_hooks.register(
        boto3.Session(region_name="us-east-1"),
        redis.Redis(port=redis_server.port),
        namespace="memo-threads",
    )
    errors: list[BaseException] = []
    try:
        planner = registration._protocol.planner
        here = Location("aws", "us-east-1")
        (table,) = here.refs("items")

        def plan_many(offset: int) -> None:
            try:
                for i in range(plan_module.MEMO_SIZE // 2):
                    key = {"pk": {"S": f"{offset}-{i}"}}
                    got = planner.plan("GetItem", {"TableName": "items", "Key": key}, here)
                    want = planner.layout.item(table, item_digest(table, key))
                    assert got.slots[0].key == want  # type: ignore[union-attr]
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=plan_many, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[:3]
        assert len(planner._memo) <= plan_module.MEMO_SIZE + 8
    finally:
        registration.unregister()
