"""The cache marks the current OpenTelemetry span: under OpenTelemetry's own botocore
instrumentation (one span per AWS call), and on the application's span without it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import Backend, make_table
from tests.integration.test_shared_behaviour import FLAVORS, create_items, get, open_flavor
from tests.integration.test_stale_if_error import (  # noqa: F401 (proxy: a fixture)
    KEY,
    FailingProxy,
    filled_and_expired,
    proxy,
    registered,
)

CACHE_ATTRIBUTES = {
    "ddbcache.result",
    "ddbcache.hits",
    "ddbcache.misses",
    "ddbcache.redis.duration_ms",
}


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def instrumented(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> Iterator[InMemorySpanExporter]:
    """OpenTelemetry's botocore instrumentation, as opentelemetry-instrument applies it."""
    provider, exporter = spans
    BotocoreInstrumentor().instrument(tracer_provider=provider)
    yield exporter
    BotocoreInstrumentor().uninstrument()


def dynamodb_spans(exporter: InMemorySpanExporter, operation: str) -> list[dict[str, Any]]:
    return [
        dict(span.attributes or {})
        for span in exporter.get_finished_spans()
        if span.name == f"DynamoDB.{operation}"
    ]


def cache_marks(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if k.startswith("ddbcache.")}


def test_miss_hit_bypass_and_batch_spans(
    instrumented: InMemorySpanExporter, session: boto3.Session, real_redis: Backend, namespace: str
) -> None:
    registration = ddbcache_hooks.register(session, real_redis.client(), namespace=namespace)
    try:
        client = session.client("dynamodb")
        make_table(client, "items")
        client.put_item(TableName="items", Item={"pk": {"S": "a"}})
        instrumented.clear()
        for _ in range(2):
            client.get_item(TableName="items", Key={"pk": {"S": "a"}})
        client.get_item(TableName="items", Key={"pk": {"S": "a"}}, ConsistentRead=True)
        miss, hit, bypass = dynamodb_spans(instrumented, "GetItem")
        assert set(cache_marks(miss)) == set(cache_marks(hit)) == CACHE_ATTRIBUTES
        assert (miss["ddbcache.result"], miss["ddbcache.hits"], miss["ddbcache.misses"]) == (
            "miss",
            0,
            1,
        )
        assert (hit["ddbcache.result"], hit["ddbcache.hits"], hit["ddbcache.misses"]) == (
            "hit",
            1,
            0,
        )
        assert 0 < hit["ddbcache.redis.duration_ms"] < 1000
        assert miss["ddbcache.redis.duration_ms"] > 0  # the lookup and the fill
        assert cache_marks(bypass) == {"ddbcache.result": "bypass"}
        # The instrumentation's own attributes are there, the request id the cache's.
        assert hit["aws.request_id"].startswith("ddbcache-")
        keys = {"items": {"Keys": [{"pk": {"S": "a"}}, {"pk": {"S": "b"}}]}}
        client.batch_get_item(RequestItems=keys)
        (batch,) = dynamodb_spans(instrumented, "BatchGetItem")
        assert (batch["ddbcache.result"], batch["ddbcache.hits"], batch["ddbcache.misses"]) == (
            "partial",
            1,
            1,
        )
        # Writes and uncached operations are not marked.
        assert not any(cache_marks(a) for a in dynamodb_spans(instrumented, "PutItem"))
    finally:
        registration.unregister()


def test_stale_answer_span(
    instrumented: InMemorySpanExporter,
    redis_server: RedisServer,
    namespace: str,
    proxy: FailingProxy,  # noqa: F811
) -> None:
    registration, c = registered(redis_server, namespace, proxy, stale_if_error_s=5)
    try:
        filled_and_expired(c)
        proxy.fail("GetItem")
        instrumented.clear()
        answer = c.get_item(TableName="items", Key=KEY)
        assert answer["CacheMetadata"]["Stale"] is True
        (stale,) = dynamodb_spans(instrumented, "GetItem")
        assert stale["ddbcache.result"] == "stale" and stale["ddbcache.misses"] == 1
        assert stale["ddbcache.redis.duration_ms"] > 0
    finally:
        registration.unregister()


def test_the_applications_span_without_instrumentation(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    session: boto3.Session,
    real_redis: Backend,
    namespace: str,
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("app")
    registration = ddbcache_hooks.register(session, real_redis.client(), namespace=namespace)
    try:
        client = session.client("dynamodb")
        make_table(client, "items")
        client.get_item(TableName="items", Key={"pk": {"S": "a"}})  # no span: nothing to mark
        with tracer.start_as_current_span("handle request"):
            client.get_item(TableName="items", Key={"pk": {"S": "a"}})
        (span,) = exporter.get_finished_spans()
        assert span.name == "handle request"
        assert span.attributes is not None and span.attributes["ddbcache.result"] == "hit"
    finally:
        registration.unregister()


def test_refresh_span(
    instrumented: InMemorySpanExporter, session: boto3.Session, real_redis: Backend, namespace: str
) -> None:
    registration = ddbcache_hooks.register(session, real_redis.client(), namespace=namespace)
    try:
        client = session.client("dynamodb")
        make_table(client, "items")
        client.get_item(TableName="items", Key={"pk": {"S": "a"}})
        instrumented.clear()
        with ddbcache_hooks.refresh():
            client.get_item(TableName="items", Key={"pk": {"S": "a"}})
        (span,) = dynamodb_spans(instrumented, "GetItem")
        assert span["ddbcache.result"] == "refresh"
    finally:
        registration.unregister()


def test_without_opentelemetry_nothing_is_marked(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    session: boto3.Session,
    real_redis: Backend,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As when opentelemetry-api is not installed: calls work, no span is touched."""
    from ddbcache_hooks import tracing

    monkeypatch.setattr(tracing, "_trace", None)
    provider, exporter = spans
    registration = ddbcache_hooks.register(session, real_redis.client(), namespace=namespace)
    try:
        client = session.client("dynamodb")
        make_table(client, "items")
        with provider.get_tracer("app").start_as_current_span("handle request"):
            client.get_item(TableName="items", Key={"pk": {"S": "a"}})
            hit = client.get_item(TableName="items", Key={"pk": {"S": "a"}})
        assert hit["CacheMetadata"]["CacheHit"] is True
        (span,) = exporter.get_finished_spans()
        assert not cache_marks(dict(span.attributes or {}))
    finally:
        registration.unregister()


@pytest.mark.parametrize("flavor_name", FLAVORS)
def test_both_paths_mark_the_applications_span(
    flavor_name: str,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    moto_url: str,
    redis_server: RedisServer,
    namespace: str,
) -> None:
    """boto3 and aiobotocore alike: the span current in the thread or task is marked."""
    provider, exporter = spans
    tracer = provider.get_tracer("app")

    async def main() -> None:
        async with open_flavor(flavor_name, moto_url, redis_server.url, namespace) as f:
            await create_items(f)
            for name in ("first", "second"):
                with tracer.start_as_current_span(name):
                    await get(f)

    asyncio.run(main())
    results = {
        s.name: (s.attributes or {}).get("ddbcache.result") for s in exporter.get_finished_spans()
    }
    assert results == {"first": "miss", "second": "hit"}
