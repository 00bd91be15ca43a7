"""The checks and ``DDBCACHE_*`` parsers of option values (config.py's OPTIONS use them).

Each check takes the option's name and a value and returns it validated, or
raises ConfigurationError naming the option; each parser turns a variable's
text into a value, or raises ValueError (config.py names the variable).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigurationError
from .keys import MAX_BUCKETS
from .near import NearCache

TTL_KINDS = ("item", "item_negative", "query", "scan")
#: The spellings every boolean variable accepts (case-insensitive).
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
BOOLEAN_FORM = "a boolean (1/0, true/false, yes/no, on/off)"
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


def _buckets(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BUCKETS:
        raise ConfigurationError(f"{name} must be 0 or 1-{MAX_BUCKETS}, got {value!r}")
    return value


def _one_of(*choices: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise ConfigurationError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    check.choices = choices  # type: ignore[attr-defined]
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


# --- environment parsing -----------------------------------------------------------


def _env_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("") from None  # the message names the expected form


def _env_str(text: str) -> str:
    return text.strip()


def _env_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS or lowered == "":
        return False
    raise ValueError("")


def _env_ttl_config(text: str) -> dict[str, int]:
    """``item=60,query=30``."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, ttl = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r} is not kind=seconds")
        try:
            out[kind.strip()] = int(ttl)
        except ValueError:
            raise ValueError(f"{ttl.strip()!r} is not a whole number of seconds") from None
    return out


def _env_key_schema(text: str) -> dict[str, tuple[str, ...]]:
    """``orders=pk:sk,users=id``."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        table, sep, names = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r} is not table=hash[:range]")
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


def _near_cache(name: str, value: Any) -> NearCache | None:
    if value is None or isinstance(value, NearCache):
        return value
    raise ConfigurationError(f"{name} must be a NearCache(max_items=..., ttl_ms=...) or None")


def _env_near_cache(text: str) -> NearCache | None:
    """``max_items=10000,ttl_ms=500`` (or ``off``)."""
    if text.strip().lower() in ("", *FALSE_WORDS):
        return None
    values = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, number = part.partition("=")
        if not sep or name.strip() not in ("max_items", "ttl_ms"):
            raise ValueError(f"{part!r} is not max_items=N or ttl_ms=N")
        try:
            values[name.strip()] = int(number)
        except ValueError:
            raise ValueError(f"{number.strip()!r} is not a whole number") from None
    return NearCache(**values)


def _env_json(text: str) -> Any:

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
