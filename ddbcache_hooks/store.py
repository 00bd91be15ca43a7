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
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from . import forks
from .effects import Call, Op, RedisBatch
from .near import encode_message
from .scripts import (
    FILL_IF_LEASED,
    INVALIDATE_ITEMS,
    LOOKUP_OR_LEASE,
    PARTITION_TOKEN,
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


class ConnectCount:
    """How many connections the library's own pools have (re)established, ever.

    A server that restarted, or an endpoint that now names another (promoted)
    server, is only reached over a connection made after the change; so a value
    learned from the server (its identity, :class:`ServerIds`) holds only while
    this count stays the same. Shared by every pool of the process.
    """

    def __init__(self) -> None:
        self.value = 0

    def bump(self, connection: Any = None) -> None:
        self.value += 1


CONNECTS = ConnectCount()


class ServerIds:
    """Per node, the server identity a lookup script last read, to trust plain reads by.

    A plain read cannot ask the server who it is (``INFO`` costs what the
    script costs); it compares the identity recorded in what it reads with the
    one a script read on the same node. That value is used only while no
    library connection was (re)established since it was learned (a restarted or
    promoted server is only reached over a new connection, see
    connections.CONNECTS), while no call failed since, and for at most
    :data:`MAX_AGE_S`; otherwise the lookup script runs, and teaches it again.
    """

    #: A node's identity is read again by a script at least this often (seconds).
    MAX_AGE_S = 1.0

    def __init__(self) -> None:
        #: Node of a key ("" on one node); None: plain reads are off (see
        #: transport.node_lookup).
        self.node_of: Callable[[str], str] | None = None
        self._ids: dict[str, tuple[bytes, int, float]] = {}

    @staticmethod
    def epoch() -> int:
        return CONNECTS.value

    def get(self, node: str, epoch: int) -> bytes | None:
        known = self._ids.get(node)
        if known is None or known[1] != epoch or time.monotonic() - known[2] > self.MAX_AGE_S:
            return None
        return known[0]

    def learn(self, node: str, sid: bytes, epoch: int) -> None:
        if CONNECTS.value == epoch:
            self._ids[node] = (sid, epoch, time.monotonic())

    def forget(self) -> None:
        """A call failed: whatever the cause, a script reads the identities again."""
        self._ids.clear()


def lookup(
    requests: Sequence[LookupRequest],
    token_ttl_ms: int,
    *,
    cluster: bool = False,
    servers: ServerIds | None = None,
    deadline: Callable[[], int] | None = None,
) -> Op[list[LookupReply]]:
    """Look up entries (taking leases on misses) and read table tokens.

    With ``servers`` (plain reads on), the entries, their tokens and the
    server's clock are first read with plain commands in one round trip; only
    what that does not prove to be a hit goes through the lookup script, in a
    second one (docs/consistency.md, "Hits without a script"). Without, or
    while a node's identity is not known, the script runs at once: one round trip.
    ``deadline`` gives the scripts' ``deadline_ms`` anew when they are sent after
    a plain read (a lease is only taken while its caller still waits).
    """
    replies: list[LookupReply | None] = [None] * len(requests)
    if servers is not None and servers.node_of is not None:
        found = yield from _plain_read(requests, servers, cluster)
        replies = list(found)
    rest = [i for i, reply in enumerate(replies) if reply is None]
    if rest:
        epoch = ServerIds.epoch()
        learned: dict[str, bytes] = {}
        pending = [requests[i] for i in rest]
        if deadline is not None:
            ends = deadline()
            pending = [r._replace(deadline_ms=ends) for r in pending]
        scripted = yield from _scripted(pending, token_ttl_ms, cluster, learned)
        for i, reply in zip(rest, scripted, strict=True):
            replies[i] = reply
            sid = reply.generation.partition(b"/")[0]
            if sid:
                learned[requests[i].key] = sid
        if servers is not None and servers.node_of is not None:
            for key, sid in learned.items():
                if sid:
                    servers.learn(servers.node_of(key), sid, epoch)
    return [reply for reply in replies if reply is not None]


_DIGITS = re.compile(rb"[0-9]+\Z")


def _number(value: Any) -> int | None:
    """A field the scripts wrote as a decimal integer; None for anything else."""
    return int(value) if isinstance(value, bytes) and _DIGITS.match(value) else None


def _plain_read(
    requests: Sequence[LookupRequest], servers: ServerIds, cluster: bool
) -> Op[list[LookupReply | None]]:
    """Hits proven with plain reads (HMGET, TIME) alone; None where the script must decide.

    A hit here is exactly a hit the lookup script would return, with the same
    reply: the entry is present and unexpired by the server's clock, the item
    hash, the table's tokens and the partition's hash were made by the server
    that answers (the identity a script read on that node, still valid), the
    tokens are well formed, every node involved answers ``ROLE`` as a primary.
    Anything else — a lease, an expired or missing
    entry, state of another server, a key of another type, a drop — goes to
    the script, which also repairs what needs repair.
    """
    assert servers.node_of is not None
    epoch = ServerIds.epoch()
    node_of = servers.node_of
    nodes: dict[str, str] = {}
    sids: dict[str, bytes | None] = {}

    def sid_of(key: str) -> bytes | None:
        node = nodes.get(key)
        if node is None:
            node = nodes[key] = node_of(key)
        if node not in sids:
            sids[node] = servers.get(node, epoch)
        return sids[node]

    eligible = [
        i
        for i, r in enumerate(requests)
        if not r.drop
        and sid_of(r.key) is not None
        and sid_of(r.token_key) is not None
        and (not r.partition_key or sid_of(r.partition_key) is not None)
    ]
    out: list[LookupReply | None] = [None] * len(requests)
    if not eligible:
        return out
    calls = [
        Call(None, ("HMGET", r.key, "e:" + r.field, "x:" + r.field, "g", "d:" + r.field))
        for r in (requests[i] for i in eligible)
    ]
    token_keys = list(dict.fromkeys(requests[i].token_key for i in eligible))
    calls += [Call(None, ("HMGET", key, "i", "q", "n")) for key in token_keys]
    partition_keys = list(
        dict.fromkeys(requests[i].partition_key for i in eligible if requests[i].partition_key)
    )
    calls += [Call(None, ("HMGET", key, "t", "g", "c")) for key in partition_keys]
    # The server's clock, on each node holding an entry (one on a single node).
    clock_keys = {nodes[requests[i].key]: requests[i].key for i in eligible}
    calls += [Call(None, ("TIME",), route=key if cluster else "") for key in clock_keys.values()]
    # Each node's role: a primary demoted under an open connection keeps its
    # replication id (a replica serves nothing, see scripts.py).
    role_keys = {node: key for key, node in nodes.items()}
    calls += [Call(None, ("ROLE",), route=key if cluster else "") for key in role_keys.values()]
    replies = yield RedisBatch(calls, errors_as_values=True)
    if ServerIds.epoch() != epoch:
        return out  # a connection was made meanwhile: another server may have answered
    if cluster and any(node_of(key) != node for key, node in nodes.items()):
        return out  # a slot moved meanwhile
    n, t, p = len(eligible), len(token_keys), len(partition_keys)
    tokens = dict(zip(token_keys, replies[n : n + t], strict=True))
    partitions = dict(zip(partition_keys, replies[n + t : n + t + p], strict=True))
    c = len(clock_keys)
    clocks: dict[str, int] = {}
    for node, reply in zip(clock_keys, replies[n + t + p : n + t + p + c], strict=True):
        if isinstance(reply, (tuple, list)) and len(reply) == 2:
            clocks[node] = int(reply[0]) * 1000 + int(reply[1]) // 1000
    primaries = {
        node
        for node, reply in zip(role_keys, replies[n + t + p + c :], strict=True)
        if isinstance(reply, (tuple, list)) and reply and reply[0] == b"master"
    }
    for i, entry in zip(eligible, replies[:n], strict=True):
        r = requests[i]
        keys = (r.key, r.token_key, r.partition_key) if r.partition_key else (r.key, r.token_key)
        if any(nodes[key] not in primaries for key in keys):
            continue  # not a primary (or cannot tell): the script decides, and refuses
        out[i] = _plain_hit(
            r,
            entry,
            tokens[r.token_key],
            partitions.get(r.partition_key) if r.partition_key else None,
            clocks.get(nodes[r.key]),
            sid_of,
        )
    return out


def _plain_hit(
    r: LookupRequest,
    entry: Any,
    tokens: Any,
    partition: Any,
    now: int | None,
    sid_of: Callable[[str], bytes | None],
) -> LookupReply | None:
    """The reply the lookup script would give if it is a hit (see :func:`_plain_read`)."""
    if now is None or not isinstance(entry, list) or not isinstance(tokens, list):
        return None
    blob, expires, generation, cost = entry
    sid = sid_of(r.key)
    if not blob or not isinstance(generation, bytes) or sid is None:
        return None
    if not generation.startswith(sid + b"/"):
        return None
    expiry = _number(expires)
    if expiry is None or expiry <= now:
        return None
    fill_cost = _number(cost) if cost is not None else None
    if r.refresh_factor > 0 and fill_cost and expiry - now <= fill_cost * r.refresh_factor:
        return None  # an early refresh may be due: the script decides, and leases
    item_token, query_token, maker = tokens
    if not item_token or not query_token or len(item_token) > 255 or len(query_token) > 255:
        return None
    if maker != sid_of(r.token_key):
        return None
    part_token, since = b"", 0
    if r.partition_key:
        if not isinstance(partition, list):
            return None
        part_token, part_generation, part_since = partition
        part_sid = sid_of(r.partition_key)
        if not isinstance(part_generation, bytes) or part_sid is None:
            return None
        if not part_generation.startswith(part_sid + b"/"):
            return None
        if not part_token or len(part_token) > 255:
            return None
        since_value = _number(part_since) if part_since is not None else 0
        if since_value is None:
            return None
        since = since_value
    return LookupReply(
        LookupStatus.HIT,
        blob,
        False,
        item_token,
        query_token,
        generation,
        False,
        part_token,
        since,
        now,
    )


def _scripted(
    requests: Sequence[LookupRequest],
    token_ttl_ms: int,
    cluster: bool,
    learned: dict[str, bytes] | None = None,
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
    if learned is not None:  # the identities of the nodes holding the tokens
        learned.update((key, _bytes(reply[3])) for key, reply in tokens.items())
        learned.update((key, _bytes(reply[2])) for key, reply in partitions.items())
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


def group_by_slot(keys: Sequence[str]) -> list[list[str]]:
    """Split keys into same-slot groups, for multi-key scripts on a cluster."""
    from redis.crc import key_slot

    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(key_slot(key.encode("utf-8")), []).append(key)
    return list(groups.values())


def invalidate(
    keys: Sequence[str],
    settle_ms: int,
    tokens: Sequence[tuple[str, bool]] = (),
    token_ttl_ms: int = 0,
    cluster: bool = False,
    channel: str | None = None,
    lifecycle: Sequence[tuple[str, Lifecycle]] = (),
    generations: Sequence[tuple[str, str, bytes]] = (),
) -> Op[list[str]]:
    """Drop items and replace table tokens, and tell the near caches: one round trip.

    ``tokens`` holds (token key, True to drop item entries too, not only queries);
    ``lifecycle`` (token key, change) pairs; ``generations`` (token key, schema
    key, generation) for writes projected with a learned key schema. Returns the
    token keys whose generation was not current (their tables were dropped whole).
    On a cluster, keys are grouped by slot (a script touches one slot).
    """
    groups = group_by_slot(keys) if cluster else [list(keys)]
    nonce = new_token()
    calls = [Call(INVALIDATE_ITEMS, (*g, settle_ms, nonce), len(g)) for g in groups if g]
    calls += [
        Call(REPLACE_TOKENS, (key, new_token(), new_token(), int(items), token_ttl_ms), 1)
        for key, items in tokens
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
