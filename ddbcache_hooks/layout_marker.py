"""The namespace's key layout on a cluster, recorded in Redis and checked at start-up.

With ``cluster_buckets`` a table's entries live under other key names than
without it (keys.KeyLayout), so two processes that disagree on it would not
drop each other's entries on writes. Each registration on a cluster records
its layout in ``<namespace>:layout`` (if none is recorded) and refuses to
start when another is: one message, by name, with the fix, instead of stale
reads. The record lives 30 days past the last start of a process with it
(deployments, where configurations change, start processes).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .keys import KeyLayout

if TYPE_CHECKING:
    from .config import Settings

#: What :func:`layout_value` writes.
_RECORD = re.compile(r"spread|buckets=([1-9][0-9]*)")
#: How long the record outlives the last start that confirmed it.
MARKER_TTL_S = 30 * 86400


def check_settings(client: Any, cluster: bool, settings: Settings) -> None:
    """:func:`check` for a client of the given settings, on a cluster only (what
    invalidates without a registration, the streams consumer and the Lambda
    handler, is a process of the namespace too)."""
    if cluster:
        check(client, KeyLayout(settings.namespace).marker(), settings.cluster_buckets)


async def check_settings_async(client: Any, cluster: bool, settings: Settings) -> None:
    """:func:`check_settings` for a redis.asyncio client."""
    if cluster:
        await check_async(client, KeyLayout(settings.namespace).marker(), settings.cluster_buckets)


def layout_value(buckets: int) -> str:
    return f"buckets={buckets}" if buckets else "spread"


def check(client: Any, key: str, buckets: int) -> None:
    """Record this process's layout, or raise ConfigurationError when another is recorded.

    ``client`` is a cluster client; ``key`` is ``KeyLayout.marker()``."""
    value = layout_value(buckets)
    client.set(key, value, nx=True, ex=MARKER_TTL_S)
    _judge(client.get(key), value, key)
    client.expire(key, MARKER_TTL_S)


async def check_async(client: Any, key: str, buckets: int) -> None:
    """:func:`check` for a redis.asyncio client."""
    value = layout_value(buckets)
    await client.set(key, value, nx=True, ex=MARKER_TTL_S)
    _judge(await client.get(key), value, key)
    await client.expire(key, MARKER_TTL_S)


def check_recorded(found: Any, buckets: int, key: str) -> None:
    """Raise ConfigurationError when ``found`` (the record) is not this layout's."""
    _judge(found, layout_value(buckets), key)


def _judge(found: Any, value: str, key: str) -> None:
    if isinstance(found, bytes):
        found = found.decode("utf-8", "replace")
    if found is None or found == value:
        return  # none (evicted meanwhile): nothing to disagree with
    ours = value.partition("=")[2] or "0"
    recorded = _RECORD.fullmatch(str(found))
    if recorded is None:
        raise ConfigurationError(
            f"{key} holds {found!r}, which is no layout this library records (another "
            f"application writes into the namespace?): delete the key (DEL {key}) if "
            f"nothing else owns it, or give this cache a namespace of its own"
        )
    theirs = recorded.group(1) or "0"
    raise ConfigurationError(
        f"cluster_buckets={ours} here, but processes of this namespace use "
        f"cluster_buckets={theirs} ({key} = {found!r}): their writes would not drop this "
        f"process's entries, nor this process's theirs. Set DDBCACHE_CLUSTER_BUCKETS "
        f"(or cluster_buckets) to {theirs} here; to change it, stop every process of the "
        f"namespace, run `ddbcache flush`, and start them with the new value"
    )
