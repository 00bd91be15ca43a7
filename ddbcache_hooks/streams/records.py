"""Stream records as invalidations: the same plan a write through a registered client makes.

A record of a DynamoDB stream names a table (through ``eventSourceARN`` or the
stream being read) and the written item's primary key (``dynamodb.Keys``, present
in every stream view type). The records of one batch become the plan of a
``BatchWriteItem`` deleting each of those keys, computed and delivered by the
protocol's write path (the planner decides, :meth:`Protocol.deliver` delivers):
same keys, same tokens, same settle window, same near-cache messages, one Redis
round trip for the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..effects import Op
from ..keys import (
    Location,
    NotCanonical,
    canonical_key,
    location_of,
    parse_table_arn,
    refs_for_table_arn,
)
from ..plan import Invalidation, WritePlan
from ..protocol import Protocol
from ..writes import WriteSet


def table_of(source_arn: str) -> str:
    """The table ARN a stream (``eventSourceARN``, ``StreamArn``) belongs to.

    The one place where a stream's ARN becomes the table that writes name: the
    table's ARN, which carries its Region and account (see docs/consistency.md,
    "Where a table lives"). Raises ValueError for anything else.
    """
    if not isinstance(source_arn, str):
        raise ValueError(f"not a DynamoDB stream or table ARN: {source_arn!r}")
    partition, region, account, name = parse_table_arn(source_arn)
    return f"arn:{partition}:dynamodb:{region}:{account}:table/{name}"


def endpoint_of(client: Any) -> str | None:
    """The endpoint URL that a botocore client's entries are keyed by, as a registered
    client's (keys.location_of: whatever botocore resolved, from ``endpoint_url=``,
    ``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_ENDPOINT_URL`` or the config file); None for
    AWS's own endpoints."""
    where = location_of(client).where
    return where if "/" in where else None


def location_of_arn(table_arn: str, protocol: Protocol, endpoint_url: str | None) -> Location:
    """Where a registered client of the ARN's Region caches the table.

    AWS's endpoints of the ARN's partition, or ``endpoint_url`` when the cached
    clients use another DynamoDB; the own account is the ``account_id`` setting.
    """
    partition, region, _, _ = parse_table_arn(table_arn)
    where = endpoint_url.rstrip("/").lower() if endpoint_url else partition
    return Location(where, region, protocol.settings.account_id or "")


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


def write_plan(
    protocol: Protocol, location: Location, written: Iterable[tuple[str, Mapping[str, Any]]]
) -> WritePlan:
    """The plan of a BatchWriteItem deleting every (table ARN, key): what those writes drop."""
    requests: dict[str, list[dict[str, Any]]] = {}
    for table, key in written:
        requests.setdefault(table, []).append({"DeleteRequest": {"Key": key}})
    plan = protocol.planner.plan("BatchWriteItem", {"RequestItems": requests}, location)
    assert isinstance(plan, WritePlan)
    return plan


def apply(
    protocol: Protocol,
    written: Sequence[tuple[str, Mapping[str, Any]]],
    whole_tables: Mapping[str, str] | None = None,
    *,
    endpoint_url: str | None = None,
) -> Op[int]:
    """Drop what the written items' writes drop, and every entry of ``whole_tables``.

    Tables are named by their ARNs (:func:`table_of`). ``whole_tables`` maps a
    table to the reason (records without a usable key, a checkpoint the stream
    trimmed). One delivery, one round trip; returns the number of item keys dropped.
    """
    invalidation = Invalidation()
    by_region: dict[Location, list[tuple[str, Mapping[str, Any]]]] = {}
    for table, key in written:
        by_region.setdefault(location_of_arn(table, protocol, endpoint_url), []).append(
            (table, key)
        )
    for location, items in by_region.items():
        plan = write_plan(protocol, location, items)
        invalidation.merge((yield from protocol.invalidation(plan, None)))
    whole = WriteSet()
    for table, reason in (whole_tables or {}).items():
        for ref in refs_for_table_arn(table, protocol.settings, endpoint_url=endpoint_url):
            whole.tables[ref] = reason
    if whole:
        invalidation.merge(protocol.decided(None, protocol.planner.decide(whole)))
    if invalidation:
        yield from protocol.deliver(invalidation)
    return len(invalidation.items)
