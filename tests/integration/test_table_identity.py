"""Where a table lives is part of its identity: Region, endpoint and account.

Real boto3 clients, moto, a real Redis server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

import ddbcache_hooks
from ddbcache_hooks import TableRef
from tests.botocore_compat import CREDENTIALS_CARRY_ACCOUNT
from tests.conftest import Backend, CallCounter, make_table

KEY = {"pk": {"S": "a"}}
#: moto's account.
OWN_ACCOUNT = "123456789012"
OTHER_ACCOUNT = "111111111111"


def arn(region: str, account: str, table: str = "items") -> str:
    return f"arn:aws:dynamodb:{region}:{account}:table/{table}"


@pytest.fixture
def register(session: boto3.Session, real_redis: Backend, namespace: str) -> Iterator[Any]:
    made: list[ddbcache_hooks.Registration] = []

    def make(**options: Any) -> ddbcache_hooks.Registration:
        registration = ddbcache_hooks.register(
            session, real_redis.client(), namespace=namespace, **options
        )
        made.append(registration)
        return registration

    yield make
    for registration in made:
        registration.unregister()


def value(response: dict[str, Any]) -> str | None:
    item = response.get("Item")
    return item["v"]["S"] if item else None


def test_two_regions_of_one_session_do_not_share_entries(
    session: boto3.Session, register: Any
) -> None:
    registration = register()
    east = session.client("dynamodb", region_name="us-east-1")
    west = session.client("dynamodb", region_name="eu-west-1")
    for client, where in ((east, "east"), (west, "west")):
        make_table(client, "items")
        client.put_item(TableName="items", Item={**KEY, "v": {"S": where}})
    assert value(east.get_item(TableName="items", Key=KEY)) == "east"
    assert "CacheMetadata" in east.get_item(TableName="items", Key=KEY)
    assert value(west.get_item(TableName="items", Key=KEY)) == "west"
    west_hit = west.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" in west_hit and value(west_hit) == "west"
    # A write in one Region drops that Region's entry only.
    west.put_item(TableName="items", Item={**KEY, "v": {"S": "west 2"}})
    assert value(west.get_item(TableName="items", Key=KEY)) == "west 2"
    assert "CacheMetadata" in east.get_item(TableName="items", Key=KEY)
    # invalidate() by name acts in every Region the registration's clients use.
    registration.invalidate("items", {"pk": "a"})
    assert "CacheMetadata" not in east.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" not in west.get_item(TableName="items", Key=KEY)
    # ... and a TableRef names one place exactly.
    registration.invalidate_table(TableRef("aws", "eu-west-1", "", "items"))
    assert "CacheMetadata" in east.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" not in west.get_item(TableName="items", Key=KEY)


def test_query_pages_and_key_schemas_are_per_region(session: boto3.Session, register: Any) -> None:
    register()
    east = session.client("dynamodb", region_name="us-east-1")
    west = session.client("dynamodb", region_name="eu-west-1")
    make_table(east, "items")
    make_table(west, "items", ("id", "S"))  # same name, another key schema
    query = {
        "TableName": "items",
        "KeyConditionExpression": "pk = :a",
        "ExpressionAttributeValues": {":a": {"S": "a"}},
    }
    east.put_item(TableName="items", Item={**KEY, "v": {"S": "east"}})
    assert east.query(**query)["Count"] == 1
    with pytest.raises(ClientError):  # eu-west-1's table has no attribute pk in its key
        west.query(**query)
    # Learning eu-west-1's key schema ("id") must not make us-east-1 writes miss "pk".
    west.put_item(TableName="items", Item={"id": {"S": "x"}, "v": {"S": "west"}})
    east.get_item(TableName="items", Key=KEY)
    east.put_item(TableName="items", Item={**KEY, "v": {"S": "east 2"}})
    assert value(east.get_item(TableName="items", Key=KEY)) == "east 2"


@pytest.mark.parametrize("account_id", [None, OWN_ACCOUNT])
def test_another_accounts_table_by_arn_is_not_served_the_local_item(
    session: boto3.Session, register: Any, account_id: str | None
) -> None:
    plain = session.client("dynamodb")
    make_table(plain, "items")
    plain.put_item(TableName="items", Item={**KEY, "v": {"S": "local"}})
    with pytest.raises(ClientError) as uncached:
        plain.get_item(TableName=arn("us-east-1", OTHER_ACCOUNT), Key=KEY)
    register(account_id=account_id)
    client = session.client("dynamodb")
    client.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" in client.get_item(TableName="items", Key=KEY)
    for _ in range(2):
        with pytest.raises(ClientError) as cached:
            client.get_item(TableName=arn("us-east-1", OTHER_ACCOUNT), Key=KEY)
        assert cached.value.response["Error"] == uncached.value.response["Error"]
        assert cached.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_own_account_arn_shares_entries_with_the_name(
    session: boto3.Session, register: Any
) -> None:
    """With account_id set, the ARN of the client's own table is the plain name's table."""
    register(account_id=OWN_ACCOUNT)
    client = session.client("dynamodb")
    calls = CallCounter().attach(client)
    make_table(client, "items")
    own = arn("us-east-1", OWN_ACCOUNT)
    assert own == client.describe_table(TableName="items")["Table"]["TableArn"]
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}})
    client.get_item(TableName=own, Key=KEY)
    assert "CacheMetadata" in client.get_item(TableName="items", Key=KEY)
    # A write by name drops what the ARN-named read cached...
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "2"}})
    assert value(client.get_item(TableName=own, Key=KEY)) == "2"
    assert "CacheMetadata" in client.get_item(TableName=own, Key=KEY)
    # ... and a write by ARN what the name's read cached.
    client.put_item(TableName=own, Item={**KEY, "v": {"S": "3"}})
    assert value(client.get_item(TableName="items", Key=KEY)) == "3"
    assert calls["GetItem"] == 3


def test_own_account_unknown_arn_reads_bypass_and_arn_writes_drop_both_forms(
    session: boto3.Session, register: Any
) -> None:
    register()
    client = session.client("dynamodb")
    calls = CallCounter().attach(client)
    make_table(client, "items")
    own = arn("us-east-1", OWN_ACCOUNT)
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}})
    client.get_item(TableName="items", Key=KEY)
    assert "CacheMetadata" not in client.get_item(TableName=own, Key=KEY)
    assert "CacheMetadata" in client.get_item(TableName="items", Key=KEY)
    client.delete_item(TableName=own, Key=KEY)
    assert "Item" not in client.get_item(TableName="items", Key=KEY)
    client.batch_write_item(
        RequestItems={own: [{"PutRequest": {"Item": {**KEY, "v": {"S": "2"}}}}]}
    )
    assert value(client.get_item(TableName="items", Key=KEY)) == "2"
    assert calls["GetItem"] == 4


def test_endpoint_is_part_of_the_identity(moto_url: str, redis_server: Any, namespace: str) -> None:
    """Two DynamoDBs behind two endpoints (here: moto over HTTP and in-process) never mix."""
    from moto import mock_aws

    session = boto3.Session(region_name="us-east-1")
    registration = ddbcache_hooks.register(session, redis_server.url, namespace=namespace)
    try:
        served = session.client("dynamodb", endpoint_url=moto_url)
        make_table(served, "items")
        served.put_item(TableName="items", Item={**KEY, "v": {"S": "server"}})
        served.get_item(TableName="items", Key=KEY)
        with mock_aws():
            local = session.client("dynamodb")
            make_table(local, "items")
            local.put_item(TableName="items", Item={**KEY, "v": {"S": "in-process"}})
            assert value(local.get_item(TableName="items", Key=KEY)) == "in-process"
        assert registration.table_refs("items") == [
            TableRef(moto_url, "us-east-1", "", "items"),
            TableRef("aws", "us-east-1", "", "items"),
        ]
    finally:
        registration.unregister()


@pytest.mark.aio
def test_async_clients_of_two_regions_do_not_share_entries(
    moto_url: str, redis_server: Any, namespace: str
) -> None:
    import asyncio

    import aioboto3

    async def main() -> None:
        session = aioboto3.Session()
        registration = await ddbcache_hooks.register_async(
            session, redis_server.url, namespace=namespace
        )
        try:
            async with (
                session.client("dynamodb", region_name="us-east-1", endpoint_url=moto_url) as east,
                session.client("dynamodb", region_name="eu-west-1", endpoint_url=moto_url) as west,
            ):
                for client, where in ((east, "east"), (west, "west")):
                    await client.create_table(
                        TableName="items",
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                        BillingMode="PAY_PER_REQUEST",
                    )
                    await client.put_item(TableName="items", Item={**KEY, "v": {"S": where}})
                await east.get_item(TableName="items", Key=KEY)
                assert "CacheMetadata" in await east.get_item(TableName="items", Key=KEY)
                assert value(await west.get_item(TableName="items", Key=KEY)) == "west"
                await west.put_item(TableName="items", Item={**KEY, "v": {"S": "west 2"}})
                assert value(await west.get_item(TableName="items", Key=KEY)) == "west 2"
                assert value(await east.get_item(TableName="items", Key=KEY)) == "east"
                await registration.invalidate("items", {"pk": "a"})
                assert "CacheMetadata" not in await east.get_item(TableName="items", Key=KEY)
        finally:
            registration.unregister()

    asyncio.run(main())


def test_own_account_from_the_credentials(
    session: boto3.Session, register: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Static credentials that carry the account (AWS_ACCOUNT_ID) tell the own account.

    botocore before 1.35 has no account in credentials: the own account stays
    unknown, and a read naming the table by ARN bypasses the cache.
    """
    monkeypatch.setenv("AWS_ACCOUNT_ID", OWN_ACCOUNT)
    register()
    client = session.client("dynamodb")
    make_table(client, "items")
    client.put_item(TableName="items", Item={**KEY, "v": {"S": "1"}})
    client.get_item(TableName="items", Key=KEY)
    by_arn = client.get_item(TableName=arn("us-east-1", OWN_ACCOUNT), Key=KEY)
    assert ("CacheMetadata" in by_arn) is CREDENTIALS_CARRY_ACCOUNT
