"""Canonical form of DynamoDB expressions, with placeholders substituted.

``#n0 = :v0`` with ``{"#n0": "pk"}`` / ``{":v0": {"S": "a"}}`` (what boto3's
``Key("pk").eq("a")`` builds) and ``pk = :pk`` written by hand mean the same
thing; both canonicalize to ``(("n", "pk"), ("p", "="), ("v", ("S", "a")))``.

The tokenizer is deliberately small: anything it does not recognize makes
:func:`canonical` return ``None`` and the caller falls back to the raw text,
which is always correct, merely less often shared. :func:`variant` builds a
request's canonical variant from them (what a Query or Scan entry is keyed by).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

from .keys import NotCanonical, canonical_param, canonical_value

#: Request parameters holding an expression that may use placeholders.
EXPRESSION_PARAMS = frozenset(
    {
        "KeyConditionExpression",
        "FilterExpression",
        "ProjectionExpression",
        "ConditionExpression",
    }
)

_KEYWORDS = frozenset({"AND", "OR", "NOT", "BETWEEN", "IN"})


@functools.lru_cache(maxsize=1)
def reserved_words() -> frozenset[str]:
    """DynamoDB's reserved words (upper case): an expression may not use one as a name.

    The list is data (``reserved_words.txt``, from DynamoDB's documentation).
    """
    text = resources.files(__package__).joinpath("reserved_words.txt").read_text("utf-8")
    return frozenset(word.upper() for word in text.split())


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<name>\#[A-Za-z0-9_]+)
      | (?P<value>:[A-Za-z0-9_]+)
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op><>|<=|>=|=|<|>)
      | (?P<punct>[(),.\[\]])
      | (?P<index>[0-9]+)
    )""",
    re.VERBOSE,
)


def canonical(
    expression: str,
    names: Mapping[str, Any],
    values: Mapping[str, Any],
    used: set[str],
) -> tuple[Any, ...] | None:
    """Tokens of ``expression`` with placeholders resolved, or None if unsure.

    Placeholders that were resolved are added to ``used``.
    """
    matches = _tokenize(expression)
    if matches is None:
        return None
    reserved = reserved_words()
    tokens: list[tuple[str, Any]] = []
    for index, (kind, text) in enumerate(matches):
        if kind == "name":
            if text not in names or not isinstance(names[text], str):
                return None
            used.add(text)
            tokens.append(("n", names[text]))
        elif kind == "value":
            if text not in values:
                return None
            try:
                tokens.append(("v", canonical_value(values[text])))
            except NotCanonical:
                return None
            used.add(text)
        elif kind == "word":
            following = matches[index + 1][1] if index + 1 < len(matches) else ""
            if text.upper() in _KEYWORDS:
                tokens.append(("k", text.upper()))
            elif following == "(":
                tokens.append(("f", text))
            elif text.upper() in reserved:
                # DynamoDB rejects the literal form: it must not share the entry of
                # the valid ``#n`` -> name form. The raw text keeps it apart.
                return None
            else:
                tokens.append(("n", text))
        elif kind == "index":
            tokens.append(("i", int(text)))
        else:
            tokens.append(("p", text))
    return tuple(tokens)


def _tokenize(expression: str) -> list[tuple[str, str]] | None:
    """(kind, text) pairs, or None when something is not a known token."""
    out: list[tuple[str, str]] = []
    pos, end = 0, len(expression.rstrip())
    while pos < end:
        match = _TOKEN.match(expression, pos)
        if match is None or match.lastgroup is None:
            return None
        out.append((match.lastgroup, match.group(match.lastgroup)))
        pos = match.end()
    return out


def top_level_names(projection: str, names: Mapping[str, Any]) -> set[str] | None:
    """Attribute names a ProjectionExpression returns whole (``a`` in ``a, b.c``).

    None when the projection cannot be read.
    """
    tokens = _tokenize(projection)
    if tokens is None:
        return None
    found: set[str] = set()
    path: list[tuple[str, str]] = []
    for kind, text in [*tokens, ("punct", ",")]:
        if kind == "punct" and text == ",":
            if len(path) == 1:
                name_kind, name = path[0]
                if name_kind == "name":
                    if name not in names:
                        return None
                    found.add(str(names[name]))
                elif name_kind == "word":
                    found.add(name)
            path = []
        else:
            path.append((kind, text))
    return found


def key_equalities(
    expression: str, names: Mapping[str, Any], values: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Attribute name -> AttributeValue of each ``name = value`` of a KeyConditionExpression.

    Only the shapes a key condition may take are read: conditions joined by
    ``AND``, each ``a = :v`` (or ``:v = a``), ``a < :v`` etc., ``a BETWEEN :v AND
    :w`` or ``begins_with(a, :v)``. Anything else (parentheses, paths, an
    unknown placeholder, a name tested twice) gives None: the caller then does
    not narrow the page to one partition.
    """
    tokens = _tokenize(expression)
    if tokens is None:
        return None

    def name_of(token: tuple[str, str]) -> str | None:
        kind, text = token
        if kind == "name":
            found = names.get(text)
            return found if isinstance(found, str) else None
        if kind == "word" and text.upper() not in _KEYWORDS and text != "begins_with":
            return text
        return None

    def value_of(token: tuple[str, str]) -> Any:
        kind, text = token
        return values.get(text) if kind == "value" else None

    equal: dict[str, Any] = {}
    seen: set[str] = set()
    rest = tokens
    while rest:
        if len(rest) >= 3 and rest[1][0] == "op":  # a = :v, :v = a, a < :v, ...
            left, right = name_of(rest[0]), name_of(rest[2])
            name = left or right
            value = value_of(rest[2]) if left else value_of(rest[0])
            size = 3
            if rest[1][1] == "=" and name is not None and value is not None:
                equal[name] = value
        elif len(rest) >= 5 and _is_word(rest[1], "BETWEEN") and _is_word(rest[3], "AND"):
            name, value = name_of(rest[0]), value_of(rest[2]) and value_of(rest[4])
            size = 5
        elif len(rest) >= 6 and rest[0] == ("word", "begins_with"):
            if [t[1] for t in (rest[1], rest[3], rest[5])] != ["(", ",", ")"]:
                return None
            name, value = name_of(rest[2]), value_of(rest[4])
            size = 6
        else:
            return None
        if name is None or value is None or name in seen:
            return None
        seen.add(name)
        rest = rest[size:]
        if rest:
            if len(rest) == 1 or not _is_word(rest[0], "AND"):
                return None
            rest = rest[1:]
    return equal


def _is_word(token: tuple[str, str], word: str) -> bool:
    return token[0] == "word" and token[1].upper() == word


#: Parameters that name placeholders; folded into expressions when possible.
PLACEHOLDER_PARAMS = ("ExpressionAttributeNames", "ExpressionAttributeValues")


def variant(params: Mapping[str, Any], skip: frozenset[str] | set[str]) -> Any:
    """Canonical request variant: every parameter except those in ``skip``.

    Expressions have their ``#name`` / ``:value`` placeholders substituted, so
    ``Key("pk").eq(1)`` built by boto3 and ``"pk = :v"`` written by hand are one
    variant. When any placeholder cannot be resolved, or a provided one is not
    used, the raw expressions and placeholder maps are kept instead: such a
    request gets an entry of its own (and DynamoDB will reject it anyway).
    """
    if skip.issuperset(params):  # a plain GetItem / BatchGetItem: one variant
        return ()
    names = params.get("ExpressionAttributeNames") or {}
    values = params.get("ExpressionAttributeValues") or {}
    raw: list[tuple[str, Any]] = []
    folded: list[tuple[str, Any]] = []
    used: set[str] = set()
    resolved = True
    for name in sorted(params):
        if name in skip or name in PLACEHOLDER_PARAMS:
            continue
        value = params[name]
        if name in EXPRESSION_PARAMS and isinstance(value, str):
            canon = canonical(value, names, values, used)
            resolved = resolved and canon is not None
            raw.append((name, value))
            folded.append((name, canon))
        else:
            part = (name, canonical_param(value))
            raw.append(part)
            folded.append(part)
    if resolved and used == set(names) | set(values):
        return tuple(folded)
    return (
        "raw",
        *raw,
        *((p, canonical_param(params[p])) for p in PLACEHOLDER_PARAMS if params.get(p)),
    )
