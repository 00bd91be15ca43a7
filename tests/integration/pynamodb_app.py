"""A PynamoDB application, run in process (cache registered in code) and as a script (cache
switched on by ``DDBCACHE_*`` variables). It prints, per step, how many requests really went
to DynamoDB and what the application saw.

Run as a script: ``python -m tests.integration.pynamodb_app <table>``; the table must exist.
"""

from __future__ import annotations

import collections
import json
import sys
from typing import Any

from pynamodb.attributes import NumberAttribute, UnicodeAttribute
from pynamodb.connection import Connection
from pynamodb.exceptions import DoesNotExist
from pynamodb.models import Model
from pynamodb.transactions import TransactGet, TransactWrite

REGION = "us-east-1"


def model_for(table: str) -> type[Model]:
    """A model class of its own per table (PynamoDB caches its connection on the class)."""

    class Thing(Model):
        class Meta:
            table_name = table
            region = REGION

        pk = UnicodeAttribute(hash_key=True)
        sk = NumberAttribute(range_key=True)
        v = NumberAttribute(null=True)

    return Thing


def connection_of(model: type[Model]) -> Connection:
    """The PynamoDB connection (and so botocore session and client) behind a model."""
    return model._get_connection().connection


class Requests:
    """Counts requests that really went out to DynamoDB, per operation."""

    def __init__(self, client: Any) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        client.meta.events.register("before-send.dynamodb", self._count)

    def _count(self, event_name: str, **_: Any) -> None:
        self.calls[event_name.rsplit(".", 1)[-1]] += 1

    def take(self) -> dict[str, int]:
        taken = dict(self.calls)
        self.calls.clear()
        return taken


def scenario(thing: Any) -> list[list[Any]]:
    """``[step, {operation: requests}, what the application saw]`` per step."""
    requests = Requests(connection_of(thing).client)
    transactions = connection_of(thing)
    steps: list[list[Any]] = []

    def step(name: str, value: Any) -> None:
        steps.append([name, requests.take(), value])

    def get_v(sk: int) -> Any:
        try:
            return thing.get("a", sk).v
        except DoesNotExist:
            return "DoesNotExist"

    thing("a", 1, v=1).save()
    thing("a", 2, v=2).save()
    step("save", None)
    step("get miss", get_v(1))
    step("get hit", get_v(1))
    step("query miss", [t.v for t in thing.query("a")])
    step("query hit", [t.v for t in thing.query("a")])
    for attempt in ("scan miss", "scan admitted", "scan hit"):
        step(attempt, sorted(t.v for t in thing.scan()))
    keys = [("a", 1), ("a", 2), ("a", 3)]
    step("batch_get: 1 hit, 2 misses", sorted(t.v for t in thing.batch_get(keys)))
    step("batch_get hit", sorted(t.v for t in thing.batch_get(keys)))

    item = thing.get("a", 1)
    requests.take()
    item.update(actions=[thing.v.set(10)])
    step("update", None)
    step("get after update", get_v(1))
    item.v = 11
    item.save()
    step("save", None)
    step("get after save", get_v(1))
    step("query after writes", [t.v for t in thing.query("a")])

    with TransactWrite(connection=transactions) as transaction:
        transaction.update(thing("a", 2), actions=[thing.v.set(20)])
    step("transact_write", None)
    step("get after transact_write", get_v(2))
    for attempt in ("transact_get", "transact_get again"):
        with TransactGet(connection=transactions) as reader:
            future = reader.get(thing, "a", 2)
        step(attempt, future.get().v)

    thing("a", 2).delete()
    step("delete", None)
    step("get after delete", get_v(2))
    step("get absent again", get_v(2))
    return steps


def expected() -> list[list[Any]]:
    """What every cached run shows: hits, invalidation and read-your-writes."""
    return [
        # The first write learns the table's key schema (once, then kept in Redis).
        ["save", {"DescribeTable": 1, "PutItem": 2}, None],
        ["get miss", {"GetItem": 1}, 1],
        ["get hit", {}, 1],
        ["query miss", {"Query": 1}, [1, 2]],
        ["query hit", {}, [1, 2]],
        ["scan miss", {"Scan": 1}, [1, 2]],
        ["scan admitted", {"Scan": 1}, [1, 2]],
        ["scan hit", {}, [1, 2]],
        ["batch_get: 1 hit, 2 misses", {"BatchGetItem": 1}, [1, 2]],
        ["batch_get hit", {}, [1, 2]],
        ["update", {"UpdateItem": 1}, None],
        ["get after update", {"GetItem": 1}, 10],
        ["save", {"PutItem": 1}, None],
        ["get after save", {"GetItem": 1}, 11],
        ["query after writes", {"Query": 1}, [11, 2]],
        ["transact_write", {"TransactWriteItems": 1}, None],
        ["get after transact_write", {"GetItem": 1}, 20],
        ["transact_get", {"TransactGetItems": 1}, 20],
        ["transact_get again", {"TransactGetItems": 1}, 20],
        ["delete", {"DeleteItem": 1}, None],
        ["get after delete", {"GetItem": 1}, "DoesNotExist"],
        ["get absent again", {}, "DoesNotExist"],
    ]


if __name__ == "__main__":
    print(json.dumps(scenario(model_for(sys.argv[1]))))
