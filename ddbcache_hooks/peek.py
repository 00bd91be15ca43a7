"""What the cache holds for one item: :meth:`Registration.peek` (reads only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .codec import CorruptEntry, ForeignEntry
from .effects import Call, Op, RedisBatch
from .keys import TableRef
from .plan import Slot
from .protocol import Protocol, bulk_loading


@dataclass(frozen=True)
class Peek:
    """What a GetItem of one key (and projection) would find in the cache now.

    Read with plain commands: looking changes nothing (no lease, no LRU, no
    admission count). A lookup also discards entries another Redis server
    made (after a restart or failover); a peek does not tell those apart.
    """

    table: TableRef
    """Where the table lives (Region or endpoint, account, name)."""
    cached: bool
    """Whether the registration caches GetItem on this table at all."""
    present: bool
    """Whether a read now would be a hit (a valid, unexpired entry)."""
    item: dict[str, Any] | None = None
    """The cached item (low-level AttributeValues) of a hit; None for an absent one."""
    negative: bool = False
    """A hit that says the item does not exist."""
    age_s: float | None = None
    """Seconds since the entry was filled (also for an expired one)."""
    ttl_s: float | None = None
    """Seconds until the entry expires (present entries only)."""
    grace_s: float | None = None
    """An expired entry kept for stale-if-error: seconds its grace still lasts."""
    leased: bool = False
    """A caller is filling (or refreshing) this entry now."""
    settling: bool = False
    """Inside the settle window of the item's last invalidation (fills get a short TTL)."""
    variants: int = 0
    """Entries held for this item, one per projection or other variant."""
    size: int = 0
    """Bytes of this variant's entry in Redis (0: none)."""
    near: bool = False
    """This process's near cache holds this variant."""


def _ms(value: Any) -> int | None:
    """A time or TTL field the scripts wrote (decimal ms); None when absent."""
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def read(protocol: Protocol, slot: Slot) -> Op[Peek]:
    """What a lookup of ``slot`` would find: plain reads, one round trip, nothing changed."""
    f = slot.field
    names, fields, tokens, clock = yield RedisBatch(
        [
            Call(None, ("HKEYS", slot.key)),
            Call(
                None,
                ("HMGET", slot.key, *(p + f for p in ("e:", "x:", "l:", "m:", "s:")), "g", "c"),
            ),
            Call(None, ("HMGET", slot.token_key, "i")),
            Call(None, ("TIME",), route=slot.key if protocol.cluster else ""),
        ],
        errors_as_values=True,
    )
    now = int(clock[0]) * 1000 + int(clock[1]) // 1000
    if not isinstance(fields, list):  # another Redis type: a lookup would delete it
        return Peek(slot.table, cached=True, present=False)
    blob, expires, lease, lease_end, grace_end, generation, since = fields
    slot.generation = generation or b""  # signatures cover it
    near = protocol.near is not None and protocol.near.holds(slot.key, slot.field)
    held = [n for n in names if n.startswith(b"e:")] if isinstance(names, list) else []
    entry = None
    if blob:
        try:
            entry = protocol.codec.decode(blob, context=protocol._context(slot))
        except (ForeignEntry, CorruptEntry):
            entry = None
    token = tokens[0] if isinstance(tokens, list) else None
    valid = entry is not None and entry.token == token and not bulk_loading(token or b"")
    expiry, grace_end_ms = _ms(expires), _ms(grace_end)
    present = valid and expiry is not None and expiry > now
    payload = entry.payload if entry is not None and present else {}
    return Peek(
        slot.table,
        cached=True,
        present=present,
        item=payload.get("Item"),
        negative=present and "Item" not in payload,
        age_s=(now - entry.created_ms) / 1000 if entry is not None else None,
        ttl_s=(expiry - now) / 1000 if present and expiry is not None else None,
        grace_s=(grace_end_ms - now) / 1000
        if valid and not present and grace_end_ms is not None and grace_end_ms > now
        else None,
        leased=bool(lease) and (_ms(lease_end) or 0) > now,
        settling=since is not None and (_ms(since) or 0) + protocol.settings.settle_ms > now,
        variants=len(held),
        size=len(blob or b""),
        near=near,
    )
