"""Counters per table, their flush to Redis, and the sum ``ddbcache stats`` shows."""

from __future__ import annotations

import fakeredis

from ddbcache_hooks.metrics import (
    META_INTERVAL,
    RETAIN_S,
    aggregate,
    flush_fields,
    retain_s,
)
from ddbcache_hooks.policy import ReadKind
from ddbcache_hooks.stats import MAX_TABLES, OTHER_TABLE, TABLE_COUNTERS, Stats


def test_tables_are_counted_apart_up_to_the_cap_then_as_other() -> None:
    stats = Stats()
    stats.hit(ReadKind.ITEM, 2, tables=["orders", "users"])
    stats.miss(ReadKind.ITEM, 1, tables=["orders"])
    stats.incr("fills", tables=["orders"])
    for n in range(MAX_TABLES + 5):
        stats.incr("invalidations", tables=[f"t{n}"])
    tables = stats.snapshot()["tables"]
    assert tables["orders"] == {
        **dict.fromkeys(TABLE_COUNTERS, 0),
        "hits": 1,
        "misses": 1,
        "fills": 1,
    }
    assert tables["users"]["hits"] == 1
    assert len(tables) == MAX_TABLES + 1  # the cap, and one row for the rest
    assert tables[OTHER_TABLE]["invalidations"] == 7  # the 2 named ones came first
    assert stats.snapshot()["invalidations"] == MAX_TABLES + 5


def test_a_flush_writes_one_name_each_and_leaves_out_inherited_counts() -> None:
    stats = Stats()
    stats.hit(ReadKind.ITEM, 3, tables=["orders"] * 3)
    inherited = stats.snapshot()  # a forked child's flusher starts here
    stats.hit(ReadKind.ITEM, 1, tables=["orders"])
    stats.gauge("stream_lag_ms", 50)
    fields = flush_fields(stats.snapshot(), 2.0, inherited)
    assert fields["hits"] == 1 and fields["item_hits"] == 1
    assert fields["table:orders:hits"] == 1
    assert fields["stream_lag_ms"] == 50  # a level, not a count: never reduced
    assert fields[META_INTERVAL] == 2000
    assert "ItemCacheHits" not in fields and "tables" not in fields


def test_exited_processes_are_summed_until_their_ttl_and_counted_apart() -> None:
    client = fakeredis.FakeRedis()
    live, gone = Stats(), Stats()
    live.hit(ReadKind.ITEM, 3, tables=["orders"] * 3)
    live.gauge("stream_lag_ms", 10)
    gone.miss(ReadKind.ITEM, 1, tables=["orders"])
    gone.gauge("stream_lag_ms", 900)  # an exited consumer's lag says nothing now
    for name, stats, age_s in (("live", live, 0), ("gone", gone, 600)):
        key = f"CC:m:{{{name}}}"
        client.hset(key, mapping=flush_fields(stats.snapshot(), 1.0))
        client.expire(key, retain_s(1.0) - age_s)
    client.hset("other:m:{x}", mapping=flush_fields(live.snapshot(), 1.0))
    totals = aggregate(client, "CC")
    assert (totals.processes, totals.live, totals.exited) == (2, 1, 1)
    assert totals.counters["hits"] == 3 and totals.counters["misses"] == 1
    assert totals.hit_ratio() == 0.75
    assert totals.counters["stream_lag_ms"] == 10
    assert totals.tables["orders"]["hits"] == 3 and totals.tables["orders"]["misses"] == 1
    shape = totals.as_json("CC")
    assert shape["processes"] == 2 and shape["exited"] == 1 and shape["retain_s"] == RETAIN_S
    assert shape["counters"]["bypasses"] == 0  # every known counter, zeros too
    assert shape["tables"]["orders"]["hits"] == 3


def test_hashes_of_older_versions_are_read_without_double_names() -> None:
    client = fakeredis.FakeRedis()
    client.hset("CC:m:{old}", mapping={"hits": 2, "ItemCacheHits": 2, "item_hits": 2})
    totals = aggregate(client, "CC")
    assert totals.live == 1 and totals.counters == {"hits": 2, "item_hits": 2}
