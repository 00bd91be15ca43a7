"""The cache as a Redis ACL user created from the documented rule (docs/operations.md).

Every path the library has — hit, miss, write, Query, BatchGetItem, a table
dropped and made again, the near cache, the counters' flush, a streams
checkpoint, ``ddbcache flush`` and ``stats`` — runs as that user; the server's
ACL LOG must show no refusal. A user missing one command gets an uncached
application, one ERROR naming the command and its fix, and a closed breaker.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis

import ddbcache_hooks
from ddbcache_hooks import acl, cli
from ddbcache_hooks._redis_server import RedisServer
from ddbcache_hooks.connections import connect
from ddbcache_hooks.handlers import drive
from ddbcache_hooks.metrics import aggregate
from ddbcache_hooks.near import NearCache
from ddbcache_hooks.streams import state
from ddbcache_hooks.transport import SyncTransport
from tests.conftest import make_table
from tests.servers import documented_acl

PASSWORD = "pw-" + uuid.uuid4().hex[:8]


@contextlib.contextmanager
def acl_user(server: RedisServer, namespace: str, without: str = "") -> Iterator[str]:
    """A user made from the documented rule; yields its URL, deletes it afterwards."""
    admin = redis.Redis(port=server.port)
    user = "app-" + uuid.uuid4().hex[:8]
    admin.execute_command("ACL", "SETUSER", *documented_acl(namespace, user, PASSWORD, without))
    admin.acl_log_reset()
    try:
        yield f"redis://{user}:{PASSWORD}@{server.host}:{server.port}"
    finally:
        admin.execute_command("ACL", "DELUSER", user)


def refusals(admin: redis.Redis, user: str) -> list[dict[str, Any]]:
    """The server's record of what it refused ``user`` (redis-py's optional CLIENT SETINFO,
    which it sends on every connection and ignores a refusal of, set aside)."""
    log = admin.acl_log(count=100)
    skip = ("client|setinfo", "client")
    return [e for e in log if e["username"] == user and e["object"] not in skip]


@pytest.fixture(params=["redis_server", "valkey_server"])
def server(request: pytest.FixtureRequest) -> RedisServer:
    """Redis and Valkey: their ACLs and their refusals' wordings differ."""
    found: RedisServer = request.getfixturevalue(request.param)
    return found


@pytest.fixture
def documented_user(server: RedisServer, namespace: str) -> Iterator[str]:
    with acl_user(server, namespace) as url:
        yield url


def test_the_documented_rule_runs_every_path(
    session: boto3.Session, documented_user: str, server: RedisServer, namespace: str
) -> None:
    registration = ddbcache_hooks.register(
        session,
        documented_user,
        namespace=namespace,
        near_cache=NearCache(max_items=100, ttl_ms=60_000),
        metrics_flush_s=1,
    )
    try:
        client = session.client("dynamodb")
        make_table(client, "items")
        make_table(client, "pairs", ("pk", "S"), ("sk", "N"))
        client.put_item(TableName="items", Item={"pk": {"S": "a"}, "v": {"N": "1"}})
        for _ in range(3):  # miss, hit (Redis), hit (near cache)
            assert client.get_item(TableName="items", Key={"pk": {"S": "a"}})["Item"]["v"] == {
                "N": "1"
            }
        client.put_item(TableName="items", Item={"pk": {"S": "a"}, "v": {"N": "2"}})
        assert client.get_item(TableName="items", Key={"pk": {"S": "a"}})["Item"]["v"] == {"N": "2"}
        client.put_item(TableName="pairs", Item={"pk": {"S": "p"}, "sk": {"N": "1"}})
        query = {
            "TableName": "pairs",
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "p"}},
        }
        assert [client.query(**query)["Count"] for _ in range(2)] == [1, 1]
        batch = {"RequestItems": {"items": {"Keys": [{"pk": {"S": "a"}}, {"pk": {"S": "b"}}]}}}
        for _ in range(2):
            assert len(client.batch_get_item(**batch)["Responses"]["items"]) == 1
        # The table dropped and made again: its entries go with it.
        client.delete_table(TableName="pairs")
        make_table(client, "pairs", ("pk", "S"), ("sk", "N"))
        assert client.query(**query)["Count"] == 0
        stats = registration.stats()
        assert stats["hits"] >= 4 and stats["near_hits"] >= 1 and stats["fills"] >= 3
        assert stats["table_invalidations"] + stats["invalidations"] >= 2
        assert registration._protocol.near is not None and registration._protocol.near.online
        deadline = time.monotonic() + 5
        admin = redis.Redis(port=server.port)
        while aggregate(admin, namespace).processes == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert aggregate(admin, namespace).processes >= 1, "the counters were not flushed"
        assert stats["errors"] == 0 and stats["redis_refused"] == 0, stats
    finally:
        registration.unregister()
    # A streams consumer's checkpoint, with the library's own steps and transport.
    user_client = connect(documented_user, registration._protocol.settings)
    transport = SyncTransport(user_client)
    keys = state.StreamKeys.of(namespace, "arn:aws:dynamodb:us-east-1:1:table/t/stream/x")
    run = lambda op: drive(op, transport, lambda table: None)  # noqa: E731
    run(state.mark_started(keys, 60_000))
    assert run(state.lease_shards([(keys, ["s1"])], "me", 10_000, 60_000)) == [["s1"]]
    assert run(state.checkpoint([(keys, [("s1", "7")])], "me", 10_000, 60_000)) == [[True]]
    assert run(state.read_checkpoints([keys]))[0]["s1"] == "7"
    # The operator's commands, as the same user.
    out = io.StringIO()
    assert cli.main(["stats", "--redis-url", documented_user, "--namespace", namespace], out) == 0
    assert (
        cli.main(["flush", "--yes", "--redis-url", documented_user, "--namespace", namespace], out)
        == 0
    )
    user = documented_user.split("//")[1].split(":")[0]
    assert refusals(redis.Redis(port=server.port), user) == []


@pytest.fixture
def lacking(
    request: pytest.FixtureRequest, server: RedisServer, namespace: str
) -> Iterator[tuple[str, str]]:
    """A user made from the documented rule less one command: (the command, its URL)."""
    with acl_user(server, namespace, without=request.param) as url:
        yield request.param, url


@pytest.mark.parametrize("lacking", ["evalsha", "hset", "hmget", "publish"], indirect=True)
def test_a_refused_command_is_a_configuration_error_not_an_outage(
    session: boto3.Session,
    namespace: str,
    lacking: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    missing, url = lacking
    registration = ddbcache_hooks.register(session, url, namespace=namespace, breaker_threshold=2)
    try:
        client = session.client("dynamodb")
        make_table(client, "items")
        with caplog.at_level(logging.ERROR, logger="ddbcache_hooks"):
            for n in range(6):
                client.put_item(TableName="items", Item={"pk": {"S": "a"}, "v": {"N": str(n)}})
                got = client.get_item(TableName="items", Key={"pk": {"S": "a"}})
                assert got["Item"]["v"] == {"N": str(n)}  # uncached, and right
        stats = registration.stats()
        assert stats["hits"] == 0 and stats["redis_refused"] >= 6, stats
        assert stats["breaker_opened"] == 0 and registration._protocol.breaker.state == "closed"
        assert stats["errors"] == 0
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        # Once per refused command (a script's refusal names the script: one per script).
        assert errors and len({e.split(" (")[0] for e in errors}) == len(errors), errors
        print("\n".join(errors))
        for error in errors:
            assert f"+{missing}" in error.split("the whole rule")[0] and f"{namespace}:*" in error
            assert "configuration error" in error and "ACL SETUSER" in error
    finally:
        registration.unregister()


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
@pytest.mark.parametrize("lacking", ["evalsha"], indirect=True)
def test_async_a_refused_command_leaves_the_application_uncached(
    namespace: str, moto_url: str, lacking: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    import aioboto3

    _, url = lacking

    async def main() -> dict[str, Any]:
        session = aioboto3.Session(region_name="us-east-1")
        registration = await ddbcache_hooks.register_async(session, url, namespace=namespace)
        try:
            async with session.client("dynamodb", endpoint_url=moto_url) as c:
                await c.create_table(
                    TableName="items",
                    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                    BillingMode="PAY_PER_REQUEST",
                )
                for n in range(6):
                    await c.put_item(TableName="items", Item={"pk": {"S": "a"}, "n": {"N": str(n)}})
                    got = await c.get_item(TableName="items", Key={"pk": {"S": "a"}})
                    assert got["Item"]["n"] == {"N": str(n)}
            assert registration._protocol.breaker.state == "closed"
            return registration.stats()
        finally:
            await registration.aclose()

    with caplog.at_level(logging.ERROR, logger="ddbcache_hooks"):
        stats = asyncio.run(main())
    assert stats["hits"] == 0 and stats["redis_refused"] >= 6 and stats["breaker_opened"] == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "command 'evalsha'" in errors[0] and "+evalsha" in errors[0]


@pytest.mark.cluster
def test_the_documented_rule_on_a_cluster(
    session: boto3.Session, redis_cluster: Any, namespace: str
) -> None:
    """Cluster mode needs the slot map and the command table: CLUSTER SLOTS, COMMAND."""
    user = "app-" + uuid.uuid4().hex[:8]
    rule = documented_acl(namespace, user, PASSWORD)
    nodes = [redis_cluster.client(i) for i in range(len(redis_cluster.servers))]
    for node in nodes:  # ACL users are per node
        node.execute_command("ACL", "SETUSER", *rule)
        node.acl_log_reset()
    host, port = redis_cluster.startup_nodes[0]
    url = f"redis://{user}:{PASSWORD}@{host}:{port}"
    try:
        registration = ddbcache_hooks.register(session, url, namespace=namespace)
        try:
            client = session.client("dynamodb")
            make_table(client, "items")
            for n in range(3):
                client.put_item(TableName="items", Item={"pk": {"S": f"k{n}"}})
                for _ in range(2):
                    client.get_item(TableName="items", Key={"pk": {"S": f"k{n}"}})
            stats = registration.stats()
            assert registration._transport.cluster
            assert stats["hits"] == 3 and stats["errors"] == 0 and stats["redis_refused"] == 0
        finally:
            registration.unregister()
        out = io.StringIO()  # (DynamoDB's check is not this test's: only Redis's lines count)
        cli.main(["doctor", "--redis-url", url, "--namespace", namespace], out)
        redis_lines = out.getvalue().split("DynamoDB")[0]
        assert "FAIL" not in redis_lines and "cluster mode" in redis_lines, redis_lines
        for node in nodes:
            assert refusals(node, user) == []
    finally:
        for node in nodes:
            node.execute_command("ACL", "DELUSER", user)
            node.close()


@pytest.mark.parametrize("lacking", ["subscribe"], indirect=True)
def test_a_refused_subscription_leaves_the_near_cache_off_and_redis_caching(
    session: boto3.Session,
    namespace: str,
    lacking: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, url = lacking
    with caplog.at_level(logging.WARNING, logger="ddbcache_hooks"):
        registration = ddbcache_hooks.register(
            session, url, namespace=namespace, near_cache=NearCache(max_items=10, ttl_ms=60_000)
        )
        try:
            client = session.client("dynamodb")
            make_table(client, "items")
            client.put_item(TableName="items", Item={"pk": {"S": "a"}})
            for _ in range(3):
                client.get_item(TableName="items", Key={"pk": {"S": "a"}})
            time.sleep(1.5)  # the subscriber retries once a second
            stats = registration.stats()
            assert stats["hits"] == 2 and stats["near_hits"] == 0 and stats["errors"] == 0
        finally:
            registration.unregister()
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and said[0].levelno == logging.ERROR, [r.getMessage() for r in said]
    assert "command 'subscribe'" in said[0].getMessage() and "+subscribe" in said[0].getMessage()


@pytest.mark.parametrize("lacking", ["evalsha"], indirect=True)
def test_refusals_show_in_stats_and_doctor(
    session: boto3.Session, namespace: str, lacking: tuple[str, str], server: RedisServer
) -> None:
    _, url = lacking
    registration = ddbcache_hooks.register(session, url, namespace=namespace, metrics_flush_s=1)
    client = session.client("dynamodb")
    make_table(client, "items")
    for _ in range(3):
        client.get_item(TableName="items", Key={"pk": {"S": "a"}})
    registration.unregister()  # its last counts are flushed
    out = io.StringIO()
    assert cli.main(["stats", "--redis-url", server.url, "--namespace", namespace], out) == 0
    print(out.getvalue())
    shown = re.search(r"redis_refused\s+(\d+)\b", out.getvalue())
    assert shown, out.getvalue()
    refused = int(shown.group(1))
    assert refused >= 3  # the reads, and the invalidation of the table's creation
    out = io.StringIO()
    cli.main(["doctor", "--redis-url", server.url, "--namespace", namespace], out)
    print(out.getvalue())
    (line,) = [s for s in out.getvalue().splitlines() if "running applications" in s]
    assert line.startswith(f"  FAIL  running applications: 1 process(es) report {refused} command")
    assert acl.setuser(namespace, "<user>", "<password>") in line
