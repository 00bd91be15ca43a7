"""Which items a write touched: one small extractor per write operation.

Extractors are pure: request parameters (and the response, when the call
returned one), and the calling client's :class:`~ddbcache_hooks.keys.Location`
in, a :class:`WriteSet` out. They are referenced from the policy table.
``response`` is None when the outcome is unknown (transport error, time-out),
in which case every item the request names counts as written. A table named by
an ARN that may be the client's own table yields one ItemRef per form (see
``Location.refs``). An extractor may raise on a request it cannot read; the
protocol then falls back to :func:`tables_named`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import partiql
from .keys import Location, NotCanonical, TableRef, canonical_key

WriteExtractor = Callable[[Mapping[str, Any], "Mapping[str, Any] | None", Location], "WriteSet"]


@dataclass(frozen=True)
class ItemRef:
    """An item a write touched: its table and either its key or a superset of it."""

    table: TableRef
    attrs: Mapping[str, Any]
    #: True when ``attrs`` is exactly the primary key; False when it is a whole
    #: item (or PartiQL equalities) that must be projected onto the key schema.
    is_key: bool


#: Bulk load states after which nothing more is written.
BULK_TERMINAL = frozenset({"COMPLETED", "COMPLETED_WITH_ERRORS", "CANCELLED", "FAILED"})
#: Parameters that name the table an operation acts on (``ResourceArn`` only a table's).
TABLE_PARAMS = ("TableName", "TableArn", "ResourceArn", "SourceTableName", "SourceTableArn")


@dataclass
class WriteSet:
    items: list[ItemRef] = field(default_factory=list)
    #: Tables whose every entry must go, with the reason for the log (None: already reported).
    tables: dict[TableRef, str | None] = field(default_factory=dict)
    #: Writes whose table could not be told at all (for the log).
    unknown: list[str] = field(default_factory=list)
    #: Tables created, deleted, restored, imported into or bulk-loaded: every entry
    #: and the learned key schema go, in every process.
    lifecycle: set[TableRef] = field(default_factory=set)
    #: Tables a bulk load started writing to (reads bypass the cache until it ends).
    bulk_started: set[TableRef] = field(default_factory=set)
    #: Tables whose bulk load reached a terminal state (the bypass ends, entries go).
    bulk_ended: set[TableRef] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(
            self.items or self.tables or self.lifecycle or self.bulk_started or self.bulk_ended
        )


def _items(
    location: Location, name: str, attrs: Mapping[str, Any], is_key: bool
) -> Iterator[ItemRef]:
    if not isinstance(attrs, Mapping):  # unreadable: the caller falls back to whole tables
        raise TypeError(f"an item or key must be a map, not {type(attrs).__name__}")
    for table in location.refs(name):
        yield ItemRef(table, attrs, is_key)


def single_item(
    params: Mapping[str, Any], response: Mapping[str, Any] | None, location: Location
) -> WriteSet:
    """PutItem: the item named by ``Item``."""
    return WriteSet(list(_items(location, params["TableName"], params["Item"], False)))


def single_key(
    params: Mapping[str, Any], response: Mapping[str, Any] | None, location: Location
) -> WriteSet:
    """UpdateItem, DeleteItem: the item named by ``Key``."""
    return WriteSet(list(_items(location, params["TableName"], params["Key"], True)))


def batch_write(
    params: Mapping[str, Any], response: Mapping[str, Any] | None, location: Location
) -> WriteSet:
    """BatchWriteItem: every Put/Delete request except those DynamoDB returned unprocessed."""
    unprocessed = (response or {}).get("UnprocessedItems") or {}
    refs: list[ItemRef] = []
    for table, requests in params["RequestItems"].items():
        skipped = {_request_identity(r) for r in unprocessed.get(table, ())}
        for request in requests:
            if skipped and _request_identity(request) in skipped:
                continue
            for kind, part, is_key in _BATCH_REQUESTS:
                if kind in request:
                    refs += _items(location, table, request[kind][part], is_key)
    return WriteSet(refs)


_BATCH_REQUESTS = (("PutRequest", "Item", False), ("DeleteRequest", "Key", True))


def transact_write(
    params: Mapping[str, Any], response: Mapping[str, Any] | None, location: Location
) -> WriteSet:
    """TransactWriteItems: every Put, Update and Delete (a ConditionCheck writes nothing).

    Also used when the transaction was cancelled: the outcome seen by other
    readers is settled by then, and an extra invalidation is only a miss.
    """
    refs: list[ItemRef] = []
    for entry in params["TransactItems"]:
        for op, part, is_key in _TRANSACT_ITEMS:
            if op in entry:
                refs += _items(location, entry[op]["TableName"], entry[op][part], is_key)
    return WriteSet(refs)


_TRANSACT_ITEMS = (("Put", "Item", False), ("Update", "Key", True), ("Delete", "Key", True))


def partiql_statement(
    params: Mapping[str, Any], response: Mapping[str, Any] | None, location: Location
) -> WriteSet:
    """ExecuteStatement: INSERT / UPDATE / DELETE (SELECT writes nothing)."""
    return _statements([(params["Statement"], params.get("Parameters"))], location)


def partiql_batch(
    params: Mapping[str, Any], response: Mapping[str, Any] | None, location: Location
) -> WriteSet:
    """BatchExecuteStatement: every write statement of the batch."""
    return _statements(
        ((s["Statement"], s.get("Parameters")) for s in params["Statements"]), location
    )


def partiql_transaction(
    params: Mapping[str, Any], response: Mapping[str, Any] | None, location: Location
) -> WriteSet:
    """ExecuteTransaction: every write statement of the transaction."""
    return _statements(
        ((s["Statement"], s.get("Parameters")) for s in params["TransactStatements"]), location
    )


def lifecycle(param: str) -> WriteExtractor:
    """CreateTable, DeleteTable, UpdateTable, restores: the table named by ``param``."""

    def extract(
        params: Mapping[str, Any], response: Mapping[str, Any] | None, location: Location
    ) -> WriteSet:
        return WriteSet(lifecycle=set(location.refs(params[param])))

    extract.__doc__ = f"The table named by {param}: every entry and its key schema go."
    return extract


def import_table(
    params: Mapping[str, Any], response: Mapping[str, Any] | None, location: Location
) -> WriteSet:
    """ImportTable: the table it creates."""
    return WriteSet(lifecycle=set(location.refs(params["TableCreationParameters"]["TableName"])))


def start_bulk_load(
    params: Mapping[str, Any], response: Mapping[str, Any] | None, location: Location
) -> WriteSet:
    """StartBulkPutItems: the table goes now, and reads bypass it until the load ends.

    A load DynamoDB refused (an error response) writes nothing: no bypass.
    """
    tables = set(location.refs(params["TableName"]))
    if response is not None and "Error" in response:
        return WriteSet(lifecycle=tables)
    return WriteSet(lifecycle=tables, bulk_started=set(tables))


def bulk_load_status(
    params: Mapping[str, Any], response: Mapping[str, Any] | None, location: Location
) -> WriteSet:
    """DescribeBulkOperation: the tables of a load that reached a terminal state."""
    description = (response or {}).get("BulkOperationDescription") or {}
    if description.get("BulkOperationStatus") not in BULK_TERMINAL:
        return WriteSet()
    details = description.get("TableDetails") or ()
    ended = {t for d in details if "TableName" in d for t in location.refs(d["TableName"])}
    return WriteSet(bulk_ended=ended)


def whole_table(
    params: Mapping[str, Any], response: Mapping[str, Any] | None, location: Location
) -> WriteSet:
    """An operation this version does not know: the tables it names, as a whole."""
    return WriteSet(tables=dict.fromkeys(named_tables(params, location)))


def named_tables(params: Mapping[str, Any], location: Location) -> list[TableRef]:
    """Tables a request names at its top level (or as ``RequestItems`` keys).

    An ARN the client's own account may or may not be yields both forms
    (``Location.refs``). Never raises.
    """
    if not isinstance(params, Mapping):
        return []
    values = [params.get(param) for param in TABLE_PARAMS]
    if ":table/" not in str(params.get("ResourceArn", ":table/")):
        values.remove(params["ResourceArn"])
    requested = params.get("RequestItems")
    if isinstance(requested, Mapping):
        values.extend(requested)
    tables: list[TableRef] = []
    for value in values:
        if isinstance(value, str):
            try:
                tables += location.refs(value)
            except NotCanonical:
                continue
    return list(dict.fromkeys(tables))


def _statements(
    statements: Iterable[tuple[str, Sequence[Any] | None]], location: Location
) -> WriteSet:
    result = WriteSet()
    for text, parameters in statements:
        parsed = partiql.parse(text, parameters)
        if parsed.kind == "SELECT":
            continue
        if parsed.table is None:
            # Not even the table is known: nothing can be targeted. Callers log it.
            result.unknown.append(parsed.reason or f"cannot parse PartiQL statement {text!r}")
            continue
        try:
            tables = location.refs(parsed.table)
        except NotCanonical:
            result.unknown.append(f"PartiQL statement names no valid table: {text!r}")
            continue
        for table in tables:
            if parsed.pinned is None:
                result.tables[table] = parsed.reason or f"statement does not pin one item: {text!r}"
            else:
                result.items.append(ItemRef(table, parsed.pinned, is_key=False))
    return result


def tables_named(params: Mapping[str, Any], location: Location) -> WriteSet:
    """Every table a write request names, wholly: for a request an extractor cannot read.

    Looks wherever the write operations name tables (``TableName``, the keys of
    ``RequestItems``, each transaction entry, PartiQL statements); never raises.
    """
    names: list[Any] = []
    if not isinstance(params, Mapping):
        return WriteSet(unknown=["the request is not a mapping"])
    names.append(params.get("TableName"))
    if isinstance(params.get("RequestItems"), Mapping):
        names += params["RequestItems"]
    for entry in _mappings(params.get("TransactItems")):
        names += (part.get("TableName") for part in entry.values() if isinstance(part, Mapping))
    for key in ("Statement", "Statements", "TransactStatements"):
        texts = [params.get(key)] if key == "Statement" else _mappings(params.get(key))
        for text in texts:
            statement = text.get("Statement") if isinstance(text, Mapping) else text
            if isinstance(statement, str):
                names.append(partiql.parse(statement).table)
    result = WriteSet()
    for name in names:
        if name is None:
            continue
        try:
            tables = location.refs(name)
        except NotCanonical:
            continue
        for table in tables:
            result.tables[table] = "the library cannot read this write request"
    if not result.tables:
        result.unknown.append("the library cannot read this write request")
    return result


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, (list, tuple)):
        return []
    return [v for v in value if isinstance(v, Mapping)]


def _request_identity(request: Mapping[str, Any]) -> Any:
    """A hashable identity of one batch write request, numbers compared by value."""
    try:
        for kind, part in (("PutRequest", "Item"), ("DeleteRequest", "Key")):
            if kind in request:
                return (kind, canonical_key(request[kind][part]))
    except NotCanonical:
        pass
    return None
