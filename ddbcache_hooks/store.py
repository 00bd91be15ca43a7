"""Everything that talks to Redis: the Lua scripts, the operations, the transports.

Cache state of one item lives in one hash (all its request variants, their
leases, the settle marker), so one script on one slot does each step of the
protocol and a write drops every variant with one ``DEL``:

===============  =====================================================
field            meaning
===============  =====================================================
``e:<v>``        encoded entry of variant ``v``
``x:<v>``        its expiry, server time in ms (variants share a key TTL)
``l:<v>``        lease token of the caller filling ``v``
``m:<v>``        lease expiry
``s:<v>``        end of its stale-if-error grace (only with ``stale_if_error_s``)
``d:<v>``        what its fill cost (ms, from the lookup to DynamoDB's answer)
``a:<v>``        admission counter (Scan), ``ax:<v>`` its window end
``g``            generation: the server's identity, ``/``, a value new with each
                 invalidation (a signed entry is bound to it)
``c``            since when the item's history is known: the time of its last
                 invalidation, of a gap (eviction, another server), or 0
===============  =====================================================

A Query or Scan variant has a hash of its own with the same fields (``v`` is
empty). Per table, a small hash holds two random version tokens (``i`` for
item entries, ``q`` for query entries, each prefixed ``B<until ms>:`` while a
bulk load writes to the table), the identity of the server that made them
(``n``) and the table generation (``g``, unrelated to the item hash's field of
the same name: new with each table lifecycle change; a key schema learned with
DescribeTable is tied to it, see protocol.py). Per partition a page depends on
(``query_invalidation`` ``"partition"`` or ``"write"``), a hash holds its token
``t`` and, like an item's, ``g`` and ``c``: a write drops it in the same script
as the item's. All times are the server's (``TIME``), so processes with skewed
clocks agree. Every key gets a TTL.

The server's identity is its replication id (``INFO replication``, read inside
the scripts, so no round trip is added; a primary draws a new one at every
start and every promotion). A restart (from a snapshot that may predate
acknowledged invalidations) or a promotion (of a replica that may lag)
changes it; state found under another identity is discarded, so an
invalidation the server forgot cannot bring an old entry back
(docs/consistency.md).

The operations are generators yielding :class:`~ddbcache_hooks.effects.RedisBatch`;
a transport (sync or async, at the bottom) executes a batch as one pipeline.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import redis
from redis.client import NEVER_DECODE
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connections import CONNECTS, Connections
from .effects import Call, Op, RedisBatch, Script
from .near import encode_message

log = logging.getLogger("ddbcache_hooks")

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function keep_until(key, deadline, now)
  local want = deadline - now
  if want > 0 and redis.call('PTTL', key) < want then redis.call('PEXPIRE', key, want) end
end
-- Which server (and history) this is: a primary's replication id, new with
-- every start and every promotion. '-' where INFO is not available to scripts.
local function server_id()
  local info = redis.pcall('INFO', 'replication')
  if type(info) ~= 'string' then return '-' end
  return string.sub(string.match(info, 'master_replid:(%x+)') or '-', 1, 24)
end
-- True when the server has never evicted a key: then a missing key was never
-- written, or expired (markers outlive their window), and proves no recent write.
-- A server that does not tell proves nothing.
local function never_evicted()
  local s = redis.pcall('INFO', 'stats')
  return type(s) == 'string' and string.match(s, 'evicted_keys:(%d+)') == '0'
end
-- A replacement for a table token: ``fresh``, keeping the bulk-load mark
-- ('B<until ms>:', see protocol.py) the old token carried.
local function renew(old, fresh)
  local mark = old and string.match(old, '^B%d+:')
  return (mark or '') .. fresh
end
-- Whether a redis.pcall reply is the error of a key holding another type (the
-- caller repairs the key). Any other error, an ACL refusal above all, is raised:
-- taken for a broken key it would delete state and hide the refusal.
local function wrong_type(reply)
  if type(reply) ~= 'table' or not reply['err'] then return false end
  local err = tostring(reply['err'])
  if string.find(err, 'WRONGTYPE', 1, true) then return true end
  error(err)
end
local function as_hash(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', key) end
end
-- A table's {item token, query token, 1 if a foreign value was replaced}; both
-- are created (from fresh, a random value) when either is missing (a new table,
-- an evicted token hash), unusable, or made by another server (restart, failover).
-- A bulk-load mark is kept (reads keep bypassing); the table generation ('g') of
-- such a hash is dropped, so that no key schema learned under it is used again.
local function table_tokens(key, fresh, ttl, sid)
  local t = redis.pcall('HMGET', key, 'i', 'q', 'n')
  local replaced = 0
  if wrong_type(t) then redis.call('DEL', key); t = {}; replaced = 1 end
  if t[1] and t[2] and (#t[1] > 255 or #t[2] > 255) then t = {}; replaced = 1 end
  if not t[1] or not t[2] or t[3] ~= sid then
    t = {renew(t[1], fresh .. 'i'), renew(t[2], fresh .. 'q')}
    redis.call('HSET', key, 'i', t[1], 'q', t[2], 'n', sid)
    redis.call('HDEL', key, 'g')
    if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
  elseif redis.call('PTTL', key) < ttl / 2 then
    redis.call('PEXPIRE', key, ttl)
  end
  return {t[1], t[2], replaced}
end
-- A partition's {token, since when its history is known}. The token is created
-- (from fresh) when missing: invalidate_items deletes the hash on every write to
-- the partition, leaving only its marker ('c', 'g') like an item's. A hash
-- another server made (restart, failover) is discarded and its history starts
-- now; so does a missing one unless the server never evicted a key. Pages
-- record the table's query token and this one, so replacing the table's tokens
-- drops them too.
local function partition_token(key, fresh, ttl, sid)
  local p = redis.pcall('HMGET', key, 't', 'g', 'c')
  if wrong_type(p) then redis.call('DEL', key); p = {} end
  local t, since = p[1], tonumber(p[3]) or 0
  if not p[2] or string.sub(p[2], 1, #sid + 1) ~= sid .. '/' then
    since = now_ms()
    if p[2] or redis.call('EXISTS', key) == 1 then
      redis.call('DEL', key)
    elseif never_evicted() then
      since = 0
    end
    t = false
    redis.call('HSET', key, 'g', sid .. '/' .. fresh, 'c', since)
  end
  if not t or #t > 255 then
    t = fresh .. 'p'
    redis.call('HSET', key, 't', t)
    redis.call('PEXPIRE', key, ttl)
  elseif redis.call('PTTL', key) < ttl / 2 then
    redis.call('PEXPIRE', key, ttl)
  end
  return {t, since}
end
"""


def _script(name: str, body: str) -> Script:
    source = _PRELUDE + body
    return Script(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


HIT, LEASED, WAIT, NOT_ADMITTED, LATE, REFRESH = 1, 2, 3, 4, 5, 6

#: KEYS[1] entry hash, KEYS[2] (optional, same node) the table's token hash,
#: KEYS[3] (optional, same node) the page's partition token hash.
#: ARGV: field, lease token, lease ms, admission count, admission window ms,
#: drop (1: discard the current entry first), token ttl ms, deadline (server ms;
#: 0: none): a lookup that runs after its caller gave up takes no lease (LATE),
#: early refresh factor (XFetch's ``-beta * ln(random)``, drawn by the caller since
#: a script's random numbers repeat; 0: off): a valid entry whose remaining life
#: is within its fill cost times the factor, and that nobody refreshes yet, is
#: leased to this caller (REFRESH) and returned.
#: Returns {status, entry (a hit's or a refresh's; on a miss the expired entry
#: while within its stale-if-error grace, else nil), flags (1: the key held garbage and was deleted,
#: 2: a foreign table token was replaced), item token, query token, generation,
#: partition token, since when the partition's history is known (server ms),
#: server time ms} (tokens only with their keys).
LOOKUP_OR_LEASE = _script(
    "lookup_or_lease",
    """
local key, f, token = KEYS[1], ARGV[1], ARGV[2]
local sid = server_id()
local tokens = {false, false, 0}
if KEYS[2] then tokens = table_tokens(KEYS[2], token, tonumber(ARGV[7]), sid) end
-- KEYS[3] (optional, same node): the partition token of a Query/Scan page.
local part = {false, 0}
if KEYS[3] then part = partition_token(KEYS[3], token, tonumber(ARGV[7]), sid) end
local now = now_ms()
local corrupt = 2 * tokens[3]
local r = redis.pcall('HMGET', key, 'e:'..f, 'x:'..f, 'l:'..f, 'm:'..f, 'g', 's:'..f, 'd:'..f)
if wrong_type(r) then
  redis.call('DEL', key)
  corrupt = corrupt + 1
  r = {}
end
local gen = r[5]
if not gen or string.sub(gen, 1, #sid + 1) ~= sid .. '/' then
  -- Nothing here, or state another server made: it may predate an invalidation
  -- that server acknowledged and this one lost, so none of it is trusted, and
  -- fills stay inside the settle window unless no write can have been missed.
  local since = now
  if gen or redis.call('EXISTS', key) == 1 then
    redis.call('DEL', key)
  elseif never_evicted() then
    since = 0
  end
  gen = sid .. '/' .. token
  redis.call('HSET', key, 'g', gen, 'c', since)
  r = {}
end
if ARGV[6] == '1' then
  redis.call('HDEL', key, 'e:'..f, 'x:'..f, 's:'..f, 'd:'..f)
  r[1] = false
end
local expires = tonumber(r[2])
local lease_end = tonumber(r[4])
local deadline = tonumber(ARGV[8])
if r[1] and expires and expires > now then
  local factor, cost = tonumber(ARGV[9]) or 0, tonumber(r[7])
  if factor > 0 and cost and expires - now <= cost * factor
    and not (r[3] and lease_end and lease_end > now)
    and not (deadline > 0 and now > deadline) then
    lease_end = now + tonumber(ARGV[3])
    redis.call('HSET', key, 'l:'..f, token, 'm:'..f, lease_end)
    keep_until(key, lease_end, now)
    return {6, r[1], corrupt, tokens[1], tokens[2], gen, part[1], part[2], now}
  end
  return {1, r[1], corrupt, tokens[1], tokens[2], gen, part[1], part[2], now}
end
-- Expired: still the stale-if-error fallback while within its grace.
local grace_end = tonumber(r[6])
local fallback = false
if r[1] and grace_end and grace_end > now then fallback = r[1] end
local admission = tonumber(ARGV[4])
if admission > 1 then
  local a = redis.call('HMGET', key, 'a:'..f, 'ax:'..f)
  local count, window = tonumber(a[1]), tonumber(a[2])
  if not count or not window or window <= now then
    count, window = 0, now + tonumber(ARGV[5])
  end
  count = count + 1
  redis.call('HSET', key, 'a:'..f, count, 'ax:'..f, window)
  keep_until(key, window, now)
  if count < admission then
    return {4, fallback, corrupt, tokens[1], tokens[2], gen, part[1], part[2], now}
  end
end
if r[3] and r[3] ~= token and lease_end and lease_end > now then
  return {3, fallback, corrupt, tokens[1], tokens[2], gen, part[1], part[2], now}
end
if deadline > 0 and now > deadline then
  return {5, fallback, corrupt, tokens[1], tokens[2], gen, part[1], part[2], now}
end
lease_end = now + tonumber(ARGV[3])
redis.call('HSET', key, 'l:'..f, token, 'm:'..f, lease_end)
keep_until(key, lease_end, now)
return {2, fallback, corrupt, tokens[1], tokens[2], gen, part[1], part[2], now}
""",
)

#: KEYS[1] entry hash. ARGV: field, lease token, entry ('' = only release), ttl ms,
#: settle window ms, (optional, a Query/Scan page) since when the history of the
#: page's partition is known (as the lookup read it with the partition token),
#: stale-if-error grace ms (kept past the TTL), the fill's cost ms (early refresh).
#: A fill inside the settle window gets neither: it may hold a value from before
#: a write, and it lives only until the window ends (the next fill gets the full
#: TTL; refreshing it early would only be cut again).
#: Stores only while the caller's lease is intact: a write since the lookup
#: deleted it. Unless the hash (and the partition) prove that no write happened
#: within the settle window (``c``: history known since before the window), the
#: TTL is cut to the window's rest; the hash then outlives the window, so that
#: the next fill can prove it. An evicted marker thus shortens fills, it never
#: lengthens one.
#: Returns {1 stored | 0 lease lost | 2 released | -1 key is garbage, ttl ms}.
FILL_IF_LEASED = _script(
    "fill_if_leased",
    """
local key, f = KEYS[1], ARGV[1]
local r = redis.pcall('HMGET', key, 'l:'..f, 'c')
if wrong_type(r) then return {-1, 0} end
if r[1] ~= ARGV[2] then return {0, 0} end
redis.call('HDEL', key, 'l:'..f, 'm:'..f)
if ARGV[3] == '' then return {2, 0} end
local now = now_ms()
local ttl = tonumber(ARGV[4])
local keep = now + ttl
local settle = tonumber(ARGV[5]) or 0
local grace, cost = tonumber(ARGV[7]) or 0, tonumber(ARGV[8]) or 0
if settle > 0 then
  -- The entry's own history, and (a Query/Scan page) its partition's.
  local since = math.max(tonumber(r[2]) or now, tonumber(ARGV[6]) or 0)
  local settle_end = since + settle
  if settle_end > now then
    if settle_end - now < ttl then ttl = settle_end - now end
    keep = math.max(now + ttl, settle_end + settle)
    grace, cost = 0, 0
  end
end
redis.call('HSET', key, 'e:'..f, ARGV[3], 'x:'..f, now + ttl)
redis.call('HDEL', key, 's:'..f, 'd:'..f)
if grace > 0 then
  redis.call('HSET', key, 's:'..f, now + ttl + grace)
  keep = math.max(keep, now + ttl + grace)
end
if cost > 0 then redis.call('HSET', key, 'd:'..f, cost) end
keep_until(key, keep, now)
return {1, ttl}
""",
)

#: KEYS: entry hashes (one slot). ARGV: settle window ms, a fresh random value.
#: Drops every variant and lease; with a settle window, leaves the marker of
#: this invalidation (``c``) and a new generation, for two windows: a lookup in
#: the second finds the window over and its fill keeps the full TTL.
INVALIDATE_ITEMS = _script(
    "invalidate_items",
    """
local settle = tonumber(ARGV[1])
local now, gen = 0, ''
if settle > 0 then now = now_ms(); gen = server_id() .. '/' .. ARGV[2] end
for _, key in ipairs(KEYS) do
  redis.call('DEL', key)
  if settle > 0 then
    redis.call('HSET', key, 'c', now, 'g', gen)
    redis.call('PEXPIRE', key, 2 * settle)
  end
end
return #KEYS
""",
)

#: KEYS[1] token hash. ARGV: a fresh random value, ttl ms. Returns {item token,
#: query token, 1 if a foreign value was replaced, the server's identity}. Used
#: on a cluster, where the token hash is on another node.
TABLE_TOKENS = _script(
    "table_tokens",
    """
local sid = server_id()
local t = table_tokens(KEYS[1], ARGV[1], tonumber(ARGV[2]), sid)
return {t[1], t[2], t[3], sid}
""",
)

#: KEYS[1] partition token hash. ARGV: a fresh random value, ttl ms. Returns
#: {token, since when the partition's history is known (server ms), the server's
#: identity}. Used on a cluster, where the partition token lives on its own slot.
PARTITION_TOKEN = _script(
    "partition_token",
    """
local sid = server_id()
local p = partition_token(KEYS[1], ARGV[1], tonumber(ARGV[2]), sid)
return {p[1], p[2], sid}
""",
)

#: KEYS[1] token hash. ARGV: fresh item token, fresh query token, '1' to replace
#: the item token too (else only query entries go), ttl ms. A bulk-load mark on
#: the tokens is kept; the writing server's identity is recorded.
REPLACE_TOKENS = _script(
    "replace_tokens",
    """
local key = KEYS[1]
as_hash(key)
local sid = server_id()
local old = redis.call('HMGET', key, 'i', 'q', 'n')
if ARGV[3] == '1' or not old[1] then
  redis.call('HSET', key, 'i', renew(old[1], ARGV[1]))
end
redis.call('HSET', key, 'q', renew(old[2], ARGV[2]), 'n', sid)
-- Another server's table generation: no key schema learned under it is used.
if old[3] ~= sid then redis.call('HDEL', key, 'g') end
-- Only ever raised: a bulk load's bypass keeps its hash.
if redis.call('PTTL', key) < tonumber(ARGV[4]) then redis.call('PEXPIRE', key, ARGV[4]) end
return 1
""",
)

#: KEYS[1] token hash, KEYS[2] the table's schema key (same slot). ARGV: fresh
#: item token, fresh query token, fresh generation ('' keeps generation and
#: schema), bulk mark ('' keeps the tokens' mark, '-' clears it, else the new
#: mark), ttl ms (the hash's TTL is only ever raised).
#: A table's lifecycle: every entry goes; with a generation, its schema too.
TABLE_LIFECYCLE = _script(
    "table_lifecycle",
    """
local key, mark = KEYS[1], ARGV[4]
as_hash(key)
local sid = server_id()
local old = redis.call('HMGET', key, 'i', 'q', 'n')
local i, q = renew(old[1], ARGV[1]), renew(old[2], ARGV[2])
if mark == '-' then
  i, q = ARGV[1], ARGV[2]
elseif mark ~= '' then
  i, q = mark..ARGV[1], mark..ARGV[2]
end
redis.call('HSET', key, 'i', i, 'q', q, 'n', sid)
if ARGV[3] ~= '' then
  redis.call('HSET', key, 'g', ARGV[3])
  redis.call('DEL', KEYS[2])
elseif old[3] ~= sid then
  redis.call('HDEL', key, 'g')
end
if redis.call('PTTL', key) < tonumber(ARGV[5]) then redis.call('PEXPIRE', key, ARGV[5]) end
return 1
""",
)

#: KEYS[1] token hash, KEYS[2] schema key (same slot). ARGV: fresh generation
#: (stored when the table has none), ttl ms, expected generation ('' = only
#: read), fresh item token, fresh query token.
#: A token hash missing, or made by another server, gets new tokens and a new
#: generation (a schema stored under the old one is never used).
#: Returns {generation, schema blob or false, 1 if the expected generation was
#: not current}: a write projected with a schema of another generation drops
#: every entry of the table instead.
TABLE_GENERATION = _script(
    "table_generation",
    """
local key = KEYS[1]
-- Tokens (and so the generation) another server made are replaced first.
table_tokens(key, ARGV[1], tonumber(ARGV[2]), server_id())
local g = redis.call('HGET', key, 'g')
if not g then
  g = ARGV[1]
  redis.call('HSET', key, 'g', g)
end
if ARGV[3] == '' then
  local blob = redis.pcall('GET', KEYS[2])
  if wrong_type(blob) or type(blob) ~= 'string' then blob = false end
  return {g, blob, 0}
end
if g == ARGV[3] then return {g, false, 0} end
local old = redis.call('HMGET', key, 'i', 'q')
redis.call('HSET', key, 'i', renew(old[1], ARGV[4]), 'q', renew(old[2], ARGV[5]))
return {g, false, 1}
""",
)

SCRIPTS = (
    LOOKUP_OR_LEASE,
    FILL_IF_LEASED,
    INVALIDATE_ITEMS,
    TABLE_TOKENS,
    PARTITION_TOKEN,
    REPLACE_TOKENS,
    TABLE_LIFECYCLE,
    TABLE_GENERATION,
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


FILL_STORED, FILL_LOST, FILL_RELEASED, FILL_GARBAGE = 1, 0, 2, -1


_PROCESS = os.urandom(6).hex()
_sequence = itertools.count()


def new_token() -> str:
    """A lease token or version token that no process ever made before.

    A random per-process prefix and a counter: unique like a random value
    (never a counter that restarts, see docs/design.md), at a fraction of the
    cost of ``os.urandom`` on every lookup. Forked children draw a new prefix.
    """
    return f"{_PROCESS}{next(_sequence):x}"


def _reseed() -> None:
    global _PROCESS
    _PROCESS = os.urandom(6).hex()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


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
        #: Node of a key ("" on one node); None: plain reads are off.
        self.node_of: Callable[[str], str] | None = None
        self._ids: dict[str, tuple[bytes, int, float]] = {}

    def enable(self, transport: Any) -> None:
        """Plain reads on this transport's client, if its pools report reconnects."""
        client = transport.client
        if transport.cluster:
            if is_async_cluster(client):
                return  # its nodes' connections are not made by a pool of ours
            pool_class = client.nodes_manager.connection_pool_class
            if getattr(pool_class, "counts_connects", False):
                self.node_of = lambda key: str(transport.client.get_node_from_key(key).name)
        elif getattr(getattr(client, "connection_pool", None), "counts_connects", False):
            self.node_of = lambda key: ""

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
    tokens are well formed. Anything else — a lease, an expired or missing
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
    replies = yield RedisBatch(calls, errors_as_values=True)
    if ServerIds.epoch() != epoch:
        return out  # a connection was made meanwhile: another server may have answered
    if cluster and any(node_of(key) != node for key, node in nodes.items()):
        return out  # a slot moved meanwhile
    n, t, p = len(eligible), len(token_keys), len(partition_keys)
    tokens = dict(zip(token_keys, replies[n : n + t], strict=True))
    partitions = dict(zip(partition_keys, replies[n + t : n + t + p], strict=True))
    clocks: dict[str, int] = {}
    for node, reply in zip(clock_keys, replies[n + t + p :], strict=True):
        if isinstance(reply, (tuple, list)) and len(reply) == 2:
            clocks[node] = int(reply[0]) * 1000 + int(reply[1]) // 1000
    for i, entry in zip(eligible, replies[:n], strict=True):
        r = requests[i]
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
        HIT, blob, False, item_token, query_token, generation, False, part_token, since, now
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
    replies = yield RedisBatch(calls)
    return [
        key
        for (key, _, _), reply in zip(generations, replies[checked:], strict=False)
        if int(reply[2])
    ]


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
        [Call(TABLE_GENERATION, (token_key, schema_key, new_token(), token_ttl_ms, ""), 2)]
    )
    generation, blob, _ = replies[0]
    return bytes(generation), blob if isinstance(blob, bytes) else b""


def set_value(key: str, value: bytes, ttl_s: int) -> Op[None]:
    yield RedisBatch([Call(None, ("SET", key, value, "EX", ttl_s))])


# --- transports --------------------------------------------------------------------


def is_async_cluster(client: Any) -> bool:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    return isinstance(client, AsyncRedisCluster)


def is_cluster(client: Any) -> bool:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    return isinstance(client, (RedisCluster, AsyncRedisCluster))


def group_by_slot(keys: Sequence[str]) -> list[list[str]]:
    """Split keys into same-slot groups, for multi-key scripts on a cluster."""
    from redis.crc import key_slot

    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(key_slot(key.encode("utf-8")), []).append(key)
    return list(groups.values())


def _queue(pipe: Any, call: Call, cluster: Any = None) -> Any:
    """Add one call to a pipeline (or, given a client, run it).

    NEVER_DECODE: entries are binary even when the caller's client was made
    with ``decode_responses=True`` (redis-py's own DUMP command does the same).
    On a cluster, the target node is named: otherwise redis-py asks the server
    (COMMAND GETKEYS) where each EVALSHA goes, one extra round trip per script.
    """
    options: dict[str, Any] = {NEVER_DECODE: []}
    if cluster is not None:
        options["target_nodes"] = cluster.get_node_from_key(call.first_key)
    if call.script is not None:
        return pipe.execute_command("EVALSHA", call.script.sha, call.numkeys, *call.args, **options)
    return pipe.execute_command(*call.args, **options)


def _first_error(replies: Sequence[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply if isinstance(reply, RedisError) else RedisError(str(reply))


def _holder(target: Any) -> Connections:
    return target if isinstance(target, Connections) else Connections.given(target)


def _suspects(exc: RedisError, calls: Sequence[Call]) -> RedisError:
    """Note on a time-out which keys the batch read: one of them may hold garbage."""
    if isinstance(exc, RedisTimeoutError):
        scripted = [
            (call.args[0], call.args[call.numkeys])
            for call in calls
            if call.script is LOOKUP_OR_LEASE
        ]
        plain = [  # a plain read of an entry: HMGET key e:<v> x:<v> g
            (call.args[1], call.args[2][2:])
            for call in calls
            if call.script is None and call.args[0] == "HMGET" and call.args[2].startswith("e:")
        ]
        exc.ddbcache_keys = scripted + plain  # type: ignore[attr-defined]
    return exc


def _pack(calls: Sequence[Call]) -> bytes:
    """Plain commands in the Redis protocol (keys and fields are str, numbers int).

    redis-py's packer spends more per command than the server does on an HMGET.
    """
    out = []
    for call in calls:
        out.append(b"*%d\r\n" % len(call.args))
        for arg in call.args:
            data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


#: redis-py before 6 wants a command name to pick a pooled connection, later ones none.
_POOL_ARGS: tuple[str, ...] = () if int(redis.__version__.split(".")[0]) >= 6 else ("HMGET",)


class SyncTransport:
    """Executes a batch on a ``redis.Redis`` / ``RedisCluster`` as one pipeline."""

    def __init__(self, connections: Connections | redis.Redis | Any) -> None:
        self.connections = _holder(connections)
        self.cluster = is_cluster(self.connections.client)
        #: Server identities for plain reads (the protocol's, see Registration).
        self.servers = ServerIds()

    @property
    def client(self) -> Any:
        """The library's client (a fresh one after a fork)."""
        return self.connections.client

    def execute(self, calls: Sequence[Call], errors_as_values: bool = False) -> list[Any]:
        try:
            return self._execute(calls, errors_as_values)
        except RedisError as exc:
            self.servers.forget()
            raise _suspects(exc, calls) from None

    def ping(self) -> None:
        self.client.ping()

    def _execute(self, calls: Sequence[Call], errors_as_values: bool) -> list[Any]:
        if errors_as_values and not self.cluster and self.servers.node_of is not None:
            return self._plain(calls)
        if len(calls) == 1 and not self.cluster:
            return [self._single(calls[0])]
        replies = self._pipeline(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # The server restarted or flushed its script cache: load and resend those.
            for script in {calls[i].script for i in missing if calls[i].script}:
                assert script is not None
                self.client.script_load(script.source)
            for i, reply in zip(missing, self._pipeline([calls[i] for i in missing]), strict=True):
                replies[i] = reply
        if not errors_as_values:
            _first_error(replies)
        return replies

    def _plain(self, calls: Sequence[Call]) -> list[Any]:
        """Plain commands written at once on one pooled connection, replies raw.

        What a pipeline does, without its per-command bookkeeping (a third of a
        hit's Redis cost on the client). Only on the library's own pools.
        """
        pool = self.client.connection_pool
        connection = pool.get_connection(*_POOL_ARGS)
        try:
            connection.send_packed_command([_pack(calls)])
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(connection.read_response(disable_decoding=True))
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    def _single(self, call: Call) -> Any:
        """One command without a pipeline object: the common hit costs less."""
        try:
            return _queue(self.client, call)
        except NoScriptError:
            assert call.script is not None
            self.client.script_load(call.script.source)
            return _queue(self.client, call)

    def _pipeline(self, calls: Sequence[Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        cluster = self.client if self.cluster else None
        for call in calls:
            _queue(pipe, call, cluster)
        return list(pipe.execute(raise_on_error=False))

    def scan_delete(self, pattern: str, batch: int = 500) -> int:
        """Delete every key matching ``pattern`` (on every primary of a cluster)."""
        deleted = 0
        keys: list[Any] = []
        for key in self.client.scan_iter(match=pattern, count=batch):
            keys.append(key)
            if len(keys) >= batch:
                deleted += self._unlink(keys)
                keys = []
        if keys:
            deleted += self._unlink(keys)
        return deleted

    def _unlink(self, keys: list[Any]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.unlink(key)
        return sum(int(n) for n in pipe.execute())


class AsyncTransport:
    """Executes a batch on a ``redis.asyncio`` client as one pipeline."""

    def __init__(self, connections: Connections | Any) -> None:
        self.connections = _holder(connections)
        self.cluster = is_cluster(self.connections.client)
        #: Server identities for plain reads (the protocol's, see Registration).
        self.servers = ServerIds()

    @property
    def client(self) -> Any:
        return self.connections.client

    async def ping(self) -> None:
        await self.client.ping()

    async def execute(self, calls: Sequence[Call], errors_as_values: bool = False) -> list[Any]:
        try:
            return await self._execute(calls, errors_as_values)
        except RedisError as exc:
            self.servers.forget()
            raise _suspects(exc, calls) from None

    async def _execute(self, calls: Sequence[Call], errors_as_values: bool) -> list[Any]:
        if errors_as_values and not self.cluster and self.servers.node_of is not None:
            return await self._plain(calls)
        if len(calls) == 1 and not self.cluster:
            return [await self._single(calls[0])]
        replies = await self._pipeline(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for script in {calls[i].script for i in missing if calls[i].script}:
                assert script is not None
                await self.client.script_load(script.source)
            for i, reply in zip(
                missing, await self._pipeline([calls[i] for i in missing]), strict=True
            ):
                replies[i] = reply
        if not errors_as_values:
            _first_error(replies)
        return replies

    async def _plain(self, calls: Sequence[Call]) -> list[Any]:
        """:meth:`SyncTransport._plain`, awaited."""
        pool = self.client.connection_pool
        connection = await pool.get_connection(*_POOL_ARGS)
        try:
            await connection.send_packed_command(connection.pack_commands([c.args for c in calls]))
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(await connection.read_response(disable_decoding=True))
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _single(self, call: Call) -> Any:
        try:
            return await _queue(self.client, call)
        except NoScriptError:
            assert call.script is not None
            await self.client.script_load(call.script.source)
            return await _queue(self.client, call)

    async def _pipeline(self, calls: Sequence[Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        cluster = self.client if self.cluster else None
        for call in calls:
            _queue(pipe, call, cluster)
        return list(await pipe.execute(raise_on_error=False))
