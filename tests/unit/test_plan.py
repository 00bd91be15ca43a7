"""Planning without I/O: plain dicts in, plans out."""

from __future__ import annotations

from typing import Any

import pytest

from ddbcache_hooks.config import Settings, TablePolicy
from ddbcache_hooks.keys import KeyLayout, Location, TableRef
from ddbcache_hooks.plan import HIT, Planner, ReadPlan, WritePlan, shape_miss_request
from ddbcache_hooks.policy import ReadKind
from ddbcache_hooks.writes import WriteSet

KEY = {"pk": {"S": "a"}}


#: A client of the AWS partition in us-east-1, account unknown.
HERE = Location("aws", "us-east-1")


class LocalPlanner(Planner):
    """Plans for a client in HERE unless told otherwise."""

    def plan(  # type: ignore[override]
        self, operation: str, params: Any, location: Location = HERE
    ) -> Any:
        return super().plan(operation, params, location)


def planner(**options: Any) -> LocalPlanner:
    settings = Settings.resolve(options)
    return LocalPlanner(settings, KeyLayout(settings.namespace))


def test_get_item_plan() -> None:
    plan = planner(ttl_config={"item": 10, "item_negative": 5}).plan(
        "GetItem", {"TableName": "t", "Key": KEY, "ReturnConsumedCapacity": "TOTAL"}
    )
    assert isinstance(plan, ReadPlan)
    (slot,) = plan.slots
    assert slot.ttl_ms == 10_000 and slot.negative_ttl_ms == 5_000 and slot.field == ""
    assert plan.capacity == "TOTAL" and plan.kind is ReadKind.ITEM
    projected = planner().plan(
        "GetItem", {"TableName": "t", "Key": KEY, "ProjectionExpression": "a"}
    )
    assert isinstance(projected, ReadPlan)
    assert projected.slots[0].key == slot.key and projected.slots[0].field != ""


@pytest.mark.parametrize(
    "params",
    [
        {"TableName": "t", "Key": KEY, "ConsistentRead": True},
        {"TableName": "t", "Key": {"pk": "not an attribute value"}},
        {"TableName": "t"},
        {"Key": KEY},
        {"TableName": "t", "Key": {"pk": {"N": "NaN"}}},
    ],
)
def test_uncacheable_reads_pass_through(params: dict[str, Any]) -> None:
    assert planner().plan("GetItem", params) is None


def test_unknown_and_bypass_operations_have_no_plan() -> None:
    assert planner().plan("DescribeTable", {"TableName": "t"}) is None
    assert planner().plan("TransactGetItems", {"TransactItems": []}) is None


def test_writes_plan_lazily() -> None:
    plan = planner().plan("PutItem", {"TableName": "t", "Item": KEY})
    assert isinstance(plan, WritePlan) and plan.invalidation is None


def test_table_filters_and_policies() -> None:
    p = planner(
        include_tables=["orders*", "users"],
        exclude_tables=["orders_archive"],
        tables={
            "orders*": TablePolicy(ttl=60, operations={"Scan": False}),
            "orders_hot": TablePolicy(ttl_config={"item": 5}, scan_admission=3),
        },
    )
    assert p.plan("GetItem", {"TableName": "other", "Key": KEY}) is None
    assert p.plan("GetItem", {"TableName": "orders_archive", "Key": KEY}) is None
    assert p.plan("Scan", {"TableName": "orders"}) is None
    hot = p.plan("GetItem", {"TableName": "orders_hot", "Key": KEY})
    assert isinstance(hot, ReadPlan) and hot.slots[0].ttl_ms == 5_000
    assert hot.slots[0].negative_ttl_ms == 60_000  # from the less specific pattern
    users = p.plan("Scan", {"TableName": "users"})
    assert isinstance(users, ReadPlan) and users.slots[0].admission == 2


def test_query_and_scan_slots() -> None:
    p = planner(ttl_config={"query": 7, "scan": 9})
    query = p.plan(
        "Query",
        {
            "TableName": "t",
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "a"}},
        },
    )
    scan = p.plan("Scan", {"TableName": "t"})
    assert isinstance(query, ReadPlan) and isinstance(scan, ReadPlan)
    assert query.slots[0].ttl_ms == 7_000 and query.slots[0].admission == 1
    assert scan.slots[0].ttl_ms == 9_000 and scan.slots[0].admission == 2
    segment0 = p.plan("Scan", {"TableName": "t", "Segment": 0, "TotalSegments": 2})
    segment1 = p.plan("Scan", {"TableName": "t", "Segment": 1, "TotalSegments": 2})
    assert isinstance(segment0, ReadPlan) and isinstance(segment1, ReadPlan)
    assert segment0.slots[0].key != segment1.slots[0].key


def test_batch_plan_and_miss_request() -> None:
    params = {
        "RequestItems": {
            "a": {"Keys": [{"pk": {"S": "1"}}, {"pk": {"S": "2"}}]},
            "b": {"Keys": [{"pk": {"S": "3"}}], "ConsistentRead": True},
        }
    }
    plan = planner().plan("BatchGetItem", params)
    assert isinstance(plan, ReadPlan)
    assert [(s.label, s.position) for s in plan.slots] == [("a", 0), ("a", 1)]
    assert plan.batch is not None and plan.batch.passthrough == {"b": (1, True)}
    plan.slots[0].state = HIT
    body = {"RequestItems": {k: dict(v) for k, v in params["RequestItems"].items()}}
    assert shape_miss_request(plan, body)
    assert body["RequestItems"]["a"]["Keys"] == [{"pk": {"S": "2"}}]
    assert body["RequestItems"]["b"]["Keys"] == [{"pk": {"S": "3"}}]


@pytest.mark.parametrize(
    "request_items",
    [
        {"a": {"Keys": [{"pk": {"S": "1"}}, {"pk": {"S": "1"}}]}},  # duplicate keys
        {"a": {"Keys": [{"pk": {"N": "1"}}, {"pk": {"N": "1.0"}}]}},  # duplicate by value
        {"a": {"Keys": []}},
        {"a": {"Keys": [{"pk": {"S": str(i)}} for i in range(101)]}},  # over the limit
    ],
)
def test_batches_dynamodb_rejects_pass_through(request_items: dict[str, Any]) -> None:
    assert planner().plan("BatchGetItem", {"RequestItems": request_items}) is None


def test_strict_mode_reads_misses_consistently() -> None:
    plan = planner(consistency="strict").plan("GetItem", {"TableName": "t", "Key": KEY})
    assert isinstance(plan, ReadPlan)
    body: dict[str, Any] = {"TableName": "t", "Key": KEY}
    assert shape_miss_request(plan, body) and body["ConsistentRead"] is True
    eventual = planner().plan("GetItem", {"TableName": "t", "Key": KEY})
    assert isinstance(eventual, ReadPlan)
    assert not shape_miss_request(eventual, {"TableName": "t", "Key": KEY})


def test_write_extractors() -> None:
    from ddbcache_hooks.policy import POLICIES

    def written(op: str, params: dict[str, Any], response: Any = None) -> WriteSet:
        extractor = POLICIES[op].writes
        assert extractor is not None
        return extractor(params, response, HERE)

    t = TableRef("aws", "us-east-1", "", "t")
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/t"
    # The client's own account is unknown: the ARN may be the plain name's table, or not.
    assert [r.table for r in written("DeleteItem", {"TableName": arn, "Key": KEY}).items] == [
        t,
        t._replace(account="123456789012"),
    ]
    batch = {
        "RequestItems": {
            "t": [
                {"PutRequest": {"Item": {"pk": {"S": "1"}, "v": {"S": "x"}}}},
                {"DeleteRequest": {"Key": {"pk": {"N": "2.0"}}}},
            ]
        }
    }
    assert len(written("BatchWriteItem", batch).items) == 2
    unprocessed = {"UnprocessedItems": {"t": [{"DeleteRequest": {"Key": {"pk": {"N": "2"}}}}]}}
    remaining = written("BatchWriteItem", batch, unprocessed).items
    assert [r.is_key for r in remaining] == [False]
    transact = {
        "TransactItems": [
            {"ConditionCheck": {"TableName": "t", "Key": KEY, "ConditionExpression": "x"}},
            {"Update": {"TableName": "t", "Key": KEY, "UpdateExpression": "SET a = :a"}},
        ]
    }
    assert [(r.table, r.is_key) for r in written("TransactWriteItems", transact).items] == [
        (t, True)
    ]
    partiql = written("ExecuteStatement", {"Statement": "DELETE FROM t WHERE pk = 'a'"})
    assert partiql.items[0].attrs == {"pk": {"S": "a"}}
    assert not written("ExecuteStatement", {"Statement": "SELECT * FROM t"})
    unresolved = written("ExecuteStatement", {"Statement": "DELETE FROM t WHERE pk > 'a'"})
    assert t in unresolved.tables and not unresolved.items


@pytest.mark.parametrize(
    "extra",
    [
        {"ReturnConsumedCapacity": "BOGUS"},
        {"ReturnConsumedCapacity": None},
        {"ConsistentRead": "false"},
        {"ConsistentRead": 0},
    ],
)
def test_values_left_out_of_the_variant_are_validated(extra: dict[str, Any]) -> None:
    """DynamoDB rejects these; the variant does not see them, so the plan must."""
    assert planner().plan("GetItem", {"TableName": "t", "Key": KEY, **extra}) is None
    assert planner().plan("Query", {"TableName": "t", **extra}) is None
    batch = {"t": {"Keys": [KEY], **extra}}
    assert planner().plan("BatchGetItem", {"RequestItems": batch}) is None
    assert planner().plan("BatchGetItem", {"RequestItems": {"t": {"Keys": [KEY]}}, **extra}) is None
    valid = {"ReturnConsumedCapacity": "INDEXES", "ConsistentRead": False}
    assert planner().plan("GetItem", {"TableName": "t", "Key": KEY, **valid}) is not None


def test_reads_of_an_arn_plan_by_the_own_account() -> None:
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/t"
    assert planner().plan("GetItem", {"TableName": arn, "Key": KEY}) is None
    known = planner().plan(
        "GetItem", {"TableName": arn, "Key": KEY}, HERE._replace(own_account="123456789012")
    )
    plain = planner().plan("GetItem", {"TableName": "t", "Key": KEY})
    assert isinstance(known, ReadPlan) and isinstance(plain, ReadPlan)
    assert known.slots[0].key == plain.slots[0].key and known.table == plain.table
    batch = planner().plan("BatchGetItem", {"RequestItems": {arn: {"Keys": [KEY]}}})
    assert isinstance(batch, ReadPlan) and batch.batch is not None
    assert batch.batch.passthrough == {arn: (1, False)} and not batch.slots


def test_unreadable_writes_fall_back_to_their_tables() -> None:
    from ddbcache_hooks.writes import tables_named

    t = TableRef("aws", "us-east-1", "", "t")
    assert set(tables_named({"TableName": "t", "Item": "junk"}, HERE).tables) == {t}
    both = tables_named({"RequestItems": {"t": [{}], "u": None}}, HERE)
    assert set(both.tables) == {t, t._replace(name="u")}
    nothing = tables_named({"Item": {}}, HERE)
    assert not nothing and nothing.unknown
    statement = tables_named({"Statement": "DELETE FROM t WHERE"}, HERE)
    assert set(statement.tables) == {t}


def _page(p: Planner, **params: Any) -> Any:
    plan = p.plan("Query", {"TableName": "t", **params}, HERE)
    assert isinstance(plan, ReadPlan)
    return plan.slots[0]


def test_query_pages_hang_off_their_partition_when_it_is_certain() -> None:
    from ddbcache_hooks.plan import PARTITION_TOKEN, QUERY_TOKEN
    from ddbcache_hooks.schema import TableSchema

    t = TableRef("aws", "us-east-1", "", "t")
    schemas = {t: TableSchema(("pk", "sk"), frozenset({"gsi"}), frozenset({"lsi"}), True)}
    settings = Settings.resolve({})
    p = Planner(settings, KeyLayout(settings.namespace), schemas.get)
    values = {":p": {"N": "1"}, ":s": {"N": "2"}}
    a = _page(p, KeyConditionExpression="pk = :p AND sk > :s", ExpressionAttributeValues=values)
    partition_a = p.partition_key(t, ("pk", {"N": "1.0"}))
    table_wide = p.partition_key(t, None)
    assert a.token_kind == PARTITION_TOKEN and a.partition_key == partition_a
    both = _page(p, KeyConditionExpression="sk = :s AND pk = :p", ExpressionAttributeValues=values)
    assert both.partition_key == partition_a  # the schema says which equality is the partition
    lsi = _page(
        p, IndexName="lsi", KeyConditionExpression="pk = :p", ExpressionAttributeValues=values
    )
    assert lsi.partition_key == partition_a
    legacy = _page(
        p, KeyConditions={"pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"N": "1"}]}}
    )
    assert legacy.partition_key == partition_a
    for uncertain in (
        {"IndexName": "gsi", "KeyConditionExpression": "pk = :p"},  # a GSI's partition differs
        {"IndexName": "unknown", "KeyConditionExpression": "pk = :p"},
        {"KeyConditionExpression": "(pk = :p)"},  # not read: not narrowed
        {"KeyConditionExpression": "sk = :s"},  # no equality on the partition key
    ):
        page = _page(p, **uncertain, ExpressionAttributeValues=values)
        assert page.token_kind == PARTITION_TOKEN and page.partition_key == table_wide
    scan = p.plan("Scan", {"TableName": "t"}, HERE)
    assert isinstance(scan, ReadPlan) and scan.slots[0].partition_key == table_wide
    # Without a known schema only a single equality is certain to be the partition key.
    bare = Planner(settings, KeyLayout(settings.namespace))
    one = _page(bare, KeyConditionExpression="pk = :p", ExpressionAttributeValues=values)
    assert one.partition_key == partition_a
    two = _page(
        bare, KeyConditionExpression="pk = :p AND sk = :s", ExpressionAttributeValues=values
    )
    assert two.partition_key == table_wide
    # The key_schema option names the partition key of the tables so named, anywhere.
    configured = Planner(settings, KeyLayout(settings.namespace), None, {"t": TableSchema(("pk",))})
    named = _page(
        configured, KeyConditionExpression="pk = :p AND sk = :s", ExpressionAttributeValues=values
    )
    assert named.partition_key == partition_a
    # A schema learned for the table in one Region says nothing of another Region's.
    there = p.plan(
        "Query",
        {
            "TableName": "t",
            "KeyConditionExpression": "pk = :p AND sk = :s",
            "ExpressionAttributeValues": values,
        },
        HERE._replace(region="eu-west-1"),
    )
    assert isinstance(there, ReadPlan) and there.slots[0].partition_key == p.partition_key(
        t._replace(region="eu-west-1"), None
    )
    # "write" mode: every page hangs off the table-wide token; "ttl": only the TTL.
    write = planner(query_invalidation="write")
    assert (
        _page(
            write, KeyConditionExpression="pk = :p", ExpressionAttributeValues=values
        ).partition_key
        == table_wide
    )
    ttl = _page(
        planner(query_invalidation="ttl"),
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues=values,
    )
    assert ttl.token_kind == QUERY_TOKEN and ttl.partition_key == ""


@pytest.mark.parametrize("consistency", ["eventual", "strict"])
def test_fills_keep_the_settle_window_unless_read_consistently(consistency: str) -> None:
    """Strict mode reads misses consistently, except on a GSI (DynamoDB rejects it)."""
    from ddbcache_hooks.plan import LEASED
    from ddbcache_hooks.protocol import Protocol

    protocol = Protocol(Settings.resolve({"consistency": consistency, "settle_ms": 700}))
    query = {"TableName": "t", "KeyConditionExpression": "pk = :p"}
    settled = {}
    for index in (None, "gsi"):
        params = {**query, "IndexName": index} if index else query
        plan = protocol.planner.plan("Query", params, HERE)
        assert isinstance(plan, ReadPlan)
        plan.slots[0].state, plan.slots[0].lease = LEASED, "L"
        (fill,) = protocol.completed(plan, {"Items": [], "Count": 0}, True)
        settled[index] = fill.settle_ms
    strict = consistency == "strict"
    assert settled == {None: 0 if strict else 700, "gsi": 700}
