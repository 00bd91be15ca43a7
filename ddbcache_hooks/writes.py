"""Which items a write touched: one small extractor per write operation.

Extractors are pure: request parameters (and the response, when the call
returned one) in, a :class:`WriteSet` out. They are referenced from the
policy table. ``response`` is None when the outcome is unknown (transport
error, time-out), in which case every item the request names counts as
written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import partiql
from .keys import NotCanonical, canonical_key, table_name

WriteExtractor = Callable[[Mapping[str, Any], "Mapping[str, Any] | None"], "WriteSet"]


@dataclass(frozen=True)
class ItemRef:
    """An item a write touched: its table and either its key or a superset of it."""

    table: str
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
    tables: dict[str, str | None] = field(default_factory=dict)
    #: Tables created, deleted, restored, imported into or bulk-loaded: every entry
    #: and the learned key schema go, in every process.
    lifecycle: set[str] = field(default_factory=set)
    #: Tables a bulk load started writing to (reads bypass the cache until it ends).
    bulk_started: set[str] = field(default_factory=set)
    #: Tables whose bulk load reached a terminal state (the bypass ends, entries go).
    bulk_ended: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(
            self.items or self.tables or self.lifecycle or self.bulk_started or self.bulk_ended
        )


def single_item(params: Mapping[str, Any], response: Mapping[str, Any] | None) -> WriteSet:
    """PutItem: the item named by ``Item``."""
    return WriteSet([ItemRef(table_name(params["TableName"]), params["Item"], is_key=False)])


def single_key(params: Mapping[str, Any], response: Mapping[str, Any] | None) -> WriteSet:
    """UpdateItem, DeleteItem: the item named by ``Key``."""
    return WriteSet([ItemRef(table_name(params["TableName"]), params["Key"], is_key=True)])


def batch_write(params: Mapping[str, Any], response: Mapping[str, Any] | None) -> WriteSet:
    """BatchWriteItem: every Put/Delete request except those DynamoDB returned unprocessed."""
    unprocessed = (response or {}).get("UnprocessedItems") or {}
    refs = []
    for table, requests in params["RequestItems"].items():
        skipped = {_request_identity(r) for r in unprocessed.get(table, ())}
        name = table_name(table)
        for request in requests:
            ref = _batch_request_ref(name, request)
            if ref is not None and (not skipped or _request_identity(request) not in skipped):
                refs.append(ref)
    return WriteSet(refs)


def transact_write(params: Mapping[str, Any], response: Mapping[str, Any] | None) -> WriteSet:
    """TransactWriteItems: every Put, Update and Delete (a ConditionCheck writes nothing).

    Also used when the transaction was cancelled: the outcome seen by other
    readers is settled by then, and an extra invalidation is only a miss.
    """
    refs = []
    for entry in params["TransactItems"]:
        if "Put" in entry:
            refs.append(ItemRef(table_name(entry["Put"]["TableName"]), entry["Put"]["Item"], False))
        for op in ("Update", "Delete"):
            if op in entry:
                refs.append(ItemRef(table_name(entry[op]["TableName"]), entry[op]["Key"], True))
    return WriteSet(refs)


def partiql_statement(params: Mapping[str, Any], response: Mapping[str, Any] | None) -> WriteSet:
    """ExecuteStatement: INSERT / UPDATE / DELETE (SELECT writes nothing)."""
    return _statements([(params["Statement"], params.get("Parameters"))])


def partiql_batch(params: Mapping[str, Any], response: Mapping[str, Any] | None) -> WriteSet:
    """BatchExecuteStatement: every write statement of the batch."""
    return _statements((s["Statement"], s.get("Parameters")) for s in params["Statements"])


def partiql_transaction(params: Mapping[str, Any], response: Mapping[str, Any] | None) -> WriteSet:
    """ExecuteTransaction: every write statement of the transaction."""
    return _statements((s["Statement"], s.get("Parameters")) for s in params["TransactStatements"])


def lifecycle(param: str) -> WriteExtractor:
    """CreateTable, DeleteTable, UpdateTable, restores: the table named by ``param``."""

    def extract(params: Mapping[str, Any], response: Mapping[str, Any] | None) -> WriteSet:
        return WriteSet(lifecycle={table_name(params[param])})

    extract.__doc__ = f"The table named by {param}: every entry and its key schema go."
    return extract


def import_table(params: Mapping[str, Any], response: Mapping[str, Any] | None) -> WriteSet:
    """ImportTable: the table it creates."""
    return WriteSet(lifecycle={table_name(params["TableCreationParameters"]["TableName"])})


def start_bulk_load(params: Mapping[str, Any], response: Mapping[str, Any] | None) -> WriteSet:
    """StartBulkPutItems: the table goes now, and reads bypass it until the load ends.

    A load DynamoDB refused (an error response) writes nothing: no bypass.
    """
    table = table_name(params["TableName"])
    if response is not None and "Error" in response:
        return WriteSet(lifecycle={table})
    return WriteSet(lifecycle={table}, bulk_started={table})


def bulk_load_status(params: Mapping[str, Any], response: Mapping[str, Any] | None) -> WriteSet:
    """DescribeBulkOperation: the tables of a load that reached a terminal state."""
    description = (response or {}).get("BulkOperationDescription") or {}
    if description.get("BulkOperationStatus") not in BULK_TERMINAL:
        return WriteSet()
    details = description.get("TableDetails") or ()
    return WriteSet(bulk_ended={table_name(d["TableName"]) for d in details if "TableName" in d})


def whole_table(params: Mapping[str, Any], response: Mapping[str, Any] | None) -> WriteSet:
    """An operation this version does not know: the tables it names, as a whole."""
    return WriteSet(tables=dict.fromkeys(named_tables(params)))


def named_tables(params: Mapping[str, Any]) -> list[str]:
    """Tables a request names at its top level (or as ``RequestItems`` keys)."""
    values = [params.get(param) for param in TABLE_PARAMS]
    if ":table/" not in str(params.get("ResourceArn", ":table/")):
        values.remove(params["ResourceArn"])
    requested = params.get("RequestItems")
    if isinstance(requested, Mapping):
        values.extend(requested)
    names = []
    for value in values:
        if isinstance(value, str):
            try:
                names.append(table_name(value))
            except NotCanonical:
                continue
    return list(dict.fromkeys(names))


def _statements(statements: Iterable[tuple[str, Sequence[Any] | None]]) -> WriteSet:
    result = WriteSet()
    for text, parameters in statements:
        parsed = partiql.parse(text, parameters)
        if parsed.kind == "SELECT":
            continue
        if parsed.table is None:
            # Not even the table is known: nothing can be targeted. Callers log it.
            result.tables["*"] = parsed.reason or f"cannot parse PartiQL statement {text!r}"
            continue
        table = table_name(parsed.table)
        if parsed.pinned is None:
            result.tables[table] = parsed.reason or f"statement does not pin one item: {text!r}"
        else:
            result.items.append(ItemRef(table, parsed.pinned, is_key=False))
    return result


def _batch_request_ref(table: str, request: Mapping[str, Any]) -> ItemRef | None:
    if "PutRequest" in request:
        return ItemRef(table, request["PutRequest"]["Item"], is_key=False)
    if "DeleteRequest" in request:
        return ItemRef(table, request["DeleteRequest"]["Key"], is_key=True)
    return None


def _request_identity(request: Mapping[str, Any]) -> Any:
    """A hashable identity of one batch write request, numbers compared by value."""
    try:
        for kind, part in (("PutRequest", "Item"), ("DeleteRequest", "Key")):
            if kind in request:
                return (kind, canonical_key(request[kind][part]))
    except NotCanonical:
        pass
    return None
