"""Canonical keys: numbers by value, binary by bytes, no collisions, deny-list variants."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from ddbcache_hooks import keys
from ddbcache_hooks.keys import KeyLayout, NotCanonical


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
    a = keys.item_digest("t", {"pk": {"S": "x"}, "sk": {"N": "1.0"}})
    b = keys.item_digest("t", {"sk": {"N": "1"}, "pk": {"S": "x"}})
    assert a == b


def test_binary_keys_compare_by_bytes() -> None:
    assert keys.item_digest("t", {"pk": {"B": b"abc"}}) == keys.item_digest(
        "t", {"pk": {"B": "abc"}}
    )
    assert keys.item_digest("t", {"pk": {"B": b"abc"}}) != keys.item_digest(
        "t", {"pk": {"S": "abc"}}
    )


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
    assert keys.item_digest("t", a) != keys.item_digest("t", b)


def test_tables_separate_items() -> None:
    key = {"pk": {"S": "x"}}
    assert keys.item_digest("a", key) != keys.item_digest("b", key)


def test_no_collisions_over_many_generated_keys() -> None:
    values = ["", "a", "a:", ":a", "1", "01", "#", "\x00", "é"]
    seen = {}
    for pk, sk in itertools.product(values, repeat=2):
        for sk_type in ("S", "B"):
            sk_value: Any = sk.encode() if sk_type == "B" else sk
            key = {"pk": {"S": pk}, "sk": {sk_type: sk_value}}
            digest = keys.item_digest("t", key)
            assert digest not in seen, (key, seen.get(digest))
            seen[digest] = key


@pytest.mark.parametrize(
    "bad",
    [{}, {"pk": "x"}, {"pk": {"S": 1}}, {"pk": {"X": "1"}}, {"pk": {"S": "a", "N": "1"}}],
)
def test_malformed_keys_are_rejected(bad: Any) -> None:
    with pytest.raises(NotCanonical):
        keys.item_digest("t", bad)


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
    base = keys.variant(QUERY, {"ReturnConsumedCapacity"})
    assert (
        keys.variant({**QUERY, "ReturnConsumedCapacity": "TOTAL"}, {"ReturnConsumedCapacity"})
        == base
    )
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
        assert keys.variant({**QUERY, **changed}, {"ReturnConsumedCapacity"}) != base, changed


def test_variant_substitutes_placeholders() -> None:
    by_hand = {
        "TableName": "t",
        "KeyConditionExpression": "pk=:pk",
        "ExpressionAttributeValues": {":pk": {"S": "a"}},
    }
    assert keys.variant(by_hand, set()) == keys.variant(QUERY, set())
    other_value = {**by_hand, "ExpressionAttributeValues": {":pk": {"S": "b"}}}
    assert keys.variant(other_value, set()) != keys.variant(QUERY, set())


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
    assert keys.variant(params, set()) != keys.variant(QUERY, set())
    assert keys.variant(params, set())[0] == "raw"


def test_keywords_functions_and_names_are_distinct() -> None:
    def canon(expression: str, names: dict[str, str] | None = None) -> Any:
        params = {"FilterExpression": expression, "ExpressionAttributeNames": names or {}}
        if names is None:
            params.pop("ExpressionAttributeNames")
        return keys.variant(params, set())

    assert canon("size(a) > b") != canon("#s(a) > b", {"#s": "size"})
    assert canon("#k = b", {"#k": "AND"}) != canon("AND = b")
    assert canon("a and b") == canon("a AND b")
    assert canon("a.b[1]") == canon("#a.#b[1]", {"#a": "a", "#b": "b"})


def test_key_layout_tags_items_and_tables() -> None:
    layout = KeyLayout("CC")
    digest = keys.item_digest("t", {"pk": {"S": "x"}})
    assert layout.item("t", digest) == f"CC:i:{{{digest}}}:t"
    assert layout.tokens("t") == "CC:t:{t}"


def test_partition_digest_is_canonical_and_apart_from_the_table_wide_one() -> None:
    p = keys.partition_digest
    assert p("t", "pk", {"N": "1"}) == p("t", "pk", {"N": "1.0"}) == p("t", "pk", {"N": "01"})
    assert p("t", "pk", {"B": b"\x00"}) == p("t", "pk", {"B": bytearray(b"\x00")})
    distinct = {
        p("t", "pk", {"S": "1"}),
        p("t", "pk", {"N": "1"}),
        p("t", "pk", {"B": b"1"}),
        p("t", "sk", {"S": "1"}),
        p("u", "pk", {"S": "1"}),
        p("t", None),
        p("u", None),
    }
    assert len(distinct) == 7
    with pytest.raises(NotCanonical):
        p("t", "pk", {"BOOL": True})
    layout = KeyLayout("CC")
    assert layout.partition("t", "abc") == "CC:p:{abc}:t"


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
