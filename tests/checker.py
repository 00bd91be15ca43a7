"""A randomized staleness checker for the consistency guarantee (docs/consistency.md).

Worker processes run threads that call GetItem, BatchGetItem, PutItem,
UpdateItem, DeleteItem and PartiQL writes on a few hot keys through
registered boto3 clients (moto over HTTP, a real Redis). Handlers registered
*before* the library's inject random delays between DynamoDB's answer and the
fill (reads) or the invalidation (writes), and make some writes fail after
DynamoDB applied them. Every operation is recorded with its invocation and
completion time (``time.monotonic_ns``, one clock for all processes on Linux).

:func:`find_stale` then checks the guarantee: no read that began after a
write completed returns a value older than that write.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

TABLE = "hot"
DELETED = None  # the value a read of an absent item returns


@dataclass(frozen=True)
class Record:
    kind: str  # "read" or "write"
    key: str
    value: str | None  # written / read value; None for a delete / an absent item
    invoked: int
    completed: int
    source: str  # operation name, for reports
    #: False when the outcome is uncertain. A write that may not have changed
    #: anything (a PartiQL UPDATE of an item that a concurrent delete removed does
    #: nothing: DynamoDB rejects it, moto ignores it) can be the source of a read but
    #: never proves a read stale. A read whose version is uncertain is never judged.
    certain: bool = True


@dataclass(frozen=True)
class Config:
    moto_url: str
    redis_url: str
    namespace: str
    keys: tuple[str, ...]
    seconds: float
    threads: int
    seed: int
    naive: bool = False
    fail_rate: float = 0.05
    max_delay_ms: float = 15.0
    #: Query/Scan workload (run_page_worker) only: the mode under test.
    query_invalidation: str = "partition"
    #: Share of GetItem / BatchGetItem reads made inside ddbcache_hooks.refresh().
    refresh: float = 0.0


#: A fill that ignores leases: what the checker must catch.
NAIVE_FILL_SOURCE = """
local key, f = KEYS[1], ARGV[1]
if ARGV[3] == '' then return {2, 0} end
local now = now_ms()
redis.call('HSET', key, 'e:'..f, ARGV[3], 'x:'..f, now + tonumber(ARGV[4]))
keep_until(key, now + tonumber(ARGV[4]), now)
return {1, tonumber(ARGV[4])}
"""


def run_worker(config: Config, worker: int) -> list[Record]:
    """One process of the workload (module-level, so it can be spawned)."""
    import boto3
    from botocore.exceptions import ClientError, ReadTimeoutError

    import ddbcache_hooks
    from ddbcache_hooks import scripts, store

    if config.naive:
        store.FILL_IF_LEASED = scripts._script("naive_fill", NAIVE_FILL_SOURCE)
    rng = random.Random(config.seed * 1000 + worker)
    rng_lock = threading.Lock()

    def chance(p: float) -> bool:
        with rng_lock:
            return rng.random() < p

    def delay(**_: Any) -> None:
        with rng_lock:
            pause = rng.random() * config.max_delay_ms / 1000
        time.sleep(pause)

    def maybe_fail(**_: Any) -> None:
        if chance(config.fail_rate):
            raise ReadTimeoutError(endpoint_url=config.moto_url)  # applied, answer lost

    session = boto3.Session(region_name="us-east-1")
    writes = ("PutItem", "UpdateItem", "DeleteItem", "ExecuteStatement")
    for op in ("GetItem", "BatchGetItem", *writes):
        session.events.register(f"after-call.dynamodb.{op}", delay)
    for op in writes:
        session.events.register_first(f"needs-retry.dynamodb.{op}", maybe_fail)
    ddbcache_hooks.register(
        session,
        config.redis_url,
        namespace=config.namespace,
        key_schema={TABLE: "pk"},
        redis_timeout_ms=2000,
        lease_wait_ms=100,
    )
    records: list[Record] = []
    records_lock = threading.Lock()
    deadline = time.monotonic() + config.seconds

    def thread_main(index: int) -> None:
        client = session.client("dynamodb", endpoint_url=config.moto_url)
        local_rng = random.Random(config.seed * 1_000_000 + worker * 1000 + index)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            key = local_rng.choice(config.keys)
            value = f"{worker}-{index}-{n}"
            roll = local_rng.random()
            out: list[Record] = []
            refreshing = local_rng.random() < config.refresh
            how = " refresh" if refreshing else ""
            started = time.monotonic_ns()
            try:
                if roll < 0.35:
                    with ddbcache_hooks.refresh() if refreshing else contextlib.nullcontext():
                        response = client.get_item(TableName=TABLE, Key={"pk": {"S": key}})
                    out.append(_read(key, response.get("Item"), started, "GetItem" + how))
                elif roll < 0.50:
                    keys = local_rng.sample(config.keys, k=min(2, len(config.keys)))
                    with ddbcache_hooks.refresh() if refreshing else contextlib.nullcontext():
                        response = client.batch_get_item(
                            RequestItems={TABLE: {"Keys": [{"pk": {"S": k}} for k in keys]}}
                        )
                    if response.get("UnprocessedKeys"):
                        continue
                    found = {i["pk"]["S"]: i for i in response["Responses"].get(TABLE, [])}
                    out.extend(_read(k, found.get(k), started, "BatchGetItem" + how) for k in keys)
                elif roll < 0.65:
                    op = "PutItem"
                    client.put_item(TableName=TABLE, Item={"pk": {"S": key}, "v": {"S": value}})
                    out.append(_write(key, value, started, op))
                elif roll < 0.80:
                    op = "UpdateItem"
                    client.update_item(
                        TableName=TABLE,
                        Key={"pk": {"S": key}},
                        UpdateExpression="SET v = :v",
                        ExpressionAttributeValues={":v": {"S": value}},
                    )
                    out.append(_write(key, value, started, op))
                elif roll < 0.88:
                    op = "DeleteItem"
                    client.delete_item(TableName=TABLE, Key={"pk": {"S": key}})
                    out.append(_write(key, DELETED, started, op))
                elif roll < 0.96:
                    op = "ExecuteStatement UPDATE"
                    client.execute_statement(
                        Statement=f'UPDATE "{TABLE}" SET v = ? WHERE pk = ?',
                        Parameters=[{"S": value}, {"S": key}],
                    )
                    out.append(_write(key, value, started, op, certain=False))
                else:
                    op = "ExecuteStatement DELETE"
                    client.execute_statement(Statement=f"DELETE FROM {TABLE} WHERE pk = '{key}'")
                    out.append(_write(key, DELETED, started, op))
            except ReadTimeoutError:
                # Injected after DynamoDB applied the write: it happened, and it ended now.
                if roll >= 0.50:
                    applied = DELETED if op.endswith(("DeleteItem", "DELETE")) else value
                    out.append(
                        _write(key, applied, started, op, certain=op != "ExecuteStatement UPDATE")
                    )
            except ClientError:
                continue  # rejected by DynamoDB: nothing was written
            with records_lock:
                records.extend(out)

    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(config.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


#: A write-through completion that ignores intents: the item's invalidation, then
#: the image stored whatever happened meanwhile (what the intent-aware checker must catch).
NAIVE_WRITE_THROUGH_SOURCE = """
local key = KEYS[1]
redis.call('DEL', key)
if ARGV[6] == '' then return {7, 0} end
local now = now_ms()
local ttl = tonumber(ARGV[7])
redis.call('HSET', key, 'c', now, 'g', server_id() .. '/' .. ARGV[5],
  'e:' .. ARGV[9], ARGV[6], 'x:' .. ARGV[9], now + ttl)
redis.call('PEXPIRE', key, ttl)
return {1, ttl}
"""

#: Source of the reads that bypass the cache: what DynamoDB holds at that moment.
CONSISTENT = "GetItem consistent"


def run_write_through_worker(config: Config, worker: int) -> list[Record]:
    """One process of the write-through workload (module-level, so it can be spawned).

    Many writers (PutItem, DeleteItem: moto's UpdateItem is not atomic under
    concurrency) on few hot keys, cached GetItems, and strongly consistent
    GetItems that record what DynamoDB holds. Random delays are injected
    between before-call and the send, and between DynamoDB's answer and the
    library's after-call; some writes lose their answer after being applied.
    ``config.naive`` swaps the completion script for one without intents.
    """
    import boto3
    from botocore.exceptions import ClientError, ReadTimeoutError

    import ddbcache_hooks
    from ddbcache_hooks import scripts, writethrough

    if config.naive:
        writethrough.WRITE_THROUGH = scripts._script(
            "naive_write_through", NAIVE_WRITE_THROUGH_SOURCE
        )
    rng = random.Random(config.seed * 1000 + worker)
    rng_lock = threading.Lock()

    def delay(**_: Any) -> None:
        with rng_lock:
            pause = rng.random() * config.max_delay_ms / 1000
        time.sleep(pause)

    def maybe_fail(**_: Any) -> None:
        with rng_lock:
            fail = rng.random() < config.fail_rate
        if fail:
            raise ReadTimeoutError(endpoint_url=config.moto_url)  # applied, answer lost

    def long_delay(**_: Any) -> None:
        with rng_lock:
            pause = rng.random() * 3 * config.max_delay_ms / 1000
        time.sleep(pause)

    session = boto3.Session(region_name="us-east-1")
    writes = ("PutItem", "DeleteItem")
    session.events.register("after-call.dynamodb.GetItem", delay)
    for op in writes:
        # Long and uneven: two writes' completions often arrive out of DynamoDB's order.
        session.events.register(f"after-call.dynamodb.{op}", long_delay)
        session.events.register(f"before-send.dynamodb.{op}", delay)
        session.events.register_first(f"needs-retry.dynamodb.{op}", maybe_fail)
    ddbcache_hooks.register(
        session,
        config.redis_url,
        namespace=config.namespace,
        key_schema={TABLE: "pk"},
        redis_timeout_ms=2000,
        lease_wait_ms=100,
        write_through=True,
    )
    records: list[Record] = []
    records_lock = threading.Lock()
    deadline = time.monotonic() + config.seconds

    def thread_main(index: int) -> None:
        client = session.client("dynamodb", endpoint_url=config.moto_url)
        local_rng = random.Random(config.seed * 1_000_000 + worker * 1000 + index)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            key = local_rng.choice(config.keys)
            value = f"{worker}-{index}-{n}"
            roll = local_rng.random()
            out: list[Record] = []
            started = time.monotonic_ns()
            op = ""
            try:
                if roll < 0.35:
                    response = client.get_item(TableName=TABLE, Key={"pk": {"S": key}})
                    source = "GetItem hit" if "CacheMetadata" in response else "GetItem"
                    out.append(_read(key, response.get("Item"), started, source))
                elif roll < 0.55:
                    response = client.get_item(
                        TableName=TABLE, Key={"pk": {"S": key}}, ConsistentRead=True
                    )
                    out.append(_read(key, response.get("Item"), started, CONSISTENT))
                elif roll < 0.90:
                    op = "PutItem"
                    client.put_item(TableName=TABLE, Item={"pk": {"S": key}, "v": {"S": value}})
                    out.append(_write(key, value, started, op))
                else:
                    op = "DeleteItem"
                    client.delete_item(TableName=TABLE, Key={"pk": {"S": key}})
                    out.append(_write(key, DELETED, started, op))
            except ReadTimeoutError:
                if op:  # applied, and it ended now
                    out.append(_write(key, DELETED if op == "DeleteItem" else value, started, op))
            except ClientError:
                continue
            with records_lock:
                records.extend(out)

    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(config.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def find_reordered(records: Iterable[Record], initial: dict[str, str]) -> list[Stale]:
    """Reads that returned a value DynamoDB had provably replaced by a returned write.

    :func:`find_stale` orders only writes that do not overlap; two overlapping
    writes stored in the opposite order from the order DynamoDB applied them
    escape it. Strongly consistent reads (:data:`CONSISTENT`) say what DynamoDB
    held: a read R is stale when a consistent read C completed before R began,
    C returned another value than R, every write R's value may come from
    completed before C began (so DynamoDB had replaced it when C read), and
    every write C's value may come from completed before R began (the write
    that replaced it had returned). The returned ``newer`` is C's source.
    """
    writes: dict[str, list[Record]] = defaultdict(list)
    reads: list[Record] = []
    for record in records:
        (writes[record.key] if record.kind == "write" else reads).append(record)
    for key, value in initial.items():
        writes[key].append(Record("write", key, value, 0, 0, "initial"))
    anchors: dict[str, list[Record]] = defaultdict(list)
    for read in reads:
        if read.source == CONSISTENT:
            anchors[read.key].append(read)
    stale = []
    for read in reads:
        sources = [w for w in writes[read.key] if w.value == read.value]
        if not sources:
            raise AssertionError(f"read of a value nobody wrote: {read}")
        for anchor in anchors[read.key]:
            if anchor.completed >= read.invoked or anchor.value == read.value:
                continue
            if not all(s.completed < anchor.invoked for s in sources):
                continue
            replacing = [w for w in writes[read.key] if w.value == anchor.value]
            if replacing and all(w.completed < read.invoked for w in replacing):
                stale.append(Stale(read, replacing[0]))
                break
    return stale


#: The Query/Scan workload's table: partitions "a" and "b", sort keys "1" and "2",
#: an LSI (same partition key) and a GSI whose one partition holds every item.
PAGE_TABLE = "hotq"
PARTITIONS = ("a", "b")
SORT_KEYS = ("1", "2")


def page_keys(partition: str | None = None) -> list[str]:
    """Record keys ("a#1") of one partition's items, or of all items."""
    return [f"{p}#{s}" for p in PARTITIONS if partition in (None, p) for s in SORT_KEYS]


def run_page_worker(config: Config, worker: int) -> list[Record]:
    """One process of the Query/Scan workload (module-level, so it can be spawned).

    Pages are recorded as one read per item the page could hold (absent ones
    as DELETED), all with the page's source, invocation and completion, so
    :func:`find_stale` judges every item a page shows. The source ends with
    " hit" when the page came from the cache.
    """
    import boto3
    from botocore.exceptions import ClientError, ReadTimeoutError

    import ddbcache_hooks

    rng = random.Random(config.seed * 1000 + worker)
    rng_lock = threading.Lock()

    def delay(**_: Any) -> None:
        with rng_lock:
            pause = rng.random() * config.max_delay_ms / 1000
        time.sleep(pause)

    def maybe_fail(**_: Any) -> None:
        with rng_lock:
            fail = rng.random() < config.fail_rate
        if fail:
            raise ReadTimeoutError(endpoint_url=config.moto_url)  # applied, answer lost

    session = boto3.Session(region_name="us-east-1")
    writes = ("PutItem", "UpdateItem", "DeleteItem", "ExecuteStatement")
    for op in ("Query", "Scan", *writes):
        session.events.register(f"after-call.dynamodb.{op}", delay)
    for op in writes:
        session.events.register_first(f"needs-retry.dynamodb.{op}", maybe_fail)
    ddbcache_hooks.register(
        session,
        config.redis_url,
        namespace=config.namespace,
        query_invalidation=config.query_invalidation,
        scan_admission=1,
        redis_timeout_ms=2000,
        lease_wait_ms=100,
    )
    records: list[Record] = []
    records_lock = threading.Lock()
    deadline = time.monotonic() + config.seconds
    base = {"TableName": PAGE_TABLE, "KeyConditionExpression": "pk = :p"}
    gsi = {
        "TableName": PAGE_TABLE,
        "IndexName": "by_g",
        "KeyConditionExpression": "g = :g",
        "ExpressionAttributeValues": {":g": {"S": "G"}},
    }

    def page(response: dict[str, Any], keys: list[str], started: int, source: str) -> list[Record]:
        found = {f"{i['pk']['S']}#{i['sk']['S']}": i for i in response["Items"]}
        if "CacheMetadata" in response:
            source += " hit"
        return [_read(key, found.get(key), started, source) for key in keys]

    def thread_main(index: int) -> None:
        client = session.client("dynamodb", endpoint_url=config.moto_url)
        local_rng = random.Random(config.seed * 1_000_000 + worker * 1000 + index)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            partition = local_rng.choice(PARTITIONS)
            sort = local_rng.choice(SORT_KEYS)
            key = f"{partition}#{sort}"
            item_key = {"pk": {"S": partition}, "sk": {"S": sort}}
            value = f"{worker}-{index}-{n}"
            roll = local_rng.random()
            out: list[Record] = []
            started = time.monotonic_ns()
            op = ""
            try:
                if roll < 0.22:
                    values = {":p": {"S": partition}}
                    response = client.query(**base, ExpressionAttributeValues=values)
                    out = page(response, page_keys(partition), started, "Query base")
                elif roll < 0.40:
                    values = {":p": {"S": partition}}
                    response = client.query(
                        **base, IndexName="by_l", ExpressionAttributeValues=values
                    )
                    out = page(response, page_keys(partition), started, "Query LSI")
                elif roll < 0.52:
                    out = page(client.query(**gsi), page_keys(), started, "Query GSI")
                elif roll < 0.64:
                    out = page(client.scan(TableName=PAGE_TABLE), page_keys(), started, "Scan")
                elif roll < 0.76:
                    op = "PutItem"
                    item = {**item_key, "v": {"S": value}, "l": {"S": "x"}, "g": {"S": "G"}}
                    client.put_item(TableName=PAGE_TABLE, Item=item)
                    out.append(_write(key, value, started, op))
                elif roll < 0.88:
                    op = "UpdateItem"
                    client.update_item(
                        TableName=PAGE_TABLE,
                        Key=item_key,
                        UpdateExpression="SET v = :v, l = :l, g = :g",
                        ExpressionAttributeValues={
                            ":v": {"S": value},
                            ":l": {"S": "x"},
                            ":g": {"S": "G"},
                        },
                    )
                    out.append(_write(key, value, started, op))
                elif roll < 0.94:
                    op = "DeleteItem"
                    client.delete_item(TableName=PAGE_TABLE, Key=item_key)
                    out.append(_write(key, DELETED, started, op))
                else:
                    # A DELETE, not an UPDATE: its outcome is certain whether or not
                    # the item exists, so every write here can prove a page stale.
                    op = "ExecuteStatement DELETE"
                    where = f"pk = '{partition}' AND sk = '{sort}'"
                    client.execute_statement(Statement=f'DELETE FROM "{PAGE_TABLE}" WHERE {where}')
                    out.append(_write(key, DELETED, started, op))
            except ReadTimeoutError:
                # Injected after DynamoDB applied the write: it happened, and it ended now.
                applied = DELETED if op.endswith(("DeleteItem", "DELETE")) else value
                out.append(_write(key, applied, started, op))
            except ClientError:
                continue  # rejected by DynamoDB: nothing was written
            with records_lock:
                records.extend(out)

    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(config.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def stale_pages(stale: Iterable[Stale]) -> int:
    """How many pages showed at least one stale item."""
    return len({(s.read.source, s.read.invoked, s.read.completed) for s in stale})


def _read(key: str, item: dict[str, Any] | None, started: int, source: str) -> Record:
    value = item["v"]["S"] if item and "v" in item else DELETED
    return Record("read", key, value, started, time.monotonic_ns(), source)


def _write(key: str, value: str | None, started: int, source: str, certain: bool = True) -> Record:
    return Record("write", key, value, started, time.monotonic_ns(), source, certain)


@dataclass(frozen=True)
class Stale:
    read: Record
    newer: Record  # a write that completed before the read began, after the read's source


def find_stale(records: Iterable[Record], initial: dict[str, str]) -> list[Stale]:
    """Reads that returned a value some completed write had already replaced.

    A write S "is older than" W when S completed before W was invoked; writes
    that overlap are unordered. A read R returning S's value is stale when some
    W newer than S completed before R was invoked. An absent item may come from
    any delete: the read is stale only if every delete it could come from is.
    Only certain records count: an uncertain write never proves a read stale (it
    may still be the value a read returned), and an uncertain read is not judged.
    """
    writes: dict[str, list[Record]] = defaultdict(list)
    reads: list[Record] = []
    for record in records:
        (writes[record.key] if record.kind == "write" else reads).append(record)
    for key, value in initial.items():
        writes[key].append(Record("write", key, value, 0, 0, "initial"))
    stale = []
    for read in reads:
        if not read.certain:
            continue
        candidates = [w for w in writes[read.key] if w.value == read.value]
        if not candidates:
            raise AssertionError(f"read of a value nobody wrote: {read}")
        newer_by_candidate = [_superseded_by(c, writes[read.key], read) for c in candidates]
        if all(newer is not None for newer in newer_by_candidate):
            newer = newer_by_candidate[0]
            assert newer is not None
            stale.append(Stale(read, newer))
    return stale


def _superseded_by(source: Record, writes: list[Record], read: Record) -> Record | None:
    for write in writes:
        if (
            write is not source
            and write.certain
            and source.completed < write.invoked
            and write.completed < read.invoked
        ):
            return write
    return None


def workload_size() -> tuple[float, int, int]:
    """(seconds, processes, threads): moderate by default, larger with DDBCACHE_CHECKER_SCALE."""
    scale = float(os.environ.get("DDBCACHE_CHECKER_SCALE", "1"))
    return 3.0 * scale, max(2, int(2 * scale**0.5)), 4


# --- writes made outside registered clients (DynamoDB Streams) -----------------------


def run_unregistered_writes_worker(config: Config, worker: int) -> list[Record]:
    """Stream mode: registered clients read, plain unregistered clients write.

    Only a stream consumer (running elsewhere) tells the cache about these writes;
    :func:`staleness_windows` measures how long reads stayed stale.
    """
    import boto3

    import ddbcache_hooks

    readers = boto3.Session(region_name="us-east-1")
    ddbcache_hooks.register(
        readers,
        config.redis_url,
        namespace=config.namespace,
        key_schema={TABLE: "pk"},
        redis_timeout_ms=2000,
        settle_ms=0,
    )
    writers = boto3.Session(region_name="us-east-1")
    records: list[Record] = []
    lock = threading.Lock()
    deadline = time.monotonic() + config.seconds

    def thread_main(index: int) -> None:
        reader = readers.client("dynamodb", endpoint_url=config.moto_url)
        writer = writers.client("dynamodb", endpoint_url=config.moto_url)
        rng = random.Random(config.seed * 1_000_000 + worker * 1000 + index)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            key = rng.choice(config.keys)
            value = f"{worker}-{index}-{n}"
            roll = rng.random()
            started = time.monotonic_ns()
            if roll < 0.8:
                response = reader.get_item(TableName=TABLE, Key={"pk": {"S": key}})
                out = _read(key, response.get("Item"), started, "GetItem")
            elif roll < 0.9:
                writer.put_item(TableName=TABLE, Item={"pk": {"S": key}, "v": {"S": value}})
                out = _write(key, value, started, "PutItem (unregistered)")
            elif roll < 0.97:
                writer.update_item(
                    TableName=TABLE,
                    Key={"pk": {"S": key}},
                    UpdateExpression="SET v = :v",
                    ExpressionAttributeValues={":v": {"S": value}},
                )
                out = _write(key, value, started, "UpdateItem (unregistered)")
            else:
                writer.delete_item(TableName=TABLE, Key={"pk": {"S": key}})
                out = _write(key, DELETED, started, "DeleteItem (unregistered)")
            with lock:
                records.append(out)
            time.sleep(0.002)

    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(config.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def staleness_windows(records: Iterable[Record], initial: dict[str, str]) -> list[int]:
    """For every stale read, how long (ns) its value had been replaced when the read began.

    A read's window is the smallest, over the writes it may come from, of the time
    between the completion of the first write that replaced that source and the
    read's start. Writes that may not have changed anything never replace a value.
    """
    writes: dict[str, list[Record]] = defaultdict(list)
    reads: list[Record] = []
    for record in records:
        (writes[record.key] if record.kind == "write" else reads).append(record)
    for key, value in initial.items():
        writes[key].append(Record("write", key, value, 0, 0, "initial"))
    windows = []
    for read in reads:
        candidates = [w for w in writes[read.key] if w.value == read.value]
        if not candidates:
            raise AssertionError(f"read of a value nobody wrote: {read}")
        window = None
        for source in candidates:
            replaced = [
                w.completed
                for w in writes[read.key]
                if w is not source and w.certain and source.completed < w.invoked
            ]
            since = read.invoked - min(replaced) if replaced else 0
            window = since if window is None else min(window, since)
        if window and window > 0:
            windows.append(window)
    return windows
