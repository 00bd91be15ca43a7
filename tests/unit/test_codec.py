"""The entry format: exact round trips, compression, signatures, corruption."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from ddbcache_hooks import codec as codec_module
from ddbcache_hooks.codec import COMPRESSED, ZSTD, Codec, CorruptEntry, ForeignEntry

PAYLOAD: dict[str, Any] = {
    "Item": {
        "pk": {"S": "a"},
        "bin": {"B": bytes(range(256))},
        "set": {"BS": [b"\x00", b"\xff"]},
        "n": {"N": "1.50"},
        "m": {"M": {"s": {"S": "\x00text"}, "l": {"L": [{"NULL": True}, {"BOOL": False}]}}},
    }
}


def encode(codec: Codec, payload: dict[str, Any] = PAYLOAD, context: str = "k") -> bytes:
    return codec.encode(payload, token=b"tok", created_ms=1_700_000_000_123, context=context)


def test_round_trip_is_exact() -> None:
    codec = Codec()
    entry = codec.decode(encode(codec), context="k")
    assert entry.payload == PAYLOAD
    assert entry.token == b"tok" and entry.created_ms == 1_700_000_000_123
    assert isinstance(entry.payload["Item"]["bin"]["B"], bytes)
    assert isinstance(entry.payload["Item"]["m"]["M"]["s"]["S"], str)


def test_each_decode_builds_fresh_objects() -> None:
    codec = Codec()
    blob = encode(codec)
    first = codec.decode(blob, context="k").payload
    first["Item"]["pk"]["S"] = "mutated"
    assert codec.decode(blob, context="k").payload == PAYLOAD


@pytest.mark.parametrize("zstd, flag", [(False, COMPRESSED), (True, ZSTD)])
def test_large_entries_are_compressed_and_flagged(zstd: bool, flag: int) -> None:
    codec = Codec(compress_min_bytes=100, zstd=zstd)
    big = {"Items": [{"pk": {"S": "x" * 50}} for _ in range(20)]}
    blob = encode(codec, big)
    assert blob[2] & (COMPRESSED | ZSTD) == flag
    assert len(blob) < len(encode(Codec(), big))
    assert codec.decode(blob, context="k").payload == big
    assert not encode(codec, {"Item": {}})[2] & (COMPRESSED | ZSTD)


def test_zstd_is_the_default_where_installed() -> None:
    assert codec_module.HAVE_ZSTD  # the dev extra installs zstandard
    assert encode(Codec(compress_min_bytes=10))[2] & ZSTD


def test_entries_of_the_previous_format_still_decode() -> None:
    """Before zstd, every compressed entry was zlib: a process writing zstd reads them."""
    old = Codec(compress_min_bytes=10, zstd=False)
    new = Codec(compress_min_bytes=10)
    blob = encode(old)
    assert blob[2] == COMPRESSED
    assert new.decode(blob, context="k").payload == PAYLOAD
    assert old.decode(encode(new), context="k").payload == PAYLOAD  # one release of the other


def test_a_zstd_entry_without_zstd_is_a_miss_not_an_error(monkeypatch: Any) -> None:
    blob = encode(Codec(compress_min_bytes=10))
    monkeypatch.setattr(codec_module, "_zstd_decompress", None)
    with pytest.raises(CorruptEntry, match="no zstd"):
        Codec().decode(blob, context="k")
    # What a release before zstd does with it: the body is no msgpack, a miss.
    unflagged = blob[:2] + bytes([blob[2] & ~ZSTD]) + blob[3:]
    with pytest.raises(CorruptEntry):
        Codec().decode(unflagged, context="k")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"",
        lambda b: b[:5],
        lambda b: b[:-3],
        lambda b: b"X" + b[1:],  # another magic
        lambda b: b[:1] + bytes([9]) + b[2:],  # another format version
        lambda b: b[:-1] + b"\xc1",  # invalid msgpack byte
        lambda b: b + b"extra",
        lambda b: b"garbage bytes that are not an entry",
        lambda b: b[:2] + bytes([COMPRESSED]) + b[3:],  # claims compression it lacks
    ],
)
def test_corrupt_entries_raise_corrupt_entry(mangle: Any) -> None:
    codec = Codec()
    with pytest.raises(CorruptEntry):
        codec.decode(mangle(encode(codec)), context="k")


def test_non_map_payload_is_corrupt() -> None:
    import msgpack

    codec = Codec()
    header = encode(codec)[:15]  # 12-byte header + the 3-byte token
    with pytest.raises(CorruptEntry, match="not a map"):
        codec.decode(header + msgpack.packb([1, 2, 3]), context="k")


def test_signed_entries_verify_key_context_and_payload() -> None:
    signer = Codec(signing_key=b"k" * 32)
    blob = encode(signer, context="CC:i:{x}:t\x00")
    assert signer.decode(blob, context="CC:i:{x}:t\x00").payload == PAYLOAD
    with pytest.raises(CorruptEntry, match="signature"):
        signer.decode(blob, context="CC:i:{y}:t\x00")  # moved to another key
    tampered = bytearray(blob)
    tampered[20] ^= 0x01
    with pytest.raises(CorruptEntry):
        signer.decode(bytes(tampered), context="CC:i:{x}:t\x00")
    with pytest.raises(CorruptEntry, match="signature"):
        Codec(signing_key=b"w" * 32).decode(blob, context="CC:i:{x}:t\x00")
    with pytest.raises(CorruptEntry, match="unsigned"):
        signer.decode(encode(Codec()), context="k")


def test_compressed_and_signed() -> None:
    codec = Codec(compress_min_bytes=10, signing_key=b"s" * 16, zstd=False)
    blob = encode(codec)
    assert codec.decode(blob, context="k").compressed
    body = blob[15:-36]
    assert zlib.decompress(body)


def test_another_key_is_told_from_tampering() -> None:
    signer, other = Codec(signing_key=b"k" * 32), Codec(signing_key=b"w" * 32)
    assert signer.key_id != other.key_id and len(signer.key_id) == 4 and not Codec().key_id
    with pytest.raises(ForeignEntry):
        signer.decode(encode(other), context="k")
    with pytest.raises(ForeignEntry):
        signer.decode(encode(Codec()), context="k")
    tampered = bytearray(encode(signer))
    tampered[20] ^= 0x01
    with pytest.raises(CorruptEntry) as raised:
        signer.decode(bytes(tampered), context="k")
    assert not isinstance(raised.value, ForeignEntry)
    entry = Codec().decode(encode(signer), context="k")  # readable without a key
    assert entry.signed and entry.payload == PAYLOAD


def test_near_cache_blobs_skip_verification() -> None:
    signer = Codec(signing_key=b"k" * 32)
    assert signer.decode(encode(signer, context="k"), context=None).payload == PAYLOAD


def test_seal_and_unseal() -> None:
    signer = Codec(signing_key=b"k" * 32)
    sealed = signer.seal("schema-key", b"data")
    assert signer.unseal("schema-key", sealed) == b"data"
    assert signer.unseal("other-key", sealed) is None
    assert signer.unseal("schema-key", b"data") is None
    assert Codec(signing_key=b"w" * 32).unseal("schema-key", sealed) is None
    assert Codec().seal("k", b"data") == b"data" and Codec().unseal("k", b"data") == b"data"


def test_a_token_the_header_cannot_hold_is_corrupt_not_struct_error() -> None:
    with pytest.raises(CorruptEntry, match="token"):
        Codec().encode(PAYLOAD, token=b"t" * 256, created_ms=0, context="")
    assert Codec().decode(
        Codec().encode(PAYLOAD, token=b"t" * 255, created_ms=0, context=""), context=""
    )
