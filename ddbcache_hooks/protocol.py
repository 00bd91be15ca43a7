"""The consistency protocol: serving, filling and invalidating, written once.

Every step is a generator over :mod:`~ddbcache_hooks.effects`: it yields the
Redis batches, sleeps and DescribeTable calls it needs and receives their
results. ``handlers.drive`` (botocore) and ``handlers.drive_async`` (aiobotocore)
drive the same generators, blocking or awaiting. What a write drops is decided
by the planner (``plan.Planner.decide``); the protocol reads the key schemas
that decision needs and delivers it. See docs/consistency.md for the guarantee.

Leases (memcache's, NSDI '13 §3.2.1): a miss takes a lease on the entry in the
same round trip as the lookup; a fill stores only while the lease is intact;
a write deletes the item's hash, leases included, after DynamoDB answered. So a
fill that read DynamoDB before a write and stores after it is dropped.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import botocore
from redis.exceptions import ReadOnlyError

from . import responses, schema_steps, store, writethrough
from ._version import __version__
from .codec import Codec, CorruptEntry, ForeignEntry
from .config import Settings
from .effects import Op, Sleep
from .forks import fork_safe
from .keys import KeyLayout, NotCanonical, TableRef, canonical_key, table_of_key
from .near import CHANNEL_SUFFIX, NearCache
from .plan import (
    HIT,
    ITEM_TOKEN,
    LEASED,
    PARTITION_TOKEN,
    PASS,
    STALE,
    WAIT,
    Batch,
    Invalidation,
    Planner,
    ReadPlan,
    Slot,
    WriteDecision,
    WritePlan,
)
from .policy import UNKNOWN_WRITE
from .resilience import Backlog, CircuitBreaker, Orphans, ServerClock
from .schema import TableSchema
from .scripts import BULK_MARK, NOT_PRIMARY, FillStatus, LookupStatus
from .stats import LimitedLog, Stats, log
from .writes import WriteSet
from .writethrough import Intent

#: First waits of a caller that finds another caller's lease (seconds); the
#: last value repeats until ``lease_wait_ms`` is spent. Each is jittered by up to
#: half, so that a crowd of waiters does not poll Redis in lockstep.
_WAIT_STEPS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.025)
#: XFetch's beta (Vattani, Chierichetti, Lowenstein, VLDB 2015): 1 is the optimum
#: for a fill cost measured as the time of one recomputation.
XFETCH_BETA = 1.0
#: DynamoDB's throttling errors; with any 5xx, what a stale entry may answer.
THROTTLING = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
_REPORT_LOCK = threading.Lock()


def bulk_loading(token: bytes, now_ms: float | None = None) -> bool:
    """Whether a table token says a bulk load is writing to the table now."""
    if not isinstance(token, bytes) or token[:1] != BULK_MARK:
        return False
    until, _, _ = token[1:].partition(b":")
    now = time.time() * 1000 if now_ms is None else now_ms
    return until.isdigit() and int(until) > now


#: Said (at ERROR, once a minute) when the Redis the URL reaches is not a primary.
NOT_PRIMARY_MESSAGE = (
    "Redis at %s is not a primary (%s): nothing is served from it, and writes' "
    "invalidations are held until a primary takes them; DynamoDB calls go uncached "
    "meanwhile. Point the URL at the primary endpoint, not at a replica or a reader endpoint."
)


def not_primary(exc: Exception) -> bool:
    """A reply that says the server is a replica: READONLY, or the scripts' own check."""
    return isinstance(exc, ReadOnlyError) or NOT_PRIMARY in str(exc)


def _rcu(size: int) -> float:
    """Read capacity an eventually consistent read of ``size`` bytes costs."""
    return math.ceil(max(size, 1) / 4096) * 0.5


def recoverable(status: int, parsed: Mapping[str, Any]) -> bool:
    """A DynamoDB answer that a cached entry may stand in for: throttling or a 5xx."""
    if status >= 500:
        return True
    code = (parsed.get("Error") or {}).get("Code")
    return status >= 400 and code in THROTTLING


def _refresh_factor() -> float:
    """XFetch's ``-beta * ln(U)``, U uniform in (0, 1]: drawn per lookup."""
    return -XFETCH_BETA * math.log(1.0 - random.random())


def _unserved(slots: Sequence[Slot]) -> None:
    """A probe (access.py): what the lookup found answers nothing, not even an error.

    Its leases stay: a fill after DynamoDB answered the caller is by a proven reader.
    """
    for slot in slots:
        if slot.state == HIT:
            slot.state, slot.hit = PASS, None
        slot.fallback, slot.fallback_fresh = b"", False


def _identity(key: Mapping[str, Any]) -> Any:
    try:
        return canonical_key(key)
    except NotCanonical:
        return None


def _index_items(
    items: Sequence[Mapping[str, Any]], names: tuple[str, ...]
) -> dict[Any, Mapping[str, Any]] | None:
    """Returned items by canonical key; None when a projection left the key out."""
    found = {}
    for item in items:
        if not all(name in item for name in names):
            return None
        found[_identity({name: item[name] for name in names})] = item
    return found


class Protocol(writethrough.WriteThroughSteps, schema_steps.SchemaSteps):
    """State shared by every client of one registration, and the protocol steps."""

    stats: Stats

    def __init__(self, settings: Settings, *, cluster: bool = False) -> None:
        self.settings = settings
        self.layout = KeyLayout(settings.namespace, settings.cluster_buckets if cluster else 0)
        #: Key names from the key_schema option, by table name: they apply wherever
        #: the table lives.
        self._configured: dict[str, TableSchema] = {
            table: TableSchema(key) for table, key in settings.key_schema.items()
        }
        #: Schemas learned with DescribeTable (or from Redis), by table token key:
        #: (schema, monotonic time it may be used until (the longest entry TTL), table).
        self._learned: dict[str, tuple[TableSchema, float, str]] = {}
        self.schema_ttl_s = max(1, settings.max_ttl_ms // 1000)
        #: Unknown operations already warned about.
        self._unknown_warned: set[str] = set()
        self.planner = Planner(settings, self.layout, self._learned_schema, self._configured)
        self.codec = Codec(
            compress_min_bytes=settings.compress_min_bytes, signing_key=settings.signing_key
        )
        self.stats = Stats()
        self.breaker = CircuitBreaker(
            settings.breaker_threshold, settings.breaker_cooldown_ms / 1000, self.stats
        )
        self.backlog = Backlog(settings.backlog_size, self.stats)
        #: Leases of lookups whose reply never reached the caller, to give back.
        self.orphans = Orphans(self.stats)
        self.clock = ServerClock()
        #: The time-out of one Redis call of this registration's connections (ms):
        #: a lease is taken only while its caller still waits for the reply.
        self.call_timeout_ms = settings.redis_timeout_ms
        #: Called when background work is queued (the registration's worker).
        self.wake: Callable[[], None] = lambda: None
        #: Records which principals read the namespace (census.Census; sync registrations).
        self.census: Any = None
        #: A field longer than this is no entry this library wrote (see :meth:`tidy`).
        self.poison_bytes = (
            2
            * max(
                [settings.max_entry_bytes]
                + [t.max_entry_bytes for t in settings.tables.values() if t.max_entry_bytes]
            )
            + 65536
        )
        self.limited = LimitedLog()
        self.cluster = cluster
        #: On a cluster, the node of a key (set from the transport by the registration):
        #: a batch's hit read then reads entries with HMGET and each node's clock and
        #: identity once (store.read_hits). None: one hit script per key.
        self.node_of: Callable[[str], str] | None = None
        #: The Redis this registration uses, for messages (a URL's password masked).
        self.where = "(the Redis client passed to register())"
        self.token_ttl_ms = 2 * settings.max_ttl_ms
        #: Fills read with ConsistentRead in strict mode: no settle window for them.
        self._settle_ms = 0 if settings.consistency == "strict" else settings.settle_ms
        self.near: NearCache | None = settings.near_cache
        #: Whether answers the cache makes carry a synthesized ResponseMetadata.
        self.synthesizes_metadata = settings.response_metadata == "synthesize"
        #: Pub/sub channel that near caches listen on.
        self.channel = settings.namespace + CHANNEL_SUFFIX
        self._foreign_reported = threading.Event()
        #: Whether any table stores what its writes produced (planning skips it otherwise).
        self.write_through = settings.write_through or any(
            policy.write_through for policy in settings.tables.values()
        )
        fork_safe(self.stats, self.breaker, self.backlog, self.orphans, self.limited, self.near)

    # --- reads ---------------------------------------------------------------------

    def serve(self, plan: ReadPlan) -> Op[dict[str, Any] | None]:
        """Look the plan's entries up; the response when the cache answers it all, else None.

        Each slot ends up HIT, LEASED (this caller fills it after DynamoDB
        answers), WAIT (another caller's fill did not come in time) or PASS.
        """
        if self.backlog:
            yield from self.replay_backlog()
        if plan.refresh:
            yield from self._take_for_refresh(plan)
            return None
        pending = plan.slots if self.near is None else self._near_hits(plan.slots)
        if pending:
            epoch = self.near.epoch() if self.near is not None else 0
            yield from self._lookup(pending, drop=False)
            stale = [s for s in pending if s.state == STALE]
            if stale:
                yield from self._lookup(stale, drop=True)
            if self.near is not None:
                for slot in pending:
                    # Pages under a partition token are not held near: a write's
                    # message names the partition, not the pages that hang off it.
                    if slot.state == HIT and not slot.partition_key:
                        # Under the table's own token key: invalidations name it.
                        tokens = self.layout.tokens(slot.table)
                        self.near.put(slot.key, slot.field, tokens, slot.blob, epoch)
        if len(plan.slots) == 1 and plan.slots[0].state == WAIT:
            yield from self._wait_for_fill(plan.slots[0])
        if plan.probe and (plan.proved is None or not plan.proved()):
            yield from self._await_proof(plan)
            if plan.proved is None or not plan.proved():
                _unserved([s for s in plan.slots if s.probe])
        hits = [s for s in plan.slots if s.state == HIT]
        if log.isEnabledFor(logging.DEBUG):
            where = plan.batch.tables if plan.batch else plan.table
            log.debug("%s %s: %s", plan.operation, where, [s.state for s in plan.slots])
        if hits:
            self.stats.hit(
                plan.kind,
                len(hits),
                sum(_rcu(len(s.blob)) for s in hits),
                [s.table.name for s in hits],
            )
        if len(hits) < len(plan.slots):
            self.stats.miss(
                plan.kind,
                len(plan.slots) - len(hits),
                [s.table.name for s in plan.slots if s.state != HIT],
            )
        if len(hits) < len(plan.slots) or (plan.batch and plan.batch.passthrough):
            return None
        plan.served = True
        if plan.batch is not None:
            answer: dict[str, Any] = {"Responses": {}, "UnprocessedKeys": {}}
            self._merge_hits(plan, plan.batch, answer)
            return answer
        return (yield from self._respond(plan, hits[0]))

    def _take_for_refresh(self, plan: ReadPlan) -> Op[None]:
        """Inside ``refresh()``: drop the stored entries and lease them, as a miss does.

        The call then reads DynamoDB and fills under the lease, so a write that
        lands between that read and the fill deletes the lease and the fill is
        discarded. An entry another caller is filling right now is left to that
        caller (its lease is intact; this call reads DynamoDB and stores nothing).
        """
        if self.near is not None:
            self.near.evict((slot.key for slot in plan.slots), ())
        yield from self._lookup(plan.slots, drop=True, admit=True)
        for slot in plan.slots:
            if slot.state != LEASED:
                slot.state = PASS
        self.stats.incr("refreshes", len(plan.slots))
        if log.isEnabledFor(logging.DEBUG):
            where = plan.batch.tables if plan.batch else plan.table
            log.debug("%s %s refreshed: %s", plan.operation, where, [s.state for s in plan.slots])

    def _await_proof(self, plan: ReadPlan) -> Op[None]:
        """A probe whose entries are there, while the process's proving read of the same
        grants is in flight: wait for its answer (at most ``lease_wait_ms``) instead of
        reading DynamoDB too. A slot this call leased is read from DynamoDB anyway."""
        awaited, proved = plan.awaited, plan.proved
        if awaited is None or proved is None:
            return
        if not all(s.state == HIT for s in plan.slots if s.probe):
            return
        deadline = time.monotonic() + self.settings.lease_wait_ms / 1000
        step = 0
        while awaited() and not proved():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            yield Sleep(min(_WAIT_STEPS[min(step, len(_WAIT_STEPS) - 1)], remaining))
            step += 1

    def _near_hits(self, slots: list[Slot]) -> list[Slot]:
        """Serve what the near cache holds; the slots it does not."""
        assert self.near is not None
        self.near.refresh()  # invalidations that arrived apply before anything is served
        pending = []
        for slot in slots:
            blob = self.near.get(slot.key, slot.field)
            if blob is not None and self._decode(slot, blob, near=True):
                slot.state = HIT
                self.stats.incr("near_hits")
            else:
                pending.append(slot)
        return pending

    def _lookup(
        self, slots: Sequence[Slot], *, drop: bool, hits_first: bool = True, admit: bool = False
    ) -> Op[None]:
        """Look the slots up; ``hits_first=False``: the lookup script at once (a waiter's
        poll, which mostly finds the lease still held: one round trip, not two);
        ``admit``: lease even a Scan not admitted yet (a refresh asked for it)."""
        deadline = self.clock.deadline_ms(self.call_timeout_ms)
        refresh = _refresh_factor() if self.settings.early_refresh and not drop else 0.0
        started = time.monotonic()  # a fill's cost counts from here: lookup, read, fill
        requests = [
            store.LookupRequest(
                s.key,
                s.field,
                s.token_key,
                s.lease or store.new_token(),
                self.settings.lease_ms,
                1 if admit else s.admission,
                s.ttl_ms,
                drop,
                s.partition_key,
                deadline,
                refresh,
            )
            for s in slots
        ]
        for slot, request in zip(slots, requests, strict=True):
            slot.lease = request.lease_token  # released if the reply never arrives
        replies = yield from store.lookup(
            requests,
            self.token_ttl_ms,
            cluster=self.cluster,
            hits_first=hits_first,
            node_of=self.node_of,
            deadline=lambda: self.clock.deadline_ms(self.call_timeout_ms),
        )
        for slot, request, reply in zip(slots, requests, replies, strict=True):
            self.clock.observe(reply.server_ms)
            slot.generation = reply.generation
            if slot.token_kind == ITEM_TOKEN:
                slot.token = reply.item_token
            elif slot.token_kind == PARTITION_TOKEN:
                # Both: replacing the table's query token drops every partition's pages.
                slot.token = reply.query_token + b"/" + reply.partition_token
                slot.partition_since_ms = reply.partition_since_ms
            else:
                slot.token = reply.query_token
            slot.lease = None
            slot.fallback, slot.fallback_fresh = b"", False
            if reply.corrupt:
                self._corrupt(slot, "the key held another Redis type")
            if reply.foreign_token:
                self.stats.incr("errors")
                self._corrupt(slot, "its table's version token was not one of ours; replaced")
            if bulk_loading(slot.token):
                # A bulk load writes to the table: read DynamoDB, store nothing
                # (the lease, if this caller took it, is released by the fill),
                # and nothing to fall back to on an error.
                leased = reply.status in (LookupStatus.LEASED, LookupStatus.REFRESH)
                slot.state, slot.lease = (LEASED, request.lease_token) if leased else (PASS, None)
                continue
            if reply.status == LookupStatus.HIT:
                slot.state = HIT if self._decode(slot, reply.entry or b"") else STALE
                continue
            if reply.status == LookupStatus.REFRESH:
                # A valid entry near its expiry, leased to this caller: it reads
                # DynamoDB and refills while everybody else keeps hitting.
                slot.lease = request.lease_token
                if not self._decode(slot, reply.entry or b""):
                    slot.state = STALE
                    continue
                slot.state, slot.leased_at = LEASED, started
                slot.fallback, slot.fallback_fresh = slot.blob, True
                self.stats.incr("early_refreshes", tables=[slot.table.name])
                continue
            slot.fallback = reply.entry or b""  # expired, within its stale-if-error grace
            if reply.status == LookupStatus.LEASED:
                slot.state, slot.lease = LEASED, request.lease_token
                slot.leased_at = started
            elif reply.status == LookupStatus.WAIT:
                slot.state = WAIT
            else:
                slot.state = PASS

    def _decode(self, slot: Slot, blob: bytes, *, near: bool = False) -> bool:
        """Decode a looked-up entry (or one the near cache kept, verified before)."""
        try:
            entry = self.codec.decode(blob, context=None if near else self._context(slot))
        except ForeignEntry as exc:
            self._foreign(str(exc))
            self._corrupt(slot, str(exc))
            return False
        except CorruptEntry as exc:
            self._corrupt(slot, str(exc))
            return False
        if entry.signed and not self.codec.signs:
            self._foreign("entry signed with a key while this registration has none")
        if not near and entry.token != slot.token:
            return False  # filled before its table was invalidated
        slot.hit, slot.created_ms, slot.blob = entry.payload, entry.created_ms, blob
        return True

    def _context(self, slot: Slot) -> str:
        """What a signature covers besides the entry: where it is stored, and the
        item's generation (new with every invalidation, and with another server),
        so that an entry copied elsewhere, or back after a write, does not verify."""
        if not self.codec.signs:
            return ""
        return "\x00".join((slot.key, slot.field, slot.generation.decode("latin-1")))

    def _foreign(self, reason: str) -> None:
        """Report once that registrations with different signing keys share the namespace.

        Each side drops the other's entries (never serves them): the cache keeps
        working, at a poor hit rate, until the keys or namespaces are made to agree.
        """
        with _REPORT_LOCK:
            if self._foreign_reported.is_set():
                return
            self._foreign_reported.set()
        log.warning(
            "namespace %r is shared with a registration using a different signing_key "
            "(%s; this registration's key id is %s): each drops the other's entries, so "
            "few reads hit. Give both the same signing_key, or each its own namespace.",
            self.settings.namespace,
            reason,
            self.codec.key_id.hex() or "none",
        )

    def _corrupt(self, slot: Slot, reason: str) -> None:
        self.stats.incr("corrupt_entries")
        self.limited.warning(
            "corrupt", "dropped an unusable cache entry at %s: %s", slot.key, reason
        )

    def _wait_for_fill(self, slot: Slot) -> Op[None]:
        """Another caller holds the lease: poll briefly for its fill, then give up.

        Giving up means reading DynamoDB without filling; a lost filler thus
        costs at most ``lease_wait_ms``, never an error.
        """
        self.stats.incr("lease_waits")
        deadline = time.monotonic() + self.settings.lease_wait_ms / 1000
        step = 0
        while slot.state == WAIT:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stats.incr("lease_wait_timeouts")
                return
            pause = _WAIT_STEPS[min(step, len(_WAIT_STEPS) - 1)] * (1 + random.random() / 2)
            yield Sleep(min(pause, remaining))
            step += 1
            yield from self._lookup([slot], drop=False, hits_first=False)
            if slot.state == STALE:
                yield from self._lookup([slot], drop=True)

    def _respond(self, plan: ReadPlan, slot: Slot) -> Op[dict[str, Any]]:
        assert slot.hit is not None
        index_kind = None
        if plan.table is not None and responses.needs_index_kind(
            slot.hit, plan.capacity, plan.index
        ):
            schema = yield from self.describe(plan.table, plan.table_label)
            index_kind = schema.index_kind(plan.index or "") if schema else None
        return responses.hit_response(
            slot.hit,
            slot.created_ms,
            plan.capacity,
            plan.table_label,
            plan.index,
            index_kind,
            metadata=self.synthesizes_metadata,
        )

    def rescue(
        self, plan: ReadPlan, status: int, parsed: Mapping[str, Any]
    ) -> Op[dict[str, Any] | None]:
        """DynamoDB failed a miss (after botocore's retries): the cached answer, or None.

        Two entries may stand in for a throttling error or a 5xx: one this caller
        was refreshing early (still valid: an ordinary hit), and one that expired
        within its ``stale_if_error_s`` grace (``CacheMetadata.Stale``). An entry a
        write, a table invalidation or a restart dropped is not found by the
        lookup at all, and one filled under a replaced table token does not match
        it; strict mode never answers from an expired entry.
        """
        if plan.batch is not None or len(plan.slots) != 1 or not recoverable(status, parsed):
            return None
        slot = plan.slots[0]
        strict = self.settings.consistency == "strict"
        if not slot.fallback or (not slot.fallback_fresh and (strict or not slot.grace_ms)):
            return None
        try:
            entry = self.codec.decode(slot.fallback, context=self._context(slot))
        except (ForeignEntry, CorruptEntry):
            return None
        if entry.token != slot.token:
            return None
        now_ms = time.time() * 1000
        if not slot.fallback_fresh:
            ttl = slot.ttl_ms if "Item" in entry.payload else slot.negative_ttl_ms
            if now_ms >= entry.created_ms + ttl + slot.grace_ms:
                return None  # the grace ran out while DynamoDB was retried
        slot.hit, slot.created_ms = entry.payload, entry.created_ms
        answer = yield from self._respond(plan, slot)
        if self.synthesizes_metadata:
            # botocore's attempts were made: the answer says how many, as DynamoDB's would.
            attempts = (parsed.get("ResponseMetadata") or {}).get("RetryAttempts", 0)
            source = responses.HIT if slot.fallback_fresh else responses.STALE
            answer["ResponseMetadata"] = responses.response_metadata(source, attempts)
        if slot.fallback_fresh:
            self.stats.incr("refresh_errors_hidden")
        else:
            answer["CacheMetadata"]["Stale"] = True
            answer["CacheMetadata"]["Age"] = round(max(0.0, now_ms - entry.created_ms) / 1000, 3)
            self.stats.incr("stale_served", tables=[slot.table.name])
            log.debug("%s answered from an expired entry: DynamoDB said %s", plan.operation, status)
        return answer

    def _merge_hits(self, plan: ReadPlan, batch: Batch, parsed: dict[str, Any]) -> None:
        """Complete a BatchGetItem response: cache hits, capacity, CacheMetadata."""
        answers = parsed.setdefault("Responses", {})
        for table in batch.request_keys:
            answers.setdefault(table, [])
        for slot in plan.slots:
            if slot.state == HIT and slot.hit is not None and "Item" in slot.hit:
                answers[slot.label].append(slot.hit["Item"])
        parsed.setdefault("UnprocessedKeys", {})
        if not self.synthesizes_metadata:
            parsed.pop("ResponseMetadata", None)
        elif "ResponseMetadata" not in parsed:  # a partial hit keeps DynamoDB's own
            parsed["ResponseMetadata"] = responses.response_metadata(responses.HIT)
        if plan.capacity is None:
            parsed.pop("ConsumedCapacity", None)
        else:
            parsed["ConsumedCapacity"] = responses.batch_capacity(
                plan.capacity, batch.tables, parsed.get("ConsumedCapacity")
            )
        hits = sum(1 for s in plan.slots if s.state == HIT)
        consistent = sum(n for n, strong in batch.passthrough.values() if strong)
        uncached = sum(n for n, strong in batch.passthrough.values() if not strong)
        parsed["CacheMetadata"] = responses.batch_metadata(
            hits, len(plan.slots) - hits + uncached, consistent
        )

    def completed(
        self, plan: ReadPlan, parsed: dict[str, Any], ok: bool
    ) -> list[store.FillRequest]:
        """After DynamoDB answered a miss: the fills (or lease releases) to send.

        No I/O, so a BatchGetItem response is completed even when Redis is down.
        Serializes at once: the resource layer transforms ``parsed`` in place next.
        """
        if plan.batch is not None:
            if not ok:
                return self._releases(plan.slots)
            fills = self._batch_fills(plan, plan.batch, parsed)
            self._merge_hits(plan, plan.batch, parsed)
            return fills
        if plan.slots[0].state == LEASED:
            # Read consistently (strict mode) or not: a GSI Query never is.
            settle_ms = 0 if plan.strict else self.settings.settle_ms
            return [self._fill(plan.slots[0], responses.entry_payload(parsed), ok, settle_ms)]
        return []

    def fill(self, fills: Sequence[store.FillRequest]) -> Op[None]:
        """Store entries whose lease is intact: one round trip."""
        if not fills:
            return
        outcomes = yield from store.fill(fills)
        for fill, (outcome, ttl) in zip(fills, outcomes, strict=True):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("fill %s: outcome %d, ttl %d ms", fill.key, outcome, ttl)
            if outcome == FillStatus.STORED:
                self.stats.incr("fills", tables=[table_of_key(fill.key)])
            elif outcome == FillStatus.LOST:
                self.stats.incr("fills_discarded")
                log.debug("fill discarded: a write invalidated the entry meanwhile")

    def _fill(
        self, slot: Slot, payload: dict[str, Any], ok: bool, settle_ms: int | None = None
    ) -> store.FillRequest:
        assert slot.lease is not None
        blob = b""
        if ok and not bulk_loading(slot.token):
            try:
                blob = self.codec.encode(
                    payload,
                    token=slot.token,
                    created_ms=int(time.time() * 1000),
                    context=self._context(slot),
                )
            except CorruptEntry as exc:  # a foreign table token: never store under it
                self.stats.incr("errors")
                self._corrupt(slot, str(exc))
                blob = b""
            if len(blob) > slot.max_entry_bytes:
                self.stats.incr("fills_skipped")
                log.debug("not caching %s: %d bytes > max_entry_bytes", slot.key, len(blob))
                blob = b""
        ttl = slot.ttl_ms if "Item" in payload else slot.negative_ttl_ms
        if settle_ms is None:
            settle_ms = self._settle_ms
        cost_ms = math.ceil((time.monotonic() - slot.leased_at) * 1000) if slot.leased_at else 0
        return store.FillRequest(
            slot.key,
            slot.field,
            slot.lease,
            blob,
            ttl,
            settle_ms,
            slot.partition_since_ms,
            slot.grace_ms,
            cost_ms,
        )

    @staticmethod
    def _releases(slots: Sequence[Slot]) -> list[store.FillRequest]:
        return [store.FillRequest(s.key, s.field, s.lease, b"", 0) for s in slots if s.lease]

    def _batch_fills(
        self, plan: ReadPlan, batch: Batch, parsed: Mapping[str, Any]
    ) -> list[store.FillRequest]:
        """Match the real BatchGetItem's items to the missed keys; absent keys fill negative.

        Keys DynamoDB left unprocessed are never cached as absent. Key attributes
        the request's projection did not ask for (added so that items can be
        matched to keys) are removed from the items again here.
        """
        leased = [s for s in plan.slots if s.state == LEASED]
        answered = parsed.get("Responses", {})
        unprocessed = parsed.get("UnprocessedKeys") or {}
        fills = []
        for label in dict.fromkeys(s.label for s in plan.slots):
            keys = batch.request_keys[label]
            items = answered.get(label, [])
            found = _index_items(items, tuple(keys[0]))
            for item in items:
                for name in batch.added_keys.get(label, ()):
                    item.pop(name, None)
            skipped = {_identity(k) for k in unprocessed.get(label, {}).get("Keys", [])}
            for slot in (s for s in leased if s.label == label):
                identity = _identity(keys[slot.position])
                if found is None or identity is None or identity in skipped:
                    fills.extend(self._releases([slot]))
                elif identity in found:
                    fills.append(self._fill(slot, {"Item": found[identity]}, True))
                else:
                    fills.append(self._fill(slot, {}, True))
        return fills

    def release(self, plan: ReadPlan) -> Op[None]:
        """The call failed: give leases back so that waiting callers need not time out."""
        yield from self.fill(self._releases(plan.slots))

    # --- writes --------------------------------------------------------------------

    def invalidate(self, plan: WritePlan, parsed: Mapping[str, Any] | None) -> Op[None]:
        """After a write returned (or failed): drop what it touched (and, with a
        registered write intent, store what it wrote if nothing intervened)."""
        plan.invalidation = yield from self.invalidation(plan, parsed)
        yield from self.replay_backlog()
        intent = plan.through
        if isinstance(intent, Intent) and intent.registered:
            yield from self._write_through(plan, intent, parsed)
        else:
            yield from self.deliver(plan.invalidation)

    def undelivered(self, plan: WritePlan, parsed: Mapping[str, Any] | None) -> Invalidation:
        """The invalidation to remember when Redis cannot take it now.

        Decided without I/O: items whose key schema this process does not know
        fall back to their whole table.
        """
        if plan.invalidation is None:
            written = self.planner.written(plan, parsed)
            plan.invalidation = self.decided(plan, self.planner.decide(written))
        self.forget_locally(plan.invalidation)
        return plan.invalidation

    def forget_locally(self, invalidation: Invalidation) -> None:
        """Evict from this process's near cache, at once and whether or not Redis answers."""
        if self.near is not None:
            tables = [*invalidation.tables, *invalidation.lifecycle]
            self.near.evict((key for _, key in invalidation.items), tables)

    def invalidation(self, plan: WritePlan, parsed: Mapping[str, Any] | None) -> Op[Invalidation]:
        """What a write must drop: the planner decides; the only I/O is reading the
        key schemas that its whole items need (Redis, then DescribeTable)."""
        written = self.planner.written(plan, parsed)
        schemas: dict[TableRef, TableSchema | None] = {}
        for table in self.planner.schemas_needed(written):
            schemas[table] = yield from self.key_schema(table, plan.location.api_name(table))
        return self.decided(plan, self.planner.decide(written, schemas))

    def decided(self, plan: WritePlan | None, decision: WriteDecision) -> Invalidation:
        """Say what the planner decided (once per table), forget the key schemas of
        tables whose lifecycle changed; the invalidation to deliver."""
        for unknown in decision.unknown:
            self.limited.warning(
                "unknown-table",
                "cannot tell which table a write changed; nothing invalidated: %s",
                unknown,
            )
        if plan is not None and plan.policy is UNKNOWN_WRITE:
            self._warn_unknown(plan.operation, decision.reasons)
        for table, reason in decision.reasons.items():
            if reason is not None:
                self.limited.warning(
                    f"table:{self.layout.tokens(table)}",
                    "invalidating every entry of table %s (%s): %s",
                    table.name,
                    table.place,
                    reason,
                )
        for table, mark in decision.forget.items():
            self._learned.pop(self.layout.tokens(table), None)
            log.debug(
                "table %s (%s): every entry dropped (lifecycle %r)",
                table.name,
                table.place,
                mark or "change",
            )
        return decision.invalidation

    def forget_tables(self, tables: Sequence[TableRef], reason: str) -> Op[None]:
        """Tables DynamoDB says do not exist: drop their entries and key schemas."""
        for table in tables:
            log.debug("table %s (%s): every entry dropped (%s)", table.name, table.place, reason)
        decision = self.planner.decide(WriteSet(lifecycle=set(tables)))
        yield from self.deliver(self.decided(None, decision))

    def _warn_unknown(self, operation: str, tables: Mapping[TableRef, Any]) -> None:
        if operation in self._unknown_warned:
            return
        self._unknown_warned.add(operation)
        log.warning(
            "ddbcache-hooks %s does not know the DynamoDB operation %s (botocore %s): after "
            "every %s call, each entry of the table it names (%s) is dropped. Upgrade "
            "ddbcache-hooks to a release newer than %s, which lists the operation.",
            __version__,
            operation,
            botocore.__version__,
            operation,
            ", ".join(dict.fromkeys(table.name for table in tables)) or "none named",
            __version__,
        )

    def deliver(self, invalidation: Invalidation) -> Op[None]:
        """Drop the items and replace the tokens: one round trip."""
        keys = list(dict.fromkeys(key for _, key in invalidation.items))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("invalidating %d items, tables %s", len(keys), list(invalidation.tables))
        # Evicted from the near cache before and after Redis: a lookup that began in
        # between may have read the old entry, and must not park it here afterwards.
        self.forget_locally(invalidation)
        stale = yield from store.invalidate(
            keys,
            self.settings.settle_ms,
            list(invalidation.tables.items()),
            self.token_ttl_ms,
            cluster=self.cluster,
            channel=self.channel if self.settings.publish_invalidations else None,
            lifecycle=list(invalidation.lifecycle.items()),
            generations=[(key, *check) for key, check in invalidation.generations.items()],
            copies=self.layout.token_copies,
        )
        self.forget_locally(invalidation)
        for tokens in stale:
            # The table was recreated (or updated) since its key schema was learned:
            # the write's items were projected with the old key, so the table went whole.
            learned = self._learned.pop(tokens, None)
            self.limited.warning(
                f"generation:{tokens}",
                "the key schema learned for table %s is from before a table lifecycle change "
                "(DeleteTable, CreateTable, ...): every entry of the table was dropped, and the "
                "schema is learned again",
                learned[2] if learned else tokens,
            )
        if stale and self.near is not None:
            self.near.evict((), stale)
        self.stats.incr("invalidations", len(keys), [table_of_key(key) for key in keys])
        dropped = [
            *(tokens for tokens, items in invalidation.tables.items() if items),
            *invalidation.lifecycle,
            *stale,
        ]
        self.stats.incr("table_invalidations", len(dropped), [table_of_key(t) for t in dropped])

    def keep(self, invalidation: Invalidation) -> None:
        """An invalidation Redis did not take: hold it, and have it replayed in the background."""
        self.backlog.add(invalidation)
        self.wake()

    def abandon(self, plan: ReadPlan) -> None:
        """A read's lookup or call ended without its fill: give its leases back in the background.

        Its lookup may have taken a lease on the server although the reply never
        arrived (a time-out, a cancellation); the release only drops a lease that
        still holds this caller's token.
        """
        leases = [(s.key, s.field, s.lease) for s in plan.slots if s.lease]
        if leases:
            for slot in plan.slots:
                slot.lease = None
            self.orphans.add_leases(leases)
            self.wake()

    def suspect(self, keys: Sequence[tuple[str, str]]) -> None:
        """Lookups of these (key, field) pairs timed out: check them for garbage."""
        if keys:
            self.orphans.add_suspects(list(keys))
            self.wake()

    def tidy(self) -> Op[None]:
        """Give orphaned leases back; delete keys holding a field no entry could be."""
        leases, suspects = self.orphans.snapshot()
        if leases:
            outcomes = yield from store.fill(
                [store.FillRequest(key, field, token, b"", 0) for key, field, token in leases]
            )
            released = sum(1 for outcome, _ in outcomes if outcome == FillStatus.RELEASED)
            self.stats.incr("leases_released", released)
        if suspects:
            poisoned = yield from store.oversized(suspects, self.poison_bytes)
            if poisoned:
                yield from store.unlink(poisoned)
                self.stats.incr("poisoned_keys", len(poisoned))
                self.limited.warning(
                    "poisoned",
                    "deleted %d Redis keys holding a field larger than any cache entry "
                    "(lookups of them timed out), e.g. %s",
                    len(poisoned),
                    poisoned[0],
                )
        self.orphans.done(leases, suspects)

    def replay_backlog(self) -> Op[None]:
        """Deliver what outages left undelivered, before anything is served."""
        if not self.backlog:
            return
        pending, upto = self.backlog.snapshot()
        yield from self.deliver(pending)
        self.backlog.discard(pending, upto)
        count = len(pending.items) + len(pending.tables)
        self.stats.incr("backlog_replayed", count)
        log.info("replayed %d invalidations that an outage had held back", count)
