"""Table lifecycle, bulk loads and unknown operations: the pure decisions."""

from __future__ import annotations

from typing import Any

import pytest

from ddbcache_hooks import writes
from ddbcache_hooks.config import Settings
from ddbcache_hooks.keys import KeyLayout, Location, TableRef
from ddbcache_hooks.plan import Planner, WritePlan
from ddbcache_hooks.policy import POLICIES, UNKNOWN_WRITE
from ddbcache_hooks.protocol import bulk_loading

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/t"
PLANNER = Planner(Settings(), KeyLayout("CC"))
#: A client whose own account is known: the ARN above names its table ``t``.
HERE = Location("aws", "us-east-1", "123456789012")
T = TableRef("aws", "us-east-1", "", "t")


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("CreateTable", {"TableName": "t"}),
        ("DeleteTable", {"TableName": ARN}),
        ("UpdateTable", {"TableName": "t"}),
        ("RestoreTableFromBackup", {"TargetTableName": "t", "BackupArn": "b"}),
        ("RestoreTableToPointInTime", {"TargetTableName": "t", "SourceTableName": "s"}),
        ("ImportTable", {"TableCreationParameters": {"TableName": "t"}}),
    ],
)
def test_lifecycle_operations_name_their_target_table(operation: str, params: Any) -> None:
    extract = POLICIES[operation].writes
    assert extract is not None
    assert extract(params, None, HERE) == writes.WriteSet(lifecycle={T})


def test_an_arn_of_an_unknown_own_account_changes_both_forms() -> None:
    extract = POLICIES["DeleteTable"].writes
    assert extract is not None
    foreign = TableRef("aws", "us-east-1", "123456789012", "t")
    written = extract({"TableName": ARN}, None, Location("aws", "us-east-1"))
    assert written == writes.WriteSet(lifecycle={T, foreign})
    assert writes.named_tables({"TableName": ARN}, Location("aws", "us-east-1")) == [T, foreign]


def test_a_bulk_load_bypasses_unless_dynamodb_refused_it() -> None:
    params = {"TableName": ARN}
    assert writes.start_bulk_load(params, None, HERE).bulk_started == {T}
    started = writes.start_bulk_load(params, {"BulkOperationDescription": {}}, HERE)
    assert started.bulk_started == {T}
    refused = writes.start_bulk_load(params, {"Error": {"Code": "LimitExceededException"}}, HERE)
    assert refused == writes.WriteSet(lifecycle={T})


@pytest.mark.parametrize(
    ("status", "ended"),
    [("IN_PROGRESS", set()), ("CANCELLING", set()), ("COMPLETED", {T}), ("FAILED", {T})],
)
def test_describe_bulk_operation_ends_the_bypass_in_a_terminal_state(
    status: str, ended: set[TableRef]
) -> None:
    response = {
        "BulkOperationDescription": {
            "BulkOperationStatus": status,
            "TableDetails": [{"TableName": ARN, "TableId": "x"}],
        }
    }
    assert writes.bulk_load_status({"BulkOperationArn": "a"}, response, HERE).bulk_ended == ended
    assert not writes.bulk_load_status({"BulkOperationArn": "a"}, None, HERE)


def test_bulk_marks_on_tokens() -> None:
    assert bulk_loading(b"B2000:abc", now_ms=1000)
    assert not bulk_loading(b"B2000:abc", now_ms=2000)
    assert not bulk_loading(b"0a1b2c", now_ms=0)
    assert not bulk_loading(b"", now_ms=0)


def test_unknown_operations_are_planned_as_writes_pass_through_ones_are_not() -> None:
    plan = PLANNER.plan("FrobnicateTable", {"TableName": "t"}, HERE)
    assert isinstance(plan, WritePlan) and plan.policy is UNKNOWN_WRITE
    assert PLANNER.plan("DescribeTable", {"TableName": "t"}, HERE) is None
    assert PLANNER.plan("DescribeFrobs", {"TableName": "t"}, HERE) is None
    assert PLANNER.plan("TagResource", {"ResourceArn": ARN, "Tags": []}, HERE) is None


def test_search_vectors_asking_for_capacity_bypasses() -> None:
    params = {"TableName": "t", "IndexName": "v", "SearchVector": [{"N": "1"}], "TopK": 1}
    assert PLANNER.plan("SearchVectors", params, HERE) is not None
    assert (
        PLANNER.plan("SearchVectors", {**params, "ReturnConsumedCapacity": "TOTAL"}, HERE) is None
    )
