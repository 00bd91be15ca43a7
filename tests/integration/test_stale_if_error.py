"""Stale-if-error and early refresh, against moto over HTTP behind a proxy that fails on demand.

The proxy answers GetItem/Query with DynamoDB's throttling error or a 500 while
told to, and counts every attempt that reached it: botocore's retries are real.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import redis
from botocore.config import Config
from botocore.exceptions import ClientError

import ddbcache_hooks
from ddbcache_hooks import protocol
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import REGION, make_table

KEY = {"pk": {"S": "a"}}
ATTEMPTS = 3
#: Legacy retries (DynamoDB's 50 ms base): three attempts take ~150 ms.
RETRIES = Config(retries={"mode": "legacy", "total_max_attempts": ATTEMPTS})
THROTTLED = (400, "ProvisionedThroughputExceededException")
INTERNAL = (500, "InternalServerError")


class FailingProxy:
    """Forwards to moto; answers the operations in ``failing`` with ``error``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.failing: set[str] = set()
        self.error = THROTTLED
        self.attempts: dict[str, int] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                operation = self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
                proxy.attempts[operation] = proxy.attempts.get(operation, 0) + 1
                if operation in proxy.failing:
                    status, code = proxy.error
                    reply = json.dumps(
                        {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": code}
                    ).encode()
                    headers = [("Content-Type", "application/x-amz-json-1.0")]
                else:
                    conn = http.client.HTTPConnection(proxy.upstream, timeout=10)
                    conn.request("POST", self.path, body, dict(self.headers))
                    answer = conn.getresponse()
                    status, reply = answer.status, answer.read()
                    headers = [
                        (k, v)
                        for k, v in answer.getheaders()
                        if k.lower() not in ("content-length", "transfer-encoding", "connection")
                    ]
                    conn.close()
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, *operations: str, error: tuple[int, str] = THROTTLED) -> None:
        self.failing, self.error = set(operations), error
        self.attempts = {}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FailingProxy]:
    p = FailingProxy(moto_url)
    admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
    yield p
    p.close()


def registered(
    redis_server: RedisServer, namespace: str, proxy: FailingProxy, **options: Any
) -> tuple[ddbcache_hooks.Registration, Any]:
    session = boto3.Session(region_name=REGION)
    options.setdefault("ttl", 1)
    registration = ddbcache_hooks.register(
        session, redis_server.url, namespace=namespace, key_schema={"items": "pk"}, **options
    )
    return registration, session.client("dynamodb", endpoint_url=proxy.url, config=RETRIES)


def filled_and_expired(c: Any) -> float:
    """Fill the entry, let its TTL (1 s) run out; when it was filled."""
    filled = time.time()
    assert "CacheMetadata" not in c.get_item(TableName="items", Key=KEY)
    assert c.get_item(TableName="items", Key=KEY)["CacheMetadata"]["CacheHit"] is True
    time.sleep(1.1)
    return filled


def test_expired_entry_answers_throttling_after_the_retries(
    redis_server: RedisServer, namespace: str, proxy: FailingProxy
) -> None:
    registration, c = registered(redis_server, namespace, proxy, stale_if_error_s=5)
    events: list[Any] = []
    c.meta.events.register("before-send.dynamodb.GetItem", lambda **_: events.append("send"))
    c.meta.events.register("needs-retry.dynamodb.GetItem", lambda **_: events.append("needs-retry"))
    c.meta.events.register(  # after the cache's own after-call handler
        "after-call.dynamodb.GetItem",
        lambda http_response, parsed, **_: events.append(
            ("after-call", http_response.status_code, parsed.get("CacheMetadata", {}).get("Stale"))
        ),
    )
    try:
        filled = filled_and_expired(c)
        # The key outlives the TTL by the grace, and no longer.
        pttl = redis.Redis(port=redis_server.port).pttl(
            registration._protocol.planner.item_key(
                registration.table_refs("items")[0], {"pk": {"S": "a"}}
            )
        )
        assert 0 < pttl <= 5000
        events.clear()
        proxy.fail("GetItem")
        answer = c.get_item(TableName="items", Key=KEY)
        served = time.time()
        assert answer["Item"] == {**KEY, "v": {"S": "old"}}
        meta = answer["CacheMetadata"]
        assert meta["CacheHit"] is True and meta["Stale"] is True
        assert 1.0 <= meta["Age"] <= served - filled + 0.01
        assert proxy.attempts == {"GetItem": ATTEMPTS}
        # Every attempt was made and judged by botocore's retry handler before
        # after-call, where the error became the expired entry.
        assert events == ["send", "needs-retry"] * ATTEMPTS + [("after-call", 200, True)]
        assert registration.stats()["stale_served"] == 1
        # The lease the failed miss took was given back; DynamoDB recovers, the next read fills.
        proxy.fail()
        assert "CacheMetadata" not in c.get_item(TableName="items", Key=KEY)
        assert "Stale" not in c.get_item(TableName="items", Key=KEY)["CacheMetadata"]
    finally:
        registration.unregister()


def test_expired_entry_answers_a_500(
    redis_server: RedisServer, namespace: str, proxy: FailingProxy
) -> None:
    registration, c = registered(redis_server, namespace, proxy, stale_if_error_s=5)
    try:
        filled_and_expired(c)
        proxy.fail("GetItem", error=INTERNAL)
        answer = c.get_item(TableName="items", Key=KEY)
        assert answer["CacheMetadata"]["Stale"] is True
        assert proxy.attempts == {"GetItem": ATTEMPTS}
    finally:
        registration.unregister()


def test_an_unchanged_app_reads_response_metadata_of_a_stale_answer(
    redis_server: RedisServer, namespace: str, proxy: FailingProxy
) -> None:
    """Logging middleware reads ResponseMetadata on a miss, a hit and a stale answer."""
    registration, c = registered(redis_server, namespace, proxy, stale_if_error_s=5)
    try:
        answers = [c.get_item(TableName="items", Key=KEY) for _ in range(2)]
        time.sleep(1.1)
        proxy.fail("GetItem")
        answers.append(c.get_item(TableName="items", Key=KEY))
        seen = [
            (a["ResponseMetadata"]["HTTPStatusCode"], a["ResponseMetadata"]["RequestId"])
            for a in answers
        ]
        assert [status for status, _ in seen] == [200, 200, 200]
        assert not seen[0][1].startswith("ddbcache-")  # DynamoDB's (moto's) own
        assert seen[1][1].startswith("ddbcache-") and seen[2][1].startswith("ddbcache-")
        sources = [a["ResponseMetadata"]["HTTPHeaders"].get("x-ddbcache") for a in answers]
        assert sources == [None, "hit", "stale"]
        # botocore's retries were made before the entry answered: counted as DynamoDB's are.
        assert answers[2]["ResponseMetadata"]["RetryAttempts"] == ATTEMPTS - 1
        assert answers[2]["CacheMetadata"]["Stale"] is True
    finally:
        registration.unregister()


def test_without_the_option_the_error_surfaces(
    redis_server: RedisServer, namespace: str, proxy: FailingProxy
) -> None:
    registration, c = registered(redis_server, namespace, proxy)
    try:
        filled_and_expired(c)
        proxy.fail("GetItem")
        with pytest.raises(ClientError) as raised:
            c.get_item(TableName="items", Key=KEY)
        assert raised.value.response["Error"]["Code"] == THROTTLED[1]
        assert registration.stats().get("stale_served", 0) == 0
    finally:
        registration.unregister()


def test_other_errors_surface(
    redis_server: RedisServer, namespace: str, proxy: FailingProxy
) -> None:
    registration, c = registered(redis_server, namespace, proxy, stale_if_error_s=5)
    try:
        filled_and_expired(c)
        proxy.fail("GetItem", error=(400, "AccessDeniedException"))
        with pytest.raises(ClientError, match="AccessDeniedException"):
            c.get_item(TableName="items", Key=KEY)
    finally:
        registration.unregister()


@pytest.mark.parametrize("drop", ["write", "invalidate", "invalidate_table", "settle"])
def test_a_dropped_entry_is_never_served_stale(
    redis_server: RedisServer, namespace: str, proxy: FailingProxy, drop: str
) -> None:
    registration, c = registered(redis_server, namespace, proxy, stale_if_error_s=5)
    try:
        if drop == "settle":  # filled within the settle window of this write: no grace
            c.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}})
        filled_and_expired(c)
        if drop == "write":
            c.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}})
        elif drop == "invalidate":
            assert registration.invalidate("items", KEY)
        elif drop == "invalidate_table":
            assert registration.invalidate_table("items")
        proxy.fail("GetItem")
        with pytest.raises(ClientError, match=THROTTLED[1]):
            c.get_item(TableName="items", Key=KEY)
        assert registration.stats().get("stale_served", 0) == 0
    finally:
        registration.unregister()


def test_consistent_reads_and_strict_mode_raise(
    redis_server: RedisServer, namespace: str, proxy: FailingProxy
) -> None:
    registration, c = registered(redis_server, namespace, proxy, stale_if_error_s=5)
    strict, s = registered(redis_server, namespace, proxy, stale_if_error_s=5, consistency="strict")
    try:
        filled_and_expired(c)
        proxy.fail("GetItem")
        with pytest.raises(ClientError, match=THROTTLED[1]):
            c.get_item(TableName="items", Key=KEY, ConsistentRead=True)
        with pytest.raises(ClientError, match=THROTTLED[1]):
            s.get_item(TableName="items", Key=KEY)
        with ddbcache_hooks.disabled(), pytest.raises(ClientError, match=THROTTLED[1]):
            c.get_item(TableName="items", Key=KEY)
        # The entry was still there: the eventual read of the same item is answered.
        assert c.get_item(TableName="items", Key=KEY)["CacheMetadata"]["Stale"] is True
    finally:
        strict.unregister()
        registration.unregister()


def test_after_the_grace_the_error_surfaces(
    redis_server: RedisServer, namespace: str, proxy: FailingProxy
) -> None:
    registration, c = registered(redis_server, namespace, proxy, stale_if_error_s=1)
    try:
        filled_and_expired(c)
        time.sleep(1.0)  # TTL 1 s + grace 1 s are over
        proxy.fail("GetItem")
        with pytest.raises(ClientError, match=THROTTLED[1]):
            c.get_item(TableName="items", Key=KEY)
    finally:
        registration.unregister()


def test_query_pages_are_served_stale_too(
    redis_server: RedisServer, namespace: str, proxy: FailingProxy
) -> None:
    registration, c = registered(redis_server, namespace, proxy, stale_if_error_s=5)
    query = {
        "TableName": "items",
        "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": "a"}},
    }
    try:
        assert c.query(**query)["Count"] == 1
        time.sleep(1.1)
        proxy.fail("Query", error=INTERNAL)
        answer = c.query(**query)
        assert answer["Count"] == 1 and answer["CacheMetadata"]["Stale"] is True
    finally:
        registration.unregister()


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
def test_async_expired_entry_answers_throttling(
    redis_server: RedisServer, namespace: str, proxy: FailingProxy
) -> None:
    import aioboto3

    async def main() -> None:
        session = aioboto3.Session(region_name=REGION)
        registration = await ddbcache_hooks.register_async(
            session, redis_server.url, namespace=namespace, ttl=1, stale_if_error_s=5
        )
        try:
            async with session.client("dynamodb", endpoint_url=proxy.url, config=RETRIES) as c:
                filled = time.time()
                await c.get_item(TableName="items", Key=KEY)
                await asyncio.sleep(1.1)
                proxy.fail("GetItem")
                answer = await c.get_item(TableName="items", Key=KEY)
                meta = answer["CacheMetadata"]
                assert meta["Stale"] is True and 1.0 <= meta["Age"] <= time.time() - filled
                assert proxy.attempts == {"GetItem": ATTEMPTS}
                await c.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}})
                with pytest.raises(ClientError, match=THROTTLED[1]):
                    await c.get_item(TableName="items", Key=KEY)
        finally:
            registration.unregister()

    asyncio.run(main())


# --- early refresh ------------------------------------------------------------------


def test_early_refresh_one_caller_refreshes_while_others_hit(
    redis_server: RedisServer,
    namespace: str,
    proxy: FailingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registration, c = registered(redis_server, namespace, proxy, ttl=60)
    second, other = registered(redis_server, namespace, proxy, ttl=60)
    try:
        assert "CacheMetadata" not in c.get_item(TableName="items", Key=KEY)
        proxy.attempts = {}
        # An entry 60 s from expiry refreshes only when the draw is this large.
        monkeypatch.setattr(protocol, "_refresh_factor", lambda: 1e9)
        inside, release = threading.Event(), threading.Event()

        def hold(**_: Any) -> None:
            inside.set()
            release.wait(10)

        c.meta.events.register("before-send.dynamodb.GetItem", hold)
        refresher = threading.Thread(target=lambda: c.get_item(TableName="items", Key=KEY))
        refresher.start()
        assert inside.wait(10)
        # The refresh holds the lease: everybody else keeps hitting, without DynamoDB.
        for _ in range(3):
            assert other.get_item(TableName="items", Key=KEY)["CacheMetadata"]["CacheHit"]
        assert proxy.attempts == {}
        release.set()
        refresher.join(10)
        assert proxy.attempts == {"GetItem": 1}
        stats = registration.stats()
        assert stats["early_refreshes"] == 1 and stats["fills"] == 2
    finally:
        second.unregister()
        registration.unregister()


def test_early_refresh_off_or_far_from_expiry_is_a_plain_hit(
    redis_server: RedisServer,
    namespace: str,
    proxy: FailingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    off, c = registered(redis_server, namespace, proxy, ttl=60, early_refresh=False)
    on, d = registered(redis_server, namespace + "x", proxy, ttl=60)
    try:
        c.get_item(TableName="items", Key=KEY)
        d.get_item(TableName="items", Key=KEY)
        monkeypatch.setattr(protocol, "_refresh_factor", lambda: 1e9)
        proxy.attempts = {}
        assert c.get_item(TableName="items", Key=KEY)["CacheMetadata"]["CacheHit"] is True
        assert proxy.attempts == {}
        monkeypatch.setattr(protocol, "_refresh_factor", lambda: 3.0)  # XFetch's 95th percentile
        assert d.get_item(TableName="items", Key=KEY)["CacheMetadata"]["CacheHit"] is True
        assert proxy.attempts == {}
    finally:
        off.unregister()
        on.unregister()


def test_a_failed_early_refresh_answers_from_the_valid_entry(
    redis_server: RedisServer,
    namespace: str,
    proxy: FailingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registration, c = registered(redis_server, namespace, proxy, ttl=60)
    try:
        c.get_item(TableName="items", Key=KEY)
        monkeypatch.setattr(protocol, "_refresh_factor", lambda: 1e9)
        proxy.fail("GetItem")
        answer = c.get_item(TableName="items", Key=KEY)
        assert (
            answer["CacheMetadata"]["CacheHit"] is True and "Stale" not in answer["CacheMetadata"]
        )
        assert proxy.attempts == {"GetItem": ATTEMPTS}
        assert registration.stats()["refresh_errors_hidden"] == 1
        proxy.fail("GetItem", error=(400, "AccessDeniedException"))
        with pytest.raises(ClientError, match="AccessDeniedException"):
            c.get_item(TableName="items", Key=KEY)
    finally:
        registration.unregister()


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
def test_async_early_refresh_and_its_failure(
    redis_server: RedisServer,
    namespace: str,
    proxy: FailingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aioboto3

    async def main() -> None:
        session = aioboto3.Session(region_name=REGION)
        registration = await ddbcache_hooks.register_async(
            session, redis_server.url, namespace=namespace, ttl=60
        )
        try:
            async with session.client("dynamodb", endpoint_url=proxy.url, config=RETRIES) as c:
                await c.get_item(TableName="items", Key=KEY)
                proxy.attempts = {}
                assert (await c.get_item(TableName="items", Key=KEY))["CacheMetadata"]["CacheHit"]
                assert proxy.attempts == {}
                monkeypatch.setattr(protocol, "_refresh_factor", lambda: 1e9)
                assert "CacheMetadata" not in await c.get_item(TableName="items", Key=KEY)
                assert proxy.attempts == {"GetItem": 1}
                proxy.fail("GetItem")
                answer = await c.get_item(TableName="items", Key=KEY)
                assert answer["CacheMetadata"]["CacheHit"] is True
                assert proxy.attempts == {"GetItem": ATTEMPTS}
                stats = registration.stats()
                assert stats["early_refreshes"] == 2 and stats["refresh_errors_hidden"] == 1
        finally:
            registration.unregister()

    asyncio.run(main())


def test_on_a_cluster_an_expired_entry_answers_and_a_written_one_does_not(
    redis_cluster: Any, namespace: str, proxy: FailingProxy
) -> None:
    host, port = redis_cluster.startup_nodes[0]
    session = boto3.Session(region_name=REGION)
    registration = ddbcache_hooks.register(
        session,
        redis.cluster.RedisCluster(host=host, port=port),
        namespace=namespace,
        key_schema={"items": "pk"},
        ttl=1,
        stale_if_error_s=5,
    )
    c = session.client("dynamodb", endpoint_url=proxy.url, config=RETRIES)
    other = {"pk": {"S": "b"}}
    try:
        c.put_item(TableName="items", Item={**other, "v": {"S": "old"}})
        time.sleep(1.0)  # the write's settle window is over: the next fills get a grace
        c.get_item(TableName="items", Key=other)
        filled_and_expired(c)
        c.put_item(TableName="items", Item={**other, "v": {"S": "new"}})
        proxy.fail("GetItem")
        assert c.get_item(TableName="items", Key=KEY)["CacheMetadata"]["Stale"] is True
        with pytest.raises(ClientError, match=THROTTLED[1]):
            c.get_item(TableName="items", Key=other)
    finally:
        registration.unregister()


def test_an_entry_of_a_table_under_bulk_load_is_not_served_stale(
    redis_server: RedisServer, namespace: str, moto_url: str, tmp_path: Any
) -> None:
    from tests.fake_dynamodb import FakeDynamoDB, later_operations

    bulk = {
        "TableName": "tbl",
        "InputS3Configuration": {"S3Bucket": "loads", "InputFormat": "DYNAMODB_JSON"},
        "OutputS3Configuration": {"OutputType": ["FAILED_ITEMS"], "S3Bucket": "reports"},
    }
    admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
    for table in ("items", "tbl"):
        make_table(admin, table)
        admin.put_item(TableName=table, Item={**KEY, "v": {"S": "old"}})
    with FakeDynamoDB(moto_url) as fake:
        p = FailingProxy(fake.url)
        session = boto3.Session(region_name=REGION)
        later_operations(session, tmp_path)
        registration = ddbcache_hooks.register(
            session, redis_server.url, namespace=namespace, ttl=1, stale_if_error_s=5
        )
        c = session.client("dynamodb", endpoint_url=p.url, config=RETRIES)
        try:
            for table in ("items", "tbl"):
                c.get_item(TableName=table, Key=KEY)
            time.sleep(1.1)
            c.start_bulk_put_items(**bulk)
            p.fail("GetItem")
            with pytest.raises(ClientError, match=THROTTLED[1]):
                c.get_item(TableName="tbl", Key=KEY)
            # The other table's expired entry still answers.
            assert c.get_item(TableName="items", Key=KEY)["CacheMetadata"]["Stale"] is True
        finally:
            registration.unregister()
            p.close()


def test_credentials_that_never_read_the_table_get_no_stale_answer(
    redis_server: RedisServer, namespace: str, proxy: FailingProxy
) -> None:
    """A stale answer is a hit: only for credentials DynamoDB answered for the table."""
    session = boto3.Session(region_name=REGION)
    registration = ddbcache_hooks.register(
        session, redis_server.url, namespace=namespace, ttl=1, stale_if_error_s=5
    )
    alice = session.client("dynamodb", endpoint_url=proxy.url, config=RETRIES)
    bob = session.client(
        "dynamodb",
        endpoint_url=proxy.url,
        config=RETRIES,
        aws_access_key_id="AKIABOBEXAMPLE",
        aws_secret_access_key="bob",
    )
    try:
        filled_and_expired(alice)
        proxy.fail("GetItem", error=INTERNAL)
        with pytest.raises(ClientError) as raised:
            bob.get_item(TableName="items", Key=KEY)
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert alice.get_item(TableName="items", Key=KEY)["CacheMetadata"]["Stale"] is True
        assert registration.stats()["stale_served"] == 1
    finally:
        registration.unregister()
