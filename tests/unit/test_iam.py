"""The ElastiCache IAM token: a botocore-signed SigV4 presigned ``connect`` request.

The signature is checked here by an independent SigV4 computation (the test's, not the
library's), with botocore's clock pinned so that a token can be reproduced.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import boto3
import botocore.session
import botocore.signers
import pytest

from ddbcache_hooks import iam
from ddbcache_hooks.config import Settings
from ddbcache_hooks.errors import ConfigurationError
from ddbcache_hooks.iam import (
    REFRESH_AFTER_S,
    TOKEN_LIFETIME_S,
    ElastiCacheIAMProvider,
    IAMConnectionPool,
    IAMSSLConnection,
    redis_options,
)
from tests.botocore_compat import pin_signing_clock

START = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


class FakeClock:
    """Drives the provider's refresh decision and botocore's signing time together."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._origin = self.now

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime.datetime:
        return START + datetime.timedelta(seconds=self.now - self._origin)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    pin_signing_clock(monkeypatch, fake.wall)
    return fake


@pytest.fixture
def signed_urls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every presigned URL botocore's RequestSigner made."""
    made: list[str] = []
    original = botocore.signers.RequestSigner.generate_presigned_url

    def spy(self: Any, *args: Any, **kwargs: Any) -> str:
        url: str = original(self, *args, **kwargs)
        made.append(url)
        return url

    monkeypatch.setattr(botocore.signers.RequestSigner, "generate_presigned_url", spy)
    yield made


def session_with(key: str, secret: str, token: str | None = None) -> boto3.Session:
    return boto3.Session(
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        region_name="eu-west-1",
    )


def verify_sigv4(token: str, secret: str) -> dict[str, str]:
    """Check ``token`` is a valid SigV4 query-signed GET of ``https://<token>``; its query."""
    parts = urlsplit("https://" + token)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = params.pop("X-Amz-Signature")
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert params["X-Amz-SignedHeaders"] == "host"
    access_key, date, region, service, terminator = params["X-Amz-Credential"].split("/")
    assert (service, terminator) == ("elasticache", "aws4_request")
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
    )
    canonical_request = "\n".join(
        [
            "GET",
            parts.path or "/",
            canonical_query,
            f"host:{parts.netloc}\n",
            "host",
            hashlib.sha256(b"").hexdigest(),
        ]
    )
    scope = f"{date}/{region}/{service}/{terminator}"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, terminator):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, expected), "the SigV4 signature does not verify"
    params["_host"] = parts.netloc
    params["_path"] = parts.path
    params["_access_key"] = access_key
    params["_region"] = region
    return params


def test_token_is_a_presigned_connect_request_for_cache_and_user(
    clock: FakeClock, signed_urls: list[str]
) -> None:
    session = session_with("AKIDEXAMPLE", "secret-one", token="session-token")
    provider = ElastiCacheIAMProvider("app-user", "my-cache", session=session, clock=clock)

    user, token = provider.get_credentials()

    assert user == "app-user"
    assert not token.startswith("https://")
    params = verify_sigv4(token, "secret-one")
    assert (params["_host"], params["_path"]) == ("my-cache", "/")
    assert params["Action"] == "connect" and params["User"] == "app-user"
    assert "ResourceType" not in params
    assert params["_access_key"] == "AKIDEXAMPLE" and params["_region"] == "eu-west-1"
    assert params["X-Amz-Security-Token"] == "session-token"
    assert params["X-Amz-Date"] == "20260301T120000Z"
    assert 0 < int(params["X-Amz-Expires"]) <= 15 * 60
    assert signed_urls == ["https://" + token]  # made by botocore's RequestSigner


def test_serverless_token_names_the_resource_type(clock: FakeClock) -> None:
    provider = ElastiCacheIAMProvider(
        "app-user",
        "my-serverless",
        "us-west-2",
        serverless=True,
        session=session_with("AKID2", "secret-two"),
        clock=clock,
    )
    params = verify_sigv4(provider.token(), "secret-two")
    assert params["ResourceType"] == "ServerlessCache"
    assert params["_host"] == "my-serverless" and params["_region"] == "us-west-2"


def test_the_given_sessions_credentials_sign(clock: FakeClock) -> None:
    first = ElastiCacheIAMProvider("u", "c", session=session_with("AKIDA", "alpha"), clock=clock)
    second = ElastiCacheIAMProvider("u", "c", session=session_with("AKIDB", "beta"), clock=clock)
    assert verify_sigv4(first.token(), "alpha")["_access_key"] == "AKIDA"
    assert verify_sigv4(second.token(), "beta")["_access_key"] == "AKIDB"
    with pytest.raises(AssertionError, match="does not verify"):
        verify_sigv4(first.token(), "beta")


def test_a_botocore_session_works_too(clock: FakeClock) -> None:
    session = botocore.session.Session()
    session.set_credentials("AKIDBOTO", "gamma")
    session.set_config_variable("region", "ap-south-1")
    params = verify_sigv4(ElastiCacheIAMProvider("u", "c", session=session).token(), "gamma")
    assert params["_access_key"] == "AKIDBOTO" and params["_region"] == "ap-south-1"


def test_a_client_signs_with_its_own_credentials_and_region(clock: FakeClock) -> None:
    client = session_with("AKIDCLIENT", "delta").client("dynamodb", region_name="ca-central-1")
    provider = ElastiCacheIAMProvider("u", "c", session=client)
    params = verify_sigv4(provider.token(), "delta")
    assert params["_access_key"] == "AKIDCLIENT" and params["_region"] == "ca-central-1"
    resource = session_with("AKIDRES", "eps").resource("dynamodb")
    assert verify_sigv4(ElastiCacheIAMProvider("u", "c", session=resource).token(), "eps")
    with pytest.raises(ConfigurationError, match="session or client"):
        ElastiCacheIAMProvider("u", "c", session=object())


def test_token_is_reused_then_refreshed_before_it_expires(
    clock: FakeClock, signed_urls: list[str]
) -> None:
    provider = ElastiCacheIAMProvider(
        "app-user", "my-cache", session=session_with("AKID", "s"), clock=clock
    )
    first = provider.token()
    clock.now += REFRESH_AFTER_S - 1
    assert provider.token() == first and len(signed_urls) == 1

    clock.now += 1
    second = provider.token()
    assert second != first and len(signed_urls) == 2
    issued = verify_sigv4(second, "s")["X-Amz-Date"]
    assert issued == (START + datetime.timedelta(seconds=REFRESH_AFTER_S)).strftime(
        "%Y%m%dT%H%M%SZ"
    )
    # A token is never handed out with less than the margin of its validity left.
    assert TOKEN_LIFETIME_S - REFRESH_AFTER_S >= 60 and TOKEN_LIFETIME_S <= 15 * 60


def test_refreshed_credentials_are_picked_up(clock: FakeClock) -> None:
    session = botocore.session.Session()
    session.set_config_variable("region", "us-east-1")
    session.set_credentials("AKIDOLD", "old")
    provider = ElastiCacheIAMProvider("u", "c", session=session, clock=clock)
    assert verify_sigv4(provider.token(), "old")["_access_key"] == "AKIDOLD"
    session.set_credentials("AKIDNEW", "new")
    clock.now += REFRESH_AFTER_S
    assert verify_sigv4(provider.token(), "new")["_access_key"] == "AKIDNEW"


@pytest.mark.parametrize(
    ("user", "cache", "message"),
    [("", "c", "user ID"), ("u", "", "cache name")],
)
def test_missing_user_or_cache_is_a_clear_error(user: str, cache: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ElastiCacheIAMProvider(user, cache, session=session_with("A", "s"))


def test_missing_region_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    session = botocore.session.Session()
    with pytest.raises(ConfigurationError, match="Region"):
        ElastiCacheIAMProvider("u", "c", session=session)


def test_no_credentials_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    session = botocore.session.Session()
    session.set_config_variable("region", "us-east-1")
    monkeypatch.setattr(session, "get_credentials", lambda: None)
    provider = ElastiCacheIAMProvider("u", "c", session=session)
    with pytest.raises(ConfigurationError, match="credentials"):
        provider.token()


# -- options, variables and the URL -------------------------------------------------------------


def settings(**options: Any) -> Settings:
    return Settings.resolve(options, environ={})


def test_without_iam_the_url_is_untouched() -> None:
    url = "rediss://app:pw@cache.example:6380/0?ssl_cert_reqs=required"
    assert redis_options(url, settings()) == (url, {})
    # iam=0 is off, and its parameters are not passed on to redis-py
    off = "rediss://app:pw@cache.example:6380/0?iam=0&cache_name=c&ssl_cert_reqs=required"
    assert redis_options(off, settings()) == (url, {})


def test_options_switch_iam_on_for_a_rediss_url() -> None:
    url, kwargs = redis_options(
        "rediss://cache.example:6379/0?ssl_cert_reqs=required",
        settings(iam_user="app", iam_cache_name="rg-1", iam_region="eu-central-1"),
        session_with("A", "s"),
    )
    provider = kwargs["credential_provider"]
    assert isinstance(provider, ElastiCacheIAMProvider)
    assert (provider.user, provider.cache_name, provider.region) == ("app", "rg-1", "eu-central-1")
    assert provider.serverless is False
    assert kwargs["connection_class"] is IAMSSLConnection
    assert url == "rediss://cache.example:6379/0?ssl_cert_reqs=required"


def test_the_url_form() -> None:
    url, kwargs = redis_options(
        "rediss://app@cache.example:6379/?iam=1&cache_name=sc-1&serverless=1&region=us-east-2"
        "&ssl_cert_reqs=required",
        settings(),
        session_with("A", "s"),
    )
    provider = kwargs["credential_provider"]
    assert (provider.user, provider.cache_name, provider.region) == ("app", "sc-1", "us-east-2")
    assert provider.serverless is True
    assert url == "rediss://cache.example:6379/?ssl_cert_reqs=required"


def test_options_win_over_the_url() -> None:
    _, kwargs = redis_options(
        "rediss://app@h:6379/?iam=1&cache_name=from-url",
        settings(iam_cache_name="from-option"),
        session_with("A", "s"),
    )
    assert kwargs["credential_provider"].cache_name == "from-option"


def test_variables_configure_iam() -> None:
    resolved = Settings.resolve(
        {},
        environ={
            "DDBCACHE_IAM_USER": "app",
            "DDBCACHE_IAM_CACHE_NAME": "rg-2",
            "DDBCACHE_IAM_REGION": "sa-east-1",
            "DDBCACHE_IAM_SERVERLESS": "yes",
        },
    )
    assert (resolved.iam_user, resolved.iam_cache_name, resolved.iam_region) == (
        "app",
        "rg-2",
        "sa-east-1",
    )
    assert resolved.iam_serverless is True
    with pytest.raises(ConfigurationError, match="DDBCACHE_IAM_SERVERLESS"):
        Settings.resolve({}, environ={"DDBCACHE_IAM_SERVERLESS": "maybe"})


@pytest.mark.parametrize(
    "url", ["redis://cache.example:6379/0", "valkey://cache.example:6379", "unix:///tmp/r.sock"]
)
def test_iam_without_tls_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="TLS only: use a rediss:// URL"):
        redis_options(url, settings(iam_user="app", iam_cache_name="c"), session_with("A", "s"))


def test_iam_in_the_url_needs_a_user() -> None:
    with pytest.raises(ConfigurationError, match="needs the user"):
        redis_options("rediss://h:6379/?iam=1&cache_name=c", settings(), session_with("A", "s"))


def test_cluster_clients_get_the_connection_class_through_their_node_pools() -> None:
    _, kwargs = redis_options(
        "rediss://h:6379", settings(iam_user="u", iam_cache_name="c"), session_with("A", "s")
    )
    cluster = iam.for_cluster(kwargs)
    assert "connection_class" not in cluster
    assert cluster["connection_pool_class"] is IAMConnectionPool
    assert cluster["credential_provider"] is kwargs["credential_provider"]
    assert iam.for_cluster({}) == {}
    pool = IAMConnectionPool(host="h", port=6379, connection_class=object)
    assert pool.connection_class is IAMSSLConnection


def test_the_async_path_refuses_iam_options_with_a_client_object() -> None:
    import asyncio

    import redis.asyncio as aredis

    from ddbcache_hooks.connections import connect_async

    with pytest.raises(ConfigurationError, match="credential_provider="):
        asyncio.run(connect_async(aredis.Redis(), settings(iam_user="u", iam_cache_name="c")))


def test_the_librarys_own_pools_use_the_iam_connection_class() -> None:
    """Sync and async pools built from a URL, and every cluster node's, reconnect at the
    age limit (nothing connects here: the builders' clients are only inspected)."""
    import redis.asyncio as aredis
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    from ddbcache_hooks import connections

    url, kwargs = redis_options(
        "rediss://h:6379", settings(iam_user="u", iam_cache_name="c"), session_with("A", "s")
    )
    provider = kwargs["credential_provider"]
    policy = connections.Policy(50, 100, 8, 20)
    sync = connections.sync_builder(
        url, policy, credential_provider=provider, connection_class=IAMSSLConnection
    )()
    assert sync.connection_pool.connection_class is IAMSSLConnection
    assert sync.connection_pool.connection_kwargs["credential_provider"] is provider
    asynchronous = connections.async_builder(
        url, policy, credential_provider=provider, connection_class=iam.AsyncIAMSSLConnection
    )()
    assert isinstance(asynchronous, aredis.Redis)
    assert asynchronous.connection_pool.connection_class is iam.AsyncIAMSSLConnection
    node_pool = connections._cluster_pool(0.02, IAMSSLConnection)(host="h", port=6379)
    assert node_pool.connection_class is IAMSSLConnection and node_pool.timeout == 0.02
    cluster = connections.with_connection_class(
        AsyncRedisCluster.from_url(url, credential_provider=provider), iam.AsyncIAMSSLConnection
    )
    assert cluster.connection_kwargs["connection_class"] is iam.AsyncIAMSSLConnection
    for node in cluster.nodes_manager.startup_nodes.values():
        assert node.connection_class is iam.AsyncIAMSSLConnection
