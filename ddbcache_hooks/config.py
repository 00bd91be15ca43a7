"""Options: one table of every setting, its default, its ``DDBCACHE_*`` variable.

``register()`` keyword arguments, environment variables, ``ddbcache info`` and
docs/configuration.md all come from :data:`OPTIONS`. Precedence is
code > environment > default; every value is validated here, and a bad one
raises :class:`~ddbcache_hooks.errors.ConfigurationError` naming the option
(or the variable it came from).
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigurationError
from .policy import POLICIES, ReadKind

TTL_KINDS = ("item", "item_negative", "query", "scan")
CONSISTENCY_MODES = ("eventual", "strict")
QUERY_INVALIDATION_MODES = ("partition", "write", "ttl")
ISOLATION_MODES = ("shared", "principal")
ENV_PREFIX = "DDBCACHE_"
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


# --- value checks ------------------------------------------------------------------


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return value


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _one_of(*choices: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise ConfigurationError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    return check


def _namespace(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAMESPACE.match(value):
        raise ConfigurationError(
            f"{name} must be 1-64 characters of letters, digits, '_', '.', ':' or '-'; "
            f"got {value!r}"
        )
    return value


def _ttl_config(name: str, value: Any) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a mapping of {', '.join(TTL_KINDS)}")
    unknown = sorted(set(value) - set(TTL_KINDS))
    if unknown:
        raise ConfigurationError(
            f"Unknown {name} keys: {unknown} (valid keys: {', '.join(TTL_KINDS)})"
        )
    return {kind: _positive_int(f"{name}[{kind!r}]", ttl) for kind, ttl in value.items()}


def _patterns(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise ConfigurationError(f"{name} must be a list of table names or patterns")
    return tuple(value)


def _key_schema(name: str, value: Any) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must map table names to (hash key, [range key])")
    out = {}
    for table, names in value.items():
        parts = (names,) if isinstance(names, str) else tuple(names)
        if not 1 <= len(parts) <= 2 or not all(isinstance(p, str) and p for p in parts):
            raise ConfigurationError(
                f"{name}[{table!r}] must be 'hash' or ('hash', 'range'), got {names!r}"
            )
        out[str(table)] = parts
    return out


def _account_id(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{12}", value):
        raise ConfigurationError(f"{name} must be a 12-digit AWS account id, got {value!r}")
    return value


def _signing_key(name: str, value: Any) -> bytes | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray)) or len(value) < 16:
        raise ConfigurationError(f"{name} must be at least 16 bytes")
    return bytes(value)


def _tables(name: str, value: Any) -> dict[str, TablePolicy]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must map table names or patterns to TablePolicy")
    out = {}
    for pattern, policy in value.items():
        if isinstance(policy, Mapping):
            try:
                policy = TablePolicy(**policy)
            except TypeError as exc:
                raise ConfigurationError(f"{name}[{pattern!r}]: {exc}") from None
        if not isinstance(policy, TablePolicy):
            raise ConfigurationError(f"{name}[{pattern!r}] must be a TablePolicy or a dict")
        policy.validate(f"{name}[{pattern!r}]")
        out[str(pattern)] = policy
    return out


# --- environment parsing -----------------------------------------------------------


def _env_int(text: str) -> int:
    return int(text.strip())


def _env_str(text: str) -> str:
    return text.strip()


def _env_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _env_ttl_config(text: str) -> dict[str, int]:
    """``item=60,query=30``."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, ttl = part.partition("=")
        if not sep:
            raise ValueError(f"expected kind=seconds, got {part!r}")
        out[kind.strip()] = int(ttl)
    return out


def _env_key_schema(text: str) -> dict[str, tuple[str, ...]]:
    """``orders=pk:sk,users=id``."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        table, sep, names = part.partition("=")
        if not sep:
            raise ValueError(f"expected table=hash[:range], got {part!r}")
        out[table.strip()] = tuple(names.strip().split(":"))
    return out


def _optional_text(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, got {value!r}")
    return value


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value


def _near_cache(name: str, value: Any) -> Any:
    from .near import NearCache

    if value is None or isinstance(value, NearCache):
        return value
    raise ConfigurationError(f"{name} must be a NearCache(max_items=..., ttl_ms=...) or None")


def _env_near_cache(text: str) -> Any:
    """``max_items=10000,ttl_ms=500`` (or ``off``)."""
    from .near import NearCache

    if text.strip().lower() in ("", "0", "off", "no", "false"):
        return None
    values = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, number = part.partition("=")
        if not sep or name.strip() not in ("max_items", "ttl_ms"):
            raise ValueError(f"expected max_items=N,ttl_ms=N, got {part!r}")
        values[name.strip()] = int(number)
    return NearCache(**values)


def _env_json(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    check: Callable[[str, Any], Any]
    doc: str
    from_env: Callable[[str], Any] | None = _env_str
    secret: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


@dataclass(frozen=True)
class TablePolicy:
    """Overrides for the tables matching one name or ``*`` pattern.

    Unset fields (None) inherit from the registration's options.
    """

    enabled: bool = True
    ttl: int | None = None
    ttl_config: Mapping[str, int] | None = None
    query_admission: int | None = None
    scan_admission: int | None = None
    query_invalidation: str | None = None
    max_entry_bytes: int | None = None
    #: Seconds an expired entry is kept to answer reads DynamoDB fails (0: off).
    stale_if_error_s: int | None = None
    #: Per-operation switches, e.g. ``{"Scan": False}``.
    operations: Mapping[str, bool] | None = None

    def validate(self, where: str) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigurationError(f"{where}.enabled must be True or False")
        for name in ("ttl", "query_admission", "scan_admission", "max_entry_bytes"):
            if getattr(self, name) is not None:
                _positive_int(f"{where}.{name}", getattr(self, name))
        _ttl_config(f"{where}.ttl_config", self.ttl_config)
        if self.stale_if_error_s is not None:
            _non_negative_int(f"{where}.stale_if_error_s", self.stale_if_error_s)
        if self.query_invalidation is not None:
            _one_of(*QUERY_INVALIDATION_MODES)(
                f"{where}.query_invalidation", self.query_invalidation
            )
        for op, on in (self.operations or {}).items():
            policy = POLICIES.get(op)
            if policy is None or not policy.cacheable:
                cacheable = sorted(name for name, p in POLICIES.items() if p.cacheable)
                raise ConfigurationError(
                    f"{where}.operations: {op!r} is not a cached operation ({', '.join(cacheable)})"
                )
            if not isinstance(on, bool):
                raise ConfigurationError(f"{where}.operations[{op!r}] must be True or False")


OPTIONS: tuple[Option, ...] = (
    Option("ttl", 3600, _positive_int, "Default entry TTL in seconds.", _env_int),
    Option(
        "ttl_config",
        None,
        _ttl_config,
        "TTL per read kind: keys item, item_negative, query, scan (seconds).",
        _env_ttl_config,
    ),
    Option("namespace", "CC", _namespace, "Prefix of every Redis key; isolates deployments."),
    Option(
        "key_schema",
        None,
        _key_schema,
        "Primary key names per table, instead of a DescribeTable call.",
        _env_key_schema,
    ),
    Option("include_tables", ("*",), _patterns, "Tables to cache (names or * patterns).", _env_str),
    Option("exclude_tables", (), _patterns, "Tables never cached (wins over include).", _env_str),
    Option(
        "tables",
        None,
        _tables,
        "Per-table TablePolicy overrides, by name or pattern (JSON in the variable).",
        _env_json,
    ),
    Option(
        "consistency",
        "eventual",
        _one_of(*CONSISTENCY_MODES),
        "'strict' makes misses read with ConsistentRead=True.",
    ),
    Option(
        "settle_ms",
        1000,
        _non_negative_int,
        "Fills within this window after an invalidation get at most the rest of it as TTL.",
        _env_int,
    ),
    Option(
        "query_invalidation",
        "partition",
        _one_of(*QUERY_INVALIDATION_MODES),
        "'partition': a write drops its partition's Query pages and the table's GSI Query "
        "and Scan pages; 'write': every write drops all of them; 'ttl': only the TTL does.",
    ),
    Option("query_admission", 1, _positive_int, "Identical Query misses before storing.", _env_int),
    Option("scan_admission", 2, _positive_int, "Identical Scan misses before storing.", _env_int),
    Option("lease_ms", 2000, _positive_int, "How long a fill lease is held at most.", _env_int),
    Option(
        "lease_wait_ms",
        200,
        _non_negative_int,
        "How long a miss waits for another caller's fill before reading DynamoDB itself.",
        _env_int,
    ),
    Option(
        "stale_if_error_s",
        0,
        _non_negative_int,
        "Keep expired entries this long and answer a read that DynamoDB throttles or fails "
        "with 5xx from its expired entry (CacheMetadata.Stale); 0: off.",
        _env_int,
    ),
    Option(
        "early_refresh",
        True,
        _boolean,
        "Refresh a hot entry shortly before it expires (one caller, under a lease; XFetch).",
        _env_bool,
    ),
    Option("max_entry_bytes", 1 << 20, _positive_int, "Larger entries are not cached.", _env_int),
    Option(
        "compress_min_bytes",
        16384,
        _positive_int,
        "Entries from this size are compressed (zstd where installed, else zlib).",
        _env_int,
    ),
    Option(
        "account_id",
        None,
        _account_id,
        "The AWS account of the clients' credentials (default: the credentials' own, "
        "when known): ARNs naming it share the entries of plain table names; "
        "unknown, reads naming a table by ARN bypass the cache.",
    ),
    Option(
        "signing_key",
        None,
        _signing_key,
        "HMAC key; when set, every entry is signed and unsigned entries are ignored.",
        secret=True,
    ),
    Option(
        "redis_timeout_ms",
        50,
        _positive_int,
        "Socket time-out of the cache's Redis connections (async: at least 250).",
        _env_int,
    ),
    Option(
        "redis_connect_timeout_ms",
        100,
        _positive_int,
        "Connect time-out of the cache's Redis connections (async: at least 1000).",
        _env_int,
    ),
    Option(
        "redis_max_connections",
        256,
        _positive_int,
        "Most Redis connections the cache opens per process (opened on demand).",
        _env_int,
    ),
    Option(
        "redis_pool_wait_ms",
        20,
        _non_negative_int,
        "How long a call waits for a free pooled connection before bypassing the cache.",
        _env_int,
    ),
    Option(
        "breaker_threshold",
        5,
        _positive_int,
        "Consecutive Redis failures that open the circuit breaker.",
        _env_int,
    ),
    Option(
        "breaker_cooldown_ms",
        5000,
        _positive_int,
        "How long the breaker stays open before one probe call.",
        _env_int,
    ),
    Option(
        "backlog_size",
        10000,
        _positive_int,
        "Undelivered invalidations remembered while Redis is down.",
        _env_int,
    ),
    Option(
        "near_cache",
        None,
        _near_cache,
        "An in-process NearCache(max_items, ttl_ms) in front of Redis (opt-in, bounded staleness).",
        _env_near_cache,
    ),
    Option(
        "publish_invalidations",
        True,
        _boolean,
        "Publish every invalidation for the near caches of other processes.",
        _env_bool,
    ),
    Option(
        "bulk_load_bypass_s",
        86400,
        _positive_int,
        "Longest time reads of a table bypass the cache after a StartBulkPutItems made through "
        "a registered client (a terminal DescribeBulkOperation ends it sooner).",
        _env_int,
    ),
    Option(
        "metrics_flush_s",
        0,
        _non_negative_int,
        "Write this process's counters to Redis every N seconds for `ddbcache stats` (0: off).",
        _env_int,
    ),
    Option(
        "access_recheck_s",
        300,
        _non_negative_int,
        "A hit goes only to credentials DynamoDB answered for that table and operation "
        "within this many seconds (their own first read goes to DynamoDB); 0: off, every "
        "caller is served (only for a namespace one principal uses).",
        _env_int,
    ),
    Option(
        "isolation",
        "shared",
        _one_of(*ISOLATION_MODES),
        "'principal': entries are scoped to the caller's IAM principal (for item- and "
        "attribute-level policies); 'shared': one entry serves every allowed caller.",
    ),
    Option(
        "iam_user",
        None,
        _optional_text,
        "ElastiCache user ID: when set, a rediss:// URL authenticates with IAM tokens.",
    ),
    Option(
        "iam_cache_name",
        None,
        _optional_text,
        "ElastiCache replication group ID or serverless cache name the IAM token is for.",
    ),
    Option(
        "iam_region",
        None,
        _optional_text,
        "Region of the ElastiCache cache (default: the session's Region).",
    ),
    Option(
        "iam_serverless",
        False,
        _boolean,
        "The cache is ElastiCache Serverless (the token names ResourceType=ServerlessCache).",
        _env_bool,
    ),
)

_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class TableSettings:
    """What the cache does for one table, every override applied."""

    ttl_ms: Mapping[str, int]
    admission: Mapping[ReadKind, int]
    query_invalidation: str
    max_entry_bytes: int
    disabled_operations: frozenset[str]
    #: How long an expired entry may answer a read DynamoDB fails (ms; 0: never).
    stale_if_error_ms: int = 0

    def caches(self, operation: str) -> bool:
        return operation not in self.disabled_operations


@dataclass(frozen=True)
class Settings:
    """Validated options of one registration."""

    ttl: int = 3600
    ttl_config: Mapping[str, int] = field(default_factory=dict)
    namespace: str = "CC"
    key_schema: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    include_tables: tuple[str, ...] = ("*",)
    exclude_tables: tuple[str, ...] = ()
    tables: Mapping[str, TablePolicy] = field(default_factory=dict)
    consistency: str = "eventual"
    settle_ms: int = 1000
    query_invalidation: str = "partition"
    query_admission: int = 1
    scan_admission: int = 2
    lease_ms: int = 2000
    lease_wait_ms: int = 200
    stale_if_error_s: int = 0
    early_refresh: bool = True
    max_entry_bytes: int = 1 << 20
    compress_min_bytes: int = 16384
    account_id: str | None = None
    signing_key: bytes | None = None
    redis_timeout_ms: int = 50
    redis_connect_timeout_ms: int = 100
    redis_max_connections: int = 256
    redis_pool_wait_ms: int = 20
    breaker_threshold: int = 5
    breaker_cooldown_ms: int = 5000
    backlog_size: int = 10000
    near_cache: Any = None
    publish_invalidations: bool = True
    bulk_load_bypass_s: int = 86400
    metrics_flush_s: int = 0
    access_recheck_s: int = 300
    isolation: str = "shared"
    iam_user: str | None = None
    iam_cache_name: str | None = None
    iam_region: str | None = None
    iam_serverless: bool = False
    _table_cache: dict[str, TableSettings | None] = field(
        default_factory=dict, repr=False, compare=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def resolve(
        cls, options: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Validate ``options`` (code) over ``environ`` over the defaults."""
        unknown = sorted(set(options) - set(_BY_NAME))
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(unknown)}; see docs/configuration.md"
            )
        values = {}
        env_values = from_environment(environ) if environ is not None else {}
        for option in OPTIONS:
            if option.name in options:
                values[option.name] = option.check(option.name, options[option.name])
            elif option.name in env_values:
                values[option.name] = env_values[option.name]
            else:
                values[option.name] = option.check(option.name, option.default)
        return cls(**values)

    def ttl_seconds(self, kind: str) -> int:
        return self.ttl_config.get(kind, self.ttl)

    @property
    def max_ttl_ms(self) -> int:
        """The longest an entry's hash may live: its TTL and the stale-if-error grace."""
        ttls = [self.ttl_seconds(kind) for kind in TTL_KINDS]
        graces = [self.stale_if_error_s]
        for policy in self.tables.values():
            ttls.append(policy.ttl or 0)
            ttls.extend((policy.ttl_config or {}).values())
            graces.append(policy.stale_if_error_s or 0)
        return (max(ttls) + max(graces)) * 1000

    def for_table(self, table: str) -> TableSettings | None:
        """The table's settings, or None when it is not cached at all (memoized)."""
        try:
            return self._table_cache[table]
        except KeyError:
            pass
        resolved = self._resolve_table(table)
        with self._lock:
            self._table_cache[table] = resolved
        return resolved

    def _resolve_table(self, table: str) -> TableSettings | None:
        if not any(fnmatch.fnmatchcase(table, p) for p in self.include_tables):
            return None
        if any(fnmatch.fnmatchcase(table, p) for p in self.exclude_tables):
            return None
        merged: dict[str, Any] = {}
        ttl_config = dict(self.ttl_config)
        default_ttl = self.ttl
        operations: dict[str, bool] = {}
        for pattern in sorted(self.tables, key=_specificity):
            if not fnmatch.fnmatchcase(table, pattern):
                continue
            policy = self.tables[pattern]
            if not policy.enabled:
                return None
            for f in fields(policy):
                value = getattr(policy, f.name)
                if value is not None and f.name not in ("enabled", "ttl", "ttl_config"):
                    merged[f.name] = value
            if policy.ttl is not None:
                default_ttl = policy.ttl
                ttl_config = {}
            ttl_config.update(policy.ttl_config or {})
            operations.update(policy.operations or {})
        return TableSettings(
            ttl_ms={kind: ttl_config.get(kind, default_ttl) * 1000 for kind in TTL_KINDS},
            admission={
                ReadKind.ITEM: 1,
                ReadKind.QUERY: merged.get("query_admission", self.query_admission),
                ReadKind.SCAN: merged.get("scan_admission", self.scan_admission),
            },
            query_invalidation=merged.get("query_invalidation", self.query_invalidation),
            max_entry_bytes=merged.get("max_entry_bytes", self.max_entry_bytes),
            disabled_operations=frozenset(op for op, on in operations.items() if not on),
            stale_if_error_ms=merged.get("stale_if_error_s", self.stale_if_error_s) * 1000,
        )

    def describe(self) -> dict[str, Any]:
        """Effective values for display, secrets masked."""
        out = {}
        for option in OPTIONS:
            value = getattr(self, option.name)
            if option.secret and value:
                value = "****"
            out[option.name] = value
        return out


def _specificity(pattern: str) -> tuple[int, int]:
    """Order patterns from least to most specific, so specific ones override."""
    wildcards = sum(pattern.count(c) for c in "*?[")
    return (0 if wildcards else 1, len(pattern) - wildcards)


def from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Options set by ``DDBCACHE_*`` variables, validated; errors name the variable."""
    environ = os.environ if environ is None else environ
    values = {}
    for option in OPTIONS:
        raw = environ.get(option.env)
        if raw is None or option.from_env is None:
            continue
        try:
            parsed = option.from_env(raw)
        except ValueError as exc:
            raise ConfigurationError(f"{option.env}={raw!r}: {exc}") from None
        try:
            values[option.name] = option.check(option.name, parsed)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{option.env}={raw!r}: {exc}") from None
    return values


def env_flag(name: str, environ: Mapping[str, str] | None = None) -> bool | None:
    """A boolean ``DDBCACHE_<name>`` variable: True, False, or None when unset."""
    environ = os.environ if environ is None else environ
    raw = environ.get(ENV_PREFIX + name)
    if raw is None:
        return None
    try:
        return _env_bool(raw)
    except ValueError:
        raise ConfigurationError(f"{ENV_PREFIX}{name}={raw!r}: not a boolean") from None


__all__ = ["OPTIONS", "Option", "Settings", "TablePolicy", "TableSettings"]


def options_table() -> str:
    """The option reference as a Markdown table (docs/configuration.md embeds it)."""
    lines = [
        "| option | variable | default | meaning |",
        "|---|---|---|---|",
    ]
    for option in OPTIONS:
        default = option.default
        shown = "—" if default in (None, ()) else f"`{default!r}`"
        variable = f"`{option.env}`" if option.from_env is not None else "— (code only)"
        lines.append(f"| `{option.name}` | {variable} | {shown} | {option.doc} |")
    return "\n".join(lines)
