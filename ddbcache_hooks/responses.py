"""What a cached response looks like to the caller (pure functions).

A hit has ``ConsumedCapacity`` only when the request asked for it (DynamoDB's
shape, every unit 0.0), ``CacheMetadata``, and a ``ResponseMetadata`` shaped as
botocore's whose values no DynamoDB answer has (``response_metadata="omit"``:
none, the reference's shape).
"""

from __future__ import annotations

import copy
import email.utils
import functools
import itertools
import os
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from ._version import __version__
from .schema import GSI, LSI

CLIENT = f"Python {__version__}"
CAPACITY_MODES = ("TOTAL", "INDEXES")
_UNIT_FIELDS = ("CapacityUnits", "ReadCapacityUnits", "WriteCapacityUnits")
#: The header of a synthesized ResponseMetadata that says where the answer came from.
SOURCE_HEADER = "x-ddbcache"
#: Values of that header: a hit, and an expired entry answering DynamoDB's error.
HIT, STALE = "hit", "stale"
#: Synthetic request ids start with this; DynamoDB's are 52 upper-case letters and digits.
REQUEST_ID_PREFIX = "ddbcache-"


def _new_prefix() -> str:
    return os.urandom(4).hex()


_request_prefix = _new_prefix()
_request_numbers = itertools.count(1)


def _reseed() -> None:
    global _request_prefix, _request_numbers
    _request_prefix, _request_numbers = _new_prefix(), itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)  # forked workers make ids of their own


def timestamp(ms: float | None = None) -> str:
    """UTC time in the reference format, e.g. ``2026-11-27 08:00:00Z``."""
    second = int(time.time() if ms is None else ms // 1000)
    return _format_second(second)


@functools.lru_cache(maxsize=256)
def _format_second(second: int) -> str:
    # Formatting costs more than the rest of a hit's metadata; entries share seconds.
    return datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@functools.lru_cache(maxsize=4)
def _http_date(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


def response_metadata(source: str, retry_attempts: int = 0) -> dict[str, Any]:
    """A ``ResponseMetadata`` shaped as botocore's for an answer that did not come from
    DynamoDB: status 200, a request id unique in the process that no DynamoDB request
    has (``ddbcache-…``), and the header ``x-ddbcache`` naming ``source``.
    """
    request_id = f"{REQUEST_ID_PREFIX}{_request_prefix}-{next(_request_numbers):x}"
    return {
        "RequestId": request_id,
        "HTTPStatusCode": 200,
        "HTTPHeaders": {
            "x-amzn-requestid": request_id,
            "content-type": "application/x-amz-json-1.0",
            "date": _http_date(int(time.time())),
            SOURCE_HEADER: source,
        },
        "RetryAttempts": retry_attempts,
    }


def capacity_mode(params: Mapping[str, Any]) -> str | None:
    mode = params.get("ReturnConsumedCapacity")
    return mode if mode in CAPACITY_MODES else None


def zeroed(capacity: Any) -> Any:
    """A copy of a ConsumedCapacity structure with every unit set to 0.0."""
    if isinstance(capacity, list):
        return [zeroed(c) for c in capacity]
    if not isinstance(capacity, Mapping):
        return capacity
    return {
        k: (0.0 if k in _UNIT_FIELDS else zeroed(v) if isinstance(v, (dict, list)) else v)
        for k, v in capacity.items()
    }


def entry_payload(parsed: Mapping[str, Any]) -> dict[str, Any]:
    """What is stored for a response: no ResponseMetadata, capacity only as a zeroed shape.

    The zeroed ConsumedCapacity is kept as a template, so a hit that asks for the
    same mode gets exactly DynamoDB's shape.
    """
    payload = {k: v for k, v in parsed.items() if k not in ("ResponseMetadata", "CacheMetadata")}
    if "ConsumedCapacity" in payload:
        payload["ConsumedCapacity"] = zeroed(payload["ConsumedCapacity"])
    return payload


def needs_index_kind(payload: Mapping[str, Any], mode: str | None, index: str | None) -> bool:
    """Whether building the hit's capacity requires knowing if ``index`` is a GSI or LSI."""
    if mode != "INDEXES" or index is None:
        return False
    template = payload.get("ConsumedCapacity")
    return not (isinstance(template, Mapping) and "Table" in template)


def item_capacity(
    template: Any, mode: str, table: str, index: str | None = None, index_kind: str | None = None
) -> dict[str, Any]:
    """A zero ConsumedCapacity of the requested ``mode`` for one table."""
    if isinstance(template, Mapping) and template.get("TableName") == table:
        has_indexes = "Table" in template
        if mode == "INDEXES" and has_indexes:
            return dict(template)
        if mode == "TOTAL":
            return {k: v for k, v in template.items() if k not in ("Table", GSI, LSI)}
    capacity: dict[str, Any] = {"TableName": table, "CapacityUnits": 0.0}
    if mode == "INDEXES":
        capacity["Table"] = {"CapacityUnits": 0.0}
        if index is not None:
            capacity[index_kind or GSI] = {index: {"CapacityUnits": 0.0}}
    return capacity


def hit_response(
    payload: dict[str, Any],
    created_ms: int,
    mode: str | None,
    table: str,
    index: str | None = None,
    index_kind: str | None = None,
    *,
    metadata: bool = True,
) -> dict[str, Any]:
    """Turn a decoded entry into the response of a hit (mutates and returns ``payload``).

    ``metadata``: whether it gets a synthesized ``ResponseMetadata``.
    """
    template = payload.pop("ConsumedCapacity", None)
    if mode is not None:
        payload["ConsumedCapacity"] = item_capacity(template, mode, table, index, index_kind)
    payload["CacheMetadata"] = {
        "CacheHit": True,
        "CachedTime": timestamp(created_ms),
        "Client": CLIENT,
    }
    if metadata:
        payload["ResponseMetadata"] = response_metadata(HIT)
    return payload


def batch_metadata(hits: int, misses: int, consistent: int) -> dict[str, Any]:
    return {
        "CacheHitCount": hits,
        "CacheMissCount": misses,
        "StronglyConsistentCount": consistent,
        "Time": timestamp(),
        "Client": CLIENT,
    }


def batch_capacity(
    mode: str, tables: Iterable[str], real: Iterable[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """One ConsumedCapacity entry per requested table, zero for tables served from cache.

    ``real`` is what DynamoDB reported for the tables of the real call, if any.
    """
    reported = {c["TableName"]: dict(c) for c in real or () if "TableName" in c}
    shape = next(iter(reported.values()), None)
    out = []
    for table in tables:
        if table in reported:
            out.append(reported[table])
        elif shape is not None:
            zero = zeroed(copy.deepcopy(shape))
            zero["TableName"] = table
            out.append(zero)
        else:
            out.append(item_capacity(None, mode, table))
    return out
