"""Canonical form of DynamoDB expressions, with placeholders substituted.

``#n0 = :v0`` with ``{"#n0": "pk"}`` / ``{":v0": {"S": "a"}}`` (what boto3's
``Key("pk").eq("a")`` builds) and ``pk = :pk`` written by hand mean the same
thing; both canonicalize to ``(("n", "pk"), ("p", "="), ("v", ("S", "a")))``.

The tokenizer is deliberately small: anything it does not recognize makes
:func:`canonical` return ``None`` and the caller falls back to the raw text,
which is always correct, merely less often shared.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

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
    from .keys import NotCanonical, canonical_value  # keys imports this module

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
