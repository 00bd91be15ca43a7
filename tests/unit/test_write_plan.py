"""What a write drops, decided without I/O: plain dicts in, Redis keys out.

The planner's write methods, in the order the protocol calls them: ``written``
(what the request touched), ``schemas_needed`` (the only I/O a write may need),
``decide`` (item keys, whole tables, lifecycle marks). Expected Redis keys are
computed with the planner's and the layout's own key functions, never typed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from ddbcache_hooks.config import Settings, TablePolicy
from ddbcache_hooks.keys import KeyLayout, Location, TableRef
from ddbcache_hooks.plan import Planner, WriteDecision, WritePlan
from ddbcache_hooks.protocol import Protocol
from ddbcache_hooks.schema import TableSchema
from ddbcache_hooks.store import Lifecycle
from ddbcache_hooks.streams import records
from ddbcache_hooks.writes import ItemRef, WriteSet

ACCOUNT = "123456789012"
HERE = Location("aws", "us-east-1")
T = TableRef("aws", "us-east-1", "", "t")
U = TableRef("aws", "us-east-1", "", "u")
KEY = {"pk": {"S": "a"}}
ITEM = {"pk": {"S": "a"}, "v": {"N": "1"}}


def planner(
    learned: Mapping[TableRef, TableSchema] | None = None,
    configured: Mapping[str, tuple[str, ...]] | None = None,
    **options: Any,
) -> Planner:
    """A Planner built as Protocol builds one; without a mode, pages live out their TTL
    (so that an item's keys are its hash alone, unless a test says otherwise)."""
    settings = Settings.resolve({"query_invalidation": "ttl", **options})
    known = dict(learned or {})
    return Planner(
        settings,
        KeyLayout(settings.namespace),
        known.get,
        {name: TableSchema(key) for name, key in (configured or {}).items()},
    )


def write(p: Planner, operation: str, params: dict[str, Any], where: Location = HERE) -> WritePlan:
    plan = p.plan(operation, params, where)
    assert isinstance(plan, WritePlan), f"{operation} is not planned as a write: {plan!r}"
    return plan


def decided(
    p: Planner,
    operation: str,
    params: dict[str, Any],
    parsed: Mapping[str, Any] | None = None,
    schemas: Mapping[TableRef, TableSchema | None] | None = None,
) -> WriteDecision:
    written = p.written(write(p, operation, params), {} if parsed is None else parsed)
    return p.decide(written, schemas)


def item(p: Planner, table: TableRef, key: Mapping[str, Any]) -> tuple[str, str]:
    """(token key, item hash key) of one item, with pages on their TTL."""
    return (p.layout.tokens(table), p.item_key(table, key))


# --- PutItem: a whole item, projected onto the key ---------------------------------


def test_a_put_of_a_table_whose_schema_is_unknown_needs_it() -> None:
    p = planner()
    written = p.written(write(p, "PutItem", {"TableName": "t", "Item": ITEM}), {})
    assert written.items == [ItemRef(T, ITEM, is_key=False)]
    assert p.schemas_needed(written) == [T]
    fetched = p.decide(written, {T: TableSchema(("pk",))})
    assert fetched.invalidation.items == [item(p, T, KEY)]
    assert not fetched.invalidation.tables and not fetched.invalidation.generations
    assert not fetched.reasons


def test_a_put_whose_schema_cannot_be_found_drops_its_table() -> None:
    p = planner()
    written = p.written(write(p, "PutItem", {"TableName": "t", "Item": ITEM}), {})
    for schemas in ({T: None}, None):  # DescribeTable failed / nothing fetched
        decision = p.decide(written, schemas)
        assert decision.invalidation.tables == {p.layout.tokens(T): True}
        assert decision.invalidation.items == []
        assert decision.reasons == {T: None}  # reported where DescribeTable failed


def test_a_put_of_a_configured_table_is_projected_to_its_key() -> None:
    p = planner(configured={"t": ("pk", "sk")})
    full = {"pk": {"S": "a"}, "sk": {"N": "2.50"}, "v": {"S": "x"}}
    written = p.written(write(p, "PutItem", {"TableName": "t", "Item": full}), {})
    assert p.schemas_needed(written) == []
    decision = p.decide(written)
    # Numbers by value: the key of a read naming 2.5 is the same.
    assert decision.invalidation.items == [item(p, T, {"pk": {"S": "a"}, "sk": {"N": "2.5"}})]
    assert not decision.invalidation.generations  # the option has no generation


def test_a_put_projected_with_a_learned_schema_records_its_generation() -> None:
    p = planner(learned={T: TableSchema(("pk",), generation=b"g7")})
    written = p.written(write(p, "PutItem", {"TableName": "t", "Item": ITEM}), {})
    assert p.schemas_needed(written) == []
    decision = p.decide(written)
    assert decision.invalidation.items == [item(p, T, KEY)]
    assert decision.invalidation.generations == {p.layout.tokens(T): (p.layout.schema(T), b"g7")}


def test_a_put_missing_a_key_attribute_drops_its_table() -> None:
    p = planner(configured={"t": ("pk", "sk")})
    decision = decided(p, "PutItem", {"TableName": "t", "Item": ITEM})
    assert decision.invalidation.tables == {p.layout.tokens(T): True}
    assert decision.invalidation.items == []
    assert decision.reasons == {T: "a write did not name a whole key"}


# --- keys: UpdateItem, DeleteItem ---------------------------------------------------


@pytest.mark.parametrize("operation", ["UpdateItem", "DeleteItem"])
def test_a_write_of_one_key_drops_that_item(operation: str) -> None:
    p = planner()
    params = {"TableName": "t", "Key": KEY, "UpdateExpression": "SET v = :v"}
    if operation == "DeleteItem":
        del params["UpdateExpression"]
    written = p.written(write(p, operation, params), {})
    assert written.items == [ItemRef(T, KEY, is_key=True)]
    assert p.schemas_needed(written) == []  # a key needs no schema
    decision = p.decide(written)
    assert decision.invalidation.items == [item(p, T, KEY)]
    assert not decision.invalidation.tables and not decision.invalidation.generations


def test_a_write_naming_its_table_by_arn_drops_both_forms_unless_the_account_is_known() -> None:
    p = planner()
    arn = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/t"
    foreign = T._replace(account=ACCOUNT)
    both = decided(p, "DeleteItem", {"TableName": arn, "Key": KEY})
    assert both.invalidation.items == [item(p, T, KEY), item(p, foreign, KEY)]
    own = p.written(
        write(p, "DeleteItem", {"TableName": arn, "Key": KEY}, HERE._replace(own_account=ACCOUNT)),
        {},
    )
    assert p.decide(own).invalidation.items == [item(p, T, KEY)]


# --- BatchWriteItem, TransactWriteItems ------------------------------------------------


def test_a_batch_of_puts_and_deletes_over_two_tables() -> None:
    p = planner(configured={"t": ("pk",)})
    u_item = {"id": {"S": "x"}, "sk": {"N": "1"}, "v": {"S": "y"}}
    u_key = {"id": {"S": "z"}, "sk": {"N": "2"}}
    params = {
        "RequestItems": {
            "t": [
                {"PutRequest": {"Item": ITEM}},
                {"DeleteRequest": {"Key": {"pk": {"S": "b"}}}},
            ],
            "u": [{"PutRequest": {"Item": u_item}}, {"DeleteRequest": {"Key": u_key}}],
        }
    }
    written = p.written(write(p, "BatchWriteItem", params), {})
    assert [(r.table, r.is_key) for r in written.items] == [
        (T, False),
        (T, True),
        (U, False),
        (U, True),
    ]
    assert p.schemas_needed(written) == [U]  # t's key names come from the option
    decision = p.decide(written, {U: TableSchema(("id", "sk"))})
    assert decision.invalidation.items == [
        item(p, T, KEY),
        item(p, T, {"pk": {"S": "b"}}),
        item(p, U, {"id": {"S": "x"}, "sk": {"N": "1"}}),
        item(p, U, u_key),
    ]
    assert not decision.invalidation.tables
    # What DynamoDB left unprocessed was not written: not dropped.
    unprocessed = {"UnprocessedItems": {"t": [{"DeleteRequest": {"Key": {"pk": {"S": "b"}}}}]}}
    partial = p.written(write(p, "BatchWriteItem", params), unprocessed)
    keys = p.decide(partial, {U: TableSchema(("id", "sk"))}).invalidation.items
    assert item(p, T, {"pk": {"S": "b"}}) not in keys and item(p, T, KEY) in keys


def test_a_transaction_drops_its_puts_updates_and_deletes_not_its_condition_checks() -> None:
    p = planner(configured={"t": ("pk",)})
    checked = {"pk": {"S": "checked"}}
    params = {
        "TransactItems": [
            {"ConditionCheck": {"TableName": "t", "Key": checked, "ConditionExpression": "a"}},
            {"Put": {"TableName": "t", "Item": ITEM}},
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "b"}}, "UpdateExpression": "x"}},
            {"Delete": {"TableName": "u", "Key": {"id": {"N": "3"}}}},
        ]
    }
    written = p.written(write(p, "TransactWriteItems", params), {})
    assert p.schemas_needed(written) == []
    decision = p.decide(written)
    assert decision.invalidation.items == [
        item(p, T, KEY),
        item(p, T, {"pk": {"S": "b"}}),
        item(p, U, {"id": {"N": "3"}}),
    ]
    assert item(p, T, checked) not in decision.invalidation.items


# --- PartiQL ---------------------------------------------------------------------------


def test_a_partiql_update_with_a_resolvable_key_drops_the_item() -> None:
    params = {
        "Statement": 'UPDATE "t" SET v = ? WHERE pk = ?',
        "Parameters": [{"N": "2"}, {"S": "a"}],
    }
    unknown = planner()
    written = unknown.written(write(unknown, "ExecuteStatement", params), {})
    assert written.items == [ItemRef(T, KEY, is_key=False)]  # equalities, not a key yet
    assert unknown.schemas_needed(written) == [T]
    known = planner(configured={"t": ("pk",)})
    decision = decided(known, "ExecuteStatement", params)
    assert decision.invalidation.items == [item(known, T, KEY)]
    assert not decision.invalidation.tables


def test_a_partiql_statement_that_pins_no_item_drops_its_table_with_a_reason() -> None:
    p = planner(configured={"t": ("pk",)})
    decision = decided(p, "ExecuteStatement", {"Statement": "DELETE FROM t WHERE pk > 'a'"})
    assert decision.invalidation.tables == {p.layout.tokens(T): True}
    assert decision.invalidation.items == []
    reason = decision.reasons[T]
    assert isinstance(reason, str) and "DELETE FROM t WHERE pk > 'a'" in reason


def test_a_partiql_select_drops_nothing() -> None:
    p = planner()
    decision = decided(p, "ExecuteStatement", {"Statement": "SELECT * FROM t WHERE pk = 'a'"})
    assert not decision.invalidation and not decision.reasons and not decision.unknown


# --- table lifecycle and bulk loads --------------------------------------------------------


@pytest.mark.parametrize("operation", ["DeleteTable", "CreateTable", "UpdateTable"])
def test_a_lifecycle_operation_drops_every_entry_and_the_key_schema(operation: str) -> None:
    p = planner()
    decision = decided(p, operation, {"TableName": "t"})
    assert decision.invalidation.lifecycle == {
        p.layout.tokens(T): Lifecycle(p.layout.schema(T), forget_schema=True, mark="", ttl_ms=0)
    }
    assert decision.forget == {T: ""}
    assert not decision.invalidation.items and not decision.invalidation.tables


def test_a_bulk_load_start_marks_the_tokens_until_its_bypass_ends() -> None:
    p = planner(bulk_load_bypass_s=600)
    written = p.written(write(p, "StartBulkPutItems", {"TableName": "t"}), {})
    decision = p.decide(written, now_ms=1_000)
    mark = "B601000:"  # B<now + bypass, in ms>:
    assert decision.invalidation.lifecycle == {
        p.layout.tokens(T): Lifecycle(p.layout.schema(T), True, mark, 600_000)
    }
    assert decision.forget == {T: mark}


def test_a_bulk_load_dynamodb_refused_sets_no_mark() -> None:
    p = planner()
    refused = {"Error": {"Code": "LimitExceededException"}}
    decision = decided(p, "StartBulkPutItems", {"TableName": "t"}, refused)
    assert decision.invalidation.lifecycle == {
        p.layout.tokens(T): Lifecycle(p.layout.schema(T), True, "", 0)
    }


@pytest.mark.parametrize(("status", "ends"), [("COMPLETED", True), ("IN_PROGRESS", False)])
def test_a_bulk_load_seen_ended_clears_the_mark(status: str, ends: bool) -> None:
    p = planner()
    described = {
        "BulkOperationDescription": {
            "BulkOperationStatus": status,
            "TableDetails": [{"TableName": "t"}],
        }
    }
    decision = decided(p, "DescribeBulkOperation", {"BulkOperationArn": "a"}, described)
    if not ends:
        assert not decision.invalidation and not decision.forget
        return
    # Entries go, the mark is cleared; the key schema stays (the table is the same).
    assert decision.invalidation.lifecycle == {
        p.layout.tokens(T): Lifecycle(p.layout.schema(T), forget_schema=False, mark="-")
    }
    assert decision.forget == {T: "-"}


# --- query_invalidation: which partition hashes a write drops as well ------------------------


def test_ttl_mode_drops_only_the_item() -> None:
    p = planner(configured={"t": ("pk", "sk")})
    key = {"pk": {"S": "a"}, "sk": {"N": "1"}}
    tokens = p.layout.tokens(T)
    assert p.written_keys(T, key) == [(tokens, p.item_key(T, key))]


def test_partition_mode_drops_the_item_the_table_wide_partition_and_its_own() -> None:
    p = planner(configured={"t": ("pk", "sk")}, query_invalidation="partition")
    key = {"pk": {"S": "a"}, "sk": {"N": "1"}}
    tokens = p.layout.tokens(T)
    expected = [
        (tokens, p.item_key(T, key)),
        (tokens, p.partition_key(T, None)),
        (tokens, p.partition_key(T, ("pk", {"S": "a"}))),
    ]
    assert p.written_keys(T, key) == expected
    assert decided(p, "DeleteItem", {"TableName": "t", "Key": key}).invalidation.items == expected
    assert p.partition_names(T, key) == ["pk"]


def test_partition_mode_without_a_schema_drops_both_candidate_partitions() -> None:
    p = planner(query_invalidation="partition")
    key = {"sk": {"N": "1"}, "pk": {"S": "a"}}
    tokens = p.layout.tokens(T)
    assert p.partition_names(T, key) == ["pk", "sk"]
    assert p.written_keys(T, key) == [
        (tokens, p.item_key(T, key)),
        (tokens, p.partition_key(T, None)),
        (tokens, p.partition_key(T, ("pk", {"S": "a"}))),
        (tokens, p.partition_key(T, ("sk", {"N": "1"}))),
    ]


def test_write_mode_drops_the_item_and_the_table_wide_partition() -> None:
    p = planner(configured={"t": ("pk",)}, query_invalidation="write")
    tokens = p.layout.tokens(T)
    assert p.written_keys(T, KEY) == [
        (tokens, p.item_key(T, KEY)),
        (tokens, p.partition_key(T, None)),
    ]


def test_the_mode_is_the_table_s_own() -> None:
    p = planner(query_invalidation="partition", tables={"u": TablePolicy(query_invalidation="ttl")})
    assert p.written_keys(U, KEY) == [item(p, U, KEY)]
    assert len(p.written_keys(T, KEY)) == 3


def test_a_table_the_cache_skips_still_has_its_item_dropped() -> None:
    p = planner(query_invalidation="partition", exclude_tables=["t"])
    assert p.written_keys(T, KEY) == [item(p, T, KEY)]


# --- requests that cannot be read, and stream records ---------------------------------------


UNREADABLE = "the library cannot read this write request"


@pytest.mark.parametrize("configured", [None, {"t": ("pk",)}])
@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("PutItem", {"TableName": "t", "Item": "junk"}),
        ("PutItem", {"TableName": "t", "Item": ["pk"]}),
        ("BatchWriteItem", {"RequestItems": {"t": [{"PutRequest": {"Item": 5}}]}}),
        ("TransactWriteItems", {"TransactItems": [{"Put": {"TableName": "t", "Item": "x"}}]}),
    ],
)
def test_an_item_that_is_not_a_map_drops_its_table_whatever_the_schema(
    configured: dict[str, tuple[str, ...]] | None, operation: str, params: dict[str, Any]
) -> None:
    """No schema is fetched for it, and deciding never raises."""
    p = planner(configured=configured)
    written = p.written(write(p, operation, params), {})
    assert written == WriteSet(tables={T: UNREADABLE})
    assert p.schemas_needed(written) == []
    decision = p.decide(written)
    assert decision.invalidation.tables == {p.layout.tokens(T): True}
    assert decision.reasons == {T: UNREADABLE}


def test_a_request_that_cannot_be_read_drops_every_table_it_names() -> None:
    p = planner()
    batch = {"RequestItems": {"t": [{}], "u": None}}
    decision = decided(p, "BatchWriteItem", batch)
    assert decision.invalidation.tables == {p.layout.tokens(T): True, p.layout.tokens(U): True}
    assert decision.invalidation.items == []
    assert decision.reasons == {T: UNREADABLE, U: UNREADABLE}


def test_a_request_naming_no_table_is_reported_not_guessed() -> None:
    p = planner()
    decision = decided(p, "PutItem", {"Item": ITEM})
    assert not decision.invalidation
    assert decision.unknown == [UNREADABLE]


@pytest.mark.parametrize("account_id", [None, ACCOUNT])
def test_a_stream_record_drops_what_the_equivalent_delete_item_drops(
    account_id: str | None,
) -> None:
    protocol = Protocol(Settings.resolve({"account_id": account_id}))
    stream = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/t/stream/2026-11-27T08:00:00.000"
    record = {
        "eventName": "MODIFY",
        "eventSourceARN": stream,
        "dynamodb": {"Keys": KEY, "NewImage": ITEM},
    }
    table = records.table_of(stream)
    key = records.record_keys(record)
    assert key is not None
    location = records.location_of_arn(table, protocol, None)
    planner_ = protocol.planner
    from_stream = records.write_plan(protocol, location, [(table, key)])
    assert planner_.schemas_needed(planner_.written(from_stream, None)) == []
    streamed = planner_.decide(planner_.written(from_stream, None))
    delete = write(planner_, "DeleteItem", {"TableName": table, "Key": KEY}, location)
    deleted = planner_.decide(planner_.written(delete, {}))
    assert streamed.invalidation == deleted.invalidation
    forms = [T] if account_id else [T, T._replace(account=ACCOUNT)]
    assert streamed.invalidation.items == [
        pair for form in forms for pair in planner_.written_keys(form, KEY)
    ]
    assert streamed.invalidation.items[0] == (
        planner_.layout.tokens(T),
        planner_.item_key(T, KEY),
    )
