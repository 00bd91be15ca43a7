"""The only code that sends the cache's Redis batches: one sync and one async transport.

Each executes a batch (:class:`~ddbcache_hooks.effects.RedisBatch`) as one
pipeline, reloads scripts a restarted server forgot, writes the hit read (and
plain commands) packed on a pooled connection, and names on a Redis Cluster the node
each script goes to. The two classes are twins: a change to one is a change
to both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.client import NEVER_DECODE
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connections import Connections, is_cluster
from .effects import Call, migrating
from .scripts import LOOKUP_OR_LEASE, READ_HITS

log = logging.getLogger("ddbcache_hooks")


def node_lookup(transport: SyncTransport | AsyncTransport) -> Callable[[str], str] | None:
    """On a cluster, the name of the node a key's slot is served by (the client's
    current slot map, no round trip); None on one node."""
    if not transport.cluster:
        return None
    return lambda key: str(transport.client.get_node_from_key(key).name)


def _queue(pipe: Any, call: Call, cluster: Any = None) -> Any:
    """Add one call to a pipeline (or, given a client, run it).

    NEVER_DECODE: entries are binary even when the caller's client was made
    with ``decode_responses=True`` (redis-py's own DUMP command does the same).
    On a cluster, the target node is named: otherwise redis-py asks the server
    (COMMAND GETKEYS) where each EVALSHA goes, one extra round trip per script.
    """
    options: dict[str, Any] = {NEVER_DECODE: []}
    if cluster is not None:
        options["target_nodes"] = cluster.get_node_from_key(call.first_key)
    if call.script is not None:
        return pipe.execute_command("EVALSHA", call.script.sha, call.numkeys, *call.args, **options)
    return pipe.execute_command(*call.args, **options)


MIGRATION_RETRIES = 3
MIGRATION_PAUSE_S = 0.01


def _first_error(replies: Sequence[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply if isinstance(reply, RedisError) else RedisError(str(reply))


def _packable(calls: Sequence[Call], errors_as_values: bool) -> bool:
    """The hit read (its script, and a batch's ``HMGET``s), or plain commands whose
    raw replies the caller reads (a peek's): the packed path sends them (see
    :func:`_pack`). Other plain commands keep redis-py's reply parsing
    (``HGETALL`` as a dict, ``SET`` as a bool)."""
    if all(call.script is READ_HITS for call in calls):
        return True
    return errors_as_values and all(call.script in (None, READ_HITS) for call in calls)


def ours(client: Any) -> bool:
    """One node, behind a connection pool the library made: the packed path may
    take its connections (a client passed in keeps redis-py's own path)."""
    return getattr(getattr(client, "connection_pool", None), "ours", False) is True


def _holder(target: Any) -> Connections:
    return target if isinstance(target, Connections) else Connections.given(target)


def _unreachable(exc: RedisClusterException) -> RedisError:
    """redis-py's cluster client raises no RedisError when no node serves a slot (a
    cluster down or failing over): the cache's one boundary for Redis errors must see
    one, or the exception would reach the application's DynamoDB call."""
    return RedisConnectionError(f"Redis Cluster: {type(exc).__name__}: {exc}")


def _suspects(exc: RedisError, calls: Sequence[Call]) -> RedisError:
    """Note on a time-out which keys the batch read: one of them may hold garbage."""
    if isinstance(exc, RedisTimeoutError):
        scripted = [
            (call.args[0], call.args[call.numkeys])
            for call in calls
            if call.script is LOOKUP_OR_LEASE
        ]
        hits = [  # read_hits: the entry hashes, then (after the counts) their fields
            (key, field)
            for call in calls
            if call.script is READ_HITS
            for key, field in zip(
                call.args[: int(call.args[call.numkeys])],
                call.args[call.numkeys + 4 :],
                strict=False,
            )
        ]
        plain = [  # a batch's HMGET <key> e:<v> x:<v> g d:<v>
            (call.args[1], call.args[2][2:])
            for call in calls
            if call.script is None and call.args[0] == "HMGET" and call.args[2].startswith("e:")
        ]
        exc.ddbcache_keys = scripted + hits + plain  # type: ignore[attr-defined]
    return exc


def _pack(calls: Sequence[Call]) -> bytes:
    """Commands in the Redis protocol (keys and fields are str, numbers int); a
    script as ``EVALSHA``.

    redis-py's packer spends more per command than the server does on a hit.
    """
    out = []
    for call in calls:
        args: Sequence[Any] = call.args
        if call.script is not None:
            args = ("EVALSHA", call.script.sha, call.numkeys, *args)
        out.append(b"*%d\r\n" % len(args))
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


#: redis-py before 6 wants a command name to pick a pooled connection, later ones none.
_POOL_ARGS: tuple[str, ...] = () if int(redis.__version__.split(".")[0]) >= 6 else ("HMGET",)


class SyncTransport:
    """Executes a batch on a ``redis.Redis`` / ``RedisCluster`` as one pipeline."""

    def __init__(self, connections: Connections | redis.Redis | Any) -> None:
        self.connections = _holder(connections)
        self.cluster = is_cluster(self.connections.client)

    @property
    def client(self) -> Any:
        """The library's client (a fresh one after a fork)."""
        return self.connections.client

    def execute(self, calls: Sequence[Call], errors_as_values: bool = False) -> list[Any]:
        try:
            return self._execute(calls, errors_as_values)
        except RedisError as exc:
            raise _suspects(exc, calls) from None
        except RedisClusterException as exc:
            raise _unreachable(exc) from exc

    def ping(self) -> None:
        self.client.ping()

    def _execute(self, calls: Sequence[Call], errors_as_values: bool) -> list[Any]:
        if _packable(calls, errors_as_values):
            if ours(self.client):
                return self._packed(calls, errors_as_values)
            node = self._node_of_one(calls)
            if node is not None:
                replies = self._packed_on_node(node, calls, errors_as_values)
                if replies is not None:
                    return replies
        if len(calls) == 1 and not self.cluster:
            try:
                return [self._single(calls[0])]
            except ResponseError as exc:
                if not errors_as_values:
                    raise
                return [exc]
        replies = self._pipeline(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # The server restarted or flushed its script cache: load and resend those.
            for script in {calls[i].script for i in missing if calls[i].script}:
                assert script is not None
                self.client.script_load(script.source)
            for i, reply in zip(missing, self._pipeline([calls[i] for i in missing]), strict=True):
                replies[i] = reply
        if not errors_as_values:
            _first_error(replies)
        return replies

    def _node_of_one(self, calls: Sequence[Call]) -> Any:
        """On a cluster, the node client of a single call (a hit read whose keys share a
        slot: ``cluster_buckets``) when its pool is the library's; else None."""
        if not self.cluster or len(calls) != 1:
            return None
        try:
            node = self.client.get_node_from_key(calls[0].first_key).redis_connection
        except (RedisError, RedisClusterException):
            return None  # no node serves the slot now: the cluster client decides
        return node if ours(node) else None

    def _packed_on_node(
        self, node: Any, calls: Sequence[Call], errors_as_values: bool
    ) -> list[Any] | None:
        """:meth:`_packed` on one node of a cluster; None (send it through the cluster
        client, which follows redirects and learns the new slot map) when the slot
        moved, the cluster fails over, or the node cannot be reached. A slot in
        migration (ASK, TRYAGAIN) comes back as the reply when errors are values:
        the hit read leaves that key to the lookup script (store._read_one_hit)."""
        try:
            replies = self._packed(calls, True, node)
        except RedisConnectionError:
            return None
        if any(isinstance(reply, (MovedError, ClusterDownError)) for reply in replies):
            return None
        if not errors_as_values:
            if any(migrating(reply) for reply in replies):
                return None
            _first_error(replies)
        return replies

    def _packed(
        self, calls: Sequence[Call], errors_as_values: bool, target: Any = None
    ) -> list[Any]:
        """Commands written at once on one pooled connection, replies raw: what a
        pipeline does, without its per-command bookkeeping (a third of a hit's
        Redis cost on the client). Only on the library's own pools (:func:`ours`);
        ``target``: a cluster node's client (else the client's own pool).
        """
        target = self.client if target is None else target
        replies = self._send_packed(calls, target)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # a restarted (or flushed) server forgot the hit script
            target.script_load(READ_HITS.source)
            again = self._send_packed([calls[i] for i in missing], target)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        if not errors_as_values:
            _first_error(replies)
        return replies

    def _send_packed(self, calls: Sequence[Call], target: Any) -> list[Any]:
        pool = target.connection_pool
        connection = pool.get_connection(*_POOL_ARGS)
        try:
            connection.send_packed_command([_pack(calls)])
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(connection.read_response(disable_decoding=True))
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    def _single(self, call: Call) -> Any:
        """One command without a pipeline object: the common hit costs less."""
        try:
            return _queue(self.client, call)
        except NoScriptError:
            assert call.script is not None
            self.client.script_load(call.script.source)
            return _queue(self.client, call)

    def _pipeline(self, calls: Sequence[Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        cluster = self.client if self.cluster else None
        for call in calls:
            _queue(pipe, call, cluster)
        replies = list(pipe.execute(raise_on_error=False))
        if cluster is not None:
            self._retry_migrating(calls, replies)
        return replies

    def _retry_migrating(self, calls: Sequence[Call], replies: list[Any]) -> None:
        """Send each call a slot migration refused again, alone: the cluster client
        follows ASK to the importing node (scripts are idempotent, see scripts.py)."""
        for attempt in range(MIGRATION_RETRIES):
            pending = [i for i, reply in enumerate(replies) if migrating(reply)]
            if not pending:
                return
            if attempt:
                time.sleep(MIGRATION_PAUSE_S)
            for i in pending:
                try:
                    replies[i] = _queue(self.client, calls[i])
                except NoScriptError:
                    script = calls[i].script
                    assert script is not None
                    self.client.script_load(script.source)
                    replies[i] = _queue(self.client, calls[i])
                except (ResponseError, ClusterError) as exc:  # ClusterError: TTL exhausted
                    replies[i] = exc

    def scan_delete(self, pattern: str, batch: int = 500) -> int:
        """Delete every key matching ``pattern`` (on every primary of a cluster)."""
        deleted = 0
        keys: list[Any] = []
        for key in self.client.scan_iter(match=pattern, count=batch):
            keys.append(key)
            if len(keys) >= batch:
                deleted += self._unlink(keys)
                keys = []
        if keys:
            deleted += self._unlink(keys)
        return deleted

    def _unlink(self, keys: list[Any]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.unlink(key)
        return sum(int(n) for n in pipe.execute())


class AsyncTransport:
    """Executes a batch on a ``redis.asyncio`` client as one pipeline."""

    def __init__(self, connections: Connections | Any) -> None:
        self.connections = _holder(connections)
        self.cluster = is_cluster(self.connections.client)

    @property
    def client(self) -> Any:
        return self.connections.client

    async def ping(self) -> None:
        await self.client.ping()

    async def execute(self, calls: Sequence[Call], errors_as_values: bool = False) -> list[Any]:
        try:
            return await self._execute(calls, errors_as_values)
        except RedisError as exc:
            raise _suspects(exc, calls) from None
        except RedisClusterException as exc:
            raise _unreachable(exc) from exc

    async def _execute(self, calls: Sequence[Call], errors_as_values: bool) -> list[Any]:
        if _packable(calls, errors_as_values) and ours(self.client):
            return await self._packed(calls, errors_as_values)
        if len(calls) == 1 and not self.cluster:
            try:
                return [await self._single(calls[0])]
            except ResponseError as exc:
                if not errors_as_values:
                    raise
                return [exc]
        replies = await self._pipeline(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for script in {calls[i].script for i in missing if calls[i].script}:
                assert script is not None
                await self.client.script_load(script.source)
            for i, reply in zip(
                missing, await self._pipeline([calls[i] for i in missing]), strict=True
            ):
                replies[i] = reply
        if not errors_as_values:
            _first_error(replies)
        return replies

    async def _packed(self, calls: Sequence[Call], errors_as_values: bool) -> list[Any]:
        """:meth:`SyncTransport._packed`, awaited."""
        replies = await self._send_packed(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            await self.client.script_load(READ_HITS.source)
            again = await self._send_packed([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        if not errors_as_values:
            _first_error(replies)
        return replies

    async def _send_packed(self, calls: Sequence[Call]) -> list[Any]:
        pool = self.client.connection_pool
        connection = await pool.get_connection(*_POOL_ARGS)
        try:
            await connection.send_packed_command(_pack(calls))
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(await connection.read_response(disable_decoding=True))
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _single(self, call: Call) -> Any:
        try:
            return await _queue(self.client, call)
        except NoScriptError:
            assert call.script is not None
            await self.client.script_load(call.script.source)
            return await _queue(self.client, call)

    async def _pipeline(self, calls: Sequence[Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        cluster = self.client if self.cluster else None
        for call in calls:
            _queue(pipe, call, cluster)
        replies = list(await pipe.execute(raise_on_error=False))
        if cluster is not None:
            await self._retry_migrating(calls, replies)
        return replies

    async def _retry_migrating(self, calls: Sequence[Call], replies: list[Any]) -> None:
        """:meth:`SyncTransport._retry_migrating`, awaited."""
        for attempt in range(MIGRATION_RETRIES):
            pending = [i for i, reply in enumerate(replies) if migrating(reply)]
            if not pending:
                return
            if attempt:
                await asyncio.sleep(MIGRATION_PAUSE_S)
            for i in pending:
                try:
                    replies[i] = await _queue(self.client, calls[i])
                except NoScriptError:
                    script = calls[i].script
                    assert script is not None
                    await self.client.script_load(script.source)
                    replies[i] = await _queue(self.client, calls[i])
                except (ResponseError, ClusterError) as exc:  # ClusterError: TTL exhausted
                    replies[i] = exc
