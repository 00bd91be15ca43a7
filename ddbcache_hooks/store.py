"""The cache's operations, as pure steps: each yields the Redis batches it needs.

A lookup, a fill, an invalidation, a schema read: generators yielding
:class:`~ddbcache_hooks.effects.RedisBatch` (the calls, with the scripts of
scripts.py) and receiving the replies, so the protocol above and the unit
tests can drive them without a server. A transport (transport.py, sync or
async) executes a batch as one pipeline. The data layout is described in
scripts.py.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from . import forks
from .effects import Call, Op, RedisBatch, migrating
from .near import encode_message
from .scripts import (
    FILL_IF_LEASED,
    INVALIDATE_ITEMS,
    LOOKUP_OR_LEASE,
    PARTITION_TOKEN,
    READ_HITS,
    REPLACE_TOKENS,
    TABLE_GENERATION,
    TABLE_LIFECYCLE,
    TABLE_TOKENS,
    LookupStatus,
)


class LookupRequest(NamedTuple):
    key: str
    field: str
    token_key: str
    lease_token: str
    lease_ms: int
    admission: int = 1
    admission_window_ms: int = 0
    drop: bool = False
    #: A Query/Scan page's partition token hash ("" for none).
    partition_key: str = ""
    #: Server time (ms) after which the caller no longer waits for the reply; 0: none.
    deadline_ms: int = 0
    #: XFetch's ``-beta * ln(random)`` for early refresh; 0: off.
    refresh_factor: float = 0.0


class LookupReply(NamedTuple):
    status: int
    entry: bytes | None
    corrupt: bool
    #: The table's version tokens, read in the same round trip.
    item_token: bytes
    query_token: bytes
    #: The item's generation (a signed entry is bound to it).
    generation: bytes = b""
    #: The table's tokens held a value this library does not make; replaced.
    foreign_token: bool = False
    #: The page's partition token (b"" without ``partition_key``).
    partition_token: bytes = b""
    #: Since when the partition's history is known (server ms; 0: forever): its
    #: last invalidation, or a gap (another server, eviction).
    partition_since_ms: int = 0
    #: The server's clock when the script ran (ms).
    server_ms: int = 0


class FillRequest(NamedTuple):
    key: str
    field: str
    lease_token: str
    entry: bytes  # b"" releases the lease without storing
    ttl_ms: int
    #: The settle window: unless the item's hash (and a page's partition) prove no
    #: write within it, the entry lives at most until the window ends.
    settle_ms: int = 0
    #: A page's partition: since when its history is known (server ms).
    partition_since_ms: int = 0
    #: How long the entry is kept past its TTL for stale-if-error (ms).
    grace_ms: int = 0
    #: What the fill cost (ms): early refresh starts that long, scaled, before expiry.
    cost_ms: int = 0


_PROCESS = os.urandom(6).hex()
_sequence = itertools.count()


def new_token() -> str:
    """A lease token or version token that no process ever made before.

    A random per-process prefix and a counter: unique like a random value
    (never a counter that restarts, see docs/design.md), at a fraction of the
    cost of ``os.urandom`` on every lookup. Forked children draw a new prefix.
    """
    return f"{_PROCESS}{next(_sequence):x}"


@forks.in_child
def _reseed() -> None:
    global _PROCESS
    _PROCESS = os.urandom(6).hex()


def lookup(
    requests: Sequence[LookupRequest],
    token_ttl_ms: int,
    *,
    cluster: bool = False,
    hits_first: bool = True,
    deadline: Callable[[], int] | None = None,
    node_of: Callable[[str], str] | None = None,
) -> Op[list[LookupReply]]:
    """Look up entries (taking leases on misses) and read table tokens.

    With ``hits_first``, the hits are read first with :data:`READ_HITS`: one
    command and one reply (docs/consistency.md, "Hits in one read-only
    script"); only what that does not prove to be a hit goes through the
    lookup script, in a second round trip. Without (a waiter's poll, which
    mostly finds the lease still held), the lookup script runs at once.
    ``deadline`` gives the scripts' ``deadline_ms`` anew when they are sent
    after the hit read (a lease is only taken while its caller still waits).
    ``node_of``: see :func:`read_hits`.
    """
    replies: list[LookupReply | None] = [None] * len(requests)
    if hits_first:
        replies = yield from read_hits(requests, cluster, node_of)
    rest = [i for i, reply in enumerate(replies) if reply is None]
    if rest:
        pending = [requests[i] for i in rest]
        if hits_first and deadline is not None:
            ends = deadline()
            pending = [r._replace(deadline_ms=ends) for r in pending]
        scripted = yield from _scripted(pending, token_ttl_ms, cluster)
        for i, reply in zip(rest, scripted, strict=True):
            replies[i] = reply
    return [reply for reply in replies if reply is not None]


class _Hits(NamedTuple):
    """One :data:`READ_HITS` reply, parsed."""

    server_ms: int
    #: The server's identity (its replication id; ``-`` where scripts cannot read it).
    server_id: bytes
    tokens: list[tuple[bytes, bytes] | None]
    partitions: list[tuple[bytes, int] | None]
    #: Per entry hash: (generation, entry) of a hit, else None.
    entries: list[tuple[bytes, bytes] | None]


class MalformedReply(ResponseError):
    """A script's reply of a shape it never gives (a server or proxy that mangles replies)."""


def _read_one_hit(r: LookupRequest) -> Op[list[LookupReply | None]]:
    """:func:`read_hits` of the common call: one entry on one node (a GetItem, a page)."""
    part = (r.partition_key,) if r.partition_key else ()
    p = len(part)
    call = Call(
        READ_HITS,
        (r.key, r.token_key, *part, 1, 1, p, f"{r.refresh_factor:.6g}", r.field),
        2 + p,
    )
    (reply,) = yield RedisBatch([call], errors_as_values=True)
    if isinstance(reply, Exception):
        if migrating(reply):
            # The slot is moving (a cluster): the lookup script, key by key, follows it.
            return [None]
        raise reply if isinstance(reply, RedisError) else RedisError(str(reply))
    hits = parse_hits(reply, 1, 1, p)
    partition = hits.partitions[0] if p else (b"", 0)
    return [_hit(hits.entries[0], hits.tokens[0], partition, hits.server_ms)]


def _hit(
    entry: tuple[bytes, bytes] | None,
    tokens: tuple[bytes, bytes] | None,
    partition: tuple[bytes, int] | None,
    server_ms: int,
) -> LookupReply | None:
    """The lookup script's reply for a hit the hit read found; None unless all its parts
    were found (the entry, its table's tokens, a page's partition: ``(b"", 0)`` for none)."""
    if entry is None or tokens is None or partition is None:
        return None
    return LookupReply(
        LookupStatus.HIT,
        entry[1],
        False,
        tokens[0],
        tokens[1],
        entry[0],
        False,
        partition[0],
        partition[1],
        server_ms,
    )


_DIGITS = re.compile(rb"[0-9]+\Z")


#: A request without a partition: what :func:`_hit` takes for "nothing to check".
_NO_PARTITION: tuple[bytes, int] | None = (b"", 0)


def _one_node(key: str) -> str:
    return ""


def _fields(reply: Any, count: int) -> list[Any] | None:
    """An ``HMGET`` reply of ``count`` fields; None for a key of another type (not a
    hit: the lookup script repairs it). Any other error reply is raised."""
    if isinstance(reply, Exception):
        if "WRONGTYPE" in str(reply):
            return None
        raise reply if isinstance(reply, RedisError) else RedisError(str(reply))
    if not isinstance(reply, list) or len(reply) != count:
        raise MalformedReply(f"HMGET replied {type(reply).__name__}")
    return reply


def _checked_entry(
    reply: Any, server_id: bytes, now: int, factor: float
) -> tuple[bytes, bytes] | None:
    """An entry read with ``HMGET <key> e:<v> x:<v> g d:<v>``, as :data:`READ_HITS` would
    judge it: (generation, entry) of a hit, else None (the lookup script decides).
    Numbers are plain decimals (what the scripts write); anything else is not a hit."""
    fields = _fields(reply, 4)
    if fields is None:
        return None
    blob, expires, generation, cost = fields
    if not blob or not isinstance(generation, bytes):
        return None
    if not generation.startswith(server_id + b"/"):
        return None
    if not isinstance(expires, bytes) or not _DIGITS.match(expires) or int(expires) <= now:
        return None
    refresh = factor > 0 and isinstance(cost, bytes) and _DIGITS.match(cost) is not None
    if refresh and int(expires) - now <= int(cost) * factor:
        return None  # an early refresh may be due: the lookup script decides
    return generation, blob


def _checked_tokens(reply: Any, server_id: bytes) -> tuple[bytes, bytes] | None:
    """A table's token hash read with ``HMGET <key> i q n``, as :data:`READ_HITS` judges it."""
    fields = _fields(reply, 3)
    if fields is None:
        return None
    item, query, maker = fields
    if not item or not query or maker != server_id:
        return None
    if len(item) > 255 or len(query) > 255:
        return None
    return bytes(item), bytes(query)


def _checked_partition(reply: Any, server_id: bytes) -> tuple[bytes, int] | None:
    """A partition hash read with ``HMGET <key> t g c``, as :data:`READ_HITS` judges it."""
    fields = _fields(reply, 3)
    if fields is None:
        return None
    token, generation, since = fields
    if not token or len(token) > 255 or not isinstance(generation, bytes):
        return None
    if not generation.startswith(server_id + b"/"):
        return None
    if since is None:
        return bytes(token), 0
    if not isinstance(since, bytes) or not _DIGITS.match(since):
        return None
    return bytes(token), int(since)


def _batch(
    requests: Sequence[LookupRequest], node_of: Callable[[str], str]
) -> Op[list[LookupReply | None]]:
    """:func:`read_hits` of a batch: ``HMGET`` of every entry, token and partition hash
    (each on its node), then one :data:`READ_HITS` per node involved, for its clock
    and identity, after that node's ``HMGET``s (so never more lenient). Each value
    is judged by the script's rules against its own node's identity; a key whose
    slot moved meanwhile is read on one node and judged against another's: not a
    hit. A script that reads the entries itself would copy each into Lua and
    back: for 100 entries three times the time of the ``HMGET``s
    (docs/performance.md)."""
    out: list[LookupReply | None] = [None] * len(requests)
    eligible = [i for i, r in enumerate(requests) if not r.drop]
    if not eligible:
        return out
    factor = requests[eligible[0]].refresh_factor
    token_keys = list(dict.fromkeys(requests[i].token_key for i in eligible))
    partition_keys = list(
        dict.fromkeys(requests[i].partition_key for i in eligible if requests[i].partition_key)
    )
    calls = [
        Call(None, ("HMGET", r.key, "e:" + r.field, "x:" + r.field, "g", "d:" + r.field))
        for r in (requests[i] for i in eligible)
    ]
    calls += [Call(None, ("HMGET", key, "i", "q", "n")) for key in token_keys]
    calls += [Call(None, ("HMGET", key, "t", "g", "c")) for key in partition_keys]
    nodes: dict[str, str] = {}  # key -> node
    for key in (*(requests[i].key for i in eligible), *token_keys, *partition_keys):
        nodes[key] = node_of(key)
    probes = {node: key for key, node in reversed(list(nodes.items()))}
    calls += [Call(READ_HITS, (key, 0, 0, 0, f"{factor:.6g}"), 1) for key in probes.values()]
    replies = yield RedisBatch(calls, errors_as_values=True)
    n, t, p = len(eligible), len(token_keys), len(partition_keys)
    seen: dict[str, tuple[int, bytes]] = {}
    for node, reply in zip(probes, replies[n + t + p :], strict=True):
        if isinstance(reply, Exception):
            raise reply if isinstance(reply, RedisError) else RedisError(str(reply))
        probe = parse_hits(reply, 0, 0, 0)
        seen[node] = (probe.server_ms, probe.server_id)
    tokens = {
        key: _checked_tokens(reply, seen[nodes[key]][1])
        for key, reply in zip(token_keys, replies[n : n + t], strict=True)
    }
    partitions = {
        key: _checked_partition(reply, seen[nodes[key]][1])
        for key, reply in zip(partition_keys, replies[n + t : n + t + p], strict=True)
    }
    for i, reply in zip(eligible, replies[:n], strict=True):
        r = requests[i]
        now, server_id = seen[nodes[r.key]]
        entry = _checked_entry(reply, server_id, now, factor)
        partition = partitions[r.partition_key] if r.partition_key else _NO_PARTITION
        out[i] = _hit(entry, tokens[r.token_key], partition, now)
    return out


def parse_hits(reply: bytes, n: int, t: int, p: int) -> _Hits:
    """Parse a :data:`READ_HITS` reply (see there); :class:`MalformedReply` for any
    other shape."""
    try:
        return _parse_hits(reply, n, t, p)
    except (ValueError, TypeError, AttributeError) as exc:
        raise MalformedReply(f"read_hits replied an unexpected shape: {exc}") from None


def _parse_hits(reply: bytes, n: int, t: int, p: int) -> _Hits:
    if not isinstance(reply, bytes):
        raise ValueError(f"read_hits replied {type(reply).__name__}")
    end = reply.index(b"\n")
    head = reply[:end].split(b" ")
    if len(head) != 2 + 2 * (t + p + n):
        raise ValueError("read_hits replied a header of another length")
    at = end + 1
    values = list(zip(head[2::2], head[3::2], strict=True))
    tokens: list[tuple[bytes, bytes] | None] = []
    for a, b in values[:t]:
        if a == b"-":
            tokens.append(None)
            continue
        i, q = int(a), int(b)
        tokens.append((reply[at : at + i], reply[at + i : at + i + q]))
        at += i + q
    partitions: list[tuple[bytes, int] | None] = []
    for a, b in values[t : t + p]:
        if a == b"-":
            partitions.append(None)
            continue
        length = int(a)
        partitions.append((reply[at : at + length], int(b)))
        at += length
    entries: list[tuple[bytes, bytes] | None] = []
    for a, b in values[t + p :]:
        if a == b"-":
            entries.append(None)
            continue
        g, e = int(a), int(b)
        entries.append((reply[at : at + g], reply[at + g : at + g + e]))
        at += g + e
    if at != len(reply):
        raise ValueError("read_hits replied values of other lengths than its header's")
    return _Hits(int(head[0]), head[1], tokens, partitions, entries)


def read_hits(
    requests: Sequence[LookupRequest],
    cluster: bool,
    node_of: Callable[[str], str] | None = None,
) -> Op[list[LookupReply | None]]:
    """The hits among ``requests``, read with :data:`READ_HITS`; None where the lookup
    script must decide (a miss, a lease, a drop, anything to repair).

    One GetItem or page on one node: one command, one reply. A batch: the
    entries with ``HMGET``, then one :data:`READ_HITS` per node for its clock
    and identity (see :func:`_batch`; on a cluster ``node_of`` names a key's
    node). On a cluster without ``node_of``, and for one request there: one
    :data:`READ_HITS` per key, in one pipelined round trip. A hit here is
    exactly a hit the lookup script would return, with the same reply. A reply
    of another shape is a Redis error (the scripts' boundary handles it).
    """
    if len(requests) == 1 and not requests[0].drop and (not cluster or _colocated(requests[0])):
        return (yield from _read_one_hit(requests[0]))
    if len(requests) > 1 and (not cluster or node_of is not None):
        return (yield from _batch(requests, node_of or _one_node))
    out: list[LookupReply | None] = [None] * len(requests)
    eligible = [i for i, r in enumerate(requests) if not r.drop]
    if not eligible:
        return out
    factor = f"{requests[eligible[0]].refresh_factor:.6g}"
    token_keys = list(dict.fromkeys(requests[i].token_key for i in eligible))
    partition_keys = list(
        dict.fromkeys(requests[i].partition_key for i in eligible if requests[i].partition_key)
    )
    calls = [
        Call(READ_HITS, (requests[i].key, 1, 0, 0, factor, requests[i].field), 1) for i in eligible
    ]
    calls += [Call(READ_HITS, (key, 0, 1, 0, factor), 1) for key in token_keys]
    calls += [Call(READ_HITS, (key, 0, 0, 1, factor), 1) for key in partition_keys]
    replies = yield RedisBatch(calls)
    n, t = len(eligible), len(token_keys)
    tokens = {
        key: parse_hits(reply, 0, 1, 0).tokens[0]
        for key, reply in zip(token_keys, replies[n : n + t], strict=True)
    }
    partitions = {
        key: parse_hits(reply, 0, 0, 1).partitions[0]
        for key, reply in zip(partition_keys, replies[n + t :], strict=True)
    }
    for i, reply in zip(eligible, replies[:n], strict=True):
        r = requests[i]
        hits = parse_hits(reply, 1, 0, 0)
        partition = partitions[r.partition_key] if r.partition_key else _NO_PARTITION
        out[i] = _hit(hits.entries[0], tokens[r.token_key], partition, hits.server_ms)
    return out


def _colocated(request: LookupRequest) -> bool:
    """Whether a request's entry, tokens and partition share one slot (a cluster with
    ``cluster_buckets``): then its hit is one command on one node."""
    slot = key_slot(request.key.encode("utf-8"))
    if key_slot(request.token_key.encode("utf-8")) != slot:
        return False
    return not request.partition_key or key_slot(request.partition_key.encode("utf-8")) == slot


def _scripted(
    requests: Sequence[LookupRequest], token_ttl_ms: int, cluster: bool
) -> Op[list[LookupReply]]:
    """The lookup script for each request (and, on a cluster, the token scripts).

    On one node each script also reads its table's tokens (and its partition's);
    on a cluster they live on other nodes, so each table's tokens and each
    partition's token are one more call of the batch.
    """
    calls = [
        Call(
            LOOKUP_OR_LEASE,
            (
                r.key,
                *(() if cluster else (r.token_key,)),
                *(() if cluster or not r.partition_key else (r.partition_key,)),
                r.field,
                r.lease_token,
                r.lease_ms,
                r.admission,
                r.admission_window_ms,
                1 if r.drop else 0,
                token_ttl_ms,
                r.deadline_ms,
                f"{r.refresh_factor:.6g}",
            ),
            1 if cluster else 3 if r.partition_key else 2,
        )
        for r in requests
    ]
    if not cluster:
        replies = yield RedisBatch(calls)
        return [
            LookupReply(
                r[0],
                r[1] or None,
                bool(r[2] & 1),
                r[3],
                r[4],
                _bytes(r[5]),
                r[2] >= 2,
                _bytes(r[6]),
                int(r[7]) if r[7] else 0,
                int(r[8]),
            )
            for r in replies
        ]
    token_keys = list(dict.fromkeys(r.token_key for r in requests))
    partition_keys = list(dict.fromkeys(r.partition_key for r in requests if r.partition_key))
    calls += [Call(TABLE_TOKENS, (key, new_token(), token_ttl_ms), 1) for key in token_keys]
    calls += [Call(PARTITION_TOKEN, (key, new_token(), token_ttl_ms), 1) for key in partition_keys]
    replies = yield RedisBatch(calls)
    n, t = len(requests), len(token_keys)
    tokens = dict(zip(token_keys, replies[n : n + t], strict=True))
    partitions = dict(zip(partition_keys, replies[n + t :], strict=True))
    out = []
    for request, reply in zip(requests, replies[:n], strict=True):
        item_token, query_token, replaced = tokens[request.token_key][:3]
        part = partitions.get(request.partition_key, (b"", 0))
        out.append(
            LookupReply(
                reply[0],
                reply[1] or None,
                bool(reply[2] & 1),
                item_token,
                query_token,
                _bytes(reply[5]),
                bool(replaced),
                _bytes(part[0]),
                int(part[1]),
                int(reply[8]),
            )
        )
    return out


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else b""


def fill(requests: Sequence[FillRequest]) -> Op[list[tuple[int, int]]]:
    """Store entries whose lease is intact (or release leases): one round trip."""
    if not requests:
        return []
    calls = [
        Call(
            FILL_IF_LEASED,
            (
                r.key,
                r.field,
                r.lease_token,
                r.entry,
                r.ttl_ms,
                r.settle_ms,
                r.partition_since_ms,
                r.grace_ms,
                r.cost_ms,
            ),
            1,
        )
        for r in requests
    ]
    replies = yield RedisBatch(calls)
    return [(int(reply[0]), int(reply[1])) for reply in replies]


class Lifecycle(NamedTuple):
    """A table lifecycle change, for :func:`invalidate`."""

    schema_key: str
    #: Forget the learned key schema and replace the table's generation.
    forget_schema: bool = True
    #: '' keeps a bulk-load mark on the tokens, '-' clears it, else the new mark.
    mark: str = ""
    #: Keep the table's token hash at least this long (a bulk load's bypass).
    ttl_ms: int = 0


def invalidate(
    keys: Sequence[str],
    settle_ms: int,
    tokens: Sequence[tuple[str, bool]] = (),
    token_ttl_ms: int = 0,
    cluster: bool = False,
    channel: str | None = None,
    lifecycle: Sequence[tuple[str, Lifecycle]] = (),
    generations: Sequence[tuple[str, str, bytes]] = (),
    copies: Callable[[str], Sequence[str]] = lambda key: (),
) -> Op[list[str]]:
    """Drop items and replace table tokens, and tell the near caches: one round trip.

    ``tokens`` holds (token key, True to drop item entries too, not only queries);
    ``lifecycle`` (token key, change) pairs; ``generations`` (token key, schema
    key, generation) for writes projected with a learned key schema. Returns the
    token keys whose generation was not current (their tables were dropped whole).
    On a cluster, each key is a script of its own (a script touches one slot).
    ``copies`` names a token hash's bucket copies (KeyLayout.token_copies): each
    is replaced with it, a lifecycle mark set on each; a failed generation check
    replaces them in a second round trip.
    """
    # On a cluster, one key per script: a slot split by a migration refuses a script
    # over two of its keys (TRYAGAIN) until the migration ends, one key it sends on.
    groups = [[key] for key in keys] if cluster else [list(keys)]
    nonce = new_token()
    calls = [Call(INVALIDATE_ITEMS, (*g, settle_ms, nonce), len(g)) for g in groups if g]
    calls += [
        Call(REPLACE_TOKENS, (key, new_token(), new_token(), int(items), token_ttl_ms), 1)
        for table_key, items in tokens
        for key in (table_key, *copies(table_key))
    ]
    calls += [
        # A copy takes the mark and new tokens; generation and schema stay the table's.
        Call(TABLE_LIFECYCLE, (key, key, new_token(), new_token(), "", change.mark, ttl), 2)
        for table_key, change in lifecycle
        for key in copies(table_key)
        for ttl in (max(token_ttl_ms, change.ttl_ms),)
    ]
    checked = len(calls)
    calls += [
        Call(
            TABLE_GENERATION,
            (key, schema_key, new_token(), token_ttl_ms, generation, new_token(), new_token()),
            2,
        )
        for key, schema_key, generation in generations
    ]
    lifecycle_calls = [
        Call(
            TABLE_LIFECYCLE,
            (
                key,
                change.schema_key,
                new_token(),
                new_token(),
                new_token() if change.forget_schema else "",
                change.mark,
                max(token_ttl_ms, change.ttl_ms),
            ),
            2,
        )
        for key, change in lifecycle
    ]
    calls[checked:checked] = lifecycle_calls  # before the checks: they see the new generation
    checked += len(lifecycle_calls)
    if calls and channel is not None:
        tables = [key for key, _ in tokens] + [key for key, _ in lifecycle]
        message = encode_message(keys, tables)
        calls.append(Call(None, ("PUBLISH", channel, message)))
    if not calls:
        return []
    replies = yield RedisBatch(calls, errors_as_values=True)
    failed = [(call, reply) for call, reply in zip(calls, replies, strict=True) if _error(reply)]
    if failed:
        yield from _drop_instead(failed)
    stale = []
    for (key, _, _), reply in zip(generations, replies[checked:], strict=False):
        if _error(reply) or int(reply[2]):
            stale.append(key)  # a failed check: the fallback dropped the table whole
    followed = [
        Call(REPLACE_TOKENS, (copy, new_token(), new_token(), 1, token_ttl_ms), 1)
        for key in stale
        for copy in copies(key)
    ]
    if followed:
        replies = yield RedisBatch(followed, errors_as_values=True)
        failed = [(c, r) for c, r in zip(followed, replies, strict=True) if _error(r)]
        if failed:
            yield from _drop_instead(failed)
    return stale


def _error(reply: Any) -> bool:
    return isinstance(reply, Exception)


def _drop_instead(failed: Sequence[tuple[Call, Any]]) -> Op[None]:
    """What an invalidation's refused scripts meant to drop, deleted with plain ``DEL``.

    ``DEL`` needs no memory, so a full server (or one that refuses a script for
    any other reason) still takes it: an item's hash goes; a table's token hash
    goes (and its schema with a lifecycle change), which makes every entry of
    the table a mismatch, and any key schema learned under it unused (its
    generation goes too). Raises the first refusal when the ``DEL`` fails as
    well (the invalidation is then held, see Protocol.keep).
    """
    calls = [Call(None, ("DEL", *call.args[: call.numkeys])) for call, _ in failed if call.script]
    replies = (yield RedisBatch(calls, errors_as_values=True)) if calls else []
    if len(calls) < len(failed) or any(_error(reply) for reply in replies):
        raise _first(failed)  # a DEL, or a plain command (PUBLISH), refused too


def _first(failed: Sequence[tuple[Call, Any]]) -> Exception:
    error = failed[0][1]
    assert isinstance(error, Exception)
    return error


#: The per-variant fields a lookup reads.
_LOOKUP_FIELDS = ("e:", "x:", "l:", "m:", "s:", "d:")


def oversized(suspects: Sequence[tuple[str, str]], limit: int) -> Op[list[str]]:
    """Keys of (key, variant field) pairs where a field a lookup reads exceeds ``limit``."""
    calls = [
        Call(None, ("HSTRLEN", key, prefix + field))
        for key, field in suspects
        for prefix in _LOOKUP_FIELDS
    ]
    lengths = yield RedisBatch(calls)
    n = len(_LOOKUP_FIELDS)
    found = [key for i, (key, _) in enumerate(suspects) if max(lengths[n * i : n * i + n]) > limit]
    return list(dict.fromkeys(found))


def unlink(keys: Sequence[str]) -> Op[None]:
    """Delete keys without blocking the server on their size."""
    yield RedisBatch([Call(None, ("UNLINK", key)) for key in keys])


def read_schema(token_key: str, schema_key: str, token_ttl_ms: int) -> Op[tuple[bytes, bytes]]:
    """A table's generation and its stored key schema (b"" when none): one round trip."""
    replies = yield RedisBatch(
        [Call(TABLE_GENERATION, (token_key, schema_key, new_token(), token_ttl_ms, ""), 2)],
        errors_as_values=True,
    )
    if _error(replies[0]):
        # Refused (a full server cannot record a new generation): no schema is
        # learned, and a write that needed one drops its table instead.
        return b"", b""
    generation, blob, _ = replies[0]
    return bytes(generation), blob if isinstance(blob, bytes) else b""


def set_value(key: str, value: bytes, ttl_s: int) -> Op[bool]:
    """Store a value; False when the server refused it (say, full): nothing depends on it."""
    calls = [Call(None, ("SET", key, value, "EX", ttl_s))]
    replies = yield RedisBatch(calls, errors_as_values=True)
    return not _error(replies[0])


# --- transports --------------------------------------------------------------------
