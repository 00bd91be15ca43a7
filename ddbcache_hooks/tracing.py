"""What the cache did for a call, on the current OpenTelemetry span.

When ``opentelemetry-api`` is installed and a span is recording — the one
OpenTelemetry's botocore instrumentation starts for each AWS call, else the
application's — each cached read sets:

- ``ddbcache.result``: ``hit``; ``miss``; ``partial`` (a BatchGetItem answered
  partly from the cache); ``stale`` (an expired entry answered DynamoDB's
  error); ``refresh`` (inside ``refresh()``); ``bypass`` (a cached operation
  the cache did not read: ``ConsistentRead``, ``disabled()``, a table not
  cached);
- ``ddbcache.hits``, ``ddbcache.misses``: entries served from the cache and
  not (one per key of a BatchGetItem);
- ``ddbcache.redis.duration_ms``: time spent in Redis for the call (lookups
  and fills).

Without ``opentelemetry-api`` nothing is imported and nothing is done; a span
that is not recording costs one context lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .plan import HIT, ReadPlan

_trace: Any = None
try:
    from opentelemetry import trace
except ImportError:  # optional: the otel extra
    pass
else:
    _trace = trace

RESULT = "ddbcache.result"
HITS = "ddbcache.hits"
MISSES = "ddbcache.misses"
REDIS_DURATION = "ddbcache.redis.duration_ms"


def _recording_span() -> Any:
    if _trace is None:
        return None
    span = _trace.get_current_span()
    return span if span.is_recording() else None


def mark_bypass() -> None:
    """A cached operation that this call reads from DynamoDB, with no lookup."""
    span = _recording_span()
    if span is not None:
        span.set_attribute(RESULT, "bypass")


def mark_read(plan: ReadPlan, redis_s: float, answer: Mapping[str, Any] | None = None) -> None:
    """What a read's lookup (and fill) found; ``answer``: one that replaced DynamoDB's error."""
    span = _recording_span()
    if span is None:
        return
    hits = sum(1 for slot in plan.slots if slot.state == HIT)
    if answer and answer.get("CacheMetadata", {}).get("Stale"):
        result = "stale"
    elif plan.refresh:
        result = "refresh"
    elif plan.served:
        result = "hit"
    else:
        result = "partial" if hits else "miss"
    span.set_attributes(
        {
            RESULT: result,
            HITS: hits,
            MISSES: len(plan.slots) - hits,
            REDIS_DURATION: round(redis_s * 1000, 3),
        }
    )
