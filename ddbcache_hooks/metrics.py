"""Counters people already collect: a periodic flush to Redis, and OpenTelemetry.

Every process keeps its own counters (``Registration.stats()``). With
``metrics_flush_s`` set, a daemon thread writes them every that many seconds
(and once more when the process exits or unregisters) to one hash per process,
``<namespace>:m:{<host>:<pid>:<random>}``: the totals by name, the table rows as
``table:<table>:<counter>``, the flush period as ``meta:interval_ms``, and
``meta:exited`` with the last flush. The hash expires RETAIN_S after its last
flush, so ``ddbcache stats`` keeps summing the totals of processes that exited
(a deployment's restarts do not reset the numbers) until that TTL drops them; a
process counts as live until its last flush, or until three periods pass
without one (it was killed). When ``opentelemetry-api`` is installed, the same
numbers are observable counters named ``ddbcache.<counter>``; without an SDK
they cost nothing.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from . import forks
from .resilience import refused

log = logging.getLogger("ddbcache_hooks")

Snapshot = Callable[[], dict[str, Any]]

#: How long a process's flushed counters outlive its last flush (s): the totals of
#: processes that exited stay in ``ddbcache stats`` this long.
RETAIN_S = 86_400
#: A process counts as live while its last flush is younger than this many periods.
LIVE_PERIODS = 3
TABLE_PREFIX = "table:"
META_INTERVAL = "meta:interval_ms"
META_EXITED = "meta:exited"


def process_key(namespace: str) -> str:
    ident = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    return f"{namespace}:m:{{{ident}}}"


def _aliases() -> frozenset[str]:
    from .stats import DAX_NAMES, STREAM_NAMES

    return frozenset(DAX_NAMES.values()) | frozenset(STREAM_NAMES.values())


def flush_fields(
    counts: Mapping[str, Any], interval: float, base: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """The hash fields one flush writes: counters under the library's names (less
    ``base``, the counts a forked child inherited), table rows, the period."""
    from .stats import GAUGES

    aliases = _aliases()
    base = base or {}
    fields: dict[str, float] = {}
    for name, value in counts.items():
        if isinstance(value, (int, float)) and name not in aliases:
            fields[name] = value if name in GAUGES else value - base.get(name, 0)
    base_tables = base.get("tables") or {}
    for table, row in (counts.get("tables") or {}).items():
        before = base_tables.get(table) or {}
        for name, value in row.items():
            fields[f"{TABLE_PREFIX}{table}:{name}"] = value - before.get(name, 0)
    fields[META_INTERVAL] = int(interval * 1000)
    return fields


def retain_s(interval: float) -> int:
    return max(RETAIN_S, int(interval * LIVE_PERIODS) + 1)


class Flusher:
    """Writes one process's counters to Redis every ``interval`` seconds.

    Only what this process counted after the flusher started: a forked child's
    flusher leaves out the counts it inherited (its parent reports those).
    """

    def __init__(self, snapshot: Snapshot, client: Any, namespace: str, interval: float) -> None:
        self._snapshot = snapshot
        self._client = client
        self.namespace = namespace
        self._key = process_key(namespace)
        self._interval = interval
        self._base = snapshot()
        self._pid = os.getpid()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ddbcache-metrics", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    def flush(self, *, last: bool = False) -> None:
        fields = flush_fields(self._snapshot(), self._interval, self._base)
        if last:
            fields[META_EXITED] = 1
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(self._key, mapping=fields)
        pipe.expire(self._key, retain_s(self._interval))
        pipe.execute()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self._try_flush()

    def _try_flush(self, *, last: bool = False) -> None:
        try:
            self.flush(last=last)
        except RedisError as exc:  # counters are best effort; the cache goes on
            if not refused(exc, self.namespace):
                log.debug("could not flush counters to Redis: %s", exc)

    def _at_exit(self) -> None:
        """The last counts of an exiting process (not of a forked child that inherited this)."""
        if os.getpid() == self._pid and not self._stopped.is_set():
            self._stopped.set()
            self._try_flush(last=True)

    def stop(self) -> None:
        """Stop the thread after one last flush (best effort)."""
        atexit.unregister(self._at_exit)
        if not self._stopped.is_set():
            self._stopped.set()
            if os.getpid() == self._pid:
                self._try_flush(last=True)


@dataclass
class Totals:
    """The counters of every process reporting in a namespace (``ddbcache stats``)."""

    #: Processes summed; those of them that flushed within LIVE_PERIODS periods.
    processes: int = 0
    live: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    #: table name -> counter -> sum (the TABLE_COUNTERS).
    tables: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def exited(self) -> int:
        return self.processes - self.live

    def hit_ratio(self) -> float | None:
        hits, misses = self.counters.get("hits", 0), self.counters.get("misses", 0)
        return hits / (hits + misses) if hits + misses else None

    def as_json(self, namespace: str) -> dict[str, Any]:
        """``ddbcache stats --json`` (shape documented in docs/operations.md): every
        counter the library knows, zeros too, and one row per table that counted."""
        from .policy import ReadKind
        from .stats import COUNTERS, GAUGES

        known = [*COUNTERS, *(f"{k.value}_{o}" for k in ReadKind for o in ("hits", "misses"))]
        counters = dict.fromkeys([*known, *GAUGES, "rcu_saved"], 0.0) | self.counters
        return {
            "namespace": namespace,
            "processes": self.processes,
            "live": self.live,
            "exited": self.exited,
            "retain_s": RETAIN_S,
            "hit_ratio": self.hit_ratio(),
            "counters": {name: _number(value) for name, value in counters.items()},
            "tables": {
                table: {name: _number(value) for name, value in row.items()}
                for table, row in sorted(self.tables.items(), key=_table_order)
            },
        }


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _table_order(item: tuple[str, Any]) -> tuple[bool, str]:
    from .stats import OTHER_TABLE

    return (item[0] == OTHER_TABLE, item[0])


def aggregate(client: Any, namespace: str, batch: int = 200) -> Totals:
    """Sum the counters every process flushed to the namespace (one SCAN, pipelined reads)."""
    keys = [key for key in client.scan_iter(match=f"{namespace}:m:*", count=500)]
    totals = Totals()
    for start in range(0, len(keys), batch):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + batch]:
            pipe.hgetall(key)
            pipe.pttl(key)
        replies = pipe.execute()
        for values, ttl_ms in zip(replies[::2], replies[1::2], strict=True):
            if values:
                _add(totals, {_text(k): float(v) for k, v in values.items()}, ttl_ms)
    return totals


def _add(totals: Totals, values: dict[str, float], ttl_ms: int) -> None:
    from .stats import GAUGES, TABLE_COUNTERS

    interval_ms = values.pop(META_INTERVAL, 0)
    age_ms = retain_s(interval_ms / 1000) * 1000 - ttl_ms if interval_ms and ttl_ms > 0 else 0
    # A hash without a period (an older version's) counts as live.
    live = not values.pop(META_EXITED, 0) and age_ms <= interval_ms * LIVE_PERIODS
    totals.processes += 1
    totals.live += live
    aliases = _aliases()
    for name, number in values.items():
        if name.startswith(TABLE_PREFIX):
            table, _, counter = name[len(TABLE_PREFIX) :].rpartition(":")
            row = totals.tables.setdefault(table, dict.fromkeys(TABLE_COUNTERS, 0.0))
            row[counter] = row.get(counter, 0) + number
        elif name in GAUGES:  # a level: the largest over the live processes
            level = number if live else 0.0
            totals.counters[name] = max(totals.counters.get(name, level), level)
        elif name not in aliases:  # hashes of older versions also hold DAX's names
            totals.counters[name] = totals.counters.get(name, 0) + number


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Source:
    """One registration's counters as seen by the OpenTelemetry callbacks."""

    def __init__(self, snapshot: Snapshot, active: Callable[[], bool], namespace: str) -> None:
        self.snapshot = snapshot
        self.active = active
        self.attributes = {"ddbcache.namespace": namespace}


_sources: list[_Source] = []
_sources_lock = threading.Lock()
_instrumented = False


@forks.in_child
def _new_lock_in_child() -> None:
    global _sources_lock
    _sources_lock = threading.Lock()


def export_opentelemetry(snapshot: Snapshot, active: Callable[[], bool], namespace: str) -> bool:
    """Report these counters as OpenTelemetry metrics; False without opentelemetry-api.

    Instruments are created once per process (a meter keeps the first callbacks
    of an instrument name); each callback reports every active registration.
    """
    global _instrumented
    try:
        from opentelemetry import metrics
    except ImportError:
        return False
    with _sources_lock:
        _sources[:] = [source for source in _sources if source.active()]
        _sources.append(_Source(snapshot, active, namespace))
        if _instrumented:
            return True
        _instrumented = True
    from ._version import __version__
    from .stats import DAX_NAMES, GAUGES, STREAM_NAMES

    meter = metrics.get_meter("ddbcache_hooks", __version__)

    def observe(name: str) -> Callable[[Any], Iterable[Any]]:
        def callback(options: Any) -> Iterable[Any]:
            with _sources_lock:
                live = [source for source in _sources if source.active()]
            for source in live:
                yield metrics.Observation(source.snapshot()[name], source.attributes)

        return callback

    # The same numbers as item_hits etc.; OTel names are lower case.
    dax = set(DAX_NAMES.values()) | set(STREAM_NAMES.values())
    for name, value in snapshot().items():
        if isinstance(value, (int, float)) and name not in dax:
            make = (
                meter.create_observable_gauge if name in GAUGES else meter.create_observable_counter
            )
            make(
                f"ddbcache.{name}",
                callbacks=[observe(name)],
                unit="{capacity_unit}" if name == "rcu_saved" else "1",
                description=f"ddbcache-hooks counter {name}",
            )
    return True


async def flush_counters_async(
    stats: Callable[[], Mapping[str, Any]], client: Any, namespace: str, every_s: float
) -> None:
    """:class:`Flusher`, as an asyncio task: every period, and once more when
    cancelled (unregister), marking the process as exited."""
    key = process_key(namespace)
    base = stats()

    async def flush(last: bool) -> None:
        fields = flush_fields(stats(), every_s, base)
        if last:
            fields[META_EXITED] = 1
        try:
            pipe = client.pipeline(transaction=False)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, retain_s(every_s))
            await pipe.execute()
        except RedisError as exc:
            if not refused(exc, namespace):
                log.debug("could not flush counters to Redis: %s", exc)

    try:
        while True:
            await asyncio.sleep(every_s)
            await flush(last=False)
    except asyncio.CancelledError:
        await flush(last=True)
        raise
