"""Which items a DynamoDB PartiQL write statement touches.

:func:`parse` reads one statement, as sent with ExecuteStatement,
BatchExecuteStatement or ExecuteTransaction, and reports its table and the
``attribute = value`` equalities that pin the written item(s). The caller
projects those onto the table's primary key and invalidates the whole table
when a key attribute is missing.

The contract is *conservative*: a wrong pin would leave a stale item in the
cache, while a missing pin merely costs a table-wide invalidation. So whenever
the statement is not fully understood ``pinned`` is ``None`` and ``reason``
says why, and :func:`parse` never raises. Conditions ANDed with the equalities
are ignored, because an extra conjunct can only narrow the written items.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, NamedTuple, get_args

AttributeValue = Mapping[str, Any]
Kind = Literal["SELECT", "INSERT", "UPDATE", "DELETE", "OTHER"]

_KINDS: dict[str, Kind] = {kind: kind for kind in get_args(Kind) if kind != "OTHER"}
_OPEN = frozenset({"(", "[", "{", "<<"})
_CLOSE = frozenset({")", "]", "}", ">>"})
_NOT_ATTRIBUTES = frozenset({"TRUE", "FALSE", "NULL", "MISSING", "NOT"})
# Words that cannot appear in a condition we understand; seeing one means the
# statement is not shaped the way we think (or uses CASE / subqueries).
_CLAUSE_WORDS = frozenset(_KINDS) | {"CASE", "WHERE", "SET", "REMOVE", "FROM", "INTO", "VALUE"}

_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | '(?P<str>(?:[^']|'')*)'
    | "(?P<qident>(?:[^"]|"")*)"
    | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op><<|>>|<>|<=|>=|!=|\|\||[-+*/%=<>(),.\[\]{}:?;])
    """,
    re.VERBOSE,
)


class PartiQLError(ValueError):
    """The statement is outside what this module understands."""


@dataclass(frozen=True)
class Statement:
    """What one PartiQL statement writes; see the module docstring."""

    kind: Kind
    table: str | None
    pinned: dict[str, dict[str, Any]] | None
    reason: str | None = None


class _Token(NamedTuple):
    kind: str  # "str", "qident", "num", "ident", "op" or "param"
    text: str  # decoded: quotes removed and unescaped
    ordinal: int = -1  # for "param": index into the parameters


def parse(statement: str, parameters: Sequence[AttributeValue] | None = None) -> Statement:
    """Table and pinned attribute values of ``statement``; never raises."""
    verb = (
        re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", statement) if isinstance(statement, str) else None
    )
    kind = _KINDS.get(verb.group(1).upper(), "OTHER") if verb else "OTHER"
    cursor: _Cursor | None = None
    try:
        tokens = _tokenize(statement)
        if kind == "SELECT" or _is_exists(tokens):
            # EXISTS(SELECT ...) is ExecuteTransaction's condition check: a read.
            return Statement("SELECT", _select_table(tokens), None)
        cursor = _Cursor(tokens, list(parameters or ()))
        if kind == "INSERT":
            pinned = _insert(cursor)
        elif kind == "UPDATE":
            pinned = _update(cursor)
        elif kind == "DELETE":
            pinned = _delete(cursor)
        else:
            raise PartiQLError(f"unsupported statement {verb.group(1) if verb else ''!r}")
    # Anything at all: a cache must never break the caller's write.
    except Exception as exc:
        if kind == "SELECT":
            return Statement("SELECT", None, None)
        detail = str(exc) if isinstance(exc, PartiQLError) else repr(exc)
        table = cursor.table if cursor else None
        return Statement(kind, table, None, f"PartiQL statement {statement!r}: {detail}")
    return Statement(kind, cursor.table, pinned)


def _tokenize(statement: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = placeholders = 0
    while pos < len(statement):
        match = _TOKEN.match(statement, pos)
        if match is None or match.lastgroup is None:
            raise PartiQLError(f"unknown text {statement[pos : pos + 12]!r} at offset {pos}")
        pos, kind, text = match.end(), match.lastgroup, match.group(match.lastgroup)
        if kind == "ws":
            continue
        if kind == "str":
            text = text.replace("''", "'")
        elif kind == "qident":
            if not text:
                raise PartiQLError("empty quoted identifier")
            text = text.replace('""', '"')
        elif text == "?":
            tokens.append(_Token("param", text, placeholders))
            placeholders += 1
            continue
        tokens.append(_Token(kind, text))
    if tokens and tokens[-1] == _Token("op", ";"):
        tokens.pop()
    return tokens


def _is_word(token: _Token | None, *words: str) -> bool:
    return token is not None and token.kind == "ident" and token.text.upper() in words


def _is_op(token: _Token | None, *ops: str) -> bool:
    return token is not None and token.kind == "op" and token.text in ops


class _Cursor:
    def __init__(self, tokens: Sequence[_Token], parameters: Sequence[AttributeValue]) -> None:
        self.tokens = tokens
        self.parameters = parameters
        self.pos = 0
        self.table: str | None = None

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise PartiQLError("unexpected end")
        self.pos += 1
        return token

    def expect_word(self, word: str) -> None:
        token = self.peek()
        if not _is_word(token, word):
            raise PartiQLError(f"expected {word}, found {token.text if token else 'end'!r}")
        self.pos += 1

    def expect_end(self) -> None:
        if self.peek() is not None:
            raise PartiQLError(f"unexpected {self.tokens[self.pos].text!r}")

    def table_ref(self) -> str:
        """``tbl``, ``"tbl"``, ``tbl.index`` or ``"tbl"."index"``: the table part."""
        token = self.take()
        if token.kind not in ("ident", "qident") or _is_word(token, *_CLAUSE_WORDS):
            raise PartiQLError(f"expected a table name, found {token.text!r}")
        if _is_op(self.peek(), "."):
            self.pos += 1
            if self.take().kind not in ("ident", "qident"):
                raise PartiQLError("expected an index name after '.'")
        return token.text

    def value(self) -> dict[str, Any]:
        token = self.take()
        if token.kind == "str":
            return {"S": token.text}
        if token.kind == "num":
            return {"N": _number(token.text)}
        if _is_op(token, "-"):
            number = self.take()
            if number.kind != "num":
                raise PartiQLError(f"expected a number after '-', found {number.text!r}")
            return {"N": _number("-" + number.text)}
        if token.kind == "param":
            return dict(self.parameters[token.ordinal])
        if _is_word(token, "TRUE", "FALSE"):
            return {"BOOL": token.text.upper() == "TRUE"}
        if _is_word(token, "NULL"):
            return {"NULL": True}
        if _is_op(token, "{"):
            return {"M": self._document()}
        if _is_op(token, "["):
            return {"L": self._sequence("]")}
        if _is_op(token, "<<"):
            return _set(self._sequence(">>"))
        raise PartiQLError(f"expected a value, found {token.text!r}")

    def _more(self, close: str) -> bool:
        """After an element: True on ',', False on ``close``."""
        token = self.take()
        if _is_op(token, ",", close):
            return token.text == ","
        raise PartiQLError(f"expected ',' or {close!r}, found {token.text!r}")

    def _document(self) -> dict[str, Any]:
        items: dict[str, Any] = {}
        if _is_op(self.peek(), "}"):
            self.pos += 1
            return items
        while True:
            key = self.take()
            if key.kind != "str":
                raise PartiQLError(f"document key {key.text!r} is not a single-quoted string")
            if key.text in items:
                raise PartiQLError(f"duplicate document key {key.text!r}")
            if not _is_op(self.take(), ":"):
                raise PartiQLError(f"expected ':' after document key {key.text!r}")
            items[key.text] = self.value()
            if not self._more("}"):
                return items

    def _sequence(self, close: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if _is_op(self.peek(), close):
            self.pos += 1
            return items
        while True:
            items.append(self.value())
            if not self._more(close):
                return items


def _number(text: str) -> str:
    try:
        Decimal(text)
    except InvalidOperation:
        raise PartiQLError(f"bad number {text!r}") from None
    return text


def _set(elements: list[dict[str, Any]]) -> dict[str, Any]:
    types = {tuple(element) for element in elements}
    if types not in ({("S",)}, {("N",)}, {("B",)}):
        raise PartiQLError("a set must be non-empty and hold only strings, numbers or binaries")
    (kind,) = types.pop()
    return {kind + "S": [element[kind] for element in elements]}


def _head(cursor: _Cursor, *words: str) -> None:
    """Leading keywords and table, then check the parameters against the ``?``."""
    for word in words:
        cursor.expect_word(word)
    cursor.table = cursor.table_ref()
    if _Token("op", ";") in cursor.tokens:
        raise PartiQLError("';' before the end (several statements?)")
    placeholders = sum(token.kind == "param" for token in cursor.tokens)
    if placeholders != len(cursor.parameters):
        raise PartiQLError(f"{placeholders} '?' but {len(cursor.parameters)} parameters")
    if not all(isinstance(parameter, Mapping) for parameter in cursor.parameters):
        raise PartiQLError("a parameter is not an AttributeValue mapping")


def _insert(cursor: _Cursor) -> dict[str, dict[str, Any]]:
    _head(cursor, "INSERT", "INTO")
    cursor.expect_word("VALUE")
    item = cursor.value()
    cursor.expect_end()
    if set(item) != {"M"} or not isinstance(item["M"], Mapping):
        raise PartiQLError("INSERT value is not a document")
    return dict(item["M"])


def _update(cursor: _Cursor) -> dict[str, dict[str, Any]]:
    _head(cursor, "UPDATE")
    if not _is_word(cursor.peek(), "SET", "REMOVE"):
        raise PartiQLError("expected SET or REMOVE after the table")
    # SET/REMOVE clauses are skipped: WHERE is reserved, so it cannot occur in them unquoted.
    while not _is_word(cursor.peek(), "WHERE"):
        cursor.pos += 1
        if cursor.peek() is None:
            raise PartiQLError("no WHERE clause")
    return _where(cursor)


def _delete(cursor: _Cursor) -> dict[str, dict[str, Any]]:
    _head(cursor, "DELETE", "FROM")
    if cursor.peek() is None:
        raise PartiQLError("no WHERE clause")
    return _where(cursor)


def _where(cursor: _Cursor) -> dict[str, dict[str, Any]]:
    cursor.expect_word("WHERE")
    condition = list(cursor.tokens[cursor.pos :])
    end = next((i for i, t in enumerate(condition) if _is_word(t, "RETURNING")), None)
    condition = condition[:end]
    if not condition:
        raise PartiQLError("empty WHERE clause")
    for token in condition:
        if _is_word(token, *_CLAUSE_WORDS):
            raise PartiQLError(f"unexpected {token.text!r} in WHERE clause")
    pinned: dict[str, dict[str, Any]] = {}
    _collect(condition, cursor.parameters, pinned, top=True)
    if not pinned:
        raise PartiQLError("no 'attribute = value' equality ANDed in the WHERE clause")
    return pinned


def _collect(
    tokens: list[_Token],
    parameters: Sequence[AttributeValue],
    pinned: dict[str, dict[str, Any]],
    *,
    top: bool,
) -> None:
    """Add the equalities of the AND-conjunction ``tokens`` to ``pinned``."""
    tokens = _strip_parens(tokens)
    conjuncts = _split_and(tokens)
    if conjuncts is None:
        if top:
            raise PartiQLError("OR in the WHERE clause")
        return  # an ORed group ANDed with other conditions only narrows them
    if len(conjuncts) > 1:
        for conjunct in conjuncts:
            _collect(conjunct, parameters, pinned, top=False)
        return
    equality = _equality(tokens, parameters)
    if equality is not None:
        name, value = equality
        if pinned.setdefault(name, value) != value:
            raise PartiQLError(f"attribute {name!r} equated to two different values")


def _strip_parens(tokens: list[_Token]) -> list[_Token]:
    while _is_op(tokens[0] if tokens else None, "(") and _closing(tokens) == len(tokens) - 1:
        tokens = tokens[1:-1]
    return tokens


def _closing(tokens: list[_Token]) -> int:
    """Index of the bracket closing ``tokens[0]`` (the last index if unbalanced)."""
    depth = 0
    for index, token in enumerate(tokens):
        depth += _is_op(token, *_OPEN) - _is_op(token, *_CLOSE)
        if depth == 0:
            return index
    return len(tokens) - 1


def _split_and(tokens: list[_Token]) -> list[list[_Token]] | None:
    """Conjuncts split at top-level AND, or None if there is a top-level OR."""
    conjuncts: list[list[_Token]] = [[]]
    depth, between = 0, False
    for token in tokens:
        depth += _is_op(token, *_OPEN) - _is_op(token, *_CLOSE)
        if depth < 0:
            raise PartiQLError("unbalanced brackets in WHERE clause")
        if depth == 0 and _is_word(token, "OR"):
            return None
        if depth == 0 and _is_word(token, "BETWEEN"):
            between = True
        elif depth == 0 and _is_word(token, "AND"):
            if not between:
                conjuncts.append([])
                continue
            between = False  # the AND of "x BETWEEN a AND b" is not a conjunction
        conjuncts[-1].append(token)
    if depth != 0:
        raise PartiQLError("unbalanced brackets in WHERE clause")
    if not all(conjuncts):
        raise PartiQLError("empty condition in WHERE clause")
    return conjuncts


def _equality(
    tokens: list[_Token], parameters: Sequence[AttributeValue]
) -> tuple[str, dict[str, Any]] | None:
    """``attr = value`` or ``value = attr`` spanning all of ``tokens``, else None."""
    equals = [index for index, token in enumerate(tokens) if _is_op(token, "=")]
    if len(equals) != 1:
        return None
    left, right = tokens[: equals[0]], tokens[equals[0] + 1 :]
    for attribute, literal in ((left, right), (right, left)):
        if len(attribute) != 1 or attribute[0].kind not in ("ident", "qident"):
            continue
        if _is_word(attribute[0], *_NOT_ATTRIBUTES):
            continue
        cursor = _Cursor(literal, parameters)
        try:
            value = cursor.value()
            cursor.expect_end()
        except PartiQLError:
            continue  # not a literal (e.g. another attribute): an ignorable conjunct
        return attribute[0].text, value
    return None


def _is_exists(tokens: list[_Token]) -> bool:
    return (
        len(tokens) > 2
        and _is_word(tokens[0], "EXISTS")
        and _is_op(tokens[1], "(")
        and _is_word(tokens[2], "SELECT")
    )


def _select_table(tokens: list[_Token]) -> str | None:
    for index, token in enumerate(tokens):
        if _is_word(token, "FROM"):
            try:
                return _Cursor(tokens[index + 1 :], ()).table_ref()
            except PartiQLError:
                return None
    return None
