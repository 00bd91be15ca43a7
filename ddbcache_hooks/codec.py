"""The entry format: a small versioned header plus the msgpack'd response.

Layout (big-endian)::

    magic "D" | version | flags | created_ms (u64) | token length (u8) | token
    | payload (msgpack; compressed with zlib when flags & COMPRESSED, with zstd
      when flags & ZSTD)
    | when flags & SIGNED: key id (4 bytes) | HMAC-SHA256 over (context, all before it)

The context names where the entry is stored and the item's generation (a new
one with every invalidation), so a signed entry copied to another key, or back
after a write, does not verify. The key id tells entries signed with another
key (a namespace shared by registrations with different keys) from tampering.

msgpack keeps ``bytes`` and ``str`` apart, so binary attributes round-trip
exactly without base64, and decoding builds fresh objects every time (the
resource layer transforms a returned response in place).

Anything that does not decode — garbage, truncation, another version, a
failed signature, a zstd entry where no zstd is installed — raises
:class:`CorruptEntry`; callers treat it as a miss.

Compression (entries of ``compress_min_bytes`` or more) is zstd level 1 where
``compression.zstd`` (Python 3.14) or ``zstandard`` (the ``fast`` extra) is
available, else zlib level 1: zstd decodes a 1 MB page 5 to 8 times faster and makes
it smaller (docs/performance.md, "Codec"). Either kind is read whichever one a
process writes, so entries of older versions (zlib) still decode.
:meth:`Codec.seal` / :meth:`Codec.unseal` sign other values the same way (the
key schemas shared through Redis).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from typing import Any, NamedTuple

import msgpack

try:  # pragma: no cover - which one depends on the Python version and extras
    from compression import zstd as _zstd_module  # type: ignore[import-not-found]

    def _zstd_compress(data: bytes) -> bytes:
        return bytes(_zstd_module.compress(data, 1))

    _zstd_decompress: Any = _zstd_module.decompress
    _ZSTD_ERRORS: tuple[type[Exception], ...] = (_zstd_module.ZstdError,)
except ImportError:  # pragma: no cover
    try:
        import zstandard as _zstandard

        def _zstd_compress(data: bytes) -> bytes:
            return bytes(_zstandard.compress(data, 1))

        _zstd_decompress = _zstandard.decompress
        _ZSTD_ERRORS = (_zstandard.ZstdError,)
    except ImportError:
        _zstd_decompress = None
        _ZSTD_ERRORS = ()

#: zstd is available to this process (entries are written with it).
HAVE_ZSTD = _zstd_decompress is not None

MAGIC = b"D"
VERSION = 2
COMPRESSED = 0x01
SIGNED = 0x02
ZSTD = 0x04
_HEADER = struct.Struct(">cBBQB")
_KEY_ID_LEN = 4
_SIG_LEN = _KEY_ID_LEN + 32
MAX_TOKEN_BYTES = 255


class CorruptEntry(ValueError):
    """An entry that cannot be trusted; treat as a miss and delete it."""


class ForeignEntry(CorruptEntry):
    """Signed with another key, or unsigned where this codec signs."""


class Entry(NamedTuple):
    payload: dict[str, Any]
    token: bytes
    created_ms: int
    compressed: bool = False
    signed: bool = False


class Codec:
    """Encodes and decodes entries with the configured compression and signing."""

    __slots__ = ("_key", "compress_min_bytes", "key_id", "zstd")

    def __init__(
        self,
        *,
        compress_min_bytes: int = 16384,
        signing_key: bytes | None = None,
        zstd: bool | None = None,
    ):
        self.compress_min_bytes = compress_min_bytes
        #: Compress with zstd (default: where available), else zlib.
        self.zstd = HAVE_ZSTD if zstd is None else zstd and HAVE_ZSTD
        self._key = signing_key
        #: A fingerprint of the signing key, safe to show (b"" without a key).
        self.key_id = b""
        if signing_key is not None:
            digest = hmac.new(signing_key, b"ddbcache-hooks key id", hashlib.sha256).digest()
            self.key_id = digest[:_KEY_ID_LEN]

    @property
    def signs(self) -> bool:
        return self._key is not None

    def encode(
        self, payload: dict[str, Any], *, token: bytes, created_ms: int, context: str
    ) -> bytes:
        body: bytes = msgpack.packb(payload, use_bin_type=True)
        flags = 0
        if len(body) >= self.compress_min_bytes:
            if self.zstd:
                body = _zstd_compress(body)
                flags |= ZSTD
            else:
                body = zlib.compress(body, 1)
                flags |= COMPRESSED
        if self._key is not None:
            flags |= SIGNED
        if len(token) > MAX_TOKEN_BYTES:
            raise CorruptEntry(f"a table token of {len(token)} bytes is not one of ours")
        header = _HEADER.pack(MAGIC, VERSION, flags, created_ms, len(token)) + token
        if self._key is None:
            return header + body
        return self.seal(context, header + body)

    def decode(self, blob: bytes, *, context: str | None) -> Entry:
        """Decode (and verify) an entry; ``context=None`` skips verification.

        Only for a blob this process verified itself before (the near cache).
        """
        try:
            magic, version, flags, created_ms, token_len = _HEADER.unpack_from(blob)
        except struct.error:
            raise CorruptEntry("truncated header") from None
        if magic != MAGIC or version != VERSION:
            raise CorruptEntry(f"unknown entry format {magic!r} v{version}")
        start = _HEADER.size + token_len
        end = len(blob)
        if self._key is not None and context is not None:
            if not flags & SIGNED:
                raise ForeignEntry("unsigned entry while signing is required")
            end -= _SIG_LEN
            if end < start or self.unseal(context, blob) is None:
                key_id = blob[end : end + _KEY_ID_LEN]
                if end >= start and key_id != self.key_id:
                    raise ForeignEntry("signature made with another key")
                raise CorruptEntry("signature does not verify")
        elif flags & SIGNED:
            end -= _SIG_LEN  # signed by a writer with a key; readable, but unverified
        if end < start:
            raise CorruptEntry("truncated entry")
        body = blob[start:end]
        try:
            token = blob[_HEADER.size : start]
            if flags & ZSTD:
                if _zstd_decompress is None:
                    raise CorruptEntry("a zstd entry, and no zstd installed here")
                body = _zstd_decompress(body)
            elif flags & COMPRESSED:
                body = zlib.decompress(body)
            payload = msgpack.unpackb(body, raw=False)
        except CorruptEntry:
            raise
        except (ValueError, zlib.error, msgpack.UnpackException, *_ZSTD_ERRORS) as exc:
            raise CorruptEntry(f"payload does not decode: {exc}") from None
        if not isinstance(payload, dict):
            raise CorruptEntry("payload is not a map")
        return Entry(
            payload, token, created_ms, bool(flags & (COMPRESSED | ZSTD)), bool(flags & SIGNED)
        )

    def seal(self, context: str, data: bytes) -> bytes:
        """``data`` with this key's id and a signature over (context, data) appended."""
        if self._key is None:
            return data
        data += self.key_id
        return data + self._sign(context, data)

    def unseal(self, context: str, blob: bytes) -> bytes | None:
        """What :meth:`seal` was given, or None when the signature does not verify."""
        if self._key is None:
            return blob
        end = len(blob) - 32
        if end < _KEY_ID_LEN or not hmac.compare_digest(
            blob[end:], self._sign(context, blob[:end])
        ):
            return None
        return blob[: end - _KEY_ID_LEN]

    def _sign(self, context: str, data: bytes) -> bytes:
        assert self._key is not None
        mac = hmac.new(self._key, context.encode("utf-8", "surrogatepass"), hashlib.sha256)
        mac.update(b"\x00")
        mac.update(data)
        return mac.digest()
