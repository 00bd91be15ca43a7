"""Faults: bad cache contents, sizes, signatures, outages, the breaker, the backlog, resharding."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import NO_SETTLE, CallCounter, make_table, registered
from tests.servers import RedisCluster

KEY = {"pk": {"S": "a"}}
ITEM = {**KEY, "v": {"S": "value"}, "b": {"B": b"\x00\xff"}}


def entry_key(registration: ddbcache_hooks.Registration, table: str, key: Any) -> str:
    (ref,) = registration.table_refs(table)
    return registration._protocol.planner.item_key(ref, key)


@pytest.fixture
def cache(
    session: boto3.Session, backend: Any, namespace: str
) -> Iterator[ddbcache_hooks.Registration]:
    """As conftest's, without the settle window: the entries a test corrupts were
    filled right after their PutItem (conftest.NO_SETTLE)."""
    yield from registered(session, backend, namespace, **NO_SETTLE)


@pytest.fixture
def filled(client: Any, cache: ddbcache_hooks.Registration, backend: Any) -> tuple[Any, Any, str]:
    """An item cached under its entry; (client, raw redis, entry hash key)."""
    client.put_item(TableName="items", Item=ITEM)
    client.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" in client.get_item(TableName="items", Key=KEY)
    return client, backend.client(), entry_key(cache, "items", KEY)


def corrupt_garbage(raw: Any, key: str) -> None:
    raw.hset(key, "e:", b"\xde\xad\xbe\xef garbage")


def corrupt_truncated(raw: Any, key: str) -> None:
    raw.hset(key, "e:", raw.hget(key, "e:")[:-7])


def corrupt_version(raw: Any, key: str) -> None:
    blob = bytearray(raw.hget(key, "e:"))
    blob[1] = 99
    raw.hset(key, "e:", bytes(blob))


def corrupt_type(raw: Any, key: str) -> None:
    raw.delete(key)
    raw.set(key, "someone wrote a plain string where a hash is expected")


def corrupt_list(raw: Any, key: str) -> None:
    raw.delete(key)
    raw.rpush(key, "a", "list")


@pytest.mark.parametrize(
    "corrupt", [corrupt_garbage, corrupt_truncated, corrupt_version, corrupt_type, corrupt_list]
)
def test_bad_entries_are_misses_deleted_and_counted(
    filled: tuple[Any, Any, str], cache: ddbcache_hooks.Registration, corrupt: Any
) -> None:
    client, raw, key = filled
    corrupt(raw, key)
    response = client.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" not in response and response["Item"] == ITEM
    assert cache.stats()["corrupt_entries"] == 1 and cache.stats()["errors"] == 0
    again = client.get_item(TableName="items", Key=KEY)
    assert again["CacheMetadata"]["CacheHit"] and again["Item"] == ITEM  # refilled cleanly


def test_bad_entries_in_a_batch(
    filled: tuple[Any, Any, str], cache: ddbcache_hooks.Registration
) -> None:
    client, raw, key = filled
    corrupt_garbage(raw, key)
    response = client.batch_get_item(RequestItems={"items": {"Keys": [KEY]}})
    assert response["Responses"]["items"] == [ITEM]
    assert cache.stats()["corrupt_entries"] == 1


def test_oversized_entries_are_not_cached(
    session: boto3.Session, backend: Any, namespace: str
) -> None:
    registration = ddbcache_hooks.register(
        session, backend.client(), namespace=namespace, **backend.options, max_entry_bytes=1000
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        c.put_item(TableName="items", Item={**KEY, "big": {"S": "x" * 3000}})
        c.put_item(TableName="items", Item={"pk": {"S": "small"}})
        calls = CallCounter().attach(c)
        for _ in range(2):
            assert "CacheMetadata" not in c.get_item(TableName="items", Key=KEY)
        c.get_item(TableName="items", Key={"pk": {"S": "small"}})
        assert "CacheMetadata" in c.get_item(TableName="items", Key={"pk": {"S": "small"}})
        assert calls["GetItem"] == 3 and registration.stats()["fills_skipped"] == 2
        # The released lease lets the next miss go straight to DynamoDB, no waiting.
        assert registration.stats()["lease_waits"] == 0
    finally:
        registration.unregister()


def test_large_entries_are_compressed(session: boto3.Session, backend: Any, namespace: str) -> None:
    registration = ddbcache_hooks.register(
        session, backend.client(), namespace=namespace, **backend.options, compress_min_bytes=256
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        item = {**KEY, "text": {"S": "compressible " * 500}, "bin": {"B": bytes(range(256)) * 4}}
        c.put_item(TableName="items", Item=item)
        c.get_item(TableName="items", Key=KEY)
        blob = backend.client().hget(entry_key(registration, "items", KEY), "e:")
        assert blob[2] & (0x01 | 0x04) and len(blob) < 2000  # flagged (zlib or zstd), and smaller
        assert c.get_item(TableName="items", Key=KEY)["Item"] == item
    finally:
        registration.unregister()


SIGNING_KEY = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def signed(session: boto3.Session, backend: Any, namespace: str) -> Iterator[tuple[Any, Any, Any]]:
    registration = ddbcache_hooks.register(
        session, backend.client(), namespace=namespace, **backend.options, signing_key=SIGNING_KEY
    )
    c = session.client("dynamodb")
    make_table(c, "items")
    c.put_item(TableName="items", Item=ITEM)
    c.get_item(TableName="items", Key=KEY)
    yield c, registration, backend.client()
    registration.unregister()


def test_signed_entries_round_trip(signed: tuple[Any, Any, Any]) -> None:
    c, registration, raw = signed
    hit = c.get_item(TableName="items", Key=KEY)
    assert hit["CacheMetadata"]["CacheHit"] and hit["Item"] == ITEM
    assert raw.hget(entry_key(registration, "items", KEY), "e:")[2] & 0x02  # flagged as signed


def test_tampered_signed_entry_is_ignored_and_deleted(signed: tuple[Any, Any, Any]) -> None:
    c, registration, raw = signed
    key = entry_key(registration, "items", KEY)
    blob = bytearray(raw.hget(key, "e:"))
    blob[-40] ^= 0xFF  # flip a payload byte
    raw.hset(key, "e:", bytes(blob))
    response = c.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" not in response and response["Item"] == ITEM
    assert registration.stats()["corrupt_entries"] == 1
    assert c.get_item(TableName="items", Key=KEY)["Item"] == ITEM


def test_injected_entries_without_the_key_are_ignored(
    signed: tuple[Any, Any, Any], backend: Any
) -> None:
    """Someone with write access to Redis but not the key forges an entry."""
    c, registration, raw = signed
    from ddbcache_hooks.codec import Codec

    key = entry_key(registration, "items", KEY)
    token = raw.hget(registration._protocol.layout.tokens(*registration.table_refs("items")), "i")
    token = token if isinstance(token, bytes) else token.encode()
    forged_payload = {"Item": {**KEY, "v": {"S": "FORGED"}}}
    for codec in (Codec(), Codec(signing_key=b"w" * 32)):  # unsigned, and signed with a wrong key
        forged = codec.encode(forged_payload, token=token, created_ms=0, context=key + "\x00")
        raw.hset(key, "e:", forged)
        response = c.get_item(TableName="items", Key=KEY)
        assert response["Item"]["v"] == {"S": "value"}
    assert registration.stats()["corrupt_entries"] == 2


# --- outages -------------------------------------------------------------------------


class AttemptCounting(redis.Connection):
    """Counts every attempt to reach Redis: connects and sends."""

    attempts = 0

    def connect(self, *args: Any, **kwargs: Any) -> None:
        type(self).attempts += 1
        super().connect(*args, **kwargs)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).attempts += 1
        super().send_packed_command(command, check_health)


def fault_client(port: int) -> redis.Redis:
    pool = redis.ConnectionPool(
        connection_class=AttemptCounting,
        port=port,
        socket_timeout=0.05,
        socket_connect_timeout=0.05,
        retry=Retry(NoBackoff(), 0),
    )
    return redis.Redis(connection_pool=pool)


@pytest.fixture
def persistent_server(tmp_path: Any) -> Iterator[RedisServer]:
    """A real server that keeps its data (AOF) across kill and restart, like a replica would."""
    server = RedisServer(
        extra_args=["--appendonly", "yes", "--appendfsync", "always"], workdir=str(tmp_path)
    ).start()
    yield server
    server.stop()


def test_outage_workload(
    session: boto3.Session, namespace: str, persistent_server: RedisServer
) -> None:
    """Stop, restart and stop again a real server that keeps its data across restarts."""
    server = persistent_server
    registration = ddbcache_hooks.register(
        session,
        fault_client(server.port),
        namespace=namespace,
        breaker_threshold=2,
        breaker_cooldown_ms=300,
        settle_ms=0,
    )
    c = session.client("dynamodb")
    make_table(c, "items")
    truth = boto3.Session(region_name="us-east-1").client("dynamodb")  # uncached
    keys = [{"pk": {"S": f"k{i}"}} for i in range(8)]
    rng = random.Random(5)

    def workload(rounds: int) -> None:
        for n in range(rounds):
            key = rng.choice(keys)
            if rng.random() < 0.3:
                c.put_item(TableName="items", Item={**key, "v": {"S": f"{time.time()}-{n}"}})
            elif rng.random() < 0.5:
                response = c.batch_get_item(RequestItems={"items": {"Keys": [key]}})
                assert response["Responses"]["items"] == current(key, as_list=True)
            else:
                assert c.get_item(TableName="items", Key=key).get("Item") == current(key)

    def current(key: Any, as_list: bool = False) -> Any:
        item = truth.get_item(TableName="items", Key=key, ConsistentRead=True).get("Item")
        return ([item] if item else []) if as_list else item

    for key in keys:
        c.put_item(TableName="items", Item={**key, "v": {"S": "before"}})
        c.get_item(TableName="items", Key=key)  # every item cached before the outage
    workload(50)

    server.kill()
    workload(60)  # writes during the outage change cached items
    stats = registration.stats()
    assert stats["breaker_opened"] >= 1 and stats["errors"] >= 2
    assert len(registration._protocol.backlog) > 0
    before = AttemptCounting.attempts
    c.get_item(TableName="items", Key=keys[0])  # the breaker is open: no attempt at all
    c.put_item(TableName="items", Item={**keys[0], "v": {"S": "while-open"}})
    assert AttemptCounting.attempts == before

    server.restart()  # the old entries come back from the AOF
    time.sleep(0.35)
    workload(80)
    assert registration.stats()["backlog_replayed"] > 0
    assert len(registration._protocol.backlog) == 0

    server.kill()
    workload(40)
    server.restart()
    time.sleep(0.35)
    workload(40)
    for key in keys:  # no stale entry survived, including items written while Redis was down
        assert c.get_item(TableName="items", Key=key).get("Item") == current(key)
        assert c.get_item(TableName="items", Key=key).get("Item") == current(key)
    assert registration.stats()["hits"] > 0
    registration.unregister()


def test_backlog_overflow_flushes_the_table(
    session: boto3.Session, namespace: str, persistent_server: RedisServer
) -> None:
    server = persistent_server
    registration = ddbcache_hooks.register(
        session,
        fault_client(server.port),
        namespace=namespace,
        breaker_threshold=1,
        breaker_cooldown_ms=200,
        backlog_size=2,
    )
    c = session.client("dynamodb")
    make_table(c, "items")
    keys = [{"pk": {"S": f"k{i}"}} for i in range(6)]
    for key in keys:
        c.put_item(TableName="items", Item=key)
        c.get_item(TableName="items", Key=key)
    server.kill()
    for key in keys[:4]:  # four writes, room for two
        c.put_item(TableName="items", Item={**key, "v": {"S": "new"}})
    assert registration.stats()["backlog_overflows"] >= 1
    server.restart()
    time.sleep(0.25)
    for key in keys:  # even the items that were not written miss once: the table was flushed
        assert "CacheMetadata" not in c.get_item(TableName="items", Key=key)
    registration.unregister()


def test_unreachable_at_runtime_costs_little(session: boto3.Session, namespace: str) -> None:
    with RedisServer() as server:
        registration = ddbcache_hooks.register(
            session, fault_client(server.port), namespace=namespace, breaker_cooldown_ms=60_000
        )
        c = session.client("dynamodb")
        make_table(c, "items")
        server.kill()
        started = time.monotonic()
        for _ in range(20):
            c.get_item(TableName="items", Key=KEY)
        assert time.monotonic() - started < 2.0  # time-outs, then the breaker: no hang
        assert registration.stats()["breaker_opened"] == 1
        registration.unregister()


# --- cluster -------------------------------------------------------------------------


def test_cluster_batches_send_once_per_node(
    session: boto3.Session,
    redis_cluster: RedisCluster,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host, port = redis_cluster.startup_nodes[0]
    client = redis.cluster.RedisCluster(host=host, port=port)
    registration = ddbcache_hooks.register(session, client, namespace=namespace)
    sends: list[int] = []
    original = redis.Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sends.append(self.port)
        original(self, command, check_health)

    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        keys = [{"pk": {"S": f"k{i}"}} for i in range(100)]
        c.batch_get_item(RequestItems={"items": {"Keys": keys}})
        monkeypatch.setattr(redis.Connection, "send_packed_command", counting)
        response = c.batch_get_item(RequestItems={"items": {"Keys": keys}})
        assert response["CacheMetadata"]["CacheHitCount"] == 100
        # 100 lookups over every node: one pipeline per node, written before any reply is read.
        assert len(sends) == len(set(sends)) == 3
        sends.clear()
        c.batch_write_item(
            RequestItems={"items": [{"DeleteRequest": {"Key": k}} for k in keys[:25]]}
        )
        assert len(sends) == len(set(sends)) <= 3
    finally:
        monkeypatch.undo()
        registration.unregister()


def test_cluster_resharding_is_invisible(
    session: boto3.Session, redis_cluster: RedisCluster, namespace: str
) -> None:
    from redis.crc import key_slot

    host, port = redis_cluster.startup_nodes[0]
    registration = ddbcache_hooks.register(
        session, redis.cluster.RedisCluster(host=host, port=port), namespace=namespace
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        keys = [{"pk": {"S": f"k{i}"}} for i in range(12)]
        for key in keys:
            c.put_item(TableName="items", Item=key)
            c.get_item(TableName="items", Key=key)
        moved = keys[:3]
        for key in moved:
            slot = key_slot(entry_key(registration, "items", key).encode())
            owner = redis_cluster.slot_owner(slot)
            redis_cluster.migrate_slot(slot, (owner + 1) % 3)
        for key in keys[3:]:  # MOVED handled by the client: still hits, no errors
            response = c.get_item(TableName="items", Key=key)
            assert response["CacheMetadata"]["CacheHit"] and response["Item"] == key
        for key in moved:  # bound to the master that filled them: refilled once
            assert c.get_item(TableName="items", Key=key)["Item"] == key
            response = c.get_item(TableName="items", Key=key)
            assert response["CacheMetadata"]["CacheHit"] and response["Item"] == key
        c.put_item(TableName="items", Item={**moved[0], "v": {"S": "new"}})
        after = c.get_item(TableName="items", Key=moved[0])
        assert "CacheMetadata" not in after and after["Item"]["v"] == {"S": "new"}
        assert registration.stats()["errors"] == 0
    finally:
        registration.unregister()
