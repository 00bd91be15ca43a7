"""The opt-in near cache, against a real Redis: local and remote eviction, the TTL bound."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
from botocore.exceptions import ClientError

import ddbcache_hooks
from ddbcache_hooks import NearCache
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import CountingConnection, access_denied, counting_redis, make_table

KEY = {"pk": {"S": "a"}}


@contextlib.contextmanager
def near_cached(
    moto_url: str, cache: Any, namespace: str, near: NearCache
) -> Iterator[tuple[Any, ddbcache_hooks.Registration]]:
    """A client registered with ``near``, its table made, its subscription listening."""
    session = boto3.Session(region_name="us-east-1")
    registration = ddbcache_hooks.register(session, cache, namespace=namespace, near_cache=near)
    try:
        client = session.client("dynamodb", endpoint_url=moto_url)
        make_table(client, "items")
        deadline = time.monotonic() + 5
        while not near.online and time.monotonic() < deadline:
            time.sleep(0.01)
        assert near.online, "the near cache never subscribed"
        yield client, registration
    finally:
        registration.unregister()


@pytest.fixture
def counter(redis_server: RedisServer) -> tuple[Any, type[CountingConnection]]:
    return counting_redis(redis_server.port)


@pytest.fixture
def near_client(
    moto_url: str, counter: tuple[Any, Any], namespace: str
) -> Iterator[tuple[Any, ddbcache_hooks.Registration, NearCache]]:
    near = NearCache(max_items=100, ttl_ms=2000)
    with near_cached(moto_url, counter[0], namespace, near) as (client, registration):
        client.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}})
        yield client, registration, near


def value(client: Any) -> tuple[str, str]:
    response = client.get_item(TableName="items", Key=KEY)
    return ("hit" if "CacheMetadata" in response else "miss"), response["Item"]["v"]["S"]


def test_near_hits_cost_no_round_trip(near_client: Any, counter: tuple[Any, Any]) -> None:
    client, registration, _ = near_client
    counting = counter[1]
    assert value(client) == ("miss", "1")
    assert value(client) == ("hit", "1")  # from Redis, now also held in the process
    before = counting.sends
    for _ in range(5):
        hit = client.get_item(TableName="items", Key=KEY)
        assert hit["CacheMetadata"]["CacheHit"] and hit["Item"]["v"] == {"S": "1"}
    assert counting.sends == before
    assert registration.stats()["near_hits"] == 5


def test_each_near_hit_is_a_fresh_object(near_client: Any) -> None:
    client, _, _ = near_client
    value(client)
    value(client)
    first = client.get_item(TableName="items", Key=KEY)
    first["Item"]["v"]["S"] = "mutated by the caller"
    assert client.get_item(TableName="items", Key=KEY)["Item"]["v"] == {"S": "1"}


def test_local_writes_evict_at_once(near_client: Any) -> None:
    client, _, near = near_client
    value(client)
    value(client)
    assert len(near) == 1
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "2"}})
    assert len(near) == 0
    assert value(client) == ("miss", "2")


def test_entries_are_never_served_after_ttl(
    moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    near = NearCache(max_items=10, ttl_ms=300)
    with near_cached(moto_url, redis_server.url, namespace, near) as (client, registration):
        client.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}})
        value(client)
        value(client)
        # A write nobody hears about (as when a message is lost): only the TTL bounds it.
        redis.Redis(port=redis_server.port).hset(
            registration._protocol.planner.item_key(*registration.table_refs("items"), KEY),
            "e:",
            b"x",
        )
        started = time.monotonic()
        assert registration.stats()["near_hits"] == 0
        while near.get(
            registration._protocol.planner.item_key(*registration.table_refs("items"), KEY), ""
        ):
            assert time.monotonic() - started < 0.35
            time.sleep(0.01)
        assert time.monotonic() - started >= 0.2


WRITER = textwrap.dedent(
    """
    import sys, boto3, ddbcache_hooks
    moto_url, redis_url, namespace, value = sys.argv[1:]
    session = boto3.Session(region_name="us-east-1")
    ddbcache_hooks.register(session, redis_url, namespace=namespace)
    session.client("dynamodb", endpoint_url=moto_url).put_item(
        TableName="items", Item={"pk": {"S": "a"}, "v": {"S": value}})
    """
)


def test_remote_writes_evict_through_pub_sub(
    near_client: Any, moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    client, _, near = near_client
    value(client)
    value(client)
    assert len(near) == 1
    subprocess.run(
        [sys.executable, "-c", WRITER, moto_url, redis_server.url, namespace, "remote"],
        check=True,
        timeout=60,
    )
    deadline = time.monotonic() + 2
    while len(near) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(near) == 0, "the invalidation message did not arrive"
    assert value(client) == ("miss", "remote")


def test_a_dropped_subscription_clears_and_stops_caching(
    near_client: Any, redis_server: RedisServer
) -> None:
    client, _, near = near_client
    value(client)
    value(client)
    assert len(near) == 1
    redis.Redis(port=redis_server.port).client_kill_filter(_type="pubsub")
    deadline = time.monotonic() + 3
    while len(near) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(near) == 0  # whatever was cached may have missed messages: gone
    deadline = time.monotonic() + 5  # the subscriber comes back by itself
    while not near.online and time.monotonic() < deadline:
        time.sleep(0.05)
    assert near.online
    value(client)  # (the first entry was filled inside the put's settle window: it may be gone)
    value(client)
    assert len(near) == 1


def test_memory_is_bounded_by_max_items(
    moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    near = NearCache(max_items=10, ttl_ms=10_000)
    with near_cached(moto_url, redis_server.url, namespace, near) as (client, _):
        for i in range(40):
            key = {"pk": {"S": str(i)}}
            client.get_item(TableName="items", Key=key)
            client.get_item(TableName="items", Key=key)
        assert len(near) == 10


def test_near_cache_from_the_environment() -> None:
    from ddbcache_hooks.config import from_environment

    near = from_environment({"DDBCACHE_NEAR_CACHE": "max_items=50,ttl_ms=250"})["near_cache"]
    assert (near.max_items, near.ttl_ms) == (50, 250)
    assert from_environment({"DDBCACHE_NEAR_CACHE": "off"})["near_cache"] is None
    with pytest.raises(ValueError, match="DDBCACHE_NEAR_CACHE"):
        from_environment({"DDBCACHE_NEAR_CACHE": "size=5"})


SPINNING_READER = textwrap.dedent(
    """
    import os, sys, time
    import boto3, ddbcache_hooks
    from ddbcache_hooks import NearCache

    moto_url, redis_url, namespace, stop_file, out_file = sys.argv[1:6]
    near = NearCache(max_items=100, ttl_ms=60_000)
    session = boto3.Session(region_name="us-east-1")
    ddbcache_hooks.register(session, redis_url, namespace=namespace, near_cache=near)
    client = session.client("dynamodb", endpoint_url=moto_url)
    key = {"pk": {"S": "a"}}
    deadline = time.monotonic() + 10
    while not near.online and time.monotonic() < deadline:
        time.sleep(0.01)
    for _ in range(3):
        client.get_item(TableName="items", Key=key)
    print("ready", flush=True)
    reads = []
    # A tight loop: the subscriber thread gets the GIL only at switch intervals.
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        start = time.monotonic()
        item = client.get_item(TableName="items", Key=key)["Item"]
        reads.append((start, int(item["v"]["S"])))
    with open(out_file, "w") as out:
        out.write("\\n".join(f"{s!r} {v}" for s, v in reads))
    print(near.online, flush=True)
    """
)

#: The staleness bound the test holds a busy near-cache reader to: a read that
#: starts this long after a write returned sees it (the message is delivered
#: before or with the write's reply, and every near hit applies what arrived).
NEAR_BOUND_S = 0.005


def test_a_busy_reader_sees_writes_within_the_bound(
    moto_url: str, redis_server: RedisServer, namespace: str, tmp_path: Any
) -> None:
    session = boto3.Session(region_name="us-east-1")
    registration = ddbcache_hooks.register(session, redis_server.url, namespace=namespace)
    stop_file, out_file = tmp_path / "stop", tmp_path / "reads"
    try:
        writer = session.client("dynamodb", endpoint_url=moto_url)
        make_table(writer, "items")
        writer.put_item(TableName="items", Item={**KEY, "v": {"S": "0"}})
        reader = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SPINNING_READER,
                moto_url,
                redis_server.url,
                namespace,
                str(stop_file),
                str(out_file),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "ready"
            returned = [0.0]
            for k in range(1, 31):
                time.sleep(0.02)  # the reader is back on near hits in between
                writer.put_item(TableName="items", Item={**KEY, "v": {"S": str(k)}})
                returned.append(time.monotonic())
            time.sleep(0.05)
            stop_file.touch()
            out, _ = reader.communicate(timeout=30)
        finally:
            if reader.poll() is None:
                reader.kill()
        assert out.strip() == "True", "the reader's near cache went offline"
        reads = [line.split() for line in out_file.read_text().splitlines()]
        stale = []
        near_hits = 0
        for start_text, seen_text in reads:
            start, seen = float(start_text), int(seen_text)
            # The newest write that had returned NEAR_BOUND_S before this read began.
            due = max((k for k, t in enumerate(returned) if t + NEAR_BOUND_S <= start), default=0)
            if seen < due:
                stale.append((start - returned[due], seen, due))
            near_hits += 1
        assert near_hits > 100, "the reader did not spin"
        assert stale == [], f"reads older than the bound: {stale[:5]}"
    finally:
        registration.unregister()


WRITE_THROUGH_WRITER = WRITER.replace(
    "namespace=namespace)", "namespace=namespace, write_through=True, key_schema={'items': 'pk'})"
)


def test_remote_write_through_evicts_and_the_stored_item_is_served(
    near_client: Any, moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    """A write-through writer elsewhere stores the new item in Redis and tells the
    near caches: the near entry goes, and the next read hits the new item in Redis."""
    client, _, near = near_client
    value(client)
    value(client)
    assert len(near) == 1
    assert "write_through=True" in WRITE_THROUGH_WRITER
    subprocess.run(
        [sys.executable, "-c", WRITE_THROUGH_WRITER, moto_url, redis_server.url, namespace, "wt"],
        check=True,
        timeout=60,
    )
    deadline = time.monotonic() + 2
    while len(near) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(near) == 0, "the invalidation message did not arrive"
    assert value(client) == ("hit", "wt")


def test_near_hits_go_only_to_credentials_dynamodb_answered(
    moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    """Two clients of one registration share its near cache; the one DynamoDB refuses
    gets DynamoDB's error, however often it asks, while the other keeps its near hits."""
    near = NearCache(max_items=100, ttl_ms=60_000)
    with near_cached(moto_url, redis.Redis(port=redis_server.port), namespace, near) as (
        alice,
        registration,
    ):
        alice.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}})
        bob = boto3.Session(region_name="us-east-1").client(
            "dynamodb",
            endpoint_url=moto_url,
            aws_access_key_id="AKIABOBEXAMPLE",
            aws_secret_access_key="bob",
        )
        registration.attach_client(bob)
        bob.meta.events.register(  # DynamoDB refusing bob
            "before-send.dynamodb", lambda **_: access_denied(moto_url)
        )
        assert value(alice) == ("miss", "1")
        assert value(alice) == ("hit", "1")
        assert len(near) == 1
        for _ in range(3):
            with pytest.raises(ClientError) as raised:
                bob.get_item(TableName="items", Key=KEY)
            assert raised.value.response["Error"]["Code"] == "AccessDeniedException"
        assert value(alice) == ("hit", "1")
        stats = registration.stats()
        assert stats["access_denied"] == 3 and stats["near_hits"] >= 1
