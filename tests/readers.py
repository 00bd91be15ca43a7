"""A second process that reads through its own registration, on command.

Fault tests write in the test process and count, in this one, the reads that
return a value older than a write that has already returned.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
from typing import Any

import boto3

import ddbcache_hooks
from tests.conftest import REGION

A = {"pk": {"S": "a"}}


def _reader(
    conn: multiprocessing.connection.Connection,
    moto_url: str,
    redis_url: str,
    namespace: str,
    options: dict[str, Any],
) -> None:
    """The second process: answers ("get" | "query", n) with n reads (value, from cache)."""
    session = boto3.Session(region_name=REGION)
    registration = ddbcache_hooks.register(session, redis_url, namespace=namespace, **options)
    client = session.client("dynamodb", endpoint_url=moto_url)
    while True:
        command = conn.recv()
        if command is None:
            return
        kind, count = command
        if kind == "stats":
            conn.send(registration.stats())
            continue
        out = []
        for _ in range(count):
            if kind == "get":
                answer = client.get_item(TableName="tbl", Key=A)
                item = answer.get("Item")
            else:
                answer = client.query(
                    TableName="tbl",
                    KeyConditionExpression="pk = :p",
                    ExpressionAttributeValues={":p": A["pk"]},
                )
                item = answer["Items"][0] if answer["Items"] else None
            out.append((item["v"]["S"] if item else None, "CacheMetadata" in answer))
        conn.send(out)


class Reader:
    def __init__(self, moto_url: str, redis_url: str, namespace: str, **options: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_reader, args=(child, moto_url, redis_url, namespace, options), daemon=True
        )
        self.process.start()

    def read(self, kind: str = "get", count: int = 1) -> list[tuple[str | None, bool]]:
        self.conn.send((kind, count))
        if not self.conn.poll(60):
            raise AssertionError("the reader process did not answer")
        result: list[tuple[str | None, bool]] = self.conn.recv()
        return result

    def stats(self) -> dict[str, Any]:
        self.conn.send(("stats", 0))
        result: dict[str, Any] = self.conn.recv()
        return result

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
