"""Operations moto does not have: SearchVectors, bulk loads, an operation nobody knows.

They run against ``tests.fake_dynamodb.FakeDynamoDB``, a real HTTP server
answering DynamoDB's JSON protocol in front of a moto server, through real
boto3 clients whose model has the operations on any botocore (botocore 1.44 has
them; older ones get them through botocore's loader, like an unknown operation
of a future release). Redis is a real server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import ddbcache_hooks
from ddbcache_hooks import TablePolicy
from ddbcache_hooks._version import __version__
from tests.conftest import REGION, Backend, CallCounter, make_table
from tests.fake_dynamodb import FakeDynamoDB, later_operations

KEY = {"pk": {"S": "a"}}
VECTORS = {"a": ["0", "0"], "b": ["1", "1"], "c": ["5", "5"]}
BULK = {
    "TableName": "tbl",
    "InputS3Configuration": {"S3Bucket": "loads", "InputFormat": "DYNAMODB_JSON"},
    "OutputS3Configuration": {"OutputType": ["FAILED_ITEMS"], "S3Bucket": "reports"},
}


@pytest.fixture
def fake(moto_url: str) -> Iterator[FakeDynamoDB]:
    with FakeDynamoDB(moto_url, extra=("FrobnicateTable",)) as server:
        yield server


@pytest.fixture
def clients(
    fake: FakeDynamoDB, redis_or_buckets: Backend, namespace: str, tmp_path: Path
) -> Iterator[Any]:
    """Registered clients of the fake endpoint, each on its own session (a process each)."""
    made = []

    def make(**options: Any) -> Any:
        session = boto3.Session(region_name=REGION)
        later_operations(session, tmp_path, {"FrobnicateTable": {"TableName": "TableArn"}})
        made.append(
            ddbcache_hooks.register(
                session,
                redis_or_buckets.client(),
                namespace=namespace,
                **{**redis_or_buckets.options, **options},
            )
        )
        client = session.client("dynamodb", endpoint_url=fake.url)
        client.calls = CallCounter().attach(client)
        return client

    yield make
    for registration in made:
        registration.unregister()


def vector(*values: str) -> list[dict[str, str]]:
    return [{"N": v} for v in values]


def put_vectors(client: Any) -> None:
    make_table(client, "tbl")
    for pk, values in VECTORS.items():
        client.put_item(TableName="tbl", Item={"pk": {"S": pk}, "v": {"L": vector(*values)}})


def search(client: Any, *values: str, top: int = 1) -> dict[str, Any]:
    response: dict[str, Any] = client.search_vectors(
        TableName="tbl", IndexName="by-v", SearchVector=vector(*values), TopK=top
    )
    return response


def test_search_vectors_miss_hit_then_a_write_drops_it(clients: Any) -> None:
    client = clients(query_invalidation="write")
    put_vectors(client)
    first = search(client, "0.9", "0.9")
    assert [r["Item"]["pk"] for r in first["SearchResults"]] == [{"S": "b"}]
    assert "CacheMetadata" not in first and client.calls["SearchVectors"] == 1
    hit = search(client, "0.9", "0.9")
    assert hit["CacheMetadata"]["CacheHit"] is True
    assert hit["SearchResults"] == first["SearchResults"] and client.calls["SearchVectors"] == 1
    # Another vector or TopK is another request variant.
    assert [r["Item"]["pk"] for r in search(client, "5", "5")["SearchResults"]] == [{"S": "c"}]
    assert len(search(client, "0.9", "0.9", top=2)["SearchResults"]) == 2
    assert client.calls["SearchVectors"] == 3

    client.put_item(TableName="tbl", Item={"pk": {"S": "d"}, "v": {"L": vector("0.9", "0.9")}})
    after = search(client, "0.9", "0.9")
    assert "CacheMetadata" not in after and client.calls["SearchVectors"] == 4
    assert [r["Item"]["pk"] for r in after["SearchResults"]] == [{"S": "d"}]


def test_search_vectors_can_be_switched_off_per_table(clients: Any) -> None:
    client = clients(tables={"tbl": TablePolicy(operations={"SearchVectors": False})})
    put_vectors(client)
    search(client, "1", "1")
    assert "CacheMetadata" not in search(client, "1", "1")
    assert client.calls["SearchVectors"] == 2


def test_a_bulk_load_bypasses_the_table_in_every_process_until_it_ends(
    clients: Any, fake: FakeDynamoDB
) -> None:
    loader, other = clients(), clients()
    make_table(loader, "tbl")
    make_table(loader, "two")
    for client in (loader, other):
        client.put_item(TableName="two", Item=KEY)
    loader.put_item(TableName="tbl", Item={**KEY, "v": {"S": "before"}})
    loader.get_item(TableName="tbl", Key=KEY)
    assert "CacheMetadata" in other.get_item(TableName="tbl", Key=KEY)

    arn = loader.start_bulk_put_items(**BULK)["BulkOperationDescription"]["BulkOperationArn"]
    fake.finish_bulk_load(arn, [{**KEY, "v": {"S": "loaded"}}], status="IN_PROGRESS")
    for client in (loader, other):
        before = client.calls["GetItem"]
        for _ in range(2):  # nothing is stored while the load runs
            item = client.get_item(TableName="tbl", Key=KEY)
            assert "CacheMetadata" not in item and item["Item"]["v"] == {"S": "loaded"}
        assert client.calls["GetItem"] == before + 2
        client.get_item(TableName="two", Key=KEY)  # other tables are cached as before
        assert "CacheMetadata" in client.get_item(TableName="two", Key=KEY)

    assert (
        loader.describe_bulk_operation(BulkOperationArn=arn)["BulkOperationDescription"][
            "BulkOperationStatus"
        ]
        == "IN_PROGRESS"
    )
    assert "CacheMetadata" not in other.get_item(TableName="tbl", Key=KEY)

    fake.finish_bulk_load(arn, [{**KEY, "v": {"S": "final"}}])
    other.describe_bulk_operation(BulkOperationArn=arn)  # terminal: the bypass ends
    for client in (other, loader):
        assert client.get_item(TableName="tbl", Key=KEY)["Item"]["v"] == {"S": "final"}
    assert "CacheMetadata" in loader.get_item(TableName="tbl", Key=KEY)


def test_a_bulk_load_bypass_is_bounded(clients: Any) -> None:
    client = clients(bulk_load_bypass_s=1)
    make_table(client, "tbl")
    client.put_item(TableName="tbl", Item=KEY)
    client.start_bulk_put_items(**BULK)
    client.get_item(TableName="tbl", Key=KEY)
    assert "CacheMetadata" not in client.get_item(TableName="tbl", Key=KEY)
    time.sleep(1.05)  # past the bound, with no DescribeBulkOperation: cached again
    client.get_item(TableName="tbl", Key=KEY)
    assert "CacheMetadata" in client.get_item(TableName="tbl", Key=KEY)


def test_an_unknown_operation_drops_its_table_once_per_call_and_warns_once(
    clients: Any, fake: FakeDynamoDB, caplog: pytest.LogCaptureFixture
) -> None:
    client = clients()
    make_table(client, "tbl")
    make_table(client, "two")
    for table in ("tbl", "two"):
        client.put_item(TableName=table, Item=KEY)
        client.get_item(TableName=table, Key=KEY)
    registration = client._ddbcache
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ddbcache_hooks"):
        for _ in range(2):
            before = registration.stats()["table_invalidations"]
            client.frobnicate_table(TableName="tbl")
            assert registration.stats()["table_invalidations"] == before + 1
            assert "CacheMetadata" not in client.get_item(TableName="tbl", Key=KEY)
            assert "CacheMetadata" in client.get_item(TableName="two", Key=KEY)
    assert fake.handled.count("FrobnicateTable") == 2
    (record,) = caplog.records
    message = record.getMessage()
    assert "FrobnicateTable" in message and f"newer than {__version__}" in message
    assert record.pathname.endswith("protocol.py")
