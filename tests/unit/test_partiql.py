from __future__ import annotations

from typing import Any

import pytest

from ddbcache_hooks.partiql import Statement, parse


def assert_unresolved(result: Statement, kind: str, table: str | None = None) -> None:
    assert result.kind == kind
    assert result.table == table
    assert result.pinned is None
    assert result.reason


# --- INSERT ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "table"),
    [
        ("INSERT INTO orders VALUE {'pk': 'a', 'sk': 1}", "orders"),
        ("INSERT INTO \"my-table.v2\" VALUE {'pk': 'a', 'sk': 1};", "my-table.v2"),
        ("insert into Orders value {'pk': 'a', 'sk': 1}", "Orders"),
        ("INSERT INTO \"odd\"\"name\" VALUE {'pk': 'a', 'sk': 1}", 'odd"name'),
    ],
)
def test_insert_table_forms(statement: str, table: str) -> None:
    assert parse(statement) == Statement("INSERT", table, {"pk": {"S": "a"}, "sk": {"N": "1"}})


def test_insert_nested_document() -> None:
    result = parse(
        "INSERT INTO t VALUE {'pk': 'a', 'doc': {'x': [1, 'two', true, null], 'y': {}},"
        " 'tags': <<'a', 'b'>>, 'nums': <<1, 2.5>>, 'flag': FALSE}"
    )
    assert result.pinned == {
        "pk": {"S": "a"},
        "doc": {
            "M": {
                "x": {"L": [{"N": "1"}, {"S": "two"}, {"BOOL": True}, {"NULL": True}]},
                "y": {"M": {}},
            }
        },
        "tags": {"SS": ["a", "b"]},
        "nums": {"NS": ["1", "2.5"]},
        "flag": {"BOOL": False},
    }


def test_insert_parameters_inside_document() -> None:
    blob = {"B": b"\x00\xff"}
    result = parse(
        "INSERT INTO t VALUE {'pk': ?, 'data': ?, 'l': [?]}", [{"S": "k"}, blob, {"N": "7"}]
    )
    assert result.pinned == {"pk": {"S": "k"}, "data": blob, "l": {"L": [{"N": "7"}]}}


def test_insert_whole_document_parameter() -> None:
    result = parse("INSERT INTO t VALUE ?", [{"M": {"pk": {"S": "k"}}}])
    assert result.pinned == {"pk": {"S": "k"}}


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO t VALUE 'not a document'",
        "INSERT INTO t VALUE {'pk': 'a'} extra",
        "INSERT INTO t VALUES {'pk': 'a'}",
        "INSERT INTO t VALUE {pk: 'a'}",
        "INSERT INTO t VALUE {'pk': 'a', 'pk': 'b'}",
        "INSERT INTO t VALUE {'pk': 'a', 's': <<'a', 1>>}",
        "INSERT INTO t VALUE {'pk': MISSING}",
        "INSERT INTO t VALUE {'pk': 'a'",
    ],
)
def test_insert_unparseable_keeps_table(statement: str) -> None:
    assert_unresolved(parse(statement), "INSERT", "t")


# --- UPDATE ------------------------------------------------------------------


def test_update_set_and_where_equalities() -> None:
    result = parse("UPDATE t SET a = 1, b = 'x' WHERE pk = 'p' AND sk = 2")
    assert result == Statement("UPDATE", "t", {"pk": {"S": "p"}, "sk": {"N": "2"}})


def test_update_parameters_bound_in_order_of_appearance() -> None:
    params: list[dict[str, Any]] = [{"S": "set-a"}, {"N": "9"}, {"S": "key"}, {"B": b"\x00\xff"}]
    result = parse(
        "UPDATE t SET a = ? SET b = list_append(b, [?]) REMOVE c WHERE pk = ? AND sk = ?", params
    )
    assert result.pinned == {"pk": {"S": "key"}, "sk": {"B": b"\x00\xff"}}


def test_update_remove_only_with_returning() -> None:
    result = parse('UPDATE "t" REMOVE a.b[0] WHERE "pk" = \'p\' RETURNING ALL OLD *')
    assert result == Statement("UPDATE", "t", {"pk": {"S": "p"}})


def test_update_keeps_equalities_and_ignores_other_conjuncts() -> None:
    result = parse(
        "UPDATE t SET a = 1 WHERE pk = 'p' AND n > 3 AND begins_with(s, 'x') AND m.n = 1"
        " AND NOT q = 2 AND r IN [1, 2] AND v BETWEEN 1 AND 5 AND (w = 1 OR w = 2)"
        " AND attribute_exists(sk) AND sk = 's'"
    )
    assert result.pinned == {"pk": {"S": "p"}, "sk": {"S": "s"}}


def test_update_without_where() -> None:
    assert_unresolved(parse("UPDATE t SET a = 1"), "UPDATE", "t")


def test_update_without_set_or_remove() -> None:
    assert_unresolved(parse("UPDATE t WHERE pk = 'a'"), "UPDATE", "t")


# --- DELETE ------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        'DELETE FROM "t"."by-sk" WHERE pk = \'a\' AND sk = 1 RETURNING ALL OLD *',
        "delete from t.idx where n > 0 and pk = 'a' and sk = 1;",
        "DELETE FROM t WHERE (pk = 'a' AND (sk = 1))",
        "DELETE FROM t WHERE 'a' = pk AND 1 = sk",
        "DELETE FROM t WHERE pk = 'a' AND sk = 1 AND pk = 'a'",
    ],
)
def test_delete_forms(statement: str) -> None:
    assert parse(statement) == Statement("DELETE", "t", {"pk": {"S": "a"}, "sk": {"N": "1"}})


def test_delete_with_parameters_literal_first() -> None:
    result = parse("DELETE FROM t WHERE ? = pk AND sk = ?", [{"S": "a"}, {"N": "2"}])
    assert result.pinned == {"pk": {"S": "a"}, "sk": {"N": "2"}}


# --- values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("1", {"N": "1"}),
        ("-3", {"N": "-3"}),
        ("1.50", {"N": "1.50"}),
        ("1e3", {"N": "1e3"}),
        ("-2.5E-3", {"N": "-2.5E-3"}),
        (".5", {"N": ".5"}),
        ("'it''s'", {"S": "it's"}),
        ("''", {"S": ""}),
        ("'say \"hi\"'", {"S": 'say "hi"'}),
        ("TRUE", {"BOOL": True}),
        ("null", {"NULL": True}),
        ("[]", {"L": []}),
        ("<<'x'>>", {"SS": ["x"]}),
        ("{'k': -1.0}", {"M": {"k": {"N": "-1.0"}}}),
    ],
)
def test_literals(literal: str, value: dict[str, Any]) -> None:
    assert parse(f"DELETE FROM t WHERE pk = {literal}").pinned == {"pk": value}


def test_parameter_set_elements_and_binary_passthrough() -> None:
    blob = {"B": b"\x00\xff"}
    result = parse("DELETE FROM t WHERE pk = ? AND s = <<?, ?>>", [blob, blob, blob])
    assert result.pinned == {"pk": blob, "s": {"BS": [b"\x00\xff", b"\x00\xff"]}}


def test_quoted_attribute_with_escaped_quote() -> None:
    assert parse('DELETE FROM t WHERE "a""b" = 1').pinned == {'a"b': {"N": "1"}}


# --- SELECT ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "table"),
    [
        ("SELECT * FROM t WHERE pk = 'a'", "t"),
        ('select a, b from "t"."idx"', "t"),
        ("EXISTS(SELECT * FROM t WHERE pk = 'a')", "t"),
        ("SELECT * FROM 'broken", None),
    ],
)
def test_select(statement: str, table: str | None) -> None:
    assert parse(statement) == Statement("SELECT", table, None, None)


# --- unresolvable -----------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM t WHERE pk = 'a' OR pk = 'b'",
        "DELETE FROM t WHERE (pk = 'a' OR pk = 'b')",
        "DELETE FROM t WHERE pk = 'a' AND sk = 1 OR sk = 2",
        "DELETE FROM t",
        "DELETE FROM t WHERE",
        "DELETE FROM t WHERE pk > 'a'",
        "DELETE FROM t WHERE pk BETWEEN 1 AND 5",
        "DELETE FROM t WHERE pk = sk",
        "DELETE FROM t WHERE pk = 'a' AND pk = 'b'",
        "DELETE FROM t WHERE pk = 1 AND pk = 1.0",
        "DELETE FROM t WHERE pk = 'a' AND",
        "DELETE FROM t WHERE (pk = 'a'",
        "DELETE FROM t WHERE pk = 'a'; DELETE FROM u WHERE pk = 'b'",
        "DELETE FROM t WHERE pk = 'a' AND sk = (SELECT x FROM u)",
        "DELETE FROM t WHERE (pk) = 'a'",
        "DELETE FROM t WHERE NOT (pk = 'a' AND sk = 1)",
    ],
)
def test_delete_unresolvable(statement: str) -> None:
    assert_unresolved(parse(statement), "DELETE", "t")


@pytest.mark.parametrize(
    ("statement", "parameters"),
    [
        ("DELETE FROM t WHERE pk = ? AND sk = ?", [{"S": "a"}]),
        ("DELETE FROM t WHERE pk = ?", None),
        ("UPDATE t SET a = ? WHERE pk = ?", [{"S": "only-one"}]),
        ("DELETE FROM t WHERE pk = ?", [{"S": "a"}, {"S": "extra"}]),
        ("DELETE FROM t WHERE pk = ?", ["not a mapping"]),
    ],
)
def test_parameter_mismatch(statement: str, parameters: Any) -> None:
    assert_unresolved(parse(statement, parameters), statement.split()[0], "t")


def test_question_mark_inside_string_is_not_a_parameter() -> None:
    assert parse("DELETE FROM t WHERE pk = '?'").pinned == {"pk": {"S": "?"}}


@pytest.mark.parametrize(
    ("statement", "kind"),
    [
        ("", "OTHER"),
        ("   ", "OTHER"),
        ("garbage text", "OTHER"),
        ("CREATE TABLE t", "OTHER"),
        ("UPDATE t SET a = 'unterminated WHERE pk = 1", "UPDATE"),
        ("DELETE FROM WHERE pk = 1", "DELETE"),
        ("INSERT t VALUE {'pk': 1}", "INSERT"),
        ("DELETE FROM t WHERE pk = 1 #", "DELETE"),
        ("\x00\x01", "OTHER"),
    ],
)
def test_garbage_never_raises(statement: str, kind: str) -> None:
    assert_unresolved(parse(statement), kind)


def test_non_string_statement_never_raises() -> None:
    assert_unresolved(parse(None), "OTHER")  # type: ignore[arg-type]


def test_unquoted_table_with_dash_is_unresolvable() -> None:
    result = parse("DELETE FROM my-table WHERE pk = 'a'")
    assert result.pinned is None
    assert result.reason
