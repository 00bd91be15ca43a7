"""Canonical identities and the Redis key layout.

Everything here is pure: request parameters in, digests and key names out.

Two requests that DynamoDB answers identically should share an entry, and two
that it may answer differently must never do so. Hence:

* numbers are compared by value (``1``, ``1.0``, ``1E0`` and ``01`` are one
  number), binary by raw bytes, sets as sorted multisets;
* structures are packed with msgpack before hashing, which keeps ``str`` and
  ``bytes`` apart and length-prefixes everything, so no value can forge a
  separator;
* a request variant is the request minus a deny-list of parameters that do
  not change the data (``ReturnConsumedCapacity``), never an allow-list.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import msgpack

from . import expressions

#: Parameters that name placeholders; folded into expressions when possible.
PLACEHOLDER_PARAMS = ("ExpressionAttributeNames", "ExpressionAttributeValues")


class NotCanonical(ValueError):
    """A request parameter that cannot be canonicalized (DynamoDB would reject it)."""


def table_name(name_or_arn: str) -> str:
    """Reduce a table ARN (``arn:aws:dynamodb:...:table/Name``) to its name."""
    if name_or_arn.startswith("arn:"):
        _, _, resource = name_or_arn.partition(":table/")
        if not resource:
            raise NotCanonical(f"not a DynamoDB table ARN: {name_or_arn!r}")
        return resource.split("/", 1)[0]
    return name_or_arn


_PLAIN_INTEGER = re.compile(r"-?[1-9][0-9]*")


def canonical_number(text: str) -> str:
    """Render a DynamoDB number so that equal values give equal strings.

    Exact for the 38 significant digits DynamoDB allows: no context rounding.
    """
    if isinstance(text, str) and _PLAIN_INTEGER.fullmatch(text):  # the common key: no Decimal
        significant = text.rstrip("0")
        return f"{significant}e{len(text) - len(significant)}"
    if text == "0":
        return "0"
    try:
        sign, digits, exponent = Decimal(text).as_tuple()
    except (InvalidOperation, TypeError, ValueError):
        raise NotCanonical(f"not a number: {text!r}") from None
    if not isinstance(exponent, int):  # NaN / Infinity: DynamoDB rejects them
        raise NotCanonical(f"not a finite number: {text!r}")
    body = "".join(map(str, digits)).lstrip("0")
    if not body:
        return "0"
    stripped = body.rstrip("0")
    exponent += len(body) - len(stripped)
    return f"{'-' if sign else ''}{stripped}e{exponent}"


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):  # botocore serializes a str blob as its UTF-8 bytes
        return value.encode("utf-8")
    raise NotCanonical(f"not a binary value: {type(value).__name__}")


def canonical_value(av: Any) -> tuple[Any, ...]:
    """Canonical form of one AttributeValue (``{"N": "1.0"}`` -> ``("N", "1e0")``)."""
    if not isinstance(av, Mapping) or len(av) != 1:
        raise NotCanonical(f"not an AttributeValue: {av!r}")
    ((tag, value),) = av.items()
    if tag == "S":
        if not isinstance(value, str):
            raise NotCanonical(f"S value is not a string: {value!r}")
        return ("S", value)
    if tag == "N":
        return ("N", canonical_number(value))
    if tag == "B":
        return ("B", _as_bytes(value))
    if tag == "SS":
        return ("SS", tuple(sorted(value)))
    if tag == "NS":
        return ("NS", tuple(sorted(canonical_number(v) for v in value)))
    if tag == "BS":
        return ("BS", tuple(sorted(_as_bytes(v) for v in value)))
    if tag == "M":
        return ("M", tuple(sorted((str(k), canonical_value(v)) for k, v in value.items())))
    if tag == "L":
        return ("L", tuple(canonical_value(v) for v in value))
    if tag in ("NULL", "BOOL"):
        return (tag, bool(value))
    raise NotCanonical(f"unknown AttributeValue type {tag!r}")


def canonical_key(key: Mapping[str, Any]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """Canonical primary key: attribute names sorted, values canonical."""
    return tuple([(name, canonical_value(key[name])) for name in _key_names(key)])


def _key_names(key: Mapping[str, Any]) -> list[str]:
    """A primary key's attribute names, sorted."""
    if not isinstance(key, Mapping) or not key:
        raise NotCanonical(f"not a primary key: {key!r}")
    try:
        return sorted(key)
    except TypeError:
        raise NotCanonical(f"attribute names must be strings: {key!r}") from None


def canonical_param(value: Any) -> Any:
    """Canonical form of an arbitrary request parameter.

    AttributeValues anywhere inside (ExclusiveStartKey, legacy KeyConditions, …)
    are canonicalized; dicts are sorted by key; lists keep their order.
    """
    if isinstance(value, Mapping):
        if len(value) == 1:
            try:
                return ("av", canonical_value(value))
            except NotCanonical:
                pass
        return ("map", tuple(sorted((str(k), canonical_param(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(canonical_param(v) for v in value))
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise NotCanonical(f"unsupported parameter value of type {type(value).__name__}")


def digest(structure: Any) -> str:
    """128-bit hex digest of a canonical structure."""
    packed = msgpack.packb(structure, use_bin_type=True)
    return hashlib.blake2b(packed, digest_size=16).hexdigest()


def item_digest(table: str, key: Mapping[str, Any]) -> str:
    """Identity of one item: table name plus canonical primary key.

    Key attributes are S, N or B (DynamoDB rejects anything else); the digest
    covers the msgpack'd flat list ``[table, name, type, value, …]`` — each part
    typed and length-prefixed, so no value can forge a separator.
    """
    parts: list[Any] = [table]
    for name in _key_names(key):
        tag, value = canonical_value(key[name])
        if tag not in _KEY_TYPES:
            raise NotCanonical(f"key attribute {name!r} has type {tag}; keys are S, N or B")
        parts += (name, tag, value)
    packed = msgpack.packb(parts, use_bin_type=True)
    return hashlib.blake2b(packed, digest_size=16, person=b"ddbcache-item").hexdigest()


_KEY_TYPES = frozenset({"S", "N", "B"})


def partition_digest(table: str, name: str | None, value: Any = None) -> str:
    """Identity of one partition: table, partition key attribute name and value.

    Canonical like :func:`item_digest` (numbers by value, binary by bytes).
    ``name=None`` names the table as a whole: the token GSI Queries, Scans and
    writes whose partition is unknown use.
    """
    parts: list[Any] = [table]
    if name is not None:
        tag, canon = canonical_value(value)
        if tag not in _KEY_TYPES:
            raise NotCanonical(f"key attribute {name!r} has type {tag}; keys are S, N or B")
        parts += (name, tag, canon)
    packed = msgpack.packb(parts, use_bin_type=True)
    return hashlib.blake2b(packed, digest_size=16, person=b"ddbcache-part").hexdigest()


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
        if name in expressions.EXPRESSION_PARAMS and isinstance(value, str):
            canon = expressions.canonical(value, names, values, used)
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


class KeyLayout:
    """Names of every Redis key the library writes, for one namespace.

    Every key carries a hash tag (the part in braces) so that Redis Cluster puts
    an item's state in one slot (one Lua script touches it) while different
    items and query variants spread over all slots.
    """

    __slots__ = ("namespace", "prefix")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.prefix = namespace + ":"

    def item(self, table: str, item_id: str) -> str:
        return f"{self.prefix}i:{{{item_id}}}:{table}"

    def query(self, table: str, variant_id: str) -> str:
        return f"{self.prefix}q:{{{variant_id}}}:{table}"

    def partition(self, table: str, partition_id: str) -> str:
        """A partition's token hash (see :func:`partition_digest`): spread over slots."""
        return f"{self.prefix}p:{{{partition_id}}}:{table}"

    def tokens(self, table: str) -> str:
        return f"{self.prefix}t:{{{table}}}"

    def schema(self, table: str) -> str:
        return f"{self.prefix}k:{{{table}}}"

    def table_pattern(self, table: str) -> str:
        """SCAN pattern matching every entry (and partition token) of one table."""
        return f"{self.prefix}[iqp]:{{*}}:{table}"

    def namespace_pattern(self) -> str:
        return f"{self.prefix}*"
