"""Redis that forgets or drops what the protocol wrote: restarts, failovers, eviction.

Real servers: a restart from an RDB snapshot after ``kill -9`` (of a single
server, and of one master of a cluster), a failover to a replica that missed
an invalidation and the fail-back to the old primary (``REPLICAOF``, clients
reaching the primary through one endpoint), and a settle marker evicted under
``maxmemory`` with ``volatile-ttl``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

import ddbcache_hooks
from tests.conftest import _binary, make_table
from tests.servers import (
    Forwarder,
    RedisCluster,
    RedisServer,
    promote,
    replicate,
    settle_replicas,
)

A = {"pk": {"S": "a"}}


def client_for(host: str, port: int) -> redis.Redis:
    return redis.Redis(host=host, port=port, retry=Retry(NoBackoff(), 0))


def put(c: Any, value: str) -> None:
    c.put_item(TableName="tbl", Item={**A, "v": {"S": value}})


def reads(c: Any, count: int = 3) -> list[tuple[str, bool]]:
    """``count`` reads of A: (value, served from the cache)."""
    out = []
    for _ in range(count):
        answer = c.get_item(TableName="tbl", Key=A)
        out.append((answer["Item"]["v"]["S"], "CacheMetadata" in answer))
    return out


def page(c: Any) -> tuple[str, bool]:
    """A Query page of A's partition: (A's value on it, served from the cache)."""
    answer = c.query(
        TableName="tbl", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": A["pk"]}
    )
    return answer["Items"][0]["v"]["S"], "CacheMetadata" in answer


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    """Two servers that can replicate each other (a full sync starts at once)."""
    args = ["--repl-diskless-sync-delay", "0"]
    with (
        RedisServer(_binary(), extra_args=args) as first,
        RedisServer(_binary(), extra_args=args) as second,
    ):
        yield first, second


def test_restart_from_a_snapshot_does_not_bring_back_invalidated_entries(
    session: boto3.Session, namespace: str, tmp_path: Any
) -> None:
    server = RedisServer(_binary(), workdir=str(tmp_path / "redis"))
    with server:
        registration = ddbcache_hooks.register(
            session, client_for(server.host, server.port), namespace=namespace, settle_ms=0
        )
        try:
            c = session.client("dynamodb")
            make_table(c, "tbl")
            put(c, "1")
            assert reads(c, 2) == [("1", False), ("1", True)]
            assert [page(c), page(c)] == [("1", False), ("1", True)]
            # The snapshot holds the entry, the page and its partition token; the
            # write's invalidation is acknowledged after it, then lost with the crash.
            with client_for(server.host, server.port) as admin:
                admin.save()
            put(c, "2")
            server.kill()  # kill -9: what the snapshot does not hold is lost
            server.restart()
            assert [value for value, _ in reads(c, 3)] == ["2", "2", "2"]
            assert reads(c, 1) == [("2", True)]  # and the cache works again
            assert [page(c), page(c)] == [("2", False), ("2", True)]
        finally:
            registration.unregister()


def test_failover_to_a_replica_that_missed_an_invalidation(
    session: boto3.Session, namespace: str, servers: tuple[RedisServer, RedisServer]
) -> None:
    primary, replica = servers
    replicate(replica, primary)
    with Forwarder(primary) as endpoint:
        registration = ddbcache_hooks.register(
            session, client_for(endpoint.host, endpoint.port), namespace=namespace, settle_ms=0
        )
        try:
            c = session.client("dynamodb")
            make_table(c, "tbl")
            put(c, "1")
            assert reads(c, 2) == [("1", False), ("1", True)]
            settle_replicas(primary)  # the replica holds the entry of "1" ...
            promote(replica)  # ... and is cut off before the write below
            put(c, "2")  # invalidated on the primary, acknowledged
            endpoint.switch(replica)  # failover
            assert [value for value, _ in reads(c, 3)] == ["2", "2", "2"]
            assert reads(c, 1) == [("2", True)]
        finally:
            registration.unregister()


def test_fail_back_to_an_old_primary_that_missed_an_invalidation(
    session: boto3.Session, namespace: str, servers: tuple[RedisServer, RedisServer]
) -> None:
    primary, replica = servers
    replicate(replica, primary)
    with Forwarder(primary) as endpoint:
        registration = ddbcache_hooks.register(
            session, client_for(endpoint.host, endpoint.port), namespace=namespace, settle_ms=0
        )
        try:
            c = session.client("dynamodb")
            make_table(c, "tbl")
            put(c, "1")
            settle_replicas(primary)
            promote(replica)  # a clean failover: nothing lost
            endpoint.switch(replica)
            reads(c, 1)
            assert reads(c, 2) == [("1", True), ("1", True)]
            # The old primary rejoins as a replica of the new one, and is promoted
            # back while cut off from a later write's invalidation.
            replicate(primary, replica)
            promote(primary)
            put(c, "2")  # invalidated on the new primary, acknowledged
            endpoint.switch(primary)  # fail-back
            assert [value for value, _ in reads(c, 3)] == ["2", "2", "2"]
            assert reads(c, 1) == [("2", True)]
        finally:
            registration.unregister()


# --- the settle window under eviction -------------------------------------------------------


def _namespace_hashes(raw: redis.Redis, namespace: str) -> list[bytes]:
    return [k for k in raw.scan_iter(match=f"{namespace}*") if raw.type(k) == b"hash"]


def test_an_evicted_settle_marker_does_not_lengthen_a_fill(
    session: boto3.Session, namespace: str
) -> None:
    """``volatile-ttl`` evicts the marker first (the shortest TTL); the window must hold."""
    settle_ms = 5000
    args = ["--maxmemory-policy", "volatile-ttl", "--maxmemory-samples", "10"]
    with RedisServer(_binary(), extra_args=args) as server:
        raw = client_for(server.host, server.port)
        registration = ddbcache_hooks.register(
            session, client_for(server.host, server.port), namespace=namespace, settle_ms=settle_ms
        )
        try:
            c = session.client("dynamodb")
            make_table(c, "tbl")
            put(c, "1")  # opens the window: a marker with a TTL of (at most) two windows
            markers = [
                k
                for k in _namespace_hashes(raw, namespace)
                if 0 < raw.pttl(k) <= 2 * settle_ms and k.startswith(f"{namespace}:i:".encode())
            ]
            assert len(markers) == 1  # the item's (its partitions' are marked alike)
            marker = markers[0]

            # Memory pressure: keys with a long TTL until the marker is evicted.
            used = int(raw.info("memory")["used_memory"])
            raw.config_set("maxmemory", used + 512 * 1024)
            try:
                for batch in range(200):
                    pipe = raw.pipeline(transaction=False)
                    for i in range(20):
                        pipe.set(f"filler:{batch}:{i}", b"x" * 8192, ex=3600)
                    pipe.execute()
                    if not raw.exists(marker):
                        break
            finally:
                raw.config_set("maxmemory", 0)
            assert not raw.exists(marker)
            assert int(raw.info("stats")["evicted_keys"]) > 0

            assert reads(c, 2) == [("1", False), ("1", True)]  # filled inside the window
            assert 0 < raw.pttl(marker) <= 2 * settle_ms  # not for the full TTL
        finally:
            registration.unregister()
            raw.close()


# --- a cluster: each master on its own ------------------------------------------------------


def _hashes_on(cluster: RedisCluster, namespace: str) -> dict[bytes, int]:
    """Every hash of the namespace -> index of the master holding it."""
    found = {}
    for index in range(len(cluster.servers)):
        with cluster.client(index) as node:
            for key in node.scan_iter(match=f"{namespace}*"):
                if node.type(key) == b"hash":
                    found[key] = index
    return found


@pytest.mark.parametrize("cluster_buckets", [0, 8])
def test_a_cluster_master_restarted_from_a_snapshot_is_judged_on_its_own(
    session: boto3.Session, namespace: str, redis_cluster: RedisCluster, cluster_buckets: int
) -> None:
    """Without buckets, an item on a master that holds no table tokens; with them, on a
    master that holds its bucket's copy (restored from the snapshot too)."""
    cluster = redis_cluster
    host, port = cluster.startup_nodes[0]
    registration = ddbcache_hooks.register(
        session,
        redis.cluster.RedisCluster(host=host, port=port, retry=Retry(NoBackoff(), 0)),
        namespace=namespace,
        settle_ms=0,
        cluster_buckets=cluster_buckets,
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "tbl")
        where: dict[str, int] = {}  # item -> master holding its hash
        known = set()
        for i in range(12):
            key = {"pk": {"S": f"k{i}"}}
            c.put_item(TableName="tbl", Item={**key, "v": {"S": "1"}})
            c.get_item(TableName="tbl", Key=key)
            new = {k: n for k, n in _hashes_on(cluster, namespace).items() if k not in known}
            known.update(new)
            for hash_key, node in new.items():
                with cluster.client(node) as conn:
                    if any(f.startswith(b"e:") for f in conn.hkeys(hash_key)):
                        where[f"k{i}"] = node
        tokens = set()
        for hash_key, node in _hashes_on(cluster, namespace).items():
            with cluster.client(node) as conn:
                if conn.hexists(hash_key, "i"):
                    tokens.add(node)
        x = next(item for item, node in where.items() if cluster_buckets or node not in tokens)
        assert not cluster_buckets or where[x] in tokens
        y = next(item for item, node in where.items() if node != where[x])
        restarted = cluster.servers[where[x]]

        with cluster.client(where[x]) as node:
            node.save()  # the snapshot holds x's entry
        c.put_item(TableName="tbl", Item={"pk": {"S": x}, "v": {"S": "2"}})  # acknowledged
        restarted.kill()
        restarted.restart()
        cluster.wait_consistent()

        def read(item: str) -> tuple[str, bool]:
            answer = c.get_item(TableName="tbl", Key={"pk": {"S": item}})
            return answer["Item"]["v"]["S"], "CacheMetadata" in answer

        assert [read(x)[0] for _ in range(3)] == ["2", "2", "2"]
        assert read(x) == ("2", True)
        assert read(y) == ("1", True)  # another master: its entries still hit
    finally:
        registration.unregister()
