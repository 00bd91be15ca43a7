"""Counters people already collect: a periodic flush to Redis, and OpenTelemetry.

Every process keeps its own counters (``Registration.stats()``). With
``metrics_flush_s`` set, a daemon thread writes them every that many seconds
to ``<namespace>:m:{<process id>}`` (expiring after three periods, so dead
processes drop out) and ``ddbcache stats`` sums them over all live processes.
When ``opentelemetry-api`` is installed, the same numbers are observable
counters named ``ddbcache.<counter>``; without an SDK they cost nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import RedisError

from .resilience import refused

log = logging.getLogger("ddbcache_hooks")

Snapshot = Callable[[], dict[str, Any]]


def process_key(namespace: str) -> str:
    ident = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    return f"{namespace}:m:{{{ident}}}"


class Flusher:
    """Writes one process's counters to Redis every ``interval`` seconds."""

    def __init__(self, snapshot: Snapshot, client: Any, namespace: str, interval: float) -> None:
        self._snapshot = snapshot
        self._client = client
        self.namespace = namespace
        self._key = process_key(namespace)
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ddbcache-metrics", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        counts = {k: v for k, v in self._snapshot().items() if isinstance(v, (int, float))}
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(self._key, mapping=counts)
        pipe.expire(self._key, max(1, int(self._interval * 3)))
        pipe.execute()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self.flush()
            except RedisError as exc:  # counters are best effort; the cache goes on
                if not refused(exc, self.namespace):
                    log.debug("could not flush counters to Redis: %s", exc)

    def stop(self) -> None:
        self._stopped.set()


def aggregate(client: Any, namespace: str) -> tuple[int, dict[str, float]]:
    """(number of processes reporting, their counters summed)."""
    from .stats import GAUGES, STREAM_NAMES

    levels = set(GAUGES) | {STREAM_NAMES[name] for name in GAUGES if name in STREAM_NAMES}
    totals: dict[str, float] = {}
    processes = 0
    for key in client.scan_iter(match=f"{namespace}:m:*", count=500):
        values = client.hgetall(key)
        if not values:
            continue
        processes += 1
        for name, value in values.items():
            name = name.decode() if isinstance(name, bytes) else name
            number = float(value)
            if name in levels:
                totals[name] = max(totals.get(name, number), number)
            else:
                totals[name] = totals.get(name, 0) + number
    return processes, totals


class _Source:
    """One registration's counters as seen by the OpenTelemetry callbacks."""

    def __init__(self, snapshot: Snapshot, active: Callable[[], bool], namespace: str) -> None:
        self.snapshot = snapshot
        self.active = active
        self.attributes = {"ddbcache.namespace": namespace}


_sources: list[_Source] = []
_sources_lock = threading.Lock()
_instrumented = False


def _new_lock_in_child() -> None:
    global _sources_lock
    _sources_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


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
