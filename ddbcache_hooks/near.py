"""An opt-in in-process near cache in front of Redis, with bounded staleness.

The contract (docs/performance.md, docs/consistency.md):

- an entry is never served more than ``ttl_ms`` after it was taken from Redis;
- a write made by this process evicts what it touched at once;
- a write made by another process evicts through the Redis pub/sub channel
  ``<namespace>:invalidations`` that every registered process publishes to
  (and near-cache processes subscribe to); when a message is lost or the
  subscription drops, ``ttl_ms`` is the bound. While the subscription is down
  nothing new is cached and everything cached is dropped.

It holds entries as stored in Redis (bytes), so every hit decodes a fresh
response. Not redis-py's client-side caching: that refuses Valkey and Redis
below 7.4 (so ElastiCache engines) and hangs under concurrent threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from . import forks

log = logging.getLogger("ddbcache_hooks")

CHANNEL_SUFFIX = ":invalidations"


_instances: weakref.WeakSet[NearCache] = weakref.WeakSet()


@forks.in_child
def _offline_in_child() -> None:
    for near in list(_instances):
        near._after_fork_in_child()


class NearCache:
    """Configuration and state of a process-local cache in front of Redis.

    Args:
        max_items: most entries held (least recently used go first).
        ttl_ms: an entry is never served longer than this after it left Redis.
    """

    def __init__(self, max_items: int = 10_000, ttl_ms: int = 1_000) -> None:
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items <= 0:
            raise ValueError(f"NearCache max_items must be a positive integer, got {max_items!r}")
        if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or ttl_ms <= 0:
            raise ValueError(f"NearCache ttl_ms must be a positive integer, got {ttl_ms!r}")
        self.max_items = max_items
        """Most entries held."""
        self.ttl_ms = ttl_ms
        """Longest an entry is served after it was read from Redis (ms)."""
        self._lock = threading.Lock()
        _instances.add(self)
        #: (redis key, variant field) -> (entry bytes, monotonic expiry, table token key)
        self._entries: OrderedDict[tuple[str, str], tuple[bytes, float, str]] = OrderedDict()
        self._fields: dict[str, set[str]] = {}  # redis key -> variant fields held
        self._tables: dict[str, set[str]] = {}  # table token key -> redis keys held
        # Evictions are numbered. A reader notes the number before its Redis lookup,
        # and its entry is kept only if nothing it depends on was evicted since:
        # otherwise a read that raced a write could park the old value here.
        self._epoch = 0
        self._evicted: OrderedDict[str, int] = OrderedDict()
        self._floor = 0
        self.online = False
        """Whether the invalidation subscription is up (entries are served only then)."""
        self.catch_up: Any = None
        """Applies invalidation messages already received (set by the subscriber)."""

    def __repr__(self) -> str:
        return f"NearCache(max_items={self.max_items}, ttl_ms={self.ttl_ms})"

    def __len__(self) -> int:
        return len(self._entries)

    def epoch(self) -> int:
        """The number of the last eviction; a lookup notes it before reading Redis."""
        return self._epoch

    def refresh(self) -> None:
        """Apply the invalidation messages that have already arrived, before serving.

        Without it, a message waits for the subscriber thread, which a busy
        thread of the process holds off for a GIL switch interval or more.
        """
        catch_up = self.catch_up
        if catch_up is not None:
            catch_up()

    def get(self, key: str, field: str) -> bytes | None:
        """The entry held for a Redis key and variant, or None (absent, expired, offline)."""
        with self._lock:
            found = self._entries.get((key, field))
            if found is None:
                return None
            blob, expires, _ = found
            if expires <= time.monotonic():
                self._drop(key, field)
                return None
            self._entries.move_to_end((key, field))
            return blob

    def holds(self, key: str, field: str) -> bool:
        """Whether an unexpired entry is held, without touching its place in the LRU."""
        with self._lock:
            found = self._entries.get((key, field))
            return found is not None and found[1] > time.monotonic()

    def put(self, key: str, field: str, table_key: str, blob: bytes, since: int) -> bool:
        """Keep an entry read from Redis by a lookup that started at epoch ``since``."""
        with self._lock:
            if not self.online or since < self._floor:
                return False
            if self._evicted.get(key, 0) > since or self._evicted.get(table_key, 0) > since:
                return False
            self._entries[(key, field)] = (blob, time.monotonic() + self.ttl_ms / 1000, table_key)
            self._entries.move_to_end((key, field))
            self._fields.setdefault(key, set()).add(field)
            self._tables.setdefault(table_key, set()).add(key)
            while len(self._entries) > self.max_items:
                (old_key, old_field), _ = next(iter(self._entries.items()))
                self._drop(old_key, old_field)
            return True

    def evict(self, keys: Iterable[str] = (), table_keys: Iterable[str] = ()) -> None:
        """Forget items (every variant) and whole tables (every entry under a token key)."""
        with self._lock:
            self._epoch += 1
            for table_key in table_keys:
                self._remember(table_key)
                for key in self._tables.pop(table_key, ()):
                    self._drop_key(key)
            for key in keys:
                self._remember(key)
                self._drop_key(key)

    def clear(self) -> None:
        """Forget everything (the subscription dropped: messages may have been lost)."""
        with self._lock:
            self._epoch += 1
            self._floor = self._epoch
            self._entries.clear()
            self._fields.clear()
            self._tables.clear()
            self._evicted.clear()

    def _after_fork_in_child(self) -> None:
        """A forked child has no subscription (its thread is the parent's): nothing it
        holds may be served until its own subscriber is up."""
        self._lock = threading.Lock()  # the parent's may be held by a thread gone here
        self.online = False
        self.catch_up = None  # the parent's subscription is not this process's
        self.clear()

    def _remember(self, name: str) -> None:
        self._evicted[name] = self._epoch
        self._evicted.move_to_end(name)
        while len(self._evicted) > 2 * self.max_items:
            _, epoch = self._evicted.popitem(last=False)
            self._floor = max(self._floor, epoch)  # older lookups may not fill any more

    def _drop_key(self, key: str) -> None:
        for field in list(self._fields.get(key, ())):
            self._drop(key, field)

    def _drop(self, key: str, field: str) -> None:
        found = self._entries.pop((key, field), None)
        fields = self._fields.get(key)
        if fields is not None:
            fields.discard(field)
            if not fields:
                del self._fields[key]
                if found is not None:
                    keys = self._tables.get(found[2])
                    if keys is not None:
                        keys.discard(key)
                        if not keys:
                            del self._tables[found[2]]


def encode_message(keys: Iterable[str], table_keys: Iterable[str]) -> str:
    """The pub/sub payload of one invalidation: one ``i <key>`` / ``t <token key>`` per line."""
    return "\n".join([*(f"i {key}" for key in keys), *(f"t {key}" for key in table_keys)])


def decode_message(data: Any) -> tuple[list[str], list[str]]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    keys, tables = [], []
    for line in text.splitlines():
        kind, _, name = line.partition(" ")
        if kind == "i" and name:
            keys.append(name)
        elif kind == "t" and name:
            tables.append(name)
    return keys, tables


#: Reports a Redis refusal (an ACL) of the subscription; True when it was one.
Refused = Callable[[BaseException], bool]


def channel_lost(exc: BaseException, refused: Refused | None) -> None:
    """The subscription failed: a refusal is ``refused``'s to report (once), else a warning."""
    if refused is None or not refused(exc):
        log.warning("near cache: invalidation channel lost (%s); cleared, retrying", exc)


class Subscriber:
    """Listens on the invalidation channel in a daemon thread and evicts what it hears."""

    def __init__(
        self,
        near: NearCache,
        client: Any,
        channel: str,
        retry_s: float = 1.0,
        refused: Refused | None = None,
    ) -> None:
        self._near = near
        self._client = client
        self._channel = channel
        self._retry_s = retry_s
        self._refused = refused
        self._stopped = threading.Event()
        self._pubsub: Any = None
        #: Held while reading the subscription (this thread, or a reader catching up).
        self._read_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ddbcache-near", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._listen()
            except Exception as exc:  # any failure: assume messages were lost
                self._near.online = False
                self._near.clear()
                channel_lost(exc, self._refused)
                self._stopped.wait(self._retry_s)
            finally:
                self._close()

    def _listen(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=False)
        with self._read_lock:
            self._pubsub = pubsub
            pubsub.subscribe(self._channel)
        self._near.catch_up = self.catch_up
        while not self._stopped.is_set():
            with self._read_lock:
                self._drain(pubsub)
            # Wait for data without the lock, so that a reader may take it and
            # drain what arrived (catch_up) while this thread is not scheduled.
            sock = getattr(pubsub.connection, "_sock", None)
            if sock is None:
                raise ConnectionError("the subscription's connection is closed")
            select.select([sock], [], [], 1.0)

    def _drain(self, pubsub: Any) -> None:
        while True:
            message = pubsub.get_message(timeout=0.0)
            if message is None:
                return
            if message["type"] == "subscribe":
                self._near.clear()  # whatever happened before we listened is unknown
                self._near.online = True
                log.debug("near cache: listening on %s", self._channel)
            elif message["type"] == "message":
                keys, tables = decode_message(message["data"])
                self._near.evict(keys, tables)

    def catch_up(self) -> None:
        """Apply messages that already arrived (a few µs when none has): called before a
        near-cache hit is served. A failure here takes the near cache offline; the
        thread notices the broken connection and subscribes again."""
        pubsub = self._pubsub
        if pubsub is None or not self._near.online:
            return
        with self._read_lock:
            if pubsub is not self._pubsub:
                return
            try:
                self._drain(pubsub)
            except Exception:
                self._near.online = False
                self._near.clear()

    def _close(self) -> None:
        self._near.catch_up = None
        with self._read_lock:
            pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail too
                pubsub.close()

    def stop(self) -> None:
        self._stopped.set()
        self._near.online = False
        self._thread.join(timeout=3)


async def listen_async(
    near: NearCache,
    client: Any,
    channel: str,
    retry_s: float = 1.0,
    refused: Refused | None = None,
) -> None:
    """The near cache's subscription (:class:`Subscriber`), as an asyncio task."""
    while True:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(channel)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    near.clear()
                    near.online = True
                elif message["type"] == "message":
                    near.evict(*decode_message(message["data"]))
        except asyncio.CancelledError:
            near.online = False
            raise
        except Exception as exc:  # any failure: assume messages were lost
            near.online = False
            near.clear()
            channel_lost(exc, refused)
            await asyncio.sleep(retry_s)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
