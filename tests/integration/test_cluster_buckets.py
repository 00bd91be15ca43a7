"""``cluster_buckets``: one node per hit on a Redis Cluster, and what it costs elsewhere.

Real boto3 clients (moto in-process), the real 3-master cluster of the test
session. The behavioural suite runs on this layout too (the ``cluster-buckets``
backend), and so do the staleness checkers (test_consistency.py).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
import redis.cluster
from redis.crc import key_slot

import ddbcache_hooks
from ddbcache_hooks import NearCache, cli
from ddbcache_hooks.errors import ConfigurationError
from ddbcache_hooks.scripts import READ_HITS
from tests.conftest import REGION, commands_of, make_table
from tests.servers import RedisCluster

KEY = {"pk": {"S": "a"}}
BUCKETS = 8


def cluster_client(cluster: RedisCluster) -> redis.cluster.RedisCluster:
    host, port = cluster.startup_nodes[0]
    return redis.cluster.RedisCluster(host=host, port=port)


def another_process(
    cluster: RedisCluster, namespace: str, **options: Any
) -> ddbcache_hooks.Registration:
    """A registration on a session of its own (a process of the namespace)."""
    return ddbcache_hooks.register(
        boto3.Session(region_name=REGION), cluster_client(cluster), namespace=namespace, **options
    )


class Wire:
    """What each write to a server carried: (port, commands), one per round trip; only
    this thread's (the registration's background threads write on their own)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[tuple[int, list[tuple[bytes, ...]]]] = []
        self._monkeypatch = monkeypatch
        original = redis.Connection.send_packed_command
        caller = threading.get_ident()

        def recording(connection: Any, command: Any, check_health: bool = True) -> None:
            if threading.get_ident() == caller:
                data = command if isinstance(command, (bytes, str)) else b"".join(command)
                packed = data.encode() if isinstance(data, str) else bytes(data)
                self.sent.append((connection.port, commands_of(packed)))
            original(connection, command, check_health)

        self._recording = recording

    def __enter__(self) -> Wire:
        self._monkeypatch.setattr(redis.Connection, "send_packed_command", self._recording)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._monkeypatch.undo()


@pytest.fixture
def bucketed(
    session: boto3.Session, redis_cluster: RedisCluster, namespace: str
) -> Iterator[tuple[Any, ddbcache_hooks.Registration]]:
    registration = ddbcache_hooks.register(
        session,
        cluster_client(redis_cluster),
        namespace=namespace,
        cluster_buckets=BUCKETS,
        key_schema={"items": "pk", "pairs": ("pk", "sk")},
        settle_ms=0,  # entries filled right after the writes below live their TTL
    )
    c = session.client("dynamodb")
    make_table(c, "items")
    make_table(c, "pairs", ("pk", "S"), ("sk", "S"))
    yield c, registration
    registration.unregister()


def query(c: Any, partition: str) -> dict[str, Any]:
    response: dict[str, Any] = c.query(
        TableName="pairs",
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": partition}},
    )
    return response


def test_a_hit_is_one_command_on_one_node(
    bucketed: tuple[Any, ddbcache_hooks.Registration], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GetItem hit and a Query page of one partition each send exactly one EVALSHA of
    the hit script, to one node; a write is one round trip per node it touches."""
    c, _ = bucketed
    for n in range(20):
        c.put_item(TableName="items", Item={"pk": {"S": f"k{n}"}, "v": {"N": str(n)}})
        c.put_item(TableName="pairs", Item={"pk": {"S": f"p{n}"}, "sk": {"S": "1"}})
        c.get_item(TableName="items", Key={"pk": {"S": f"k{n}"}})
        query(c, f"p{n}")
    script = [(b"EVALSHA", READ_HITS.sha.encode())]
    for n in range(20):
        with Wire(monkeypatch) as wire:
            hit = c.get_item(TableName="items", Key={"pk": {"S": f"k{n}"}})
        assert hit["CacheMetadata"]["CacheHit"] is True
        assert len(wire.sent) == 1 and [cmd[:2] for cmd in wire.sent[0][1]] == script
        (command,) = wire.sent[0][1]
        keys = command[3 : 3 + int(command[2])]
        assert len({key_slot(k) for k in keys}) == 1  # entry and tokens: one slot
        with Wire(monkeypatch) as wire:
            page = query(c, f"p{n}")
        assert page["CacheMetadata"]["CacheHit"] is True
        assert len(wire.sent) == 1 and [cmd[:2] for cmd in wire.sent[0][1]] == script
        (command,) = wire.sent[0][1]
        assert int(command[2]) == 3  # the page, its bucket's tokens, its partition
    with Wire(monkeypatch) as wire:
        c.put_item(TableName="items", Item={"pk": {"S": "k0"}, "v": {"N": "-1"}})
    ports = [port for port, _ in wire.sent]
    assert len(ports) == len(set(ports)) <= 3  # one round trip per node touched


def test_without_buckets_a_hit_reads_two_nodes(
    session: boto3.Session,
    redis_cluster: RedisCluster,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default layout, for contrast: the entry and its table's tokens are in two slots."""
    registration = ddbcache_hooks.register(
        session, cluster_client(redis_cluster), namespace=namespace, settle_ms=0
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        c.put_item(TableName="items", Item=KEY)
        c.get_item(TableName="items", Key=KEY)
        with Wire(monkeypatch) as wire:
            assert "CacheMetadata" in c.get_item(TableName="items", Key=KEY)
        commands = [cmd for _, sent in wire.sent for cmd in sent]
        assert [cmd[:2] for cmd in commands] == [(b"EVALSHA", READ_HITS.sha.encode())] * 2
    finally:
        registration.unregister()


def test_a_table_wide_invalidation_replaces_every_bucket(
    bucketed: tuple[Any, ddbcache_hooks.Registration],
    redis_cluster: RedisCluster,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Entries in every bucket; a table-wide invalidation replaces each bucket's copy of
    the tokens, in one round trip per node, and every entry misses afterwards."""
    c, registration = bucketed
    raw = cluster_client(redis_cluster)
    keys = [{"pk": {"S": f"k{n}"}} for n in range(64)]
    for key in keys:
        c.put_item(TableName="items", Item=key)
        c.get_item(TableName="items", Key=key)
    copies = [f"{namespace}:t:{{{b}#{REGION}:items}}" for b in range(BUCKETS)]
    before = [raw.hget(copy, "i") for copy in copies]
    assert all(before), "a bucket took no entry"
    hits = sum("CacheMetadata" in c.get_item(TableName="items", Key=k) for k in keys)
    assert hits == len(keys)

    with Wire(monkeypatch) as wire:
        assert registration.invalidate_table("items") is True
    ports = [port for port, _ in wire.sent]
    assert len(ports) == len(set(ports)) == 3
    after = [raw.hget(copy, "i") for copy in copies]
    assert all(a and a != b for a, b in zip(after, before, strict=True))
    assert not any("CacheMetadata" in c.get_item(TableName="items", Key=k) for k in keys)
    raw.close()


def test_a_table_wide_invalidation_drops_near_copies(
    session: boto3.Session, redis_cluster: RedisCluster, namespace: str
) -> None:
    """Near copies are held under the table's own token key, which invalidations name."""
    near = NearCache(max_items=100, ttl_ms=60_000)
    registration = ddbcache_hooks.register(
        session,
        cluster_client(redis_cluster),
        namespace=namespace,
        cluster_buckets=BUCKETS,
        near_cache=near,
        settle_ms=0,
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        c.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
        c.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" in c.get_item(TableName="items", Key=KEY)  # held near now
        registration.invalidate_table("items")
        assert "CacheMetadata" not in c.get_item(TableName="items", Key=KEY)
    finally:
        registration.unregister()


def test_processes_that_disagree_on_buckets_refuse_to_start(
    redis_cluster: RedisCluster,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = another_process(redis_cluster, namespace, cluster_buckets=BUCKETS)
    try:
        # The same layout: starts.
        another_process(redis_cluster, namespace, cluster_buckets=BUCKETS).unregister()
        for other in (0, 16):
            with pytest.raises(ConfigurationError) as raised:
                another_process(redis_cluster, namespace, cluster_buckets=other)
            message = str(raised.value)
            assert f"cluster_buckets={other} here" in message
            assert f"use cluster_buckets={BUCKETS} ({namespace}:layout" in message
            assert "ddbcache flush" in message
        # Another namespace is another cache: it may choose its own.
        another_process(redis_cluster, namespace + "x").unregister()
        # Environment activation: said once, and the application runs uncached.
        monkeypatch.setenv("DDBCACHE_NAMESPACE", namespace)
        from ddbcache_hooks import plugin

        with caplog.at_level(logging.WARNING, logger="ddbcache_hooks"):
            made = plugin.register_from_environment(
                {
                    "DDBCACHE_REDIS_URL": redis_cluster.url,
                    "DDBCACHE_NAMESPACE": namespace,
                    "DDBCACHE_CLUSTER_BUCKETS": "0",
                }
            )
        assert made is None
        assert [
            r.getMessage() for r in caplog.records if "cluster_buckets=0 here" in r.getMessage()
        ]
    finally:
        first.unregister()
    # Changing it: every process stopped, the namespace flushed, then the new value starts.
    out = io.StringIO()
    code = cli.main(["flush", "--redis-url", redis_cluster.url, "--yes"], out=out)
    assert code == 0, out.getvalue()
    another_process(redis_cluster, namespace, cluster_buckets=16).unregister()


def test_buckets_on_a_single_node_are_said_once_and_change_nothing(
    session: boto3.Session,
    redis_server: Any,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="ddbcache_hooks"):
        registration = ddbcache_hooks.register(
            session, redis_server.url, namespace=namespace, cluster_buckets=BUCKETS
        )
    try:
        said = [r.getMessage() for r in caplog.records if "cluster_buckets" in r.getMessage()]
        assert len(said) == 1 and "no effect" in said[0] and "single node" in said[0]
        c = session.client("dynamodb")
        make_table(c, "items")
        c.put_item(TableName="items", Item=KEY)
        c.get_item(TableName="items", Key=KEY)
        raw = redis.Redis.from_url(redis_server.url)
        names = [k.decode() for k in raw.scan_iter(match=f"{namespace}:*")]
        assert names and not any("#" in name for name in names)
        assert f"{namespace}:layout" not in names
    finally:
        registration.unregister()


def test_doctor_reports_the_layout(
    moto_url: str, redis_cluster: RedisCluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("DDBCACHE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_url)
    monkeypatch.setenv("DDBCACHE_NAMESPACE", namespace)
    monkeypatch.setenv("DDBCACHE_CLUSTER_BUCKETS", str(BUCKETS))

    def doctor() -> tuple[int, str]:
        out = io.StringIO()
        code = cli.main(["doctor", "--redis-url", redis_cluster.url], out=out)
        return code, out.getvalue()

    code, out = doctor()
    assert code == 0, out
    assert "8 buckets per table: a hit reads one node" in out
    assert "served by the read-only hit script (1 command(s), one round trip)" in out
    # A namespace whose processes use another layout: the check fails, by name.
    raw = cluster_client(redis_cluster)
    raw.set(f"{namespace}:layout", "spread")
    code, out = doctor()
    assert code == 1
    assert "cluster_buckets=8 here, but processes of this namespace use cluster_buckets=0" in out
    raw.delete(f"{namespace}:layout")
    raw.close()


def test_a_slot_no_node_serves_is_an_outage_not_an_exception(
    bucketed: tuple[Any, ddbcache_hooks.Registration], monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cluster client raises SlotNotCoveredError (no RedisError) while no node
    serves a slot: the read goes to DynamoDB and the application sees its answer."""
    from redis.exceptions import SlotNotCoveredError

    c, registration = bucketed
    c.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}})
    c.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" in c.get_item(TableName="items", Key=KEY)
    nodes = registration._transport.client.nodes_manager

    def uncovered(*args: Any, **kwargs: Any) -> Any:
        raise SlotNotCoveredError("Slot is not covered by the cluster")

    monkeypatch.setattr(nodes, "get_node_from_slot", uncovered)
    monkeypatch.setattr(nodes, "slots_cache", {})
    monkeypatch.setattr(nodes, "initialize", lambda *args, **kwargs: None)
    before = registration.stats()["errors"]
    for _ in range(2):
        answer = c.get_item(TableName="items", Key=KEY)
        assert answer["Item"]["v"] == {"S": "1"} and "CacheMetadata" not in answer
    assert registration.stats()["errors"] > before
    monkeypatch.undo()


def test_stream_invalidators_check_the_layout_too(
    redis_cluster: RedisCluster, namespace: str, aws: None
) -> None:
    """The streams consumer and the Lambda handler drop entries without a registration:
    with another cluster_buckets they would drop the wrong keys, so they refuse too."""
    from ddbcache_hooks.config import Settings
    from ddbcache_hooks.streams import Consumer
    from ddbcache_hooks.streams.lambda_handler import Invalidator

    another_process(redis_cluster, namespace, cluster_buckets=BUCKETS).unregister()
    consumer = Consumer(["items"], redis=redis_cluster.url, namespace=namespace)
    with pytest.raises(ConfigurationError, match="cluster_buckets=0 here"):
        consumer.step()
    record = {
        "eventSource": "aws:dynamodb",
        "eventSourceARN": f"arn:aws:dynamodb:{REGION}:123456789012:table/items/stream/s",
        "dynamodb": {"Keys": KEY, "SequenceNumber": "1"},
    }
    settings = Settings.resolve({"namespace": namespace, "cluster_buckets": 16})
    with pytest.raises(ConfigurationError, match="cluster_buckets=16 here"):
        Invalidator(settings, redis_cluster.url).apply([record])
    # Agreeing, the record is applied.
    agreed = Settings.resolve({"namespace": namespace, "cluster_buckets": BUCKETS})
    assert Invalidator(agreed, redis_cluster.url).apply([record]) == []


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
def test_an_async_hit_is_one_command_on_one_node(
    redis_cluster: RedisCluster, namespace: str, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The async twin: a bucketed cluster hit is one EVALSHA of the hit script, sent to the
    slot's node (not through the cluster pipeline)."""
    import asyncio

    import aioboto3
    import redis.asyncio as aredis

    sent: list[tuple[int, list[tuple[bytes, ...]]]] = []
    original = aredis.Connection.send_packed_command

    async def recording(connection: Any, command: Any, check_health: bool = True) -> None:
        data = command if isinstance(command, (bytes, str)) else b"".join(command)
        packed = data.encode() if isinstance(data, str) else bytes(data)
        sent.append((connection.port, commands_of(packed)))
        await original(connection, command, check_health)

    admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item=KEY)

    async def main() -> None:
        session = aioboto3.Session(region_name=REGION)
        registration = await ddbcache_hooks.register_async(
            session, redis_cluster.url, namespace=namespace, cluster_buckets=BUCKETS
        )
        try:
            async with session.client("dynamodb", endpoint_url=moto_url) as c:
                for _ in range(3):  # the access check's read, the fill, then a hit
                    await c.get_item(TableName="items", Key=KEY)
                monkeypatch.setattr(aredis.Connection, "send_packed_command", recording)
                answer = await c.get_item(TableName="items", Key=KEY)
                monkeypatch.undo()
                assert "CacheMetadata" in answer
                assert len(sent) == 1
                assert [cmd[:2] for cmd in sent[0][1]] == [(b"EVALSHA", READ_HITS.sha.encode())]
        finally:
            monkeypatch.undo()
            await registration.aclose()

    asyncio.run(main())


def test_a_layout_record_nobody_of_ours_wrote_is_named(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    """Another application wrote into the namespace's layout key: said, with the fix."""
    raw = cluster_client(redis_cluster)
    raw.set(f"{namespace}:layout", "v2")
    with pytest.raises(ConfigurationError) as raised:
        another_process(redis_cluster, namespace)
    assert str(raised.value).startswith(f"{namespace}:layout holds 'v2', which is no layout")
    assert f"DEL {namespace}:layout" in str(raised.value)
    raw.delete(f"{namespace}:layout")
    another_process(redis_cluster, namespace).unregister()
    assert raw.get(f"{namespace}:layout") == b"spread"
    raw.close()


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
def test_an_async_registration_checks_the_layout_too(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    import asyncio

    import aioboto3

    another_process(redis_cluster, namespace, cluster_buckets=BUCKETS).unregister()

    async def main() -> None:
        with pytest.raises(ConfigurationError, match=f"cluster_buckets=0 here, .*={BUCKETS}"):
            await ddbcache_hooks.register_async(
                aioboto3.Session(region_name=REGION), redis_cluster.url, namespace=namespace
            )
        agreed = await ddbcache_hooks.register_async(
            aioboto3.Session(region_name=REGION),
            redis_cluster.url,
            namespace=namespace,
            cluster_buckets=BUCKETS,
        )
        await agreed.aclose()

    asyncio.run(main())
