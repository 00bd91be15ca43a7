"""The protocol's key-schema steps (protocol.Protocol inherits them).

A table's key names come from the ``key_schema`` option, this process's memory,
Redis (signed, tied to the table's generation), then DescribeTable; see
docs/design.md, "Key schemas and table lifecycle in Redis".
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from . import store
from .effects import DescribeTable, Op
from .schema import TableSchema

log = logging.getLogger("ddbcache_hooks")

if TYPE_CHECKING:
    from .codec import Codec
    from .keys import KeyLayout, TableRef
    from .stats import LimitedLog, Stats


class SchemaSteps:
    """Where a table's key schema is read from, in order, and where it is kept."""

    # What the steps use of the protocol (set by protocol.Protocol.__init__).
    layout: KeyLayout
    codec: Codec
    stats: Stats
    limited: LimitedLog
    token_ttl_ms: int
    schema_ttl_s: int
    _configured: dict[str, TableSchema]
    _learned: dict[str, tuple[TableSchema, float, str]]

    def _known_schema(self, table: TableRef) -> TableSchema | None:
        return self._configured.get(table.name) or self._learned_schema(table)

    def key_schema(self, table: TableRef, api_name: str | None) -> Op[TableSchema | None]:
        """The table's key names: option, process memory, Redis, then DescribeTable.

        ``api_name`` is how the calling client names the table (None: it cannot).
        """
        known = self._known_schema(table)
        if known is not None:
            return known
        return (yield from self.describe(table, api_name))

    def _learned_schema(self, table: TableRef) -> TableSchema | None:
        learned = self._learned.get(self.layout.tokens(table))
        if learned is None or learned[1] <= time.monotonic():
            return None
        return learned[0]

    def describe(self, table: TableRef, api_name: str | None) -> Op[TableSchema | None]:
        """The table's schema with its indexes: process memory, Redis, then DescribeTable.

        A schema is used only while the table's generation in Redis is the one it
        was learned under, and never longer than the longest entry TTL. The copy in
        Redis is signed (with a signing key): one that does not verify is ignored.
        """
        known = self._learned_schema(table)
        if known is not None:
            return known
        tokens, where = self.layout.tokens(table), self.layout.schema(table)
        generation, blob = yield from store.read_schema(tokens, where, self.token_ttl_ms)
        if not generation:
            self.limited.warning(
                f"schema-refused:{tokens}",
                "Redis refused to record a generation for table %s (full?): its key schema "
                "is not learned, and writes to it drop every entry of the table",
                table.name,
            )
            return None
        stored = None
        if blob:
            data = self.codec.unseal(where, blob)
            if data is None:
                self.stats.incr("corrupt_entries")
                self.limited.warning(
                    f"schema:{tokens}", "ignored an unsigned or forged key schema at %s", where
                )
            else:
                stored = TableSchema.decode(data)
        schema = stored if stored is not None and stored.generation == generation else None
        if schema is None:
            if api_name is None:
                return None
            described = yield DescribeTable(api_name)
            if described is None:
                return None
            schema = dataclasses.replace(described, generation=generation)
            sealed = self.codec.seal(where, schema.encode())
            if not (yield from store.set_value(where, sealed, self.schema_ttl_s)):
                # Kept in this process only; other processes describe the table themselves.
                log.debug("Redis refused to store the key schema of %s", table.name)
        configured = self._configured.get(table.name)
        if configured is not None:  # keep the configured key names, learn the indexes
            schema = dataclasses.replace(schema, key=configured.key)
        self._learned[tokens] = (
            schema,
            time.monotonic() + self.schema_ttl_s,
            f"{table.name} ({table.place})",
        )
        return schema
