"""Surviving Redis outages: a circuit breaker and a bounded invalidation backlog."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .stats import Stats

log = logging.getLogger("ddbcache_hooks")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    """Stops trying Redis after ``threshold`` consecutive failures, for ``cooldown`` seconds.

    After the cool-down one caller is let through as a probe (half-open); its
    success closes the breaker, its failure opens it for another cool-down.
    """

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        stats: Stats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._stats = stats
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._state = CLOSED
        self._opened_at = 0.0

    @property
    def state(self) -> str:
        return self._state

    def allow(self) -> bool:
        """Whether this call may use Redis (the half-open probe included)."""
        if self._state == CLOSED:
            return True
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown:
                self._state = HALF_OPEN
                log.info("Redis circuit breaker half-open: probing")
                return True
            return False

    def success(self) -> None:
        if self._state == CLOSED and not self._failures:
            return
        with self._lock:
            if self._state != CLOSED:
                log.warning("Redis circuit breaker closed: Redis answers again")
            self._state = CLOSED
            self._failures = 0

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN or (
                self._state == CLOSED and self._failures >= self.threshold
            ):
                if self._state == CLOSED:
                    log.warning(
                        "Redis circuit breaker open after %d failures: calls go straight "
                        "to DynamoDB for %.1fs",
                        self._failures,
                        self.cooldown,
                    )
                self._state = OPEN
                self._opened_at = self._clock()
                self._stats.incr("breaker_opened")


@dataclass
class Invalidation:
    """What one write must drop: item hashes, and table tokens to replace."""

    #: (table token key, item hash key) pairs.
    items: list[tuple[str, str]] = field(default_factory=list)
    #: table token key -> True to drop item entries too (not only Query/Scan ones).
    tables: dict[str, bool] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.items or self.tables)

    def merge(self, other: Invalidation) -> None:
        self.items.extend(other.items)
        for key, items in other.tables.items():
            self.tables[key] = self.tables.get(key, False) or items


class Backlog:
    """Invalidations that could not be delivered, replayed when Redis answers again.

    Bounded: past ``limit`` item keys, the oldest items are folded into a
    replacement of their table's tokens, which drops every entry of the table.
    """

    def __init__(self, limit: int, stats: Stats) -> None:
        self.limit = limit
        self._stats = stats
        self._lock = threading.Lock()
        self._pending = Invalidation()

    def __bool__(self) -> bool:
        return bool(self._pending)

    def __len__(self) -> int:
        return len(self._pending.items) + len(self._pending.tables)

    def add(self, invalidation: Invalidation) -> None:
        with self._lock:
            self._pending.merge(invalidation)
            overflow = len(self._pending.items) - self.limit
            if overflow > 0:
                dropped, self._pending.items = (
                    self._pending.items[:overflow],
                    self._pending.items[overflow:],
                )
                for token_key, _ in dropped:
                    self._pending.tables[token_key] = True
                self._stats.incr("backlog_overflows")
                log.warning(
                    "invalidation backlog full (%d items): %d tables will be flushed on recovery",
                    self.limit,
                    len(self._pending.tables),
                )

    def take(self) -> Invalidation:
        """Everything pending; on failure to deliver it, :meth:`add` it back."""
        with self._lock:
            pending, self._pending = self._pending, Invalidation()
        return pending

    def tables(self) -> Iterable[str]:
        return list(self._pending.tables)
