"""The policy table and the handler table built from it."""

from __future__ import annotations

import botocore
import botocore.session
import pytest

from ddbcache_hooks.keys import Location, TableRef
from ddbcache_hooks.plugin import HANDLERS, handler_rows
from ddbcache_hooks.policy import (
    CACHED_OPERATIONS,
    LATER_OPERATIONS,
    PASS_THROUGH,
    POLICIES,
    UNKNOWN_WRITE,
    Action,
    ReadKind,
    unknown_operation,
)

MODEL = botocore.session.get_session().get_service_model("dynamodb")


#: The newest botocore this table was reviewed against: from it on, every
#: operation the table names must exist in the model.
REVIEWED = (1, 44, 8)
BOTOCORE = tuple(int(part) for part in botocore.__version__.split(".")[:3])
LISTED = sorted(set(POLICIES) | PASS_THROUGH)
IN_MODEL = sorted(set(POLICIES) & set(MODEL.operation_names))


def test_every_operation_of_the_installed_model_is_classified() -> None:
    """Each operation is a row of the policy table or a documented pass-through, never both."""
    assert not set(POLICIES) & PASS_THROUGH
    unclassified = sorted(set(MODEL.operation_names) - set(POLICIES) - PASS_THROUGH)
    assert unclassified == [], (
        f"botocore {botocore.__version__} has DynamoDB operations the policy table does not "
        f"classify: {unclassified}; add a row to POLICIES or a member to PASS_THROUGH"
    )
    assert len(MODEL.operation_names) >= 53  # botocore 1.34's model: the enumeration is real


@pytest.mark.parametrize("operation", LISTED)
def test_every_listed_operation_exists_in_botocore(operation: str) -> None:
    if operation not in MODEL.operation_names:
        assert operation in LATER_OPERATIONS and BOTOCORE < REVIEWED, operation


def test_later_operations_are_the_ones_older_models_lack() -> None:
    assert set(LISTED) >= LATER_OPERATIONS
    if BOTOCORE >= REVIEWED:
        assert set(MODEL.operation_names) >= LATER_OPERATIONS


@pytest.mark.parametrize("operation", sorted(POLICIES))
def test_rows_are_consistent(operation: str) -> None:
    policy = POLICIES[operation]
    if policy.cacheable:
        assert policy.read_kind is not None and policy.writes is None
    elif policy.action in (Action.WRITE, Action.OBSERVE):
        assert policy.writes is not None and policy.read_kind is None
    else:
        assert policy.action is Action.BYPASS


@pytest.mark.parametrize("operation", IN_MODEL)
def test_identity_parameters_exist_in_the_input_shape(operation: str) -> None:
    shape = MODEL.operation_model(operation).input_shape
    names = set(shape.members)
    if operation == "BatchGetItem":  # per-table parameters
        names = set(shape.members["RequestItems"].value.members)
    assert POLICIES[operation].identity <= names


def test_reads_and_writes() -> None:
    assert {"GetItem", "BatchGetItem", "Query", "Scan", "SearchVectors"} == CACHED_OPERATIONS
    assert POLICIES["Scan"].read_kind is ReadKind.SCAN and POLICIES["Scan"].admission == 2
    assert POLICIES["Query"].admission == 1
    assert POLICIES["SearchVectors"].read_kind is ReadKind.QUERY
    assert POLICIES["TransactGetItems"].action is Action.BYPASS
    writes = {op for op, p in POLICIES.items() if p.action is Action.WRITE}
    assert writes == {
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "BatchWriteItem",
        "TransactWriteItems",
        "ExecuteStatement",
        "BatchExecuteStatement",
        "ExecuteTransaction",
        "CreateTable",
        "DeleteTable",
        "UpdateTable",
        "RestoreTableFromBackup",
        "RestoreTableToPointInTime",
        "ImportTable",
        "StartBulkPutItems",
    }
    assert POLICIES["DescribeBulkOperation"].action is Action.OBSERVE


#: A client in us-east-1 whose own account is 111111111111.
HERE = Location("aws", "us-east-1", "111111111111")
T = TableRef("aws", "us-east-1", "", "t")
OWN = "arn:aws:dynamodb:us-east-1:111111111111:table/t"


@pytest.mark.parametrize(
    ("operation", "params", "tables"),
    [
        ("FrobnicateTable", {"TableName": "t"}, {T: None}),
        ("FrobnicateTable", {"TableArn": OWN}, {T: None}),
        ("TagFrobs", {"ResourceArn": OWN + "/stream/x"}, {T: None}),
        ("TagFrobs", {"ResourceArn": "arn:aws:s3:::bucket"}, {}),
    ],
)
def test_an_unknown_operation_that_may_write_drops_the_table_it_names(
    operation: str, params: dict[str, str], tables: dict[TableRef, None]
) -> None:
    policy = unknown_operation(operation)
    assert policy is UNKNOWN_WRITE and policy.writes is not None
    assert policy.writes(params, None, HERE).tables == tables


@pytest.mark.parametrize("operation", ["DescribeFrobs", "ListFrobs", "GetFrob"])
def test_an_unknown_operation_named_like_a_metadata_read_passes_through(operation: str) -> None:
    assert unknown_operation(operation) is None


def test_every_write_operation_in_the_model_is_covered() -> None:
    """A new DynamoDB data-plane write must get a row (else it would not invalidate)."""
    item_writes = {
        op
        for op in MODEL.operation_names
        if op.endswith(("Item", "Items", "Statement", "Transaction"))
        and not op.startswith(("Get", "BatchGet", "TransactGet"))
    }
    assert item_writes <= {op for op, p in POLICIES.items() if p.action is Action.WRITE}


def test_handler_rows_follow_the_policy_table() -> None:
    rows = handler_rows()
    assert ("before-parameter-build.dynamodb", "plan_call", "last") in rows
    for op in CACHED_OPERATIONS:
        assert (f"before-call.dynamodb.{op}", "serve_cached_read", "middle") in rows
        assert (f"after-call.dynamodb.{op}", "store_read_result", "middle") in rows
    assert ("after-call-error.dynamodb.PutItem", "invalidate_written_items", "middle") in rows
    assert ("after-call.dynamodb", "drop_missing_table", "middle") in rows
    assert ("after-call-error.dynamodb", "invalidate_unknown_write", "middle") in rows
    assert ("after-call.dynamodb.DeleteTable", "invalidate_written_items", "middle") in rows
    assert (
        "after-call.dynamodb.DescribeBulkOperation",
        "invalidate_written_items",
        "middle",
    ) in rows
    assert not any("DescribeTable" in event or "TransactGetItems" in event for event, _, _ in rows)
    # write-through's intents (the handler returns at once unless the plan may fill)
    assert ("before-call.dynamodb.PutItem", "register_write_intent", "middle") in rows
    assert (
        "before-call.dynamodb.DescribeBulkOperation",
        "register_write_intent",
        "middle",
    ) not in rows
    assert len(HANDLERS) == 10
