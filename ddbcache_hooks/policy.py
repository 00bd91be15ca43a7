"""The policy table: DynamoDB operation name -> what the cache does with it.

This module is the only place that knows operations by name. Handlers read the
row; they never branch on the operation name. Every operation of botocore's
DynamoDB model is either a row of :data:`POLICIES` or a member of
:data:`PASS_THROUGH` (a test enumerates the installed model). An operation in
neither (one a newer botocore added) is handled by :func:`unknown_operation`.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from . import writes


class Action(enum.Enum):
    ITEM_READ = "item read"
    BATCH_READ = "batched item read"
    QUERY_READ = "query read"
    WRITE = "write"
    BYPASS = "bypass"
    #: Learns from the response only (DescribeBulkOperation: has a bulk load ended?).
    OBSERVE = "observe"


class ReadKind(str, enum.Enum):
    """Which TTL applies and which counters a read updates."""

    ITEM = "item"
    QUERY = "query"
    SCAN = "scan"


#: Parameters that never change the data a read returns (the deny-list), each with
#: the check of what DynamoDB accepts: being left out of the request variant, a
#: value DynamoDB would reject must make the call bypass the cache.
NOT_DATA_VALUES: Mapping[str, Callable[[Any], bool]] = MappingProxyType(
    {
        "ReturnConsumedCapacity": lambda v: v in ("INDEXES", "TOTAL", "NONE"),
        "ConsistentRead": lambda v: isinstance(v, bool),
    }
)
NOT_DATA = frozenset(NOT_DATA_VALUES)


def valid_not_data(params: Mapping[str, Any]) -> bool:
    """Whether every deny-listed parameter of ``params`` holds a value DynamoDB accepts."""
    for name, check in NOT_DATA_VALUES.items():
        if name in params and not check(params[name]):
            return False
    return True


WriteExtractor = writes.WriteExtractor


@dataclass(frozen=True)
class OperationPolicy:  # not slots: cached_property needs a __dict__
    """One row of the policy table."""

    action: Action
    read_kind: ReadKind | None = None
    #: Identical calls needed before a page is stored (1 = store on first miss).
    admission: int = 1
    #: Parameters that identify the item or table rather than the variant.
    identity: frozenset[str] = frozenset()
    #: Which items a write touches, from its parameters (and response, if any).
    writes: WriteExtractor | None = None
    #: False when a hit could not report the capacity a request asks for (such
    #: requests bypass the cache).
    capacity_in_hits: bool = True

    @property
    def cacheable(self) -> bool:
        return self.action in (Action.ITEM_READ, Action.BATCH_READ, Action.QUERY_READ)

    @functools.cached_property
    def skip(self) -> frozenset[str]:
        """Parameters left out of the request variant: the deny-list and the identity."""
        return NOT_DATA | self.identity


POLICIES: Mapping[str, OperationPolicy] = MappingProxyType(
    {
        "GetItem": OperationPolicy(
            Action.ITEM_READ, ReadKind.ITEM, identity=frozenset({"TableName", "Key"})
        ),
        "BatchGetItem": OperationPolicy(
            Action.BATCH_READ, ReadKind.ITEM, identity=frozenset({"Keys"})
        ),
        "Query": OperationPolicy(
            Action.QUERY_READ, ReadKind.QUERY, admission=1, identity=frozenset({"TableName"})
        ),
        "Scan": OperationPolicy(
            Action.QUERY_READ, ReadKind.SCAN, admission=2, identity=frozenset({"TableName"})
        ),
        "TransactGetItems": OperationPolicy(Action.BYPASS),
        "PutItem": OperationPolicy(Action.WRITE, writes=writes.single_item),
        "UpdateItem": OperationPolicy(Action.WRITE, writes=writes.single_key),
        "DeleteItem": OperationPolicy(Action.WRITE, writes=writes.single_key),
        "BatchWriteItem": OperationPolicy(Action.WRITE, writes=writes.batch_write),
        "TransactWriteItems": OperationPolicy(Action.WRITE, writes=writes.transact_write),
        "ExecuteStatement": OperationPolicy(Action.WRITE, writes=writes.partiql_statement),
        "BatchExecuteStatement": OperationPolicy(Action.WRITE, writes=writes.partiql_batch),
        "ExecuteTransaction": OperationPolicy(Action.WRITE, writes=writes.partiql_transaction),
        # Cached like a Query: the whole request (vector, TopK, expressions) is the variant.
        # Its ConsumedCapacity counts bytes: a request asking for it bypasses.
        "SearchVectors": OperationPolicy(
            Action.QUERY_READ,
            ReadKind.QUERY,
            admission=1,
            identity=frozenset({"TableName"}),
            capacity_in_hits=False,
        ),
        # Table lifecycle: every entry of the table and its learned key schema go.
        "CreateTable": OperationPolicy(Action.WRITE, writes=writes.lifecycle("TableName")),
        "DeleteTable": OperationPolicy(Action.WRITE, writes=writes.lifecycle("TableName")),
        "UpdateTable": OperationPolicy(Action.WRITE, writes=writes.lifecycle("TableName")),
        "RestoreTableFromBackup": OperationPolicy(
            Action.WRITE, writes=writes.lifecycle("TargetTableName")
        ),
        "RestoreTableToPointInTime": OperationPolicy(
            Action.WRITE, writes=writes.lifecycle("TargetTableName")
        ),
        "ImportTable": OperationPolicy(Action.WRITE, writes=writes.import_table),
        "StartBulkPutItems": OperationPolicy(Action.WRITE, writes=writes.start_bulk_load),
        "DescribeBulkOperation": OperationPolicy(Action.OBSERVE, writes=writes.bulk_load_status),
    }
)

#: Operations that change nothing a cached read returns, or whose effect on a
#: table's items arrives outside any client (and is bounded by the TTL, like any
#: write made outside registered clients): they pass through untouched.
PASS_THROUGH: frozenset[str] = frozenset(
    {
        # control-plane reads
        "DescribeBackup",
        "DescribeContinuousBackups",
        "DescribeContributorInsights",
        "DescribeEndpoints",
        "DescribeExport",
        "DescribeGlobalTable",
        "DescribeGlobalTableSettings",
        "DescribeImport",
        "DescribeKinesisStreamingDestination",
        "DescribeLimits",
        "DescribeTable",
        "DescribeTableReplicaAutoScaling",
        "DescribeTimeToLive",
        "GetResourcePolicy",
        "ListBackups",
        "ListBulkOperations",
        "ListContributorInsights",
        "ListExports",
        "ListGlobalTables",
        "ListImports",
        "ListTables",
        "ListTagsOfResource",
        # backups and exports: they read a table, and create nothing a read returns
        "CreateBackup",
        "DeleteBackup",
        "ExportTableToPointInTime",
        "UpdateContinuousBackups",
        # settings that change no item (TTL deletions and replication arrive from outside)
        "CreateGlobalTable",
        "UpdateGlobalTable",
        "UpdateGlobalTableSettings",
        "UpdateTableReplicaAutoScaling",
        "UpdateTimeToLive",
        "UpdateContributorInsights",
        "EnableKinesisStreamingDestination",
        "DisableKinesisStreamingDestination",
        "UpdateKinesisStreamingDestination",
        "TagResource",
        "UntagResource",
        "PutResourcePolicy",
        "DeleteResourcePolicy",
        # a cancelled bulk load keeps what it wrote: its end is seen by DescribeBulkOperation
        "CancelBulkOperation",
    }
)

#: Operations listed above (rows or pass-through) that older botocore releases, down
#: to the floor the package declares, do not have yet: there they are never called.
LATER_OPERATIONS = frozenset(
    {"SearchVectors", "StartBulkPutItems", "DescribeBulkOperation", "ListBulkOperations"}
    | {"CancelBulkOperation", "GetResourcePolicy", "PutResourcePolicy", "DeleteResourcePolicy"}
    | {"UpdateKinesisStreamingDestination"}
)

#: Name prefixes that DynamoDB gives only to operations reading nothing but metadata.
READ_ONLY_PREFIXES = ("Describe", "List", "Get")

#: What an unknown operation that may write does: drop the table it names.
UNKNOWN_WRITE = OperationPolicy(Action.WRITE, writes=writes.whole_table)


def unknown_operation(operation: str) -> OperationPolicy | None:
    """The policy of an operation this version does not know (a newer botocore's).

    One that may write invalidates the table it names, after it returns; one
    named like a read of metadata passes through.
    """
    if operation.startswith(READ_ONLY_PREFIXES):
        return None
    return UNKNOWN_WRITE


#: Operations whose results the cache can hold.
CACHED_OPERATIONS = frozenset(op for op, policy in POLICIES.items() if policy.cacheable)
