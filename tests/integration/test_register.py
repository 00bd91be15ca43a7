"""register(): targets, options, idempotence, unregister, Redis failures."""

from __future__ import annotations

import time
from typing import Any

import boto3
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import ddbcache_hooks
from ddbcache_hooks import CacheConnectionError, ConfigurationError, RegistrationError
from ddbcache_hooks._redis_server import RedisServer, free_port
from tests.conftest import CallCounter, make_table

KEY = {"pk": {"S": "a"}}


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    return redis_server.url


def twice(c: Any, table: str = "items") -> dict[str, Any]:
    c.get_item(TableName=table, Key=KEY)
    response: dict[str, Any] = c.get_item(TableName=table, Key=KEY)
    return response


def test_register_on_existing_client(session: boto3.Session, url: str, namespace: str) -> None:
    c = session.client("dynamodb")
    make_table(c, "items")
    registration = ddbcache_hooks.register(c, url, namespace=namespace)
    try:
        assert "CacheMetadata" in twice(c)
        other = session.client("dynamodb")  # registering a client does not cache its siblings
        assert "CacheMetadata" not in twice(other)
    finally:
        registration.unregister()


def test_register_on_resource_client(session: boto3.Session, url: str, namespace: str) -> None:
    resource = session.resource("dynamodb")
    make_table(resource.meta.client, "items")
    registration = ddbcache_hooks.register(resource.meta.client, url, namespace=namespace)
    try:
        table = resource.Table("items")
        table.put_item(Item={"pk": "a"})
        table.get_item(Key={"pk": "a"})
        assert table.get_item(Key={"pk": "a"})["CacheMetadata"]["CacheHit"]
    finally:
        registration.unregister()


def test_register_on_botocore_session(aws: None, url: str, namespace: str) -> None:
    import botocore.session

    core = botocore.session.get_session()
    registration = ddbcache_hooks.register(core, url, namespace=namespace)
    try:
        c = core.create_client("dynamodb", region_name="us-east-1")
        make_table(c, "items")
        assert "CacheMetadata" in twice(c)
    finally:
        registration.unregister()


def test_register_on_default_session(aws: None, url: str, namespace: str) -> None:
    boto3.setup_default_session(region_name="us-east-1")
    registration = ddbcache_hooks.register(None, url, namespace=namespace)
    try:
        c = boto3.client("dynamodb")
        make_table(c, "items")
        assert "CacheMetadata" in twice(c)
    finally:
        registration.unregister()
        boto3.DEFAULT_SESSION = None


def test_registering_twice_is_a_no_op(session: boto3.Session, url: str, namespace: str) -> None:
    first = ddbcache_hooks.register(session, url, namespace=namespace)
    try:
        assert ddbcache_hooks.register(session, url, namespace=namespace) is first
        c = session.client("dynamodb")
        assert ddbcache_hooks.register(c, url, namespace=namespace) is first
        make_table(c, "items")
        twice(c)
        stats = first.stats()
        assert (stats["hits"], stats["misses"]) == (1, 1)  # handlers ran once per call
    finally:
        first.unregister()


def test_unregister_removes_every_handler(session: boto3.Session, url: str, namespace: str) -> None:
    registration = ddbcache_hooks.register(session, url, namespace=namespace)
    before = session.client("dynamodb")
    make_table(before, "items")
    assert "CacheMetadata" in twice(before)
    registration.unregister()
    assert "CacheMetadata" not in twice(before)
    assert "CacheMetadata" not in twice(session.client("dynamodb"))
    again = ddbcache_hooks.register(session, url, namespace=namespace)  # and can come back
    try:
        assert again is not registration
        assert "CacheMetadata" in twice(session.client("dynamodb"))
    finally:
        again.unregister()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl": 0}, "ttl must be a positive integer"),
        ({"ttl": "60"}, "ttl must be a positive integer"),
        ({"ttl": True}, "ttl must be a positive integer"),
        ({"ttl_config": {"items": 5}}, "Unknown ttl_config keys: ['items']"),
        ({"ttl_config": {"query": -1}}, "ttl_config['query'] must be a positive integer"),
        ({"ttl_config": {"scan": 1.5}}, "ttl_config['scan'] must be a positive integer"),
        ({"namespace": "a{b}"}, "namespace must be"),
        ({"namespace": ""}, "namespace must be"),
        ({"consistency": "strong"}, "consistency must be one of eventual, strict"),
        ({"lease_ms": 0}, "lease_ms must be a positive integer"),
        ({"key_schema": {"t": ("a", "b", "c")}}, "key_schema['t'] must be"),
        ({"tables": {"t": {"ttl": 0}}}, "tables['t'].ttl must be a positive integer"),
        ({"tables": {"t": {"operations": {"PutItem": False}}}}, "'PutItem' is not a cached"),
        ({"tables": {"t": {"bogus": 1}}}, "tables['t']"),
        ({"signing_key": "short"}, "signing_key must be at least 16 bytes"),
        ({"no_such_option": 1}, "unknown option(s) no_such_option"),
    ],
)
def test_bad_options_raise_value_error_naming_the_problem(
    session: boto3.Session, url: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        ddbcache_hooks.register(session, url, **options)
    assert isinstance(raised.value, ConfigurationError)
    assert message in str(raised.value)


def test_bad_targets(session: boto3.Session, url: str) -> None:
    with pytest.raises(RegistrationError, match="needs a DynamoDB client, got a s3 client"):
        ddbcache_hooks.register(session.client("s3"), url)
    with pytest.raises(RegistrationError, match="target must be"):
        ddbcache_hooks.register("dynamodb", url)
    with pytest.raises(RegistrationError, match="needs redis="):
        ddbcache_hooks.register(session)
    with pytest.raises(RegistrationError, match="must start with redis://"):
        ddbcache_hooks.register(session, "http://localhost:6379")


def test_unreachable_redis_fails_fast_with_a_clear_error(session: boto3.Session) -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(CacheConnectionError, match=f"127.0.0.1:{port}"):
        ddbcache_hooks.register(session, f"redis://:secret@127.0.0.1:{port}")
    assert time.monotonic() - started < 2
    with pytest.raises(CacheConnectionError) as raised:
        # (without retries: redis-py's default back-off would only make the test slower)
        ddbcache_hooks.register(session, redis.Redis(port=port, retry=Retry(NoBackoff(), 0)))
    assert "Could not connect to Redis" in str(raised.value)
    try:
        ddbcache_hooks.register(session, f"redis://:secret@127.0.0.1:{port}")
    except CacheConnectionError as exc:
        assert "secret" not in str(exc)


def test_invalidate_one_item(client: Any, cache: ddbcache_hooks.Registration) -> None:
    client.put_item(TableName="pairs", Item={"pk": {"S": "a"}, "sk": {"N": "2"}})
    key = {"pk": {"S": "a"}, "sk": {"N": "2"}}
    client.get_item(TableName="pairs", Key=key)
    assert cache.invalidate("pairs", {"pk": "a", "sk": 2}) is True  # Python values work too
    assert "CacheMetadata" not in client.get_item(TableName="pairs", Key=key)
    assert cache.invalidate("pairs", key) is True
    assert "CacheMetadata" not in client.get_item(TableName="pairs", Key=key)
    with pytest.raises(ValueError, match="key must be a non-empty mapping"):
        cache.invalidate("pairs", {})
    with pytest.raises(ValueError, match="not a table name"):
        cache.invalidate("pairs}", key)


def test_invalidate_by_name_needs_a_region(
    session: boto3.Session, url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registration = ddbcache_hooks.register(session, url, namespace=namespace)
    try:
        with pytest.raises(ValueError, match="Region of 'pairs' is unknown"):
            registration.invalidate("pairs", {"pk": "a"})
        arn = "arn:aws:dynamodb:us-east-1:123456789012:table/pairs"
        assert registration.invalidate_table(arn) is True
    finally:
        registration.unregister()
    monkeypatch.setenv("DDBCACHE_ENABLED", "0")
    off = ddbcache_hooks.register(boto3.Session(region_name="us-east-1"), url)
    assert off.invalidate("pairs", {"pk": "a"}) is False


def test_disabled_bypasses_reads_in_this_thread_only(
    client: Any, calls: CallCounter, cache: ddbcache_hooks.Registration
) -> None:
    import threading

    client.put_item(TableName="items", Item=KEY)
    twice(client)
    with ddbcache_hooks.disabled():
        assert "CacheMetadata" not in client.get_item(TableName="items", Key=KEY)
        seen = []
        other = threading.Thread(
            target=lambda: seen.append(client.get_item(TableName="items", Key=KEY))
        )
        other.start()
        other.join()
        assert "CacheMetadata" in seen[0]
        client.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}})  # still invalidates
    after = client.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" not in after and after["Item"]["v"] == {"S": "new"}


def test_redis_stopped_mid_test_calls_still_succeed(session: boto3.Session, namespace: str) -> None:
    with RedisServer() as server:
        registration = ddbcache_hooks.register(session, server.url, namespace=namespace)
        c = session.client("dynamodb")
        make_table(c, "items")
        c.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}})
        assert "CacheMetadata" in twice(c)
        server.kill()
        for value in "234":
            c.put_item(TableName="items", Item={**KEY, "v": {"S": value}})
            response = c.get_item(TableName="items", Key=KEY)
            assert response["Item"]["v"] == {"S": value} and "CacheMetadata" not in response
        c.batch_get_item(RequestItems={"items": {"Keys": [KEY]}})
        c.query(
            TableName="items",
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": KEY["pk"]},
        )
        assert registration.stats()["errors"] >= 1
        registration.unregister()
