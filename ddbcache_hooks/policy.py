"""The policy table: DynamoDB operation name -> what the cache does with it.

This literal table is the only place that knows operations by name. Handlers
read the row; they never branch on the operation name. An operation that is
not listed passes through untouched.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import writes

if TYPE_CHECKING:
    from .keys import Location


class Action(enum.Enum):
    ITEM_READ = "item read"
    BATCH_READ = "batched item read"
    QUERY_READ = "query read"
    WRITE = "write"
    BYPASS = "bypass"


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


WriteExtractor = Callable[
    [Mapping[str, Any], "Mapping[str, Any] | None", "Location"], writes.WriteSet
]


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
    }
)

#: Operations whose results the cache can hold.
CACHED_OPERATIONS = frozenset(op for op, policy in POLICIES.items() if policy.cacheable)
