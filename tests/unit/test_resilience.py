"""Circuit breaker and invalidation backlog."""

from __future__ import annotations

from typing import Any

import pytest

from ddbcache_hooks.plan import Invalidation
from ddbcache_hooks.resilience import CLOSED, HALF_OPEN, OPEN, Backlog, CircuitBreaker
from ddbcache_hooks.stats import Stats
from ddbcache_hooks.store import Lifecycle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_and_probes_after_cooldown() -> None:
    clock, stats = Clock(), Stats()
    breaker = CircuitBreaker(3, 5.0, stats, clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == CLOSED
    breaker.failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now = 4.9
    assert not breaker.allow()
    clock.now = 5.0
    assert breaker.allow() and breaker.state == HALF_OPEN  # the one probe
    assert not breaker.allow()  # nobody else while it runs
    breaker.failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now = 10.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED and breaker.allow()
    counts = stats.snapshot()
    assert (counts["breaker_opened"], counts["breaker_half_opened"], counts["breaker_closed"]) == (
        2,
        2,
        1,
    )


def test_opening_is_a_warning_recovery_is_info(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, Stats(), clock)
    with caplog.at_level("INFO", logger="ddbcache_hooks"):
        breaker.failure()
        clock.now = 1.0
        assert breaker.allow()
        breaker.success()
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records] == [
        ("WARNING", "Redis circuit breaker open after 1 failures"),
        ("INFO", "Redis circuit breaker half-open"),
        ("INFO", "Redis circuit breaker closed"),
    ]


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(2, 1.0, Stats(), Clock())
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert breaker.state == CLOSED


def inv(*items: str, tables: dict[str, bool] | None = None) -> Invalidation:
    return Invalidation(items=[("tok", key) for key in items], tables=tables or {})


def test_backlog_keeps_entries_until_delivered() -> None:
    backlog = Backlog(100, Stats())
    backlog.add(inv("a", "b"))
    pending, upto = backlog.snapshot()
    assert {key for _, key in pending.items} == {"a", "b"}
    backlog.add(inv("a", "c"))  # "a" written again while the replay is on its way
    backlog.discard(pending, upto)
    remaining, _ = backlog.snapshot()
    assert {key for _, key in remaining.items} == {"a", "c"}


def test_backlog_overflow_folds_items_into_table_tokens() -> None:
    stats = Stats()
    backlog = Backlog(3, stats)
    backlog.add(Invalidation(items=[("t1", "a"), ("t1", "b"), ("t2", "c")]))
    backlog.add(Invalidation(items=[("t2", "d"), ("t2", "e")]))
    pending, _ = backlog.snapshot()
    assert [key for _, key in pending.items] == ["c", "d", "e"]
    assert pending.tables == {"t1": True}
    assert stats.snapshot()["backlog_overflows"] == 1


def test_backlog_table_entries_merge() -> None:
    backlog = Backlog(10, Stats())
    backlog.add(inv(tables={"t": False}))
    backlog.add(inv(tables={"t": True}))
    backlog.add(inv(tables={"t": False}))
    pending, upto = backlog.snapshot()
    assert pending.tables == {"t": True}
    backlog.discard(pending, upto)
    assert not backlog


def test_the_server_clock_keeps_the_least_delayed_sample(monkeypatch: Any) -> None:
    from ddbcache_hooks import resilience

    now = [1000.0]  # seconds
    monkeypatch.setattr(resilience.time, "time", lambda: now[0])
    clock = resilience.ServerClock()
    assert clock.deadline_ms(50) == 0  # unknown: no bound
    clock.observe(1_000_000 + 5_000)  # the server is 5 s ahead
    assert clock.deadline_ms(50) == 1_000_000 + 5_000 + 50
    now[0] += 1
    clock.observe(1_001_000 + 4_990)  # a reply that sat 10 ms in the socket: ignored
    assert clock.deadline_ms(50) == 1_001_000 + 5_000 + 50
    clock.observe(1_001_000 - 3_000)  # far below: the local clock stepped
    assert clock.deadline_ms(50) == 1_001_000 - 3_000 + 50


def test_orphans_are_kept_until_handled_and_dropped_after_repeated_failures() -> None:
    from ddbcache_hooks.resilience import Orphans

    orphans = Orphans(Stats())
    orphans.add_leases([("k", "f", "t1")])
    orphans.add_suspects([("k", "f")])
    leases, suspects = orphans.snapshot()
    orphans.add_leases([("k", "f", "t2")])  # a newer lease of the same slot survives
    orphans.done(leases, suspects)
    assert orphans.snapshot() == ([("k", "f", "t2")], [])
    orphans.add_leases([("k", "f", "t3")])  # a second lookup of the slot: both kept
    assert orphans.snapshot() == ([("k", "f", "t2"), ("k", "f", "t3")], [])
    orphans.done([("k", "f", "t2"), ("k", "f", "t3")], [])
    for _ in range(Orphans.ATTEMPTS):
        orphans.failed()
    assert not orphans


def test_backlog_keeps_table_lifecycle_changes_and_generation_checks() -> None:
    backlog = Backlog(limit=10, stats=Stats())
    change = Lifecycle("CC:k:{t}", forget_schema=True, mark="")
    backlog.add(
        Invalidation(
            items=[("CC:t:{u}", "CC:i:{x}:u")],
            lifecycle={"CC:t:{t}": change},
            generations={"CC:t:{u}": ("CC:k:{u}", b"g1")},
        )
    )
    pending, upto = backlog.snapshot()
    assert pending.lifecycle == {"CC:t:{t}": change}
    assert pending.generations == {"CC:t:{u}": ("CC:k:{u}", b"g1")}
    backlog.discard(pending, upto)
    assert not backlog and backlog.snapshot()[0].generations == {}


def test_what_a_slot_in_migration_answers() -> None:
    """ASK, TRYAGAIN, a script's non-local key and redis-py's exhausted redirections are a
    slot in flux (retried, then a miss); a cluster that is down is an outage."""
    from redis.exceptions import (
        AskError,
        ClusterDownError,
        ClusterError,
        MasterDownError,
        MovedError,
        ResponseError,
        TryAgainError,
    )

    from ddbcache_hooks.effects import migrating

    assert migrating(AskError("12 127.0.0.1:7001"))
    assert migrating(MovedError("12 127.0.0.1:7001"))
    assert migrating(TryAgainError("TRYAGAIN"))
    assert migrating(ClusterError("TTL exhausted."))
    assert migrating(ResponseError("Script attempted to access a non local key in a cluster node"))
    assert not migrating(ClusterDownError("CLUSTERDOWN The cluster is down"))
    assert not migrating(MasterDownError("MASTERDOWN"))
    assert not migrating(ResponseError("WRONGTYPE"))
    assert not migrating(None)
