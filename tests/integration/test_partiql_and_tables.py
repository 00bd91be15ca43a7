"""PartiQL writes, table-wide invalidation, query invalidation, settle window, strict mode."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import boto3
import pytest

import ddbcache_hooks
from ddbcache_hooks import TablePolicy
from tests.conftest import CallCounter, make_table, prove_read_access


@pytest.fixture
def c(session: boto3.Session, cache: ddbcache_hooks.Registration) -> Any:
    client = session.client("dynamodb")
    make_table(client, "single")
    make_table(client, "my-table")
    make_table(client, "pairs", ("pk", "S"), ("sk", "S"))
    for table in ("single", "my-table"):
        for pk in ("a", "b"):
            client.put_item(TableName=table, Item={"pk": {"S": pk}, "v": {"S": "old"}})
    for pk in ("a", "b"):
        client.put_item(
            TableName="pairs", Item={"pk": {"S": pk}, "sk": {"S": "1"}, "v": {"S": "old"}}
        )
    return client


def cached_value(client: Any, table: str, key: dict[str, Any]) -> tuple[bool, Any]:
    """(was it a hit, the item's v) after warming the entry."""
    response = client.get_item(TableName=table, Key=key)
    item = response.get("Item")
    return "CacheMetadata" in response, item.get("v", {}).get("S") if item else None


def warm(client: Any, table: str, key: dict[str, Any]) -> None:
    client.get_item(TableName=table, Key=key)
    assert cached_value(client, table, key)[0]


A = {"pk": {"S": "a"}}
B = {"pk": {"S": "b"}}
PAIR = {"pk": {"S": "a"}, "sk": {"S": "1"}}


@pytest.mark.parametrize(
    ("table", "key", "statement", "parameters", "expected"),
    [
        ("single", A, "UPDATE single SET v = 'new' WHERE pk = 'a'", None, "new"),
        ("my-table", A, "UPDATE \"my-table\" SET v = 'new' WHERE pk = 'a'", None, "new"),
        ("single", A, 'UPDATE "single" SET v = ? WHERE pk = ?', [{"S": "new"}, {"S": "a"}], "new"),
        (
            "pairs",
            PAIR,
            "UPDATE pairs SET v = ? WHERE pk = ? AND sk = ?",
            [{"S": "new"}, {"S": "a"}, {"S": "1"}],
            "new",
        ),
        ("pairs", PAIR, "UPDATE pairs SET v = 'new' WHERE sk = '1' AND pk = 'a'", None, "new"),
        ("single", A, "DELETE FROM single WHERE pk = 'a'", None, None),
        ("my-table", A, "DELETE FROM \"my-table\" WHERE pk = 'a'", None, None),
        (
            "single",
            {"pk": {"S": "c"}},
            "INSERT INTO single VALUE {'pk': 'c', 'v': 'new'}",
            None,
            "new",
        ),
        (
            "my-table",
            {"pk": {"S": "c"}},
            "INSERT INTO \"my-table\" VALUE {'pk': 'c', 'v': 'new'}",
            None,
            "new",
        ),
    ],
)
def test_partiql_statement_invalidates_its_item(
    c: Any, table: str, key: dict[str, Any], statement: str, parameters: Any, expected: Any
) -> None:
    other = {"pk": {"S": "b"}, "sk": {"S": "1"}} if table == "pairs" else B
    warm(c, table, key)
    warm(c, table, other)
    c.execute_statement(Statement=statement, **({"Parameters": parameters} if parameters else {}))
    assert cached_value(c, table, key) == (False, expected)
    assert cached_value(c, table, other) == (True, "old")  # other items keep their entries


def test_batch_execute_statement_and_transaction(c: Any) -> None:
    warm(c, "single", A)
    warm(c, "my-table", A)
    c.batch_execute_statement(
        Statements=[
            {"Statement": "UPDATE single SET v = 'batch' WHERE pk = 'a'"},
            {"Statement": "SELECT * FROM single WHERE pk = 'b'"},
        ]
    )
    assert cached_value(c, "single", A) == (False, "batch")
    c.execute_transaction(
        TransactStatements=[{"Statement": "UPDATE \"my-table\" SET v = 'tx' WHERE pk = 'a'"}]
    )
    assert cached_value(c, "my-table", A) == (False, "tx")


def test_unresolvable_statement_invalidates_the_whole_table(
    c: Any, cache: ddbcache_hooks.Registration, caplog: pytest.LogCaptureFixture
) -> None:
    warm(c, "pairs", PAIR)
    warm(c, "single", A)
    before = cache.stats()["table_invalidations"]  # CreateTable drops its table too
    with caplog.at_level(logging.WARNING, logger="ddbcache_hooks"):
        # No sort key in the WHERE: it does not pin one item of "pairs".
        c.execute_statement(Statement="UPDATE pairs SET v = 'all' WHERE pk = 'a'")
    assert "invalidating every entry of table pairs" in caplog.text
    assert cached_value(c, "pairs", PAIR) == (False, "all")
    assert cached_value(c, "single", A) == (True, "old")  # other tables untouched
    assert cache.stats()["table_invalidations"] == before + 1


def _pairs_query(pk: str) -> dict[str, Any]:
    return {
        "TableName": "pairs",
        "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": pk}},
    }


def _page_hits(c: Any) -> tuple[bool, bool]:
    """Whether partition a's and partition b's pages are served from the cache."""
    return tuple("CacheMetadata" in c.query(**_pairs_query(pk)) for pk in "ab")  # type: ignore[return-value]


def test_resolvable_statement_drops_only_its_partitions_pages(c: Any) -> None:
    _page_hits(c)
    assert _page_hits(c) == (True, True)
    c.execute_statement(Statement="UPDATE pairs SET v = 'new' WHERE pk = 'a' AND sk = '1'")
    assert _page_hits(c) == (False, True)
    c.execute_statement(
        Statement="UPDATE pairs SET v = ? WHERE pk = ? AND sk = ?",
        Parameters=[{"S": "newer"}, {"S": "b"}, {"S": "1"}],
    )
    page = c.query(**_pairs_query("b"))
    assert "CacheMetadata" not in page and page["Items"][0]["v"] == {"S": "newer"}


def test_unresolvable_statement_drops_every_page_of_its_table(c: Any) -> None:
    _page_hits(c)
    assert _page_hits(c) == (True, True)
    c.execute_statement(Statement="UPDATE pairs SET v = 'all' WHERE pk = 'a'")
    assert _page_hits(c) == (False, False)


def test_select_statements_pass_through_and_invalidate_nothing(
    c: Any, cache: ddbcache_hooks.Registration
) -> None:
    warm(c, "single", A)
    before = cache.stats()["invalidations"]
    for _ in range(2):
        out = c.execute_statement(Statement="SELECT * FROM single WHERE pk = 'a'")
        assert "CacheMetadata" not in out
    assert cache.stats()["invalidations"] == before
    assert cached_value(c, "single", A) == (True, "old")


def test_invalidate_table_drops_items_queries_and_scans(
    c: Any, cache: ddbcache_hooks.Registration
) -> None:
    query = {
        "TableName": "single",
        "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": "a"}},
    }
    warm(c, "single", A)
    c.query(**query)
    for _ in range(2):
        c.scan(TableName="single")
    assert "CacheMetadata" in c.query(**query) and "CacheMetadata" in c.scan(TableName="single")
    warm(c, "my-table", A)
    assert cache.invalidate_table("single") is True
    assert not cached_value(c, "single", A)[0]
    assert "CacheMetadata" not in c.query(**query)
    assert "CacheMetadata" not in c.scan(TableName="single")
    assert cached_value(c, "my-table", A)[0]


@pytest.fixture
def write_invalidated(session: boto3.Session, backend: Any, namespace: str) -> Any:
    registration = ddbcache_hooks.register(
        session,
        backend.client(),
        namespace=namespace,
        **backend.options,
        tables={
            "live": TablePolicy(query_invalidation="write"),
            "other": TablePolicy(query_invalidation="ttl"),
        },
    )
    client = session.client("dynamodb")
    make_table(client, "live")
    make_table(client, "other")
    yield client
    registration.unregister()


def test_query_invalidation_write_mode(write_invalidated: Any) -> None:
    c = write_invalidated
    for table in ("live", "other"):
        q = {
            "TableName": table,
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "a"}},
        }
        assert c.query(**q)["Count"] == 0
        assert "CacheMetadata" in c.query(**q)
        c.put_item(TableName=table, Item={"pk": {"S": "a"}, "v": {"S": "new"}})
        after = c.query(**q)
        if table == "live":
            assert "CacheMetadata" not in after and after["Items"][0]["v"] == {"S": "new"}
        else:
            assert "CacheMetadata" in after and after["Count"] == 0  # TTL-bounded


def test_query_invalidation_write_keeps_item_entries(write_invalidated: Any) -> None:
    c = write_invalidated
    c.put_item(TableName="live", Item={"pk": {"S": "x"}})
    c.put_item(TableName="live", Item={"pk": {"S": "y"}})
    warm(c, "live", {"pk": {"S": "x"}})
    c.put_item(TableName="live", Item={"pk": {"S": "y"}, "v": {"S": "2"}})
    assert "CacheMetadata" in c.get_item(TableName="live", Key={"pk": {"S": "x"}})


def test_settle_window_bounds_fills_after_a_write(
    session: boto3.Session, backend: Any, namespace: str
) -> None:
    settle_s = 1.0
    registration = ddbcache_hooks.register(
        session,
        backend.client(),
        namespace=namespace,
        **backend.options,
        settle_ms=int(settle_s * 1000),
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "tbl")
        prove_read_access(c, "tbl")
        # A fill is bounded only if it lands inside the window: on a machine so
        # loaded that the put and the read outlast it, the fill rightly gets the full
        # TTL, so that attempt does not count and another key is tried.
        for attempt in range(5):
            key = {"pk": {"S": f"settle-{attempt}"}}
            began = time.monotonic()
            c.put_item(TableName="tbl", Item=key)  # opens the window for this key
            c.get_item(TableName="tbl", Key=key)  # filled with at most the rest of it
            inside = time.monotonic() - began < settle_s
            peek = registration.peek("tbl", key)
            if inside:
                break
        else:
            pytest.fail("no put and read finished inside a 1 s settle window in 5 tries")
        assert peek.present and peek.settling, peek
        assert peek.ttl_s is not None and peek.ttl_s <= settle_s, peek
        assert "CacheMetadata" in c.get_item(TableName="tbl", Key=key)
        time.sleep(peek.ttl_s + 0.05)
        assert "CacheMetadata" not in c.get_item(TableName="tbl", Key=key)  # expired with it
        assert "CacheMetadata" in c.get_item(TableName="tbl", Key=key)  # now with the full TTL
        full = registration.peek("tbl", key)
        assert full.present and not full.settling and full.ttl_s is not None, full
        assert full.ttl_s > settle_s, full
    finally:
        registration.unregister()


def test_strict_mode_reads_misses_consistently(
    session: boto3.Session, backend: Any, namespace: str
) -> None:
    registration = ddbcache_hooks.register(
        session, backend.client(), namespace=namespace, **backend.options, consistency="strict"
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "tbl")
        c.put_item(TableName="tbl", Item=A)
        calls = CallCounter().attach(c)
        c.get_item(TableName="tbl", Key=A)
        c.query(
            TableName="tbl",
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "a"}},
        )
        c.batch_get_item(RequestItems={"tbl": {"Keys": [B]}})
        sent = [json.loads(body) for _, body in calls.bodies]
        assert sent[0]["ConsistentRead"] is True and sent[1]["ConsistentRead"] is True
        assert sent[2]["RequestItems"]["tbl"]["ConsistentRead"] is True
        hit = c.get_item(TableName="tbl", Key=A)
        assert "CacheMetadata" in hit and len(calls.bodies) == 3  # hits cost nothing more
    finally:
        registration.unregister()
