"""The consumer's shared state in Redis: shard leases and checkpoints.

Per stream, three small hashes share one hash tag (the stream ARN), so one
script updates them together on one slot:

=====================  ==========================================================
key                    fields
=====================  ==========================================================
``<ns>:s:{arn}:c``     shard id -> last sequence number applied, or ``done``;
                       ``_started`` once a consumer began following the stream
``<ns>:s:{arn}:l``     shard id -> ``<owner> <lease end, server ms>``
``<ns>:s:{arn}:o``     consumer id -> its presence end (server ms)
=====================  ==========================================================

A consumer holds a shard while its lease is unexpired; it renews the lease every
round, takes free or expired shards up to its fair share (shards / live
consumers) and gives back what it holds beyond that. A checkpoint is written only
while the writer holds the shard's lease. Everything expires: a stream nobody
follows for ``state_ttl_ms`` starts afresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ..effects import Call, Op, RedisBatch
from ..scripts import _script

DONE = "done"
STARTED = "_started"

#: KEYS: checkpoints, leases, owners. ARGV: owner, lease ms, state ttl ms, shard ids…
#: Renews the owner's presence and leases, takes free or expired shards up to its
#: fair share and releases what it holds beyond it. Returns the shards it holds.
LEASE_SHARDS = _script(
    "lease_shards",
    """
local owner, lease_ms, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
redis.call('HSET', KEYS[3], owner, now + lease_ms)
local live = 0
local presence = redis.call('HGETALL', KEYS[3])
for i = 1, #presence, 2 do
  if tonumber(presence[i + 1]) < now then redis.call('HDEL', KEYS[3], presence[i])
  else live = live + 1 end
end
local shards = #ARGV - 3
local share = math.ceil(shards / math.max(live, 1))
local held, free = {}, {}
for i = 4, #ARGV do
  local lease = redis.call('HGET', KEYS[2], ARGV[i])
  local holder, ends = nil, 0
  if lease then
    local space = string.find(lease, ' ', 1, true)
    holder, ends = string.sub(lease, 1, space - 1), tonumber(string.sub(lease, space + 1))
  end
  if holder == owner and ends > now then table.insert(held, ARGV[i])
  elseif not holder or ends <= now then table.insert(free, ARGV[i]) end
end
for _, shard in ipairs(free) do
  if #held >= share then break end
  table.insert(held, shard)
end
local kept = {}
for i, shard in ipairs(held) do
  if i <= share then
    redis.call('HSET', KEYS[2], shard, owner .. ' ' .. (now + lease_ms))
    table.insert(kept, shard)
  else
    redis.call('HDEL', KEYS[2], shard)
  end
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
return kept
""",
)

#: KEYS: checkpoints, leases. ARGV: owner, lease ms, state ttl ms, then shard id and
#: checkpoint pairs. Writes each checkpoint whose lease the owner still holds
#: (renewing it); a ``done`` checkpoint also gives the lease back. Returns one
#: 1 (written) or 0 (lease lost) per pair.
CHECKPOINT_IF_LEASED = _script(
    "checkpoint_if_leased",
    """
local owner, lease_ms, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local written = {}
for i = 4, #ARGV, 2 do
  local shard, position = ARGV[i], ARGV[i + 1]
  local lease = redis.call('HGET', KEYS[2], shard)
  local ok = 0
  if lease then
    local space = string.find(lease, ' ', 1, true)
    local holder, ends = string.sub(lease, 1, space - 1), tonumber(string.sub(lease, space + 1))
    if holder == owner and ends > now then
      redis.call('HSET', KEYS[1], shard, position)
      if position == 'done' then redis.call('HDEL', KEYS[2], shard)
      else redis.call('HSET', KEYS[2], shard, owner .. ' ' .. (now + lease_ms)) end
      ok = 1
    end
  end
  table.insert(written, ok)
end
redis.call('PEXPIRE', KEYS[1], ttl)
return written
""",
)

#: KEYS: leases, owners. ARGV: owner, shard ids… Gives back the owner's leases.
RELEASE = _script(
    "release_shards",
    """
for i = 2, #ARGV do
  local lease = redis.call('HGET', KEYS[1], ARGV[i])
  if lease and string.sub(lease, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
""",
)

SCRIPTS = (LEASE_SHARDS, CHECKPOINT_IF_LEASED, RELEASE)


class StreamKeys(NamedTuple):
    checkpoints: str
    leases: str
    owners: str

    @classmethod
    def of(cls, namespace: str, stream_arn: str) -> StreamKeys:
        base = f"{namespace}:s:{{{stream_arn}}}"
        return cls(base + ":c", base + ":l", base + ":o")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_checkpoints(keys: Sequence[StreamKeys]) -> Op[list[dict[str, str]]]:
    """Every stream's checkpoints: one round trip."""
    replies = yield RedisBatch([Call(None, ("HGETALL", k.checkpoints)) for k in keys])
    return [{_text(f): _text(v) for f, v in dict(reply).items()} for reply in replies]


def lease_shards(
    requests: Sequence[tuple[StreamKeys, Sequence[str]]], owner: str, lease_ms: int, ttl_ms: int
) -> Op[list[list[str]]]:
    """Renew, take and give back leases (see LEASE_SHARDS): one round trip for every stream."""
    calls = [
        Call(LEASE_SHARDS, (*keys, owner, lease_ms, ttl_ms, *shards), 3)
        for keys, shards in requests
    ]
    replies = yield RedisBatch(calls)
    return [[_text(s) for s in reply] for reply in replies]


def checkpoint(
    requests: Sequence[tuple[StreamKeys, Sequence[tuple[str, str]]]],
    owner: str,
    lease_ms: int,
    ttl_ms: int,
) -> Op[list[list[bool]]]:
    """Write checkpoints where the owner still holds the lease: one round trip."""
    calls = [
        Call(
            CHECKPOINT_IF_LEASED,
            (
                keys.checkpoints,
                keys.leases,
                owner,
                lease_ms,
                ttl_ms,
                *(x for p in pairs for x in p),
            ),
            2,
        )
        for keys, pairs in requests
    ]
    replies = yield RedisBatch(calls)
    return [[bool(int(x)) for x in reply] for reply in replies]


def mark_started(keys: StreamKeys, ttl_ms: int) -> Op[None]:
    yield RedisBatch(
        [
            Call(None, ("HSET", keys.checkpoints, STARTED, "1")),
            Call(None, ("PEXPIRE", keys.checkpoints, ttl_ms)),
        ]
    )


def forget(keys: StreamKeys, shards: Sequence[str]) -> Op[None]:
    """Drop the checkpoints of shards the stream no longer holds."""
    yield RedisBatch([Call(None, ("HDEL", keys.checkpoints, *shards))])


def release(keys: Sequence[StreamKeys], owner: str, shards: Sequence[Sequence[str]]) -> Op[None]:
    calls = [
        Call(RELEASE, (k.leases, k.owners, owner, *s), 2) for k, s in zip(keys, shards, strict=True)
    ]
    if calls:
        yield RedisBatch(calls)
