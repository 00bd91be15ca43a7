"""IAM authentication for Amazon ElastiCache (Redis OSS >= 7 and Valkey, node-based and serverless).

The password of an IAM-enabled ElastiCache user is a SigV4-presigned request for the
``connect`` action of the cache, valid for 15 minutes. :class:`ElastiCacheIAMProvider` is a
redis-py credential provider that builds that token with botocore's own signer, from the
credentials of the application's botocore session, and builds a new one before the old one
expires. ElastiCache checks the token only when a connection authenticates, and closes
IAM-authenticated connections after 12 hours: :class:`IAMSSLConnection` reconnects a pooled
connection older than :data:`MAX_CONNECTION_AGE_S` when it is checked out, so the library
never runs into that limit in the middle of a call.

With a ``rediss://`` URL the library sets this up itself from the ``iam_*`` options (or
``DDBCACHE_IAM_*`` variables, or the URL's own query: ``rediss://user@host:6379/?iam=1&
cache_name=my-cache``; see docs/elasticache.md). A client built by the application takes
``credential_provider=ElastiCacheIAMProvider(...)`` directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.connection import ConnectionPool, SSLConnection
from redis.credentials import CredentialProvider

from .errors import ConfigurationError

__all__ = [
    "MAX_CONNECTION_AGE_S",
    "REFRESH_AFTER_S",
    "TOKEN_LIFETIME_S",
    "AsyncIAMSSLConnection",
    "ElastiCacheIAMProvider",
    "IAMConnectionPool",
    "IAMSSLConnection",
    "redis_options",
]

#: How long a token is valid; ElastiCache accepts at most 15 minutes.
TOKEN_LIFETIME_S = 900
#: A token older than this is replaced before it is handed out again (5 minutes of margin).
REFRESH_AFTER_S = 600
#: ElastiCache closes IAM-authenticated connections after 12 hours; reconnect an hour before.
MAX_CONNECTION_AGE_S = 11 * 3600

#: URL query parameters that configure IAM authentication (removed before redis-py sees them).
URL_PARAMETERS = ("iam", "cache_name", "region", "serverless")
_TRUE = ("1", "true", "yes", "on")


class ElastiCacheIAMProvider(CredentialProvider):
    """``(user, token)`` for redis-py's ``AUTH``, the token a presigned ``connect`` request.

    Args:
        user: the ElastiCache user ID (for IAM users the user name and ID are the same).
        cache_name: the replication group ID (node-based) or the serverless cache name.
        region: the cache's AWS Region; the session's Region when None.
        serverless: True for ElastiCache Serverless (adds ``ResourceType=ServerlessCache``).
        session: a ``boto3.Session`` or ``botocore.session.Session`` whose credentials sign
            the token (refreshed credentials are picked up on every new token); None for a
            default botocore session (the usual credential chain).
        clock: seconds, monotonic; injectable for tests.
    """

    def __init__(
        self,
        user: str,
        cache_name: str,
        region: str | None = None,
        *,
        serverless: bool = False,
        session: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(user, str) or not user:
            raise ConfigurationError("IAM authentication needs the ElastiCache user ID (iam_user)")
        if not isinstance(cache_name, str) or not cache_name:
            raise ConfigurationError(
                "IAM authentication needs the replication group ID or serverless cache name "
                "(iam_cache_name)"
            )
        from botocore.hooks import HierarchicalEmitter

        botocore_session = _botocore_session(session)
        region = region or botocore_session.get_config_variable("region")
        if not region:
            raise ConfigurationError(
                "IAM authentication needs the cache's Region (iam_region, or a session Region)"
            )
        self.user = user
        self.cache_name = cache_name
        self.region: str = region
        self.serverless = serverless
        self._session = botocore_session
        # A private emitter (the signer keeps only a weak reference): no hook of the
        # application's session sees the request.
        self._emitter = HierarchicalEmitter()
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._made_at = 0.0

    def get_credentials(self) -> tuple[str, str]:
        return self.user, self.token()

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.get_credentials()  # signing is local computation: nothing to await

    def token(self) -> str:
        """The current token; a new one once the last is :data:`REFRESH_AFTER_S` old."""
        with self._lock:
            now = self._clock()
            if self._token is None or now - self._made_at >= REFRESH_AFTER_S:
                self._token = self.generate_token()
                self._made_at = now
            return self._token

    def generate_token(self) -> str:
        """A fresh presigned ``connect`` request, signed by botocore (SigV4, query auth)."""
        from botocore.model import ServiceId
        from botocore.signers import RequestSigner

        credentials = self._session.get_credentials()
        if credentials is None:
            raise ConfigurationError(
                "IAM authentication needs AWS credentials, and the session has none"
            )
        query = {"Action": "connect", "User": self.user}
        if self.serverless:
            query["ResourceType"] = "ServerlessCache"
        signer = RequestSigner(
            ServiceId("elasticache"),
            self.region,
            "elasticache",
            "v4",
            credentials,
            self._emitter,
        )
        request = {
            "method": "GET",
            "url": urlunsplit(("https", self.cache_name, "/", urlencode(query), "")),
            "body": {},
            "headers": {},
            "context": {},
        }
        signed: str = signer.generate_presigned_url(
            request, region_name=self.region, expires_in=TOKEN_LIFETIME_S, operation_name="connect"
        )
        return signed.removeprefix("https://")

    def describe(self) -> str:
        kind = "serverless cache" if self.serverless else "replication group"
        return f"IAM (user {self.user}, {kind} {self.cache_name}, {self.region})"


def _botocore_session(session: Any) -> Any:
    """What signs: the botocore session behind a boto3 session, a botocore session, a botocore
    client's own credentials and Region (a DynamoDB client given to register()), or a default
    botocore session for None."""
    import botocore.client
    import botocore.session

    if session is None:
        return botocore.session.get_session()
    inner = getattr(session, "_session", None)  # boto3.Session wraps a botocore session
    if isinstance(inner, botocore.session.Session):
        return inner
    if isinstance(session, botocore.session.Session):
        return session
    client = getattr(getattr(session, "meta", None), "client", session)  # a boto3 resource
    if isinstance(client, botocore.client.BaseClient):
        return _ClientCredentials(client)
    raise ConfigurationError(
        "IAM authentication signs with a boto3 or botocore session or client, "
        f"got {type(session).__name__}"
    )


class _ClientCredentials:
    """The two things a token needs from a session, taken from a botocore client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def get_credentials(self) -> Any:
        try:  # botocore's only way to a client's credentials (private, stable for years)
            return self._client._get_credentials()
        except AttributeError:
            import botocore.session

            return botocore.session.get_session().get_credentials()

    def get_config_variable(self, name: str) -> Any:
        return self._client.meta.region_name if name == "region" else None


class IAMSSLConnection(SSLConnection):
    """A TLS connection that reconnects (and so authenticates again) once it is
    :data:`MAX_CONNECTION_AGE_S` old, at the next checkout from its pool."""

    max_age_s: float = MAX_CONNECTION_AGE_S
    clock: Callable[[], float] = staticmethod(time.monotonic)
    _connected_at = 0.0

    def _connect(self) -> Any:
        sock = super()._connect()  # type: ignore[no-untyped-call]
        self._connected_at = self.clock()
        return sock

    def connect(self) -> None:
        if self._sock is not None and self.clock() - self._connected_at >= self.max_age_s:
            self.disconnect()
        super().connect()  # type: ignore[no-untyped-call]


class AsyncIAMSSLConnection(AsyncSSLConnection):
    """:class:`IAMSSLConnection` for ``redis.asyncio``."""

    max_age_s: float = MAX_CONNECTION_AGE_S
    clock: Callable[[], float] = staticmethod(time.monotonic)
    _connected_at = 0.0

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]
        self._connected_at = self.clock()

    async def connect(self) -> None:
        if self.is_connected and self.clock() - self._connected_at >= self.max_age_s:
            await self.disconnect()
        await super().connect()  # type: ignore[no-untyped-call]


class IAMConnectionPool(ConnectionPool):
    """A pool of :class:`IAMSSLConnection` (how a cluster client's node pools get them)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["connection_class"] = IAMSSLConnection
        super().__init__(**kwargs)


def redis_options(url: str, settings: Any, session: Any = None) -> tuple[str, dict[str, Any]]:
    """The URL for redis-py and the keyword arguments IAM authentication adds to its client.

    IAM is on when ``settings.iam_user`` is set or the URL says ``iam=1``; the URL's ``iam``,
    ``cache_name``, ``region`` and ``serverless`` parameters fill in what the options leave
    unset, and its user name stands for ``iam_user``. Off, the URL comes back unchanged with no
    keyword arguments. The arguments are for ``Redis.from_url``; :func:`for_cluster` turns them
    into a ``RedisCluster``'s.

    Raises:
        ConfigurationError: IAM over a URL that is not ``rediss://``, or a missing user,
            cache name or Region.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {name: value for name, value in query if name in URL_PARAMETERS}
    rest = urlencode([(name, value) for name, value in query if name not in URL_PARAMETERS])
    user = settings.iam_user or (parts.username if ours.get("iam", "").lower() in _TRUE else None)
    if not user:
        if ours.get("iam", "").lower() in _TRUE:
            raise ConfigurationError(
                "iam=1 in the Redis URL needs the user: rediss://<user id>@host:port/?iam=1&..."
            )
        return (urlunsplit(parts._replace(query=rest)) if ours else url), {}
    if parts.scheme not in ("rediss", "valkeys"):
        raise ConfigurationError(
            "IAM authentication works over TLS only: use a rediss:// URL "
            f"(got {parts.scheme}://); ElastiCache needs in-transit encryption for IAM users"
        )
    provider = ElastiCacheIAMProvider(
        user,
        settings.iam_cache_name or ours.get("cache_name", ""),
        settings.iam_region or ours.get("region") or None,
        serverless=settings.iam_serverless or ours.get("serverless", "").lower() in _TRUE,
        session=session,
    )
    netloc = parts.netloc.rpartition("@")[2]  # the user travels in the credential provider
    cleaned = urlunsplit(parts._replace(netloc=netloc, query=rest))
    return cleaned, {"credential_provider": provider, "connection_class": IAMSSLConnection}


def for_cluster(kwargs: dict[str, Any]) -> dict[str, Any]:
    """:func:`redis_options`' arguments for ``RedisCluster.from_url``, whose URL parsing
    overrides ``connection_class``: its node pools are given the class instead."""
    if not kwargs:
        return kwargs
    out = {name: value for name, value in kwargs.items() if name != "connection_class"}
    out["connection_pool_class"] = IAMConnectionPool
    return out


def auth_mode(url: str, settings: Any, session: Any = None) -> str:
    """How the library authenticates to this URL, and whether a token can be made now."""
    _, kwargs = redis_options(url, settings, session)
    provider = kwargs.get("credential_provider")
    if isinstance(provider, ElastiCacheIAMProvider):
        provider.generate_token()
        return f"{provider.describe()}: a token was generated"
    parts = urlsplit(url)
    if parts.password is not None:
        return f"password (user {parts.username or 'default'})"
    return "none"
