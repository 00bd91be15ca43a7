"""Options: one table of every setting, its default, its ``DDBCACHE_*`` variable.

``register()`` keyword arguments, environment variables, ``ddbcache info`` and
docs/configuration.md all come from :data:`OPTIONS`. Precedence is
code > environment > default; every value is validated here, and a bad one
raises :class:`~ddbcache_hooks.errors.ConfigurationError` naming the option
(or the variable it came from).
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypedDict, get_args

from ._values import (
    BOOLEAN_FORM,
    TTL_KINDS,
    _account_id,
    _boolean,
    _buckets,
    _env_bool,
    _env_int,
    _env_json,
    _env_key_schema,
    _env_near_cache,
    _env_str,
    _env_ttl_config,
    _key_schema,
    _namespace,
    _near_cache,
    _non_negative_int,
    _one_of,
    _optional_text,
    _patterns,
    _positive_int,
    _signing_key,
    _ttl_config,
)
from .errors import ConfigurationError
from .keys import MAX_BUCKETS
from .near import NearCache
from .policy import POLICIES, ReadKind

# Unpack[Options] types register()'s **options; typing has Unpack from 3.11 only.
if sys.version_info >= (3, 11):
    from typing import Unpack as Unpack
else:
    from typing_extensions import Unpack as Unpack

#: The values of the choice options, as types (the checks below accept exactly these).
Consistency = Literal["eventual", "strict"]
QueryInvalidation = Literal["partition", "write", "ttl"]
ResponseMetadata = Literal["synthesize", "omit"]
Isolation = Literal["shared", "principal"]
CONSISTENCY_MODES: tuple[str, ...] = get_args(Consistency)
QUERY_INVALIDATION_MODES: tuple[str, ...] = get_args(QueryInvalidation)
RESPONSE_METADATA_MODES: tuple[str, ...] = get_args(ResponseMetadata)
ISOLATION_MODES: tuple[str, ...] = get_args(Isolation)
ENV_PREFIX = "DDBCACHE_"
log = logging.getLogger("ddbcache_hooks")


# --- value checks (the rest are in _values.py) ---------------------------------


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


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    check: Callable[[str, Any], Any]
    doc: str
    from_env: Callable[[str], Any] | None = _env_str
    secret: bool = False
    #: What the variable must hold, for messages (derived from the check when None).
    form: str | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def expected(self) -> str:
        """The variable's expected form, e.g. "a positive whole number of seconds"."""
        if self.form is not None:
            return self.form
        if self.check is _boolean:
            return BOOLEAN_FORM
        unit = _unit(self.name)
        if self.check is _positive_int:
            return f"a positive whole number{unit}"
        if self.check is _non_negative_int:
            return f"a whole number{unit}, 0 or more"
        choices = getattr(self.check, "choices", None)
        if choices:
            return f"one of {', '.join(choices)}"
        return "a valid value (docs/configuration.md)"


def _unit(name: str) -> str:
    if name.endswith("_ms"):
        return " of milliseconds"
    if name == "ttl" or name.endswith("_s"):
        return " of seconds"
    if name.endswith("_bytes"):
        return " of bytes"
    return ""


@dataclass(frozen=True)
class TablePolicy:
    """Overrides for the tables matching one name or ``*`` pattern.

    Unset fields (None) inherit from the registration's options.
    """

    enabled: bool = True
    """False: the matching tables are not cached at all."""
    ttl: int | None = None
    """Default entry TTL of these tables (seconds)."""
    ttl_config: Mapping[str, int] | None = None
    """TTL per read kind: ``item``, ``item_negative``, ``query``, ``scan`` (seconds)."""
    query_admission: int | None = None
    """Identical Query misses before a page is stored."""
    scan_admission: int | None = None
    """Identical Scan misses before a page is stored."""
    query_invalidation: str | None = None
    """``"partition"``, ``"write"`` or ``"ttl"`` (see the option of that name)."""
    max_entry_bytes: int | None = None
    """Larger entries are not cached."""
    stale_if_error_s: int | None = None
    """Seconds an expired entry is kept to answer reads DynamoDB fails (0: off)."""
    write_through: bool | None = None
    """Writes store the item they produced (docs/consistency.md, "Write-through")."""
    operations: Mapping[str, bool] | None = None
    """Per-operation switches, e.g. ``{"Scan": False}``."""

    def validate(self, where: str) -> None:
        """Raise ConfigurationError, naming ``where``, for a bad field."""
        if not isinstance(self.enabled, bool):
            raise ConfigurationError(f"{where}.enabled must be True or False")
        for name in ("ttl", "query_admission", "scan_admission", "max_entry_bytes"):
            if getattr(self, name) is not None:
                _positive_int(f"{where}.{name}", getattr(self, name))
        _ttl_config(f"{where}.ttl_config", self.ttl_config)
        if self.stale_if_error_s is not None:
            _non_negative_int(f"{where}.stale_if_error_s", self.stale_if_error_s)
        if self.write_through is not None and not isinstance(self.write_through, bool):
            raise ConfigurationError(f"{where}.write_through must be True or False")
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


class Options(TypedDict, total=False):
    """The keyword options of ``register()`` / ``register_async()``, as type checkers see them.

    Each key is a row of :data:`OPTIONS` (default, ``DDBCACHE_*`` variable,
    meaning; docs/configuration.md lists them) and a field of :class:`Settings`
    (the validated value); a unit test keeps the three in step.
    """

    ttl: int
    ttl_config: Mapping[str, int] | None
    namespace: str
    key_schema: Mapping[str, str | Sequence[str]] | None
    include_tables: str | Sequence[str]
    exclude_tables: str | Sequence[str]
    tables: Mapping[str, TablePolicy | Mapping[str, Any]] | None
    consistency: Consistency
    settle_ms: int
    query_invalidation: QueryInvalidation
    query_admission: int
    scan_admission: int
    lease_ms: int
    lease_wait_ms: int
    stale_if_error_s: int
    response_metadata: ResponseMetadata
    early_refresh: bool
    write_through: bool
    max_entry_bytes: int
    compress_min_bytes: int
    account_id: str | None
    signing_key: str | bytes | None
    redis_timeout_ms: int
    redis_connect_timeout_ms: int
    redis_max_connections: int
    redis_pool_wait_ms: int
    breaker_threshold: int
    breaker_cooldown_ms: int
    backlog_size: int
    near_cache: NearCache | None
    publish_invalidations: bool
    bulk_load_bypass_s: int
    metrics_flush_s: int
    access_recheck_s: int
    isolation: Isolation
    iam_user: str | None
    iam_cache_name: str | None
    iam_region: str | None
    iam_serverless: bool
    cluster_buckets: int


OPTIONS: tuple[Option, ...] = (
    Option("ttl", 3600, _positive_int, "Default entry TTL in seconds.", _env_int),
    Option(
        "ttl_config",
        None,
        _ttl_config,
        "TTL per read kind: keys item, item_negative, query, scan (seconds).",
        _env_ttl_config,
        form="kind=seconds pairs such as item=60,query=30 "
        "(kinds: item, item_negative, query, scan)",
    ),
    Option(
        "namespace",
        "CC",
        _namespace,
        "Prefix of every Redis key; isolates deployments.",
        form="1-64 characters of letters, digits, '_', '.', ':' or '-'",
    ),
    Option(
        "key_schema",
        None,
        _key_schema,
        "Primary key names per table, instead of a DescribeTable call.",
        _env_key_schema,
        form="table=hash[:range] pairs such as orders=pk:sk,users=id",
    ),
    Option("include_tables", ("*",), _patterns, "Tables to cache (names or * patterns).", _env_str),
    Option("exclude_tables", (), _patterns, "Tables never cached (wins over include).", _env_str),
    Option(
        "tables",
        None,
        _tables,
        "Per-table TablePolicy overrides, by name or pattern (JSON in the variable).",
        _env_json,
        form='a JSON object of table patterns to TablePolicy fields, e.g. {"audit*": '
        '{"enabled": false}}',
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
        "response_metadata",
        "synthesize",
        _one_of(*RESPONSE_METADATA_MODES),
        "'synthesize': a hit carries a ResponseMetadata shaped as botocore's (status 200, a "
        "synthetic RequestId, header x-ddbcache); 'omit': none (the reference's shape).",
    ),
    Option(
        "early_refresh",
        True,
        _boolean,
        "Refresh a hot entry shortly before it expires (one caller, under a lease; XFetch).",
        _env_bool,
    ),
    Option(
        "write_through",
        False,
        _boolean,
        "A PutItem, an UpdateItem returning ALL_NEW and a DeleteItem store the item they "
        "produced (guarded by write intents: one more Redis round trip per write).",
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
        form="a 12-digit AWS account id",
    ),
    Option(
        "signing_key",
        None,
        _signing_key,
        "HMAC key; when set, every entry is signed and unsigned entries are ignored.",
        secret=True,
        form="a key of at least 16 bytes",
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
        form="max_items=N,ttl_ms=N (or off)",
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
    Option(
        "cluster_buckets",
        0,
        _buckets,
        "On a Redis Cluster: spread each table over this many buckets, each with a copy of "
        "the table's tokens, so a hit reads one node (every process of the namespace must "
        "agree; see docs/operations.md); 0: each entry in a slot of its own.",
        _env_int,
        form=f"0, or 1-{MAX_BUCKETS} (about 4 per shard)",
    ),
)

_BY_NAME = {option.name: option for option in OPTIONS}
_STRUCTURED = (_env_ttl_config, _env_key_schema, _env_json, _env_near_cache)


def _document_options() -> None:
    """Each key of :class:`Options` in its docstring, from the row of :data:`OPTIONS`."""
    rows = []
    for option in OPTIONS:
        variable = f", ``{option.env}``" if option.from_env is not None else ""
        rows.append(f"- ``{option.name}`` (default ``{option.default!r}``{variable}): {option.doc}")
    intro = inspect.cleandoc(Options.__doc__ or "")
    Options.__doc__ = f"{intro}\n\nThe options:\n\n" + "\n".join(rows)


_document_options()


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
    #: Writes store the item they produced (write intents make it safe).
    write_through: bool = False

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
    response_metadata: str = "synthesize"
    early_refresh: bool = True
    write_through: bool = False
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
    near_cache: NearCache | None = None
    publish_invalidations: bool = True
    bulk_load_bypass_s: int = 86400
    metrics_flush_s: int = 0
    access_recheck_s: int = 300
    isolation: str = "shared"
    iam_user: str | None = None
    iam_cache_name: str | None = None
    iam_region: str | None = None
    iam_serverless: bool = False
    cluster_buckets: int = 0
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
            write_through=merged.get("write_through", self.write_through),
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


#: ``DDBCACHE_*`` variables that are not options: name -> what it does (docs/configuration.md).
OTHER_VARIABLES: dict[str, str] = {
    "DDBCACHE_ENABLED": "switches environment activation on (1) or caching off everywhere (0)",
    "DDBCACHE_REDIS_URL": "the Redis URL of environment activation and the ddbcache command",
    "DDBCACHE_RUN_PID": "set by ddbcache-run: the process it started",
    "DDBCACHE_RUN_CHILDREN": "set by ddbcache-run --children",
    "DDBCACHE_REDIS_SERVER": "the redis-server / valkey-server binary of the demo and tests",
    "DDBCACHE_CHECKER_SCALE": "how long the test suite's consistency checker runs",
}

_warned_unknown: set[str] = set()


def known_variables() -> list[str]:
    """Every ``DDBCACHE_*`` name the library reads."""
    return [option.env for option in OPTIONS] + list(OTHER_VARIABLES)


def unknown_variables(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """``DDBCACHE_*`` names nothing reads, each with the closest known name (or None)."""
    import difflib

    environ = os.environ if environ is None else environ
    known = known_variables()
    out: dict[str, str | None] = {}
    suffixes = {name[len(ENV_PREFIX) :]: name for name in known}
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            # Compared without the shared prefix, which would make every name look close.
            suffix = name[len(ENV_PREFIX) :].upper()
            close = difflib.get_close_matches(suffix, list(suffixes), n=1, cutoff=0.6)
            out[name] = suffixes[close[0]] if close else None
    return out


def unknown_variable_message(name: str, suggestion: str | None) -> str:
    hint = f"did you mean {suggestion}?" if suggestion else "see docs/configuration.md"
    return f"ddbcache-hooks: unknown variable {name} is ignored; {hint}"


def warn_unknown_variables(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Log each unknown ``DDBCACHE_*`` name once per process; return all of them."""
    environ = os.environ if environ is None else environ
    if not any(name.startswith(ENV_PREFIX) for name in environ):
        return {}
    unknown = unknown_variables(environ)
    for name, suggestion in unknown.items():
        if name not in _warned_unknown:
            _warned_unknown.add(name)
            log.warning("%s", unknown_variable_message(name, suggestion))
    return unknown


def _shown(option: Option, raw: str) -> str:
    """The raw value for a message; a secret's is never shown."""
    if option.secret:
        return f"a value of {len(raw.encode('utf-8'))} bytes (not shown)"
    return repr(raw)


def env_error(option: Option, raw: str, detail: str = "") -> str:
    """``DDBCACHE_TTL must be a positive whole number of seconds, got 'abc'``."""
    message = f"{option.env} must be {option.expected}, got {_shown(option, raw)}"
    return f"{message} ({detail})" if detail and not option.secret else message


def from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Options set by ``DDBCACHE_*`` variables, validated; errors name the variable.

    Unknown ``DDBCACHE_*`` names are logged once each (with the closest known name).
    """
    environ = os.environ if environ is None else environ
    warn_unknown_variables(environ)
    values = {}
    for option in OPTIONS:
        raw = environ.get(option.env)
        if raw is None or option.from_env is None:
            continue
        try:
            parsed = option.from_env(raw)
        except ValueError as exc:
            raise ConfigurationError(env_error(option, raw, str(exc))) from None
        try:
            values[option.name] = option.check(option.name, parsed)
        except ConfigurationError as exc:
            # Structured values say which part is wrong; a scalar's form says it all.
            detail = str(exc) if option.from_env in _STRUCTURED else ""
            raise ConfigurationError(env_error(option, raw, detail)) from None
    return values


def env_flag(name: str, environ: Mapping[str, str] | None = None) -> bool | None:
    """A boolean ``DDBCACHE_<name>`` variable: True, False, or None when unset.

    Raises ConfigurationError naming the variable and the accepted spellings.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(ENV_PREFIX + name)
    if raw is None:
        return None
    try:
        return _env_bool(raw)
    except ValueError:
        raise ConfigurationError(
            f"{ENV_PREFIX}{name} must be {BOOLEAN_FORM}, got {raw!r}"
        ) from None


__all__ = ["OPTIONS", "Option", "Options", "Settings", "TablePolicy", "TableSettings"]


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
