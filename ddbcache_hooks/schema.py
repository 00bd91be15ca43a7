"""Table key schemas: what a PutItem-style write needs to find the item's key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

GSI = "GlobalSecondaryIndexes"
LSI = "LocalSecondaryIndexes"


@dataclass(frozen=True)
class TableSchema:
    """Primary key attribute names (hash[, range]) and, when known, index names.

    A schema learned with DescribeTable is tied to the ``generation`` the table
    had in Redis when it was learned: table lifecycle operations made through
    registered clients replace it (and a token hash Redis lost comes back with
    a new one), and a schema of another generation is never used.
    """

    key: tuple[str, ...]
    global_indexes: frozenset[str] = frozenset()
    local_indexes: frozenset[str] = frozenset()
    described: bool = False
    generation: bytes = b""

    def project(self, attrs: Mapping[str, Any]) -> dict[str, Any] | None:
        """The primary key inside ``attrs`` (an item, or PartiQL equalities), if all there."""
        try:
            return {name: attrs[name] for name in self.key}
        except KeyError:
            return None

    def index_kind(self, index: str) -> str | None:
        if index in self.local_indexes:
            return LSI
        if index in self.global_indexes:
            return GSI
        return None

    def encode(self) -> bytes:
        data = [
            list(self.key),
            sorted(self.global_indexes),
            sorted(self.local_indexes),
            self.generation,
        ]
        return bytes(msgpack.packb(data, use_bin_type=True))

    @classmethod
    def decode(cls, blob: bytes) -> TableSchema | None:
        try:
            key, gsi, lsi, *rest = msgpack.unpackb(blob, raw=False)
            if not 1 <= len(key) <= 2 or not all(isinstance(k, str) for k in key):
                return None
            generation = rest[0] if rest and isinstance(rest[0], bytes) else b""
            return cls(tuple(key), frozenset(gsi), frozenset(lsi), True, generation)
        except Exception:  # untrusted bytes from Redis: any failure means "unknown"
            return None


def from_description(response: Mapping[str, Any]) -> TableSchema:
    """Build a schema from a DescribeTable response."""
    table = response["Table"]
    names = {k["KeyType"]: k["AttributeName"] for k in table["KeySchema"]}
    key = (names["HASH"], names["RANGE"]) if "RANGE" in names else (names["HASH"],)
    return TableSchema(
        key,
        frozenset(i["IndexName"] for i in table.get("GlobalSecondaryIndexes") or ()),
        frozenset(i["IndexName"] for i in table.get("LocalSecondaryIndexes") or ()),
        described=True,
    )
