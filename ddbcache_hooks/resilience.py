"""Surviving Redis outages: a circuit breaker and a bounded invalidation backlog."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .stats import Stats

if TYPE_CHECKING:
    from .store import Lifecycle

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
                self._stats.incr("breaker_half_opened")
                log.info("Redis circuit breaker half-open: probing with one call")
                return True
            return False

    def success(self) -> None:
        if self._state == CLOSED and not self._failures:
            return
        with self._lock:
            if self._state != CLOSED:
                self._stats.incr("breaker_closed")
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
    #: table token key -> a lifecycle change (entries, key schema, bulk-load mark).
    lifecycle: dict[str, Lifecycle] = field(default_factory=dict)
    #: table token key -> (schema key, generation of the key schema that projected
    #: a write's items): a stale generation drops the whole table instead.
    generations: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.items or self.tables or self.lifecycle)

    def merge(self, other: Invalidation) -> None:
        self.items.extend(other.items)
        for key, items in other.tables.items():
            self.tables[key] = self.tables.get(key, False) or items
        self.lifecycle.update(other.lifecycle)
        self.generations.update(other.generations)


class Backlog:
    """Invalidations that could not be delivered, replayed when Redis answers again.

    Entries stay until a delivery that included them succeeded, so a reader
    never finds the backlog empty while a replay is still on its way (it
    replays too: invalidations are idempotent). Each entry carries the sequence
    number of its last addition, so one re-added during a replay survives it.
    Bounded: past ``limit`` items, the oldest are folded into a replacement of
    their table's tokens, which drops every entry of the table.
    """

    def __init__(self, limit: int, stats: Stats) -> None:
        self.limit = limit
        self._stats = stats
        self._lock = threading.Lock()
        self._seq = 0
        #: item hash key -> (table token key, sequence number)
        self._items: dict[str, tuple[str, int]] = {}
        #: table token key -> (drop item entries too, sequence number)
        self._tables: dict[str, tuple[bool, int]] = {}
        #: table token key -> (lifecycle change, sequence number)
        self._lifecycle: dict[str, tuple[Lifecycle, int]] = {}
        #: table token key -> (schema key, generation): checked again on replay
        self._generations: dict[str, tuple[str, bytes]] = {}

    def __bool__(self) -> bool:
        return bool(self._items or self._tables or self._lifecycle)

    def __len__(self) -> int:
        return len(self._items) + len(self._tables) + len(self._lifecycle)

    def add(self, invalidation: Invalidation) -> None:
        with self._lock:
            self._seq += 1
            for token_key, item_key in invalidation.items:
                self._items.pop(item_key, None)  # re-adding moves it to the newest end
                self._items[item_key] = (token_key, self._seq)
            for token_key, items in invalidation.tables.items():
                held = self._tables.get(token_key, (False, 0))[0]
                self._tables[token_key] = (held or items, self._seq)
            for token_key, change in invalidation.lifecycle.items():
                self._lifecycle[token_key] = (change, self._seq)
            self._generations.update(invalidation.generations)
            overflow = len(self._items) - self.limit
            if overflow <= 0:
                return
            for item_key in list(self._items)[:overflow]:
                token_key, _ = self._items.pop(item_key)
                self._tables[token_key] = (True, self._seq)
        self._stats.incr("backlog_overflows")
        log.warning(
            "invalidation backlog full (%d items): %d tables will be flushed on recovery",
            self.limit,
            len(self._tables),
        )

    def snapshot(self) -> tuple[Invalidation, int]:
        """Everything pending, and the sequence number it covers (for :meth:`discard`)."""
        with self._lock:
            pending = Invalidation(
                items=[(token_key, key) for key, (token_key, _) in self._items.items()],
                tables={key: items for key, (items, _) in self._tables.items()},
                lifecycle={key: change for key, (change, _) in self._lifecycle.items()},
                generations=dict(self._generations),
            )
            return pending, self._seq

    def discard(self, delivered: Invalidation, upto: int) -> None:
        """Forget what a successful delivery of a snapshot covered."""
        with self._lock:
            for _, item_key in delivered.items:
                if item_key in self._items and self._items[item_key][1] <= upto:
                    del self._items[item_key]
            for token_key in delivered.tables:
                if token_key in self._tables and self._tables[token_key][1] <= upto:
                    del self._tables[token_key]
            for token_key in delivered.lifecycle:
                if token_key in self._lifecycle and self._lifecycle[token_key][1] <= upto:
                    del self._lifecycle[token_key]
            if not self._items:
                self._generations.clear()
