"""What the library reads from Redis and trusts: signed schemas and entries, foreign tokens.

Another application with write access to the namespace writes an unsigned key
schema, copies an old signed entry back after a write, or leaves a table token
the entry format cannot hold; two registrations with different signing keys
share one namespace.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import boto3
import pytest
import redis

import ddbcache_hooks
from ddbcache_hooks.schema import TableSchema
from tests.conftest import REGION, Backend, make_table

A = {"pk": {"S": "a"}}
KEY = b"k" * 32


def put(c: Any, value: str) -> None:
    c.put_item(TableName="tbl", Item={**A, "v": {"S": value}})


def read(c: Any) -> tuple[str, bool]:
    answer = c.get_item(TableName="tbl", Key=A)
    return answer["Item"]["v"]["S"], "CacheMetadata" in answer


def keys_of_type(raw: redis.Redis, namespace: str, kind: bytes) -> list[bytes]:
    return [k for k in raw.scan_iter(match=f"{namespace}*") if raw.type(k) == kind]


def entry_hash(raw: redis.Redis, namespace: str) -> bytes:
    (key,) = [
        k
        for k in keys_of_type(raw, namespace, b"hash")
        if any(f.startswith(b"e:") for f in raw.hkeys(k))
    ]
    return key


def test_an_unsigned_schema_written_by_someone_else_is_not_trusted(
    aws: None, real_redis: Backend, namespace: str
) -> None:
    raw = real_redis.client()
    first = boto3.Session(region_name=REGION)
    registration = ddbcache_hooks.register(
        first, real_redis.client(), namespace=namespace, signing_key=KEY
    )
    c = first.client("dynamodb")
    make_table(c, "tbl")
    put(c, "1")  # learns the key schema (DescribeTable) and shares it, signed
    assert [read(c), read(c)] == [("1", False), ("1", True)]
    registration.unregister()

    (schema_key,) = keys_of_type(raw, namespace, b"string")
    raw.set(schema_key, TableSchema(("v",)).encode())  # "v" is not the key

    # A freshly started process: nothing known but what Redis holds.
    second = boto3.Session(region_name=REGION)
    registration = ddbcache_hooks.register(
        second, real_redis.client(), namespace=namespace, signing_key=KEY
    )
    try:
        c = second.client("dynamodb")
        put(c, "2")  # must drop the entry of A, not of {"v": "2"}
        assert [read(c), read(c)] == [("2", False), ("2", True)]
        assert registration.stats()["corrupt_entries"] == 1
    finally:
        registration.unregister()


@pytest.mark.parametrize("settle_ms", [0, 1000])
def test_an_old_signed_entry_copied_back_after_a_write_is_a_miss(
    session: boto3.Session, real_redis: Backend, namespace: str, settle_ms: int
) -> None:
    raw = real_redis.client()
    registration = ddbcache_hooks.register(
        session, real_redis.client(), namespace=namespace, signing_key=KEY, settle_ms=settle_ms
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "tbl")
        put(c, "1")
        assert [read(c), read(c)] == [("1", False), ("1", True)]
        key = entry_hash(raw, namespace)
        saved = {
            f: (b"9" * 15 if f.startswith(b"x:") else v)  # and made to last
            for f, v in raw.hgetall(key).items()
            if f.startswith((b"e:", b"x:"))
        }
        put(c, "2")
        raw.hset(key, mapping=saved)  # the old signed entry, back in its place
        assert read(c)[0] == "2"
        # With a marker (settle_ms) the entry meets a new generation: its signature
        # fails; without one it lands in a hash no lookup made, which is dropped.
        assert registration.stats()["corrupt_entries"] == (1 if settle_ms else 0)
    finally:
        registration.unregister()


def test_a_table_token_too_long_for_an_entry_is_replaced_and_counted(
    session: boto3.Session, real_redis: Backend, namespace: str
) -> None:
    raw = real_redis.client()
    registration = ddbcache_hooks.register(session, real_redis.client(), namespace=namespace)
    try:
        c = session.client("dynamodb")
        make_table(c, "tbl")
        put(c, "1")
        assert [read(c), read(c)] == [("1", False), ("1", True)]
        (tokens,) = [k for k in keys_of_type(raw, namespace, b"hash") if raw.hexists(k, "i")]
        raw.hset(tokens, mapping={"i": b"t" * 300, "q": b"q" * 300})  # another application's
        assert [read(c), read(c)] == [("1", False), ("1", True)]  # no exception, then cached
        assert registration.stats()["errors"] == 1
        assert len(raw.hget(tokens, "i") or b"") <= 255
    finally:
        registration.unregister()


def test_registrations_with_different_signing_keys_in_one_namespace_are_reported_once(
    aws: None, real_redis: Backend, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    sessions = [boto3.Session(region_name=REGION) for _ in range(2)]
    keys = [b"1" * 32, b"2" * 32]
    registrations = [
        ddbcache_hooks.register(s, real_redis.client(), namespace=namespace, signing_key=k)
        for s, k in zip(sessions, keys, strict=True)
    ]
    try:
        clients = [s.client("dynamodb") for s in sessions]
        make_table(clients[0], "tbl")
        put(clients[0], "1")
        with caplog.at_level(logging.WARNING, logger="ddbcache_hooks"):
            for _ in range(5):
                for c in clients:
                    assert read(c)[0] == "1"  # each side answers, neither raises
        reports = [
            r.getMessage() for r in caplog.records if "different signing_key" in r.getMessage()
        ]
        assert len(reports) == 2, reports  # once by each side, naming its own key
        ids = {found[1] for m in reports if (found := re.search("key id is ([0-9a-f]+)", m))}
        assert len(ids) == 2
        assert all(repr(namespace) in m and "same signing_key" in m for m in reports)
    finally:
        for registration in registrations:
            registration.unregister()
