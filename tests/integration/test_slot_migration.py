"""A slot in migration on the 3-master cluster, under load on the hot key it holds.

While a slot is ``MIGRATING`` / ``IMPORTING``, a script whose key exists on
the source runs there, and once it deleted the key it may not create it again
("Script attempted to access a non local key in a cluster node"); keys in
flight answer ``ASK``, multi-key requests over a split slot ``TRYAGAIN``. None
of it is an outage: each is retried on the node that now holds the slot, and
the breaker does not move. Reads and writes of one hot item run in threads
the whole time; a read that starts after a write returned must see it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import boto3
import pytest
import redis.cluster
from redis.crc import key_slot

import ddbcache_hooks
from ddbcache_hooks.effects import migrating
from tests.conftest import make_table
from tests.servers import RedisCluster, _cmd

A = {"pk": {"S": "hot"}}


def _entry_key(registration: ddbcache_hooks.Registration, key: Any) -> str:
    (ref,) = registration.table_refs("items")
    return registration._protocol.planner.item_key(ref, key)


def _hold_migrating(cluster: RedisCluster, slot: int, target_index: int, load_s: float) -> None:
    """Migrate ``slot`` with load running at each step: marked, half its keys moved, done."""
    source_index = cluster.slot_owner(slot)
    source_id, target_id = cluster.node_id(source_index), cluster.node_id(target_index)
    target = cluster.servers[target_index]
    with (
        contextlib.closing(cluster.client(source_index)) as source,
        contextlib.closing(cluster.client(target_index)) as dest,
    ):
        _cmd(dest, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        _cmd(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        time.sleep(load_s)  # every key still on the source
        keys = _cmd(source, "CLUSTER", "GETKEYSINSLOT", slot, 100)
        if len(keys) > 1:
            _cmd(source, "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys[::2])
            time.sleep(load_s)  # split between the two nodes
        while keys := _cmd(source, "CLUSTER", "GETKEYSINSLOT", slot, 100):
            _cmd(source, "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
        time.sleep(load_s)  # all keys moved, slot still migrating
        for index in range(len(cluster.servers)):
            with contextlib.closing(cluster.client(index)) as conn:
                _cmd(conn, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
    cluster.wait_consistent()


@pytest.mark.parametrize("cluster_buckets", [0, 8])
def test_migrating_the_slot_of_a_hot_key_under_load(
    session: boto3.Session, redis_cluster: RedisCluster, namespace: str, cluster_buckets: int
) -> None:
    """With buckets, the slot holds the item's hash and its bucket's tokens, and a hit is
    sent packed to the node the slot map names: a redirect sends it through the cluster
    client instead."""
    host, port = redis_cluster.startup_nodes[0]
    registration = ddbcache_hooks.register(
        session,
        redis.cluster.RedisCluster(host=host, port=port),
        namespace=namespace,
        cluster_buckets=cluster_buckets,
    )
    stop = threading.Event()
    retried = [0]  # batches a migration refused in part, sent again
    transport = registration._transport
    retry = transport._retry_migrating

    def counting_retry(calls: Any, replies: list[Any]) -> None:
        retried[0] += any(migrating(reply) for reply in replies)
        retry(calls, replies)

    transport._retry_migrating = counting_retry
    acknowledged = [0]  # the last write that returned
    stale: list[tuple[int, int]] = []
    counts = {"reads": 0, "writes": 0}
    failures: list[BaseException] = []
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        c.put_item(TableName="items", Item={**A, "v": {"N": "0"}})
        slot = key_slot(_entry_key(registration, A).encode())

        def writer() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                c.put_item(TableName="items", Item={**A, "v": {"N": str(n)}})
                acknowledged[0] = n
                counts["writes"] += 1
                time.sleep(0.005)

        def reader() -> None:
            while not stop.is_set():
                floor = acknowledged[0]
                value = int(c.get_item(TableName="items", Key=A)["Item"]["v"]["N"])
                counts["reads"] += 1
                if value < floor:
                    stale.append((value, floor))

        def guarded(work: Any) -> Any:
            def run() -> None:
                try:
                    work()
                except BaseException as exc:  # reaches the test, not a silent thread death
                    failures.append(exc)

            return run

        threads = [threading.Thread(target=guarded(writer))]
        threads += [threading.Thread(target=guarded(reader)) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(2):
                owner = redis_cluster.slot_owner(slot)
                _hold_migrating(redis_cluster, slot, (owner + 1) % 3, load_s=0.7)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        stats = registration.stats()
        print(
            f"{counts['reads']} reads, {counts['writes']} writes during two migrations: "
            f"{len(stale)} stale, {retried[0]} batches refused by the migration and sent "
            f"again, errors {stats['errors']}, breaker opened {stats['breaker_opened']}, "
            f"hits {stats['hits']}"
        )
        assert not failures, failures
        assert counts["reads"] > 100 and counts["writes"] > 50
        assert stale == []
        assert stats["breaker_opened"] == 0
        assert stats["errors"] == 0 and stats["slot_migrations"] == 0
        assert stats["hits"] > 0
        assert retried[0] > 0  # the migration did refuse some (else the test proves nothing)
    finally:
        registration.unregister()
