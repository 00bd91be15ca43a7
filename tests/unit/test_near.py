"""The near cache's own rules: TTL, LRU bound, evictions, the race with writes."""

from __future__ import annotations

import time

import pytest

from ddbcache_hooks.near import NearCache, decode_message, encode_message


@pytest.fixture
def near() -> NearCache:
    cache = NearCache(max_items=3, ttl_ms=100)
    cache.online = True
    return cache


def test_entries_expire_after_ttl(near: NearCache) -> None:
    assert near.put("k", "", "t", b"v", near.epoch())
    assert near.get("k", "") == b"v"
    time.sleep(0.12)
    assert near.get("k", "") is None and len(near) == 0


def test_bounded_by_max_items_least_recently_used_first(near: NearCache) -> None:
    for name in "abcd":
        near.put(name, "", "t", name.encode(), near.epoch())
    assert len(near) == 3 and near.get("a", "") is None
    near.get("b", "")  # b is now the most recently used
    near.put("e", "", "t", b"e", near.epoch())
    assert near.get("c", "") is None and near.get("b", "") == b"b"


def test_evicting_an_item_drops_every_variant_and_a_table_every_item(near: NearCache) -> None:
    near.put("k", "a", "t1", b"1", near.epoch())
    near.put("k", "b", "t1", b"2", near.epoch())
    near.put("other", "", "t2", b"3", near.epoch())
    near.evict(keys=["k"])
    assert near.get("k", "a") is None and near.get("k", "b") is None
    assert near.get("other", "") == b"3"
    near.evict(table_keys=["t2"])
    assert near.get("other", "") is None


def test_a_lookup_that_raced_an_eviction_cannot_park_its_entry(near: NearCache) -> None:
    since = near.epoch()  # a reader starts its Redis lookup...
    near.evict(keys=["k"])  # ...a write evicts the item meanwhile...
    assert not near.put("k", "", "t", b"old", since)  # ...so the old value is not kept
    assert near.put("k", "", "t", b"new", near.epoch())
    since = near.epoch()
    near.evict(table_keys=["t"])
    assert not near.put("k2", "", "t", b"old", since)


def test_forgotten_evictions_raise_the_floor() -> None:
    near = NearCache(max_items=1, ttl_ms=1000)
    near.online = True
    since = near.epoch()
    for name in "abcdef":  # more evictions than it remembers
        near.evict(keys=[name])
    assert not near.put("a", "", "t", b"old", since)


def test_nothing_is_cached_while_offline(near: NearCache) -> None:
    near.online = False
    assert not near.put("k", "", "t", b"v", near.epoch())
    near.online = True
    near.put("k", "", "t", b"v", near.epoch())
    near.clear()
    assert near.get("k", "") is None


def test_messages_round_trip() -> None:
    assert decode_message(encode_message(["CC:i:{a}:t"], ["CC:t:{t}"]).encode()) == (
        ["CC:i:{a}:t"],
        ["CC:t:{t}"],
    )
    assert decode_message(b"garbage\nx y") == ([], [])


@pytest.mark.parametrize("bad", [{"max_items": 0}, {"ttl_ms": -1}, {"ttl_ms": 1.5}])
def test_bad_settings(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="NearCache"):
        NearCache(**bad)  # type: ignore[arg-type]
