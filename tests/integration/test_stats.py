"""``ddbcache stats`` over processes that flushed their counters to a real Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import Backend

ROOT = Path(__file__).resolve().parents[2]

#: One application process: its own moto DynamoDB, a registration flushing counters.
APP = textwrap.dedent(
    """
    import sys

    import boto3
    from moto import mock_aws

    import ddbcache_hooks

    redis_url, namespace, stay, *reads = sys.argv[1:]
    with mock_aws():
        session = boto3.Session(region_name="us-east-1")
        registration = ddbcache_hooks.register(
            session, redis_url, namespace=namespace, metrics_flush_s=1, settle_ms=0
        )
        client = session.client("dynamodb")
        for read in reads:
            table, key, times = read.split("/")
            if table not in client.list_tables()["TableNames"]:
                client.create_table(
                    TableName=table,
                    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                    BillingMode="PAY_PER_REQUEST",
                )
            client.put_item(TableName=table, Item={"pk": {"S": key}, "v": {"S": "x"}})
            for _ in range(int(times)):
                client.get_item(TableName=table, Key={"pk": {"S": key}})
        if stay == "stay":
            registration._flusher.flush()
            print("ready", flush=True)
            sys.stdin.read()  # until the test closes it
    # Exiting without unregister(): the last counts are flushed at exit.
    """
)


def environment(redis_url: str, namespace: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DDBCACHE_", "AWS_"))}
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "DDBCACHE_REDIS_URL": redis_url,
        "DDBCACHE_NAMESPACE": namespace,
    }


def ddbcache(env: dict[str, str], *argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ddbcache_hooks", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def test_stats_sums_live_and_exited_processes_per_table(
    redis_server: RedisServer, namespace: str
) -> None:
    env = environment(redis_server.url, namespace)
    # The first process reads and exits: its totals stay (the hash's TTL is a day).
    exited = subprocess.run(
        [sys.executable, "-c", APP, redis_server.url, namespace, "exit", "orders/a/3", "users/u/2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exited.returncode == 0, exited.stderr
    live = subprocess.Popen(
        [sys.executable, "-c", APP, redis_server.url, namespace, "stay", "orders/b/2"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert live.stdout is not None and live.stdout.readline() == "ready\n"
        shape = json.loads(ddbcache(env, "stats", "--json"))
        print(json.dumps(shape, indent=1))
        assert (shape["processes"], shape["live"], shape["exited"]) == (2, 1, 1)
        # Each table read once from DynamoDB per item, then from the cache.
        assert shape["counters"]["hits"] == 4 and shape["counters"]["misses"] == 3
        assert shape["hit_ratio"] == pytest.approx(4 / 7)
        orders, users = shape["tables"]["orders"], shape["tables"]["users"]
        assert (orders["hits"], orders["misses"], orders["fills"]) == (3, 2, 2)
        assert (users["hits"], users["misses"], users["fills"]) == (1, 1, 1)
        # The puts (each drops the item's keys); the rows add up to the total.
        assert orders["invalidations"] == 2 * users["invalidations"] > 0
        assert (
            orders["invalidations"] + users["invalidations"] == shape["counters"]["invalidations"]
        )
        assert orders["stale_served"] == 0 and orders["early_refreshes"] == 0
        assert "ItemCacheHits" not in shape["counters"]

        text = ddbcache(env, "stats")
        print(text)
        assert "sum of 2 process(es), 1 live, 1 exited" in text
        assert "hit ratio: 57.1% (4 hits, 3 misses)" in text
        counters = text.split("\n\n")[1].splitlines()[2:]
        assert counters and all(float(line.split()[1]) != 0 for line in counters)
        assert not any(line.split()[0] == "bypasses" for line in counters)
        assert not any(line.split()[0] == "ItemCacheHits" for line in counters)
        tables = {line.split()[0]: line.split()[1:] for line in text.split("\n\n")[2].splitlines()}
        assert tables["table"][:3] == ["hits", "misses", "fills"]
        assert tables["orders"][:3] == ["3", "2", "2"] and tables["users"][:3] == ["1", "1", "1"]
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait(timeout=30)
    assert live.returncode == 0


def test_watch_redraws_every_second_and_ends_quietly_on_ctrl_c(
    redis_server: RedisServer, namespace: str
) -> None:
    env = environment(redis_server.url, namespace)
    watch = subprocess.Popen(
        [sys.executable, "-m", "ddbcache_hooks", "stats", "--watch"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert watch.stdout is not None
    started = time.monotonic()
    headers: list[str] = []
    while len(headers) < 2:
        line = watch.stdout.readline()
        assert line, "the watch ended by itself"
        if line.startswith("ddbcache stats --watch"):
            headers.append(line)
        else:
            shown = ("no process reports counters", "principals:")
            assert any(text in line for text in shown) or not line.strip(), line
    assert time.monotonic() - started >= 0.9  # one second between the views
    assert "Ctrl-C to leave" in headers[0]
    watch.send_signal(signal.SIGINT)
    _, err = watch.communicate(timeout=30)
    assert watch.returncode == 0
    assert err == ""  # no KeyboardInterrupt traceback


@pytest.mark.parametrize("decode", [False, True])
def test_counters_flushed_and_summed_on_every_backend(
    backend: Backend, namespace: str, decode: bool
) -> None:
    """The flush and the sum on Redis and Valkey, single node and cluster (keys spread
    over slots), with a client that decodes replies or not."""
    from ddbcache_hooks.metrics import Flusher, aggregate
    from ddbcache_hooks.policy import ReadKind
    from ddbcache_hooks.stats import Stats

    client = backend.client(decode_responses=decode)
    flushers = []
    for n in range(6):
        stats = Stats()
        flusher = Flusher(stats.snapshot, client, namespace, 3600)
        stats.hit(ReadKind.ITEM, n, tables=["orders"] * n)
        flusher.flush()
        flushers.append(flusher)
    flushers[0].stop()  # its last write: exited
    totals = aggregate(client, namespace, batch=4)
    assert (totals.processes, totals.live, totals.exited) == (6, 5, 1)
    assert totals.counters["hits"] == 15 and totals.tables["orders"]["hits"] == 15
    for flusher in flushers[1:]:
        flusher.stop()
