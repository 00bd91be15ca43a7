"""The Lua scripts, their reply codes and the data layout they keep in Redis.

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
``w``            write intents registered on the item since its last invalidation
``w:<t>``        a write intent (write-through): its expiry, server time in ms;
                 ``<expiry>:x`` once another write completed meanwhile
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
start and every promotion). Only a primary has one here: a script that finds
``role`` other than ``master`` fails with :data:`NOT_PRIMARY` (a replica may
lag, be cut off, and refuses invalidations). A restart (from a snapshot that may predate
acknowledged invalidations) or a promotion (of a replica that may lag)
changes it; state found under another identity is discarded, so an
invalidation the server forgot cannot bring an old entry back
(docs/consistency.md).

Pure data: the operations that send these scripts are in store.py, the
transports that execute them in transport.py.
"""

from __future__ import annotations

import enum
import hashlib

from .effects import Script

#: What every script uses: the server's clock, its identity, the type check.
_CORE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Which server (and history) this is: a primary's replication id, new with
-- every start and every promotion. '-' where INFO is not available to scripts.
-- A replica shares its primary's id but may lag it or be cut off from it, and
-- takes no invalidation: nothing is served from it, the script fails instead.
local function server_id()
  local info = redis.pcall('INFO', 'replication')
  if type(info) ~= 'string' then return '-' end
  local role = string.match(info, 'role:(%a+)')
  if role and role ~= 'master' then
    error('DDBCACHE_NOT_PRIMARY this server is a ' .. role .. ', not a primary')
  end
  return string.sub(string.match(info, 'master_replid:(%x+)') or '-', 1, 24)
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
"""

#: What the scripts that write use besides (a read-only script needs none of it).
_PRELUDE = (
    """
if redis.replicate_commands then redis.replicate_commands() end
"""
    + _CORE
    + """
local function keep_until(key, deadline, now)
  local want = deadline - now
  if want > 0 and redis.call('PTTL', key) < want then redis.call('PEXPIRE', key, want) end
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
-- On a full server (maxmemory under noeviction) Redis refuses a script's first
-- command that may use memory (HSET, SET) unless the script has already written.
-- Deleting a field no hash has is such a write, and it needs no memory: every
-- script that drops state calls this first, so that a full server still applies
-- an invalidation (docs/consistency.md, "A full Redis"). It changes nothing, so
-- nothing is replicated.
local function may_write(key)
  redis.pcall('HDEL', key, '~')
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
)


def _script(name: str, body: str, prelude: str = _PRELUDE) -> Script:
    source = prelude + body
    return Script(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


#: The error a script fails with on a server that is not a primary.
NOT_PRIMARY = "DDBCACHE_NOT_PRIMARY"

#: Table tokens of a table a bulk load writes to start with this mark and the
#: end of the bypass (ms since the epoch): ``B1767225600000:<token>``.
BULK_MARK = b"B"


class LookupStatus(enum.IntEnum):
    """The first element of :data:`LOOKUP_OR_LEASE`'s reply.

    Reply codes, not slot states: plan.py's ``HIT``/``LEASED``/``WAIT`` strings
    say what the protocol does with a request, these what the script found.
    """

    HIT = 1
    LEASED = 2
    WAIT = 3
    NOT_ADMITTED = 4
    LATE = 5
    REFRESH = 6


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

#: KEYS: entry hashes (N), table token hashes (T), partition token hashes (P),
#: all on one node (on a cluster: one key per call). ARGV: N, T, P, early refresh
#: factor (as for :data:`LOOKUP_OR_LEASE`; 0: off), then one field per entry hash.
#: Reads only: the hits :data:`LOOKUP_OR_LEASE` would return, by the same rules,
#: and nothing else. An entry is a hit when it is present and unexpired, its
#: hash was made by this server (the generation's identity), and no early
#: refresh may be due; a token or partition hash counts when it is well formed
#: and this server made it. Anything else (a lease, a miss, a key of another
#: type, another server's state) is left to the lookup script, which repairs.
#: Fails with :data:`NOT_PRIMARY` like every script, on a server that is not a
#: primary.
#: Returns one bulk string, parsed by store.py like a ``GET``: a header line
#: ``<server ms> <server identity> <T pairs> <P pairs> <N pairs>`` (a pair is the
#: lengths of the two values that follow, or ``- -`` for none: item and query
#: token; partition token and since when its history is known, the second a
#: number in place of a length; an entry's generation and entry), a newline,
#: then the values. With no keys to read (N = T = P = 0) it reports the clock and
#: the identity only: a batch reads its hashes with ``HMGET`` in the same
#: pipeline, before it (store._batch says why), and judges them by the same
#: rules against what it returns.
READ_HITS = _script(
    "read_hits",
    """
local n, t, p = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local factor = tonumber(ARGV[4]) or 0
local sid = server_id()
local now = now_ms()
local head, body = {now, sid}, {}
local function read(key, ...)
  local r = redis.pcall('HMGET', key, ...)
  if wrong_type(r) then return {} end
  return r
end
local function none()
  table.insert(head, '-'); table.insert(head, '-')
end
local prefix = sid .. '/'
for j = n + 1, n + t do
  local r = read(KEYS[j], 'i', 'q', 'n')
  if r[1] and r[2] and r[3] == sid and #r[1] > 0 and #r[2] > 0
    and #r[1] <= 255 and #r[2] <= 255 then
    table.insert(head, #r[1]); table.insert(head, #r[2])
    table.insert(body, r[1]); table.insert(body, r[2])
  else none() end
end
for j = n + t + 1, n + t + p do
  local r = read(KEYS[j], 't', 'g', 'c')
  local since = 0
  if r[3] then since = string.match(r[3], '^%d+$') and tonumber(r[3]) end
  if r[1] and r[2] and since and #r[1] > 0 and #r[1] <= 255
    and string.sub(r[2], 1, #prefix) == prefix then
    table.insert(head, #r[1]); table.insert(head, since)
    table.insert(body, r[1])
  else none() end
end
for j = 1, n do
  local f = ARGV[4 + j]
  local r = read(KEYS[j], 'e:'..f, 'x:'..f, 'g', 'd:'..f)
  local expires, cost = tonumber(r[2]), tonumber(r[4])
  if r[1] and #r[1] > 0 and r[3] and string.sub(r[3], 1, #prefix) == prefix
    and expires and expires > now
    and not (factor > 0 and cost and expires - now <= cost * factor) then
    table.insert(head, #r[3]); table.insert(head, #r[1])
    table.insert(body, r[3]); table.insert(body, r[1])
  else none() end
end
return table.concat(head, ' ') .. '\\n' .. table.concat(body)
""",
    _CORE,
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
may_write(key)
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
may_write(key)
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
-- A write's check may replace the tokens: it must run on a full server too.
if ARGV[3] ~= '' then may_write(key) end
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

SCRIPTS: tuple[Script, ...] = (
    LOOKUP_OR_LEASE,
    READ_HITS,
    FILL_IF_LEASED,
    INVALIDATE_ITEMS,
    TABLE_TOKENS,
    PARTITION_TOKEN,
    REPLACE_TOKENS,
    TABLE_LIFECYCLE,
    TABLE_GENERATION,
)


class FillStatus(enum.IntEnum):
    """What :data:`FILL_IF_LEASED` answers for one entry."""

    STORED = 1
    LOST = 0
    RELEASED = 2
    GARBAGE = -1


class WriteThroughStatus(enum.IntEnum):
    """What :data:`WRITE_THROUGH` answers: stored, or why not."""

    STORED = 1
    #: The intent is gone or spoiled: an invalidation (another write, a stream
    #: record, an eviction, a restart) touched the item since it was registered.
    INTERVENED = 2
    #: Another intent was registered after this one.
    SUPERSEDED = 3
    #: Another write's intent is still in flight.
    BUSY = 4
    #: The table's item token changed (a table drop, ``invalidate_table``).
    TABLE = 5
    #: The intent expired before the write completed.
    EXPIRED = 6
    #: Nothing to store (only the invalidation ran).
    NO_ENTRY = 7


#: KEYS[1] item hash, KEYS[2] (optional, same node) the table's token hash.
#: ARGV: intent token, intent ms, a fresh random value, token ttl ms.
#: A write about to be sent registers an intent on the item: a new field with an
#: expiry by the server's clock, counted in ``w``. The hash's generation is made
#: current first (as a lookup does), so that a lookup does not discard the hash
#: and its intent as state of another server.
#: Returns {intent number, item token (false without KEYS[2]), server identity,
#: server time ms}.
REGISTER_INTENT = _script(
    "register_intent",
    """
local key, token = KEYS[1], ARGV[1]
local sid = server_id()
local tokens = {false, false, 0}
if KEYS[2] then tokens = table_tokens(KEYS[2], ARGV[3], tonumber(ARGV[4]), sid) end
local now = now_ms()
local g = redis.pcall('HGET', key, 'g')
if type(g) == 'table' and g['err'] then redis.call('DEL', key); g = false end
if not g or string.sub(g, 1, #sid + 1) ~= sid .. '/' then
  local since = now
  if g or redis.call('EXISTS', key) == 1 then
    redis.call('DEL', key)
  elseif never_evicted() then
    since = 0
  end
  redis.call('HSET', key, 'g', sid .. '/' .. ARGV[3], 'c', since)
end
local n = redis.call('HINCRBY', key, 'w', 1)
local ends = now + tonumber(ARGV[2])
redis.call('HSET', key, 'w:' .. token, ends)
keep_until(key, ends, now)
return {n, tokens[1], sid, now}
""",
)

#: KEYS[1] item hash, KEYS[2] (optional, same node) the table's token hash.
#: ARGV: intent token, intent number, server identity at registration, the item
#: token the entry carries ('' : not checked here), a fresh random value, entry
#: ('' : invalidate only), ttl ms, settle window ms, variant field.
#: After a write DynamoDB applied: the item's invalidation (every variant and
#: lease goes, the settle marker and a new generation ``<sid>/<fresh>`` are left)
#: and, when this write's intent is intact, is the last one registered, no other
#: is in flight, the server and the table token are the ones of the registration,
#: the new image stored under ``field`` with the full TTL. Every other live intent
#: is kept, spoiled: its write may have been applied before this one, so it stores
#: nothing, but it keeps blocking other writes' fills until it expires.
#: Returns {WriteThroughStatus, ttl ms}.
WRITE_THROUGH = _script(
    "write_through",
    """
local key, mine = KEYS[1], 'w:' .. ARGV[1]
local now = now_ms()
local sid = server_id()
local status = 1
local all = redis.pcall('HGETALL', key)
if all['err'] then redis.call('DEL', key); all = {} end
local fields, others = {}, {}
for i = 1, #all, 2 do fields[all[i]] = all[i + 1] end
for name, value in pairs(fields) do
  if string.sub(name, 1, 2) == 'w:' and name ~= mine then
    local ends = tonumber(string.match(value, '^(%d+)'))
    if ends and ends > now then others[name] = value end
  end
end
local own = fields[mine]
if not own or not string.match(own, '^%d+$') then
  status = 2
elseif tonumber(own) <= now then
  status = 6
elseif tonumber(fields['w']) ~= tonumber(ARGV[2]) then
  status = 3
elseif next(others) ~= nil then
  status = 4
elseif sid ~= ARGV[3] then
  status = 2
elseif KEYS[2] and ARGV[4] ~= '' and redis.call('HGET', KEYS[2], 'i') ~= ARGV[4] then
  status = 5
elseif ARGV[6] == '' then
  status = 7
end
redis.call('DEL', key)
local settle, keep = tonumber(ARGV[8]), 0
if settle > 0 or status == 1 or next(others) ~= nil then
  redis.call('HSET', key, 'c', now, 'g', sid .. '/' .. ARGV[5])
  if settle > 0 then keep = now + 2 * settle end
end
if next(others) ~= nil then
  for name, value in pairs(others) do
    local ends = tonumber(string.match(value, '^(%d+)'))
    redis.call('HSET', key, name, ends .. ':x')
    keep = math.max(keep, ends)
  end
  redis.call('HSET', key, 'w', fields['w'] or 0)
end
local ttl = 0
if status == 1 then
  ttl = tonumber(ARGV[7])
  redis.call('HSET', key, 'e:' .. ARGV[9], ARGV[6], 'x:' .. ARGV[9], now + ttl)
  keep = math.max(keep, now + ttl)
end
if keep > now then redis.call('PEXPIRE', key, keep - now) end
return {status, ttl}
""",
)

SCRIPTS = (*SCRIPTS, REGISTER_INTENT, WRITE_THROUGH)
