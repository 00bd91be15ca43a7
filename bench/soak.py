"""Soak run: processes and threads on hot keys while Redis goes through a fault schedule.

``python bench/soak.py [--minutes N | --seconds-per-fault S] [--processes P] [--threads T]``

Several processes (each its own registration and connections) share one moto
server and one Redis reached through an endpoint (a TCP forwarder, as a DNS
name or a proxy would be). Each process writes one hot key of its own (a
counter, so a read can tell its age) and reads every hot key with GetItem,
Query and BatchGetItem from several threads. A read that starts after a write
of its key returned and sees an older value is stale. The schedule, one fault
per phase: none, ``CLIENT PAUSE``, memory full under ``noeviction`` and under
``allkeys-lru``, ``kill -9`` and a restart without persistence, a cut-off
replica behind the endpoint, and a failover to a promoted replica.

A stale read while the writer of its key holds an invalidation Redis did not
take (its backlog, docs/operations.md "Outages and the invalidation backlog")
is inside that documented window; any other is outside, and must not happen.
Per fault it prints reads, writes, stale reads outside and inside the
windows (with the longest one inside), exceptions that reached callers,
hangs (a call over 5 s), breaker openings, the Redis errors the processes
counted (errors, refusals for memory, a server that is not a primary), p99
latency. Exit status 1 when a
stale read outside the windows, an exception or a hang was seen.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import boto3
import redis

FAULTS = (
    "none",
    "client-pause",
    "full-noeviction",
    "full-allkeys-lru",
    "kill-restart",
    "replica-behind-endpoint",
    "failover-promotion",
)
REGION = "us-east-1"
TABLE = "soak"
HANG_S = 5.0


def _key(index: int) -> dict[str, Any]:
    return {"pk": {"S": f"hot{index}"}}


def _worker(
    index: int,
    processes: int,
    threads: int,
    moto_url: str,
    redis_url: str,
    namespace: str,
    timeout_ms: int,
    acked: Any,
    acked_time: Any,
    held: Any,
    phase: Any,
    stop: Any,
    ready: Any,
    results: Any,
) -> None:
    import ddbcache_hooks

    session = boto3.Session(region_name=REGION)
    registration = ddbcache_hooks.register(
        session, redis_url, namespace=namespace, redis_timeout_ms=timeout_ms
    )
    client = session.client("dynamodb", endpoint_url=moto_url)
    counts: dict[int, Counter[str]] = {i: Counter() for i in range(len(FAULTS))}
    latencies: dict[int, list[float]] = {i: [] for i in range(len(FAULTS))}
    longest: dict[int, float] = dict.fromkeys(range(len(FAULTS)), 0.0)
    lock = threading.Lock()

    def note(current: int, name: str, seconds: float = 0.0) -> None:
        with lock:
            counts[current][name] += 1
            if seconds:
                latencies[current].append(seconds)
                if seconds > HANG_S:
                    counts[current]["hangs"] += 1

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            current = phase.value
            started = time.monotonic()
            try:
                client.put_item(TableName=TABLE, Item={**_key(index), "v": {"N": str(n)}})
            except Exception:  # reached the caller: counted, the run goes on
                note(current, "exceptions")
                continue
            acked_time[index] = time.time()
            held[index] = 1 if registration._protocol.backlog else 0
            acked[index] = n
            note(current, "writes", time.monotonic() - started)
            time.sleep(0.01)

    def value_of(item: Any) -> int:
        return int(item["v"]["N"]) if item else 0

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        step = 0
        while not stop.is_set():
            step += 1
            j = rng.randrange(processes)
            floor, was_held = acked[j], held[j]
            current = phase.value
            started = time.monotonic()
            try:
                if step % 7 == 0:
                    other = (j + 1) % processes
                    answer = client.batch_get_item(
                        RequestItems={TABLE: {"Keys": [_key(j), _key(other)]}}
                    )
                    found = {item["pk"]["S"]: item for item in answer["Responses"].get(TABLE, [])}
                    value = value_of(found.get(f"hot{j}"))
                elif step % 5 == 0:
                    answer = client.query(
                        TableName=TABLE,
                        KeyConditionExpression="pk = :p",
                        ExpressionAttributeValues={":p": _key(j)["pk"]},
                    )
                    value = value_of(answer["Items"][0] if answer["Items"] else None)
                else:
                    value = value_of(client.get_item(TableName=TABLE, Key=_key(j)).get("Item"))
            except Exception:
                note(current, "exceptions")
                continue
            note(current, "reads", time.monotonic() - started)
            if value < floor:
                if was_held or held[j]:
                    note(current, "stale_inside")
                    with lock:  # how long after the write it was still served
                        longest[current] = max(longest[current], time.time() - acked_time[j])
                else:
                    note(current, "stale_outside")

    watched = {
        "breaker_opened": "breaker_openings",
        "errors": "redis_errors",
        "redis_oom": "redis_oom",
        "not_primary": "not_primary",
    }

    def monitor() -> None:
        before = registration.stats()
        while not stop.is_set():
            time.sleep(0.05)
            now = registration.stats()
            with lock:
                for stat, name in watched.items():
                    if now[stat] != before[stat]:
                        counts[phase.value][name] += now[stat] - before[stat]
            before = now

    workers = [threading.Thread(target=writer), threading.Thread(target=monitor)]
    workers += [threading.Thread(target=reader, args=(index * 100 + t,)) for t in range(threads)]
    ready.put(index)
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    registration.unregister()
    results.put((index, dict(counts), latencies, longest))


def _admin(server: Any) -> redis.Redis:
    return redis.Redis(server.host, server.port)


def _full(server: Any, policy: str) -> None:
    with contextlib.closing(_admin(server)) as admin:
        admin.config_set("maxmemory-policy", policy)
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory", max(used - 256 * 1024, 1024 * 1024))


def _room(server: Any) -> None:
    with contextlib.closing(_admin(server)) as admin:
        admin.config_set("maxmemory", 0)
        admin.config_set("maxmemory-policy", "noeviction")


def _run_fault(name: str, seconds: float, servers: dict[str, Any], endpoint: Any) -> None:
    from ddbcache_hooks._redis_server import free_port
    from tests.servers import promote, replicate, settle_replicas

    primary, replica = servers["primary"], servers["replica"]
    end = time.monotonic() + seconds
    if name == "none":
        time.sleep(seconds)
    elif name == "client-pause":
        while time.monotonic() < end:
            with contextlib.closing(_admin(primary)) as admin:
                admin.execute_command("CLIENT", "PAUSE", "300", "ALL")
            time.sleep(1.0)
    elif name in ("full-noeviction", "full-allkeys-lru"):
        _full(primary, name.removeprefix("full-"))
        time.sleep(seconds)
        _room(primary)
    elif name == "kill-restart":
        while time.monotonic() < end:
            primary.kill()
            time.sleep(0.3)
            primary.restart()
            time.sleep(max(1.0, seconds / 3))
        replicate(replica, primary)
    elif name == "replica-behind-endpoint":
        settle_replicas(primary)
        with contextlib.closing(_admin(replica)) as admin:
            admin.execute_command("REPLICAOF", "127.0.0.1", free_port())
        endpoint.switch(replica)
        time.sleep(seconds)
        endpoint.switch(primary)
        replicate(replica, primary)
    elif name == "failover-promotion":
        settle_replicas(primary)
        promote(replica)
        endpoint.switch(replica)
        servers["primary"], servers["replica"] = replica, primary
        time.sleep(seconds)
    else:  # pragma: no cover - the schedule is closed
        raise ValueError(name)


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=None, help="whole run (default 5)")
    length.add_argument("--seconds-per-fault", type=float, default=None)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--redis-timeout-ms", type=int, default=250, help="each process's Redis time-out"
    )
    args = parser.parse_args(argv)
    per_fault = (
        args.seconds_per_fault
        if args.seconds_per_fault is not None
        else (args.minutes if args.minutes is not None else 5.0) * 60 / len(FAULTS)
    )
    if per_fault <= 0 or args.processes < 1 or args.threads < 1:
        parser.error("durations, --processes and --threads must be positive")

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    from ddbcache_hooks._redis_server import RedisServer, find_server_binary, free_port
    from tests.servers import Forwarder, replicate

    binary = find_server_binary()
    if binary is None:
        print("no redis-server or valkey-server found", file=sys.stderr)
        return 2
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    repl = ["--repl-diskless-sync-delay", "0", "--save", ""]
    context = multiprocessing.get_context("spawn")
    with (
        RedisServer(binary, extra_args=repl) as first,
        RedisServer(binary, extra_args=repl) as second,
    ):
        replicate(second, first)
        servers = {"primary": first, "replica": second}
        with Forwarder(first) as endpoint:
            admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
            admin.create_table(
                TableName=TABLE,
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            acked = context.Array("q", args.processes, lock=False)
            acked_time = context.Array("d", args.processes, lock=False)
            held = context.Array("b", args.processes, lock=False)
            phase = context.Value("i", 0, lock=False)
            stop, ready, results = context.Event(), context.Queue(), context.Queue()
            namespace = "soak" + uuid.uuid4().hex[:8]
            procs = [
                context.Process(
                    target=_worker,
                    args=(
                        i,
                        args.processes,
                        args.threads,
                        moto_url,
                        endpoint.url,
                        namespace,
                        args.redis_timeout_ms,
                        acked,
                        acked_time,
                        held,
                        phase,
                        stop,
                        ready,
                        results,
                    ),
                )
                for i in range(args.processes)
            ]
            for proc in procs:
                proc.start()
            for _ in procs:
                ready.get(timeout=120)
            for i, fault in enumerate(FAULTS):
                phase.value = i
                print(f"fault {fault}: {per_fault:.0f} s", file=sys.stderr, flush=True)
                _run_fault(fault, per_fault, servers, endpoint)
            stop.set()
            parts = [results.get(timeout=120) for _ in procs]
            for proc in procs:
                proc.join(30)
    moto.stop()
    return _report(parts, per_fault, args)


def _report(parts: list[Any], per_fault: float, args: argparse.Namespace) -> int:
    header = (
        "fault",
        "reads",
        "writes",
        "stale outside",
        "stale inside (longest s)",
        "exceptions",
        "hangs",
        "breaker openings",
        "Redis errors / OOM / not primary",
        "p99 ms",
    )
    rows = []
    bad = 0
    for i, fault in enumerate(FAULTS):
        total: Counter[str] = Counter()
        samples: list[float] = []
        longest = 0.0
        for _, counts, latencies, longest_of in parts:
            total.update(counts[i])
            samples.extend(latencies[i])
            longest = max(longest, longest_of[i])
        bad += total["stale_outside"] + total["exceptions"] + total["hangs"]
        rows.append(
            (
                fault,
                str(total["reads"]),
                str(total["writes"]),
                str(total["stale_outside"]),
                f"{total['stale_inside']} ({longest:.2f})",
                str(total["exceptions"]),
                str(total["hangs"]),
                str(total["breaker_openings"]),
                f"{total['redis_errors']} / {total['redis_oom']} / {total['not_primary']}",
                f"{_p99(samples):.1f}",
            )
        )
    print(
        f"{args.processes} processes x {args.threads} reader threads + 1 writer each, "
        f"{per_fault:.0f} s per fault"
    )
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
