"""A long-running consumer of DynamoDB Streams, for deployments without Lambda.

Each round: describe the tables' latest streams (now and then), read every
stream's checkpoints (one Redis round trip), renew and take shard leases (one),
call GetRecords once on every shard this consumer holds, apply all the records
as one invalidation (one), then write the checkpoints (one). A shard is read
only after its parent is finished (or gone from the stream), so a key's writes
are applied in order across a split. Checkpoints, leases and the fact that the
stream was started live in Redis (``state.py``): a restarted consumer resumes
where it stopped, and several consumers share the shards and take over from one
that stops.

When a checkpoint is older than what the stream still holds (more than 24 h
behind: TrimmedDataAccessException, or its shard is gone) the writes in between
are unknown, so the table's every entry is dropped. The same happens when a
consumer starts following a stream for the first time: it reads from the
stream's tip and drops what was cached before.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from redis.exceptions import RedisError

from .. import acl, layout_marker
from ..config import Settings
from ..errors import ConfigurationError
from ..handlers import drive
from ..protocol import Protocol
from ..schema import TableSchema
from ..transport import SyncTransport
from . import records, state

log = logging.getLogger("ddbcache_hooks")

#: GetRecords error codes that mean the position is older than the stream holds.
_TRIMMED = "TrimmedDataAccessException"
_EXPIRED = "ExpiredIteratorException"
_GONE = "ResourceNotFoundException"


@dataclass
class _Shard:
    id: str
    parent: str | None
    closed: bool


@dataclass
class _Stream:
    table: str  # as given (name or ARN), for DescribeTable
    arn: str
    keys: state.StreamKeys
    shards: dict[str, _Shard] = field(default_factory=dict)
    #: Next iterator of every shard this consumer holds and has positioned.
    iterators: dict[str, str] = field(default_factory=dict)
    #: Checkpointed shards the stream no longer lists, unfinished: their rest is unknown.
    gone: list[str] = field(default_factory=list)


@dataclass
class _Round:
    """What one round read, to apply and checkpoint together."""

    written: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    whole: dict[str, str] = field(default_factory=dict)
    positions: dict[str, dict[str, str]] = field(default_factory=dict)  # arn -> shard -> seq
    started: list[_Stream] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)
    count: int = 0


class Consumer:
    """Follows every shard of the given tables' latest streams and applies their writes.

    Args:
        tables: table names (or ARNs) whose streams to follow.
        redis: a redis client or ``redis://`` URL (default: ``DDBCACHE_REDIS_URL``).
        session: the boto3 Session for the DynamoDB and DynamoDB Streams clients.
        owner: this consumer's name in the leases (default: host, pid and a random part).
        lease_ms: how long a shard stays with a consumer that stopped renewing it.
        poll_ms: pause after a round that found no records.
        describe_s: how often the shard lists are described again.
        limit: records per GetRecords call (at most 1000).
        **options: cache options (``namespace``, ``settle_ms`` …), as for ``register``;
            unset ones come from ``DDBCACHE_*`` variables.
    """

    def __init__(
        self,
        tables: Sequence[str],
        redis: Any = None,
        *,
        session: Any = None,
        owner: str | None = None,
        lease_ms: int = 10_000,
        poll_ms: int = 500,
        describe_s: float = 60.0,
        limit: int = 1000,
        streams_client: Any = None,
        dynamodb_client: Any = None,
        **options: Any,
    ) -> None:
        from ..connections import connect
        from ..plugin import resolve_settings

        if isinstance(tables, str) or not tables:
            raise ValueError("tables must be a non-empty list of table names")
        if lease_ms < 100 or poll_ms < 0 or not 1 <= limit <= 1000:
            raise ValueError("lease_ms must be >= 100, poll_ms >= 0 and limit within 1..1000")
        self.settings: Settings = resolve_settings(options)
        """The cache options it applies records with (as a registration's)."""
        target = redis if redis is not None else os.environ.get("DDBCACHE_REDIS_URL") or None
        self.transport = SyncTransport(connect(target, self.settings))
        """Its Redis connections."""
        self._layout_checked = False
        self.protocol = Protocol(self.settings, cluster=self.transport.cluster)
        """The write path a record is applied with; its ``stats`` are the consumer's counters."""
        if streams_client is None or dynamodb_client is None:
            import boto3

            session = session or boto3.Session()
            streams_client = streams_client or session.client("dynamodbstreams")
            dynamodb_client = dynamodb_client or session.client("dynamodb")
        self._streams_api = streams_client
        self._dynamodb = dynamodb_client
        # Entries of clients that use another DynamoDB than AWS's are keyed by its URL.
        self._endpoint_url = records.endpoint_of(dynamodb_client)
        self.tables = list(tables)
        """The tables whose streams it reads."""
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        """This consumer's name in the shard leases."""
        self.lease_ms = lease_ms
        """How long a shard lease lasts unless renewed (ms)."""
        self.poll_s = poll_ms / 1000
        """Pause between rounds that found no records (seconds)."""
        self.describe_s = describe_s
        """How often the streams' shards are listed again (seconds)."""
        self.limit = limit
        """Most records read per GetRecords call."""
        self.state_ttl_ms = 2 * 86_400_000  # a stream keeps records for 24 h
        """How long leases and checkpoints are kept in Redis (ms)."""
        self._streams: dict[str, _Stream] = {}
        self._described = 0.0
        self._stop = threading.Event()

    # --- the loop --------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, *, rounds: int | None = None) -> None:
        """Follow the streams until ``stop`` is set (or :meth:`stop` called, or ``rounds`` ran).

        A table that does not exist or has no enabled stream is named in a warning
        and left out; ValueError when that is every table. ConfigurationError when
        Redis refuses a command the consumer sends (an ACL): it would be refused every round.
        """
        stop = stop or self._stop
        try:
            unfollowed = self.check()
        except (ClientError, BotoCoreError):
            unfollowed = []  # DynamoDB did not answer: the rounds retry
        if unfollowed and len(unfollowed) == len(self.tables):
            raise ValueError(
                f"none of the tables can be followed (no such table, or no enabled stream): "
                f"{', '.join(unfollowed)}"
            )
        done = 0
        try:
            while not stop.is_set() and not self._stop.is_set():
                if rounds is not None and done >= rounds:
                    break
                done += 1
                try:
                    found = self.step()
                except RedisError as exc:
                    self._raise_if_refused(exc)
                    self._round_failed(exc)
                    found = 0
                except (ClientError, BotoCoreError) as exc:
                    self._round_failed(exc)
                    found = 0
                if not found:
                    stop.wait(self.poll_s)
        finally:
            self.release()

    def _raise_if_refused(self, exc: RedisError) -> None:
        """A command Redis refuses (an ACL) will be refused every round: a configuration
        error, said once by raising ConfigurationError with the fix, not retried for ever."""
        found = acl.refusal(exc)
        if found is not None:
            self.protocol.stats.incr("redis_refused")
            namespace = self.settings.namespace
            raise ConfigurationError(
                f"Redis refused {found.what} for keys {acl.key_pattern(namespace)}: "
                f"{acl.fix(found, namespace)}"
            ) from None

    def _round_failed(self, exc: Exception) -> None:
        self.protocol.stats.incr("stream_errors")
        self.protocol.limited.warning(
            "streams", "stream round failed (%s: %s); retrying", type(exc).__name__, exc
        )

    def stop(self) -> None:
        """End :meth:`run` after the current round (from another thread or a signal handler)."""
        self._stop.set()

    def release(self) -> None:
        """Give back every lease this consumer holds, so another one takes over at once."""
        streams = list(self._streams.values())
        try:
            drive(
                state.release(
                    [s.keys for s in streams], self.owner, [list(s.shards) for s in streams]
                ),
                self.transport,
                self._schema,
            )
        except RedisError as exc:
            if acl.refusal(exc) is None:  # a refusal was said already, with its fix
                log.warning("could not release stream leases (they expire): %s", exc)
        for stream in streams:
            stream.iterators.clear()

    def step(self) -> int:
        """One round over every shard; the number of records applied."""
        if not self._layout_checked:  # a process of the namespace: its key layout must agree
            client, cluster = self.transport.client, self.transport.cluster
            layout_marker.check_settings(client, cluster, self.settings)
            self._layout_checked = True
        if not self._streams or time.monotonic() - self._described >= self.describe_s:
            self._describe()
        streams = list(self._streams.values())
        if not streams:
            return 0
        checkpoints = self._run(state.read_checkpoints([s.keys for s in streams]))
        ready = [self._ready(s, c) for s, c in zip(streams, checkpoints, strict=True)]
        held = self._run(
            state.lease_shards(
                [(s.keys, r) for s, r in zip(streams, ready, strict=True)],
                self.owner,
                self.lease_ms,
                self.state_ttl_ms,
            )
        )
        renewed = time.monotonic()
        batch = _Round()
        for stream, shards, done in zip(streams, held, checkpoints, strict=True):
            for shard in set(stream.iterators) - set(shards):
                del stream.iterators[shard]
            self._read(stream, shards, done, batch)
        if time.monotonic() - renewed > self.lease_ms / 2000:
            # Too slow to be sure the leases still hold: read these records again later.
            log.warning("a stream round outlasted half the lease; its records are read again")
            for stream in streams:
                stream.iterators.clear()
            return 0
        self._apply(streams, batch)
        return batch.count

    # --- describing ------------------------------------------------------------------

    def check(self) -> list[str]:
        """Describe the tables now; the ones that have no enabled stream (or do not exist)."""
        self._describe()
        return [table for table in self.tables if table not in self._streams]

    def _describe(self) -> None:
        for table in self.tables:
            try:
                description = self._dynamodb.describe_table(TableName=table)["Table"]
            except ClientError as exc:
                if _code(exc) != _GONE:
                    raise
                description = {}
            arn = description.get("LatestStreamArn")
            enabled = (description.get("StreamSpecification") or {}).get("StreamEnabled")
            if not arn or not enabled:
                self.protocol.limited.warning(
                    f"stream:{table}",
                    "table %s does not exist or has no enabled stream; not followed",
                    table,
                )
                self._streams.pop(table, None)
                continue
            stream = self._streams.get(table)
            if stream is None or stream.arn != arn:
                stream = _Stream(table, arn, state.StreamKeys.of(self.settings.namespace, arn))
                self._streams[table] = stream
            stream.shards = self._list_shards(arn)
        self._described = time.monotonic()

    def _list_shards(self, arn: str) -> dict[str, _Shard]:
        shards: dict[str, _Shard] = {}
        start: dict[str, str] = {}
        while True:
            answer = self._streams_api.describe_stream(StreamArn=arn, **start)
            description = answer["StreamDescription"]
            for shard in description.get("Shards", []):
                closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
                shards[shard["ShardId"]] = _Shard(
                    shard["ShardId"], shard.get("ParentShardId"), closed
                )
            last = description.get("LastEvaluatedShardId")
            if not last:
                return shards
            start = {"ExclusiveStartShardId": last}

    def _ready(self, stream: _Stream, checkpoints: Mapping[str, str]) -> list[str]:
        """Shards to read now: not finished, and their parent finished or gone."""
        first = state.STARTED not in checkpoints
        ready = []
        for shard in stream.shards.values():
            if checkpoints.get(shard.id) == state.DONE:
                continue
            parent = stream.shards.get(shard.parent or "")
            # At the first start a closed shard is skipped (read from the tip), so its
            # children are read at once.
            skipped = (
                first and parent is not None and parent.closed and parent.id not in checkpoints
            )
            if parent is not None and checkpoints.get(parent.id) != state.DONE and not skipped:
                continue
            ready.append(shard.id)
        stream.gone = [
            shard_id
            for shard_id, position in checkpoints.items()
            if shard_id != state.STARTED
            and position != state.DONE
            and shard_id not in stream.shards
        ]
        return ready

    # --- reading ---------------------------------------------------------------------

    def _read(
        self, stream: _Stream, shards: Sequence[str], checkpoints: Mapping[str, str], batch: _Round
    ) -> None:
        first = state.STARTED not in checkpoints
        table = records.table_of(stream.arn)
        if stream.gone:
            self._trimmed(stream, batch)
        if first:
            batch.whole[table] = "a consumer starts following its stream"
            batch.started.append(stream)
        for shard_id in shards:
            shard = stream.shards[shard_id]
            position = checkpoints.get(shard_id)
            if stream.iterators.get(shard_id) is None:
                if position is None and first and shard.closed:
                    batch.positions.setdefault(stream.arn, {})[shard_id] = state.DONE
                    continue
                iterator = self._iterator(stream, shard, position, first, batch)
                if iterator is None:
                    continue
                stream.iterators[shard_id] = iterator
            self._get_records(stream, shard, batch)

    def _iterator(
        self, stream: _Stream, shard: _Shard, position: str | None, first: bool, batch: _Round
    ) -> str | None:
        where: dict[str, str] = {"ShardIteratorType": "TRIM_HORIZON"}
        if position is not None:
            where = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": position}
        elif first:
            where = {"ShardIteratorType": "LATEST"}
        try:
            answer = self._streams_api.get_shard_iterator(
                StreamArn=stream.arn, ShardId=shard.id, **where
            )
        except ClientError as exc:
            if _code(exc) != _TRIMMED:
                raise
            self._trimmed(stream, batch)
            answer = self._streams_api.get_shard_iterator(
                StreamArn=stream.arn, ShardId=shard.id, ShardIteratorType="TRIM_HORIZON"
            )
        iterator: str | None = answer.get("ShardIterator")
        return iterator

    def _trimmed(self, stream: _Stream, batch: _Round) -> None:
        batch.whole[records.table_of(stream.arn)] = (
            "a checkpoint was trimmed from its stream (over 24 h behind)"
        )

    def _get_records(self, stream: _Stream, shard: _Shard, batch: _Round) -> None:
        try:
            answer = self._streams_api.get_records(
                ShardIterator=stream.iterators[shard.id], Limit=self.limit
            )
        except ClientError as exc:
            code = _code(exc)
            stream.iterators.pop(shard.id, None)  # positioned again from the checkpoint
            if code == _TRIMMED:
                self._trimmed(stream, batch)
                batch.positions.setdefault(stream.arn, {}).pop(shard.id, None)
            elif code == _GONE:
                self._described = 0.0
            elif code != _EXPIRED:
                raise
            return
        table = records.table_of(stream.arn)
        found = answer.get("Records", [])
        now = datetime.datetime.now(datetime.timezone.utc)
        for record in found:
            key = records.record_keys(record)
            if key is None:
                batch.whole[table] = "a stream record without a usable key"
            else:
                batch.written.append((table, key))
        positions = batch.positions.setdefault(stream.arn, {})
        if found:
            last = found[-1]["dynamodb"]
            positions[shard.id] = last["SequenceNumber"]
            created = last.get("ApproximateCreationDateTime")
            if isinstance(created, datetime.datetime):
                batch.lags_ms.append(max(0.0, (now - created).total_seconds() * 1000))
        else:
            batch.lags_ms.append(0.0)
        batch.count += len(found)
        following = answer.get("NextShardIterator")
        if following:
            stream.iterators[shard.id] = following
        else:
            positions[shard.id] = state.DONE
            stream.iterators.pop(shard.id, None)
            self._described = 0.0  # its children appear in the next description

    # --- applying --------------------------------------------------------------------

    def _apply(self, streams: Sequence[_Stream], batch: _Round) -> None:
        try:
            self._run(
                records.apply(
                    self.protocol, batch.written, batch.whole, endpoint_url=self._endpoint_url
                )
            )
        except RedisError:
            for stream in streams:
                stream.iterators.clear()  # not applied: read again from the checkpoints
            raise
        pending = [
            (stream, list(batch.positions[stream.arn].items()))
            for stream in streams
            if batch.positions.get(stream.arn)
        ]
        if pending:
            written = self._run(
                state.checkpoint(
                    [(s.keys, pairs) for s, pairs in pending],
                    self.owner,
                    self.lease_ms,
                    self.state_ttl_ms,
                )
            )
            for (stream, pairs), oks in zip(pending, written, strict=True):
                for (shard_id, _), ok in zip(pairs, oks, strict=True):
                    if not ok:
                        stream.iterators.pop(shard_id, None)
        for stream in batch.started:
            self._run(state.mark_started(stream.keys, self.state_ttl_ms))
        for stream in streams:
            if stream.gone:
                self._run(state.forget(stream.keys, stream.gone))
                stream.gone = []
        stats = self.protocol.stats
        stats.incr("stream_records", batch.count)
        stats.incr("stream_table_drops", len(batch.whole))
        stats.incr("stream_rounds")
        if batch.lags_ms:
            stats.gauge("stream_lag_ms", max(batch.lags_ms))
        stats.gauge("stream_shards_held", sum(len(s.iterators) for s in self._streams.values()))

    def stats(self) -> dict[str, Any]:
        """Counters: records applied, lag, tables dropped, plus the cache's own counters."""
        return self.protocol.stats.snapshot()

    # --- plumbing --------------------------------------------------------------------

    def _run(self, op: Any) -> Any:
        return drive(op, self.transport, self._schema)

    def _schema(self, table: str) -> TableSchema | None:
        from .. import schema

        try:
            return schema.from_description(self._dynamodb.describe_table(TableName=table))
        except (ClientError, BotoCoreError, KeyError) as exc:
            log.warning("DescribeTable %s failed: %s", table, exc)
            return None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
