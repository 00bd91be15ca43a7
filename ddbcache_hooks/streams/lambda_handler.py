"""``handler(event, context)``: an AWS Lambda function on a DynamoDB Streams event source.

Configured from the same ``DDBCACHE_*`` variables as environment activation
(``DDBCACHE_REDIS_URL``, ``DDBCACHE_NAMESPACE``, ``DDBCACHE_SETTLE_MS`` …). The
event source mapping should enable ``ReportBatchItemFailures``: records whose
invalidation Redis did not take are returned in ``batchItemFailures`` so that
Lambda retries them; the handler never reports success for an invalidation that
did not happen. Entries are found where registered clients keyed them: behind the
endpoint botocore resolves in this environment (``AWS_ENDPOINT_URL_DYNAMODB``,
``AWS_ENDPOINT_URL``, the config file), as for a client made here. See docs/streams.md.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError

from .. import layout_marker
from ..config import Settings
from ..errors import CacheConnectionError
from ..keys import parse_table_arn
from ..protocol import Protocol
from ..schema import TableSchema
from ..transport import SyncTransport
from . import records

log = logging.getLogger("ddbcache_hooks")


class Invalidator:
    """A Protocol and a Redis connection that outlive one invocation (warm containers)."""

    def __init__(self, settings: Settings, redis: Any) -> None:
        self.settings = settings
        self._target = redis
        self._transport: SyncTransport | None = None
        self._protocol: Protocol | None = None
        self._lock = threading.Lock()
        self._dynamodb: Any = None

    def _ready(self) -> tuple[Protocol, SyncTransport]:
        """Connected on first use, and again after a failed connection attempt."""
        from ..connections import connect

        with self._lock:
            if self._transport is None:
                transport = SyncTransport(connect(self._target, self.settings))
                layout_marker.check_settings(transport.client, transport.cluster, self.settings)
                self._transport = transport
                self._protocol = Protocol(self.settings, cluster=transport.cluster)
            assert self._protocol is not None
            return self._protocol, self._transport

    def apply(self, event_records: Sequence[Mapping[str, Any]]) -> list[str]:
        """Invalidate what the records wrote; the sequence numbers of those that failed."""
        from ..handlers import drive

        written: list[tuple[str, Mapping[str, Any]]] = []
        whole: dict[str, str] = {}
        ids: list[str] = []
        for record in event_records:
            dynamodb = record.get("dynamodb") or {}
            ids.append(str(dynamodb.get("SequenceNumber", "")))
            table = records.table_of(record.get("eventSourceARN", ""))
            key = records.record_keys(record)
            if key is not None:
                key = _raw_binary(key)
            if key is None:
                whole[table] = "a stream record without a usable key"
            else:
                written.append((table, key))
        tables = [table for table, _ in written] + list(whole)
        endpoint_url = records.endpoint_of(self._client(tables[0])) if tables else None
        try:
            protocol, transport = self._ready()
            drive(
                records.apply(protocol, written, whole, endpoint_url=endpoint_url),
                transport,
                self._schema,
            )
        except (RedisError, CacheConnectionError) as exc:
            log.warning(
                "stream invalidation failed, %d records reported for retry: %s", len(ids), exc
            )
            return ids
        protocol.stats.incr("stream_records", len(ids))
        return []

    def _client(self, table_arn: str | None = None) -> Any:
        """The DynamoDB client botocore configures from this environment, made once (its
        Region: the environment's, else the first table's)."""
        with self._lock:
            if self._dynamodb is None:
                import boto3

                session = boto3.Session()
                region = session.region_name or (
                    parse_table_arn(table_arn)[1] if table_arn else None
                )
                self._dynamodb = session.client("dynamodb", region_name=region)
            return self._dynamodb

    def _schema(self, table: str) -> TableSchema | None:
        """Key schemas the write path asks for (none today for records, which carry keys)."""
        from botocore.exceptions import BotoCoreError, ClientError

        from .. import schema

        try:
            return schema.from_description(self._client().describe_table(TableName=table))
        except (ClientError, BotoCoreError, KeyError) as exc:
            log.warning("DescribeTable %s failed: %s", table, exc)
            return None


def _raw_binary(key: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Lambda's events are JSON: a binary key arrives base64-encoded; writes name its bytes."""
    if not any("B" in value for value in key.values()):
        return key
    try:
        return {
            name: {"B": base64.b64decode(value["B"], validate=True)} if "B" in value else value
            for name, value in key.items()
        }
    except (binascii.Error, TypeError, ValueError):
        return None


_invalidator: Invalidator | None = None


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Drop the cache entries of every record's item; report the records that failed.

    Args:
        event: the DynamoDB Streams event Lambda passes (``{"Records": [...]}``).
        context: the Lambda context (unused).

    Returns ``{"batchItemFailures": [{"itemIdentifier": <SequenceNumber>}, ...]}``.
    Raises ValueError for an event that is not a DynamoDB Streams event.
    """
    global _invalidator
    event_records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(event_records, list):
        raise ValueError("not a DynamoDB Streams event: no Records list")
    for record in event_records:
        if not isinstance(record, Mapping) or record.get("eventSource") != "aws:dynamodb":
            raise ValueError(f"not a DynamoDB Streams record: {record!r:.200}")
    if _invalidator is None:
        settings = Settings.resolve({}, environ=os.environ)
        url = os.environ.get("DDBCACHE_REDIS_URL", "")
        if not url:
            raise ValueError("DDBCACHE_REDIS_URL is not set")
        _invalidator = Invalidator(settings, url)
    failed = _invalidator.apply(event_records)
    return {"batchItemFailures": [{"itemIdentifier": seq} for seq in failed]}


def reset() -> None:
    """Forget the cached configuration and connection (the next event reads the environment)."""
    global _invalidator
    _invalidator = None
