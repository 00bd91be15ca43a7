"""The library's own Redis connections, whatever the user passed.

The cache's Redis traffic follows one policy (docs/operations.md, "Connections"):

- short time-outs (``redis_timeout_ms``, ``redis_connect_timeout_ms``) and no
  retries with back-off: a failed call goes to DynamoDB at once and counts
  toward the circuit breaker;
- a blocking pool of up to ``redis_max_connections`` connections, opened on
  demand, where a caller waits at most ``redis_pool_wait_ms`` for a free one;
  a caller that still finds none bypasses the cache for that call
  (:class:`PoolBusy`), which is a local condition, never an outage;
- built from the user's connection settings (host, port, db, TLS, ACL user,
  password or ``credential_provider``, cluster nodes), never sharing the
  user's pool: the user's client keeps its own settings for the application's
  own commands.

After ``os.fork()`` a child never touches the parent's sockets or pool locks
(a lock a parent thread held at fork time stays held for ever in the child):
every :class:`Connections` forgets its client in the child and builds a fresh
one on first use. The old client is kept, never closed, so that no finalizer
reaches the parent's sockets either.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aredis
import redis.cluster
from redis.backoff import NoBackoff
from redis.exceptions import MaxConnectionsError, RedisError

from . import forks, iam
from .errors import CacheConnectionError, ConfigurationError, RegistrationError

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("ddbcache_hooks")

#: Time-out floors of async connections: asyncio time-outs also measure how late
#: the event loop gets round to a socket, and in a burst of misses a 50 ms
#: time-out fires while the answer is already there.
ASYNC_MIN_TIMEOUT_MS = 250
ASYNC_MIN_CONNECT_TIMEOUT_MS = 1000
#: Settings of a client that belong to its pool or its retries, not to a connection.
_NOT_CONNECTION = frozenset(
    {
        "retry",
        "retry_on_timeout",
        "retry_on_error",
        "connection_pool",
        "connection_pool_class",
        "connection_class",
        "max_connections",
        "timeout",
        "queue_class",
        "response_callbacks",
        "himport_registry",
        "redis_connect_func",
        "event_dispatcher",
        "host",
        "port",
        "socket_timeout",
        "socket_connect_timeout",
        # Set by the user's pool for itself (maintenance notifications):
        "maint_notifications_pool_handler",
        "orig_host_address",
        "orig_socket_timeout",
        "orig_socket_connect_timeout",
        "oss_cluster_maint_notifications_handler",
        "cache",
    }
)
_URL_SCHEMES = ("redis", "rediss", "unix", "valkey", "valkeys")


class PoolBusy(MaxConnectionsError):
    """Every pooled connection stayed in use for the whole pool wait: bypass, not an outage."""


class Policy:
    """Time-outs and pool limits of the library's connections."""

    def __init__(
        self,
        timeout_ms: int,
        connect_timeout_ms: int,
        max_connections: int,
        pool_wait_ms: int,
        *,
        asynchronous: bool = False,
    ) -> None:
        if asynchronous:
            timeout_ms = max(timeout_ms, ASYNC_MIN_TIMEOUT_MS)
            connect_timeout_ms = max(connect_timeout_ms, ASYNC_MIN_CONNECT_TIMEOUT_MS)
        self.timeout_ms = timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.max_connections = max_connections
        self.pool_wait_ms = min(pool_wait_ms, timeout_ms)

    @classmethod
    def from_settings(cls, settings: Any, *, asynchronous: bool = False) -> Policy:
        return cls(
            settings.redis_timeout_ms,
            settings.redis_connect_timeout_ms,
            settings.redis_max_connections,
            settings.redis_pool_wait_ms,
            asynchronous=asynchronous,
        )

    def connection_kwargs(self, retry: Any) -> dict[str, Any]:
        return {
            "socket_timeout": self.timeout_ms / 1000,
            "socket_connect_timeout": self.connect_timeout_ms / 1000,
            "retry": retry,
        }


def is_cluster(client: Any) -> bool:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    return isinstance(client, (RedisCluster, AsyncRedisCluster))


class _BlockingPool(redis.BlockingConnectionPool):
    #: A pool of the library's own: the transport's packed path may use its
    #: connections (transport.ours).
    ours = True

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.ConnectionError as exc:
            if str(exc) == "No connection available.":
                raise PoolBusy("no free Redis connection within the pool wait") from exc
            raise


def _cluster_pool(wait_s: float, connection_class: Any = None) -> type[_BlockingPool]:
    """A node pool class waiting ``wait_s`` (a cluster client passes no pool time-out),
    its connections of ``connection_class`` when given (a cluster's URL parsing would
    override a class passed as an argument)."""

    class ClusterNodePool(_BlockingPool):
        def __init__(self, **kwargs: Any) -> None:
            kwargs["timeout"] = wait_s
            if connection_class is not None:
                kwargs["connection_class"] = connection_class
            super().__init__(**kwargs)  # type: ignore[no-untyped-call]

    return ClusterNodePool


class _AsyncBlockingPool(aredis.BlockingConnectionPool):
    ours = True

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.ConnectionError as exc:
            if str(exc) == "No connection available.":
                raise PoolBusy("no free Redis connection within the pool wait") from exc
            raise


# --- what the user passed -> how to build the library's client ----------------------


def is_fake(client: Any) -> bool:
    return type(client).__module__.startswith("fakeredis")


def _connection_settings(kwargs: dict[str, Any], *, cluster: bool = False) -> dict[str, Any]:
    """A client's connection settings; a cluster's keep their connection class (TLS)."""
    return {
        k: v
        for k, v in kwargs.items()
        if k not in _NOT_CONNECTION or (cluster and k == "connection_class")
    }


def check_url(url: str) -> str:
    if urlsplit(url).scheme not in _URL_SCHEMES:
        raise RegistrationError(f"redis= URL must start with redis:// or rediss://: {redact(url)}")
    return url.replace("valkey", "redis", 1) if url.startswith("valkey") else url


def sync_builder(
    target: Any, policy: Policy, *, credential_provider: Any = None, connection_class: Any = None
) -> Callable[[], Any]:
    """A function that builds the library's sync client from a URL or a user's client.

    ``credential_provider`` (a redis-py ``CredentialProvider``, e.g. for IAM
    authentication) replaces the password of whatever was passed;
    ``connection_class`` (with a URL: IAM's reconnect at the age limit, iam.py)
    replaces the URL's.
    """
    from redis.retry import Retry

    ClusterNode: Any = redis.cluster.ClusterNode
    RedisCluster: Any = redis.cluster.RedisCluster
    extra = {"credential_provider": credential_provider} if credential_provider else {}
    pool_kwargs: dict[str, Any] = {
        "max_connections": policy.max_connections,
        "timeout": policy.pool_wait_ms / 1000,
    }

    def retry() -> Any:
        return Retry(NoBackoff(), 0)

    if isinstance(target, str):
        url = check_url(target)
        url_class = {"connection_class": connection_class} if connection_class else {}

        def from_url() -> Any:
            pool = _BlockingPool.from_url(
                url, **pool_kwargs, **policy.connection_kwargs(retry()), **extra, **url_class
            )
            return redis.Redis(connection_pool=pool)

        return from_url
    if isinstance(target, RedisCluster):
        manager = target.nodes_manager
        nodes = [(n.host, n.port) for n in manager.startup_nodes.values()]
        settings = {
            **_connection_settings(dict(manager.connection_kwargs), cluster=True),
            **extra,
        }
        remap = manager.address_remap
        (first_host, first_port), *others = nodes
        node_class = connection_class
        if node_class is None and _is_iam_pool(getattr(manager, "connection_pool_class", None)):
            node_class = iam.IAMSSLConnection  # reconnect at the age limit, as the user's do

        def cluster() -> Any:
            # Node pools are built from connection_pool_class only in redis-py's
            # URL mode, hence the first node as a URL (its settings come from kwargs).
            return RedisCluster(
                url=f"redis://{first_host}:{first_port}",
                startup_nodes=[ClusterNode(host, port) for host, port in others] or None,
                connection_pool_class=_cluster_pool(policy.pool_wait_ms / 1000, node_class),
                max_connections=policy.max_connections,
                address_remap=remap,
                **policy.connection_kwargs(retry()),
                **settings,
            )

        return cluster
    pool = target.connection_pool
    # _BlockingPool: a client this module built (the CLI passes one to the streams consumer).
    if type(pool) not in (redis.ConnectionPool, redis.BlockingConnectionPool, _BlockingPool):
        return _as_given(target, f"its pool is a {type(pool).__name__}")
    connection_class = pool.connection_class
    settings = {**_connection_settings(dict(pool.connection_kwargs)), **extra}
    address = _address(pool.connection_kwargs)

    def plain() -> Any:
        new_pool = _BlockingPool(  # type: ignore[no-untyped-call]
            connection_class=connection_class,
            **pool_kwargs,
            **policy.connection_kwargs(retry()),
            **address,
            **settings,
        )
        return redis.Redis(connection_pool=new_pool)

    return plain


def cluster_url_builder(
    url: str, policy: Policy, *, credential_provider: Any = None, connection_class: Any = None
) -> Callable[[], Any]:
    """:func:`sync_builder` for a URL that names a node of a Redis Cluster."""
    from redis.cluster import RedisCluster
    from redis.retry import Retry

    url = check_url(url)
    extra = {"credential_provider": credential_provider} if credential_provider else {}

    def cluster() -> Any:
        return RedisCluster.from_url(
            url,
            connection_pool_class=_cluster_pool(policy.pool_wait_ms / 1000, connection_class),
            max_connections=policy.max_connections,
            **policy.connection_kwargs(Retry(NoBackoff(), 0)),
            **extra,
        )

    return cluster


def async_builder(
    target: Any, policy: Policy, *, credential_provider: Any = None, connection_class: Any = None
) -> Callable[[], Any]:
    """:func:`sync_builder` for ``redis.asyncio`` clients."""
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.connection import SSLConnection
    from redis.asyncio.retry import Retry

    extra = {"credential_provider": credential_provider} if credential_provider else {}

    def retry() -> Any:
        return Retry(NoBackoff(), 0)

    if isinstance(target, str):
        url = check_url(target)

        def from_url() -> Any:
            pool = _AsyncBlockingPool.from_url(
                url,
                max_connections=policy.max_connections,
                timeout=policy.pool_wait_ms / 1000,
                **policy.connection_kwargs(retry()),
                **extra,
            )
            if connection_class is not None:  # redis.asyncio's from_url keeps the URL's
                pool.connection_class = connection_class
            return aredis.Redis(connection_pool=pool)

        return from_url
    if isinstance(target, RedisCluster):
        nodes = [(n.host, n.port) for n in target.nodes_manager.startup_nodes.values()]
        settings = {**_connection_settings(dict(target.connection_kwargs)), **extra}
        if issubclass(target.connection_kwargs.get("connection_class", object), SSLConnection):
            settings["ssl"] = True  # redis.asyncio's cluster takes TLS as a flag
        remap = target.nodes_manager.address_remap

        def cluster() -> Any:
            # redis.asyncio's cluster has no blocking pool: past max_connections a
            # node raises MaxConnectionsError, which is a bypass here, not an outage.
            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                max_connections=policy.max_connections,
                address_remap=remap,
                **policy.connection_kwargs(retry()),
                **settings,
            )

        return cluster
    pool = target.connection_pool
    if type(pool) not in (aredis.ConnectionPool, aredis.BlockingConnectionPool):
        return _as_given(target, f"its pool is a {type(pool).__name__}")
    connection_class = pool.connection_class
    settings = {**_connection_settings(dict(pool.connection_kwargs)), **extra}
    address = _address(pool.connection_kwargs)

    def plain() -> Any:
        new_pool = _AsyncBlockingPool(
            connection_class=connection_class,
            max_connections=policy.max_connections,
            timeout=policy.pool_wait_ms / 1000,
            **policy.connection_kwargs(retry()),
            **address,
            **settings,
        )
        return aredis.Redis(connection_pool=new_pool)

    return plain


def _is_iam_pool(pool_class: Any) -> bool:
    return isinstance(pool_class, type) and issubclass(pool_class, iam.IAMConnectionPool)


def _address(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {name: kwargs[name] for name in ("host", "port") if name in kwargs}


def _as_given(client: Any, why: str) -> Callable[[], Any]:
    log.warning(
        "using the Redis client as given (%s): the cache cannot apply its own time-outs "
        "and pool to it; pass a redis:// URL or a plain redis client for that",
        why,
    )
    return lambda: client


# --- the holder --------------------------------------------------------------------


class Connections:
    """The library's client of one registration; rebuilt lazily in a forked child."""

    def __init__(self, build: Callable[[], Any], policy: Policy | None = None) -> None:
        self._build = build
        self.policy = policy
        self._lock = threading.Lock()
        self._client: Any = None
        #: Called with the new client after a fork rebuilt it (restart background threads).
        self.on_rebuild: list[Callable[[Any], None]] = []
        self._forked = False
        #: The caller's own client, used as it is: never closed here.
        self._given = False
        _live.add(self)

    @classmethod
    def given(cls, client: Any) -> Connections:
        """An in-process client (fakeredis) used as it is."""
        holder = cls(lambda: client)
        holder._client = client
        holder._given = True
        return holder

    def adopt(self, client: Any) -> None:
        """Use a client already built by this holder's builder (connect() probed it)."""
        self._client = client

    @property
    def client(self) -> Any:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = self._build()
                if self._forked:
                    self._forked = False
                    for callback in self.on_rebuild:
                        callback(self._client)
            return self._client

    def close(self) -> None:
        """Close every connection of the library's client now (``unregister()``).

        A client passed in and used as it is (fakeredis) is the caller's, and
        stays open. Used again afterwards, the holder builds a new client.
        """
        with self._lock:
            client, self._client = self._client, None
        if client is not None and not self._given:
            client.close()
            # A client made with a pool of ours leaves that pool open on close().
            pool = getattr(client, "connection_pool", None)
            if pool is not None:
                pool.disconnect()

    async def aclose(self) -> None:
        """:meth:`close` for a ``redis.asyncio`` client (``aclose()``)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and not self._given:
            await client.aclose()
            pool = getattr(client, "connection_pool", None)
            if pool is not None:
                await pool.disconnect()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        if self._client is not None and not is_fake(self._client):
            _abandoned.append(self._client)  # never closed: its sockets are the parent's
            self._client = None
            self._forked = True


_live: weakref.WeakSet[Connections] = weakref.WeakSet()
_abandoned: list[Any] = []


@forks.in_child
def _forget_in_child() -> None:
    for holder in list(_live):
        holder._after_fork_in_child()


def with_connection_class(cluster: Any, connection_class: Any) -> Any:
    """A ``redis.asyncio`` cluster client whose node connections are ``connection_class``
    (its constructor sets the class from the ``ssl`` flag alone)."""
    if connection_class is not None:
        cluster.connection_kwargs["connection_class"] = connection_class
        cluster.nodes_manager.connection_kwargs["connection_class"] = connection_class
        for node in cluster.nodes_manager.startup_nodes.values():
            node.connection_class = connection_class
    return cluster


def sync_twin(
    target: Any, policy: Policy, *, credential_provider: Any = None, connection_class: Any = None
) -> Callable[[], Any] | None:
    """A sync builder for what an async registration was given; None for a cluster or
    an unusual connection class. Used at interpreter exit, when the event loop is gone."""
    from redis.asyncio.connection import Connection as AsyncConnection
    from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
    from redis.asyncio.connection import (
        UnixDomainSocketConnection as AsyncUnixDomainSocketConnection,
    )

    if isinstance(target, str):
        return sync_builder(
            target,
            policy,
            credential_provider=credential_provider,
            connection_class=connection_class,
        )
    pool = getattr(target, "connection_pool", None)
    if pool is None or type(pool) not in (aredis.ConnectionPool, aredis.BlockingConnectionPool):
        return None
    twins: dict[type, type] = {
        AsyncConnection: redis.Connection,
        AsyncSSLConnection: redis.SSLConnection,
        AsyncUnixDomainSocketConnection: redis.UnixDomainSocketConnection,
    }
    connection_class = twins.get(pool.connection_class)
    if connection_class is None:
        return None
    settings = _connection_settings(dict(pool.connection_kwargs))
    address = _address(pool.connection_kwargs)

    def plain() -> Any:
        from redis.retry import Retry

        new_pool = _BlockingPool(  # type: ignore[no-untyped-call]
            connection_class=connection_class,
            max_connections=2,
            timeout=policy.pool_wait_ms / 1000,
            **policy.connection_kwargs(Retry(NoBackoff(), 0)),
            **address,
            **settings,
        )
        return redis.Redis(connection_pool=new_pool)

    return plain


# --- The library's connections, built from a URL or the user's client: sync and async ---


def redact(url: str) -> str:
    """A URL with its password masked (``user:****@``, ``?password=****``), for messages."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":****@"))
    query = re.sub(r"(?i)((?:^|&)password=)[^&]*", r"\1****", parts.query)
    return urlunsplit(parts._replace(query=query))


def connect(
    redis_target: Any, settings: Settings, session: Any = None, *, credential_provider: Any = None
) -> Any:
    """The library's Redis client (see ``connections.py``); :func:`connect_holder` keeps it."""
    return connect_holder(
        redis_target, settings, session=session, credential_provider=credential_provider
    ).client


def connect_holder(
    redis_target: Any,
    settings: Settings,
    *,
    session: Any = None,
    credential_provider: Any = None,
) -> Connections:
    """The library's connections, built from a URL or from the client the user passed.

    The user's client is only read for its settings (host, port, db, TLS, user,
    password or credential provider, cluster nodes): the cache's traffic runs on
    a pool of its own with the cache's time-outs (docs/operations.md).
    ``session`` signs the IAM tokens when the options ask for IAM authentication
    (iam.py): the pools then authenticate with a token and reconnect at the age limit.
    """
    if redis_target is None:
        raise RegistrationError("register() needs redis= (a redis client or a redis:// URL)")
    if not isinstance(redis_target, str):
        if not hasattr(redis_target, "pipeline"):
            raise RegistrationError(
                f"redis= must be a redis client or URL, got {type(redis_target).__name__}"
            )
        if type(redis_target).__module__.startswith("redis.asyncio"):
            raise RegistrationError(
                "register() needs a synchronous redis client; this redis.asyncio client is for "
                "register_async() with aiobotocore / aioboto3"
            )
        if settings.iam_user:
            raise ConfigurationError(
                "iam_user applies to a rediss:// URL; a Redis client built by the application "
                "takes credential_provider=ddbcache_hooks.iam.ElastiCacheIAMProvider(...)"
            )
        if is_fake(redis_target):
            return Connections.given(redis_target)
    policy = Policy.from_settings(settings)
    connection_class = None
    if isinstance(redis_target, str):
        redis_target, auth = iam.redis_options(check_url(redis_target), settings, session)
        credential_provider = auth.get("credential_provider", credential_provider)
        connection_class = auth.get("connection_class")
    build = sync_builder(
        redis_target,
        policy,
        credential_provider=credential_provider,
        connection_class=connection_class,
    )
    if isinstance(redis_target, str):
        plain = build()
        try:
            cluster = plain.info("cluster").get("cluster_enabled") in (1, "1")
        except redis.exceptions.NoPermissionError:
            cluster = False  # an ACL user without INFO: pass a RedisCluster client for cluster mode
        except RedisError as exc:
            raise CacheConnectionError(
                f"Could not connect to Redis at {redact(redis_target)}: {exc}"
            ) from exc
        if cluster:
            plain.close()
            build = cluster_url_builder(
                redis_target,
                policy,
                credential_provider=credential_provider,
                connection_class=connection_class,
            )
        else:
            holder = Connections(build, policy)
            holder.adopt(plain)
            return holder
    return Connections(build, policy)


async def connect_async(
    redis_target: Any, settings: Settings, *, credential_provider: Any = None
) -> Connections:
    """The library's async connections, built from a URL or the client the user passed.

    As for :func:`connect_holder`: the user's client is only
    read for its settings; time-outs are floored (``connections.ASYNC_MIN_*``).
    IAM tokens (iam.py) are signed with a botocore session's credential chain (an
    aiobotocore session's credentials are awaitable; a token is made inside
    redis-py's connect), and the pools reconnect at the age limit.
    """
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    if redis_target is None:
        raise RegistrationError("register_async() needs redis= (a redis.asyncio client or a URL)")
    if not isinstance(redis_target, str):
        if isinstance(redis_target, (redis.Redis, RedisCluster)):
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
    except redis.exceptions.NoPermissionError:
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


def exit_twin(target: Any, settings: Settings, policy: Policy) -> Any:
    """A sync builder of the same connections (IAM included), for the flush at exit."""
    if not isinstance(target, str):
        return sync_twin(target, policy)
    url, auth = iam.redis_options(check_url(target), settings)
    return sync_twin(
        url,
        policy,
        credential_provider=auth.get("credential_provider"),
        connection_class=auth.get("connection_class"),
    )
