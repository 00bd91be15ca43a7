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
  not change the data (``ReturnConsumedCapacity``), never an allow-list;
* a table is named by where it lives (:class:`TableRef`: partition or endpoint,
  Region, account, name), resolved against the calling client's
  :class:`Location`, and everything below is derived from it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import msgpack


class _Account(Protocol):
    """What :func:`refs_for_table_arn` reads of the settings (config.Settings has it)."""

    @property
    def account_id(self) -> str | None: ...


class NotCanonical(ValueError):
    """A request parameter that cannot be canonicalized (DynamoDB would reject it)."""


#: Characters DynamoDB allows in a table name (3-255 of them; length is DynamoDB's to check).
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_ACCOUNT = re.compile(r"[0-9]{12}")
_REGION = re.compile(r"[a-z0-9-]{1,32}")
#: Hosts of AWS's own DynamoDB endpoints (regional, FIPS, dual-stack, VPC interface
#: endpoints): a table behind them is named by its partition and Region, whichever
#: of them a client was given.
_AWS_HOSTS = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws", ".c2s.ic.gov", ".sc2s.sgov.gov")


class TableRef(NamedTuple):
    """One table, named by where it lives: the identity behind every key of the table.

    ``where`` is the AWS partition (``"aws"``, ``"aws-cn"``…) for AWS's endpoints, or
    the endpoint URL of any other DynamoDB (DynamoDB Local, a test server).
    ``account`` is ``""`` for the calling credentials' own account and an account
    id only for a table an ARN names in another account (docs/consistency.md).
    Item digests, query variants, token, schema and lease keys, and invalidations
    are all derived from it, so two Regions or accounts never share any of them.
    """

    where: str
    region: str
    account: str
    name: str

    @property
    def place(self) -> str:
        """The location part of Redis key names: Region, foreign account, endpoint."""
        return _tag(self).rpartition(":")[0]


@functools.lru_cache(maxsize=4096)
def _tag(table: TableRef) -> str:
    """``<place>:<name>``, the table's part of every key name (memoized: on every hit)."""
    place = table.region + (f"/{table.account}" if table.account else "")
    if "/" in table.where:  # an endpoint URL: a short digest of it
        place += "@" + hashlib.blake2b(table.where.encode("utf-8"), digest_size=6).hexdigest()
    return f"{place}:{table.name}"


class Location(NamedTuple):
    """Where one client's requests go: computed once, when the handlers are attached."""

    where: str
    region: str
    #: The account of the client's credentials when known (the ``account_id``
    #: option), else "".
    own_account: str = ""

    def refs(self, name_or_arn: str) -> tuple[TableRef, ...]:
        """Every TableRef a request naming ``name_or_arn`` may concern.

        One, except for an ARN while the client's own account is unknown: the ARN
        may name the very table a plain name does, or another account's. A read
        then bypasses the cache; a write invalidates both. Raises NotCanonical
        for anything that is not a table name or a DynamoDB table ARN.
        """
        if not isinstance(name_or_arn, str):
            raise NotCanonical(f"TableName must be a string, got {type(name_or_arn).__name__}")
        return _resolve(self, name_or_arn)

    def api_name(self, table: TableRef) -> str | None:
        """How this client names ``table`` in a request; None when it cannot say."""
        if table.account == "" and table.region == self.region:
            return table.name
        account = table.account or self.own_account
        if not account:
            return None
        partition = self.where if "/" not in self.where else "aws"
        return f"arn:{partition}:dynamodb:{table.region}:{account}:table/{table.name}"


@functools.lru_cache(maxsize=4096)
def _resolve(location: Location, name_or_arn: str) -> tuple[TableRef, ...]:
    """Location.refs, memoized: a hit costs a dict lookup, not a parse."""
    if not name_or_arn.startswith("arn:"):
        if not _TABLE_NAME.fullmatch(name_or_arn):
            raise NotCanonical(f"not a table name: {name_or_arn!r}")
        return (TableRef(location.where, location.region, "", name_or_arn),)
    _, region, account, name = parse_table_arn(name_or_arn)
    local = TableRef(location.where, region, "", name)
    if location.own_account and account == location.own_account:
        return (local,)
    foreign = TableRef(location.where, region, account, name)
    return (foreign,) if location.own_account else (local, foreign)


def location_of(client: Any, account_id: str | None = None) -> Location:
    """A botocore / aiobotocore client's Location (no I/O: read from ``client.meta``).

    The own account is ``account_id`` when given, else the account of the
    client's credentials when botocore knows it without a refresh (static
    credentials from ``AWS_ACCOUNT_ID`` or a profile's ``aws_account_id``).
    """
    meta = client.meta
    region = meta.region_name or ""
    endpoint = (meta.endpoint_url or "").rstrip("/").lower()
    host = urlsplit(endpoint).hostname or ""
    if not endpoint or host.endswith(_AWS_HOSTS):
        where = getattr(meta, "partition", None) or "aws"
    else:
        where = endpoint
    return Location(where, region, account_id or _credentials_account(client))


def _credentials_account(client: Any) -> str:
    from botocore.credentials import Credentials, RefreshableCredentials

    credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)
    if not isinstance(credentials, Credentials) or isinstance(credentials, RefreshableCredentials):
        return ""  # none, or reading the account could refresh them (I/O)
    account = getattr(credentials, "account_id", None)
    return account if isinstance(account, str) and _ACCOUNT.fullmatch(account) else ""


def parse_table_arn(arn: str) -> tuple[str, str, str, str]:
    """(partition, Region, account, table name) of a table, index or stream ARN."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "dynamodb":
        raise NotCanonical(f"not a DynamoDB table ARN: {arn!r}")
    _, partition, _, region, account, resource = parts
    kind, _, rest = resource.partition("/")
    name = rest.split("/", 1)[0]
    if (
        kind != "table"
        or not _TABLE_NAME.fullmatch(name)
        or not _ACCOUNT.fullmatch(account)
        or not _REGION.fullmatch(region)
    ):
        raise NotCanonical(f"not a DynamoDB table ARN: {arn!r}")
    return partition, region, account, name


def refs_for_table_arn(
    arn: str, settings: _Account, *, endpoint_url: str | None = None
) -> tuple[TableRef, ...]:
    """Every TableRef whose entries a write to the table ``arn`` names must drop.

    For invalidators that learn of writes by ARN, such as a DynamoDB Streams
    consumer (``eventSourceARN``: ``arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/…``;
    index ARNs work too). Region and account come from the ARN; the table is
    the one behind AWS's endpoints of the ARN's partition, or behind
    ``endpoint_url`` when the cached clients use another DynamoDB. When
    ``settings.account_id`` is unset, both the own-account form (what a plain
    name caches under) and the ARN's account form are returned.
    Raises NotCanonical (a ValueError) for anything else.
    """
    partition, region, _, _ = parse_table_arn(arn)
    where = endpoint_url.rstrip("/").lower() if endpoint_url else partition
    return Location(where, region, settings.account_id or "").refs(arn)


def table_name(name_or_arn: str) -> str:
    """Reduce a table ARN (``arn:aws:dynamodb:...:table/Name``) to its name."""
    if name_or_arn.startswith("arn:"):
        return parse_table_arn(name_or_arn)[3]
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
    try:
        packed = msgpack.packb(structure, use_bin_type=True)
    except UnicodeEncodeError as exc:
        raise NotCanonical(f"not valid UTF-8: {exc}") from None
    return hashlib.blake2b(packed, digest_size=16).hexdigest()


def item_digest(table: TableRef, key: Mapping[str, Any]) -> str:
    """Identity of one item: where its table lives, its name, the canonical primary key.

    Key attributes are S, N or B (DynamoDB rejects anything else); the digest
    covers the msgpack'd flat list ``[where, region, account, table, name, type,
    value, …]`` — each part typed and length-prefixed, so no value can forge a
    separator. Raises NotCanonical (a ValueError) for what it cannot digest,
    such as a string holding a lone surrogate.
    """
    parts: list[Any] = [*table]
    for name in _key_names(key):
        parts += _key_part(name, key[name])
    return _key_digest(parts, b"ddbcache-item")


_KEY_TYPES = frozenset({"S", "N", "B"})


def _key_part(name: str, value: Any) -> tuple[str, str, Any]:
    """(name, type, canonical value) of one key attribute; keys are S, N or B."""
    tag, canon = canonical_value(value)
    if tag not in _KEY_TYPES:
        raise NotCanonical(f"key attribute {name!r} has type {tag}; keys are S, N or B")
    return (name, tag, canon)


def _key_digest(parts: list[Any], person: bytes) -> str:
    """128-bit digest of msgpack'd key parts (typed, length-prefixed)."""
    try:
        packed = msgpack.packb(parts, use_bin_type=True)
    except UnicodeEncodeError as exc:  # a lone surrogate: not UTF-8, DynamoDB's to judge
        raise NotCanonical(f"key is not valid UTF-8: {exc}") from None
    return hashlib.blake2b(packed, digest_size=16, person=person).hexdigest()


def partition_digest(table: TableRef, name: str | None, value: Any = None) -> str:
    """Identity of one partition: where its table lives, its name, the partition key
    attribute name and value.

    Canonical like :func:`item_digest` (the whole TableRef, numbers by value,
    binary by bytes).
    ``name=None`` names the table as a whole: the token GSI Queries, Scans and
    writes whose partition is unknown use.
    """
    parts: list[Any] = [*table]
    if name is not None:
        parts += _key_part(name, value)
    return _key_digest(parts, b"ddbcache-part")


#: The most buckets a table's entries may spread over on a cluster (``cluster_buckets``).
MAX_BUCKETS = 1024


class KeyLayout:
    """Names of every Redis key the library writes, for one namespace.

    Every key carries a hash tag (the part in braces) so that Redis Cluster puts
    an item's state in one slot (one Lua script touches it) while different
    items and query variants spread over all slots. Keys name the table's
    place (Region, a foreign account, a non-AWS endpoint's digest) before its name.

    With ``buckets`` (``cluster_buckets``, on a cluster only), a table's entries
    spread over that many hash tags instead, ``{<b>#<place>:<name>}``, and each
    bucket holds its own copy of the table's version tokens (``t:{<b>#…}``): an
    item's hash, its bucket's tokens and, for a Query page, its partition's hash
    share one slot, so a hit reads one node. A table-wide invalidation then
    replaces every copy (docs/consistency.md, "One node per hit on a cluster").
    The table's own token hash (:meth:`tokens`) keeps its generation and stays
    the name of the table everywhere else.
    """

    __slots__ = ("buckets", "namespace", "prefix")

    def __init__(self, namespace: str, buckets: int = 0) -> None:
        if not 0 <= buckets <= MAX_BUCKETS:
            raise ValueError(f"buckets must be 0..{MAX_BUCKETS}, got {buckets}")
        self.namespace = namespace
        self.prefix = namespace + ":"
        self.buckets = buckets

    def _tagged(self, kind: str, table: TableRef, entry_id: str, bucket_of: str) -> str:
        tag = _tag(table)
        if not self.buckets:
            return f"{self.prefix}{kind}:{{{entry_id}}}:{tag}"
        bucket = int(bucket_of[:8], 16) % self.buckets
        return f"{self.prefix}{kind}:{{{bucket}#{tag}}}:{entry_id}:{tag}"

    def item(self, table: TableRef, item_id: str) -> str:
        return self._tagged("i", table, item_id, item_id)

    def query(self, table: TableRef, variant_id: str, partition_id: str = "") -> str:
        """A Query/Scan variant's hash; with buckets, in the bucket of the partition its
        pages depend on (``partition_id``, when the page has one of its own)."""
        return self._tagged("q", table, variant_id, partition_id or variant_id)

    def partition(self, table: TableRef, partition_id: str) -> str:
        """A partition's token hash (see :func:`partition_digest`): spread over slots."""
        return self._tagged("p", table, partition_id, partition_id)

    def tokens(self, table: TableRef) -> str:
        """The table's token hash: its generation, and its name in invalidations."""
        return f"{self.prefix}t:{{{_tag(table)}}}"

    def tokens_for(self, table: TableRef, key: str) -> str:
        """The token hash an entry at ``key`` (an item or variant hash) is checked against:
        the table's, or with buckets the copy in the key's own bucket (same slot)."""
        if not self.buckets:
            return self.tokens(table)
        start = key.index("{", len(self.prefix))
        return self.prefix + "t:" + key[start : key.index("}", start) + 1]

    def token_copies(self, token_key: str) -> list[str]:
        """The bucket copies of a table's token hash (none without buckets, and none of
        a key that is itself a copy)."""
        head = self.prefix + "t:{"
        if not self.buckets or not token_key.startswith(head) or "#" in token_key:
            return []
        tag = token_key[len(head) : -1]
        return [f"{head}{bucket}#{tag}}}" for bucket in range(self.buckets)]

    def schema(self, table: TableRef) -> str:
        return f"{self.prefix}k:{{{_tag(table)}}}"

    def marker(self) -> str:
        """Which layout the namespace uses on a cluster (see layout_marker.py)."""
        return f"{self.prefix}layout"

    def table_pattern(self, name: str) -> str:
        """SCAN pattern matching every entry (and partition token) of the tables called
        ``name``, wherever they live."""
        return f"{self.prefix}[iqp]:{{*}}:*:{name}"

    def tokens_pattern(self, name: str) -> str:
        """SCAN pattern matching the token hashes of the tables called ``name`` (their
        bucket copies too)."""
        return f"{self.prefix}t:{{*:{name}}}"

    def namespace_pattern(self) -> str:
        return f"{self.prefix}*"


def table_of_key(key: str) -> str:
    """The table name in a key :class:`KeyLayout` names for a table (entries, tokens)."""
    return key.rstrip("}").rpartition(":")[2]
