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
import atexit
import contextlib
import logging
import time
import weakref
from collections.abc import Mapping
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from redis.exceptions import RedisError

from .config import Options, Settings, Unpack
from .connections import (
    Connections,
    Policy,
    async_builder,
    check_url,
    is_fake,
    sync_twin,
    with_connection_class,
)
from .effects import DescribeTable, Op, RedisBatch, Sleep
from .errors import CacheConnectionError, ConfigurationError, RegistrationError
from .handlers import _FAILED, MISSING, Hooks, _finished, _scope
from .handlers import drive as sync_drive
from .keys import TableRef
from .near import NearCache, decode_message
from .peek import Peek
from .plan import ReadPlan, WritePlan
from .plugin import (
    Registration,
    already_registered,
    inactive,
    install,
    is_async,
    redact,
    resolve_settings,
    switched_off,
)
from .protocol import Protocol
from .resilience import EXIT_FLUSH_S, AsyncBackgroundWork, BackgroundWork, Invalidation
from .schema import TableSchema
from .store import SCRIPTS, AsyncTransport, SyncTransport

log = logging.getLogger("ddbcache_hooks")
T = TypeVar("T")


async def drive(op: Op[T], transport: AsyncTransport, hooks: AsyncHooks | None) -> T:
    """Carry out a protocol step's effects, awaiting."""
    try:
        effect = next(op)
        while True:
            if isinstance(effect, RedisBatch):
                result: Any = await transport.execute(effect.calls, effect.errors_as_values)
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

    def __init__(
        self, protocol: Protocol, client: Any, transport: AsyncTransport, work: Any = None
    ) -> None:
        super().__init__(protocol, client)
        self.transport = transport
        self.work: AsyncBackgroundWork = work or AsyncBackgroundWork(
            protocol, lambda op: drive(op, transport, None)
        )
        # aiobotocore runs no handler when a call is cancelled: the call itself is
        # wrapped, so that a cancelled write still invalidates and a cancelled miss
        # gives its lease back.
        client._make_api_call = self._guard(client._make_api_call)

    def _guard(self, make_api_call: Any) -> Any:
        async def _make_api_call(operation_name: str, api_params: Any) -> Any:
            scope: list[Any] = []
            token = _scope.set(scope)
            try:
                return await make_api_call(operation_name, api_params)
            except BaseException as exc:  # asyncio.CancelledError, above all
                if scope and not isinstance(exc, Exception):
                    self._interrupted(scope)
                raise
            finally:
                _scope.reset(token)

        return _make_api_call

    def _interrupted(self, scope: list[Any]) -> None:
        """The caller was cancelled mid-call: nothing says what DynamoDB did."""
        for plan in scope:
            if isinstance(plan, WritePlan):
                self.protocol.stats.incr("writes_cancelled")
                self.work.hand_over(self._deliver_invalidation(plan, None))
            elif isinstance(plan, ReadPlan):
                self.protocol.abandon(plan)

    async def serve_cached_read(
        self, params: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> Any:
        """before-call: answer from the cache, or shape the real request of a miss."""
        plan = self._read_plan(context)
        if plan is None:
            return None
        started = time.perf_counter()
        response = await self._run(self.protocol.serve(plan))
        self._traced(plan, context, started)
        if response is _FAILED:
            self.protocol.abandon(plan)
        return self._answer(plan, response, params)

    async def store_read_result(
        self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        """after-call of a read: fill what this call leased."""
        plan = self._read_plan(context)
        if plan is not None:
            started, answer = time.perf_counter(), None
            fills = self.protocol.completed(plan, parsed, http_response.status_code < 300)
            if fills:
                await self._run(self.protocol.fill(fills))
            _finished(plan)
            if self._may_rescue(plan, http_response):
                answer = await self._run(
                    self.protocol.rescue(plan, http_response.status_code, parsed)
                )
                self._replace(http_response, parsed, answer)
            self._traced(plan, context, started, answer)

    async def release_leases(self, context: dict[str, Any], **_: Any) -> None:
        """after-call-error of a read: the call failed, give the leases back."""
        plan = self._read_plan(context)
        if plan is not None:
            await self._run(self.protocol.release(plan))
            _finished(plan)

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
        _finished(plan)
        if self._changed_nothing(parsed):
            return
        # Shielded: a caller cancelled while this waits (say for a pooled
        # connection) leaves the invalidation running to its end in a task.
        await asyncio.shield(self.work.hand_over(self._deliver_invalidation(plan, parsed)))

    async def _deliver_invalidation(self, plan: WritePlan, parsed: dict[str, Any] | None) -> None:
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

    #: Builds a sync client to flush held invalidations at exit (None: cannot).
    _exit_twin: Any = None

    async def invalidate(  # type: ignore[override]
        self, table: str | TableRef, key: Mapping[str, Any]
    ) -> bool:
        """Drop one item's entries (see :meth:`Registration.invalidate`)."""
        return await self._deliver_async(self._item_invalidation(table, key))

    async def invalidate_table(self, table: str | TableRef) -> bool:  # type: ignore[override]
        """Drop every entry of one table (see :meth:`Registration.invalidate_table`)."""
        return await self._deliver_async(self._table_invalidation(table))

    async def peek(  # type: ignore[override]
        self, table: str | TableRef, key: Mapping[str, Any], **variant: Any
    ) -> Peek:
        """What a GetItem of ``key`` would find now (see :meth:`Registration.peek`)."""
        ref, slot = self._peek_slot(table, key, variant)
        if slot is None or self._transport is None:
            return Peek(ref, cached=False, present=False)
        return await drive(self._protocol.peek(slot), self._transport, None)

    async def _deliver_async(self, invalidation: Invalidation) -> bool:
        if self._transport is None:
            return False
        try:
            await drive(self._protocol.deliver(invalidation), self._transport, None)
        except RedisError as exc:
            self._protocol.keep(invalidation)
            log.warning("invalidation kept for replay, Redis failed: %s", exc)
            return False
        return True

    def _start_background(self, holder: Connections) -> None:
        """Counters flushed to Redis, the near cache's subscription, background work: tasks."""
        from . import metrics

        protocol = self._protocol
        settings = protocol.settings
        client = holder.client
        self._work = AsyncBackgroundWork(protocol, lambda op: drive(op, self._transport, None))
        protocol.wake = self._work.wake
        tasks = []
        if settings.metrics_flush_s:
            tasks.append(_flush_counters(self, client, settings))
        if protocol.near is not None:
            tasks.append(_listen(protocol.near, client, protocol.channel))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(task) for task in tasks]
        metrics.export_opentelemetry(self.stats, lambda: self._active, settings.namespace)

    def _flush_without_loop(self) -> None:
        """At interpreter exit the event loop is gone: deliver what is held over a sync client."""
        if self._exit_twin is None or not self._protocol.backlog:
            return
        transport = SyncTransport(Connections(self._exit_twin))
        worker = BackgroundWork(self._protocol, lambda op: sync_drive(op, transport, _no_schema))
        if not worker.flush(EXIT_FLUSH_S):
            log.warning("exiting with invalidations Redis did not take; entries expire by TTL")

    async def aclose(self) -> None:
        """Deliver held invalidations (waiting a bounded time), then unregister."""
        if self._work is not None:
            await self._work.flush(EXIT_FLUSH_S)
        self.unregister()

    def _stop_work(self) -> None:
        if self._work is not None:
            self._work.stop()

    def unregister(self) -> None:
        for task in getattr(self, "_tasks", ()):
            task.cancel()
        super().unregister()


_registrations: weakref.WeakSet[AsyncRegistration] = weakref.WeakSet()


def _no_schema(table: str) -> None:
    return None


@atexit.register
def _flush_at_exit() -> None:
    for registration in list(_registrations):
        registration._flush_without_loop()


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
    target: Any, redis: Any = None, **options: Unpack[Options]
) -> AsyncRegistration:
    """Cache DynamoDB reads made through an aiobotocore / aioboto3 session or client.

    Args:
        target: an ``aioboto3.Session``, an ``aiobotocore`` ``AioSession``, or an
            aiobotocore DynamoDB client (also an aioboto3 resource's ``meta.client``).
        redis: a ``redis.asyncio.Redis`` / ``redis.asyncio.cluster.RedisCluster``
            client, or a ``redis://`` / ``rediss://`` URL.
        **options: exactly as for :func:`~ddbcache_hooks.register`
            (:class:`~ddbcache_hooks.config.Options`).

    Registering the same session or client twice returns the first handle.
    """
    kind, resolved = _resolve_async_target(target)
    existing = already_registered(kind, resolved)
    if existing is not None:
        return existing  # type: ignore[return-value]
    settings = resolve_settings(options)
    if switched_off(settings):
        return inactive(AsyncRegistration, settings, AsyncHooks)
    holder = await connect_async(redis, settings)
    transport = AsyncTransport(holder)
    try:
        await transport.ping()
        for script in SCRIPTS:
            await transport.client.script_load(script.source)
        seconds, micros = await transport.client.time()
        server_ms = int(seconds) * 1000 + int(micros) // 1000
    except RedisError as exc:
        where = redact(redis) if isinstance(redis, str) else repr(redis)
        raise CacheConnectionError(f"Could not connect to Redis {where}: {exc}") from exc
    protocol = Protocol(settings, cluster=transport.cluster)
    if holder.policy is not None:
        protocol.call_timeout_ms = holder.policy.timeout_ms
    registration = AsyncRegistration(protocol, transport, AsyncHooks)
    if holder.policy is not None:
        registration._exit_twin = _exit_twin(redis, settings, holder.policy)
        _registrations.add(registration)
    protocol.clock.observe(server_ms)
    registration._start_background(holder)
    install(registration, kind, resolved)
    return registration


def _exit_twin(target: Any, settings: Settings, policy: Policy) -> Any:
    """A sync builder of the same connections (IAM included), for the flush at exit."""
    if not isinstance(target, str):
        return sync_twin(target, policy)
    from . import iam

    url, auth = iam.redis_options(check_url(target), settings)
    return sync_twin(
        url,
        policy,
        credential_provider=auth.get("credential_provider"),
        connection_class=auth.get("connection_class"),
    )


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


async def connect_async(
    redis_target: Any, settings: Settings, *, credential_provider: Any = None
) -> Connections:
    """The library's async connections, built from a URL or the client the user passed.

    As for :func:`~ddbcache_hooks.plugin.connect_holder`: the user's client is only
    read for its settings; time-outs are floored (``connections.ASYNC_MIN_*``).
    IAM tokens (iam.py) are signed with a botocore session's credential chain (an
    aiobotocore session's credentials are awaitable; a token is made inside
    redis-py's connect), and the pools reconnect at the age limit.
    """
    import redis as redis_lib
    import redis.asyncio as aredis
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    if redis_target is None:
        raise RegistrationError("register_async() needs redis= (a redis.asyncio client or a URL)")
    if not isinstance(redis_target, str):
        if isinstance(redis_target, (redis_lib.Redis, RedisCluster)):
            raise RegistrationError(
                "register_async() needs a redis.asyncio client; this redis.Redis client is "
                "synchronous (use register() for boto3, or redis.asyncio.Redis here)"
            )
        if is_fake(redis_target):
            return Connections.given(redis_target)
        if not isinstance(redis_target, (aredis.Redis, AsyncRedisCluster)):
            raise RegistrationError(
                f"redis= must be a redis.asyncio client or URL, got {type(redis_target).__name__}"
            )
        if settings.iam_user:
            raise ConfigurationError(
                "iam_user applies to a rediss:// URL; a Redis client built by the application "
                "takes credential_provider=ddbcache_hooks.iam.ElastiCacheIAMProvider(...)"
            )
        policy = Policy.from_settings(settings, asynchronous=True)
        return Connections(
            async_builder(redis_target, policy, credential_provider=credential_provider), policy
        )
    from . import iam

    redis_target, auth = iam.redis_options(check_url(redis_target), settings)
    credential_provider = auth.get("credential_provider", credential_provider)
    connection_class = iam.AsyncIAMSSLConnection if auth else None
    policy = Policy.from_settings(settings, asynchronous=True)
    build = async_builder(
        redis_target,
        policy,
        credential_provider=credential_provider,
        connection_class=connection_class,
    )
    plain = build()
    try:
        cluster = (await plain.info("cluster")).get("cluster_enabled") in (1, "1")
    except redis_lib.exceptions.NoPermissionError:
        cluster = False
    except RedisError as exc:
        raise CacheConnectionError(
            f"Could not connect to Redis at {redact(redis_target)}: {exc}"
        ) from exc
    if not cluster:
        holder = Connections(build, policy)
        holder.adopt(plain)
        return holder
    await plain.aclose()
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    extra = {"credential_provider": credential_provider} if credential_provider else {}

    def cluster_client() -> Any:
        client = AsyncRedisCluster.from_url(
            redis_target,
            max_connections=policy.max_connections,
            **policy.connection_kwargs(Retry(NoBackoff(), 0)),
            **extra,
        )
        return with_connection_class(client, connection_class)

    return Connections(cluster_client, policy)
