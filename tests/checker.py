"""A randomized staleness checker for the consistency guarantee (docs/consistency.md).

Worker processes run threads that call GetItem, BatchGetItem, PutItem,
UpdateItem, DeleteItem and PartiQL writes on a few hot keys through
registered boto3 clients (moto over HTTP, a real Redis or Valkey, one node or
a cluster); the async workers run the same calls as tasks of aioboto3 clients
registered with ``register_async``. Handlers registered *before* the
library's inject random delays between DynamoDB's answer and the fill (reads)
or the invalidation (writes), and make some writes fail after DynamoDB
applied them. Every operation is recorded with its invocation and completion
time (``time.monotonic_ns``, one clock for all processes on Linux).

:func:`find_stale` then checks the guarantee: no read that began after a
write completed returns a value older than that write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable
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
    #: ``cluster_buckets`` of the registrations (a cluster's one-node hits).
    cluster_buckets: int = 0


#: A fill that ignores leases: what the checker must catch.
NAIVE_FILL_SOURCE = """
local key, f = KEYS[1], ARGV[1]
if ARGV[3] == '' then return {2, 0} end
local now = now_ms()
redis.call('HSET', key, 'e:'..f, ARGV[3], 'x:'..f, now + tonumber(ARGV[4]))
keep_until(key, now + tonumber(ARGV[4]), now)
return {1, tonumber(ARGV[4])}
"""


# --- the machinery every workload shares ----------------------------------------------
#
# A workload is a step (the next call, drawn from a thread's random generator), the
# faults injected around its calls and the registration options. One loop
# (:func:`_loop`) makes and records the calls; threads of boto3 clients
# (:func:`_run_threads`) or tasks of aioboto3 clients (:func:`_run_tasks`) drive it.


@dataclass(frozen=True)
class Call:
    """One operation of a workload: a DynamoDB client method, its arguments, its records."""

    method: str
    kwargs: dict[str, Any]
    #: The records of the call, from its response and its invocation time. A write's
    #: ignore the response: they are also what a write whose answer was lost records.
    record: Callable[[dict[str, Any], int], list[Record]]
    #: A write: when its answer is lost after DynamoDB applied it (the injected
    #: ReadTimeoutError), it happened all the same, and it ended then.
    write: bool = False
    #: Made inside ddbcache_hooks.refresh().
    refresh: bool = False


#: The next call of a workload, from the thread's generator and a value no other call writes.
Step = Callable[[random.Random, str], Call]


@dataclass(frozen=True)
class Workload:
    step: Step
    #: Events that get a random delay (up to ``max_delay_ms`` times the scale).
    delays: dict[str, float]
    #: Events whose handler loses DynamoDB's answer now and then (``fail_rate``).
    failures: tuple[str, ...]
    #: For ddbcache_hooks.register() / register_async().
    options: dict[str, Any]


@dataclass(frozen=True)
class Part:
    """What one worker process returns."""

    records: list[Record]
    #: Lookups that the read-only hit script (scripts.READ_HITS) answered as hits in
    #: this process: reads the hit path served, not the lookup script.
    read_hits: int


class _Faults:
    """The faults of one worker process: random delays and lost answers.

    Registered on a session before the library registers, so that its handlers run
    before the library's: a delay after DynamoDB's answer comes before the fill or
    the invalidation, and a lost answer is lost before the library sees it.
    """

    def __init__(self, config: Config, worker: int) -> None:
        self.config = config
        self.rng = random.Random(config.seed * 1000 + worker)
        self.lock = threading.Lock()

    def pause(self, scale: float) -> float:
        with self.lock:
            return self.rng.random() * scale * self.config.max_delay_ms / 1000

    def lose_answer(self, **_: Any) -> None:
        from botocore.exceptions import ReadTimeoutError

        with self.lock:
            fail = self.rng.random() < self.config.fail_rate
        if fail:
            raise ReadTimeoutError(endpoint_url=self.config.moto_url)  # applied, answer lost

    def install(self, events: Any, workload: Workload, *, asynchronous: bool = False) -> None:
        for event, scale in workload.delays.items():
            events.register(event, self._sleeper(scale, asynchronous))
        for event in workload.failures:
            events.register_first(event, self.lose_answer)

    def _sleeper(self, scale: float, asynchronous: bool) -> Callable[..., Any]:
        if asynchronous:  # the event loop goes on meanwhile, as the threads do

            async def sleep_in_task(**_: Any) -> None:
                await asyncio.sleep(self.pause(scale))

            return sleep_in_task

        def sleep_in_thread(**_: Any) -> None:
            time.sleep(self.pause(scale))

        return sleep_in_thread


def _loop(
    config: Config,
    worker: int,
    index: int,
    deadline: float,
    step: Step,
    records: list[Record],
    lock: threading.Lock,
) -> Generator[Call, Any, None]:
    """The calls of one thread (or task) until the deadline, and their records.

    Yields each call and is sent what it returned, or the ClientError or
    ReadTimeoutError it raised (:func:`_drive`, :func:`_drive_async`).
    """
    from botocore.exceptions import ClientError, ReadTimeoutError

    rng = random.Random(config.seed * 1_000_000 + worker * 1000 + index)
    n = 0
    while time.monotonic() < deadline:
        n += 1
        call = step(rng, f"{worker}-{index}-{n}")
        started = time.monotonic_ns()
        outcome = yield call
        if isinstance(outcome, ReadTimeoutError):
            if not call.write:
                continue
            # Injected after DynamoDB applied the write: it happened, and it ended now.
            out = call.record({}, started)
        elif isinstance(outcome, ClientError):
            continue  # rejected by DynamoDB: nothing was written
        else:
            out = call.record(outcome, started)
        with lock:
            records.extend(out)


def _drive(loop: Generator[Call, Any, None], client: Any) -> None:
    """Make a loop's calls with a boto3 client."""
    from botocore.exceptions import ClientError, ReadTimeoutError

    import ddbcache_hooks

    with contextlib.suppress(StopIteration):
        call = next(loop)
        while True:
            try:
                with ddbcache_hooks.refresh() if call.refresh else contextlib.nullcontext():
                    outcome = getattr(client, call.method)(**call.kwargs)
            except (ClientError, ReadTimeoutError) as exc:
                outcome = exc
            call = loop.send(outcome)


async def _drive_async(loop: Generator[Call, Any, None], client: Any) -> None:
    """Make a loop's calls with an aiobotocore client."""
    from botocore.exceptions import ClientError, ReadTimeoutError

    import ddbcache_hooks

    with contextlib.suppress(StopIteration):
        call = next(loop)
        while True:
            try:
                with ddbcache_hooks.refresh() if call.refresh else contextlib.nullcontext():
                    outcome = await getattr(client, call.method)(**call.kwargs)
            except (ClientError, ReadTimeoutError) as exc:
                outcome = exc
            call = loop.send(outcome)


def _count_read_hits() -> Callable[[], int]:
    """Count the lookups that scripts.READ_HITS answers as hits in this process."""
    from ddbcache_hooks import store

    original = store.read_hits
    lock = threading.Lock()
    counted = [0]

    def read_hits(requests: Any, *args: Any) -> Generator[Any, Any, Any]:
        replies = yield from original(requests, *args)
        with lock:
            counted[0] += sum(reply is not None for reply in replies)
        return replies

    store.read_hits = read_hits
    return lambda: counted[0]


def _run_threads(config: Config, worker: int, workload: Workload) -> Part:
    """One process of a workload through boto3 clients, one per thread."""
    import boto3

    import ddbcache_hooks

    read_hits = _count_read_hits()
    session = boto3.Session(region_name="us-east-1")
    _Faults(config, worker).install(session.events, workload)
    ddbcache_hooks.register(session, config.redis_url, **workload.options)
    records: list[Record] = []
    lock = threading.Lock()
    deadline = time.monotonic() + config.seconds

    def thread_main(index: int) -> None:
        client = session.client("dynamodb", endpoint_url=config.moto_url)
        _drive(_loop(config, worker, index, deadline, workload.step, records, lock), client)

    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(config.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Part(records, read_hits())


def _run_tasks(config: Config, worker: int, workload: Workload) -> Part:
    """One process of a workload through aioboto3 clients, one per task of one event loop."""

    async def main() -> Part:
        import aioboto3

        import ddbcache_hooks

        read_hits = _count_read_hits()
        session = aioboto3.Session(region_name="us-east-1")
        _Faults(config, worker).install(session.events, workload, asynchronous=True)
        registration = await ddbcache_hooks.register_async(
            session, config.redis_url, **workload.options
        )
        records: list[Record] = []
        lock = threading.Lock()
        deadline = time.monotonic() + config.seconds

        async def task_main(index: int) -> None:
            async with session.client("dynamodb", endpoint_url=config.moto_url) as client:
                loop = _loop(config, worker, index, deadline, workload.step, records, lock)
                await _drive_async(loop, client)

        try:
            await asyncio.gather(*(task_main(i) for i in range(config.threads)))
        finally:
            await registration.aclose()
        return Part(records, read_hits())

    return asyncio.run(main())


def _hit(response: dict[str, Any]) -> str:
    """How the cache answered, for a read's source: " hit", " partial hit" (a batch) or ""."""
    metadata = response.get("CacheMetadata")
    if metadata is None:
        return ""
    if "CacheHitCount" not in metadata:
        return " hit"
    if not metadata["CacheHitCount"]:
        return ""
    return " partial hit" if metadata["CacheMissCount"] else " hit"


def _write_call(
    key: str, applied: str | None, source: str, method: str, certain: bool = True, **kwargs: Any
) -> Call:
    def record(_: dict[str, Any], started: int) -> list[Record]:
        return [_write(key, applied, started, source, certain)]

    return Call(method, kwargs, record, write=True)


# --- items: GetItem, BatchGetItem and writes on a few hot keys -----------------------


def run_worker(config: Config, worker: int) -> Part:
    """One process of the item workload (module-level, so it can be spawned)."""
    _naive_fills(config)
    return _run_threads(config, worker, _item_workload(config))


def run_async_worker(config: Config, worker: int) -> Part:
    """One process of the item workload through aioboto3 clients (``register_async``)."""
    _naive_fills(config)
    return _run_tasks(config, worker, _item_workload(config))


def _naive_fills(config: Config) -> None:
    from ddbcache_hooks import scripts, store

    if config.naive:
        store.FILL_IF_LEASED = scripts._script("naive_fill", NAIVE_FILL_SOURCE)


ITEM_WRITES = ("PutItem", "UpdateItem", "DeleteItem", "ExecuteStatement")


def _options(config: Config, **extra: Any) -> dict[str, Any]:
    """What every workload registers with (a worker's options), plus its own."""
    return {
        "namespace": config.namespace,
        "cluster_buckets": config.cluster_buckets,
        "redis_timeout_ms": 2000,
        "lease_wait_ms": 100,
        **extra,
    }


def _item_workload(config: Config) -> Workload:
    return Workload(
        functools.partial(_item_step, config),
        delays={
            f"after-call.dynamodb.{op}": 1.0 for op in ("GetItem", "BatchGetItem", *ITEM_WRITES)
        },
        failures=tuple(f"needs-retry.dynamodb.{op}" for op in ITEM_WRITES),
        options=_options(config, key_schema={TABLE: "pk"}),
    )


def _item_step(config: Config, rng: random.Random, value: str) -> Call:
    key = rng.choice(config.keys)
    roll = rng.random()
    refresh = rng.random() < config.refresh
    how = " refresh" if refresh else ""
    item_key = {"pk": {"S": key}}
    if roll < 0.35:

        def got(response: dict[str, Any], started: int) -> list[Record]:
            item = response.get("Item")
            return [_read(key, item, started, "GetItem" + how + _hit(response))]

        return Call("get_item", {"TableName": TABLE, "Key": item_key}, got, refresh=refresh)
    if roll < 0.50:
        keys = rng.sample(config.keys, k=min(2, len(config.keys)))

        def batch(response: dict[str, Any], started: int) -> list[Record]:
            if response.get("UnprocessedKeys"):
                return []
            found = {i["pk"]["S"]: i for i in response["Responses"].get(TABLE, [])}
            source = "BatchGetItem" + how + _hit(response)
            return [_read(k, found.get(k), started, source) for k in keys]

        request = {TABLE: {"Keys": [{"pk": {"S": k}} for k in keys]}}
        return Call("batch_get_item", {"RequestItems": request}, batch, refresh=refresh)
    if roll < 0.65:
        item = {**item_key, "v": {"S": value}}
        return _write_call(key, value, "PutItem", "put_item", TableName=TABLE, Item=item)
    if roll < 0.80:
        return _write_call(
            key,
            value,
            "UpdateItem",
            "update_item",
            TableName=TABLE,
            Key=item_key,
            UpdateExpression="SET v = :v",
            ExpressionAttributeValues={":v": {"S": value}},
        )
    if roll < 0.88:
        return _write_call(key, DELETED, "DeleteItem", "delete_item", TableName=TABLE, Key=item_key)
    if roll < 0.96:
        # Uncertain: an UPDATE of an item a concurrent delete removed does nothing.
        return _write_call(
            key,
            value,
            "ExecuteStatement UPDATE",
            "execute_statement",
            certain=False,
            Statement=f'UPDATE "{TABLE}" SET v = ? WHERE pk = ?',
            Parameters=[{"S": value}, {"S": key}],
        )
    return _write_call(
        key,
        DELETED,
        "ExecuteStatement DELETE",
        "execute_statement",
        Statement=f"DELETE FROM {TABLE} WHERE pk = '{key}'",
    )


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


def run_write_through_worker(config: Config, worker: int) -> Part:
    """One process of the write-through workload (module-level, so it can be spawned).

    Many writers (PutItem, DeleteItem: moto's UpdateItem is not atomic under
    concurrency) on few hot keys, cached GetItems, and strongly consistent
    GetItems that record what DynamoDB holds. Random delays are injected
    between before-call and the send, and between DynamoDB's answer and the
    library's after-call; some writes lose their answer after being applied.
    ``config.naive`` swaps the completion script for one without intents.
    """
    from ddbcache_hooks import scripts, writethrough

    if config.naive:
        writethrough.WRITE_THROUGH = scripts._script(
            "naive_write_through", NAIVE_WRITE_THROUGH_SOURCE
        )
    writes = ("PutItem", "DeleteItem")
    delays = {"after-call.dynamodb.GetItem": 1.0}
    for op in writes:
        # Long and uneven: two writes' completions often arrive out of DynamoDB's order.
        delays[f"after-call.dynamodb.{op}"] = 3.0
        delays[f"before-send.dynamodb.{op}"] = 1.0
    workload = Workload(
        functools.partial(_write_through_step, config),
        delays,
        failures=tuple(f"needs-retry.dynamodb.{op}" for op in writes),
        options=_options(config, key_schema={TABLE: "pk"}, write_through=True),
    )
    return _run_threads(config, worker, workload)


def _write_through_step(config: Config, rng: random.Random, value: str) -> Call:
    key = rng.choice(config.keys)
    roll = rng.random()
    item_key = {"pk": {"S": key}}
    if roll < 0.55:
        consistent = roll >= 0.35

        def got(response: dict[str, Any], started: int) -> list[Record]:
            source = CONSISTENT if consistent else "GetItem" + _hit(response)
            return [_read(key, response.get("Item"), started, source)]

        request = {"TableName": TABLE, "Key": item_key}
        return Call("get_item", {**request, "ConsistentRead": True} if consistent else request, got)
    if roll < 0.90:
        item = {**item_key, "v": {"S": value}}
        return _write_call(key, value, "PutItem", "put_item", TableName=TABLE, Item=item)
    return _write_call(key, DELETED, "DeleteItem", "delete_item", TableName=TABLE, Key=item_key)


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


def run_page_worker(config: Config, worker: int) -> Part:
    """One process of the Query/Scan workload (module-level, so it can be spawned).

    Pages are recorded as one read per item the page could hold (absent ones
    as DELETED), all with the page's source, invocation and completion, so
    :func:`find_stale` judges every item a page shows. The source ends with
    " hit" when the page came from the cache.
    """
    return _run_threads(config, worker, _page_workload(config))


def run_async_page_worker(config: Config, worker: int) -> Part:
    """One process of the Query/Scan workload through aioboto3 clients (``register_async``)."""
    return _run_tasks(config, worker, _page_workload(config))


PAGE_WRITES = ("PutItem", "UpdateItem", "DeleteItem", "ExecuteStatement")


def _page_workload(config: Config) -> Workload:
    return Workload(
        functools.partial(_page_step, config),
        delays={f"after-call.dynamodb.{op}": 1.0 for op in ("Query", "Scan", *PAGE_WRITES)},
        failures=tuple(f"needs-retry.dynamodb.{op}" for op in PAGE_WRITES),
        options=_options(config, query_invalidation=config.query_invalidation, scan_admission=1),
    )


def _page(keys: list[str], source: str) -> Callable[[dict[str, Any], int], list[Record]]:
    def record(response: dict[str, Any], started: int) -> list[Record]:
        found = {f"{i['pk']['S']}#{i['sk']['S']}": i for i in response["Items"]}
        return [_read(key, found.get(key), started, source + _hit(response)) for key in keys]

    return record


def _page_step(config: Config, rng: random.Random, value: str) -> Call:
    partition = rng.choice(PARTITIONS)
    sort = rng.choice(SORT_KEYS)
    key = f"{partition}#{sort}"
    item_key = {"pk": {"S": partition}, "sk": {"S": sort}}
    roll = rng.random()
    base = {"TableName": PAGE_TABLE, "KeyConditionExpression": "pk = :p"}
    values = {":p": {"S": partition}}
    if roll < 0.22:
        query = {**base, "ExpressionAttributeValues": values}
        return Call("query", query, _page(page_keys(partition), "Query base"))
    if roll < 0.40:
        query = {**base, "IndexName": "by_l", "ExpressionAttributeValues": values}
        return Call("query", query, _page(page_keys(partition), "Query LSI"))
    if roll < 0.52:
        gsi = {
            "TableName": PAGE_TABLE,
            "IndexName": "by_g",
            "KeyConditionExpression": "g = :g",
            "ExpressionAttributeValues": {":g": {"S": "G"}},
        }
        return Call("query", gsi, _page(page_keys(), "Query GSI"))
    if roll < 0.64:
        return Call("scan", {"TableName": PAGE_TABLE}, _page(page_keys(), "Scan"))
    if roll < 0.76:
        item = {**item_key, "v": {"S": value}, "l": {"S": "x"}, "g": {"S": "G"}}
        return _write_call(key, value, "PutItem", "put_item", TableName=PAGE_TABLE, Item=item)
    if roll < 0.88:
        return _write_call(
            key,
            value,
            "UpdateItem",
            "update_item",
            TableName=PAGE_TABLE,
            Key=item_key,
            UpdateExpression="SET v = :v, l = :l, g = :g",
            ExpressionAttributeValues={":v": {"S": value}, ":l": {"S": "x"}, ":g": {"S": "G"}},
        )
    if roll < 0.94:
        return _write_call(
            key, DELETED, "DeleteItem", "delete_item", TableName=PAGE_TABLE, Key=item_key
        )
    # A DELETE, not an UPDATE: its outcome is certain whether or not the item
    # exists, so every write here can prove a page stale.
    where = f"pk = '{partition}' AND sk = '{sort}'"
    return _write_call(
        key,
        DELETED,
        "ExecuteStatement DELETE",
        "execute_statement",
        Statement=f'DELETE FROM "{PAGE_TABLE}" WHERE {where}',
    )


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
