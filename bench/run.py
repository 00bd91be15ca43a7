"""Benchmarks of ddbcache-hooks: ``python bench/run.py [--only NAME ...] [--quick]``.

Everything runs in one process against moto (in-process DynamoDB) and one
real Redis server started for the run. Results are medians, p99 and ratios
measured in the same run; see docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import boto3
import redis
from moto import mock_aws

import ddbcache_hooks
from bench.harness import Series, machine, measure, table
from ddbcache_hooks._redis_server import RedisServer
from ddbcache_hooks.plan import Invalidation


@dataclass
class Env:
    server: RedisServer
    rounds: int
    per_round: int
    hot_seconds: float = 10.0
    hot_threads: int = 16

    def redis(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(port=self.server.port, **kwargs)

    def session(self) -> boto3.Session:
        return boto3.Session(region_name="us-east-1")

    def register(self, session: Any, **options: Any) -> ddbcache_hooks.Registration:
        return ddbcache_hooks.register(
            session, self.redis(), namespace="bench-" + uuid.uuid4().hex[:8], **options
        )


def make_table(client: Any, name: str, items: int = 0, size: int = 100) -> None:
    client.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    for i in range(items):
        client.put_item(
            TableName=name,
            Item={"pk": {"S": f"k{i}"}, "sk": {"N": "0"}, "data": {"S": "x" * size}},
        )


def key(i: int) -> dict[str, Any]:
    return {"pk": {"S": f"k{i}"}, "sk": {"N": "0"}}


def rows_for(series: dict[str, Series], baseline: str) -> list[tuple[str, ...]]:
    base = series[baseline].median_us
    return [
        (s.name, f"{s.median_us:9.1f}", f"{s.p99_us:9.1f}", f"{s.median_us / base:6.2f}x")
        for s in series.values()
    ]


HEADERS = ("case", "median µs", "p99 µs", "ratio")


class Replaying:
    """A transport that answers every batch with replies recorded from a real one.

    With it, a cached read runs all of the library's own code but no network:
    the difference to botocore's floor is the library's own work on a hit.
    Replies are recorded per kind of batch (the hit read; the lookup script).
    """

    def __init__(self, real: Any) -> None:
        self.real = real
        self.cluster = real.cluster
        self.replies: dict[tuple[str, ...], list[Any]] = {}
        self.recording = True

    def execute(self, calls: Any, errors_as_values: bool = False) -> list[Any]:
        kind = tuple(c.script.name if c.script else c.args[0] for c in calls)
        if self.recording or kind not in self.replies:
            self.replies[kind] = self.real.execute(calls, errors_as_values)
        return list(self.replies[kind])


def canned_client(session: boto3.Session, response: dict[str, Any]) -> Any:
    """A client whose GetItem is answered by a handler: botocore's own cost of a call."""
    from botocore.awsrequest import AWSResponse

    client = session.client("dynamodb")
    client.meta.events.register(
        "before-call.dynamodb.GetItem",
        lambda **_: (AWSResponse(None, 200, {}, None), copy.deepcopy(response)),
    )
    return client


def bench_hits(env: Env) -> dict[str, float]:
    """A cached GetItem against its floor: botocore's own work and one Redis round trip."""
    session = env.session()
    registration = env.register(session, key_schema={"hits": ("pk", "sk")})
    client = session.client("dynamodb")
    table = session.resource("dynamodb").Table("hits")
    make_table(client, "hits", items=1, size=200)
    k = key(0)
    client.get_item(TableName="hits", Key=k)
    blob = env.redis().hget(
        registration._protocol.planner.item_key(*registration.table_refs("hits"), k), "e:"
    )
    raw = env.redis()
    raw.set("bench:payload", blob)
    floor = canned_client(env.session(), client.get_item(TableName="hits", Key=k))
    plain = env.session().client("dynamodb")  # not registered: moto in-process
    misses = iter(range(10**9))
    writes = iter(range(10**9))

    # The same hit with Redis replaced by recorded replies: only the library's own work.
    replayed_session = env.session()
    replayed = env.register(replayed_session)
    replayed_client = replayed_session.client("dynamodb")
    hooks = replayed._clients[replayed_client]
    hooks.transport = Replaying(hooks.transport)
    replayed_client.get_item(TableName="hits", Key=k)
    replayed_client.get_item(TableName="hits", Key=k)
    hooks.transport.recording = False
    assert "CacheMetadata" in replayed_client.get_item(TableName="hits", Key=k)

    series = measure(
        {
            "floor: botocore call answered by a handler": lambda: floor.get_item(
                TableName="hits", Key=k
            ),
            "floor: redis-py GET of the entry": lambda: raw.get("bench:payload"),
            "hit, client": lambda: client.get_item(TableName="hits", Key=k),
            "hit, Table resource": lambda: table.get_item(Key={"pk": "k0", "sk": 0}),
            "hit, Redis replies replayed (own work)": lambda: replayed_client.get_item(
                TableName="hits", Key=k
            ),
            "miss (absent item), client": lambda: client.get_item(
                TableName="hits", Key={"pk": {"S": f"miss{next(misses)}"}, "sk": {"N": "0"}}
            ),
            "write (PutItem), client": lambda: client.put_item(
                TableName="hits", Item={"pk": {"S": "w"}, "sk": {"N": str(next(writes))}}
            ),
            "uncached moto GetItem (in-process!)": lambda: plain.get_item(TableName="hits", Key=k),
        },
        rounds=env.rounds,
        per_round=env.per_round,
    )
    registration.unregister()
    replayed.unregister()
    print(table_of(series, "floor: botocore call answered by a handler"))
    f = series["floor: botocore call answered by a handler"].median_us
    rtt = series["floor: redis-py GET of the entry"].median_us
    own = series["hit, Redis replies replayed (own work)"].median_us - f
    return {
        "client hit / botocore floor": series["hit, client"].median_us / f,
        "client hit / (botocore floor + Redis GET)": series["hit, client"].median_us / (f + rtt),
        "Table hit / botocore floor": series["hit, Table resource"].median_us / f,
        "own work per hit / Redis round trip": own / rtt,
        "miss / botocore floor": series["miss (absent item), client"].median_us / f,
        "write / botocore floor": series["write (PutItem), client"].median_us / f,
    }


def bench_access(env: Env) -> dict[str, float]:
    """A hit's cost of the read-access check and of isolation="principal" (own work)."""
    session = env.session()
    make_table(session.client("dynamodb"), "access", items=1, size=200)
    k = key(0)
    clients = {}
    registrations = []
    for name, options in (
        ("hit, access check off (access_recheck_s=0)", {"access_recheck_s": 0}),
        ("hit, access check on (default)", {}),
        ("hit, isolation='principal'", {"isolation": "principal"}),
    ):
        own = env.session()
        registration = env.register(own, **options)
        registrations.append(registration)
        client = own.client("dynamodb")
        hooks = registration._clients[client]
        hooks.transport = Replaying(hooks.transport)
        client.get_item(TableName="access", Key=k)
        client.get_item(TableName="access", Key=k)
        hooks.transport.recording = False
        assert "CacheMetadata" in client.get_item(TableName="access", Key=k)
        clients[name] = client
    checked = clients["hit, access check on (default)"]
    hooks = registrations[1]._clients[checked]
    plan = hooks.protocol.planner.plan("GetItem", {"TableName": "access", "Key": k}, hooks.location)
    cases: dict[str, Callable[[], object]] = {
        name: functools.partial(client.get_item, TableName="access", Key=k)
        for name, client in clients.items()
    }
    cases["the access check alone (per call)"] = functools.partial(hooks._check_access, plan)
    series = measure(cases, rounds=env.rounds, per_round=env.per_round)
    assert not plan.probe  # the check found the grant proved, as on every hit
    for registration in registrations:
        registration.unregister()
    base = "hit, access check off (access_recheck_s=0)"
    print(table_of(series, base))
    f = series[base].median_us
    return {
        "access check alone / hit without it": series["the access check alone (per call)"].median_us
        / f,
        "hit with access check / without": series["hit, access check on (default)"].median_us / f,
        "hit with isolation='principal' / without": series["hit, isolation='principal'"].median_us
        / f,
    }


def bench_near(env: Env, table: str = "near", size: int = 200) -> dict[str, float]:
    """The opt-in near cache: a hit served in-process, against the floor."""
    from ddbcache_hooks import NearCache

    session = env.session()
    near = NearCache(max_items=1000, ttl_ms=60_000)
    registration = env.register(session, near_cache=near)
    client = session.client("dynamodb")
    make_table(client, table, items=1, size=size)
    k = key(0)
    deadline = time.monotonic() + 5
    while not near.online and time.monotonic() < deadline:
        time.sleep(0.01)
    client.get_item(TableName=table, Key=k)
    client.get_item(TableName=table, Key=k)
    floor = canned_client(env.session(), client.get_item(TableName=table, Key=k))
    plain_session = env.session()
    plain_registration = env.register(plain_session)
    plain = plain_session.client("dynamodb")
    plain.get_item(TableName=table, Key=k)
    series = measure(
        {
            "floor: botocore call answered by a handler": lambda: floor.get_item(
                TableName=table, Key=k
            ),
            "hit through Redis": lambda: plain.get_item(TableName=table, Key=k),
            "near-cache hit": lambda: client.get_item(TableName=table, Key=k),
        },
        rounds=env.rounds,
        per_round=env.per_round,
    )
    assert registration.stats()["near_hits"] > 0
    registration.unregister()
    plain_registration.unregister()
    print(table_of(series, "floor: botocore call answered by a handler"))
    f = series["floor: botocore call answered by a handler"].median_us
    return {
        "near-cache hit / botocore floor": series["near-cache hit"].median_us / f,
        "near-cache hit / Redis hit": series["near-cache hit"].median_us
        / series["hit through Redis"].median_us,
    }


def bench_pages(env: Env) -> dict[str, float]:
    """Query page hits of 1 KB, 100 KB and 1 MB (incompressible data): the codec's cost."""
    import base64

    session = env.session()
    registration = env.register(session, max_entry_bytes=4 << 20)
    client = session.client("dynamodb")
    make_table(client, "pages")
    cases = {}
    ratios = {}
    for label, total in (("1 KB", 1 << 10), ("100 KB", 100 << 10), ("1 MB", 1000 << 10)):
        per_item = min(total, 32 << 10)
        for i in range(max(1, total // per_item)):
            data = base64.b64encode(os.urandom(per_item * 3 // 4)).decode()
            client.put_item(
                TableName="pages",
                Item={"pk": {"S": label}, "sk": {"N": str(i)}, "data": {"S": data}},
            )
        params = {
            "TableName": "pages",
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": label}},
        }
        client.query(**params)
        assert "CacheMetadata" in client.query(**params), label
        cases[f"Query page hit, {label}"] = functools.partial(client.query, **params)
    series = measure(cases, rounds=max(3, env.rounds // 2), per_round=max(3, env.per_round // 10))
    registration.unregister()
    print(table_of(series, "Query page hit, 1 KB"))
    for name, s in series.items():
        ratios[f"{name} / 1 KB page hit"] = s.median_us / series["Query page hit, 1 KB"].median_us
    return ratios


def bench_query_modes(env: Env) -> dict[str, float]:
    """Query hit ratio with 1 % / 10 % writes per query_invalidation mode; cost per write."""
    import random

    partitions, per_partition, operations = 50, 4, 4000 if env.rounds >= 20 else 800
    session = env.session()
    admin = session.client("dynamodb")
    admin.create_table(
        TableName="modes",
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
            {"AttributeName": "g", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by_g",
                "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )

    def item(p: int, s: int, value: int) -> dict[str, Any]:
        # GSI partitions cut across table partitions, as a status or owner index does.
        return {
            "pk": {"S": f"p{p}"},
            "sk": {"N": str(s)},
            "g": {"S": f"g{(p + s) % partitions}"},
            "v": {"N": str(value)},
        }

    for p in range(partitions):
        for s_ in range(per_partition):
            admin.put_item(TableName="modes", Item=item(p, s_, 0))
    rows: list[tuple[str, ...]] = []
    ratios: dict[str, float] = {}
    for mode in ("ttl", "partition", "write"):
        for share in (0.01, 0.10):
            hits = {"base table": [0, 0], "GSI": [0, 0]}
            registration = env.register(session, query_invalidation=mode)
            client = session.client("dynamodb")
            rng = random.Random(15)
            for n in range(operations):
                p = rng.randrange(partitions)
                if rng.random() < share:
                    client.put_item(
                        TableName="modes", Item=item(p, rng.randrange(per_partition), n)
                    )
                    continue
                if rng.random() < 0.5:
                    where = "base table"
                    request = {"KeyConditionExpression": "pk = :v"}
                    value = f"p{p}"
                else:
                    where = "GSI"
                    request = {"IndexName": "by_g", "KeyConditionExpression": "g = :v"}
                    value = f"g{p}"
                response = client.query(
                    TableName="modes", ExpressionAttributeValues={":v": {"S": value}}, **request
                )
                hits[where][0] += "CacheMetadata" in response
                hits[where][1] += 1
            registration.unregister()
            for where, (hit, total) in hits.items():
                ratio = hit / total
                rows.append((mode, f"{share:.0%}", where, f"{ratio:6.1%}"))
                ratios[f"query hit ratio, {mode}, {share:.0%} writes, {where}"] = ratio
    print(f"{operations} operations over {partitions} partitions x {per_partition} items")
    print(table(rows, ("mode", "writes", "queries on", "hit ratio")))
    cases: dict[str, Callable[[], object]] = {}
    registrations = []
    for mode in ("ttl", "partition", "write"):
        own = env.session()  # one registration per session: register() is idempotent
        registration = env.register(
            own, query_invalidation=mode, key_schema={"modes": ("pk", "sk")}
        )
        registrations.append(registration)
        client = own.client("dynamodb")
        transport = registration._transport
        sent = [0, 0]
        execute = transport.execute

        def counted(
            calls: Any, errors_as_values: bool = False, execute: Any = execute, sent: Any = sent
        ) -> Any:
            sent[0] += 1
            sent[1] += len(calls)
            return execute(calls, errors_as_values)

        transport.execute = counted  # type: ignore[method-assign]
        client.put_item(TableName="modes", Item=item(0, 0, 1))
        protocol = registration._protocol
        [ref] = registration.table_refs("modes")
        dropped = protocol.planner.written_keys(ref, {"pk": {"S": "p1"}, "sk": {"N": "1"}})
        print(
            f"PutItem, {mode}: {sent[0]} round trip, {sent[1]} commands in it, "
            f"{len(dropped)} keys dropped by its invalidate_items script"
        )
        cases[f"PutItem, query_invalidation={mode}"] = functools.partial(
            client.put_item, TableName="modes", Item=item(1, 1, 1)
        )
        deliver = functools.partial(
            drive_invalidation, protocol, transport, Invalidation(items=dropped)
        )
        cases[f"its invalidation alone, {mode}"] = deliver
    series = measure(cases, rounds=max(3, env.rounds // 2), per_round=max(3, env.per_round // 5))
    for registration in registrations:
        registration.unregister()
    print(table_of(series, "PutItem, query_invalidation=ttl"))
    for name, s in series.items():
        ratios[f"{name} / ttl"] = s.median_us / series["PutItem, query_invalidation=ttl"].median_us
    return ratios


def drive_invalidation(protocol: Any, transport: Any, invalidation: Any) -> None:
    """One write's Redis round trip, without DynamoDB."""
    from ddbcache_hooks.handlers import drive

    drive(protocol.deliver(invalidation), transport, lambda table: None)


def bench_codec(env: Env) -> dict[str, float]:
    """Entry codecs compared on a 1 KB item and a 100 KB page: why msgpack."""
    import base64
    import json

    import msgpack

    def to_json(value: Any) -> Any:
        if isinstance(value, bytes):
            return {"__b": base64.b64encode(value).decode()}
        if isinstance(value, dict):
            return {k: to_json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [to_json(v) for v in value]
        return value

    def from_json(value: Any) -> Any:
        if isinstance(value, dict):
            if len(value) == 1 and "__b" in value:
                return base64.b64decode(value["__b"])
            return {k: from_json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [from_json(v) for v in value]
        return value

    def item(i: int) -> dict[str, Any]:
        return {
            "pk": {"S": f"customer-{i}"},
            "sk": {"N": str(i)},
            "name": {"S": "x" * 600},
            "blob": {"B": os.urandom(200)},
            "tags": {"SS": ["a", "b", "c"]},
            "nested": {"M": {"n": {"N": "1.5"}, "l": {"L": [{"BOOL": True}, {"NULL": True}]}}},
        }

    one = {"Item": item(0)}
    page = {"Items": [item(i) for i in range(100)], "Count": 100, "ScannedCount": 100}
    results = {}
    cases: dict[str, Callable[[], object]] = {}
    for label, payload in (("1 KB item", one), ("100 KB page", page)):
        packed = msgpack.packb(payload, use_bin_type=True)
        dumped = json.dumps(to_json(payload)).encode()
        assert msgpack.unpackb(packed, raw=False) == payload == from_json(json.loads(dumped))
        cases[f"msgpack decode, {label}"] = functools.partial(msgpack.unpackb, packed, raw=False)
        cases[f"json+base64 decode, {label}"] = lambda d=dumped: from_json(json.loads(d))
        cases[f"msgpack encode, {label}"] = functools.partial(
            msgpack.packb, payload, use_bin_type=True
        )
        cases[f"json+base64 encode, {label}"] = lambda p=payload: json.dumps(to_json(p))
        results[label] = (len(packed), len(dumped))
    series = measure(cases, rounds=max(3, env.rounds // 2), per_round=max(5, env.per_round // 4))
    print(table_of(series, "msgpack decode, 1 KB item"))
    for label, (m, j) in results.items():
        print(f"size of {label}: msgpack {m} bytes, json+base64 {j} bytes")
    return {
        f"json+base64 / msgpack decode, {label}": series[f"json+base64 decode, {label}"].median_us
        / series[f"msgpack decode, {label}"].median_us
        for label in results
    }


def bench_compression(env: Env) -> dict[str, float]:
    """Compressors for large entries: zlib levels, lz4 (frame), zstd; decode, encode, size."""
    import zlib

    import lz4.frame
    import msgpack
    import zstandard

    def page(total: int, text: bool) -> bytes:
        items, size, i = [], 0, 0
        while size < total:
            if text:
                data = " ".join(f"lorem ipsum dolor sit amet {i * 7 + j} elit" for j in range(8))
            else:
                data = os.urandom(150).hex()  # random hex: compresses about 2:1 at best
            items.append({"pk": {"S": f"k{i}"}, "sk": {"N": str(i)}, "data": {"S": data}})
            size += len(data) + 20
            i += 1
        return bytes(msgpack.packb({"Items": items, "Count": len(items)}, use_bin_type=True))

    codecs: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "zlib 1": (lambda b: zlib.compress(b, 1), zlib.decompress),
        "zlib 6": (lambda b: zlib.compress(b, 6), zlib.decompress),
        "lz4 frame": (lz4.frame.compress, lz4.frame.decompress),
        "zstd 1": (lambda b: zstandard.compress(b, 1), zstandard.decompress),
        "zstd 3": (lambda b: zstandard.compress(b, 3), zstandard.decompress),
    }
    ratios: dict[str, float] = {}
    rows = []
    for label, body in (
        ("1 KB", page(1000, False)),
        ("100 KB", page(100_000, False)),
        ("1 MB", page(1_000_000, False)),
        ("1 MB text", page(1_000_000, True)),
    ):
        cases: dict[str, Callable[[], object]] = {}
        sizes = {}
        for name, (encode, decode) in codecs.items():
            packed = encode(body)
            sizes[name] = len(packed) / len(body)
            cases[f"{name} decode"] = functools.partial(decode, packed)
            cases[f"{name} encode"] = functools.partial(encode, body)
        small = len(body) < 200_000
        series = measure(
            cases,
            rounds=max(3, env.rounds // (2 if small else 5)),
            per_round=max(3, env.per_round // (10 if small else 50)),
            warmup=3,
        )
        for name in codecs:
            rows.append(
                (
                    label,
                    name,
                    f"{series[f'{name} decode'].median_us:9.1f}",
                    f"{series[f'{name} encode'].median_us:9.1f}",
                    f"{sizes[name]:.3f}",
                )
            )
        ratios[f"zstd 1 / zlib 1 decode, {label}"] = (
            series["zstd 1 decode"].median_us / series["zlib 1 decode"].median_us
        )
    print(table(rows, ("page", "codec", "decode µs", "encode µs", "size / raw")))
    return ratios


def bench_async(env: Env) -> dict[str, float]:
    """Cached GetItem hits: aioboto3 (awaited) against boto3, on the same data."""
    import asyncio

    import aioboto3
    import redis.asyncio as aredis
    from moto.server import ThreadedMotoServer

    from ddbcache_hooks._redis_server import free_port

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    namespace = "bench-" + uuid.uuid4().hex[:8]
    sync_session = env.session()
    sync_registration = ddbcache_hooks.register(sync_session, env.redis(), namespace=namespace)
    sync_client = sync_session.client("dynamodb", endpoint_url=url)
    make_table(sync_client, "async", items=1, size=200)
    k = key(0)

    async def run() -> dict[str, Series]:
        session = aioboto3.Session(region_name="us-east-1")
        registration = await ddbcache_hooks.register_async(
            session, aredis.Redis(port=env.server.port), namespace=namespace
        )
        scripted_session = aioboto3.Session(region_name="us-east-1")
        scripted = await ddbcache_hooks.register_async(
            scripted_session, aredis.Redis(port=env.server.port), namespace=namespace
        )
        lookup_script_hits(scripted)  # the previous releases' hit
        async with (
            session.client("dynamodb", endpoint_url=url) as client,
            scripted_session.client("dynamodb", endpoint_url=url) as scripted_client,
        ):
            await client.get_item(TableName="async", Key=k)
            sync_client.get_item(TableName="async", Key=k)
            assert "CacheMetadata" in await client.get_item(TableName="async", Key=k)
            assert "CacheMetadata" in await scripted_client.get_item(TableName="async", Key=k)
            names = ("sync hit (boto3)", "async hit (aioboto3)", "async hit, lookup script")
            series = {name: Series(name) for name in names}
            clock = time.perf_counter_ns
            for _ in range(10):
                await client.get_item(TableName="async", Key=k)
                sync_client.get_item(TableName="async", Key=k)
            for _ in range(env.rounds):
                for _ in range(env.per_round):
                    started = clock()
                    sync_client.get_item(TableName="async", Key=k)
                    series["sync hit (boto3)"].samples_ns.append(clock() - started)
                for _ in range(env.per_round):
                    started = clock()
                    await client.get_item(TableName="async", Key=k)
                    series["async hit (aioboto3)"].samples_ns.append(clock() - started)
                for _ in range(env.per_round):
                    started = clock()
                    await scripted_client.get_item(TableName="async", Key=k)
                    series["async hit, lookup script"].samples_ns.append(clock() - started)
        scripted.unregister()
        registration.unregister()
        return series

    try:
        series = asyncio.run(run())
    finally:
        sync_registration.unregister()
        server.stop()
    print(table_of(series, "sync hit (boto3)"))
    return {
        "async hit / sync hit": series["async hit (aioboto3)"].median_us
        / series["sync hit (boto3)"].median_us
    }


def table_of(series: dict[str, Series], baseline: str) -> str:
    return table(rows_for(series, baseline), HEADERS)


def bench_batch(env: Env) -> dict[str, float]:
    """100-key BatchGetItem, all hits, against 100 sequential cached GetItem calls."""
    session = env.session()
    registration = env.register(session)
    client = session.client("dynamodb")
    make_table(client, "batch", items=100)
    keys = [key(i) for i in range(100)]
    request = {"batch": {"Keys": keys}}
    client.batch_get_item(RequestItems=request)
    for k in keys:
        client.get_item(TableName="batch", Key=k)

    def sequential() -> None:
        for k in keys:
            client.get_item(TableName="batch", Key=k)

    fresh = iter(range(10**9))

    def half_hits() -> None:
        # 50 cached keys and 50 never seen before (absent: one real call, negative fills).
        n = next(fresh)
        unseen = [{"pk": {"S": f"new-{n}-{i}"}, "sk": {"N": "0"}} for i in range(50)]
        client.batch_get_item(RequestItems={"batch": {"Keys": keys[:50] + unseen}})

    series = measure(
        {
            "100 sequential GetItem hits (reference strategy)": sequential,
            "BatchGetItem 100 keys, all hits": lambda: client.batch_get_item(RequestItems=request),
            "BatchGetItem 100 keys, half hits (one real call for 50)": half_hits,
        },
        rounds=max(3, env.rounds // 4),
        per_round=max(3, env.per_round // 10),
        warmup=3,
    )
    registration.unregister()
    print(table(rows_for(series, "100 sequential GetItem hits (reference strategy)"), HEADERS))
    seq = series["100 sequential GetItem hits (reference strategy)"].median_us
    batch = series["BatchGetItem 100 keys, all hits"].median_us
    return {"batch all-hit vs 100 sequential hits": batch / seq}


def bench_outage(env: Env) -> dict[str, float]:
    """What a GetItem pays when Redis is in trouble, against no cache.

    Every registration gets a default ``redis.Redis()`` (5 s time-out, retries
    with back-off, a pool that fails past 100): the cache applies its own policy.
    """
    import signal

    results: dict[str, Series] = {}
    with RedisServer() as down, RedisServer() as healthy:
        # Two registrations on the same doomed server: one whose breaker never opens.
        clients = {}
        for label, threshold in (("breaker closed", 10**9), ("breaker open", 1)):
            session = env.session()
            ddbcache_hooks.register(
                session,
                redis.Redis(port=down.port),
                namespace="bench-" + uuid.uuid4().hex[:8],
                breaker_threshold=threshold,
                breaker_cooldown_ms=3_600_000,
            )
            clients[label] = session.client("dynamodb")
        # A healthy server whose only pooled connection is busy elsewhere.
        session = env.session()
        busy = ddbcache_hooks.register(
            session,
            redis.Redis(port=healthy.port),
            namespace="bench-" + uuid.uuid4().hex[:8],
            redis_max_connections=1,
        )
        clients["pool busy"] = session.client("dynamodb")
        plain = env.session().client("dynamodb")
        make_table(plain, "outage", items=1)
        k = key(0)

        def call(client: Any) -> Callable[[], object]:
            return lambda: client.get_item(TableName="outage", Key=k)

        pool = busy._transport.client.connection_pool
        held = pool.get_connection()
        try:
            exhausted = measure(
                {
                    "no cache (moto GetItem)  ": call(plain),
                    "pool exhausted (20 ms pool wait, then DynamoDB)": call(clients["pool busy"]),
                },
                rounds=3,
                per_round=5,
                warmup=1,
            )
        finally:
            pool.release(held)
        assert busy.stats()["breaker_opened"] == 0

        assert down.pid is not None
        os.kill(down.pid, signal.SIGSTOP)  # unresponsive: connected, no answers (time-outs)
        try:
            for label in ("breaker closed", "breaker open"):
                call(clients[label])()  # opens the second breaker
            paused = measure(
                {
                    "no cache (moto GetItem)": call(plain),
                    "Redis unresponsive, breaker closed (50 ms time-out)": call(
                        clients["breaker closed"]
                    ),
                    "Redis unresponsive, breaker open": call(clients["breaker open"]),
                },
                rounds=3,
                per_round=5,
                warmup=1,
            )
        finally:
            os.kill(down.pid, signal.SIGCONT)
        down.kill()  # gone: connections refused at once
        refused = measure(
            {
                "no cache (moto GetItem) ": call(plain),
                "Redis refusing, breaker closed": call(clients["breaker closed"]),
                "Redis refusing, breaker open": call(clients["breaker open"]),
            },
            rounds=max(3, env.rounds // 2),
            per_round=max(5, env.per_round // 5),
            warmup=5,
        )
    results.update(paused)
    print(table(rows_for(exhausted, "no cache (moto GetItem)  "), HEADERS))
    print()
    print(table(rows_for(paused, "no cache (moto GetItem)"), HEADERS))
    print()
    print(table(rows_for(refused, "no cache (moto GetItem) "), HEADERS))
    base0, base, base2 = (
        exhausted["no cache (moto GetItem)  "].median_us,
        paused["no cache (moto GetItem)"].median_us,
        refused["no cache (moto GetItem) "].median_us,
    )
    return {
        "pool exhausted / uncached": exhausted[
            "pool exhausted (20 ms pool wait, then DynamoDB)"
        ].median_us
        / base0,
        "Redis unresponsive, breaker closed / uncached": paused[
            "Redis unresponsive, breaker closed (50 ms time-out)"
        ].median_us
        / base,
        "Redis unresponsive, breaker open / uncached": paused[
            "Redis unresponsive, breaker open"
        ].median_us
        / base,
        "Redis refusing, breaker closed / uncached": refused[
            "Redis refusing, breaker closed"
        ].median_us
        / base2,
        "Redis refusing, breaker open / uncached": refused["Redis refusing, breaker open"].median_us
        / base2,
    }


def _hot_key_run(env: Env, label: str, on: bool) -> tuple[tuple[str, ...], float, float]:
    """One mode of the hot-key benchmark: its table row, reads and waits per expiry."""
    import threading

    session = env.session()
    # Threads of one process share the GIL: a Redis reply can wait longer than
    # the 50 ms default time-out, which would send callers to DynamoDB.
    registration = env.register(
        session,
        key_schema={"hot": ("pk", "sk")},
        ttl=1,
        early_refresh=on,
        redis_timeout_ms=2000,
    )
    clients = [session.client("dynamodb") for _ in range(env.hot_threads)]
    reads = [0]
    lock = threading.Lock()

    def count(**_: Any) -> None:
        with lock:
            reads[0] += 1

    for c in clients:
        c.meta.events.register("before-send.dynamodb.GetItem", count)
    clients[0].get_item(TableName="hot", Key=key(0))
    reads[0] = 0
    samples: list[list[int]] = [[] for _ in clients]
    started = time.monotonic()
    deadline = started + env.hot_seconds

    def hammer(c: Any, mine: list[int]) -> None:
        clock = time.perf_counter_ns
        while time.monotonic() < deadline:
            t = clock()
            c.get_item(TableName="hot", Key=key(0))
            mine.append(clock() - t)

    threads = [
        threading.Thread(target=hammer, args=(c, mine))
        for c, mine in zip(clients, samples, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expiries = (time.monotonic() - started) / 1.0  # TTL 1 s
    stats = registration.stats()
    registration.unregister()
    merged = Series(label, [x for mine in samples for x in mine])
    per_expiry = reads[0] / expiries
    waits = stats.get("lease_waits", 0) / expiries
    row = (
        label,
        str(len(merged.samples_ns)),
        str(reads[0]),
        f"{per_expiry:.2f}",
        f"{waits:.1f}",
        str(stats.get("early_refreshes", 0)),
        str(stats.get("errors", 0) + stats.get("lease_wait_timeouts", 0)),
        f"{merged.median_us:.0f}",
        f"{merged.p99_us:.0f}",
    )
    return row, per_expiry, waits


def bench_hot_key(env: Env) -> dict[str, float]:
    """16 threads on one hot key with a 1 s TTL: DynamoDB reads per expiry, early refresh off/on."""
    out: dict[str, float] = {}
    rows = []
    make_table(env.session().client("dynamodb"), "hot", items=1, size=200)
    for label, on in (("early refresh off", False), ("early refresh on", True)):
        row, per_expiry, waits = _hot_key_run(env, label, on)
        rows.append(row)
        out[f"DynamoDB reads per expiry, {label}"] = per_expiry
        out[f"callers waiting for a fill per expiry, {label}"] = waits
    print(
        table(
            rows,
            (
                f"{env.hot_threads} threads, {env.hot_seconds:.0f} s",
                "calls",
                "DynamoDB reads",
                "per expiry",
                "waits/expiry",
                "refreshes",
                "errors+wait timeouts",
                "median us",
                "p99 us",
            ),
        )
    )

    # The ordinary hit, far from expiry: what early refresh adds to it.
    hits = {}
    for label, on in (("hit, early refresh off", False), ("hit, early refresh on", True)):
        session = env.session()
        registration = env.register(session, key_schema={"hot": ("pk", "sk")}, early_refresh=on)
        c = session.client("dynamodb")
        c.get_item(TableName="hot", Key=key(0))
        hits[label] = (registration, c)
    series = measure(
        {
            label: functools.partial(c.get_item, TableName="hot", Key=key(0))
            for label, (_, c) in hits.items()
        },
        rounds=env.rounds,
        per_round=env.per_round,
    )
    for registration, _ in hits.values():
        registration.unregister()
    print(table_of(series, "hit, early refresh off"))
    out["hit latency, early refresh on / off"] = (
        series["hit, early refresh on"].median_us / series["hit, early refresh off"].median_us
    )
    return out


def bench_write_through(env: Env) -> dict[str, float]:
    """Steady-state GetItem hit ratio, write-through off / on: 90 % GetItem, 10 % writes."""
    import random

    items, operations = 500, 10_000 if env.rounds >= 20 else 2000
    session = env.session()
    admin = session.client("dynamodb")
    admin.create_table(
        TableName="wt",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    for i in range(items):
        admin.put_item(TableName="wt", Item={"pk": {"S": f"k{i}"}, "v": {"N": "0"}})
    # Skewed keys: Zipf-like weights 1/rank, as in the demo's mix.
    weights = [1 / (rank + 1) for rank in range(items)]
    rows: list[tuple[str, ...]] = []
    out: dict[str, float] = {}
    for clients in (1, 2):
        for on in (False, True):
            sessions = [env.session() for _ in range(clients)]  # one registration each
            namespace = "bench-wt-" + uuid.uuid4().hex[:8]
            registrations = [
                ddbcache_hooks.register(
                    s, env.redis(), namespace=namespace, key_schema={"wt": "pk"}, write_through=on
                )
                for s in sessions
            ]
            dynamo = [s.client("dynamodb") for s in sessions]
            reads = [0]

            def count(reads: list[int] = reads, **_: Any) -> None:
                reads[0] += 1

            for c in dynamo:
                c.meta.events.register("before-send.dynamodb.GetItem", count)
            for i in range(items):  # steady state: every item read once
                dynamo[i % clients].get_item(TableName="wt", Key={"pk": {"S": f"k{i}"}})
            reads[0] = 0
            rng = random.Random(26)
            gets = hits = 0
            for n in range(operations):
                c = dynamo[n % clients]
                key = {"pk": {"S": f"k{rng.choices(range(items), weights)[0]}"}}
                roll = rng.random()
                if roll < 0.90:
                    gets += 1
                    hits += "CacheMetadata" in c.get_item(TableName="wt", Key=key)
                elif roll < 0.94:
                    c.put_item(TableName="wt", Item={**key, "v": {"N": str(n)}})
                elif roll < 0.98:
                    c.update_item(
                        TableName="wt",
                        Key=key,
                        UpdateExpression="SET v = :v",
                        ExpressionAttributeValues={":v": {"N": str(n)}},
                        ReturnValues="ALL_NEW",
                    )
                else:
                    c.delete_item(TableName="wt", Key=key)
            for registration in registrations:
                registration.unregister()
            plural = "s" if clients > 1 else ""
            label = f"{clients} client{plural}, write-through {'on' if on else 'off'}"
            per_1000 = reads[0] * 1000 / operations
            rows.append((label, f"{hits / gets:6.1%}", f"{per_1000:6.1f}"))
            out[f"GetItem hit ratio, {label}"] = hits / gets
            out[f"DynamoDB GetItems per 1000 operations, {label}"] = per_1000
    print(f"{operations} operations over {items} items (Zipf-like), after one read of each")
    print(table(rows, ("run", "GetItem hit ratio", "DynamoDB GetItems / 1000 ops")))
    for clients in (1, 2):
        suffix = f"{clients} client{'s' if clients > 1 else ''}"
        off = out[f"DynamoDB GetItems per 1000 operations, {suffix}, write-through off"]
        on = out[f"DynamoDB GetItems per 1000 operations, {suffix}, write-through on"]
        out[f"TARGET DynamoDB GetItems on / off, {suffix} (<= 0.1)"] = on / off if off else 0.0
    cases: dict[str, Callable[[], object]] = {}
    registrations = []
    for on in (False, True):
        own = env.session()
        registrations.append(env.register(own, key_schema={"wt": "pk"}, write_through=on))
        client = own.client("dynamodb")
        cases[f"PutItem, write-through {'on' if on else 'off'}"] = functools.partial(
            client.put_item, TableName="wt", Item={"pk": {"S": "k1"}, "v": {"N": "1"}}
        )
    cases["one Redis round trip (PING)"] = env.redis().ping
    series = measure(cases, rounds=max(3, env.rounds // 2), per_round=max(3, env.per_round // 5))
    for registration in registrations:
        registration.unregister()
    print(table_of(series, "PutItem, write-through off"))
    off_us = series["PutItem, write-through off"].median_us
    on_us = series["PutItem, write-through on"].median_us
    out["PutItem latency, write-through on - off (us)"] = on_us - off_us
    out["PutItem latency, (on - off) / one Redis round trip"] = (on_us - off_us) / series[
        "one Redis round trip (PING)"
    ].median_us
    return out


BENCHMARKS: dict[str, Callable[[Env], dict[str, float]]] = {
    "targets": lambda env: bench_targets(env),
    "hits": bench_hits,
    "access": bench_access,
    "near": bench_near,
    "batch": bench_batch,
    "pages": bench_pages,
    "modes": bench_query_modes,
    "codec": bench_codec,
    "compression": bench_compression,
    "async": bench_async,
    "outage": bench_outage,
    "hotkey": bench_hot_key,
    "writethrough": bench_write_through,
}


NEAR_READER = """
import os, sys, time
import boto3, ddbcache_hooks
from ddbcache_hooks import NearCache

moto_url, redis_url, namespace, stop_file, out_file = sys.argv[1:6]
near = NearCache(max_items=100, ttl_ms=60_000)
session = boto3.Session(region_name="us-east-1")
ddbcache_hooks.register(session, redis_url, namespace=namespace, near_cache=near)
client = session.client("dynamodb", endpoint_url=moto_url)
key = {"pk": {"S": "k0"}, "sk": {"N": "0"}}
deadline = time.monotonic() + 120
while not near.online and time.monotonic() < deadline:
    time.sleep(0.01)
for _ in range(3):
    client.get_item(TableName="near2", Key=key)
print("ready", flush=True)
reads = []
while not os.path.exists(stop_file) and time.monotonic() < deadline:
    start = time.monotonic()
    item = client.get_item(TableName="near2", Key=key)["Item"]
    reads.append((start, int(item["v"]["S"])))
with open(out_file, "w") as out:
    out.write("\\n".join(f"{s!r} {v}" for s, v in reads))
"""


def near_staleness_ms(env: Env, writes: int) -> list[float]:
    """Per write: from the write returning to the first read of a busy reader (another
    process, spinning on near-cache hits) that sees it, in ms."""
    import subprocess
    import tempfile

    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        url = f"http://{host}:{port}"
        namespace = "bench-" + uuid.uuid4().hex[:8]
        session = env.session()
        registration = ddbcache_hooks.register(
            session, f"redis://127.0.0.1:{env.server.port}", namespace=namespace
        )
        writer = session.client("dynamodb", endpoint_url=url)
        make_table(writer, "near2")
        writer.put_item(TableName="near2", Item={**key(0), "v": {"S": "0"}})
        with tempfile.TemporaryDirectory() as tmp:
            stop, out = os.path.join(tmp, "stop"), os.path.join(tmp, "reads")
            reader = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    NEAR_READER,
                    url,
                    f"redis://127.0.0.1:{env.server.port}",
                    namespace,
                    stop,
                    out,
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
            returned = []
            for k in range(1, writes + 1):
                time.sleep(0.03)
                writer.put_item(TableName="near2", Item={**key(0), "v": {"S": str(k)}})
                returned.append(time.monotonic())
            time.sleep(0.1)
            open(stop, "w").close()
            reader.communicate(timeout=60)
            with open(out) as lines:
                reads = [line.split() for line in lines.read().splitlines()]
        registration.unregister()
    finally:
        moto.stop()
    lags = []
    for k, at in enumerate(returned, start=1):
        # The last read that began after the write returned and still saw an older value.
        stale = [float(t) for t, v in reads if float(t) >= at and int(v) < k]
        lags.append((max(stale) - at) * 1000 if stale else 0.0)
    return lags


def lookup_script_hits(registration: Any) -> None:
    """Make a registration serve every hit with the lookup script (as releases before
    0.1.0's plain reads did). Also works on a checkout of 0.1.0, whose flag was ``plain``,
    so that this file can measure it for docs/performance.md's "before" column."""
    import inspect

    protocol = registration._protocol
    original = protocol._lookup
    flag = "hits_first" if "hits_first" in inspect.signature(original).parameters else "plain"
    protocol._lookup = lambda slots, **kw: original(slots, **{**kw, flag: False})


def pure_python_redis(env: Env) -> redis.Redis:
    """A client whose replies redis-py parses in Python (as without hiredis)."""
    from redis._parsers import _RESP2Parser

    return redis.Redis(
        connection_pool=redis.ConnectionPool(port=env.server.port, parser_class=_RESP2Parser)
    )


def reference_client(raw: redis.Redis) -> Callable[[dict[str, Any]], Any]:
    """The reference ``CacheClient``'s hit: a key from the request's JSON, a GET, a decode."""
    import hashlib
    import json

    def get_item(params: dict[str, Any]) -> Any:
        cache_key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        return json.loads(raw.get("bench:ref:" + cache_key) or b"null")

    return get_item


def bench_targets(env: Env) -> dict[str, float]:
    """The performance targets of the one-reply hit (docs/performance.md)."""
    import hashlib
    import json

    import msgpack
    from botocore.awsrequest import AWSResponse

    out: dict[str, float] = {}
    session = env.session()
    registration = env.register(session, key_schema={"t": ("pk", "sk")})
    client = session.client("dynamodb")
    make_table(client, "t", items=100, size=900)
    k = key(0)
    for _ in range(2):
        client.get_item(TableName="t", Key=k)
    response = client.get_item(TableName="t", Key=k)
    assert "CacheMetadata" in response
    namespace = registration._protocol.settings.namespace
    # The same hit through redis-py's pure-Python parser (no hiredis).
    pure_session = env.session()
    pure = ddbcache_hooks.register(pure_session, pure_python_redis(env), namespace=namespace)
    pure_client = pure_session.client("dynamodb")
    pure_client.get_item(TableName="t", Key=k)
    assert "CacheMetadata" in pure_client.get_item(TableName="t", Key=k)
    # The previous releases' hit: the lookup script.
    scripted_session = env.session()
    scripted = ddbcache_hooks.register(scripted_session, env.redis(), namespace=namespace)
    lookup_script_hits(scripted)
    scripted_client = scripted_session.client("dynamodb")
    scripted_client.get_item(TableName="t", Key=k)
    assert "CacheMetadata" in scripted_client.get_item(TableName="t", Key=k)

    floor = canned_client(env.session(), response)
    raw, raw_pure = env.redis(), pure_python_redis(env)
    item_key = registration._protocol.planner.item_key(*registration.table_refs("t"), k)
    raw.set("bench:entry", raw.hget(item_key, "e:") or b"")
    params = {"TableName": "t", "Key": k}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    raw.set("bench:ref:" + digest, json.dumps(response))
    reference = reference_client(raw)
    assert reference(params) is not None
    # The physical limit measured as one call: the handler sends one GET of the entry
    # and decodes it (msgpack) before answering.
    limit = env.session().client("dynamodb")
    raw.set("bench:limit", msgpack.packb(response))
    limit.meta.events.register(
        "before-call.dynamodb.GetItem",
        lambda **_: (
            AWSResponse(None, 200, {}, None),
            msgpack.unpackb(raw.get("bench:limit") or b"\xc0"),
        ),
    )
    series = measure(
        {
            "floor: botocore call answered by a handler": lambda: floor.get_item(**params),
            "floor + one GET, in one call (a handler GETs and decodes)": lambda: limit.get_item(
                **params
            ),
            "Redis GET of the entry (hiredis)": lambda: raw.get("bench:entry"),
            "Redis GET of the entry (pure-Python parser)": lambda: raw_pure.get("bench:entry"),
            "reference CacheClient hit (GET + JSON, no botocore)": lambda: reference(params),
            "hit, lookup script (previous releases)": lambda: scripted_client.get_item(**params),
            "hit, pure-Python parser": lambda: pure_client.get_item(**params),
            "hit (default install)": lambda: client.get_item(**params),
        },
        rounds=env.rounds,
        per_round=env.per_round,
    )
    print(table_of(series, "floor: botocore call answered by a handler"))
    m = {name: s.median_us for name, s in series.items()}
    f = m["floor: botocore call answered by a handler"]
    get, get_pure = (
        m["Redis GET of the entry (hiredis)"],
        m["Redis GET of the entry (pure-Python parser)"],
    )
    out["TARGET GetItem hit / (floor + GET), default install (<= 1.20)"] = m[
        "hit (default install)"
    ] / (f + get)
    out["TARGET GetItem hit / (floor + GET), pure-Python parser (<= 1.30)"] = m[
        "hit, pure-Python parser"
    ] / (f + get_pure)
    out["TARGET GetItem hit / reference CacheClient hit (<= 2.0)"] = (
        m["hit (default install)"] / m["reference CacheClient hit (GET + JSON, no botocore)"]
    )
    out["GetItem hit / (floor + GET in one call)"] = (
        m["hit (default install)"] / m["floor + one GET, in one call (a handler GETs and decodes)"]
    )
    out["previous hit (lookup script) / (floor + GET)"] = m[
        "hit, lookup script (previous releases)"
    ] / (f + get)
    out["GetItem hit / previous hit (lookup script)"] = (
        m["hit (default install)"] / m["hit, lookup script (previous releases)"]
    )

    # A 100-key all-hit BatchGetItem against its floor and one pipelined read of the entries.
    keys = [key(i) for i in range(100)]
    batch = {"t": {"Keys": keys}}
    client.batch_get_item(RequestItems=batch)
    batch_response = client.batch_get_item(RequestItems=batch)
    assert "CacheMetadata" in batch_response
    batch_floor = env.session().client("dynamodb")
    batch_floor.meta.events.register(
        "before-call.dynamodb.BatchGetItem",
        lambda **_: (AWSResponse(None, 200, {}, None), copy.deepcopy(batch_response)),
    )
    refs = registration.table_refs("t")
    entries = [registration._protocol.planner.item_key(*refs, each) for each in keys]

    def pipelined_read() -> None:
        pipe = raw.pipeline(transaction=False)
        for entry in entries:
            pipe.hget(entry, "e:")
        pipe.execute()

    big = measure(
        {
            "BatchGetItem floor (answered by a handler)": lambda: batch_floor.batch_get_item(
                RequestItems=batch
            ),
            "one pipelined read of the 100 entries": pipelined_read,
            "BatchGetItem 100 keys, all hits": lambda: client.batch_get_item(RequestItems=batch),
        },
        rounds=max(3, env.rounds // 2),
        per_round=max(3, env.per_round // 10),
        warmup=3,
    )
    print(table_of(big, "BatchGetItem floor (answered by a handler)"))
    b = {name: s.median_us for name, s in big.items()}
    out["TARGET 100-key all-hit BatchGetItem / (batch floor + pipelined read) (<= 1.5)"] = b[
        "BatchGetItem 100 keys, all hits"
    ] / (
        b["BatchGetItem floor (answered by a handler)"] + b["one pipelined read of the 100 entries"]
    )
    for each in (registration, pure, scripted):
        each.unregister()

    out.update(_target_near(env))
    out.update(_target_cluster(env))
    out.update(_target_async(env))
    return out


def _target_near(env: Env) -> dict[str, float]:
    ratios = bench_near(env, "near-t", 900)  # the 1 KB item of the other targets
    lags = sorted(near_staleness_ms(env, 30 if env.rounds < 20 else 150))
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    print(
        f"near cache, busy reader in another process: {len(lags)} writes, staleness after the "
        f"write returned: median {lags[len(lags) // 2]:.2f} ms, p99 {p99:.2f} ms, "
        f"max {lags[-1]:.2f} ms, {sum(1 for x in lags if x > 0)} writes with a stale read"
    )
    return {
        "TARGET near-cache hit / floor (<= 1.10)": ratios["near-cache hit / botocore floor"],
        "near-cache staleness after a write, p99 ms (<= 2)": p99,
    }


def _target_cluster(env: Env) -> dict[str, float]:
    """A hit on a 3-master Redis Cluster against the floor and one cluster GET: with
    ``cluster_buckets`` (one node per hit) and, for comparison, without."""
    import redis.cluster

    from tests.conftest import CountingConnection
    from tests.servers import RedisCluster

    class Counting(CountingConnection):
        sends = 0
        sent: list[bytes] = []  # noqa: RUF012

    def registered(host: str, port: int, **options: Any) -> tuple[Any, Any]:
        session = env.session()
        counted = redis.cluster.RedisCluster(host=host, port=port, connection_class=Counting)
        registration = ddbcache_hooks.register(
            session, counted, namespace="bench-" + uuid.uuid4().hex[:8], **options
        )
        return registration, session.client("dynamodb")

    def nodes_per_hit(client: Any) -> float:
        for _ in range(3):
            response = client.get_item(TableName="cl", Key=k)
        assert "CacheMetadata" in response
        before = Counting.sends
        for _ in range(10):
            client.get_item(TableName="cl", Key=k)
        return (Counting.sends - before) / 10

    with RedisCluster(masters=3) as cluster:
        host, port = cluster.startup_nodes[0]
        spread_registration, spread = registered(host, port)
        registration, client = registered(host, port, cluster_buckets=16)
        make_table(client, "cl", items=1, size=900)
        k = key(0)
        packets = nodes_per_hit(client)
        spread_packets = nodes_per_hit(spread)
        response = client.get_item(TableName="cl", Key=k)
        raw = redis.cluster.RedisCluster(host=host, port=port)
        raw.set("bench:entry", os.urandom(1000))
        floor = canned_client(env.session(), response)
        series = measure(
            {
                "floor: botocore call answered by a handler": lambda: floor.get_item(
                    TableName="cl", Key=k
                ),
                "cluster GET of a 1 KB value": lambda: raw.get("bench:entry"),
                "GetItem hit on the cluster (cluster_buckets=16)": lambda: client.get_item(
                    TableName="cl", Key=k
                ),
                "GetItem hit on the cluster (no buckets)": lambda: spread.get_item(
                    TableName="cl", Key=k
                ),
            },
            rounds=env.rounds,
            per_round=env.per_round,
        )
        registration.unregister()
        spread_registration.unregister()
        raw.close()
    print(table_of(series, "floor: botocore call answered by a handler"))
    print(
        f"cluster hit: {packets:.0f} packet(s) (nodes written to) per hit with buckets, "
        f"{spread_packets:.0f} without, in one round trip"
    )
    m = {name: s.median_us for name, s in series.items()}
    limit = m["floor: botocore call answered by a handler"] + m["cluster GET of a 1 KB value"]
    return {
        "TARGET cluster hit / (floor + cluster GET) (<= 1.35)": m[
            "GetItem hit on the cluster (cluster_buckets=16)"
        ]
        / limit,
        "TARGET cluster hit: nodes sent to per hit (1)": packets,
        "cluster hit without buckets / (floor + cluster GET)": m[
            "GetItem hit on the cluster (no buckets)"
        ]
        / limit,
        "cluster hit without buckets: nodes sent to per hit": spread_packets,
    }


def _target_async(env: Env) -> dict[str, float]:
    """An aioboto3 hit against the async floor and one async GET."""
    import asyncio

    import aioboto3
    import redis.asyncio as aredis
    from botocore.awsrequest import AWSResponse
    from moto.server import ThreadedMotoServer

    from ddbcache_hooks._redis_server import free_port

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    setup = env.session().client("dynamodb", endpoint_url=url)
    make_table(setup, "async-t", items=1, size=900)
    k = key(0)

    async def run() -> dict[str, Series]:
        session = aioboto3.Session(region_name="us-east-1")
        registration = await ddbcache_hooks.register_async(
            session, aredis.Redis(port=env.server.port), namespace="bench-" + uuid.uuid4().hex[:8]
        )
        raw = aredis.Redis(port=env.server.port)
        await raw.set("bench:entry", os.urandom(1000))
        floor_session = aioboto3.Session(region_name="us-east-1")
        async with (
            session.client("dynamodb", endpoint_url=url) as client,
            floor_session.client("dynamodb", endpoint_url=url) as floor,
        ):
            for _ in range(3):
                response = await client.get_item(TableName="async-t", Key=k)
            assert "CacheMetadata" in response
            floor.meta.events.register(
                "before-call.dynamodb.GetItem",
                lambda **_: (AWSResponse(None, 200, {}, None), copy.deepcopy(response)),
            )
            cases = {
                "async floor: aiobotocore call answered by a handler": lambda: floor.get_item(
                    TableName="async-t", Key=k
                ),
                "async Redis GET of a 1 KB value": lambda: raw.get("bench:entry"),
                "async GetItem hit": lambda: client.get_item(TableName="async-t", Key=k),
            }
            series = {name: Series(name) for name in cases}
            clock = time.perf_counter_ns
            for make in cases.values():
                for _ in range(20):
                    await make()
            for _ in range(env.rounds):
                for name, make in cases.items():
                    for _ in range(env.per_round):
                        started = clock()
                        await make()
                        series[name].samples_ns.append(clock() - started)
        await raw.aclose()
        registration.unregister()
        return series

    try:
        series = asyncio.run(run())
    finally:
        server.stop()
    print(table_of(series, "async floor: aiobotocore call answered by a handler"))
    m = {name: s.median_us for name, s in series.items()}
    return {
        "TARGET async hit / (async floor + async GET) (<= 1.40)": m["async GetItem hit"]
        / (
            m["async floor: aiobotocore call answered by a handler"]
            + m["async Redis GET of a 1 KB value"]
        )
    }


@contextlib.contextmanager
def environment(rounds: int, per_round: int, **options: Any) -> Iterator[Env]:
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    with RedisServer() as server, mock_aws():
        yield Env(server, rounds, per_round, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), default=None)
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument(
        "--hot-seconds",
        type=float,
        default=None,
        help="how long each mode of the hot-key benchmark runs (default 10, --quick 3)",
    )
    parser.add_argument("--hot-threads", type=int, default=16)
    args = parser.parse_args(argv)
    rounds, per_round = (4, 20) if args.quick else (20, 100)
    hot_seconds = args.hot_seconds or (3.0 if args.quick else 10.0)
    import logging

    logging.getLogger("ddbcache_hooks").setLevel(logging.ERROR)  # outages are on purpose here
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server access log
    print(f"machine: {machine()}")
    summary: dict[str, float] = {}
    with environment(
        rounds, per_round, hot_seconds=hot_seconds, hot_threads=args.hot_threads
    ) as env:
        print(f"redis: {env.server.binary} on :{env.server.port}; DynamoDB: moto (in-process)")
        for name in args.only or list(BENCHMARKS):
            print(f"\n== {name}: {BENCHMARKS[name].__doc__}")
            summary.update(BENCHMARKS[name](env))
    print("\n== summary (ratios measured in this run)")
    print(table([(k, f"{v:.3f}") for k, v in summary.items()], ("ratio", "value")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
