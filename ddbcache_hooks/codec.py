"""The entry format: a small versioned header plus the msgpack'd response.

Layout (big-endian)::

    magic "D" | version | flags | created_ms (u64) | token length (u8) | token
    | payload (msgpack, zlib-compressed when flags & COMPRESSED)
    | HMAC-SHA256 over (context, header, payload) when flags & SIGNED

msgpack keeps ``bytes`` and ``str`` apart, so binary attributes round-trip
exactly without base64, and decoding builds fresh objects every time (the
resource layer transforms a returned response in place).

Anything that does not decode — garbage, truncation, another version, a
failed signature — raises :class:`CorruptEntry`; callers treat it as a miss.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from typing import Any, NamedTuple

import msgpack

MAGIC = b"D"
VERSION = 1
COMPRESSED = 0x01
SIGNED = 0x02
_HEADER = struct.Struct(">cBBQB")
_SIG_LEN = 32


class CorruptEntry(ValueError):
    """An entry that cannot be trusted; treat as a miss and delete it."""


class Entry(NamedTuple):
    payload: dict[str, Any]
    token: bytes
    created_ms: int
    compressed: bool = False


class Codec:
    """Encodes and decodes entries with the configured compression and signing."""

    __slots__ = ("_key", "compress_min_bytes")

    def __init__(self, *, compress_min_bytes: int = 16384, signing_key: bytes | None = None):
        self.compress_min_bytes = compress_min_bytes
        self._key = signing_key

    @property
    def signs(self) -> bool:
        return self._key is not None

    def encode(
        self, payload: dict[str, Any], *, token: bytes, created_ms: int, context: str
    ) -> bytes:
        body: bytes = msgpack.packb(payload, use_bin_type=True)
        flags = 0
        if len(body) >= self.compress_min_bytes:
            body = zlib.compress(body, 1)
            flags |= COMPRESSED
        if self._key is not None:
            flags |= SIGNED
        header = _HEADER.pack(MAGIC, VERSION, flags, created_ms, len(token)) + token
        if self._key is None:
            return header + body
        return header + body + self._sign(context, header, body)

    def decode(self, blob: bytes, *, context: str) -> Entry:
        try:
            magic, version, flags, created_ms, token_len = _HEADER.unpack_from(blob)
        except struct.error:
            raise CorruptEntry("truncated header") from None
        if magic != MAGIC or version != VERSION:
            raise CorruptEntry(f"unknown entry format {magic!r} v{version}")
        start = _HEADER.size + token_len
        end = len(blob)
        if self._key is not None:
            if not flags & SIGNED:
                raise CorruptEntry("unsigned entry while signing is required")
            end -= _SIG_LEN
            if end < start or not hmac.compare_digest(
                blob[end:], self._sign(context, blob[:start], blob[start:end])
            ):
                raise CorruptEntry("signature does not verify")
        elif flags & SIGNED:
            end -= _SIG_LEN  # signed by a writer with a key; readable, but unverified
        if end < start:
            raise CorruptEntry("truncated entry")
        body = blob[start:end]
        try:
            token = blob[_HEADER.size : start]
            if flags & COMPRESSED:
                body = zlib.decompress(body)
            payload = msgpack.unpackb(body, raw=False)
        except (ValueError, zlib.error, msgpack.UnpackException) as exc:
            raise CorruptEntry(f"payload does not decode: {exc}") from None
        if not isinstance(payload, dict):
            raise CorruptEntry("payload is not a map")
        return Entry(payload, token, created_ms, bool(flags & COMPRESSED))

    def _sign(self, context: str, header: bytes, body: bytes) -> bytes:
        assert self._key is not None
        mac = hmac.new(self._key, context.encode("utf-8"), hashlib.sha256)
        mac.update(b"\x00")
        mac.update(header)
        mac.update(body)
        return mac.digest()
