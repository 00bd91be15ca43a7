"""Stream records as invalidations: the same plan a write through a registered client makes.

A record of a DynamoDB stream names a table (through ``eventSourceARN`` or the
stream being read) and the written item's primary key (``dynamodb.Keys``, present
in every stream view type). The records of one batch become the plan of a
``BatchWriteItem`` deleting each of those keys, computed and delivered by the
protocol's write path (:meth:`Protocol.invalidation` and :meth:`Protocol.deliver`):
same keys, same tokens, same settle window, same near-cache messages, one Redis
round trip for the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..effects import Op
from ..keys import NotCanonical, canonical_key, table_name
from ..plan import WritePlan
from ..protocol import Protocol
from ..resilience import Invalidation


def table_of(source_arn: str) -> str:
    """The table a stream (``eventSourceARN``, ``StreamArn``) belongs to.

    The one place where a stream's ARN becomes the table that writes name.
    """
    if not isinstance(source_arn, str) or ":table/" not in source_arn:
        raise ValueError(f"not a DynamoDB stream or table ARN: {source_arn!r}")
    return table_name(source_arn)


def record_keys(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The written item's primary key, or None when the record does not carry a usable one."""
    keys = (record.get("dynamodb") or {}).get("Keys")
    if not isinstance(keys, Mapping):
        return None
    try:
        canonical_key(keys)
    except NotCanonical:
        return None
    return keys


def write_plan(protocol: Protocol, written: Iterable[tuple[str, Mapping[str, Any]]]) -> WritePlan:
    """The plan of a BatchWriteItem deleting every (table, key): what those writes drop."""
    requests: dict[str, list[dict[str, Any]]] = {}
    for table, key in written:
        requests.setdefault(table, []).append({"DeleteRequest": {"Key": key}})
    plan = protocol.planner.plan("BatchWriteItem", {"RequestItems": requests})
    assert isinstance(plan, WritePlan)
    return plan


def apply(
    protocol: Protocol,
    written: Sequence[tuple[str, Mapping[str, Any]]],
    whole_tables: Mapping[str, str] | None = None,
) -> Op[int]:
    """Drop what the written items' writes drop, and every entry of ``whole_tables``.

    ``whole_tables`` maps a table to the reason (records without a usable key, a
    checkpoint the stream trimmed). One delivery, one round trip; returns the
    number of item keys dropped.
    """
    invalidation = Invalidation()
    if written:
        invalidation = yield from protocol.invalidation(write_plan(protocol, written), None)
    for table, reason in (whole_tables or {}).items():
        protocol._whole_table(invalidation, table, reason)
    if invalidation:
        yield from protocol.deliver(invalidation)
    return len(invalidation.items)
