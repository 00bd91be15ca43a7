"""Surviving Redis outages: a circuit breaker, a bounded invalidation backlog replayed
in the background, and clean-up of what lost replies leave behind."""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from . import acl
from .forks import fork_safe
from .plan import Invalidation
from .stats import Stats

if TYPE_CHECKING:
    from .store import Lifecycle

log = logging.getLogger("ddbcache_hooks")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


_refusals_logged: set[tuple[str, str]] = set()
_refusals_lock = threading.Lock()


def refused(exc: BaseException, namespace: str, stats: Stats | None = None) -> bool:
    """Whether Redis refused a command for this user (ACL, a renamed command).

    That is a configuration error, not an outage: it is counted
    (``redis_refused``) and logged once per process at ERROR with the fix, and
    does not move the circuit breaker; the call goes to DynamoDB uncached.
    """
    found = acl.refusal(exc)
    if found is None:
        return False
    if stats is not None:
        stats.incr("redis_refused")
    with _refusals_lock:
        first = (namespace, found.what) not in _refusals_logged
        _refusals_logged.add((namespace, found.what))
    if first:
        log.error(
            "Redis refused %s for keys %s (%s): a configuration error; calls go to "
            "DynamoDB uncached. Fix: %s",
            found.what,
            acl.key_pattern(namespace),
            exc,
            acl.fix(found, namespace),
        )
    return True


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
                log.info("Redis circuit breaker closed: Redis answers again")
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


class ServerClock:
    """This process's estimate of the Redis server's clock, from lookup replies.

    Each reply carries the server's time when the script ran; that time minus
    the local time at receipt is at most the true offset (the reply took some
    time to arrive), so the largest sample is the best estimate. A sample far
    below it means the local clock stepped: start again from it.
    """

    def __init__(self) -> None:
        self._offset: float | None = None

    def observe(self, server_ms: int) -> None:
        sample = server_ms - time.time() * 1000
        offset = self._offset
        if offset is None or sample > offset or offset - sample > 1000:
            self._offset = sample

    def deadline_ms(self, timeout_ms: int) -> int:
        """Server time after which a call sent now no longer waits for its reply (0: unknown)."""
        if self._offset is None:
            return 0
        return int(time.time() * 1000 + self._offset + timeout_ms)


class Orphans:
    """Leases whose lookup's reply never reached its caller, and suspect keys: to clean up.

    A lookup that timed out, failed or was cancelled may still have taken its
    lease on the server; other readers would wait for a fill that never
    comes. The lease is given back (only if it still holds this caller's
    token). A key a lookup timed out on may hold a field too big to read in
    time; it is checked, and deleted when it does.
    """

    LIMIT = 1024
    ATTEMPTS = 5

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._lock = threading.Lock()
        self._failures = 0
        #: (entry hash key, variant field, lease token), in arrival order: every
        #: token, since two lookups of one slot that both timed out hold two, and
        #: either of them may be the one the server kept.
        self._leases: dict[tuple[str, str, str], None] = {}
        self._suspects: dict[tuple[str, str], None] = {}

    def __bool__(self) -> bool:
        return bool(self._leases or self._suspects)

    def add_leases(self, leases: list[tuple[str, str, str]]) -> None:
        with self._lock:
            for lease in leases:
                if len(self._leases) < self.LIMIT:
                    self._leases[lease] = None

    def add_suspects(self, suspects: list[tuple[str, str]]) -> None:
        with self._lock:
            for suspect in suspects:
                if len(self._suspects) < 64:
                    self._suspects[suspect] = None

    def snapshot(self) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
        with self._lock:
            leases = list(self._leases)
            return leases, list(self._suspects)

    def done(self, leases: list[tuple[str, str, str]], suspects: list[tuple[str, str]]) -> None:
        """Forget what a pass handled."""
        with self._lock:
            for lease in leases:
                self._leases.pop(lease, None)
            for suspect in suspects:
                self._suspects.pop(suspect, None)
            self._failures = 0

    def failed(self) -> None:
        """A pass failed; after a few, give up (leases expire anyway; a suspect comes back)."""
        with self._lock:
            self._failures += 1
            if self._failures >= self.ATTEMPTS:
                self._leases.clear()
                self._suspects.clear()
                self._failures = 0


#: Pauses between attempts of background work while Redis refuses it (seconds).
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0
#: How long interpreter exit waits, at most, to deliver held invalidations.
EXIT_FLUSH_S = 1.0


def _deferred(protocol: Any, step: Any, exc: RedisError) -> None:
    """A background step Redis refused: counted against the orphans if it was the tidy-up."""
    refused(exc, protocol.settings.namespace, protocol.stats)
    if step == protocol.tidy:
        protocol.orphans.failed()
    log.debug("background work deferred, Redis failed: %s", exc)


class BackgroundWork:
    """Held invalidations, orphaned leases and poisoned keys, handled off the callers' path.

    A daemon thread runs while there is work: it replays the backlog as soon as
    Redis takes writes again (retrying with a growing pause up to
    ``RETRY_MAX_S``), whether or not the writer makes another call, then ends.
    At interpreter exit, what is still held is delivered (waiting at most
    ``EXIT_FLUSH_S``). A forked child starts its own thread when it has work.

    Args:
        protocol: the registration's :class:`~ddbcache_hooks.protocol.Protocol`.
        run: carries out one protocol step; raises ``RedisError``.
    """

    def __init__(self, protocol: Any, run: Callable[[Any], Any]) -> None:
        self._protocol = protocol
        self._run = run
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        _workers.add(self)
        fork_safe(self)

    def pending(self) -> bool:
        return bool(self._protocol.backlog or self._protocol.orphans)

    def wake(self) -> None:
        """There is work: make sure a thread is on it."""
        with self._lock:
            if self._stopped.is_set():
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="ddbcache-background", daemon=True
                )
                self._thread.start()

    def work(self) -> bool:
        """One pass over everything pending; True when nothing is left."""
        ok = True
        for step in (self._protocol.tidy, self._protocol.replay_backlog):
            try:
                self._run(step())
            except RedisError as exc:
                ok = False
                _deferred(self._protocol, step, exc)
        return ok and not self.pending()

    def _loop(self) -> None:
        pause = RETRY_FIRST_S
        while not self._stopped.is_set():
            if self.work():
                with self._lock:
                    if not self.pending():
                        self._thread = None
                        return
                pause = RETRY_FIRST_S
                continue
            self._stopped.wait(pause)
            pause = min(pause * 2, RETRY_MAX_S)

    def flush(self, timeout: float) -> bool:
        """Deliver what is pending now, trying for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.pending():
            if self.work():
                return True
            if time.monotonic() + RETRY_FIRST_S > deadline:
                return False
            time.sleep(RETRY_FIRST_S)
        return True

    def stop(self) -> None:
        self._stopped.set()


class AsyncBackgroundWork:
    """:class:`BackgroundWork` as an asyncio task of the loop the hooks run on."""

    def __init__(self, protocol: Any, run: Callable[[Any], Awaitable[Any]]) -> None:
        self._protocol = protocol
        self._run = run
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        #: Deliveries handed over by cancelled callers (kept referenced until done).
        self.handed_over: set[asyncio.Task[Any]] = set()

    def pending(self) -> bool:
        return bool(self._protocol.backlog or self._protocol.orphans)

    def wake(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on the loop: the next call on it replays
        if not self._stopped and (self._task is None or self._task.done()):
            self._task = loop.create_task(self._loop())

    def hand_over(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coroutine`` to its end even if the caller that started it is cancelled."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self.handed_over.add(task)
        task.add_done_callback(self.handed_over.discard)
        return task

    async def work(self) -> bool:
        ok = True
        for step in (self._protocol.tidy, self._protocol.replay_backlog):
            try:
                await self._run(step())
            except RedisError as exc:
                ok = False
                _deferred(self._protocol, step, exc)
        return ok and not self.pending()

    async def _loop(self) -> None:
        pause = RETRY_FIRST_S
        while not self._stopped and not await self.work():
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX_S)

    async def flush(self, timeout: float) -> bool:
        """Deliver what is pending (handed-over deliveries included), for at most ``timeout``."""
        deadline = time.monotonic() + timeout
        if self.handed_over:
            await asyncio.wait(set(self.handed_over), timeout=timeout)
        while self.pending():
            if await self.work():
                return True
            if time.monotonic() + RETRY_FIRST_S > deadline:
                return False
            await asyncio.sleep(RETRY_FIRST_S)
        return True

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()


_workers: weakref.WeakSet[BackgroundWork] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for worker in list(_workers):
        if worker.pending() and not worker.flush(EXIT_FLUSH_S):
            log.warning("exiting with invalidations Redis did not take; entries expire by TTL")
