"""botocore event handlers: short functions that carry out plans.

Each handler reads the plan that :meth:`Hooks.plan_call` put in the call's
``context`` and runs one protocol step through :meth:`SyncHooks._run`, the one
place where Redis errors are caught, counted and turned into "go to
DynamoDB". :class:`AsyncHooks`, at the bottom, holds aiobotocore's coroutine
versions; a change to one half is a change to both.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

from botocore.awsrequest import AWSResponse
from botocore.exceptions import BotoCoreError, ClientError
from redis.exceptions import MaxConnectionsError, OutOfMemoryError, RedisError

from . import schema as schema_mod
from . import writes
from .effects import DescribeTable, Op, RedisBatch, Sleep
from .keys import TableRef, location_of
from .plan import ReadPlan, WritePlan, shape_miss_request
from .policy import CACHED_OPERATIONS, POLICIES
from .protocol import NOT_PRIMARY_MESSAGE, Protocol, not_primary
from .resilience import AsyncBackgroundWork
from .schema import TableSchema
from .transport import AsyncTransport, SyncTransport, migrating

log = logging.getLogger("ddbcache_hooks")
T = TypeVar("T")

#: Key of the plan in botocore's per-call ``context`` dict.
PLAN = "ddbcache"
#: Key of the call's parameters there (to name the table of a ResourceNotFoundException).
PARAMS = "ddbcache_params"
MISSING = "ResourceNotFoundException"
_FAILED: Any = object()
#: Error codes of a write that prove DynamoDB applied nothing: a rejected
#: request, a failed condition, a missing table, throttling. A transaction's
#: cancellation is not among them (it invalidates, as any unknown outcome).
NOT_APPLIED = frozenset(
    {
        "ValidationException",
        "ConditionalCheckFailedException",
        "ResourceNotFoundException",
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "ItemCollectionSizeLimitExceededException",
        "AccessDeniedException",
        "UnrecognizedClientException",
    }
)
_bypass: contextvars.ContextVar[bool] = contextvars.ContextVar("ddbcache_bypass", default=False)


#: Plans of the async call running in this task whose last step has not finished
#: (see aio.AsyncHooks._guard); None outside such a call.
_scope: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "ddbcache_scope", default=None
)


def _finished(plan: Any) -> None:
    scope = _scope.get()
    if scope:
        scope[:] = [p for p in scope if p is not plan]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Reads inside this block bypass the cache (this thread or task only).

    Writes inside it still invalidate, so nothing they replace is served later.
    """
    token = _bypass.set(True)
    try:
        yield
    finally:
        _bypass.reset(token)


class Hooks:
    """The handlers of one client that need no I/O (shared by sync and async)."""

    def __init__(self, protocol: Protocol, client: Any) -> None:
        self.protocol = protocol
        self._client = weakref.ref(client)
        #: Where this client's requests go: fixed for the client's life, so computed once.
        self.location = location_of(client, protocol.settings.account_id)
        #: When set, reads are cached only while it returns True (compat.CacheClient).
        self.gate: Callable[[], bool] | None = None

    def detach(self, client: Any) -> None:
        """Undo what attaching did to the client besides its event handlers."""
        client.__dict__.pop("_make_api_call", None)

    def _interrupted(self, scope: list[Any]) -> None:
        """The call ended without its last handler (cancelled, interrupted): see subclasses."""

    def plan_call(
        self, params: Mapping[str, Any], model: Any, context: dict[str, Any], **_: Any
    ) -> None:
        """before-parameter-build (registered last: after boto3 made AttributeValues)."""
        context[PARAMS] = params
        plan = self.protocol.planner.plan(model.name, params, self.location)
        if isinstance(plan, ReadPlan) and (
            _bypass.get() or (self.gate is not None and not self.gate())
        ):
            plan = None  # inside disabled(), or not called through a compat.CacheClient
        if plan is None:
            if model.name in CACHED_OPERATIONS:
                self.protocol.stats.incr("bypasses")
                log.debug("%s bypasses the cache", model.name)
            return
        context[PLAN] = plan
        scope = _scope.get()
        if scope is not None:
            scope.append(plan)

    def _read_plan(self, context: Mapping[str, Any]) -> ReadPlan | None:
        plan = context.get(PLAN)
        return plan if isinstance(plan, ReadPlan) and not plan.served else None

    def _write_plan(
        self, context: Mapping[str, Any], parsed: Mapping[str, Any] | None = None
    ) -> WritePlan | None:
        """The write to invalidate; None for a table that does not exist (drop_missing_table)."""
        plan = context.get(PLAN)
        if not isinstance(plan, WritePlan) or _error_code(parsed) == MISSING:
            return None
        return plan

    def _unknown_write(
        self, context: Mapping[str, Any], parsed: Mapping[str, Any] | None = None
    ) -> WritePlan | None:
        """A write by an operation the policy table does not list (a newer botocore's)."""
        plan = self._write_plan(context, parsed)
        return plan if plan is not None and plan.operation not in POLICIES else None

    def _missing_tables(
        self, parsed: Mapping[str, Any], context: Mapping[str, Any]
    ) -> list[TableRef]:
        """The tables (where this client's live) of a call answered ResourceNotFoundException."""
        if _error_code(parsed) != MISSING:
            return []
        return writes.named_tables(context.get(PARAMS) or {}, self.location)

    def _answer(self, plan: ReadPlan, response: Any, request: dict[str, Any]) -> Any:
        """before-call's result: a hit short-circuits the HTTP call; a miss may reshape it."""
        if response is not _FAILED and response is not None:
            return AWSResponse(None, 200, {}, None), response
        _reshape_body(plan, request)
        return None

    @staticmethod
    def _may_rescue(plan: ReadPlan, http_response: Any) -> bool:
        """A failed miss that found an entry which may stand in for DynamoDB's error."""
        return http_response.status_code >= 400 and any(s.fallback for s in plan.slots)

    @staticmethod
    def _replace(http_response: Any, parsed: dict[str, Any], answer: Any) -> None:
        """Turn DynamoDB's error into the cached answer, in after-call.

        botocore raises the error only after after-call, by looking at the
        status code, so the response's status and the parsed dict (the very
        object botocore returns) are rewritten in place. botocore's retry
        handler ran before: after-call follows the last attempt.
        """
        if answer is None or answer is _FAILED:
            return
        parsed.clear()
        parsed.update(answer)
        http_response.status_code = 200

    def _remember(self, plan: WritePlan, parsed: dict[str, Any] | None) -> None:
        """A write whose invalidation Redis did not take: keep it for replay."""
        self.protocol.keep(self.protocol.undelivered(plan, parsed))

    def _changed_nothing(self, parsed: Mapping[str, Any] | None) -> bool:
        """DynamoDB answered the write with an error that proves nothing was applied."""
        code = ((parsed or {}).get("Error") or {}).get("Code")
        if code in NOT_APPLIED:
            self.protocol.stats.incr("writes_rejected")
            log.debug("write rejected with %s: nothing to invalidate", code)
            return True
        return False

    def _schema(self, table: str, describe: Callable[[], Any]) -> TableSchema | None:
        try:
            return schema_mod.from_description(describe())
        except (ClientError, BotoCoreError, KeyError) as exc:
            self._describe_failed(table, exc)
            return None

    def _failed(self, exc: RedisError) -> None:
        """Count a Redis error; only one that says Redis is unwell moves the breaker."""
        if isinstance(exc, MaxConnectionsError):
            # Every pooled connection is busy: this process's own limit, not an outage.
            self.protocol.stats.incr("pool_busy")
            log.debug("no free Redis connection; this call bypasses the cache")
            return
        if isinstance(exc, OutOfMemoryError):
            # Redis is full (noeviction) and refuses writes, but answers: hits go on.
            self.protocol.stats.incr("redis_oom")
            self.protocol.limited.warning(
                "oom", "Redis is out of memory and refuses writes; misses are not cached: %s", exc
            )
            return
        if migrating(exc):
            # A slot in migration the retries on its new node did not get past: a miss
            # (or a held invalidation), not an outage.
            self.protocol.stats.incr("slot_migrations")
            log.debug("Redis slot in migration; this call bypasses the cache: %s", exc)
            return
        if not_primary(exc):
            # A replica behind the URL: not an outage to retry at once, a set-up to fix.
            self.protocol.servers.forget()
            self.protocol.stats.incr("not_primary")
            self.protocol.breaker.failure()
            self.protocol.limited.error(
                "not-primary", NOT_PRIMARY_MESSAGE, self.protocol.where, exc
            )
            return
        self.protocol.suspect(getattr(exc, "ddbcache_keys", ()))
        self.protocol.breaker.failure()
        self.protocol.stats.incr("errors")
        self.protocol.limited.warning(
            "redis", "Redis error (%s: %s); calls go to DynamoDB", type(exc).__name__, exc
        )

    def _describe_failed(self, table: str, exc: Exception) -> None:
        self.protocol.limited.warning(
            f"describe:{table}",
            "DescribeTable %s failed (%s); writes to it invalidate the whole table. "
            "Pass key_schema={%r: ('hash', 'range')} or set DDBCACHE_KEY_SCHEMA=%s=hash:range "
            "to avoid the call.",
            table,
            exc,
            table,
            table,
        )


class SyncHooks(Hooks):
    """Handlers for botocore clients."""

    def __init__(
        self, protocol: Protocol, client: Any, transport: SyncTransport, work: Any = None
    ) -> None:
        super().__init__(protocol, client)
        self.transport = transport
        # botocore runs after-call-error for an Exception only: a KeyboardInterrupt or
        # a gevent.Timeout (BaseExceptions) ends a call with no handler run.
        client._make_api_call = self._guard(client._make_api_call)

    def _guard(self, make_api_call: Any) -> Any:
        def _make_api_call(operation_name: str, api_params: Any) -> Any:
            scope: list[Any] = []
            token = _scope.set(scope)
            try:
                return make_api_call(operation_name, api_params)
            except BaseException as exc:
                if scope and not isinstance(exc, Exception):
                    self._interrupted(scope)
                raise
            finally:
                _scope.reset(token)

        return _make_api_call

    def _interrupted(self, scope: list[Any]) -> None:
        """Writes of unknown outcome are held for the background worker; leases given back."""
        for plan in scope:
            if isinstance(plan, WritePlan):
                self.protocol.stats.incr("writes_cancelled")
                self._remember(plan, None)
            elif isinstance(plan, ReadPlan):
                self.protocol.abandon(plan)

    def serve_cached_read(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
        """before-call: answer from the cache, or shape the real request of a miss."""
        plan = self._read_plan(context)
        if plan is None:
            return None
        response = self._run(self.protocol.serve(plan))
        if response is _FAILED:
            self.protocol.abandon(plan)
        return self._answer(plan, response, params)

    def store_read_result(
        self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        """after-call of a read: fill what this call leased."""
        plan = self._read_plan(context)
        if plan is not None:
            fills = self.protocol.completed(plan, parsed, http_response.status_code < 300)
            if fills:
                self._run(self.protocol.fill(fills))
            _finished(plan)
            if self._may_rescue(plan, http_response):
                answer = self._run(self.protocol.rescue(plan, http_response.status_code, parsed))
                self._replace(http_response, parsed, answer)

    def release_leases(self, context: dict[str, Any], **_: Any) -> None:
        """after-call-error of a read: the call failed, give the leases back."""
        plan = self._read_plan(context)
        if plan is not None:
            self._run(self.protocol.release(plan))
            _finished(plan)

    def invalidate_written_items(
        self, context: dict[str, Any], parsed: dict[str, Any] | None = None, **_: Any
    ) -> None:
        """after-call / after-call-error of a write: drop what it touched, whatever the outcome."""
        self._invalidate(self._write_plan(context, parsed), parsed)

    def invalidate_unknown_write(
        self, context: dict[str, Any], parsed: dict[str, Any] | None = None, **_: Any
    ) -> None:
        """after-call / after-call-error of an operation not in the policy table."""
        self._invalidate(self._unknown_write(context, parsed), parsed)

    def drop_missing_table(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        """after-call of any call: ResourceNotFoundException drops the table's entries, schema."""
        tables = self._missing_tables(parsed, context)
        if tables:
            self._run(self.protocol.forget_tables(tables, MISSING))

    def _invalidate(self, plan: WritePlan | None, parsed: dict[str, Any] | None) -> None:
        if plan is None:
            return
        _finished(plan)
        if self._changed_nothing(parsed):
            return
        if self._run(self.protocol.invalidate(plan, parsed)) is _FAILED:
            self._remember(plan, parsed)

    def _run(self, op: Op[T]) -> T:
        """Drive one protocol step; the single boundary for Redis errors."""
        if not self.protocol.breaker.allow():
            op.close()
            return _FAILED  # type: ignore[no-any-return]
        try:
            result = self._drive(op)
        except RedisError as exc:
            self._failed(exc)
            return _FAILED  # type: ignore[no-any-return]
        self.protocol.breaker.success()
        return result

    def _drive(self, op: Op[T]) -> T:
        return drive(op, self.transport, self._describe)

    def _describe(self, table: str) -> TableSchema | None:
        client = self._client()
        if client is None:
            return None
        return self._schema(table, lambda: client.describe_table(TableName=table))


def drive(op: Op[T], transport: SyncTransport, describe: Callable[[str], TableSchema | None]) -> T:
    """Carry out a protocol step's effects, blocking."""
    try:
        effect = next(op)
        while True:
            if isinstance(effect, RedisBatch):
                result: Any = transport.execute(effect.calls, effect.errors_as_values)
            elif isinstance(effect, Sleep):
                time.sleep(effect.seconds)
                result = None
            elif isinstance(effect, DescribeTable):
                result = describe(effect.table)
            else:  # pragma: no cover - the effect set is closed
                raise TypeError(f"unknown effect {effect!r}")
            effect = op.send(result)
    except StopIteration as done:
        value: T = done.value
        return value


async def drive_async(
    op: Op[T],
    transport: AsyncTransport,
    describe: Callable[[str], Awaitable[TableSchema | None]] | None = None,
) -> T:
    """:func:`drive`, awaiting (aiobotocore)."""
    try:
        effect = next(op)
        while True:
            if isinstance(effect, RedisBatch):
                result: Any = await transport.execute(effect.calls, effect.errors_as_values)
            elif isinstance(effect, Sleep):
                await asyncio.sleep(effect.seconds)
                result = None
            elif isinstance(effect, DescribeTable):
                result = await describe(effect.table) if describe is not None else None
            else:  # pragma: no cover - the effect set is closed
                raise TypeError(f"unknown effect {effect!r}")
            effect = op.send(result)
    except StopIteration as done:
        value: T = done.value
        return value


def _error_code(parsed: Mapping[str, Any] | None) -> str | None:
    error = (parsed or {}).get("Error")
    return error.get("Code") if isinstance(error, Mapping) else None


def _reshape_body(plan: ReadPlan, request: dict[str, Any]) -> None:
    """Rewrite the serialized JSON body of a miss (only when the plan changes it)."""
    if not plan.strict and plan.batch is None:
        return
    body = json.loads(request["body"])
    if shape_miss_request(plan, body):
        request["body"] = json.dumps(body).encode("utf-8")


class AsyncHooks(Hooks):
    """Handlers for aiobotocore clients (coroutines; planning needs no I/O and stays sync)."""

    def __init__(
        self, protocol: Protocol, client: Any, transport: AsyncTransport, work: Any = None
    ) -> None:
        super().__init__(protocol, client)
        self.transport = transport
        self.work: AsyncBackgroundWork = work or AsyncBackgroundWork(
            protocol, lambda op: drive_async(op, transport)
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
        response = await self._run(self.protocol.serve(plan))
        if response is _FAILED:
            self.protocol.abandon(plan)
        return self._answer(plan, response, params)

    async def store_read_result(
        self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        """after-call of a read: fill what this call leased."""
        plan = self._read_plan(context)
        if plan is not None:
            fills = self.protocol.completed(plan, parsed, http_response.status_code < 300)
            if fills:
                await self._run(self.protocol.fill(fills))
            _finished(plan)
            if self._may_rescue(plan, http_response):
                answer = await self._run(
                    self.protocol.rescue(plan, http_response.status_code, parsed)
                )
                self._replace(http_response, parsed, answer)

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
            result = await drive_async(op, self.transport, self._describe)
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
