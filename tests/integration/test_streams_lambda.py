"""The Lambda handler: realistic DynamoDB Streams events against real Redis."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer, free_port
from ddbcache_hooks.config import Settings
from ddbcache_hooks.streams import handler, lambda_handler
from tests.conftest import NO_SETTLE, counting_redis, make_table

ACCOUNT = "123456789012"


def arn(table: str) -> str:
    return f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/{table}/stream/2026-01-01T00:00:00.000"


def record(
    table: str,
    event: str,
    keys: dict[str, Any],
    seq: str,
    view: str = "KEYS_ONLY",
    image: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A record as Lambda delivers it (JSON: binary values base64-encoded)."""
    dynamodb: dict[str, Any] = {
        "ApproximateCreationDateTime": 1767225600,
        "Keys": keys,
        "SequenceNumber": seq,
        "SizeBytes": 64,
        "StreamViewType": view,
    }
    if view == "NEW_AND_OLD_IMAGES":
        if event != "INSERT":
            dynamodb["OldImage"] = {**keys, **(image or {}), "v": {"S": "old"}}
        if event != "REMOVE":
            dynamodb["NewImage"] = {**keys, **(image or {}), "v": {"S": "new"}}
    return {
        "eventID": f"id-{seq}",
        "eventName": event,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": dynamodb,
        "eventSourceARN": arn(table),
    }


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
def lambda_env(
    session: boto3.Session,
    redis_server: RedisServer,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Any, ddbcache_hooks.Registration]]:
    """A registered client with cached entries in three tables; the handler's environment."""
    # No settle window: the entries are filled right after their writes and read
    # again after the handler ran (conftest.NO_SETTLE).
    registration = ddbcache_hooks.register(
        session, redis_server.url, namespace=namespace, **NO_SETTLE
    )
    client = session.client("dynamodb")
    make_table(client, "users")
    make_table(client, "scores", ("pk", "N"), ("sk", "B"))
    make_table(client, "other")
    for key in USERS + OTHER:
        client.put_item(TableName=key[0], Item={**key[1], "v": {"S": "old"}})
    for key in SCORES:
        client.put_item(TableName="scores", Item={**key[1], "v": {"S": "old"}})
    for table, key in USERS + SCORES + OTHER:
        client.get_item(TableName=table, Key=key)
        assert cached(client, table, key)
    monkeypatch.setenv("DDBCACHE_REDIS_URL", redis_server.url)
    monkeypatch.setenv("DDBCACHE_NAMESPACE", namespace)
    lambda_handler.reset()
    yield client, registration
    lambda_handler.reset()
    registration.unregister()


USERS = [("users", {"pk": {"S": f"u{n}"}}) for n in range(3)]
SCORES = [
    ("scores", {"pk": {"N": "1"}, "sk": {"B": b"\x00\x01"}}),
    ("scores", {"pk": {"N": "1"}, "sk": {"B": b"\x00\x02"}}),
    ("scores", {"pk": {"N": "20"}, "sk": {"B": b"\xff"}}),
]
OTHER = [("other", {"pk": {"S": "u0"}})]


def cached(client: Any, table: str, key: dict[str, Any]) -> bool:
    return "CacheMetadata" in client.get_item(TableName=table, Key=key)


def event() -> dict[str, Any]:
    """INSERT / MODIFY / REMOVE, both view types, two tables; numbers and binary in keys."""
    return {
        "Records": [
            record("users", "INSERT", {"pk": {"S": "u0"}}, "100"),
            record(
                "users",
                "MODIFY",
                {"pk": {"S": "u1"}},
                "101",
                "NEW_AND_OLD_IMAGES",
                {"n": {"N": "1"}},
            ),
            # 1.0 and 1 are one number to DynamoDB; the key bytes arrive base64-encoded.
            record("scores", "REMOVE", {"pk": {"N": "1.0"}, "sk": {"B": b64(b"\x00\x01")}}, "102"),
            record(
                "scores",
                "MODIFY",
                {"pk": {"N": "2E1"}, "sk": {"B": b64(b"\xff")}},
                "103",
                "NEW_AND_OLD_IMAGES",
            ),
        ]
    }


def test_handler_drops_exactly_the_records_items(lambda_env: Any) -> None:
    client, _ = lambda_env
    assert handler(event(), None) == {"batchItemFailures": []}
    dropped = {("users", "u0"), ("users", "u1"), ("scores", "1/0001"), ("scores", "20/ff")}
    for table, key in USERS + SCORES + OTHER:
        label = key["pk"].get("S") or f"{key['pk']['N']}/{key['sk']['B'].hex()}"
        assert cached(client, table, key) is ((table, label) not in dropped), (table, label)


def test_handler_is_one_redis_round_trip_per_batch(
    lambda_env: Any, redis_server: RedisServer, namespace: str
) -> None:
    client, _ = lambda_env
    redis_client, counting = counting_redis(redis_server.port)
    invalidator = lambda_handler.Invalidator(
        Settings.resolve({"namespace": namespace}), redis_client
    )
    # The library's own connection (built from the client's settings, so counted
    # too): its handshake is not the handler's.
    invalidator._ready()[1].ping()
    counting.sends = 0
    assert invalidator.apply(event()["Records"]) == []
    assert counting.sends == 1
    assert not cached(client, "users", {"pk": {"S": "u0"}})


def test_handler_with_redis_down_reports_every_record(
    lambda_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = lambda_env
    monkeypatch.setenv("DDBCACHE_REDIS_URL", f"redis://127.0.0.1:{free_port()}")
    lambda_handler.reset()
    answer = handler(event(), None)
    assert answer == {
        "batchItemFailures": [{"itemIdentifier": s} for s in ("100", "101", "102", "103")]
    }
    assert cached(client, "users", {"pk": {"S": "u0"}})  # nothing claimed that did not happen


def test_handler_reports_every_record_when_redis_dies_between_invocations(
    lambda_env: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RedisServer() as server:
        monkeypatch.setenv("DDBCACHE_REDIS_URL", server.url)
        lambda_handler.reset()
        assert handler({"Records": event()["Records"][:1]}, None) == {"batchItemFailures": []}
        server.stop()
        answer = handler(event(), None)
        assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == [
            "100",
            "101",
            "102",
            "103",
        ]
        server.start()
        assert handler(event(), None) == {"batchItemFailures": []}


def test_a_record_without_a_usable_key_drops_its_whole_table(lambda_env: Any) -> None:
    client, _ = lambda_env
    broken = record("users", "MODIFY", {"pk": {"S": "u2"}}, "200")
    broken["dynamodb"]["Keys"] = {"pk": {"B": "not base64!"}}
    assert handler({"Records": [broken]}, None) == {"batchItemFailures": []}
    assert not any(cached(client, "users", key) for _, key in USERS)
    assert cached(client, "other", OTHER[0][1])


@pytest.mark.parametrize(
    "bad",
    [{}, {"Records": "x"}, {"Records": [{"eventSource": "aws:sqs"}]}],
)
def test_handler_rejects_events_that_are_not_dynamodb_streams(lambda_env: Any, bad: Any) -> None:
    with pytest.raises(ValueError, match="DynamoDB Streams"):
        handler(bad, None)


def test_handler_rejects_a_record_without_its_source_arn(lambda_env: Any) -> None:
    bad = record("users", "INSERT", {"pk": {"S": "u0"}}, "1")
    del bad["eventSourceARN"]
    with pytest.raises(ValueError, match="ARN"):
        handler({"Records": [bad]}, None)


@pytest.mark.parametrize(
    "variable", ["AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE"]
)
def test_handler_finds_entries_behind_the_endpoint_botocore_resolves(
    variable: str,
    moto_url: str,
    redis_server: RedisServer,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    """DynamoDB Local or any other endpoint: the registered client keys its entries by
    the endpoint URL, and so does the handler when botocore's variables (or the config
    file's services section) name it."""
    for name in ("AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    if variable == "AWS_CONFIG_FILE":
        config = tmp_path / "config"
        config.write_text(
            "[default]\nservices = local\n\n"
            f"[services local]\ndynamodb =\n  endpoint_url = {moto_url}\n"
        )
        monkeypatch.setenv(variable, str(config))
    else:
        monkeypatch.setenv(variable, moto_url)
    monkeypatch.setenv("DDBCACHE_REDIS_URL", redis_server.url)
    monkeypatch.setenv("DDBCACHE_NAMESPACE", namespace)
    lambda_handler.reset()
    session = boto3.Session(region_name="us-east-1")
    registration = ddbcache_hooks.register(session, redis_server.url, namespace=namespace)
    try:
        client = session.client("dynamodb")
        assert client.meta.endpoint_url == moto_url
        make_table(client, "users")
        key = {"pk": {"S": "u0"}}
        client.put_item(TableName="users", Item={**key, "v": {"S": "old"}})
        client.get_item(TableName="users", Key=key)
        assert cached(client, "users", key)
        # A write the hooks do not see (another service): only the stream tells.
        boto3.Session(region_name="us-east-1").client("dynamodb").put_item(
            TableName="users", Item={**key, "v": {"S": "new"}}
        )
        assert client.get_item(TableName="users", Key=key)["Item"]["v"] == {"S": "old"}
        answer = handler({"Records": [record("users", "MODIFY", key, "200")]}, None)
        assert answer == {"batchItemFailures": []}
        read = client.get_item(TableName="users", Key=key)
        assert "CacheMetadata" not in read  # a miss ...
        assert read["Item"]["v"] == {"S": "new"}  # ... that read the new value
    finally:
        lambda_handler.reset()
        registration.unregister()
