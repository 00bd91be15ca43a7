"""Stream records as invalidations, without I/O: the same effects as registered writes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from ddbcache_hooks.config import Settings, TablePolicy
from ddbcache_hooks.effects import Op, RedisBatch
from ddbcache_hooks.keys import Location
from ddbcache_hooks.plan import WritePlan
from ddbcache_hooks.protocol import Protocol
from ddbcache_hooks.streams import records

STREAM = "arn:aws:dynamodb:eu-west-1:123456789012:table/orders/stream/2026-01-01T00:00:00.000"


ORDERS = "arn:aws:dynamodb:eu-west-1:123456789012:table/orders"
USERS = "arn:aws:dynamodb:eu-west-1:123456789012:table/users"
HERE = Location("aws", "eu-west-1")


def test_table_of_a_stream_or_table_arn() -> None:
    assert records.table_of(STREAM) == ORDERS
    assert records.table_of(ORDERS) == ORDERS
    for bad in ("orders", "", "arn:aws:sqs:eu-west-1:1:queue", None):
        with pytest.raises(ValueError, match="ARN"):
            records.table_of(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dynamodb", "usable"),
    [
        ({"Keys": {"pk": {"S": "a"}, "sk": {"N": "1.50"}}}, True),
        ({"Keys": {"pk": {"B": b"\x00"}}}, True),
        ({"Keys": {}}, False),
        ({"Keys": {"pk": {"N": "not a number"}}}, False),
        ({"Keys": "pk=a"}, False),
        ({}, False),
    ],
)
def test_record_keys(dynamodb: dict[str, Any], usable: bool) -> None:
    key = records.record_keys({"dynamodb": dynamodb})
    assert (key == dynamodb["Keys"]) if usable else key is None


def effects(op: Op[Any]) -> list[tuple[Any, ...]]:
    """The Redis calls a step makes, without the fresh random tokens it draws."""
    seen: list[tuple[Any, ...]] = []
    try:
        effect = next(op)
        while True:
            assert isinstance(effect, RedisBatch)
            for call in effect.calls:
                if call.script is None:
                    seen.append(tuple(call.args))
                elif call.script.name == "replace_tokens":
                    seen.append((call.script.name, call.args[0], call.args[3]))
                elif call.script.name == "invalidate_items":  # its last argument is a nonce
                    seen.append((call.script.name, *call.args[:-1]))
                else:
                    seen.append((call.script.name, *call.args))
            effect = op.send([None] * len(effect.calls))
    except StopIteration:
        return seen


WRITTEN: list[tuple[str, Mapping[str, Any]]] = [
    (ORDERS, {"pk": {"S": "a"}, "sk": {"N": "1"}}),
    (ORDERS, {"pk": {"S": "b"}, "sk": {"N": "2.0"}}),
    (USERS, {"id": {"B": b"\x01\x02"}}),
]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"settle_ms": 0, "publish_invalidations": False},
        {"tables": {"orders": TablePolicy(query_invalidation="write")}, "namespace": "app"},
    ],
)
def test_records_drop_what_registered_deletes_of_their_keys_drop(options: dict[str, Any]) -> None:
    protocol = Protocol(Settings.resolve(options))
    from_stream = effects(records.apply(protocol, WRITTEN))
    plans = [
        protocol.planner.plan("DeleteItem", {"TableName": table, "Key": key}, HERE)
        for table, key in WRITTEN
    ]
    assert all(isinstance(plan, WritePlan) for plan in plans)

    def registered() -> Op[None]:
        from ddbcache_hooks.plan import Invalidation

        merged = Invalidation()
        for plan in plans:
            assert isinstance(plan, WritePlan)
            merged.merge((yield from protocol.invalidation(plan, None)))
        yield from protocol.deliver(merged)

    assert from_stream == effects(registered())
    assert len([e for e in from_stream if e[0] == "invalidate_items"]) == 1  # one script, one trip


def test_records_drop_what_a_plain_name_cached_in_that_region() -> None:
    protocol = Protocol(Settings.resolve({"account_id": "123456789012"}))
    calls = effects(records.apply(protocol, WRITTEN[:1]))
    plain = protocol.planner.plan("DeleteItem", {"TableName": "orders", "Key": WRITTEN[0][1]}, HERE)
    assert isinstance(plain, WritePlan)
    assert calls == effects(_deliver(protocol, plain))
    elsewhere = Location("aws", "us-east-1", "123456789012")
    other = protocol.planner.plan(
        "DeleteItem", {"TableName": "orders", "Key": WRITTEN[0][1]}, elsewhere
    )
    assert isinstance(other, WritePlan)
    assert calls != effects(_deliver(protocol, other))


def _deliver(protocol: Protocol, plan: WritePlan) -> Op[None]:
    yield from protocol.deliver((yield from protocol.invalidation(plan, None)))


def test_whole_tables_replace_the_tables_tokens() -> None:
    protocol = Protocol(Settings.resolve({}))
    calls = effects(records.apply(protocol, [], {ORDERS: "trimmed"}))
    # The account is not configured: both forms a registered client may cache under.
    local, foreign = HERE.refs(ORDERS)
    assert calls[0] == ("replace_tokens", protocol.layout.tokens(local), 1)
    assert calls[1] == ("replace_tokens", protocol.layout.tokens(foreign), 1)
    assert calls[-1][0] == "PUBLISH"
    assert effects(records.apply(protocol, [])) == []


def test_stream_lag_is_the_largest_over_processes_and_records_add_up() -> None:
    import fakeredis

    from ddbcache_hooks.metrics import aggregate, flush_fields
    from ddbcache_hooks.stats import Stats

    client = fakeredis.FakeRedis()
    for n, (records_applied, lag) in enumerate([(5, 120.0), (7, 40.0)]):
        stats = Stats()
        stats.incr("stream_records", records_applied)
        stats.gauge("stream_lag_ms", lag)
        counts = stats.snapshot()
        assert counts["ReturnedRecordsCount"] == records_applied and counts["IteratorAge"] == lag
        client.hset(f"CC:m:{{p{n}}}", mapping=flush_fields(counts, 1.0))
    totals = aggregate(client, "CC")
    assert totals.processes == 2
    assert totals.counters["stream_records"] == 12 and totals.counters["stream_lag_ms"] == 120
    assert "ReturnedRecordsCount" not in totals.counters  # one name each
