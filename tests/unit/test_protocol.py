"""The consistency protocol, stepped in memory: each effect checked, each reply scripted.

No Redis, no server, no fakeredis: the protocol's generators are driven by hand.
Every Redis reply is given in the raw shape the server returns (Lua ``false`` is
None, numbers are ints, strings are bytes), so these tests also pin the reply
parsing of store.py. Time is a fake clock the driver advances on ``Sleep``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from ddbcache_hooks import protocol as protocol_module
from ddbcache_hooks import schema_steps, writethrough
from ddbcache_hooks.config import Settings
from ddbcache_hooks.effects import Call, DescribeTable, Op, RedisBatch, Sleep
from ddbcache_hooks.keys import Location, TableRef
from ddbcache_hooks.plan import HIT, LEASED, WAIT, ReadPlan, WritePlan
from ddbcache_hooks.protocol import Protocol
from ddbcache_hooks.responses import CLIENT, timestamp
from ddbcache_hooks.schema import TableSchema
from ddbcache_hooks.scripts import (
    FILL_IF_LEASED,
    INVALIDATE_ITEMS,
    LOOKUP_OR_LEASE,
    READ_HITS,
    TABLE_GENERATION,
    TABLE_LIFECYCLE,
    FillStatus,
    LookupStatus,
)

HERE = Location("aws", "us-east-1")
T = TableRef("aws", "us-east-1", "", "t")
KEY = {"pk": {"S": "a"}}
ITEM = {"pk": {"S": "a"}, "v": {"N": "1"}, "b": {"B": b"\x00\xff"}}
GET = {"TableName": "t", "Key": KEY}
ITEM_TOKEN, QUERY_TOKEN = b"0a1b2ci", b"0a1b2cq"
GENERATION = b"5f3e/77"


class Clock:
    """Stands in for the ``time`` module of protocol.py: wall and monotonic clocks together."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 1000.0  # small: sleeps of a millisecond add up exactly enough

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def ms(self) -> int:
        return int(self.wall * 1000)

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    # The protocol's own steps and those it inherits (key schemas, write-through).
    for module in (protocol_module, schema_steps, writethrough):
        monkeypatch.setattr(module, "time", fake)
    yield fake


class Step:
    """Steps one protocol generator: look at the effect it yields, send its reply."""

    def __init__(self, op: Op[Any]) -> None:
        self._op = op
        self._done = False
        self.value: Any = None
        self.effect: Any = None
        self._advance(lambda: next(op))

    def _advance(self, step: Any) -> None:
        try:
            self.effect = step()
        except StopIteration as stop:
            self._done, self.value, self.effect = True, stop.value, None

    def send(self, reply: Any) -> None:
        assert not self._done, "the step is finished; nothing to reply to"
        self._advance(lambda: self._op.send(reply))

    def batch(self) -> list[Call]:
        """The calls of the RedisBatch the step yields now."""
        assert isinstance(self.effect, RedisBatch), f"expected a RedisBatch, got {self.effect!r}"
        return list(self.effect.calls)

    def sleep(self, clock: Clock) -> float:
        """Carry out the Sleep the step yields now (on the fake clock); its duration."""
        assert isinstance(self.effect, Sleep), f"expected a Sleep, got {self.effect!r}"
        seconds = float(self.effect.seconds)
        clock.advance(seconds)
        self.send(None)
        return seconds

    def result(self) -> Any:
        assert self._done, f"the step still yields {self.effect!r}"
        return self.value

    def past_hit_read(self) -> Step:
        """Answer the hit read (READ_HITS) the step yields first, if it does, with no hit."""
        if isinstance(self.effect, RedisBatch) and all(
            call.script == READ_HITS for call in self.effect.calls
        ):
            self.send([no_hits(call) for call in self.effect.calls])
        return self


def hit_counts(call: Call) -> tuple[int, int, int]:
    """READ_HITS's counts of entry, token and partition hashes."""
    n, t, p = call.args[call.numkeys : call.numkeys + 3]
    return int(n), int(t), int(p)


def no_hits(call: Call, server_ms: int = 1_800_000_000_000) -> bytes:
    """READ_HITS's reply when nothing it read is a hit."""
    n, t, p = hit_counts(call)
    return " ".join([str(server_ms), "5f3e"] + ["- -"] * (n + t + p)).encode() + b"\n"


def hits_reply(
    call: Call,
    entry: bytes,
    *,
    item_token: bytes = ITEM_TOKEN,
    query_token: bytes = QUERY_TOKEN,
    server_ms: int = 1_800_000_000_000,
) -> bytes:
    """READ_HITS's reply for one entry hash and its table's tokens, a hit."""
    assert hit_counts(call) == (1, 1, 0), call
    head = [server_ms, "5f3e", len(item_token), len(query_token), len(GENERATION), len(entry)]
    values = item_token + query_token + GENERATION + entry
    return " ".join(map(str, head)).encode() + b"\n" + values


def serving(protocol: Protocol, plan: ReadPlan) -> Step:
    """Serve ``plan``, past a hit read that finds nothing (the lookup script is next)."""
    return Step(protocol.serve(plan)).past_hit_read()


class LookupArgs(NamedTuple):
    keys: tuple[Any, ...]
    field: str
    lease: str
    lease_ms: int
    admission: int
    window_ms: int
    drop: int
    token_ttl_ms: int
    deadline_ms: int
    refresh: str


class FillArgs(NamedTuple):
    keys: tuple[Any, ...]
    field: str
    lease: str
    entry: bytes
    ttl_ms: int
    settle_ms: int
    since_ms: int
    grace_ms: int
    cost_ms: int


def lookup_args(call: Call) -> LookupArgs:
    assert call.script == LOOKUP_OR_LEASE, f"not a lookup: {call!r}"
    return LookupArgs(call.args[: call.numkeys], *call.args[call.numkeys :])


def fill_args(call: Call) -> FillArgs:
    assert call.script == FILL_IF_LEASED, f"not a fill: {call!r}"
    return FillArgs(call.args[: call.numkeys], *call.args[call.numkeys :])


def lookup_reply(
    status: LookupStatus,
    entry: bytes | None = None,
    *,
    item_token: bytes = ITEM_TOKEN,
    query_token: bytes = QUERY_TOKEN,
    partition_token: bytes | None = None,
    since: int = 0,
    server_ms: int = 1_800_000_000_000,
) -> list[Any]:
    """LOOKUP_OR_LEASE's reply as redis-py returns it: {status, entry, flags, item token,
    query token, generation, partition token, since, server ms}."""
    return [
        int(status),
        entry,
        0,
        item_token,
        query_token,
        GENERATION,
        partition_token,
        since,
        server_ms,
    ]


def fill_reply(outcome: FillStatus, ttl_ms: int = 0) -> list[int]:
    return [int(outcome), ttl_ms]


def encode(protocol: Protocol, payload: dict[str, Any], token: bytes, created_ms: int) -> bytes:
    """An entry as ``Protocol._fill`` stores it (no signing key: the context is empty)."""
    return protocol.codec.encode(payload, token=token, created_ms=created_ms, context="")


def read_plan(protocol: Protocol, operation: str, params: dict[str, Any]) -> ReadPlan:
    plan = protocol.planner.plan(operation, params, HERE)
    assert isinstance(plan, ReadPlan)
    return plan


def write_plan(protocol: Protocol, operation: str, params: dict[str, Any]) -> WritePlan:
    plan = protocol.planner.plan(operation, params, HERE)
    assert isinstance(plan, WritePlan)
    return plan


def hit_metadata(created_ms: int) -> dict[str, Any]:
    return {"CacheHit": True, "CachedTime": timestamp(created_ms), "Client": CLIENT}


def answered(answer: dict[str, Any] | None, header: str = "hit") -> dict[str, Any]:
    """The answer without its synthesized ResponseMetadata, which is checked here."""
    assert answer is not None
    metadata = answer.pop("ResponseMetadata")
    assert metadata["HTTPStatusCode"] == 200 and metadata["RetryAttempts"] == 0
    assert metadata["RequestId"].startswith("ddbcache-")
    assert metadata["HTTPHeaders"]["x-ddbcache"] == header
    return answer


def stats(protocol: Protocol, *names: str) -> dict[str, Any]:
    snapshot = protocol.stats.snapshot()
    return {name: snapshot[name] for name in names}


def lease_and_miss(protocol: Protocol, plan: ReadPlan, reply: list[Any] | None = None) -> str:
    """Serve ``plan`` with a lookup that leases it to this caller; the lease token."""
    step = serving(protocol, plan)
    (call,) = step.batch()
    lease = lookup_args(call).lease
    step.send([reply or lookup_reply(LookupStatus.LEASED)])
    assert step.result() is None
    assert plan.slots[0].state == LEASED and plan.slots[0].lease == lease
    return lease


# --- reads -------------------------------------------------------------------------


def test_a_hit_is_one_hit_read_answered_from_the_entry(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({}))
    plan = read_plan(protocol, "GetItem", GET)
    created = clock.ms() - 5000
    step = Step(protocol.serve(plan))
    (call,) = step.batch()
    assert call.script == READ_HITS
    item_key, token_key = protocol.planner.item_key(T, KEY), protocol.layout.tokens(T)
    assert call.args[: call.numkeys] == (item_key, token_key)
    n, t, p, refresh, field = call.args[call.numkeys :]
    assert (n, t, p, field) == (1, 1, 0, "") and float(refresh) > 0  # early refresh is on
    step.send([hits_reply(call, encode(protocol, {"Item": ITEM}, ITEM_TOKEN, created))])
    assert answered(step.result()) == {"Item": ITEM, "CacheMetadata": hit_metadata(created)}
    assert plan.served and plan.slots[0].state == HIT
    assert stats(protocol, "item_hits", "misses", "fills") == {
        "item_hits": 1,
        "misses": 0,
        "fills": 0,
    }


def test_a_hit_the_lookup_script_finds_is_served_too(clock: Clock) -> None:
    """What the hit read leaves (a lease, say) goes to the lookup script, which may hit."""
    protocol = Protocol(Settings.resolve({}))
    plan = read_plan(protocol, "GetItem", GET)
    created = clock.ms() - 5000
    step = serving(protocol, plan)
    (call,) = step.batch()
    args = lookup_args(call)
    assert args.keys == (protocol.planner.item_key(T, KEY), protocol.layout.tokens(T))
    assert args.field == "" and args.drop == 0 and args.lease_ms == 2000
    step.send(
        [lookup_reply(LookupStatus.HIT, encode(protocol, {"Item": ITEM}, ITEM_TOKEN, created))]
    )
    assert answered(step.result()) == {"Item": ITEM, "CacheMetadata": hit_metadata(created)}
    assert plan.served and plan.slots[0].state == HIT


def test_a_miss_leases_and_its_fill_carries_the_lease_and_the_entry(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({"ttl_config": {"item": 60}}))
    plan = read_plan(protocol, "GetItem", GET)
    lease = lease_and_miss(protocol, plan)
    parsed = {"Item": ITEM, "ResponseMetadata": {"RequestId": "r1", "HTTPStatusCode": 200}}
    (request,) = protocol.completed(plan, parsed, True)
    step = Step(protocol.fill([request]))
    (call,) = step.batch()
    fill = fill_args(call)
    assert fill.keys == (plan.slots[0].key,) and fill.field == "" and fill.lease == lease
    entry = protocol.codec.decode(fill.entry, context="")
    assert entry.payload == {"Item": ITEM}  # ResponseMetadata is not stored
    assert entry.token == ITEM_TOKEN and entry.created_ms == clock.ms()
    assert fill.ttl_ms == 60_000
    step.send([fill_reply(FillStatus.STORED, 60_000)])
    assert step.result() is None
    assert stats(protocol, "item_misses", "fills", "fills_discarded") == {
        "item_misses": 1,
        "fills": 1,
        "fills_discarded": 0,
    }


def test_a_waiter_sleeps_looks_again_and_hits(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({}))
    plan = read_plan(protocol, "GetItem", GET)
    step = serving(protocol, plan)
    (first,) = step.batch()
    step.send([lookup_reply(LookupStatus.WAIT)])
    assert plan.slots[0].state == WAIT and plan.slots[0].lease is None
    assert 0.001 <= step.sleep(clock) <= 0.0015  # the first step, jittered by up to half
    (poll,) = step.batch()
    assert lookup_args(poll).keys == lookup_args(first).keys
    step.send([lookup_reply(LookupStatus.WAIT)])
    assert 0.002 <= step.sleep(clock) <= 0.003  # the next, twice as long
    created = clock.ms()
    blob = encode(protocol, {"Item": ITEM}, ITEM_TOKEN, created)
    (poll,) = step.batch()
    step.send([lookup_reply(LookupStatus.HIT, blob)])
    assert answered(step.result()) == {"Item": ITEM, "CacheMetadata": hit_metadata(created)}
    assert stats(protocol, "lease_waits", "lease_wait_timeouts", "item_hits") == {
        "lease_waits": 1,
        "lease_wait_timeouts": 0,
        "item_hits": 1,
    }


def test_a_wait_that_runs_out_reads_dynamodb_and_fills_nothing(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({"lease_wait_ms": 20}))
    plan = read_plan(protocol, "GetItem", GET)
    step = serving(protocol, plan)
    step.batch()
    step.send([lookup_reply(LookupStatus.WAIT)])
    slept = 0.0
    for _ in range(100):
        if not isinstance(step.effect, Sleep):
            break
        slept += step.sleep(clock)
        step.batch()
        step.send([lookup_reply(LookupStatus.WAIT)])
    assert step.result() is None
    assert slept == pytest.approx(0.020, abs=1e-9)  # never longer than lease_wait_ms
    assert plan.slots[0].state == WAIT and plan.slots[0].lease is None
    assert protocol.completed(plan, {"Item": ITEM}, True) == []
    assert Step(protocol.fill([])).result() is None  # no round trip at all
    assert stats(protocol, "lease_wait_timeouts", "item_misses", "fills") == {
        "lease_wait_timeouts": 1,
        "item_misses": 1,
        "fills": 0,
    }


def test_a_fill_that_lost_its_lease_to_a_write_is_discarded(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({}))
    plan = read_plan(protocol, "GetItem", GET)
    lease = lease_and_miss(protocol, plan)
    (request,) = protocol.completed(plan, {"Item": ITEM}, True)
    # A DeleteItem of the item lands between DynamoDB's answer and the fill.
    write = Step(protocol.invalidate(write_plan(protocol, "DeleteItem", GET), {}))
    calls = write.batch()
    assert calls[0].script == INVALIDATE_ITEMS
    assert plan.slots[0].key in calls[0].args[: calls[0].numkeys]
    write.send([3, 0])  # keys deleted, PUBLISH receivers
    assert write.result() is None
    fill = Step(protocol.fill([request]))
    (call,) = fill.batch()
    assert fill_args(call).lease == lease
    fill.send([fill_reply(FillStatus.LOST)])  # the write deleted the lease
    assert fill.result() is None
    assert stats(protocol, "fills", "fills_discarded") == {"fills": 0, "fills_discarded": 1}
    # Nothing of the discarded fill is kept in process: the next read asks Redis again.
    again = read_plan(protocol, "GetItem", GET)
    lease_and_miss(protocol, again)
    assert stats(protocol, "item_hits", "item_misses") == {"item_hits": 0, "item_misses": 2}


@pytest.mark.parametrize(("consistency", "settle_ms"), [("eventual", 700), ("strict", 0)])
def test_a_fill_carries_the_settle_window_ttl_grace_and_cost(
    clock: Clock, consistency: str, settle_ms: int
) -> None:
    """Eventual fills stay inside the settle window (the script cuts their TTL unless the
    item's history proves no write in it); strict mode read DynamoDB consistently."""
    protocol = Protocol(
        Settings.resolve(
            {
                "consistency": consistency,
                "settle_ms": 700,
                "ttl_config": {"item": 60, "item_negative": 5},
                "stale_if_error_s": 30,
            }
        )
    )
    found = read_plan(protocol, "GetItem", GET)
    lease_and_miss(protocol, found)
    clock.advance(0.25)  # the DynamoDB read
    (request,) = protocol.completed(found, {"Item": ITEM}, True)
    absent = read_plan(protocol, "GetItem", {"TableName": "t", "Key": {"pk": {"S": "b"}}})
    lease_and_miss(protocol, absent)
    (negative,) = protocol.completed(absent, {}, True)
    step = Step(protocol.fill([request, negative]))
    item_fill, negative_fill = (fill_args(call) for call in step.batch())
    assert item_fill.settle_ms == negative_fill.settle_ms == settle_ms
    assert (item_fill.ttl_ms, negative_fill.ttl_ms) == (60_000, 5_000)
    assert item_fill.grace_ms == 30_000 and item_fill.since_ms == 0
    assert item_fill.cost_ms == 250  # from the lookup to DynamoDB's answer
    assert protocol.codec.decode(negative_fill.entry, context="").payload == {}
    # The script answers with the TTL it kept (cut to the window's rest here).
    step.send([fill_reply(FillStatus.STORED, 450), fill_reply(FillStatus.STORED, 5_000)])
    assert step.result() is None
    assert stats(protocol, "fills") == {"fills": 2}


def test_a_page_fill_carries_its_partition_history_and_both_tokens(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({"settle_ms": 700, "query_invalidation": "partition"}))
    params = {
        "TableName": "t",
        "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": "a"}},
    }
    plan = read_plan(protocol, "Query", params)
    step = serving(protocol, plan)
    (call,) = step.batch()
    partition = protocol.planner.partition_key(T, ("pk", {"S": "a"}))
    assert lookup_args(call).keys == (plan.slots[0].key, protocol.layout.tokens(T), partition)
    step.send([lookup_reply(LookupStatus.LEASED, partition_token=b"9p", since=1_799_999_999_500)])
    assert step.result() is None
    (request,) = protocol.completed(plan, {"Items": [ITEM], "Count": 1}, True)
    fill = Step(protocol.fill([request]))
    (call,) = fill.batch()
    args = fill_args(call)
    assert args.since_ms == 1_799_999_999_500 and args.settle_ms == 700
    assert protocol.codec.decode(args.entry, context="").token == QUERY_TOKEN + b"/9p"


def test_an_entry_filled_under_an_old_table_token_is_dropped_not_served(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({}))
    plan = read_plan(protocol, "GetItem", GET)
    old = encode(protocol, {"Item": ITEM}, b"old-i", clock.ms() - 1000)
    step = serving(protocol, plan)
    step.batch()
    # The entry is still in the hash, but the table's item token was replaced since.
    step.send([lookup_reply(LookupStatus.HIT, old, item_token=b"new-i")])
    assert not plan.served, f"served an entry filled under a replaced token: {step.value}"
    (drop,) = step.batch()  # looked up again, dropping it
    args = lookup_args(drop)
    assert args.drop == 1 and args.refresh == "0"
    step.send([lookup_reply(LookupStatus.LEASED, item_token=b"new-i")])
    assert step.result() is None
    assert plan.slots[0].state == LEASED
    assert stats(protocol, "item_hits", "item_misses") == {"item_hits": 0, "item_misses": 1}
    (request,) = protocol.completed(plan, {"Item": ITEM}, True)
    assert protocol.codec.decode(request.entry, context="").token == b"new-i"


def test_an_expired_entry_under_an_old_table_token_never_stands_in(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({"stale_if_error_s": 60, "ttl_config": {"item": 10}}))
    plan = read_plan(protocol, "GetItem", GET)
    old = encode(protocol, {"Item": ITEM}, b"old-i", clock.ms() - 15_000)
    lease_and_miss(protocol, plan, lookup_reply(LookupStatus.LEASED, old, item_token=b"new-i"))
    answer = Step(protocol.rescue(plan, 503, {"Error": {"Code": "InternalServerError"}}))
    assert answer.result() is None


# --- stale-if-error and early refresh ---------------------------------------------------


THROTTLED = {"Error": {"Code": "ProvisionedThroughputExceededException"}}
UNAVAILABLE = {"Error": {"Code": "ServiceUnavailable"}}


@pytest.mark.parametrize(("status", "parsed"), [(503, UNAVAILABLE), (400, THROTTLED)])
def test_an_expired_entry_inside_its_grace_answers_a_failed_read_as_stale(
    clock: Clock, status: int, parsed: dict[str, Any]
) -> None:
    protocol = Protocol(Settings.resolve({"stale_if_error_s": 60, "ttl_config": {"item": 10}}))
    plan = read_plan(protocol, "GetItem", GET)
    created = clock.ms() - 15_000  # expired 5 s ago; its grace lasts 55 s more
    blob = encode(protocol, {"Item": ITEM}, ITEM_TOKEN, created)
    lease_and_miss(protocol, plan, lookup_reply(LookupStatus.LEASED, blob))
    assert plan.slots[0].fallback == blob
    clock.advance(1.0)  # botocore's retries
    step = Step(protocol.rescue(plan, status, parsed))
    answer = step.result()
    assert answered(answer, "stale") == {
        "Item": ITEM,
        "CacheMetadata": {**hit_metadata(created), "Stale": True, "Age": 16.0},
    }
    assert stats(protocol, "stale_served") == {"stale_served": 1}


def test_an_error_dynamodb_may_not_hide_is_never_answered_from_the_cache(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({"stale_if_error_s": 60, "ttl_config": {"item": 10}}))
    plan = read_plan(protocol, "GetItem", GET)
    blob = encode(protocol, {"Item": ITEM}, ITEM_TOKEN, clock.ms() - 15_000)
    lease_and_miss(protocol, plan, lookup_reply(LookupStatus.LEASED, blob))
    invalid = {"Error": {"Code": "ValidationException"}}
    assert Step(protocol.rescue(plan, 400, invalid)).result() is None


def test_an_entry_whose_grace_ran_out_during_the_retries_does_not_answer(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({"stale_if_error_s": 60, "ttl_config": {"item": 10}}))
    plan = read_plan(protocol, "GetItem", GET)
    # Inside its grace when looked up (the script returned it), half a second left.
    blob = encode(protocol, {"Item": ITEM}, ITEM_TOKEN, clock.ms() - 69_500)
    lease_and_miss(protocol, plan, lookup_reply(LookupStatus.LEASED, blob))
    clock.advance(1.0)
    assert Step(protocol.rescue(plan, 503, UNAVAILABLE)).result() is None
    assert stats(protocol, "stale_served") == {"stale_served": 0}


def test_strict_mode_never_answers_from_an_expired_entry(clock: Clock) -> None:
    protocol = Protocol(
        Settings.resolve(
            {"consistency": "strict", "stale_if_error_s": 60, "ttl_config": {"item": 10}}
        )
    )
    plan = read_plan(protocol, "GetItem", GET)
    blob = encode(protocol, {"Item": ITEM}, ITEM_TOKEN, clock.ms() - 15_000)
    lease_and_miss(protocol, plan, lookup_reply(LookupStatus.LEASED, blob))
    assert Step(protocol.rescue(plan, 503, UNAVAILABLE)).result() is None


def test_early_refresh_leases_the_entry_to_this_caller_who_reads_dynamodb(clock: Clock) -> None:
    """A valid entry near its expiry: this caller refreshes it (everybody else keeps
    hitting); if DynamoDB fails the refresh, the still-valid entry answers."""
    protocol = Protocol(Settings.resolve({}))
    plan = read_plan(protocol, "GetItem", GET)
    created = clock.ms() - 3_590_000  # ten seconds before its expiry
    blob = encode(protocol, {"Item": ITEM}, ITEM_TOKEN, created)
    step = serving(protocol, plan)
    (call,) = step.batch()
    args = lookup_args(call)
    assert float(args.refresh) > 0  # XFetch's factor, drawn by the caller
    step.send([lookup_reply(LookupStatus.REFRESH, blob)])
    assert step.result() is None  # this caller reads DynamoDB
    slot = plan.slots[0]
    assert slot.state == LEASED and slot.lease == args.lease
    assert slot.fallback == blob and slot.fallback_fresh
    assert stats(protocol, "early_refreshes") == {"early_refreshes": 1}
    # The refresh's read failed: the still valid entry hides it, not marked stale.
    answer = Step(protocol.rescue(plan, 503, UNAVAILABLE)).result()
    assert answered(answer) == {"Item": ITEM, "CacheMetadata": hit_metadata(created)}
    assert stats(protocol, "refresh_errors_hidden", "stale_served") == {
        "refresh_errors_hidden": 1,
        "stale_served": 0,
    }


def test_an_early_refresh_refills_under_the_lease_its_lookup_took(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({}))
    plan = read_plan(protocol, "GetItem", GET)
    blob = encode(protocol, {"Item": ITEM}, ITEM_TOKEN, clock.ms() - 3_590_000)
    lease = lease_and_miss(protocol, plan, lookup_reply(LookupStatus.REFRESH, blob))
    clock.advance(0.04)
    newer = {**ITEM, "v": {"N": "2"}}
    (request,) = protocol.completed(plan, {"Item": newer}, True)
    step = Step(protocol.fill([request]))
    (call,) = step.batch()
    fill = fill_args(call)
    assert fill.lease == lease and fill.cost_ms == 40
    assert protocol.codec.decode(fill.entry, context="").payload == {"Item": newer}


def test_early_refresh_is_off_when_disabled(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({"early_refresh": False}))
    step = serving(protocol, read_plan(protocol, "GetItem", GET))
    (call,) = step.batch()
    assert lookup_args(call).refresh == "0"


# --- writes ------------------------------------------------------------------------------


def test_a_backlogged_invalidation_is_replayed_before_anything_is_served(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({}))
    other = {"TableName": "t", "Key": {"pk": {"S": "b"}}}
    lost = protocol.undelivered(write_plan(protocol, "DeleteItem", other), None)
    protocol.keep(lost)  # Redis did not take it
    assert protocol.backlog
    plan = read_plan(protocol, "GetItem", GET)
    step = serving(protocol, plan)
    calls = step.batch()
    assert calls[0].script == INVALIDATE_ITEMS
    dropped = calls[0].args[: calls[0].numkeys]
    assert dropped == tuple(key for _, key in protocol.planner.written_keys(T, other["Key"]))
    assert calls[-1].args[0] == "PUBLISH"
    step.send([len(dropped), 0])
    (hit_read,) = step.batch()  # only then the read's lookup
    assert hit_read.script == READ_HITS
    assert hit_read.args[0] == protocol.planner.item_key(T, KEY)
    created = clock.ms()
    step.send([hits_reply(hit_read, encode(protocol, {"Item": ITEM}, ITEM_TOKEN, created))])
    assert answered(step.result()) == {"Item": ITEM, "CacheMetadata": hit_metadata(created)}
    assert not protocol.backlog
    assert stats(protocol, "backlog_replayed") == {"backlog_replayed": len(dropped)}


def test_a_put_of_an_unknown_table_reads_its_schema_then_drops_the_item(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({"settle_ms": 700}))
    put = write_plan(protocol, "PutItem", {"TableName": "t", "Item": ITEM})
    tokens, schema_key = protocol.layout.tokens(T), protocol.layout.schema(T)
    step = Step(protocol.invalidate(put, {}))
    (read,) = step.batch()  # the schema shared through Redis first
    assert read.script == TABLE_GENERATION and read.args[:2] == (tokens, schema_key)
    assert read.args[-1] == ""  # only read
    step.send([[b"g1", None, 0]])  # the table's generation; no schema stored
    assert step.effect == DescribeTable("t")
    step.send(TableSchema(("pk",), described=True))
    (share,) = step.batch()  # shared for the other processes
    assert share.args[:2] == ("SET", schema_key)
    assert TableSchema.decode(share.args[2]) == TableSchema(
        ("pk",), described=True, generation=b"g1"
    )
    step.send([True])
    calls = step.batch()
    assert calls[0].script == INVALIDATE_ITEMS
    dropped = calls[0].args[: calls[0].numkeys]
    assert dropped == tuple(key for _, key in protocol.planner.written_keys(T, KEY))
    assert dropped[0] == protocol.planner.item_key(T, KEY)
    assert calls[0].args[calls[0].numkeys] == 700  # the settle window's marker
    check = calls[1]  # the write was projected with a schema of generation g1
    assert check.script == TABLE_GENERATION and check.args[:2] == (tokens, schema_key)
    assert check.args[4] == b"g1"
    step.send([len(dropped), [b"g1", None, 0], 0])
    assert step.result() is None
    assert stats(protocol, "invalidations", "table_invalidations") == {
        "invalidations": len(dropped),
        "table_invalidations": 0,
    }
    # Learned: the next PutItem goes straight to the invalidation.
    again = Step(protocol.invalidate(put, {}))
    assert again.batch()[0].script == INVALIDATE_ITEMS


def test_a_put_projected_with_an_outdated_schema_drops_the_table(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({}))
    put = write_plan(protocol, "PutItem", {"TableName": "t", "Item": ITEM})
    step = Step(protocol.invalidate(put, {}))
    step.batch()
    step.send([[b"g1", None, 0]])
    step.send(TableSchema(("pk",)))
    step.batch()
    step.send([True])
    calls = step.batch()
    # The table was recreated meanwhile: the check replaced its tokens (reply flag 1).
    step.send([calls[0].numkeys, [b"g2", None, 1], 0])
    assert step.result() is None
    assert protocol.planner.key_schema(T) is None  # learned again next time
    assert stats(protocol, "table_invalidations") == {"table_invalidations": 1}


def test_a_table_dynamodb_says_is_missing_loses_entries_and_schema(clock: Clock) -> None:
    protocol = Protocol(Settings.resolve({}))
    protocol._learned[protocol.layout.tokens(T)] = (TableSchema(("pk",)), clock.mono + 60, "t")
    assert protocol.planner.key_schema(T) == TableSchema(("pk",))
    step = Step(protocol.forget_tables([T], "ResourceNotFoundException"))
    lifecycle, publish = step.batch()
    assert lifecycle.script == TABLE_LIFECYCLE
    assert lifecycle.args[:2] == (protocol.layout.tokens(T), protocol.layout.schema(T))
    assert lifecycle.args[4] != ""  # a new generation: the shared schema goes too
    assert lifecycle.args[5] == ""  # a bulk-load mark, if any, is kept
    assert publish.args[0] == "PUBLISH"
    step.send([1, 0])
    assert step.result() is None
    assert protocol.planner.key_schema(T) is None
    assert stats(protocol, "table_invalidations") == {"table_invalidations": 1}


def test_a_signed_entry_put_back_after_a_write_does_not_verify(clock: Clock) -> None:
    """A signature covers the item's generation, new with every invalidation."""
    protocol = Protocol(Settings.resolve({"signing_key": b"k" * 32}))
    plan = read_plan(protocol, "GetItem", GET)
    slot = plan.slots[0]
    created = clock.ms()

    def signed(generation: bytes) -> bytes:
        context = "\x00".join((slot.key, slot.field, generation.decode("latin-1")))
        return protocol.codec.encode(
            {"Item": ITEM}, token=ITEM_TOKEN, created_ms=created, context=context
        )

    step = serving(protocol, plan)
    step.batch()
    step.send([lookup_reply(LookupStatus.HIT, signed(GENERATION))])
    assert answered(step.result()) == {"Item": ITEM, "CacheMetadata": hit_metadata(created)}
    again = read_plan(protocol, "GetItem", GET)
    step = serving(protocol, again)
    step.batch()
    step.send([lookup_reply(LookupStatus.HIT, signed(b"5f3e/76"))])  # the item's older one
    (drop,) = step.batch()
    assert lookup_args(drop).drop == 1
    step.send([lookup_reply(LookupStatus.LEASED)])
    assert step.result() is None
    assert stats(protocol, "corrupt_entries", "item_hits") == {
        "corrupt_entries": 1,
        "item_hits": 1,
    }
