"""Per-registration counters (totals and per table), and a log that does not flood."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from .policy import ReadKind
from .writethrough import SKIP_REASONS

log = logging.getLogger("ddbcache_hooks")

#: Counter names, in display order. Per read kind: ``<kind>_hits`` / ``<kind>_misses``.
COUNTERS = (
    "hits",
    "misses",
    "bypasses",
    "fills",
    "fills_discarded",
    "fills_skipped",
    "invalidations",
    "table_invalidations",
    "errors",
    "corrupt_entries",
    "near_hits",
    "lease_waits",
    "lease_wait_timeouts",
    "breaker_opened",
    "breaker_half_opened",
    "breaker_closed",
    "backlog_replayed",
    "backlog_overflows",
    "pool_busy",
    "redis_oom",
    "redis_refused",
    "not_primary",
    "slot_migrations",
    "leases_released",
    "poisoned_keys",
    "writes_rejected",
    "writes_cancelled",
    "stale_served",
    "early_refreshes",
    "refreshes",
    "refresh_errors_hidden",
    # write-through (ddbcache_hooks.writethrough): stored images, and why not
    "write_fills",
    "write_fills_skipped",
    *(f"write_fills_skipped_{reason}" for reason in SKIP_REASONS),
    # Read access (access.py): reads sent to DynamoDB to prove it, and reads it refused
    "access_checks",
    "access_denied",
    # DynamoDB Streams consumer (ddbcache_hooks.streams)
    "stream_records",
    "stream_table_drops",
    "stream_rounds",
    "stream_errors",
)

#: Values that are current levels, not running totals: the largest one wins when
#: several processes report them (``ddbcache stats``).
GAUGES = ("stream_lag_ms", "stream_shards_held")

#: Counters also kept per table name (``stats()["tables"]``, the rows of ``ddbcache stats``).
TABLE_COUNTERS = (
    "hits",
    "misses",
    "fills",
    "invalidations",
    "table_invalidations",
    "stale_served",
    "early_refreshes",
    "write_fills",
)

#: Distinct table names one process counts apart; any further table adds to OTHER_TABLE
#: (a name no DynamoDB table can have), so the counters stay small whatever is read.
MAX_TABLES = 50
OTHER_TABLE = "(other)"

#: DynamoDB Accelerator's metric names for the same numbers: kept in
#: ``Registration.stats()`` (documented there), nowhere else.
DAX_NAMES = {
    "item_hits": "ItemCacheHits",
    "item_misses": "ItemCacheMisses",
    "query_hits": "QueryCacheHits",
    "query_misses": "QueryCacheMisses",
    "scan_hits": "ScanCacheHits",
    "scan_misses": "ScanCacheMisses",
}

#: AWS's own metric names for the stream numbers: DynamoDB Streams' records returned
#: by GetRecords, and Lambda's age of the last record processed (ms).
STREAM_NAMES = {"stream_records": "ReturnedRecordsCount", "stream_lag_ms": "IteratorAge"}


class Stats:
    """Thread-safe counters; :meth:`snapshot` is what ``Registration.stats()`` returns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rcu_saved = 0.0
        self._gauges: dict[str, float] = {}
        #: (table name, counter) -> count, for at most MAX_TABLES names.
        self._tables: Counter[tuple[str, str]] = Counter()
        self._table_names: set[str] = set()

    def incr(self, name: str, amount: int = 1, tables: Iterable[str] = ()) -> None:
        """Add ``amount`` to a counter; ``tables``: one name per unit, for the table rows."""
        with self._lock:
            self._counts[name] += amount
            self._count_tables(name, tables)

    def hit(
        self, kind: ReadKind, count: int = 1, rcu: float = 0.0, tables: Iterable[str] = ()
    ) -> None:
        with self._lock:
            self._counts[f"{kind.value}_hits"] += count
            self._rcu_saved += rcu
            self._count_tables("hits", tables)

    def _count_tables(self, name: str, tables: Iterable[str]) -> None:
        for table in tables:  # the lock is held
            if table not in self._table_names:
                if len(self._table_names) >= MAX_TABLES:
                    table = OTHER_TABLE
                else:
                    self._table_names.add(table)
            self._tables[table, name] += 1

    def gauge(self, name: str, value: float) -> None:
        """Set a current level (one of GAUGES)."""
        with self._lock:
            self._gauges[name] = value

    def miss(self, kind: ReadKind, count: int = 1, tables: Iterable[str] = ()) -> None:
        with self._lock:
            self._counts[f"{kind.value}_misses"] += count
            self._count_tables("misses", tables)

    def snapshot(self) -> dict[str, Any]:
        """Every counter by name (zeros too), DAX's names, and ``tables``:
        ``{table name: {counter: count}}`` for the TABLE_COUNTERS."""
        with self._lock:
            counts = dict(self._counts)
            rcu = self._rcu_saved
            gauges = dict(self._gauges)
            by_table = dict(self._tables)
        out: dict[str, Any] = {name: counts.get(name, 0) for name in COUNTERS}
        for kind in ReadKind:
            for outcome in ("hits", "misses"):
                name = f"{kind.value}_{outcome}"
                out[name] = counts.get(name, 0)
                out[outcome] += out[name]
        for name in GAUGES:
            out[name] = gauges.get(name, 0)
        for name, dax in (DAX_NAMES | STREAM_NAMES).items():
            out[dax] = out[name]
        out["rcu_saved"] = rcu
        tables: dict[str, dict[str, int]] = {}
        for (table, name), count in by_table.items():
            tables.setdefault(table, dict.fromkeys(TABLE_COUNTERS, 0))[name] = count
        out["tables"] = tables
        return out


class LimitedLog:
    """Logs a recurring problem at most once per ``interval`` seconds per kind."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, *args: Any, stacklevel: int = 2) -> None:
        """Log once per interval; the record points at the caller (``stacklevel`` 2)."""
        self._log(logging.WARNING, kind, message, args, stacklevel + 1)

    def error(self, kind: str, message: str, *args: Any, stacklevel: int = 2) -> None:
        """:meth:`warning` at ERROR level: a set-up that keeps the cache off."""
        self._log(logging.ERROR, kind, message, args, stacklevel + 1)

    def _log(self, level: int, kind: str, message: str, args: Any, stacklevel: int) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] += 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        log.log(level, message, *args, stacklevel=stacklevel + 1)
