"""What the cache holds for one item: :meth:`Registration.peek` (reads only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .keys import TableRef


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
