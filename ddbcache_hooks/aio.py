"""aiobotocore / aioboto3 with ``redis.asyncio``: coroutine handlers and an awaiting driver.

aiobotocore emits the same events as botocore and awaits coroutine handlers,
so the async path is the sync one with ``await`` in three places: the
handlers below (which carry out the same plans), :func:`drive` (which carries
out the same protocol generators) and the async transport in ``store.py``
(same scripts and commands). Decisions, keys, the codec and the Lua scripts
are shared; nothing about the cache is written twice.

    session = aioboto3.Session()
    registration = await ddbcache_hooks.register_async(session, "redis://cache:6379")
    async with session.resource("dynamodb") as dynamodb:
        table = await dynamodb.Table("orders")
        await table.get_item(Key={"id": "42"})
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from redis.exceptions import RedisError

from .config import Settings
from .effects import DescribeTable, Op, RedisBatch, Sleep
from .errors import CacheConnectionError, ConfigurationError, RegistrationError
from .handlers import _FAILED, MISSING, Hooks
from .keys import TableRef
from .near import NearCache, decode_message
from .plan import WritePlan
from .plugin import (
    Registration,
    _warn_without_timeout,
    already_registered,
    inactive,
    install,
    is_async,
    redact,
    resolve_settings,
    switched_off,
)
from .protocol import Protocol
from .resilience import Invalidation
from .schema import TableSchema
from .store import SCRIPTS, AsyncTransport

log = logging.getLogger("ddbcache_hooks")
T = TypeVar("T")

#: Connections of an async client built from a URL. Tasks queue for them (up to
#: ASYNC_POOL_WAIT_S) rather than opening hundreds at once in a burst of misses.
ASYNC_MAX_CONNECTIONS = 32
ASYNC_POOL_WAIT_S = 1.0
#: Floors of the time-outs of an async client built from a URL (see connect_async).
ASYNC_MIN_TIMEOUT_MS = 250
ASYNC_MIN_CONNECT_TIMEOUT_MS = 1000


async def drive(op: Op[T], transport: AsyncTransport, hooks: AsyncHooks | None) -> T:
    """Carry out a protocol step's effects, awaiting."""
    try:
        effect = next(op)
        while True:
            if isinstance(effect, RedisBatch):
                result: Any = await transport.execute(effect.calls)
            elif isinstance(effect, Sleep):
                await asyncio.sleep(effect.seconds)
                result = None
            elif isinstance(effect, DescribeTable):
                result = await hooks._describe(effect.table) if hooks is not None else None
            else:  # pragma: no cover - the effect set is closed
                raise TypeError(f"unknown effect {effect!r}")
            effect = op.send(result)
    except StopIteration as done:
        value: T = done.value
        return value


class AsyncHooks(Hooks):
    """Handlers for aiobotocore clients (coroutines; planning needs no I/O and stays sync)."""

    def __init__(self, protocol: Protocol, client: Any, transport: AsyncTransport) -> None:
        super().__init__(protocol, client)
        self.transport = transport

    async def serve_cached_read(
        self, params: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> Any:
        """before-call: answer from the cache, or shape the real request of a miss."""
        plan = self._read_plan(context)
        if plan is None:
            return None
        return self._answer(plan, await self._run(self.protocol.serve(plan)), params)

    async def store_read_result(
        self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        """after-call of a read: fill what this call leased."""
        plan = self._read_plan(context)
        if plan is not None:
            fills = self.protocol.completed(plan, parsed, http_response.status_code < 300)
            if fills:
                await self._run(self.protocol.fill(fills))

    async def release_leases(self, context: dict[str, Any], **_: Any) -> None:
        """after-call-error of a read: the call failed, give the leases back."""
        plan = self._read_plan(context)
        if plan is not None:
            await self._run(self.protocol.release(plan))

    async def invalidate_written_items(
        self, context: dict[str, Any], parsed: dict[str, Any] | None = None, **_: Any
    ) -> None:
        """after-call / after-call-error of a write: drop what it touched, whatever the outcome."""
        await self._invalidate(self._write_plan(context, parsed), parsed)

    async def invalidate_unknown_write(
        self, context: dict[str, Any], parsed: dict[str, Any] | None = None, **_: Any
    ) -> None:
        """after-call / after-call-error of an operation not in the policy table."""
        await self._invalidate(self._unknown_write(context, parsed), parsed)

    async def drop_missing_table(
        self, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        """after-call of any call: ResourceNotFoundException drops the table's entries, schema."""
        tables = self._missing_tables(parsed, context)
        if tables:
            await self._run(self.protocol.forget_tables(tables, MISSING))

    async def _invalidate(self, plan: WritePlan | None, parsed: dict[str, Any] | None) -> None:
        if plan is None:
            return
        outcome: Any = await self._run(self.protocol.invalidate(plan, parsed))
        if outcome is _FAILED:
            self._remember(plan, parsed)

    async def _run(self, op: Op[T]) -> T:
        """Drive one protocol step; the single boundary for Redis errors."""
        if not self.protocol.breaker.allow():
            op.close()
            return _FAILED  # type: ignore[no-any-return]
        try:
            result = await drive(op, self.transport, self)
        except RedisError as exc:
            self._failed(exc)
            return _FAILED  # type: ignore[no-any-return]
        self.protocol.breaker.success()
        return result

    async def _describe(self, table: str) -> TableSchema | None:
        client = self._client()
        if client is None:
            return None
        try:
            response = await client.describe_table(TableName=table)
        except (ClientError, BotoCoreError) as exc:
            self._describe_failed(table, exc)
            return None
        return self._schema(table, lambda: response)


class AsyncRegistration(Registration):
    """The handle ``register_async()`` returns: the same, with awaitable invalidations."""

    async def invalidate(  # type: ignore[override]
        self, table: str | TableRef, key: Mapping[str, Any]
    ) -> bool:
        """Drop one item's entries (see :meth:`Registration.invalidate`)."""
        return await self._deliver_async(self._item_invalidation(table, key))

    async def invalidate_table(self, table: str | TableRef) -> bool:  # type: ignore[override]
        """Drop every entry of one table (see :meth:`Registration.invalidate_table`)."""
        return await self._deliver_async(self._table_invalidation(table))

    async def _deliver_async(self, invalidation: Invalidation) -> bool:
        if self._transport is None:
            return False
        try:
            await drive(self._protocol.deliver(invalidation), self._transport, None)
        except RedisError as exc:
            self._protocol.backlog.add(invalidation)
            log.warning("invalidation kept for replay, Redis failed: %s", exc)
            return False
        return True

    def _start_background(self, client: Any) -> None:
        """Counters flushed to Redis and the near cache's subscription, as asyncio tasks."""
        from . import metrics

        settings = self._protocol.settings
        tasks = []
        if settings.metrics_flush_s:
            tasks.append(_flush_counters(self, client, settings))
        if self._protocol.near is not None:
            tasks.append(_listen(self._protocol.near, client, self._protocol.channel))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(task) for task in tasks]
        metrics.export_opentelemetry(self.stats, lambda: self._active, settings.namespace)

    def unregister(self) -> None:
        for task in getattr(self, "_tasks", ()):
            task.cancel()
        super().unregister()


async def _flush_counters(registration: AsyncRegistration, client: Any, settings: Settings) -> None:
    from .metrics import process_key

    key = process_key(settings.namespace)
    while True:
        await asyncio.sleep(settings.metrics_flush_s)
        counts = {k: v for k, v in registration.stats().items() if isinstance(v, (int, float))}
        try:
            pipe = client.pipeline(transaction=False)
            pipe.hset(key, mapping=counts)
            pipe.expire(key, settings.metrics_flush_s * 3)
            await pipe.execute()
        except RedisError as exc:
            log.debug("could not flush counters to Redis: %s", exc)


async def _listen(near: NearCache, client: Any, channel: str, retry_s: float = 1.0) -> None:
    """The near cache's subscription (see near.Subscriber), as a task."""
    while True:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(channel)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    near.clear()
                    near.online = True
                elif message["type"] == "message":
                    near.evict(*decode_message(message["data"]))
        except asyncio.CancelledError:
            near.online = False
            raise
        except Exception as exc:  # any failure: assume messages were lost
            near.online = False
            near.clear()
            log.warning("near cache: invalidation channel lost (%s); cleared, retrying", exc)
            await asyncio.sleep(retry_s)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


# --- register_async --------------------------------------------------------------------


async def register_async(
    target: Any,
    redis: Any = None,
    *,
    ttl: int | None = None,
    ttl_config: Mapping[str, int] | None = None,
    namespace: str | None = None,
    **options: Any,
) -> AsyncRegistration:
    """Cache DynamoDB reads made through an aiobotocore / aioboto3 session or client.

    Args:
        target: an ``aioboto3.Session``, an ``aiobotocore`` ``AioSession``, or an
            aiobotocore DynamoDB client (also an aioboto3 resource's ``meta.client``).
        redis: a ``redis.asyncio.Redis`` / ``redis.asyncio.cluster.RedisCluster``
            client, or a ``redis://`` / ``rediss://`` URL.
        ttl, ttl_config, namespace, **options: exactly as for :func:`register`.

    Registering the same session or client twice returns the first handle.
    """
    kind, resolved = _resolve_async_target(target)
    existing = already_registered(kind, resolved)
    if existing is not None:
        return existing  # type: ignore[return-value]
    settings = resolve_settings(options, ttl=ttl, ttl_config=ttl_config, namespace=namespace)
    if switched_off(settings):
        return inactive(AsyncRegistration, settings, AsyncHooks)
    client = await connect_async(redis, settings)
    transport = AsyncTransport(client)
    try:
        await transport.ping()
        for script in SCRIPTS:
            await client.script_load(script.source)
    except RedisError as exc:
        where = redact(redis) if isinstance(redis, str) else repr(redis)
        raise CacheConnectionError(f"Could not connect to Redis {where}: {exc}") from exc
    registration = AsyncRegistration(
        Protocol(settings, cluster=transport.cluster), transport, AsyncHooks
    )
    registration._start_background(client)
    install(registration, kind, resolved)
    return registration


def _resolve_async_target(target: Any) -> tuple[str, Any]:
    if target is None or not is_async(getattr(getattr(target, "meta", None), "client", target)):
        raise RegistrationError(
            "register_async() needs an aioboto3.Session, an aiobotocore AioSession or an "
            "aiobotocore DynamoDB client; for boto3 / botocore use register()"
        )
    events = getattr(target, "events", None)  # aioboto3.Session
    if events is not None and not hasattr(target, "meta"):
        return "session", events
    if hasattr(target, "get_component"):  # AioSession
        return "session", target.get_component("event_emitter")
    client = getattr(getattr(target, "meta", None), "client", target)
    service = client.meta.service_model.service_name
    if service != "dynamodb":
        raise RegistrationError(f"register_async() needs a DynamoDB client, got a {service} client")
    return "client", client


async def connect_async(redis_target: Any, settings: Settings) -> Any:
    """The async Redis client: the one given, or one built from a URL with short time-outs.

    IAM tokens (iam.py) are signed with a botocore session's credential chain: an aiobotocore
    session's credentials are awaitable, and a token is made inside redis-py's connect."""
    import redis as redis_lib
    import redis.asyncio as aredis
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster

    if redis_target is None:
        raise RegistrationError("register_async() needs redis= (a redis.asyncio client or a URL)")
    if not isinstance(redis_target, str):
        if isinstance(redis_target, (redis_lib.Redis, RedisCluster)):
            raise RegistrationError(
                "register_async() needs a redis.asyncio client; this redis.Redis client is "
                "synchronous (use register() for boto3, or redis.asyncio.Redis here)"
            )
        if not isinstance(redis_target, (aredis.Redis, AsyncRedisCluster)):
            raise RegistrationError(
                f"redis= must be a redis.asyncio client or URL, got {type(redis_target).__name__}"
            )
        if settings.iam_user:
            raise ConfigurationError(
                "iam_user applies to a rediss:// URL; a Redis client built by the application "
                "takes credential_provider=ddbcache_hooks.iam.ElastiCacheIAMProvider(...)"
            )
        _warn_without_timeout(redis_target)
        return redis_target
    from redis.asyncio.retry import Retry

    from . import iam

    redis_target, auth = iam.redis_options(redis_target, settings)
    auth.pop("connection_class", None)  # redis.asyncio's from_url keeps the URL's; set below

    # asyncio time-outs also measure how late the event loop gets round to a socket:
    # in a burst of misses a 50 ms time-out fires while the answer is already there.
    kwargs: dict[str, Any] = {
        "socket_timeout": max(settings.redis_timeout_ms, ASYNC_MIN_TIMEOUT_MS) / 1000,
        "socket_connect_timeout": max(
            settings.redis_connect_timeout_ms, ASYNC_MIN_CONNECT_TIMEOUT_MS
        )
        / 1000,
        "retry": Retry(NoBackoff(), 0),
    }
    # Many tasks may miss at once: they wait briefly for a connection instead of failing
    # (redis.asyncio's plain pool raises "Too many connections" past 100).
    pool = aredis.BlockingConnectionPool.from_url(
        redis_target,
        max_connections=ASYNC_MAX_CONNECTIONS,
        timeout=ASYNC_POOL_WAIT_S,
        **kwargs,
        **auth,
    )
    if auth:
        pool.connection_class = iam.AsyncIAMSSLConnection
    plain = aredis.Redis(connection_pool=pool)
    try:
        cluster = (await plain.info("cluster")).get("cluster_enabled") in (1, "1")
    except redis_lib.exceptions.NoPermissionError:
        cluster = False
    except RedisError as exc:
        raise CacheConnectionError(
            f"Could not connect to Redis at {redact(redis_target)}: {exc}"
        ) from exc
    if not cluster:
        return plain
    await plain.aclose()
    # A cluster's node connections get the credentials; ElastiCache's 12-hour limit closes
    # them (one Redis error, absorbed like any other), and they reconnect with a new token.
    return AsyncRedisCluster.from_url(redis_target, **kwargs, **auth)
