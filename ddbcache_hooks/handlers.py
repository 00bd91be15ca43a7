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

from . import access, tracing, writes
from . import schema as schema_mod
from .effects import DescribeTable, Op, RedisBatch, Sleep, migrating
from .keys import TableRef, location_of
from .plan import ReadPlan, WritePlan, shape_miss_request
from .policy import CACHED_OPERATIONS, POLICIES
from .principals import PRINCIPALS
from .protocol import NOT_PRIMARY_MESSAGE, Protocol, not_primary
from .resilience import AsyncBackgroundWork, refused
from .schema import TableSchema
from .transport import AsyncTransport, SyncTransport
from .writethrough import Intent

log = logging.getLogger("ddbcache_hooks")
T = TypeVar("T")

#: Key of the plan in botocore's per-call ``context`` dict.
PLAN = "ddbcache"
#: Key of the call's parameters there (to name the table of a ResourceNotFoundException).
PARAMS = "ddbcache_params"
#: Key of the seconds this call spent in Redis so far (for its span).
REDIS_TIME = "ddbcache_redis_s"
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
_refreshing: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ddbcache_refresh", default=False
)


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


@contextlib.contextmanager
def refresh() -> Iterator[None]:
    """Reads inside this block go to DynamoDB and replace their entries (this thread
    or task only).

    Each read takes its entries' leases as a miss does (what was stored is
    dropped), answers with DynamoDB's response and stores it, so a write that
    races the read still wins: its invalidation makes the fill fail. Inside
    :func:`disabled`, reads bypass the cache and store nothing.
    """
    token = _refreshing.set(True)
    try:
        yield
    finally:
        _refreshing.reset(token)


class Hooks:
    """The handlers of one client that need no I/O (shared by sync and async)."""

    def __init__(self, protocol: Protocol, client: Any) -> None:
        self.protocol = protocol
        self._client = weakref.ref(client)
        #: Where this client's requests go: fixed for the client's life, so computed once.
        self.location = location_of(client, protocol.settings.account_id)
        #: When set, reads are cached only while it returns True (compat.CacheClient).
        self.gate: Callable[[], bool] | None = None
        #: Signs this client's requests; holds the credentials (their identity, no I/O).
        self._signer = getattr(client, "_request_signer", None)
        self._recheck_s = protocol.settings.access_recheck_s
        self._isolated = protocol.settings.isolation == "principal"
        #: How long a proving read is waited for at most if it never reports back.
        self._flight_s = max(protocol.settings.lease_ms, protocol.settings.lease_wait_ms) / 1000
        meta = getattr(client, "meta", None)
        self._region = getattr(meta, "region_name", None)
        #: STS goes where DynamoDB does when that is no AWS endpoint (a test server).
        self._sts_endpoint = self.location.where if "/" in self.location.where else None

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
        principal = ""
        if self._isolated and model.name in CACHED_OPERATIONS:
            principal = self._principal() or ""
        plan = self.protocol.planner.plan(model.name, params, self.location, principal)
        if isinstance(plan, ReadPlan) and (
            _bypass.get()
            or (self.gate is not None and not self.gate())
            or (self._isolated and not principal)
        ):
            plan = None  # inside disabled(), not called through a compat.CacheClient, no principal
        elif isinstance(plan, ReadPlan) and self._recheck_s:
            self._check_access(plan)
        if plan is None:
            if model.name in CACHED_OPERATIONS:
                self.protocol.stats.incr("bypasses")
                log.debug("%s bypasses the cache", model.name)
                tracing.mark_bypass()
            return
        if isinstance(plan, ReadPlan) and _refreshing.get():
            plan.refresh = True
        if isinstance(plan, WritePlan) and self.protocol.write_through:
            self.protocol.plan_through(plan)
        context[PLAN] = plan
        scope = _scope.get()
        if scope is not None:
            scope.append(plan)

    def _principal(self) -> str | None:
        credentials = getattr(self._signer, "_credentials", None)
        return PRINCIPALS.scope(credentials, self._region, self._sts_endpoint)

    def _check_access(self, plan: ReadPlan) -> None:
        """A read whose grants DynamoDB has not (recently) answered for these credentials
        goes to DynamoDB: a probe (it may fill, never hit). One probe per process at a
        time reads DynamoDB for grants whose entries are there; the others wait for it."""
        signer = self._signer
        identity = access.credential_identity(signer)
        grants = access.grants(plan)
        unproven = grants if identity is None else access.GATE.unproven(identity, grants)
        flight = None
        if unproven:
            plan.probe = True
            for slot in plan.slots:
                slot.probe = plan.table is not None or (slot.table, None) in unproven
            plan.proved = lambda: access.proved(signer, unproven)
            # Credentials not loaded yet are told apart by their signer until they are.
            flying = identity or f"signer:{id(signer):x}"
            if access.GATE.lead(flying, unproven, self._flight_s):
                flight = flying
            else:
                plan.awaited = lambda: access.GATE.in_flight(flying, unproven)
            self.protocol.stats.incr("access_checks")
        plan.access = (identity, grants, unproven, flight)

    @staticmethod
    def _landed(plan: ReadPlan) -> None:
        """A read that ended without an answer: its proving read, if it was one, is over."""
        if plan.access is not None and plan.access[3] is not None:
            access.GATE.landed(plan.access[3], plan.access[2])

    def _observe_access(self, plan: ReadPlan, status: int, parsed: Mapping[str, Any]) -> None:
        """DynamoDB answered a read: a probe's success proves its grants, a refusal denies them."""
        self._landed(plan)
        identity, grants, unproven, _ = plan.access
        if identity is None:  # not loaded before the call: the signer has them now
            identity = access.credential_identity(self._signer)
            if identity is None:
                return
        if status < 300:
            if unproven:
                access.GATE.prove(identity, unproven, self._recheck_s)
                if self.protocol.census is not None:
                    credentials = getattr(self._signer, "_credentials", None)
                    self.protocol.census.note(credentials, self._region, self._sts_endpoint)
        elif access.is_denial(status, parsed):
            # A batch mixing proved tables and unproved ones: the unproved ones are refused
            # (a proved one that is refused too was revoked; its proof runs out in time).
            access.GATE.deny(identity, unproven or grants, self._recheck_s)
            self.protocol.stats.incr("access_denied")
            log.debug("%s refused by DynamoDB: no hits for %s", plan.operation, grants)

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

    @staticmethod
    def _traced(
        plan: ReadPlan, context: dict[str, Any], started: float, answer: Any = None
    ) -> None:
        """Add the time since ``started`` to the call's Redis time; mark its span."""
        spent = context.get(REDIS_TIME, 0.0) + time.perf_counter() - started
        context[REDIS_TIME] = spent
        tracing.mark_read(plan, spent, answer if isinstance(answer, dict) else None)

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

    @staticmethod
    def _intent_to_register(context: Mapping[str, Any]) -> WritePlan | None:
        """The write whose intent before-call registers (write-through on)."""
        plan = context.get(PLAN)
        if isinstance(plan, WritePlan) and isinstance(plan.through, Intent):
            return None if plan.through.registered else plan
        return None

    def _intent_failed(self, plan: WritePlan) -> None:
        """Redis did not take the intent: the write only invalidates."""
        plan.through = None
        self.protocol.skip_write_fill("redis")

    def _failed_through(self, plan: WritePlan) -> None:
        """Redis did not take a write-through write's completion: nothing stored."""
        if isinstance(plan.through, Intent) and plan.through.registered:
            plan.through = None
            self.protocol.skip_write_fill("redis")

    def _uncertain(self, plan: WritePlan) -> None:
        """A write-through write whose outcome nobody will know: it only invalidates."""
        if isinstance(plan.through, Intent):
            plan.through = None
            self.protocol.skip_write_fill("uncertain")

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
        if refused(exc, self.protocol.settings.namespace, self.protocol.stats):
            return  # a configuration error (ACL): not an outage, the breaker stays closed
        if migrating(exc):
            # A slot in migration the retries on its new node did not get past: a miss
            # (or a held invalidation), not an outage.
            self.protocol.stats.incr("slot_migrations")
            log.debug("Redis slot in migration; this call bypasses the cache: %s", exc)
            return
        if not_primary(exc):
            # A replica behind the URL: not an outage to retry at once, a set-up to fix.
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
                self._uncertain(plan)
                self._remember(plan, None)
            elif isinstance(plan, ReadPlan):
                self.protocol.abandon(plan)

    def serve_cached_read(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
        """before-call: answer from the cache, or shape the real request of a miss."""
        plan = self._read_plan(context)
        if plan is None:
            return None
        started = time.perf_counter()
        response = self._run(self.protocol.serve(plan))
        self._traced(plan, context, started)
        if response is _FAILED:
            self.protocol.abandon(plan)
        return self._answer(plan, response, params)

    def store_read_result(
        self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        """after-call of a read: fill what this call leased."""
        plan = self._read_plan(context)
        if plan is not None:
            started, answer = time.perf_counter(), None
            if plan.access is not None:
                self._observe_access(plan, http_response.status_code, parsed)
            fills = self.protocol.completed(plan, parsed, http_response.status_code < 300)
            if fills:
                self._run(self.protocol.fill(fills))
            _finished(plan)
            if self._may_rescue(plan, http_response):
                answer = self._run(self.protocol.rescue(plan, http_response.status_code, parsed))
                self._replace(http_response, parsed, answer)
            self._traced(plan, context, started, answer)

    def release_leases(self, context: dict[str, Any], **_: Any) -> None:
        """after-call-error of a read: the call failed, give the leases back."""
        plan = self._read_plan(context)
        if plan is not None:
            self._landed(plan)
            self._run(self.protocol.release(plan))
            _finished(plan)

    def register_write_intent(self, context: dict[str, Any], **_: Any) -> None:
        """before-call of a write that may store its image: register its intent."""
        plan = self._intent_to_register(context)
        if plan is not None:
            outcome: Any = self._run(self.protocol.register_intent(plan))
            if outcome is _FAILED:
                self._intent_failed(plan)

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
            if isinstance(plan.through, Intent):
                self.protocol.skip_write_fill("rejected")
                self._run(self.protocol.release_intent(plan))
            return
        if self._run(self.protocol.invalidate(plan, parsed)) is _FAILED:
            self._failed_through(plan)
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
                self._uncertain(plan)
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
            if plan.access is not None:
                self._observe_access(plan, http_response.status_code, parsed)
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
            self._landed(plan)
            await self._run(self.protocol.release(plan))
            _finished(plan)

    async def register_write_intent(self, context: dict[str, Any], **_: Any) -> None:
        """before-call of a write that may store its image: register its intent."""
        plan = self._intent_to_register(context)
        if plan is not None:
            outcome: Any = await self._run(self.protocol.register_intent(plan))
            if outcome is _FAILED:
                self._intent_failed(plan)

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
            if isinstance(plan.through, Intent):
                self.protocol.skip_write_fill("rejected")
                await self._run(self.protocol.release_intent(plan))
            return
        # Shielded: a caller cancelled while this waits (say for a pooled
        # connection) leaves the invalidation running to its end in a task.
        await asyncio.shield(self.work.hand_over(self._deliver_invalidation(plan, parsed)))

    async def _deliver_invalidation(self, plan: WritePlan, parsed: dict[str, Any] | None) -> None:
        outcome: Any = await self._run(self.protocol.invalidate(plan, parsed))
        if outcome is _FAILED:
            self._failed_through(plan)
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
