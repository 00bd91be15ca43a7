"""``ddbcache demo``: a short workload on an embedded DynamoDB (moto) and Redis.

Redis is a real server started for the demo when a ``redis-server`` /
``valkey-server`` binary is available, else fakeredis. Nothing touches AWS.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any, TextIO

DEMO_TABLE = "demo-orders"


@contextlib.contextmanager
def embedded_redis(out: TextIO) -> Iterator[tuple[Any, str]]:
    """Redis for the demo (a URL, or a fakeredis client) and a description of it."""
    from ._redis_server import RedisServer, RedisServerError, find_server_binary

    binary = find_server_binary()
    if binary is not None:
        try:
            with RedisServer(binary) as server:
                yield server.url, f"{os.path.basename(binary)} on :{server.port}"
                return
        except RedisServerError as exc:
            print(f"could not start {binary} ({exc}); using fakeredis", file=out)
    try:
        import fakeredis
    except ImportError:
        raise SystemExit(
            "the demo needs redis-server/valkey-server on PATH or fakeredis installed "
            "(pip install 'ddbcache-hooks[demo]')"
        ) from None
    yield fakeredis.FakeRedis(), "fakeredis (no server binary found)"


def _progress(out: TextIO, done: int, total: int, width: int = 30) -> None:
    """A progress bar redrawn in place on a terminal; only the final state otherwise."""
    tty = out.isatty()
    if not tty and done != total:
        return
    filled = width * done // total
    bar = f"  [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
    print(("\r" if tty else "") + bar, end="\n" if done == total else "", file=out, flush=True)


def run(operations: int = 2000, items: int = 200, seed: int = 7, out: TextIO = sys.stdout) -> int:
    """Run the demo workload; returns a process exit code."""
    for name, count in (("operations", operations), ("items", items)):
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise ValueError(f"{name} must be a positive whole number, got {count!r}")
    try:
        import boto3
        from moto import mock_aws
    except ImportError:
        print("the demo needs moto: pip install 'ddbcache-hooks[demo]'", file=sys.stderr)
        return 2

    from .plugin import register

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "demo"),
        ("AWS_SECRET_ACCESS_KEY", "demo"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    rng = random.Random(seed)
    with embedded_redis(out) as (redis_client, redis_label), mock_aws():
        session = boto3.Session(region_name="us-east-1")
        registration = register(session, redis_client, namespace="demo-" + uuid.uuid4().hex[:8])
        client = session.client("dynamodb")
        client.create_table(
            TableName=DEMO_TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        table = session.resource("dynamodb").Table(DEMO_TABLE)
        sent: list[str] = []  # requests that really reached DynamoDB
        table.meta.client.meta.events.register("before-send.dynamodb", lambda **_: sent.append(""))
        with table.batch_writer() as batch:
            for i in range(items):
                batch.put_item(Item={"id": f"order-{i}", "total": i * 3, "status": "open"})
        print(f"DynamoDB: moto (in-process)   Redis: {redis_label}", file=out)
        print(
            f"workload: {operations} calls on {items} items, 90% reads, hot keys skewed", file=out
        )
        sent.clear()
        hit_times: list[float] = []
        miss_times: list[float] = []
        reads = writes = 0
        _progress(out, 0, operations)
        for n in range(operations):
            key = {"id": f"order-{min(int(rng.paretovariate(1.2)) - 1, items - 1)}"}
            started = time.perf_counter()
            if rng.random() < 0.9:
                response = table.get_item(Key=key)
                elapsed = time.perf_counter() - started
                (hit_times if "CacheMetadata" in response else miss_times).append(elapsed)
                reads += 1
            else:
                table.update_item(
                    Key=key,
                    UpdateExpression="SET #s = :s",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={":s": rng.choice(["open", "paid", "shipped"])},
                )
                writes += 1
            if (n + 1) % max(1, operations // 50) == 0 or n + 1 == operations:
                _progress(out, n + 1, operations)
        stats = registration.stats()
        registration.unregister()
    rows = [
        ("reads", reads),
        ("writes (each invalidates its item)", writes),
        ("cache hits", stats["hits"]),
        ("cache misses", stats["misses"]),
        ("hit ratio", f"{stats['hits'] / max(1, reads):.1%}"),
        ("DynamoDB calls made", len(sent)),
        ("DynamoDB calls avoided", stats["hits"]),
        ("read capacity saved (est.)", f"{stats['rcu_saved']:.1f} RCU"),
        ("median hit latency", _ms(hit_times)),
        ("median miss latency", _ms(miss_times)),
    ]
    width = max(len(label) for label, _ in rows)
    print("", file=out)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}", file=out)
    print(
        "\n  (moto answers in-process; a real DynamoDB miss costs milliseconds over the network)",
        file=out,
    )
    return 0


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.3f} ms" if samples else "-"
