"""Deciding, without I/O: (operation, parameters, settings) -> a plan.

A plan says whether a call is served from the cache, which entries it uses
(Redis key, variant field, TTLs, admission) and what a write touches. The
handlers only carry plans out. Anything the planner does not understand makes
the call pass through untouched (botocore and DynamoDB then report bad input
with their own errors); it never guesses.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from . import expressions
from .config import Settings, TableSettings
from .expressions import variant
from .keys import (
    KeyLayout,
    Location,
    NotCanonical,
    TableRef,
    canonical_key,
    digest,
    item_digest,
    partition_digest,
)
from .policy import (
    NOT_DATA,
    PASS_THROUGH,
    POLICIES,
    Action,
    OperationPolicy,
    ReadKind,
    unknown_operation,
    valid_not_data,
)
from .responses import capacity_mode
from .schema import TableSchema
from .scripts import BULK_MARK
from .store import Lifecycle
from .writes import WriteSet, tables_named

#: Per-table parameters of a BatchGetItem that do not select data.
_BATCH_NOT_DATA = NOT_DATA | {"Keys"}
#: BatchGetItem accepts at most this many keys; beyond it DynamoDB rejects the call.
BATCH_GET_LIMIT = 100


@dataclass(slots=True)
class Slot:
    """One cache entry a read uses, and what happened to it during the call."""

    table: TableRef
    key: str
    field: str
    token_key: str
    token_kind: int  # ITEM_TOKEN, QUERY_TOKEN or PARTITION_TOKEN
    ttl_ms: int
    negative_ttl_ms: int
    admission: int
    max_entry_bytes: int
    #: BatchGetItem: the table as the request named it, and the key's position.
    label: str = ""
    position: int = 0
    #: PARTITION_TOKEN slots: the partition token hash the page hangs off.
    partition_key: str = ""
    #: How long past its TTL the entry may answer a read DynamoDB fails (0: never).
    grace_ms: int = 0
    # Filled in while the call runs:
    state: str = "new"  # one of the SLOT_* states below
    lease: str | None = None
    token: bytes = b""  # the token(s) read with the lookup; the fill records them
    generation: bytes = b""  # the item's generation read with the lookup (signatures cover it)
    partition_since_ms: int = 0  # since when the partition's history is known (lookup)
    hit: dict[str, Any] | None = None
    created_ms: int = 0
    blob: bytes = b""
    #: The entry the lookup found besides a miss: expired within its grace
    #: (``fallback_fresh`` False), or still valid and being refreshed early (True).
    fallback: bytes = b""
    fallback_fresh: bool = False
    #: When the lookup that leased this slot began (monotonic s): the fill's cost counts from it.
    leased_at: float = 0.0
    #: Its table's read access is not proved for the caller: never answered from the cache.
    probe: bool = False


#: Which token validates a slot's entries: the table's item token; the table's
#: query token (``query_invalidation="ttl"``); or the table's query token and a
#: partition token together (``"partition"`` and ``"write"``).
ITEM_TOKEN, QUERY_TOKEN, PARTITION_TOKEN = 0, 1, 2

#: Lookup outcomes of a slot.
HIT = "hit"  # served from the cache
LEASED = "leased"  # missed; this caller fills it
WAIT = "wait"  # missed; another caller is filling it
STALE = "stale"  # an entry that must be dropped (undecodable, or older than a table flush)
PASS = "pass"  # missed; not filled (Scan not yet admitted)


@dataclass(slots=True)
class Batch:
    """What a BatchGetItem plan needs beyond its slots."""

    #: Every requested table in request order, with its keys as the caller sent them.
    request_keys: dict[str, list[Mapping[str, Any]]]
    #: Tables sent to DynamoDB as they are -> (key count, read with ConsistentRead).
    passthrough: dict[str, tuple[int, bool]]
    #: Key attributes added to a table's projection for the real call.
    added_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def tables(self) -> list[str]:
        return list(self.request_keys)


@dataclass(slots=True)
class ReadPlan:
    operation: str
    policy: OperationPolicy
    kind: ReadKind
    #: The table read (None for a BatchGetItem, whose slots name theirs).
    table: TableRef | None
    #: TableName exactly as the caller wrote it (used in response shapes).
    table_label: str
    slots: list[Slot]
    capacity: str | None
    index: str | None = None
    strict: bool = False
    batch: Batch | None = None
    #: Set once the call was answered from the cache.
    served: bool = False
    #: Made inside ``refresh()``: read DynamoDB and replace the entries, under their leases.
    refresh: bool = False
    #: Some slot's table has not (recently) been read by the caller's credentials
    #: from DynamoDB: those slots go to DynamoDB whatever the cache holds (and may fill).
    probe: bool = False
    #: (credential identity, grants, unproven grants) DynamoDB's answer proves or
    #: refuses (access.py).
    access: Any = None
    #: A probe's second look, after its lookup: True once the grants are proved (by a
    #: concurrent call of the same credentials, whose fill this one waited for).
    proved: Callable[[], bool] | None = None
    #: A probe that is not the process's proving read of its grants: True while that
    #: read is in flight (the probe waits for it rather than reading DynamoDB too).
    awaited: Callable[[], bool] | None = None


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


@dataclass
class WriteDecision:
    """What a write drops, decided without I/O (the protocol only delivers it)."""

    invalidation: Invalidation = field(default_factory=Invalidation)
    #: Tables whose every entry goes, with the reason for the log (None: reported
    #: where it happened, say a failed DescribeTable).
    reasons: dict[TableRef, str | None] = field(default_factory=dict)
    #: Writes whose table could not be told at all (nothing is dropped for them).
    unknown: list[str] = field(default_factory=list)
    #: Tables whose key schema this process must forget (lifecycle changes), with
    #: the bulk-load mark for the log ("" for a plain change).
    forget: dict[TableRef, str] = field(default_factory=dict)


@dataclass(slots=True)
class WritePlan:
    operation: str
    policy: OperationPolicy
    params: Mapping[str, Any]
    #: Where the calling client's requests go (tables are resolved against it).
    location: Location
    #: Set once computed, so that a failed delivery can be remembered as it was.
    invalidation: Invalidation | None = None
    #: With write_through: the item this write may store (a writethrough.Intent),
    #: or why it may not (a skip reason); None when off or not such a write.
    through: Any = None


Plan = ReadPlan | WritePlan


#: Distinct requests whose item key and variant field a planner keeps.
MEMO_SIZE = 4096


def _field(shape: Any, scope: str) -> str:
    """The entry's field in its item's hash: the request variant's digest, and with
    ``isolation="principal"`` the principal's scope (a write still drops them all)."""
    if scope:
        return "p" + scope + (":" + digest(shape) if shape else "")
    return digest(shape) if shape else ""


class Planner:
    """Builds plans for one registration's settings and key layout."""

    def __init__(
        self,
        settings: Settings,
        layout: KeyLayout,
        learned: Callable[[TableRef], TableSchema | None] | None = None,
        configured: Mapping[str, TableSchema] | None = None,
    ) -> None:
        self.settings = settings
        self.layout = layout
        #: The key schema this process learned for a table wherever it lives (no
        #: I/O: read only while planning), and the ``key_schema`` option's by name.
        self.learned: Callable[[TableRef], TableSchema | None] = learned or (lambda table: None)
        self.configured: Mapping[str, TableSchema] = {} if configured is None else configured
        #: Item keys and variant fields already computed, by the request's own bytes
        #: (see :meth:`_item_ids`). Per planner: never shared across registrations
        #: (namespace, settings); keyed by TableRef: never across tables, Regions,
        #: accounts or endpoints.
        self._memo: dict[tuple[Any, ...], tuple[str, str]] = {}

    def _schema(self, table: TableRef) -> TableSchema | None:
        """The table's schema as known in process (learned first, then configured)."""
        return self.learned(table) or self.configured.get(table.name)

    def plan(
        self, operation: str, params: Mapping[str, Any], location: Location, scope: str = ""
    ) -> Plan | None:
        """The call's plan; None when it passes through (not cached, or not understood).

        ``scope`` (``isolation="principal"``): the caller's principal digest, part of
        every entry's identity, so that no other principal reads what it filled.
        """
        policy = POLICIES.get(operation)
        if policy is None and operation not in PASS_THROUGH:
            policy = unknown_operation(operation)
        if policy is None or policy.action is Action.BYPASS:
            return None
        if policy.action in (Action.WRITE, Action.OBSERVE):
            return WritePlan(operation, policy, params, location)
        try:
            if not valid_not_data(params):
                return None  # DynamoDB rejects it: never answer it from the cache
            if policy.action is Action.BATCH_READ:
                return self._batch_read(operation, policy, params, location, scope)
            return self._read(operation, policy, params, location, scope)
        except (NotCanonical, KeyError, TypeError, AttributeError, ValueError):
            return None

    def _read(
        self,
        operation: str,
        policy: OperationPolicy,
        params: Mapping[str, Any],
        location: Location,
        scope: str = "",
    ) -> ReadPlan | None:
        if params.get("ConsistentRead") is True:
            return None
        if not policy.capacity_in_hits and capacity_mode(params):
            return None
        assert policy.read_kind is not None
        label = params["TableName"]
        refs = location.refs(label)
        if len(refs) != 1:
            return None  # an ARN that may or may not name the client's own table
        (table,) = refs
        config = self.settings.for_table(table.name)
        if config is None or not config.caches(operation):
            return None
        if policy.action is Action.ITEM_READ:
            item_key, field_name = self._item_ids(operation, table, params, policy.skip, scope)
            slot = self._item_slot(table, item_key, field_name, config)
        else:
            shape = variant(params, policy.skip)
            query = (operation, *table, shape, scope) if scope else (operation, *table, shape)
            if config.query_invalidation == "ttl":
                slot = self._query_slot(table, policy.read_kind, query, config)
            else:
                narrow = (
                    config.query_invalidation == "partition" and policy.read_kind is ReadKind.QUERY
                )
                partition = self._partition(table, params) if narrow else None
                # A page of one partition lives in that partition's bucket (one node
                # per hit on a cluster with buckets); a page on the table-wide token
                # is spread by its own variant.
                own = partition_digest(table, *partition) if partition is not None else ""
                slot = self._query_slot(table, policy.read_kind, query, config, own)
                slot.token_kind = PARTITION_TOKEN
                slot.partition_key = self.partition_key(table, partition)
        return ReadPlan(
            operation,
            policy,
            policy.read_kind,
            table,
            label,
            [slot],
            capacity_mode(params),
            index=params.get("IndexName"),
            strict=self.settings.consistency == "strict"
            and self._reads_consistently(table, params.get("IndexName")),
        )

    def _batch_read(
        self,
        operation: str,
        policy: OperationPolicy,
        params: Mapping[str, Any],
        location: Location,
        scope: str = "",
    ) -> ReadPlan | None:
        slots: list[Slot] = []
        passthrough: dict[str, tuple[int, bool]] = {}
        requested = params["RequestItems"]
        total = 0
        for label, spec in requested.items():
            keys = spec["Keys"]
            total += len(keys)
            if not keys:
                return None
            if not valid_not_data(spec):
                return None
            refs = location.refs(label)
            table = refs[0]
            config = self.settings.for_table(table.name) if len(refs) == 1 else None
            identities = {canonical_key(key) for key in keys}
            if len(identities) != len(keys):
                return None  # duplicate keys: DynamoDB rejects the whole call
            consistent = spec.get("ConsistentRead") is True
            if consistent or config is None or not config.caches(operation):
                passthrough[label] = (len(keys), consistent)
                continue
            field_name = _field(variant(spec, _BATCH_NOT_DATA), scope)
            for position, key in enumerate(keys):
                slot = self._item_slot(table, self._item_key(table, key), field_name, config)
                slot.label, slot.position = label, position
                slots.append(slot)
        if total > BATCH_GET_LIMIT:
            return None
        return ReadPlan(
            operation,
            policy,
            ReadKind.ITEM,
            None,
            "",
            slots,
            capacity_mode(params),
            strict=self.settings.consistency == "strict",
            batch=Batch({label: spec["Keys"] for label, spec in requested.items()}, passthrough),
        )

    def _item_ids(
        self,
        operation: str,
        table: TableRef,
        params: Mapping[str, Any],
        skip: Any,
        scope: str,
    ) -> tuple[str, str]:
        """A GetItem's item hash and variant field, computed once per distinct request.

        Keyed by the request's msgpack bytes (a fraction of the cost of the
        canonical key, its digest and the variant's), the table it resolved to
        and the principal scope; bounded to :data:`MEMO_SIZE` requests.
        """
        try:
            memo_key: tuple[Any, ...] | None = (operation, table, scope, msgpack.packb(params))
        except (TypeError, ValueError, OverflowError):
            memo_key = None  # not plain data: computed every time
        ids = self._memo.get(memo_key) if memo_key is not None else None
        if ids is None:
            item_key = self.layout.item(table, item_digest(table, params["Key"]))
            ids = (item_key, _field(variant(params, skip), scope))
            if memo_key is not None:
                self._remember(memo_key, ids)
        return ids

    def _item_key(self, table: TableRef, key: Mapping[str, Any]) -> str:
        """An item's hash key, memoized like :meth:`_item_ids` (a batch's keys)."""
        try:
            memo_key: tuple[Any, ...] | None = (table, msgpack.packb(key))
        except (TypeError, ValueError, OverflowError):
            memo_key = None
        ids = self._memo.get(memo_key) if memo_key is not None else None
        if ids is None:
            ids = (self.layout.item(table, item_digest(table, key)), "")
            if memo_key is not None:
                self._remember(memo_key, ids)
        return ids[0]

    def _remember(self, memo_key: tuple[Any, ...], ids: tuple[str, str]) -> None:
        if len(self._memo) >= MEMO_SIZE:
            # The oldest; when another thread changes the map meanwhile, it stays
            # about bounded (a few entries over).
            with contextlib.suppress(RuntimeError, StopIteration):
                self._memo.pop(next(iter(self._memo)), None)
        self._memo[memo_key] = ids

    def _item_slot(
        self, table: TableRef, item_key: str, field_name: str, config: TableSettings
    ) -> Slot:
        return Slot(
            table,
            item_key,
            field_name,
            self.layout.tokens_for(table, item_key),
            ITEM_TOKEN,
            config.ttl_ms["item"],
            config.ttl_ms["item_negative"],
            1,
            config.max_entry_bytes,
            grace_ms=config.stale_if_error_ms,
        )

    def _query_slot(
        self,
        table: TableRef,
        kind: ReadKind,
        shape: Any,
        config: TableSettings,
        partition_id: str = "",
    ) -> Slot:
        key = self.layout.query(table, digest(shape), partition_id)
        return Slot(
            table,
            key,
            "",
            self.layout.tokens_for(table, key),
            QUERY_TOKEN,
            config.ttl_ms[kind.value],
            config.ttl_ms[kind.value],
            config.admission[kind],
            config.max_entry_bytes,
            grace_ms=config.stale_if_error_ms,
        )

    def _partition(self, table: TableRef, params: Mapping[str, Any]) -> tuple[str, Any] | None:
        """The one partition a base-table or LSI Query reads, when certain; else None.

        None (the table-wide token) for a Scan, a GSI Query, an index this
        process does not know as an LSI, or a key condition it cannot read.
        Uses only schemas already known in process: planning does no I/O.
        """
        if "KeyConditions" in params:
            if "KeyConditionExpression" in params:
                return None  # DynamoDB rejects the pair
            equal = _legacy_equalities(params["KeyConditions"])
        else:
            expression = params.get("KeyConditionExpression")
            if not isinstance(expression, str):
                return None
            equal = expressions.key_equalities(
                expression,
                params.get("ExpressionAttributeNames") or {},
                params.get("ExpressionAttributeValues") or {},
            )
        if not equal:
            return None
        schema = self._schema(table)
        index = params.get("IndexName")
        if index is not None and (schema is None or index not in schema.local_indexes):
            return None  # a GSI's partition is not the table's; an unknown index may be one
        if schema is not None:
            name = schema.key[0]
            return (name, equal[name]) if name in equal else None
        if len(equal) == 1:  # a Query's only equality is on its partition key
            ((name, value),) = equal.items()
            return name, value
        return None

    def _reads_consistently(self, table: TableRef, index: str | None) -> bool:
        """Whether DynamoDB accepts ConsistentRead on this table or index.

        A GSI rejects it, so strict mode leaves a page on an index alone unless
        the schema known in process says the index is an LSI.
        """
        if index is None:
            return True
        schema = self._schema(table)
        return schema is not None and index in schema.local_indexes

    def partition_key(self, table: TableRef, partition: tuple[str, Any] | None) -> str:
        """Redis key of a partition's token (None: the table-wide one)."""
        if partition is None:
            return self.layout.partition(table, partition_digest(table, None))
        return self.layout.partition(table, partition_digest(table, *partition))

    def item_slot(self, table: TableRef, params: Mapping[str, Any]) -> Slot | None:
        """The entry a GetItem of ``params`` on ``table`` reads; None: not cached there."""
        config = self.settings.for_table(table.name)
        if config is None or not config.caches("GetItem"):
            return None
        item_key = self.item_key(table, params["Key"])
        return self._item_slot(
            table, item_key, _field(variant(params, POLICIES["GetItem"].skip), ""), config
        )

    def item_key(self, table: TableRef, key: Mapping[str, Any]) -> str:
        """Redis key of an item's entries (for invalidation)."""
        return self.layout.item(table, item_digest(table, key))

    # --- writes: what a write drops --------------------------------------------------

    def written(self, plan: WritePlan, parsed: Mapping[str, Any] | None) -> WriteSet:
        """What a write touched, read from its request (and response); never raises.

        A request that cannot be read names every table it mentions, whole.
        """
        assert plan.policy.writes is not None
        try:
            return plan.policy.writes(plan.params, parsed, plan.location)
        except (NotCanonical, KeyError, TypeError, AttributeError, ValueError):
            return tables_named(plan.params, plan.location)

    def key_schema(self, table: TableRef) -> TableSchema | None:
        """The table's key names as this process knows them (the option first)."""
        return self.configured.get(table.name) or self.learned(table)

    def schemas_needed(self, written: WriteSet) -> list[TableRef]:
        """Tables whose written items are whole items, not keys, and whose key
        schema this process does not know: the only I/O a write's invalidation
        may need (Redis, then DescribeTable) before :meth:`decide`."""
        needed: dict[TableRef, None] = {}
        for ref in written.items:
            known = ref.is_key or ref.table in written.tables
            if not known and self.key_schema(ref.table) is None:
                needed[ref.table] = None
        return list(needed)

    def decide(
        self,
        written: WriteSet,
        schemas: Mapping[TableRef, TableSchema | None] | None = None,
        *,
        now_ms: int | None = None,
    ) -> WriteDecision:
        """What a write drops, from what it touched.

        ``schemas`` holds the key schemas fetched for :meth:`schemas_needed`
        (a table missing from it is looked up in process; None there: not
        known). An item whose key cannot be told drops its table, once per
        table; so does an item of a table whose key schema is unknown.
        """
        schemas = {} if schemas is None else schemas
        decision = WriteDecision(unknown=list(written.unknown))
        for table, reason in written.tables.items():
            self._whole_table(decision, table, reason)
        for table in written.lifecycle | written.bulk_started | written.bulk_ended:
            self._lifecycle(decision, table, written, now_ms)
        result = decision.invalidation
        for ref in written.items:
            tokens = self.layout.tokens(ref.table)
            if result.tables.get(tokens):
                continue  # the whole table goes already
            key = ref.attrs
            if not ref.is_key:
                known = ref.table in schemas
                schema = schemas[ref.table] if known else self.key_schema(ref.table)
                if schema is None:
                    self._whole_table(decision, ref.table, None)
                    continue
                projected = schema.project(ref.attrs)
                if projected is None:
                    self._whole_table(decision, ref.table, "a write did not name a whole key")
                    continue
                key = projected
                if schema.generation:
                    result.generations[tokens] = (self.layout.schema(ref.table), schema.generation)
            try:
                result.items.extend(self.written_keys(ref.table, key))
            except (NotCanonical, TypeError):
                self._whole_table(decision, ref.table, "a write named a key the cache cannot read")
        return decision

    def written_keys(self, table: TableRef, key: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(token key, Redis key) pairs a write of one item drops.

        The item's hash; and, unless the table's pages live out their TTL, the
        table-wide partition (GSI Queries, Scans, "write" mode) and in
        "partition" mode the item's own partition. Partition hashes are dropped
        like items: same script, same round trip, same settle marker.
        """
        token_key = self.layout.tokens(table)
        keys = [(token_key, self.item_key(table, key))]
        config = self.settings.for_table(table.name)
        if config is None or config.query_invalidation == "ttl":
            return keys
        keys.append((token_key, self.partition_key(table, None)))
        if config.query_invalidation == "partition":
            for name in self.partition_names(table, key):
                keys.append((token_key, self.partition_key(table, (name, key[name]))))
        return keys

    def partition_names(self, table: TableRef, key: Mapping[str, Any]) -> list[str]:
        """Which attribute of a written key is the partition key.

        Without a known schema, a two-attribute key drops both candidates: the
        one that is not the partition key names no Query's partition (Queries
        resolve theirs by the schema, or by their only equality), so it costs
        one deleted key that no page depends on.
        """
        schema = self.key_schema(table)
        if schema is not None and schema.key[0] in key:
            return [schema.key[0]]
        return sorted(key)

    def _whole_table(self, decision: WriteDecision, table: TableRef, reason: str | None) -> None:
        tokens = self.layout.tokens(table)
        if decision.invalidation.tables.get(tokens):
            return
        decision.invalidation.tables[tokens] = True
        decision.reasons[table] = reason

    def _lifecycle(
        self, decision: WriteDecision, table: TableRef, written: WriteSet, now_ms: int | None
    ) -> None:
        """A table created, deleted, restored, imported or bulk-loaded: entries and schema go."""
        mark = ""
        if table in written.bulk_started:
            now = int(time.time() * 1000) if now_ms is None else now_ms
            until = now + self.settings.bulk_load_bypass_s * 1000
            mark = f"{BULK_MARK.decode()}{until}:"
        elif table in written.bulk_ended:
            mark = "-"
        forget = table in written.lifecycle
        ttl_ms = self.settings.bulk_load_bypass_s * 1000 if mark not in ("", "-") else 0
        tokens = self.layout.tokens(table)
        decision.invalidation.lifecycle[tokens] = Lifecycle(
            self.layout.schema(table), forget, mark, ttl_ms
        )
        decision.forget[table] = mark


def _legacy_equalities(conditions: Any) -> dict[str, Any] | None:
    """``{name: {"ComparisonOperator": "EQ", ...}}`` of legacy KeyConditions."""
    if not isinstance(conditions, Mapping):
        return None
    equal = {}
    for name, condition in conditions.items():
        if not isinstance(condition, Mapping):
            return None
        values = condition.get("AttributeValueList")
        if condition.get("ComparisonOperator") == "EQ" and isinstance(values, list):
            if len(values) != 1:
                return None
            equal[name] = values[0]
    return equal


def shape_miss_request(plan: ReadPlan, body: dict[str, Any]) -> bool:
    """Reshape the real request of a (partial) miss in place; True if it changed.

    A BatchGetItem asks DynamoDB only for the keys the cache did not answer,
    with the key attributes added to a projection that left them out (so items
    can be matched to keys; they are removed again from the answer). In strict
    mode every cached read misses with ``ConsistentRead=True``.
    """
    batch = plan.batch
    if batch is None:
        if plan.strict and body.get("ConsistentRead") is not True:
            body["ConsistentRead"] = True
            return True
        return False
    answered = {(s.label, s.position) for s in plan.slots if s.state == HIT}
    leased = {s.label for s in plan.slots if s.state == LEASED}
    changed = False
    requested = body["RequestItems"]
    for label in list(requested):
        if label in batch.passthrough:
            continue
        spec = requested[label]
        keys = [k for i, k in enumerate(spec["Keys"]) if (label, i) not in answered]
        if len(keys) != len(spec["Keys"]):
            spec["Keys"], changed = keys, True
        if not keys:
            del requested[label]
            continue
        if plan.strict:
            spec["ConsistentRead"], changed = True, True
        if label in leased:
            added = _add_key_attributes(spec, tuple(batch.request_keys[label][0]))
            if added:
                batch.added_keys[label], changed = added, True
    return changed


def _add_key_attributes(spec: dict[str, Any], names: tuple[str, ...]) -> tuple[str, ...]:
    """Make a projection return the key attributes; the ones it had to add."""
    if "AttributesToGet" in spec:
        missing = tuple(n for n in names if n not in spec["AttributesToGet"])
        spec["AttributesToGet"] = [*spec["AttributesToGet"], *missing]
        return missing
    projection = spec.get("ProjectionExpression")
    if not projection:
        return ()
    aliases = spec.get("ExpressionAttributeNames") or {}
    present = expressions.top_level_names(projection, aliases)
    if present is None:
        return ()  # unreadable projection: leave it; those keys are simply not filled
    missing = tuple(n for n in names if n not in present)
    if missing:
        placeholders = {f"#ddbcache_key{i}": name for i, name in enumerate(missing)}
        spec["ProjectionExpression"] = ", ".join([projection, *placeholders])
        spec["ExpressionAttributeNames"] = {**aliases, **placeholders}
    return missing
