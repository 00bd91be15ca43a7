"""``register()``: attach the handlers to a session or client; the handle it returns.

The HANDLERS table below is the whole wiring: which event, which handler,
which operations. A session gets one ``creating-client-class.dynamodb``
handler that mixes a tiny ``__init__`` into every DynamoDB client class it
creates afterwards; that ``__init__`` attaches the per-client handlers. An
existing client is attached directly (a session's handlers are copied into a
client when it is created, so registering on a session later cannot reach it).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from redis.exceptions import RedisError, ResponseError

from . import forks, layout_marker, peek, tracking
from .config import Options, Settings, Unpack, env_flag
from .connections import Connections, connect_async, connect_holder, exit_twin, redact
from .errors import CacheConnectionError, RegistrationError
from .handlers import AsyncHooks, SyncHooks, drive, drive_async
from .keys import Location, NotCanonical, TableRef, refs_for_table_arn
from .near import listen_async
from .peek import Peek
from .plan import Invalidation, Slot
from .policy import POLICIES, Action
from .protocol import NOT_PRIMARY_MESSAGE, Protocol
from .resilience import EXIT_FLUSH_S, AsyncBackgroundWork, BackgroundWork, refused
from .scripts import SCRIPTS
from .transport import AsyncTransport, SyncTransport, node_lookup

log = logging.getLogger("ddbcache_hooks")
R = TypeVar("R", bound="Registration")

_READS = frozenset({Action.ITEM_READ, Action.BATCH_READ, Action.QUERY_READ})
_WRITES = frozenset({Action.WRITE, Action.OBSERVE})

#: (event, handler method, registration priority, operations the event is per).
#: An empty action set means one event for every operation.
HANDLERS: tuple[tuple[str, str, str, frozenset[Action]], ...] = (
    ("before-parameter-build.dynamodb", "plan_call", "last", frozenset()),
    ("before-call.dynamodb.{op}", "serve_cached_read", "middle", _READS),
    ("after-call.dynamodb.{op}", "store_read_result", "middle", _READS),
    ("after-call-error.dynamodb.{op}", "release_leases", "middle", _READS),
    ("before-call.dynamodb.{op}", "register_write_intent", "middle", frozenset({Action.WRITE})),
    ("after-call.dynamodb.{op}", "invalidate_written_items", "middle", _WRITES),
    ("after-call-error.dynamodb.{op}", "invalidate_written_items", "middle", _WRITES),
    ("after-call.dynamodb", "drop_missing_table", "middle", frozenset()),
    ("after-call.dynamodb", "invalidate_unknown_write", "middle", frozenset()),
    ("after-call-error.dynamodb", "invalidate_unknown_write", "middle", frozenset()),
)


def handler_rows() -> list[tuple[str, str, str]]:
    """HANDLERS expanded over the policy table: (event, method, priority)."""
    rows = []
    for event, method, priority, actions in HANDLERS:
        if not actions:
            rows.append((event, method, priority))
            continue
        for op, policy in POLICIES.items():
            if policy.action in actions:
                rows.append((event.format(op=op), method, priority))
    return rows


#: Every client any registration attached to, so two never attach to one client.
_attached: weakref.WeakKeyDictionary[Any, Registration] = weakref.WeakKeyDictionary()
#: Session event emitters registered on, so registering twice returns the same handle.
_sessions: weakref.WeakKeyDictionary[Any, Registration] = weakref.WeakKeyDictionary()
_lock = threading.RLock()


@forks.in_child
def _new_lock_in_child() -> None:
    global _lock
    _lock = threading.RLock()


class Registration:
    """The handle ``register()`` returns."""

    def __init__(
        self,
        protocol: Protocol,
        transport: Any,
        hooks_factory: Callable[..., Any],
        *,
        from_environment: bool = False,
    ):
        self.from_environment = from_environment
        """Made by environment activation; a registration made in code takes over its clients."""
        self.on_unregister: Callable[[], None] | None = None
        """Called once by :meth:`unregister` (environment activation stops attaching)."""
        self._protocol = protocol
        self._transport = transport
        if transport is not None:
            protocol.node_of = node_lookup(transport)
        self._hooks_factory = hooks_factory
        self._clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        #: Where the attached clients' requests went (an ordered set; a few entries).
        self._locations: dict[Location, None] = {}
        self._sessions: list[Any] = []
        self._active = True
        self._uid = f"ddbcache-hooks-{id(self):x}"
        self._flusher: Any = None
        self._subscriber: Any = None
        self._work: Any = None
        # Mixed into every DynamoDB client class the registered sessions create.
        self._mixin = type("DynamoDBCacheHooks", (_ClientMixin,), {"_ddbcache": self})

    def _start_background(self, holder: Connections) -> None:
        """Counters flushed to Redis and OpenTelemetry, the near cache's subscription,
        the worker that replays held invalidations (started again in a forked child)."""
        from . import metrics

        protocol = self._protocol
        self._work = BackgroundWork(
            protocol, lambda op: drive(op, self._transport, lambda table: None)
        )
        protocol.wake = self._work.wake
        self._start_threads(holder.client)
        holder.on_rebuild.append(self._restart_after_fork)
        metrics.export_opentelemetry(self.stats, lambda: self._active, protocol.settings.namespace)

    def _set_clock(self) -> None:
        """Learn the server's clock before the first lookup (leases are bounded by it)."""
        try:
            seconds, micros = self._transport.client.time()
        except RedisError:
            return  # unknown until the first lookup's reply: that lease is bounded by lease_ms
        self._protocol.clock.observe(int(seconds) * 1000 + int(micros) // 1000)

    def _refused(self, exc: BaseException) -> bool:
        """Whether Redis refused a background command (an ACL): then counted, reported once."""
        return refused(exc, self._protocol.settings.namespace, self._protocol.stats)

    def _start_threads(self, client: Any) -> None:
        from . import metrics
        from .census import Census

        settings = self._protocol.settings
        if settings.access_recheck_s or settings.isolation != "shared":
            self._protocol.census = Census(
                client, settings.namespace, shared=settings.isolation == "shared"
            )
        if self._protocol.near is not None:
            from .near import Subscriber

            self._subscriber = Subscriber(
                self._protocol.near, client, self._protocol.channel, refused=self._refused
            )
        if settings.metrics_flush_s:
            self._flusher = metrics.Flusher(
                self.stats, client, settings.namespace, settings.metrics_flush_s
            )

    def _restart_after_fork(self, client: Any) -> None:
        """In a forked child, on first use: the parent's threads do not exist here."""
        if not self._active:
            return
        if self._protocol.near is not None:
            self._protocol.near.online = False
            self._protocol.near.clear()
        self._start_threads(client)
        if self._work.pending():
            self._work.wake()

    @property
    def settings(self) -> Settings:
        """The validated options this registration runs with."""
        return self._protocol.settings

    @property
    def active(self) -> bool:
        """False after ``unregister()``, or when ``DDBCACHE_ENABLED=0`` switched it off."""
        return self._active

    def stats(self) -> dict[str, Any]:
        """Counters of this registration (hits, misses, bypasses, fills, invalidations, errors…)."""
        return self._protocol.stats.snapshot()

    def invalidate(self, table: str | TableRef, key: Mapping[str, Any]) -> bool:
        """Drop one item's entries, e.g. after a write made outside registered clients.

        Also drops the Query/Scan pages a write of that item would have dropped.

        Args:
            table: a TableRef; or a table ARN; or a name, meaning that table in
                every Region and endpoint the registration's clients use.
            key: the primary key, low-level (``{"pk": {"S": "a"}}``) or Python values.

        Returns True when Redis took it; False when it was kept for replay.
        Raises ValueError for an invalid table or key.
        """
        return self._deliver(self._item_invalidation(table, key))

    def invalidate_table(self, table: str | TableRef) -> bool:
        """Drop every entry of one table (items, queries and scans) by replacing its tokens.

        ``table`` as for :meth:`invalidate`.
        """
        return self._deliver(self._table_invalidation(table))

    def peek(self, table: str | TableRef, key: Mapping[str, Any], **variant: Any) -> Peek:
        """What a GetItem of ``key`` would find in the cache now, without changing anything.

        Args:
            table: as for :meth:`invalidate`; a name must name one place (else
                pass its ARN or a TableRef).
            key: the primary key, low-level (``{"pk": {"S": "a"}}``) or Python values.
            **variant: the GetItem parameters that choose the entry:
                ``ProjectionExpression``, ``ExpressionAttributeNames``, ``AttributesToGet``.

        Raises ValueError for an invalid table, key or parameter, and
        redis.RedisError when Redis does not answer.
        """
        ref, slot = self._peek_slot(table, key, variant)
        if slot is None or self._transport is None:
            return Peek(ref, cached=False, present=False)
        return drive(peek.read(self._protocol, slot), self._transport, lambda table: None)

    def _peek_slot(
        self, table: str | TableRef, key: Mapping[str, Any], variant: Mapping[str, Any]
    ) -> tuple[TableRef, Slot | None]:
        unknown = sorted(set(variant) - _PEEK_PARAMETERS)
        if unknown:
            raise ValueError(
                f"peek() takes the GetItem parameters {sorted(_PEEK_PARAMETERS)}, not {unknown}"
            )
        refs = self.table_refs(table)
        if len(refs) != 1:
            places = ", ".join(ref.place for ref in refs) or "none"
            raise ValueError(f"{table!r} names several places ({places}): pass a TableRef")
        (ref,) = refs
        params = {"TableName": ref.name, "Key": _low_level_key(key), **variant}
        try:
            return ref, self._protocol.planner.item_slot(ref, params)
        except NotCanonical as exc:
            raise ValueError(f"invalid key for table {ref.name}: {exc}") from None

    def table_refs(self, table: str | TableRef) -> list[TableRef]:
        """The TableRefs :meth:`invalidate` acts on for ``table``."""
        if isinstance(table, TableRef):
            return [table]
        if self._transport is None and not self._locations:
            return []  # switched off by DDBCACHE_ENABLED=0: nothing was cached
        try:
            refs: dict[TableRef, None] = {}
            for location in self._locations:
                refs.update(dict.fromkeys(location.refs(table)))
            if table.startswith("arn:"):
                refs.update(dict.fromkeys(refs_for_table_arn(table, self.settings)))
        except (NotCanonical, AttributeError) as exc:
            raise ValueError(f"not a table name, ARN or TableRef: {table!r} ({exc})") from None
        if not refs:
            raise ValueError(
                f"no client is attached yet, so the Region of {table!r} is unknown: "
                "pass its ARN or a ddbcache_hooks.TableRef"
            )
        return list(refs)

    def _item_invalidation(self, table: str | TableRef, key: Mapping[str, Any]) -> Invalidation:
        low_level = _low_level_key(key)
        items = []
        for ref in self.table_refs(table):
            try:
                items.extend(self._protocol.planner.written_keys(ref, low_level))
            except NotCanonical as exc:
                raise ValueError(f"invalid key for table {ref.name}: {exc}") from None
        return Invalidation(items=items)

    def _table_invalidation(self, table: str | TableRef) -> Invalidation:
        layout = self._protocol.layout
        return Invalidation(tables={layout.tokens(ref): True for ref in self.table_refs(table)})

    def _deliver(self, invalidation: Invalidation) -> bool:
        if self._transport is None:
            return False  # disabled by DDBCACHE_ENABLED=0: nothing is cached
        try:
            drive(self._protocol.deliver(invalidation), self._transport, lambda table: None)
        except RedisError as exc:
            self._protocol.keep(invalidation)
            log.warning("invalidation kept for replay, Redis failed: %s", exc)
            return False
        return True

    # --- attaching ------------------------------------------------------------------

    def attach_session(self, emitter: Any) -> None:
        """Cache every DynamoDB client created from now on by a session's event emitter."""
        emitter.register(
            "creating-client-class.dynamodb", self._add_mixin, unique_id=self._uid + "-class"
        )
        self._sessions.append(emitter)

    def _add_mixin(self, base_classes: list[type], **_: Any) -> None:
        if self._active:
            base_classes.insert(0, self._mixin)

    def attach_client(self, client: Any) -> None:
        """Attach the handlers to one DynamoDB client.

        A no-op if a registration has it already, except that a registration
        made in code takes a client over from environment activation.
        """
        with _lock:
            owner = _attached.get(client)
            if not self._active or owner is self:
                return
            if owner is not None:
                if self.from_environment or not owner.from_environment:
                    return
                owner._detach(client)
            _attached[client] = self
        hooks = self._hooks_factory(self._protocol, client, self._transport, self._work)
        events = client.meta.events
        for event, method, priority in handler_rows():
            register = events.register_last if priority == "last" else events.register
            register(event, getattr(hooks, method), unique_id=f"{self._uid}-{event}-{method}")
        self._clients[client] = hooks
        self._locations[hooks.location] = None
        log.debug("ddbcache attached to %r", client)

    def unregister(self) -> None:
        """Remove every handler this registration added (sessions and clients)."""
        with _lock:
            self._active = False
            if self._flusher is not None:
                self._flusher.stop()
            self._stop_work()
            if self._subscriber is not None:
                self._subscriber.stop()
            for emitter in self._sessions:
                emitter.unregister("creating-client-class.dynamodb", unique_id=self._uid + "-class")
                _sessions.pop(emitter, None)
            self._sessions.clear()
            for client in list(self._clients):
                self._detach(client)
            self._close_connections()
            if self.on_unregister is not None:
                self.on_unregister()

    def _close_connections(self) -> None:
        """The registration's Redis connections, closed now rather than when collected."""
        if self._transport is not None:
            self._transport.connections.close()

    def _stop_work(self) -> None:
        if self._work is not None:
            self._work.flush(EXIT_FLUSH_S)
            self._work.stop()

    def _detach(self, client: Any) -> None:
        events = client.meta.events
        for event, method, _ in handler_rows():
            events.unregister(event, unique_id=f"{self._uid}-{event}-{method}")
        hooks = self._clients.pop(client, None)
        if hooks is not None:
            hooks.detach(client)
        if _attached.get(client) is self:
            del _attached[client]


#: What may choose a GetItem's entry besides its table and key.
_PEEK_PARAMETERS = frozenset(
    {"ProjectionExpression", "ExpressionAttributeNames", "AttributesToGet"}
)


class _ClientMixin:
    """Attaches the handlers as soon as a client of a registered session exists."""

    _ddbcache: Registration

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ddbcache.attach_client(self)


def _low_level_key(key: Mapping[str, Any]) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeSerializer

    if not isinstance(key, Mapping) or not key:
        raise ValueError(f"key must be a non-empty mapping, got {key!r}")
    serializer = TypeSerializer()
    return {
        name: value if _is_attribute_value(value) else serializer.serialize(value)
        for name, value in key.items()
    }


def _is_attribute_value(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in ("S", "N", "B")


# --- register ----------------------------------------------------------------------


def register(target: Any = None, redis: Any = None, **options: Unpack[Options]) -> Registration:
    """Cache DynamoDB reads made through ``target`` in Redis.

    Args:
        target: a ``boto3.Session``, a ``botocore.session.Session``, an existing
            DynamoDB client (also ``boto3.resource("dynamodb").meta.client``) or
            None for boto3's default session. A session caches every DynamoDB
            client created from it afterwards.
        redis: a ``redis.Redis`` / ``redis.cluster.RedisCluster`` client
            (``decode_responses`` either way) or a ``redis://`` / ``rediss://`` URL.
        **options: keyword options, typed by :class:`~ddbcache_hooks.config.Options`
            (a type checker rejects an unknown name or a wrong type), e.g.
            ``ttl`` (default TTL in seconds, 3600), ``ttl_config`` (TTL per read
            kind: ``item``, ``item_negative``, ``query``, ``scan``), ``namespace``
            (prefix of every key, "CC"); every one is in docs/configuration.md.

    Registering the same session or client twice returns the first handle.
    Raises ConfigurationError (a ValueError) for bad options and
    CacheConnectionError when Redis does not answer.
    """
    kind, resolved = _resolve_target(target)
    existing = already_registered(kind, resolved)
    if existing is not None:
        return existing
    settings = resolve_settings(options)
    if switched_off(settings):
        return inactive(Registration, settings, SyncHooks)
    holder = connect_holder(redis, settings, session=_session_of(target))
    transport = SyncTransport(holder)
    _check(transport, redis, settings)
    protocol = _label(Protocol(settings, cluster=transport.cluster), redis)
    registration = Registration(protocol, transport, SyncHooks)
    registration._set_clock()
    registration._start_background(transport.connections)
    install(registration, kind, resolved)
    log_attached(describe_target(target, kind), redis, settings, transport.cluster, "sync")
    return registration


# Steps register() and register_async() share.


def describe_target(target: Any, kind: str) -> str:
    """What a registration caches, for the line :func:`log_attached` logs."""
    if target is None:
        return "boto3's default session"
    if kind == "session":
        package = type(target).__module__.split(".")[0]
        return f"{'an' if package[0] in 'aeiou' else 'a'} {package} session"
    client = getattr(getattr(target, "meta", None), "client", target)
    meta = getattr(client, "meta", None)
    return (
        f"one DynamoDB client ({getattr(meta, 'region_name', '?')}, "
        f"{getattr(meta, 'endpoint_url', '?')})"
    )


def describe_redis(target: Any) -> str:
    """A Redis URL or client for messages, its secrets masked."""
    if isinstance(target, str):
        return redact(target)
    pool = getattr(target, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    if "host" in kwargs:
        return f"{type(target).__name__} client for {kwargs['host']}:{kwargs.get('port', 6379)}"
    if "path" in kwargs:
        return f"{type(target).__name__} client for {kwargs['path']}"
    return f"{type(target).__name__} client"


def log_attached(target: str, redis: Any, settings: Settings, cluster: bool, mode: str) -> None:
    """The one INFO line that says caching is on: what, where, namespace, mode."""
    log.info(
        "ddbcache-hooks: caching DynamoDB reads of %s in %s (namespace %r, %s, %s)",
        target,
        describe_redis(redis),
        settings.namespace,
        mode,
        "cluster" if cluster else "single node",
    )
    if settings.cluster_buckets and not cluster:
        log.warning(
            "ddbcache-hooks: cluster_buckets=%d has no effect: %s is a single node, where "
            "every key is on the one server already; unset DDBCACHE_CLUSTER_BUCKETS",
            settings.cluster_buckets,
            describe_redis(redis),
        )


def already_registered(kind: str, resolved: Any) -> Registration | None:
    """The handle of an earlier registration in code on the same session or client."""
    with _lock:
        existing = (_sessions if kind == "session" else _attached).get(resolved)
    if existing is not None and existing.active and not existing.from_environment:
        log.debug("already registered on %r; returning the existing handle", resolved)
        return existing
    return None


#: Options that were named parameters of register() once, where None meant "the default".
_NONE_IS_DEFAULT = ("ttl", "ttl_config", "namespace")


def resolve_settings(options: Mapping[str, object]) -> Settings:
    """The keyword options, over DDBCACHE_* variables, over the defaults."""
    given = {
        name: value
        for name, value in options.items()
        if value is not None or name not in _NONE_IS_DEFAULT
    }
    return Settings.resolve(given, environ=_environ())


def switched_off(settings: Settings) -> bool:
    """An explicit DDBCACHE_ENABLED=0 wins over code."""
    if env_flag("ENABLED") is False:
        log.info("DDBCACHE_ENABLED=0: DynamoDB calls stay uncached")
        return True
    return False


def inactive(cls: type[R], settings: Settings, hooks: Callable[..., Any]) -> R:
    registration = cls(Protocol(settings), None, hooks)
    registration._active = False
    return registration


def install(registration: Registration, kind: str, resolved: Any) -> None:
    with _lock:
        if kind == "session":
            registration.attach_session(resolved)
            _sessions[resolved] = registration
            _watch_other_sessions()
            # Clients the session made before: botocore gave them no hooks of ours.
            for client in tracking.clients_of(resolved):
                registration.attach_client(client)
        else:
            registration.attach_client(resolved)


# --- clients no registration reaches (tracking.py says so) ---------------------------


def _watch_other_sessions() -> None:
    """Once a session is registered, look at every DynamoDB client any session makes."""
    tracking.watch_unreached(lambda: len(_session_registrations()), lambda c: c in _attached)


def _session_registrations() -> list[Registration]:
    with _lock:
        return [
            r
            for r in _sessions.values()
            if r.active and not r.from_environment and r._hooks_factory is SyncHooks
        ]


def register_from_environment(
    environ: Mapping[str, str], on_unregister: Callable[[], None] | None = None
) -> Registration | None:
    """The registration of environment activation (``DDBCACHE_*``); None when it cannot be made.

    Never raises: a problem is logged once, clearly, and the application runs uncached.
    ``on_unregister`` runs when the registration is unregistered (the start-up
    hook passes what stops its attaching, so this module need not import it).
    """
    url = environ.get("DDBCACHE_REDIS_URL", "")
    try:
        settings = Settings.resolve({}, environ=environ)
        transport = SyncTransport(connect_holder(url, settings))
        _check(transport, url, settings)
    except Exception as exc:
        log.warning("ddbcache-hooks: caching is off: %s", exc)
        return None
    log_attached(
        "every DynamoDB client (environment activation)", url, settings, transport.cluster, "sync"
    )
    registration = Registration(
        _label(Protocol(settings, cluster=transport.cluster), url),
        transport,
        SyncHooks,
        from_environment=True,
    )
    registration.on_unregister = on_unregister
    registration._set_clock()
    registration._start_background(transport.connections)
    return registration


def _environ() -> Mapping[str, str]:
    return os.environ


def is_async(obj: Any) -> bool:
    """Whether an object comes from aiobotocore / aioboto3 (their classes subclass botocore's)."""
    return any(
        klass.__module__.split(".")[0] in ("aiobotocore", "aioboto3") for klass in type(obj).__mro__
    )


def _resolve_target(target: Any) -> tuple[str, Any]:
    """("session", its event emitter) or ("client", the DynamoDB client)."""
    import boto3
    import botocore.client
    import botocore.session

    if target is not None and is_async(getattr(getattr(target, "meta", None), "client", target)):
        raise RegistrationError(
            "this is an aiobotocore / aioboto3 object: use "
            "`await ddbcache_hooks.register_async(...)` with a redis.asyncio client"
        )
    if target is None:
        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        target = boto3.DEFAULT_SESSION
    if isinstance(target, boto3.session.Session):
        return "session", target.events
    if isinstance(target, botocore.session.Session):
        return "session", target.get_component("event_emitter")
    client = getattr(getattr(target, "meta", None), "client", target)  # a ServiceResource
    if isinstance(client, botocore.client.BaseClient):
        service = client.meta.service_model.service_name
        if service != "dynamodb":
            raise RegistrationError(f"register() needs a DynamoDB client, got a {service} client")
        return "client", client
    raise RegistrationError(
        "register() target must be a boto3.Session, a botocore Session, a DynamoDB client "
        f"or None; got {type(target).__name__}"
    )


def _session_of(target: Any) -> Any:
    """The session whose credentials sign IAM tokens: the one register() was given, if any."""
    import boto3

    if target is None:
        return boto3.DEFAULT_SESSION
    return target  # a session, or a DynamoDB client (its credentials) or resource


def _check(transport: SyncTransport, target: Any, settings: Settings) -> None:
    """Ping Redis and load the scripts: fail at start-up, not on the first call.
    On a cluster, check that the namespace's processes agree on its key layout."""
    try:
        transport.ping()
        for script in SCRIPTS:
            transport.client.script_load(script.source)
        replication = None if transport.cluster else _replication(transport.client.info)
        layout_marker.check_settings(transport.client, transport.cluster, settings)
    except RedisError as exc:
        raise CacheConnectionError(f"Could not connect to Redis {_where(target)}: {exc}") from exc
    _say_if_replica(replication, target)


def _where(target: Any) -> str:
    return redact(target) if isinstance(target, str) else repr(target)


def _replication(info: Callable[[str], Any]) -> Any:
    """``INFO replication``; None where the ACL denies it, or the server lacks it."""
    try:
        return info("replication")
    except ResponseError:
        return None


def _say_if_replica(replication: Mapping[str, Any] | None, target: Any) -> None:
    """A URL that reaches a replica is said once, at ERROR: the registration runs uncached."""
    role = (replication or {}).get("role", "master")
    if role != "master":
        link = (replication or {}).get("master_link_status", "?")
        log.error(NOT_PRIMARY_MESSAGE, _where(target), f"role {role}, replication link {link}")


def _label(protocol: Protocol, target: Any) -> Protocol:
    protocol.where = _where(target)
    return protocol


# --- The async twin: aiobotocore / aioboto3 ---------------------------------------------


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
        return await drive_async(peek.read(self._protocol, slot), self._transport)

    async def _deliver_async(self, invalidation: Invalidation) -> bool:
        if self._transport is None:
            return False
        try:
            await drive_async(self._protocol.deliver(invalidation), self._transport)
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
        self._work = AsyncBackgroundWork(protocol, lambda op: drive_async(op, self._transport))
        protocol.wake = self._work.wake
        tasks = []
        if settings.metrics_flush_s:
            tasks.append(
                metrics.flush_counters_async(
                    self.stats, client, settings.namespace, settings.metrics_flush_s
                )
            )
        if protocol.near is not None:
            tasks.append(
                listen_async(protocol.near, client, protocol.channel, refused=self._refused)
            )
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(task) for task in tasks]
        metrics.export_opentelemetry(self.stats, lambda: self._active, settings.namespace)

    def _flush_without_loop(self) -> None:
        """At interpreter exit the event loop is gone: deliver what is held over a sync client."""
        if self._exit_twin is None or not self._protocol.backlog:
            return
        transport = SyncTransport(Connections(self._exit_twin))
        worker = BackgroundWork(self._protocol, lambda op: drive(op, transport, _no_schema))
        if not worker.flush(EXIT_FLUSH_S):
            log.warning("exiting with invalidations Redis did not take; entries expire by TTL")

    async def aclose(self) -> None:
        """Deliver held invalidations (waiting a bounded time), then unregister and close
        the registration's connections."""
        if self._work is not None:
            await self._work.flush(EXIT_FLUSH_S)
        self.unregister()
        if self._closing is not None:
            await self._closing

    _closing: Any = None

    def _close_connections(self) -> None:
        """An async client closes on its loop: at once when one runs (``aclose()`` awaits it)."""
        if self._transport is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to close it on: its connections go with the client
        self._closing = loop.create_task(self._transport.connections.aclose())

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
    registration = await _start_async(redis, settings)
    install(registration, kind, resolved)
    cluster = registration._transport.cluster
    log_attached(describe_target(target, kind), redis, settings, cluster, "async")
    return registration


async def register_async_from_environment(
    environ: Mapping[str, str], on_unregister: Callable[[], None] | None = None
) -> AsyncRegistration | None:
    """:func:`register_from_environment` for aiobotocore / aioboto3 clients, on the running
    event loop (a redis.asyncio client belongs to one loop). Never raises."""
    url = environ.get("DDBCACHE_REDIS_URL", "")
    try:
        settings = Settings.resolve({}, environ=environ)
        registration = await _start_async(url, settings, from_environment=True)
    except Exception as exc:
        log.warning("ddbcache-hooks: aiobotocore clients run uncached: %s", exc)
        return None
    registration.on_unregister = on_unregister
    log_attached(
        "every aiobotocore DynamoDB client of this event loop (environment activation)",
        url,
        settings,
        registration._transport.cluster,
        "async",
    )
    return registration


async def _start_async(
    redis: Any, settings: Settings, *, from_environment: bool = False
) -> AsyncRegistration:
    """Connect, load the scripts, learn the clock, start the background tasks."""
    holder = await connect_async(redis, settings)
    transport = AsyncTransport(holder)
    try:
        await transport.ping()
        for script in SCRIPTS:
            await transport.client.script_load(script.source)
        replication = None
        if not transport.cluster:
            with contextlib.suppress(ResponseError):
                replication = await transport.client.info("replication")
        await layout_marker.check_settings_async(transport.client, transport.cluster, settings)
        seconds, micros = await transport.client.time()
        server_ms = int(seconds) * 1000 + int(micros) // 1000
    except RedisError as exc:
        where = redact(redis) if isinstance(redis, str) else repr(redis)
        raise CacheConnectionError(f"Could not connect to Redis {where}: {exc}") from exc
    _say_if_replica(replication, redis)
    protocol = _label(Protocol(settings, cluster=transport.cluster), redis)
    if holder.policy is not None:
        protocol.call_timeout_ms = holder.policy.timeout_ms
    registration = AsyncRegistration(
        protocol, transport, AsyncHooks, from_environment=from_environment
    )
    if holder.policy is not None:
        registration._exit_twin = exit_twin(redis, settings, holder.policy)
        _registrations.add(registration)
    protocol.clock.observe(server_ms)
    registration._start_background(holder)
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
