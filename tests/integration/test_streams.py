"""Invalidation from DynamoDB Streams: the consumer against moto's streams, real Redis."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from ddbcache_hooks.streams import Consumer
from tests.conftest import counting_redis

STREAMS = {"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"}


def stream_table(client: Any, name: str, range_key: bool = False) -> None:
    keys = [{"AttributeName": "pk", "KeyType": "HASH"}]
    attrs = [{"AttributeName": "pk", "AttributeType": "S"}]
    if range_key:
        keys.append({"AttributeName": "sk", "KeyType": "RANGE"})
        attrs.append({"AttributeName": "sk", "AttributeType": "N"})
    client.create_table(
        TableName=name,
        KeySchema=keys,
        AttributeDefinitions=attrs,
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification=STREAMS,
    )


@pytest.fixture
def plain(moto_url: str) -> Any:
    """An unregistered client: its writes reach the cache only through the stream."""
    return boto3.Session(region_name="us-east-1").client("dynamodb", endpoint_url=moto_url)


@pytest.fixture
def cached(
    moto_url: str, redis_server: RedisServer, namespace: str
) -> Iterator[tuple[Any, ddbcache_hooks.Registration]]:
    session = boto3.Session(region_name="us-east-1")
    registration = ddbcache_hooks.register(
        session, redis_server.url, namespace=namespace, settle_ms=0
    )
    yield session.client("dynamodb", endpoint_url=moto_url), registration
    registration.unregister()


def consumer_for(
    moto_url: str, redis_url: str, namespace: str, *tables: str, **kw: Any
) -> Consumer:
    session = boto3.Session(region_name="us-east-1")
    return Consumer(
        list(tables),
        redis_url,
        streams_client=session.client("dynamodbstreams", endpoint_url=moto_url),
        dynamodb_client=session.client("dynamodb", endpoint_url=moto_url),
        namespace=namespace,
        **kw,
    )


def served_from_cache(client: Any, table: str, key: dict[str, Any]) -> bool:
    return "CacheMetadata" in client.get_item(TableName=table, Key=key)


WRITES: dict[str, Callable[[Any, str], None]] = {
    "PutItem": lambda c, k: c.put_item(TableName="tbl", Item={"pk": {"S": k}, "v": {"S": "new"}}),
    "UpdateItem": lambda c, k: c.update_item(
        TableName="tbl",
        Key={"pk": {"S": k}},
        UpdateExpression="SET v = :v",
        ExpressionAttributeValues={":v": {"S": "new"}},
    ),
    "DeleteItem": lambda c, k: c.delete_item(TableName="tbl", Key={"pk": {"S": k}}),
    "BatchWriteItem": lambda c, k: c.batch_write_item(
        RequestItems={"tbl": [{"PutRequest": {"Item": {"pk": {"S": k}, "v": {"S": "new"}}}}]}
    ),
    "TransactWriteItems": lambda c, k: c.transact_write_items(
        TransactItems=[{"Delete": {"TableName": "tbl", "Key": {"pk": {"S": k}}}}]
    ),
    "ExecuteStatement": lambda c, k: c.execute_statement(
        Statement="UPDATE tbl SET v = 'new' WHERE pk = ?", Parameters=[{"S": k}]
    ),
}


def test_unregistered_writes_stop_being_served_once_the_consumer_applied_them(
    moto_url: str, redis_server: RedisServer, namespace: str, plain: Any, cached: Any
) -> None:
    client, _ = cached
    stream_table(plain, "tbl")
    consumer = consumer_for(moto_url, redis_server.url, namespace, "tbl", poll_ms=5)
    consumer.step()  # starts following the stream (from its tip)
    stop = threading.Event()
    worker = threading.Thread(target=consumer.run, args=(stop,))
    worker.start()
    delays = {}
    try:
        for operation, write in WRITES.items():
            key = {"pk": {"S": operation}}
            plain.put_item(TableName="tbl", Item={**key, "v": {"S": "old"}})
            time.sleep(0.05)  # that put's record applied too: the entry below stays
            client.get_item(TableName="tbl", Key=key)
            assert served_from_cache(client, "tbl", key)
            write(plain, operation)
            written = time.monotonic()
            for _ in range(500):
                if not served_from_cache(client, "tbl", key):
                    break
                time.sleep(0.002)
            else:
                pytest.fail(f"{operation} through an unregistered client is still served")
            delays[operation] = (time.monotonic() - written) * 1000
            fresh = client.get_item(TableName="tbl", Key=key).get("Item", {}).get("v")
            assert fresh in (None, {"S": "new"})
    finally:
        stop.set()
        worker.join(10)
    print("from the write's return to the first read not served from the cache:")
    for operation, ms in delays.items():
        print(f"  {operation:20} {ms:7.1f} ms")
    counts = consumer.stats()
    assert counts["stream_records"] >= 2 * len(WRITES)
    assert counts["ReturnedRecordsCount"] == counts["stream_records"]
    assert counts["stream_table_drops"] == 1  # the first start


def test_first_start_reads_from_the_tip_and_drops_what_was_cached(
    moto_url: str, redis_server: RedisServer, namespace: str, plain: Any, cached: Any
) -> None:
    client, _ = cached
    stream_table(plain, "tbl")
    key = {"pk": {"S": "a"}}
    plain.put_item(TableName="tbl", Item=key)
    client.get_item(TableName="tbl", Key=key)
    assert served_from_cache(client, "tbl", key)
    consumer = consumer_for(moto_url, redis_server.url, namespace, "tbl")
    assert consumer.step() == 0  # the put before the start is not read again
    assert not served_from_cache(client, "tbl", key)  # but the table was dropped
    assert served_from_cache(client, "tbl", key)
    assert consumer.step() == 0
    assert served_from_cache(client, "tbl", key)  # dropped once, not every round
    assert consumer.stats()["stream_table_drops"] == 1


def test_a_restarted_consumer_resumes_from_its_checkpoint(
    moto_url: str, redis_server: RedisServer, namespace: str, plain: Any, cached: Any
) -> None:
    client, _ = cached
    stream_table(plain, "tbl", range_key=True)
    first = consumer_for(moto_url, redis_server.url, namespace, "tbl")
    first.step()
    for n in range(5):
        plain.put_item(TableName="tbl", Item={"pk": {"S": "p"}, "sk": {"N": str(n)}})
    assert first.step() == 5
    first.release()
    for n in range(5, 8):
        plain.put_item(TableName="tbl", Item={"pk": {"S": "p"}, "sk": {"N": str(n)}})
    key = {"pk": {"S": "p"}, "sk": {"N": "7"}}
    client.get_item(TableName="tbl", Key=key)
    assert served_from_cache(client, "tbl", key)
    plain.delete_item(TableName="tbl", Key=key)
    second = consumer_for(moto_url, redis_server.url, namespace, "tbl")
    assert second.step() == 4  # the three puts and the delete after the checkpoint
    assert second.stats()["stream_table_drops"] == 0
    assert "Item" not in client.get_item(TableName="tbl", Key=key)


def test_a_record_drops_its_partitions_query_pages_and_no_others(
    moto_url: str, redis_server: RedisServer, namespace: str, plain: Any, cached: Any
) -> None:
    client, _ = cached
    stream_table(plain, "tbl", range_key=True)
    consumer = consumer_for(moto_url, redis_server.url, namespace, "tbl")
    consumer.step()
    for pk in ("p", "q"):
        plain.put_item(TableName="tbl", Item={"pk": {"S": pk}, "sk": {"N": "1"}})
    assert consumer.step() == 2

    def page(pk: str) -> tuple[int, bool]:
        answer = client.query(
            TableName="tbl",
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": pk}},
        )
        return answer["Count"], "CacheMetadata" in answer

    assert [page("p"), page("p"), page("q"), page("q")] == [
        (1, False),
        (1, True),
        (1, False),
        (1, True),
    ]
    plain.put_item(TableName="tbl", Item={"pk": {"S": "p"}, "sk": {"N": "2"}})
    assert consumer.step() == 1
    assert page("p") == (2, False)  # the record dropped the partition's page
    assert page("q") == (1, True)  # another partition's page still serves
    assert page("p") == (2, True)


def test_one_round_costs_few_redis_round_trips(
    moto_url: str, redis_server: RedisServer, namespace: str, plain: Any
) -> None:
    """Checkpoints read, leases renewed, one delivery for every record, checkpoints written."""
    stream_table(plain, "tbl")
    stream_table(plain, "utbl")
    redis_client, counting = counting_redis(redis_server.port)
    consumer = consumer_for(moto_url, redis_client, namespace, "tbl", "utbl")
    consumer.step()
    for n in range(20):
        plain.put_item(TableName="tbl" if n % 2 else "utbl", Item={"pk": {"S": str(n)}})
    counting.sends = 0
    assert consumer.step() == 20
    assert counting.sends == 4
    counting.sends = 0
    assert consumer.step() == 0
    assert counting.sends == 2  # idle: read checkpoints, renew leases


def test_cli_streams_follows_and_reports_in_stats(
    moto_url: str, redis_server: RedisServer, namespace: str, plain: Any, cached: Any
) -> None:
    """It follows the tables that have a stream, names the one that has none, and
    builds its own Redis client from the URL without a word about it."""
    import os
    import signal
    import subprocess
    import sys

    client, _ = cached
    stream_table(plain, "tbl")
    plain.create_table(
        TableName="quiet",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": moto_url,
        "DDBCACHE_REDIS_URL": redis_server.url,
        "DDBCACHE_NAMESPACE": namespace,
        "DDBCACHE_METRICS_FLUSH_S": "1",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ddbcache_hooks",
            "streams",
            "--table",
            "tbl",
            "--table",
            "quiet",
            "--poll-ms",
            "10",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "following the streams of tbl as " in process.stdout.readline()
        key = {"pk": {"S": "a"}}
        plain.put_item(TableName="tbl", Item=key)
        client.get_item(TableName="tbl", Key=key)
        time.sleep(0.3)  # past the consumer's start and its drop
        client.get_item(TableName="tbl", Key=key)
        plain.delete_item(TableName="tbl", Key=key)
        for _ in range(500):
            if "Item" not in client.get_item(TableName="tbl", Key=key):
                break
            time.sleep(0.01)
        else:
            pytest.fail("the CLI consumer did not apply the delete")
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "records applied" in out
    assert "table quiet does not exist or has no enabled stream; not followed" in err
    assert "Redis client as given" not in err
    stats = subprocess.run(
        [sys.executable, "-m", "ddbcache_hooks", "stats", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counters = json.loads(stats)["counters"]
    assert counters["stream_records"] >= 1
    assert "stream_lag_ms" in counters


def test_cli_streams_rejects_tables_without_a_stream(
    moto_url: str, redis_server: RedisServer, plain: Any
) -> None:
    import os
    import subprocess
    import sys

    plain.create_table(
        TableName="quiet",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_url, "DDBCACHE_REDIS_URL": redis_server.url}
    result = subprocess.run(
        [sys.executable, "-m", "ddbcache_hooks", "streams", "--table", "quiet", "--table", "nope"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "ddbcache streams: no table can be followed: no enabled stream on quiet, nope"
    )


def test_consumer_goes_on_without_the_tables_it_cannot_follow(
    moto_url: str, redis_server: RedisServer, namespace: str, plain: Any, caplog: Any
) -> None:
    """As the CLI: say which, follow the rest, fail only when none can be followed."""
    stream_table(plain, "tbl")
    consumer = consumer_for(moto_url, redis_server.url, namespace, "tbl", "nope")
    with caplog.at_level("WARNING", logger="ddbcache_hooks"):
        consumer.run(rounds=1)
    assert "table nope does not exist or has no enabled stream; not followed" in caplog.text
    assert consumer.stats()["stream_rounds"] == 1
    alone = consumer_for(moto_url, redis_server.url, namespace, "nope", "gone")
    with pytest.raises(ValueError, match=r"none of the tables can be followed .*: nope, gone"):
        alone.run(rounds=1)


def test_a_round_redis_did_not_take_is_read_again(
    moto_url: str, namespace: str, plain: Any, tmp_path: Any
) -> None:
    """Nothing is checkpointed that was not applied: after an outage the records come again."""
    from redis.exceptions import RedisError

    stream_table(plain, "tbl")
    # A Redis that keeps its data over the outage (else the consumer starts afresh).
    with RedisServer(extra_args=("--appendonly", "yes"), workdir=str(tmp_path)) as server:
        consumer = consumer_for(moto_url, server.url, namespace, "tbl")
        consumer.step()
        for n in range(3):
            plain.put_item(TableName="tbl", Item={"pk": {"S": str(n)}})
        server.stop()
        with pytest.raises(RedisError):
            consumer.step()
        consumer.run(rounds=1)  # the loop survives it
        assert consumer.stats()["stream_errors"] == 1
        server.start()
        assert consumer.step() == 3
        assert consumer.step() == 0


def test_a_record_sends_the_near_cache_message_a_registered_write_sends(
    moto_url: str, redis_server: RedisServer, namespace: str, plain: Any, cached: Any
) -> None:
    import redis

    client, _ = cached
    stream_table(plain, "tbl")
    consumer = consumer_for(moto_url, redis_server.url, namespace, "tbl")
    consumer.step()
    plain.put_item(TableName="tbl", Item={"pk": {"S": "a"}})
    assert consumer.step() == 1
    subscriber = redis.Redis(port=redis_server.port).pubsub()
    subscriber.subscribe(consumer.protocol.channel)
    assert subscriber.get_message(timeout=1)["type"] == "subscribe"
    key = {"pk": {"S": "a"}}
    client.delete_item(TableName="tbl", Key=key)  # registered: publishes, and is streamed
    from_write = subscriber.get_message(timeout=1)
    assert consumer.step() == 1
    from_record = subscriber.get_message(timeout=1)
    assert from_write is not None and from_record is not None
    # The account is not configured, so the record also drops the ARN form of its
    # table (docs/consistency.md): the registered write's message plus that form.
    write_lines = from_write["data"].decode().splitlines()
    record_lines = from_record["data"].decode().splitlines()
    assert write_lines and set(write_lines) <= set(record_lines)
    assert len(record_lines) == 2 * len(write_lines)
    subscriber.close()


def test_cli_streams_refused_by_redis_is_one_line_and_a_failure(
    moto_url: str, redis_server: RedisServer, plain: Any
) -> None:
    """A Redis user without a command the consumer sends: one line naming it, non-zero exit."""
    import os
    import subprocess
    import sys
    import uuid

    import redis

    stream_table(plain, "refusedtbl")
    user, password = "st" + uuid.uuid4().hex[:8], "pw" + uuid.uuid4().hex[:8]
    admin = redis.Redis(port=redis_server.port)
    admin.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-evalsha"
    )
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "ddbcache_hooks",
                "streams",
                "--table",
                "refusedtbl",
                "--redis-url",
                f"redis://{user}:{password}@127.0.0.1:{redis_server.port}/0",
            ],
            env={**os.environ, "AWS_ENDPOINT_URL": moto_url, "AWS_DEFAULT_REGION": "us-east-1"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if "evalsha" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert password not in result.stderr + result.stdout
