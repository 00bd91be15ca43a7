"""Canonical keys: numbers by value, binary by bytes, no collisions, deny-list variants."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from ddbcache_hooks import expressions, keys
from ddbcache_hooks.expressions import variant
from ddbcache_hooks.keys import KeyLayout, NotCanonical
from tests.botocore_compat import CREDENTIALS_CARRY_ACCOUNT

T = keys.TableRef("aws", "us-east-1", "", "t")


@pytest.mark.parametrize(
    ("spellings", "canonical"),
    [
        (["1", "1.0", "1E0", "01", "1.000", "0.1e1", "+1"], "1e0"),
        (["0", "-0", "0.000", "0E10"], "0"),
        (["-12.50", "-1.25E1", "-0012.5"], "-125e-1"),
        (["100", "1E2", "1e+2", "100.0"], "1e2"),
        (["0.001", "1e-3"], "1e-3"),
    ],
)
def test_numbers_are_canonical_by_value(spellings: list[str], canonical: str) -> None:
    assert {keys.canonical_number(s) for s in spellings} == {canonical}


def test_38_digit_numbers_are_not_rounded() -> None:
    a = "12345678901234567890123456789012345678"
    b = "12345678901234567890123456789012345679"
    assert keys.canonical_number(a) != keys.canonical_number(b)


@pytest.mark.parametrize("bad", ["abc", "", "NaN", "Infinity", "1e", None])
def test_bad_numbers_are_rejected(bad: Any) -> None:
    with pytest.raises(NotCanonical):
        keys.canonical_number(bad)


def test_item_digest_ignores_attribute_order_and_number_spelling() -> None:
    a = keys.item_digest(T, {"pk": {"S": "x"}, "sk": {"N": "1.0"}})
    b = keys.item_digest(T, {"sk": {"N": "1"}, "pk": {"S": "x"}})
    assert a == b


def test_binary_keys_compare_by_bytes() -> None:
    assert keys.item_digest(T, {"pk": {"B": b"abc"}}) == keys.item_digest(T, {"pk": {"B": "abc"}})
    assert keys.item_digest(T, {"pk": {"B": b"abc"}}) != keys.item_digest(T, {"pk": {"S": "abc"}})


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # A string that contains what a naive join would put between pk and sk.
        ({"pk": {"S": "a:sk:b"}}, {"pk": {"S": "a"}, "sk": {"S": "b"}}),
        ({"pk": {"S": "a"}, "sk": {"S": ""}}, {"pk": {"S": "a"}}),
        ({"pk": {"S": "1"}}, {"pk": {"N": "1"}}),
        ({"pk": {"S": "ab"}, "sk": {"S": "c"}}, {"pk": {"S": "a"}, "sk": {"S": "bc"}}),
        ({"a": {"S": "x"}}, {"b": {"S": "x"}}),
        ({"pk": {"B": b"\x00"}}, {"pk": {"B": b""}}),
    ],
)
def test_distinct_keys_never_collide(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert keys.item_digest(T, a) != keys.item_digest(T, b)


def test_tables_separate_items() -> None:
    key = {"pk": {"S": "x"}}
    assert keys.item_digest(T._replace(name="a"), key) != keys.item_digest(
        T._replace(name="b"), key
    )


def test_no_collisions_over_many_generated_keys() -> None:
    values = ["", "a", "a:", ":a", "1", "01", "#", "\x00", "é"]
    seen = {}
    for pk, sk in itertools.product(values, repeat=2):
        for sk_type in ("S", "B"):
            sk_value: Any = sk.encode() if sk_type == "B" else sk
            key = {"pk": {"S": pk}, "sk": {sk_type: sk_value}}
            digest = keys.item_digest(T, key)
            assert digest not in seen, (key, seen.get(digest))
            seen[digest] = key


@pytest.mark.parametrize(
    "bad",
    [{}, {"pk": "x"}, {"pk": {"S": 1}}, {"pk": {"X": "1"}}, {"pk": {"S": "a", "N": "1"}}],
)
def test_malformed_keys_are_rejected(bad: Any) -> None:
    with pytest.raises(NotCanonical):
        keys.item_digest(T, bad)


def test_sets_are_order_insensitive_but_keep_duplicates() -> None:
    assert keys.canonical_value({"SS": ["b", "a"]}) == keys.canonical_value({"SS": ["a", "b"]})
    assert keys.canonical_value({"NS": ["1.0", "2"]}) == keys.canonical_value({"NS": ["2", "1"]})
    assert keys.canonical_value({"SS": ["a", "a"]}) != keys.canonical_value({"SS": ["a"]})


def test_table_arn_is_reduced_to_name() -> None:
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders"
    assert keys.table_name(arn) == "Orders"
    assert keys.table_name(arn + "/index/gsi") == "Orders"
    assert keys.table_name("Orders") == "Orders"
    with pytest.raises(NotCanonical):
        keys.table_name("arn:aws:s3:::bucket")


QUERY = {
    "TableName": "t",
    "KeyConditionExpression": "#n0 = :v0",
    "ExpressionAttributeNames": {"#n0": "pk"},
    "ExpressionAttributeValues": {":v0": {"S": "a"}},
}


def test_variant_ignores_only_the_deny_list() -> None:
    base = variant(QUERY, {"ReturnConsumedCapacity"})
    assert variant({**QUERY, "ReturnConsumedCapacity": "TOTAL"}, {"ReturnConsumedCapacity"}) == base
    for changed in (
        {"Limit": 1},
        {"ScanIndexForward": False},
        {"IndexName": "gsi"},
        {"Select": "COUNT"},
        {"ExclusiveStartKey": {"pk": {"S": "a"}}},
        {"ConsistentRead": True},
        {"Segment": 0, "TotalSegments": 2},
        {"SomeFutureParameter": "x"},
    ):
        assert variant({**QUERY, **changed}, {"ReturnConsumedCapacity"}) != base, changed


def test_variant_substitutes_placeholders() -> None:
    by_hand = {
        "TableName": "t",
        "KeyConditionExpression": "pk=:pk",
        "ExpressionAttributeValues": {":pk": {"S": "a"}},
    }
    assert variant(by_hand, set()) == variant(QUERY, set())
    other_value = {**by_hand, "ExpressionAttributeValues": {":pk": {"S": "b"}}}
    assert variant(other_value, set()) != variant(QUERY, set())


@pytest.mark.parametrize(
    "params",
    [
        # A provided value nobody uses: DynamoDB rejects it, so it gets its own entry.
        {**QUERY, "ExpressionAttributeValues": {":v0": {"S": "a"}, ":unused": {"S": "b"}}},
        # A placeholder without a value.
        {**QUERY, "ExpressionAttributeValues": {}},
        # Text the tokenizer does not know falls back to the raw form.
        {**QUERY, "FilterExpression": "a = :v0 ; DROP"},
    ],
)
def test_unresolvable_variants_are_kept_apart(params: dict[str, Any]) -> None:
    assert variant(params, set()) != variant(QUERY, set())
    assert variant(params, set())[0] == "raw"


def test_keywords_functions_and_names_are_distinct() -> None:
    def canon(expression: str, names: dict[str, str] | None = None) -> Any:
        params = {"FilterExpression": expression, "ExpressionAttributeNames": names or {}}
        if names is None:
            params.pop("ExpressionAttributeNames")
        return variant(params, set())

    assert canon("size(a) > b") != canon("#s(a) > b", {"#s": "size"})
    assert canon("#k = b", {"#k": "AND"}) != canon("AND = b")
    assert canon("a and b") == canon("a AND b")
    assert canon("a.b[1]") == canon("#a.#b[1]", {"#a": "a", "#b": "b"})


def test_key_layout_tags_items_and_tables() -> None:
    layout = KeyLayout("CC")
    t = keys.TableRef("aws", "us-east-1", "", "t")
    digest = keys.item_digest(t, {"pk": {"S": "x"}})
    assert layout.item(t, digest) == f"CC:i:{{{digest}}}:us-east-1:t"
    assert layout.tokens(t) == "CC:t:{us-east-1:t}"


def test_bucketed_layout_puts_an_entry_and_its_tokens_in_one_slot() -> None:
    """With cluster_buckets, an item's hash, a page of one partition, that partition's hash
    and the bucket's copy of the table's tokens share a slot; entries spread over every
    bucket; the table's own token hash names the copies."""
    from fnmatch import fnmatchcase

    from redis.crc import key_slot

    def slot(key: str) -> int:
        return key_slot(key.encode())

    layout = KeyLayout("app:v1", buckets=16)
    t = keys.TableRef("aws", "us-east-1", "", "orders")
    copies = layout.token_copies(layout.tokens(t))
    assert copies == [f"app:v1:t:{{{b}#us-east-1:orders}}" for b in range(16)]
    assert len({slot(c) for c in copies}) == 16
    used = set()
    for n in range(400):
        item = keys.item_digest(t, {"pk": {"S": f"k{n}"}})
        key = layout.item(t, item)
        tokens = layout.tokens_for(t, key)
        assert tokens in copies and slot(tokens) == slot(key)
        assert key.endswith(f":{item}:us-east-1:orders")
        assert keys.table_of_key(key) == keys.table_of_key(tokens) == "orders"
        assert fnmatchcase(key, layout.table_pattern("orders"))
        used.add(tokens)
        partition = keys.partition_digest(t, "pk", {"S": f"k{n}"})
        page = layout.query(t, keys.digest(("Query", n)), partition)
        assert (
            slot(page) == slot(layout.partition(t, partition)) == slot(layout.tokens_for(t, page))
        )
    assert used == set(copies)  # every bucket takes entries
    assert all(fnmatchcase(c, layout.tokens_pattern("orders")) for c in copies)
    assert not fnmatchcase(copies[0], layout.tokens_pattern("ders"))
    # A copy has no copies; without buckets there are none, and the layout is as before.
    assert layout.token_copies(copies[3]) == []
    plain = KeyLayout("app:v1")
    assert plain.token_copies(plain.tokens(t)) == []
    item = keys.item_digest(t, {"pk": {"S": "x"}})
    assert plain.tokens_for(t, plain.item(t, item)) == plain.tokens(t)
    assert plain.query(t, "ab" * 16, "cd" * 16) == plain.query(t, "ab" * 16)
    # Tables, Regions and namespaces never share a bucket's tag.
    other = layout.token_copies(layout.tokens(t._replace(region="eu-west-1")))
    assert not set(other) & set(copies)
    assert not set(KeyLayout("app:v2", 16).token_copies("app:v2:t:{us-east-1:orders}")) & set(
        copies
    )
    for bad in (-1, keys.MAX_BUCKETS + 1):
        with pytest.raises(ValueError, match="buckets"):
            KeyLayout("CC", bad)


def test_reserved_words_used_literally_never_share_the_placeholder_form() -> None:
    """DynamoDB rejects ``name`` written as is; ``#n`` -> name is valid: two entries."""
    literal = {"ProjectionExpression": "name"}
    placeholder = {"ProjectionExpression": "#n", "ExpressionAttributeNames": {"#n": "name"}}
    assert variant(literal, set()) != variant(placeholder, set())
    assert variant({"ProjectionExpression": "a.Name"}, set())[0] == "raw"
    # Not reserved: the literal and placeholder forms are one variant, as before.
    plain = {"ProjectionExpression": "colour"}
    aliased = {"ProjectionExpression": "#c", "ExpressionAttributeNames": {"#c": "colour"}}
    assert variant(plain, set()) == variant(aliased, set())
    assert "NAME" in expressions.reserved_words() and len(expressions.reserved_words()) == 573


def test_lone_surrogates_are_not_canonical() -> None:
    with pytest.raises(NotCanonical):
        keys.item_digest(T, {"pk": {"S": "\ud800"}})
    with pytest.raises(NotCanonical):
        keys.digest(("S", "\ud800"))


# --- where a table lives -------------------------------------------------------------

OWN = "123456789012"
OTHER = "111111111111"
EAST = keys.Location("aws", "us-east-1")


def test_table_refs_of_names_and_arns() -> None:
    orders = keys.TableRef("aws", "us-east-1", "", "orders")
    assert EAST.refs("orders") == (orders,)
    own_arn = f"arn:aws:dynamodb:us-east-1:{OWN}:table/orders"
    # The own account unknown: the ARN may be the name's table, or another account's.
    assert EAST.refs(own_arn) == (orders, orders._replace(account=OWN))
    known = EAST._replace(own_account=OWN)
    assert known.refs(own_arn) == (orders,)
    assert known.refs(f"arn:aws:dynamodb:us-east-1:{OTHER}:table/orders/index/gsi") == (
        orders._replace(account=OTHER),
    )
    assert known.refs(f"arn:aws:dynamodb:eu-west-1:{OWN}:table/orders") == (
        orders._replace(region="eu-west-1"),
    )
    for bad in ("arn:aws:s3:::bucket", "arn:aws:dynamodb:us-east-1:1:table/x", "a b", "x}"):
        with pytest.raises(NotCanonical):
            EAST.refs(bad)


def test_refs_differ_in_every_key_by_place() -> None:
    layout = KeyLayout("CC")
    east = keys.TableRef("aws", "us-east-1", "", "t")
    places = [
        east,
        east._replace(region="eu-west-1"),
        east._replace(account=OTHER),
        east._replace(where="http://localhost:8000"),
    ]
    key = {"pk": {"S": "x"}}
    for make in (
        lambda r: layout.item(r, keys.item_digest(r, key)),
        layout.tokens,
        layout.schema,
    ):
        assert len({make(r) for r in places}) == len(places)
    assert layout.tokens(places[2]) == f"CC:t:{{us-east-1/{OTHER}:t}}"


def test_location_of_a_client() -> None:
    import boto3

    def location(**kwargs: Any) -> keys.Location:
        client = boto3.client(
            "dynamodb", aws_access_key_id="x", aws_secret_access_key="x", **kwargs
        )
        return keys.location_of(client)

    assert location(region_name="eu-west-1") == keys.Location("aws", "eu-west-1")
    # AWS's own endpoints, however written, are the partition's.
    assert location(
        region_name="us-east-1", endpoint_url="https://dynamodb-fips.us-east-1.amazonaws.com"
    ) == keys.Location("aws", "us-east-1")
    assert location(region_name="cn-north-1") == keys.Location("aws-cn", "cn-north-1")
    assert location(
        region_name="us-east-1", endpoint_url="http://LOCALHOST:8000/"
    ) == keys.Location("http://localhost:8000", "us-east-1")
    # The own account: the option, else static credentials that carry it.
    assert location(region_name="eu-west-1").own_account == ""
    assert keys.location_of(boto3.client("dynamodb", region_name="eu-west-1"), OWN) == (
        keys.Location("aws", "eu-west-1", OWN)
    )
    if not CREDENTIALS_CARRY_ACCOUNT:
        # botocore before 1.35: credentials carry no account; only the option tells it.
        with pytest.raises(TypeError, match="aws_account_id"):
            location(region_name="eu-west-1", aws_account_id=OWN)
        return
    assert location(region_name="eu-west-1", aws_account_id=OWN).own_account == OWN
    client = boto3.client(
        "dynamodb",
        region_name="eu-west-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        aws_account_id=OWN,
    )
    assert keys.location_of(client, OTHER).own_account == OTHER


def test_refs_for_table_arn() -> None:
    from ddbcache_hooks.config import Settings

    stream = f"arn:aws:dynamodb:eu-west-1:{OWN}:table/orders/stream/2026-01-01T00:00:00.000"
    orders = keys.TableRef("aws", "eu-west-1", "", "orders")
    unknown = Settings.resolve({})
    assert keys.refs_for_table_arn(stream, unknown) == (orders, orders._replace(account=OWN))
    own = Settings.resolve({"account_id": OWN})
    assert keys.refs_for_table_arn(stream, own) == (orders,)
    other = Settings.resolve({"account_id": OTHER})
    assert keys.refs_for_table_arn(stream, other) == (orders._replace(account=OWN),)
    local = keys.refs_for_table_arn(stream, own, endpoint_url="http://127.0.0.1:8000/")
    assert local == (orders._replace(where="http://127.0.0.1:8000"),)
    with pytest.raises(NotCanonical):
        keys.refs_for_table_arn("arn:aws:kinesis:eu-west-1:1:stream/x", own)


def test_partition_digest_is_canonical_and_apart_from_the_table_wide_one() -> None:
    p = keys.partition_digest
    u = T._replace(name="u")
    assert p(T, "pk", {"N": "1"}) == p(T, "pk", {"N": "1.0"}) == p(T, "pk", {"N": "01"})
    assert p(T, "pk", {"B": b"\x00"}) == p(T, "pk", {"B": bytearray(b"\x00")})
    distinct = {
        p(T, "pk", {"S": "1"}),
        p(T, "pk", {"N": "1"}),
        p(T, "pk", {"B": b"1"}),
        p(T, "sk", {"S": "1"}),
        p(u, "pk", {"S": "1"}),
        p(T, None),
        p(u, None),
        p(T._replace(region="eu-west-1"), "pk", {"S": "1"}),
        p(T._replace(account="123456789012"), "pk", {"S": "1"}),
        p(T._replace(where="http://127.0.0.1:8000"), "pk", {"S": "1"}),
        p(T._replace(region="eu-west-1"), None),
    }
    assert len(distinct) == 11
    with pytest.raises(NotCanonical):
        p(T, "pk", {"BOOL": True})
    layout = KeyLayout("CC")
    assert layout.partition(T, "abc") == "CC:p:{abc}:us-east-1:t"
    # Found by the pattern `ddbcache invalidate-table` deletes with.
    assert layout.table_pattern("t") == "CC:[iqp]:{*}:*:t"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("pk = :a", {"pk": "a"}),
        ("#p = :a AND #s > :b", {"pk": "a"}),
        ("#p = :a AND #s BETWEEN :b AND :c", {"pk": "a"}),
        ("begins_with(#s, :b) AND :a = pk", {"pk": "a"}),
        ("pk = :a AND sk = :b", {"pk": "a", "sk": "b"}),
        ("(pk = :a)", None),
        ("pk = :a OR sk = :b", None),
        ("pk = :a AND pk = :b", None),
        ("pk = :missing", None),
        ("a.b = :a", None),
        ("pk = :a AND", None),
        ("pk = :a AND sk BETWEEN :b", None),
        ("pk = sk", None),
    ],
)
def test_key_equalities_read_only_key_condition_shapes(
    expression: str, expected: dict[str, str] | None
) -> None:
    from ddbcache_hooks.expressions import key_equalities

    values = {f":{v}": {"S": v} for v in "abc"}
    found = key_equalities(expression, {"#p": "pk", "#s": "sk"}, values)
    assert found == (None if expected is None else {k: {"S": v} for k, v in expected.items()})
