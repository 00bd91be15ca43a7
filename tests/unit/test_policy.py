"""The policy table and the handler table built from it."""

from __future__ import annotations

import botocore.session
import pytest

from ddbcache_hooks.plugin import HANDLERS, handler_rows
from ddbcache_hooks.policy import CACHED_OPERATIONS, POLICIES, Action, ReadKind

MODEL = botocore.session.get_session().get_service_model("dynamodb")


@pytest.mark.parametrize("operation", sorted(POLICIES))
def test_every_operation_exists_in_botocore(operation: str) -> None:
    assert operation in MODEL.operation_names


@pytest.mark.parametrize("operation", sorted(POLICIES))
def test_rows_are_consistent(operation: str) -> None:
    policy = POLICIES[operation]
    if policy.cacheable:
        assert policy.read_kind is not None and policy.writes is None
    elif policy.action is Action.WRITE:
        assert policy.writes is not None and policy.read_kind is None
    else:
        assert policy.action is Action.BYPASS


@pytest.mark.parametrize("operation", sorted(POLICIES))
def test_identity_parameters_exist_in_the_input_shape(operation: str) -> None:
    shape = MODEL.operation_model(operation).input_shape
    names = set(shape.members)
    if operation == "BatchGetItem":  # per-table parameters
        names = set(shape.members["RequestItems"].value.members)
    assert POLICIES[operation].identity <= names


def test_reads_and_writes() -> None:
    assert {"GetItem", "BatchGetItem", "Query", "Scan"} == CACHED_OPERATIONS
    assert POLICIES["Scan"].read_kind is ReadKind.SCAN and POLICIES["Scan"].admission == 2
    assert POLICIES["Query"].admission == 1
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
    }


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
    assert not any("DescribeTable" in event or "TransactGetItems" in event for event, _, _ in rows)
    assert len(HANDLERS) == 6
