"""One behavioural suite, run against both paths: boto3 (sync) and aioboto3 (async).

moto runs as a ThreadedMotoServer (aiobotocore speaks real HTTP); Redis is a
real server started by the fixtures. Each test body is a coroutine that talks
to a ``Flavor``: for the sync path it calls boto3 directly, for the async path
it awaits aiobotocore / aioboto3 — the same steps, the same assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import boto3
import pytest
import redis
import redis.asyncio as aredis
from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError
from redis.backoff import NoBackoff
from redis.retry import Retry

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import PROVING_KEY, CallCounter, make_table

#: Every test here is marked ``shared``; the async flavour and the async-only tests
#: also ``aio`` (they need the async extra: the sync nox sessions leave them out).
pytestmark = pytest.mark.shared
FLAVORS = ["sync", pytest.param("async", marks=pytest.mark.aio)]
KEY = {"pk": {"S": "a"}}


class Flavor:
    """A DynamoDB client and resource of one path, with awaitable calls."""

    name: str
    registration: Any
    client: Any
    resource: Any

    async def call(self, operation: str, **params: Any) -> Any:
        raise NotImplementedError

    async def table(self, name: str, operation: str, **params: Any) -> Any:
        raise NotImplementedError

    async def batch_writer(self, name: str, puts: list[Any], deletes: list[Any]) -> None:
        raise NotImplementedError


class SyncFlavor(Flavor):
    name = "sync"

    async def call(self, operation: str, **params: Any) -> Any:
        return getattr(self.client, operation)(**params)

    async def table(self, name: str, operation: str, **params: Any) -> Any:
        return getattr(self.resource.Table(name), operation)(**params)

    async def batch_writer(self, name: str, puts: list[Any], deletes: list[Any]) -> None:
        with self.resource.Table(name).batch_writer() as batch:
            for item in puts:
                batch.put_item(Item=item)
            for key in deletes:
                batch.delete_item(Key=key)


class AsyncFlavor(Flavor):
    name = "async"

    async def call(self, operation: str, **params: Any) -> Any:
        return await getattr(self.client, operation)(**params)

    async def table(self, name: str, operation: str, **params: Any) -> Any:
        table = await self.resource.Table(name)
        return await getattr(table, operation)(**params)

    async def batch_writer(self, name: str, puts: list[Any], deletes: list[Any]) -> None:
        table = await self.resource.Table(name)
        async with table.batch_writer() as batch:
            for item in puts:
                await batch.put_item(Item=item)
            for key in deletes:
                await batch.delete_item(Key=key)


@contextlib.asynccontextmanager
async def open_flavor(
    name: str,
    moto_url: str,
    redis_url: str,
    namespace: str,
    before: Callable[[Any], None] | None = None,
    **options: Any,
) -> AsyncIterator[Flavor]:
    """Register a fresh session of the path and yield its client and resource.

    ``before(session)`` runs before registering (handlers registered first run first).
    """
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    flavor: Flavor
    if name == "sync":
        session = boto3.Session(region_name="us-east-1")
        if before:
            before(session)
        cache = redis.Redis(port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0))
        flavor = SyncFlavor()
        flavor.registration = ddbcache_hooks.register(
            session, cache, namespace=namespace, **options
        )
        flavor.client = session.client("dynamodb", endpoint_url=moto_url)
        flavor.resource = session.resource("dynamodb", endpoint_url=moto_url)
        try:
            yield flavor
        finally:
            flavor.registration.unregister()
        return
    import aioboto3

    session = aioboto3.Session(region_name="us-east-1")
    if before:
        before(session)
    pool = aredis.BlockingConnectionPool(
        port=port, max_connections=64, timeout=10, socket_timeout=2
    )
    flavor = AsyncFlavor()
    flavor.registration = await ddbcache_hooks.register_async(
        session, aredis.Redis(connection_pool=pool), namespace=namespace, **options
    )
    async with (
        session.client("dynamodb", endpoint_url=moto_url) as client,
        session.resource("dynamodb", endpoint_url=moto_url) as resource,
    ):
        flavor.client, flavor.resource = client, resource
        try:
            yield flavor
        finally:
            flavor.registration.unregister()


def shared(
    body: Callable[..., Awaitable[None]], **options: Any
) -> Callable[[str, str, RedisServer, str], None]:
    """Turn an async test body into a test run once per path."""

    @pytest.mark.parametrize("flavor_name", FLAVORS)
    def test(flavor_name: str, moto_url: str, redis_server: RedisServer, namespace: str) -> None:
        async def main() -> None:
            async with open_flavor(
                flavor_name, moto_url, redis_server.url, namespace, **options
            ) as flavor:
                await create_items(flavor)
                await body(flavor)

        asyncio.run(main())

    test.__doc__ = body.__doc__
    return test


async def create_items(flavor: Flavor) -> None:
    await flavor.call(
        "create_table",
        TableName="items",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


async def get(flavor: Flavor, **extra: Any) -> Any:
    return await flavor.call("get_item", TableName="items", Key=KEY, **extra)


# --- reads -------------------------------------------------------------------------


async def _miss_then_hit(f: Flavor) -> None:
    """A miss returns DynamoDB's answer; a hit has CacheMetadata and a synthesized
    ResponseMetadata that says it came from the cache."""
    await f.call("put_item", TableName="items", Item={**KEY, "v": {"S": "1"}})
    miss = await get(f)
    assert "ResponseMetadata" in miss and "CacheMetadata" not in miss
    assert "x-ddbcache" not in miss["ResponseMetadata"]["HTTPHeaders"]
    hit = await get(f)
    assert hit["Item"] == {**KEY, "v": {"S": "1"}}
    assert hit["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert hit["ResponseMetadata"]["HTTPHeaders"]["x-ddbcache"] == "hit"
    assert hit["ResponseMetadata"]["RequestId"].startswith("ddbcache-")
    assert hit["CacheMetadata"]["CacheHit"] is True
    assert hit["CacheMetadata"]["Client"] == f"Python {ddbcache_hooks.__version__}"
    capacity = await get(f, ReturnConsumedCapacity="INDEXES")
    assert capacity["ConsumedCapacity"] == {
        "TableName": "items",
        "CapacityUnits": 0.0,
        "Table": {"CapacityUnits": 0.0},
    }
    assert f.registration.stats()["item_hits"] == 2


test_miss_then_hit = shared(_miss_then_hit)


async def _table_resource_shares_entries(f: Flavor) -> None:
    """Table.get_item (Python types) hits what the client cached, and the reverse."""
    await f.table("items", "put_item", Item={"pk": "a", "n": 5})
    await get(f)
    hit = await f.table("items", "get_item", Key={"pk": "a"})
    assert hit["CacheMetadata"]["CacheHit"] and hit["Item"] == {"pk": "a", "n": 5}


test_table_resource_shares_entries = shared(_table_resource_shares_entries)


async def _consistent_reads_bypass_and_missing_items_are_cached(f: Flavor) -> None:
    """ConsistentRead=True is never cached; a missing item is (negative entry)."""
    for _ in range(2):
        assert "CacheMetadata" not in await get(f, ConsistentRead=True)
    assert "Item" not in await get(f)
    negative = await get(f)
    assert "Item" not in negative and negative["CacheMetadata"]["CacheHit"]
    assert f.registration.stats()["bypasses"] == 2


test_consistent_reads_bypass_and_missing_items_are_cached = shared(
    _consistent_reads_bypass_and_missing_items_are_cached
)


async def _query_scan_and_admission(f: Flavor) -> None:
    """Query hits on the 2nd call, shared with Table.query; Scan is stored on the 2nd call."""
    await f.call("put_item", TableName="items", Item={**KEY, "v": {"S": "1"}})
    low = {
        "TableName": "items",
        "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": "a"}},
    }
    assert "CacheMetadata" not in await f.call("query", **low)
    high = await f.table("items", "query", KeyConditionExpression=Key("pk").eq("a"))
    assert high["CacheMetadata"]["CacheHit"] and high["Items"] == [{"pk": "a", "v": "1"}]
    scans = [await f.call("scan", TableName="items") for _ in range(3)]
    assert ["CacheMetadata" in s for s in scans] == [False, False, True]


test_query_scan_and_admission = shared(_query_scan_and_admission)


async def _writes_drop_their_partitions_pages(f: Flavor) -> None:
    """A write drops its partition's Query pages and every Scan page; others keep serving."""

    def query(pk: str) -> dict[str, Any]:
        return {
            "TableName": "items",
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": pk}},
        }

    for _ in range(2):
        for pk in "ab":
            await f.call("query", **query(pk))
        await f.call("scan", TableName="items")
    await f.call("put_item", TableName="items", Item={**KEY, "v": {"S": "new"}})
    a, b = await f.call("query", **query("a")), await f.call("query", **query("b"))
    assert "CacheMetadata" not in a and a["Items"] == [{**KEY, "v": {"S": "new"}}]
    assert "CacheMetadata" in b
    scan = await f.call("scan", TableName="items")
    assert "CacheMetadata" not in scan and scan["Count"] == 1


test_writes_drop_their_partitions_pages = shared(_writes_drop_their_partitions_pages)


async def _batch_get(f: Flavor) -> None:
    """Hits from the cache, the misses in one real BatchGetItem, negative entries shared."""
    await f.call("put_item", TableName="items", Item={**KEY, "v": {"S": "1"}})
    await get(f)  # one key cached already
    calls = CallCounter().attach(f.client)
    request = {"items": {"Keys": [KEY, {"pk": {"S": "b"}}, {"pk": {"S": "c"}}]}}
    first = await f.call("batch_get_item", RequestItems=request)
    assert calls["BatchGetItem"] == 1
    sent = json.loads(calls.bodies[0][1])["RequestItems"]["items"]["Keys"]
    assert sent == [{"pk": {"S": "b"}}, {"pk": {"S": "c"}}]
    assert first["Responses"]["items"] == [{**KEY, "v": {"S": "1"}}]
    assert first["CacheMetadata"]["CacheHitCount"] == 1
    second = await f.call("batch_get_item", RequestItems=request)
    assert second["CacheMetadata"]["CacheHitCount"] == 3 and calls["BatchGetItem"] == 1
    absent = await f.call("get_item", TableName="items", Key={"pk": {"S": "b"}})
    assert absent["CacheMetadata"]["CacheHit"] and "Item" not in absent


test_batch_get = shared(_batch_get)


# --- writes ------------------------------------------------------------------------


async def _every_write_path_invalidates(f: Flavor) -> None:
    """Client writes, batch writes, transactions (also cancelled), PartiQL, resource writes."""
    new = {"S": "new"}

    async def transact_cancelled() -> None:
        with contextlib.suppress(ClientError):
            await f.call(
                "transact_write_items",
                TransactItems=[
                    {
                        "Put": {
                            "TableName": "items",
                            "Item": {**KEY, "v": new},
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    }
                ],
            )

    writes: dict[str, Callable[[], Awaitable[Any]]] = {
        "put_item": lambda: f.call("put_item", TableName="items", Item={**KEY, "v": new}),
        "update_item": lambda: f.call(
            "update_item",
            TableName="items",
            Key=KEY,
            UpdateExpression="SET v = :v",
            ExpressionAttributeValues={":v": new},
        ),
        "delete_item": lambda: f.call("delete_item", TableName="items", Key=KEY),
        "batch_write_item": lambda: f.call(
            "batch_write_item", RequestItems={"items": [{"DeleteRequest": {"Key": KEY}}]}
        ),
        "transact_write_items": lambda: f.call(
            "transact_write_items",
            TransactItems=[{"Delete": {"TableName": "items", "Key": KEY}}],
        ),
        "transact_cancelled": transact_cancelled,
        "partiql": lambda: f.call(
            "execute_statement", Statement="UPDATE items SET v = 'new' WHERE pk = 'a'"
        ),
        "table.put_item": lambda: f.table("items", "put_item", Item={"pk": "a", "v": "new"}),
        "batch_writer": lambda: f.batch_writer("items", [{"pk": "a", "v": "new"}], []),
    }
    for path, write in writes.items():
        await f.call("put_item", TableName="items", Item={**KEY, "v": {"S": "old"}})
        await get(f)
        assert "CacheMetadata" in await get(f), path
        await write()
        after = await get(f)
        assert "CacheMetadata" not in after, f"{path} left a stale entry"


test_every_write_path_invalidates = shared(_every_write_path_invalidates)


async def _table_lifecycle_and_missing_tables(f: Flavor) -> None:
    """Delete + recreate serves no ghost; a write to a missing table is dropped quietly."""
    await f.call("put_item", TableName="items", Item={**KEY, "v": {"S": "old"}})
    await get(f)
    assert "CacheMetadata" in await get(f)
    await f.call("delete_table", TableName="items")
    await create_items(f)
    assert "Item" not in await get(f)

    calls = CallCounter().attach(f.client)
    await f.call("delete_table", TableName="items")
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        await f.call("put_item", TableName="items", Item={**KEY, "v": {"S": "new"}})
    assert calls["DescribeTable"] == 0
    await create_items(f)
    assert "Item" not in await get(f)


test_table_lifecycle_and_missing_tables = shared(_table_lifecycle_and_missing_tables)


# --- leases ------------------------------------------------------------------------


@pytest.mark.parametrize("flavor_name", FLAVORS)
def test_fill_racing_a_write_is_discarded(
    flavor_name: str, moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    """A write lands between the read's DynamoDB answer and its fill: the fill is dropped."""
    writer = boto3.Session(region_name="us-east-1").client("dynamodb", endpoint_url=moto_url)
    ddbcache_hooks.register(writer, redis_server.url, namespace=namespace)
    raced: list[bool] = []

    def write_in_between(**_: Any) -> None:
        if not raced:
            raced.append(True)
            writer.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}})

    def before(session: Any) -> None:
        session.events.register("after-call.dynamodb.GetItem", write_in_between)

    async def main() -> None:
        async with open_flavor(
            flavor_name, moto_url, redis_server.url, namespace, before=before
        ) as f:
            make_table(writer, "items")
            writer.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
            first = await get(f)
            assert first["Item"]["v"] == {"S": "old"}
            assert f.registration.stats()["fills_discarded"] == 1
            after = await get(f)
            assert "CacheMetadata" not in after and after["Item"]["v"] == {"S": "new"}

    asyncio.run(main())


@pytest.mark.parametrize("flavor_name", FLAVORS)
def test_refresh_costs_one_read_and_replaces_the_entry(
    flavor_name: str, moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    """Inside refresh(): one DynamoDB read, DynamoDB's answer, and the entry replaced."""
    outside = boto3.Session(region_name="us-east-1").client("dynamodb", endpoint_url=moto_url)

    async def main() -> None:
        async with open_flavor(flavor_name, moto_url, redis_server.url, namespace) as f:
            calls = CallCounter().attach(f.client)
            make_table(outside, "items")
            outside.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
            await get(f)
            # Changed where the cache cannot see it: the entry is out of date.
            outside.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}})
            assert (await get(f))["Item"]["v"] == {"S": "old"}
            assert calls["GetItem"] == 1
            with ddbcache_hooks.refresh():
                refreshed = await get(f)
            assert calls["GetItem"] == 2  # exactly one DynamoDB read
            assert "CacheMetadata" not in refreshed and refreshed["Item"]["v"] == {"S": "new"}
            after = await get(f)
            assert after["CacheMetadata"]["CacheHit"] and after["Item"]["v"] == {"S": "new"}
            assert calls["GetItem"] == 2
            assert f.registration.stats()["refreshes"] == 1

    asyncio.run(main())


@pytest.mark.parametrize("flavor_name", FLAVORS)
def test_refresh_racing_a_write_never_stores_the_older_value(
    flavor_name: str, moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    """A write lands between the refresh's DynamoDB read and its fill: the fill is dropped."""
    writer = boto3.Session(region_name="us-east-1").client("dynamodb", endpoint_url=moto_url)
    ddbcache_hooks.register(writer, redis_server.url, namespace=namespace)
    armed: list[bool] = []

    def write_in_between(**_: Any) -> None:
        if armed and armed.pop():
            writer.put_item(TableName="items", Item={**KEY, "v": {"S": "new"}})

    def before(session: Any) -> None:  # runs before the cache's own after-call handler
        session.events.register("after-call.dynamodb.GetItem", write_in_between)

    async def main() -> None:
        async with open_flavor(
            flavor_name, moto_url, redis_server.url, namespace, before=before
        ) as f:
            make_table(writer, "items")
            writer.put_item(TableName="items", Item={**KEY, "v": {"S": "old"}})
            await get(f)
            assert (await get(f))["CacheMetadata"]["CacheHit"]
            armed.append(True)
            with ddbcache_hooks.refresh():
                refreshed = await get(f)
            assert not armed  # the write was made, after DynamoDB answered the refresh
            assert refreshed["Item"]["v"] == {"S": "old"}
            assert f.registration.stats()["fills_discarded"] == 1
            after = await get(f)  # the older value was not stored: a miss, the new value
            assert "CacheMetadata" not in after and after["Item"]["v"] == {"S": "new"}
            assert (await get(f))["Item"]["v"] == {"S": "new"}

    asyncio.run(main())


@pytest.mark.aio
def test_200_concurrent_async_misses_cost_one_read(
    moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    async def main() -> None:
        async with open_flavor(
            "async", moto_url, redis_server.url, namespace, lease_wait_ms=10_000
        ) as f:
            admin = boto3.Session(region_name="us-east-1").client("dynamodb", endpoint_url=moto_url)
            make_table(admin, "items")
            admin.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}})
            calls = CallCounter().attach(f.client)
            results = await asyncio.gather(*(get(f) for _ in range(200)))
            assert calls["GetItem"] == 1
            assert all(r["Item"] == {**KEY, "v": {"S": "1"}} for r in results)
            assert sum("CacheMetadata" in r for r in results) == 199

    asyncio.run(main())


# --- failures ----------------------------------------------------------------------


@pytest.mark.parametrize("flavor_name", FLAVORS)
def test_redis_down_is_invisible_and_the_breaker_stops_trying(
    flavor_name: str, moto_url: str, namespace: str
) -> None:
    async def main() -> None:
        with RedisServer() as server:
            async with open_flavor(
                flavor_name,
                moto_url,
                server.url,
                namespace,
                breaker_threshold=2,
                breaker_cooldown_ms=60_000,
            ) as f:
                await create_items(f)
                await f.call("put_item", TableName="items", Item={**KEY, "v": {"S": "1"}})
                await get(f)
                server.kill()
                for value in ("2", "3", "4"):
                    await f.call("put_item", TableName="items", Item={**KEY, "v": {"S": value}})
                    assert (await get(f))["Item"]["v"] == {"S": value}
                stats = f.registration.stats()
                assert stats["breaker_opened"] == 1 and stats["errors"] == 2
                started = time.monotonic()
                await get(f)
                assert time.monotonic() - started < 1
                assert f.registration.stats()["errors"] == 2  # open: Redis not even tried

    asyncio.run(main())


@pytest.mark.aio
def test_register_async_rejects_mismatched_clients(redis_server: RedisServer) -> None:
    import aioboto3

    from ddbcache_hooks import RegistrationError

    async def main() -> None:
        with pytest.raises(RegistrationError, match=r"needs a redis\.asyncio client"):
            await ddbcache_hooks.register_async(
                aioboto3.Session(region_name="us-east-1"), redis.Redis(port=redis_server.port)
            )
        with pytest.raises(RegistrationError, match="register_async"):
            ddbcache_hooks.register(aioboto3.Session(region_name="us-east-1"), redis_server.url)
        with pytest.raises(RegistrationError, match="synchronous redis client"):
            ddbcache_hooks.register(
                boto3.Session(region_name="us-east-1"), aredis.Redis(port=redis_server.port)
            )
        with pytest.raises(RegistrationError, match="for boto3 / botocore use register"):
            await ddbcache_hooks.register_async(
                boto3.Session(region_name="us-east-1"), redis_server.url
            )

    asyncio.run(main())


@pytest.mark.aio
def test_async_invalidate_and_table(
    moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    async def main() -> None:
        async with open_flavor("async", moto_url, redis_server.url, namespace) as f:
            await create_items(f)
            await get(f)
            assert "CacheMetadata" in await get(f)
            assert await f.registration.invalidate("items", {"pk": "a"}) is True
            assert "CacheMetadata" not in await get(f)
            assert await f.registration.invalidate_table("items") is True
            assert "CacheMetadata" not in await get(f)

    asyncio.run(main())


@pytest.mark.aio
def test_async_near_cache_and_counter_flush(
    moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    from ddbcache_hooks import NearCache
    from ddbcache_hooks.metrics import aggregate

    near = NearCache(max_items=10, ttl_ms=5000)

    async def main() -> None:
        async with open_flavor(
            "async", moto_url, redis_server.url, namespace, near_cache=near, metrics_flush_s=1
        ) as f:
            await create_items(f)
            deadline = time.monotonic() + 5
            while not near.online and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert near.online
            for _ in range(4):
                await get(f)
            assert f.registration.stats()["near_hits"] == 2 and len(near) == 1
            await f.call("put_item", TableName="items", Item={**KEY, "v": {"S": "new"}})
            assert len(near) == 0
            assert (await get(f))["Item"]["v"] == {"S": "new"}
            await asyncio.sleep(1.3)  # one flush period
            totals = aggregate(redis.Redis(port=redis_server.port), namespace)
            assert totals.processes == 1 and totals.counters["near_hits"] == 2
            assert totals.tables["items"]["hits"] == totals.counters["hits"] > 0
            assert totals.live == 1
        await asyncio.sleep(0.2)  # unregistered: the flush task's last write
        totals = aggregate(redis.Redis(port=redis_server.port), namespace)
        assert (totals.processes, totals.exited) == (1, 1)

    asyncio.run(main())


# --- write-through -----------------------------------------------------------------


async def _write_through_fills(f: Flavor) -> None:
    """With write_through, PutItem, UpdateItem (ALL_NEW) and DeleteItem store their image."""
    await f.call("get_item", TableName="items", Key=PROVING_KEY)  # read access proved
    calls = CallCounter().attach(f.client)
    await f.call("put_item", TableName="items", Item={**KEY, "n": {"N": "2.50"}})
    hit = await get(f)
    assert hit["Item"] == {**KEY, "n": {"N": "2.5"}} and hit["CacheMetadata"]["CacheHit"]
    await f.call(
        "update_item",
        TableName="items",
        Key=KEY,
        UpdateExpression="SET v = :v",
        ExpressionAttributeValues={":v": {"S": "u"}},
        ReturnValues="ALL_NEW",
    )
    assert (await get(f))["Item"] == {**KEY, "n": {"N": "2.5"}, "v": {"S": "u"}}
    await f.call("delete_item", TableName="items", Key=KEY)
    assert "Item" not in (await get(f))
    assert calls["GetItem"] == 0
    assert f.registration.stats()["write_fills"] == 3


test_write_through_fills = shared(
    _write_through_fills, write_through=True, key_schema={"items": "pk"}
)


@pytest.mark.aio
def test_a_cancelled_write_through_write_stores_nothing(
    moto_url: str, redis_server: RedisServer, namespace: str
) -> None:
    """Cancelled after its intent was registered and the write sent: only the invalidation."""
    sent = asyncio.Event()

    async def slow_answer(**_: Any) -> None:
        sent.set()
        await asyncio.sleep(5)

    def before(session: Any) -> None:
        session.events.register("after-call.dynamodb.PutItem", slow_answer)

    async def main() -> None:
        async with open_flavor(
            "async",
            moto_url,
            redis_server.url,
            namespace,
            before,
            write_through=True,
            key_schema={"items": "pk"},
        ) as f:
            await create_items(f)
            await f.call("get_item", TableName="items", Key=PROVING_KEY)  # read access proved
            calls = CallCounter().attach(f.client)
            await f.call("put_item", TableName="items", Item={**KEY, "v": {"S": "old"}})
            assert (await get(f))["Item"]["v"] == {"S": "old"}  # stored by the first put
            sent.clear()
            task = asyncio.ensure_future(
                f.call("put_item", TableName="items", Item={**KEY, "v": {"S": "new"}})
            )
            await sent.wait()  # DynamoDB applied it; the answer is held back
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for _ in range(100):  # the invalidation runs in a task of its own
                if f.registration.stats()["write_fills_skipped_uncertain"]:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            assert f.registration.stats()["write_fills_skipped_uncertain"] == 1
            assert (await get(f))["Item"]["v"] == {"S": "new"}
            assert calls["GetItem"] == 1  # a miss: the cancelled write stored nothing
            assert f.registration.stats()["write_fills"] == 1

    asyncio.run(main())
