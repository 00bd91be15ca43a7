"""Only a primary serves the cache: a URL that reaches a replica.

Real servers: a primary and its replica, reached through one endpoint (a
Forwarder, as a DNS name or a proxy would). The replica was never promoted and
its replication link is down (``REPLICAOF`` a dead port), so it holds the
entries it copied while the primary takes writes it never sees. A writer
(this process) and a reader (a second process) share the endpoint.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import boto3
import pytest
import redis

import ddbcache_hooks
from ddbcache_hooks._redis_server import free_port
from tests.conftest import REGION, _binary, make_table
from tests.readers import A, Reader
from tests.servers import Forwarder, RedisServer, replicate, settle_replicas

READS = 40


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    args = ["--repl-diskless-sync-delay", "0"]
    with (
        RedisServer(_binary(), extra_args=args) as first,
        RedisServer(_binary(), extra_args=args) as second,
    ):
        yield first, second


def cut_off(server: RedisServer) -> None:
    """Make ``server`` a replica whose link is down: of a port nothing listens on."""
    with contextlib.closing(redis.Redis(server.host, server.port)) as admin:
        admin.execute_command("REPLICAOF", "127.0.0.1", free_port())
        info = admin.info("replication")
        assert info["role"] == "slave" and info["master_link_status"] == "down", info


def stale(reader: Reader, want: str) -> int:
    values = reader.read("get", READS)
    count = sum(value != want for value, _ in values)
    print(f"{READS} reads after the write: {count} stale, {sum(c for _, c in values)} cached")
    return count


def not_primary_errors(caplog: pytest.LogCaptureFixture, url: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and "is not a primary" in r.getMessage()
        and url in r.getMessage()
    ]


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_endpoint_switched_to_a_cut_off_replica(
    moto_url: str,
    servers: tuple[RedisServer, RedisServer],
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, replica = servers
    replicate(replica, primary)
    admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "tbl")
    admin.put_item(TableName="tbl", Item={**A, "v": {"S": "1"}})
    with Forwarder(primary) as endpoint:
        reader = Reader(moto_url, endpoint.url, namespace)
        session = boto3.Session(region_name=REGION)
        writer = ddbcache_hooks.register(
            session, endpoint.url, namespace=namespace, key_schema={"tbl": "pk"}
        )
        try:
            client = session.client("dynamodb", endpoint_url=moto_url)
            assert reader.read("get", 2) == [("1", False), ("1", True)]
            settle_replicas(primary)  # the replica holds the entry of "1"
            cut_off(replica)
            endpoint.switch(replica)
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="ddbcache_hooks"):
                client.put_item(TableName="tbl", Item={**A, "v": {"S": "2"}})
            assert stale(reader, "2") == 0
            # Said loudly, naming the endpoint; the invalidation is held, not lost.
            assert not_primary_errors(caplog, endpoint.url)
            assert writer.stats()["not_primary"] >= 1
            assert reader.stats()["not_primary"] >= 1
            # A registration made now says so at once.
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="ddbcache_hooks"):
                late = ddbcache_hooks.register(
                    boto3.Session(region_name=REGION), endpoint.url, namespace=namespace
                )
            late.unregister()
            assert not_primary_errors(caplog, endpoint.url)
            # Back on the primary: the held invalidation is delivered there.
            endpoint.switch(primary)
            wait_for(lambda: writer.stats().get("backlog_replayed", 0) >= 1)
            assert stale(reader, "2") == 0
        finally:
            reader.close()
            writer.unregister()


def test_primary_demoted_under_open_connections(
    moto_url: str,
    servers: tuple[RedisServer, RedisServer],
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The endpoint's server itself becomes a cut-off replica; connections stay open."""
    primary, _ = servers
    admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "tbl")
    admin.put_item(TableName="tbl", Item={**A, "v": {"S": "1"}})
    reader = Reader(moto_url, primary.url, namespace)
    session = boto3.Session(region_name=REGION)
    writer = ddbcache_hooks.register(
        session, primary.url, namespace=namespace, key_schema={"tbl": "pk"}
    )
    try:
        client = session.client("dynamodb", endpoint_url=moto_url)
        # Enough hits that the reader serves them with its hit script.
        values = reader.read("get", 20)
        assert values[0] == ("1", False) and values[-1] == ("1", True)
        cut_off(primary)
        with caplog.at_level(logging.ERROR, logger="ddbcache_hooks"):
            client.put_item(TableName="tbl", Item={**A, "v": {"S": "2"}})
        assert stale(reader, "2") == 0
        assert not_primary_errors(caplog, primary.url)
    finally:
        reader.close()
        writer.unregister()
