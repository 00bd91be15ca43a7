"""The Lua scripts, driven directly, against every backend."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ddbcache_hooks import store
from ddbcache_hooks.effects import Op
from ddbcache_hooks.handlers import drive
from ddbcache_hooks.scripts import FillStatus, LookupStatus
from ddbcache_hooks.store import FillRequest, LookupRequest
from ddbcache_hooks.transport import SyncTransport, node_lookup


@pytest.fixture(params=[False, True], ids=["bytes", "decoded"])
def transport(backend: Any, request: pytest.FixtureRequest) -> SyncTransport:
    return SyncTransport(backend.client(decode_responses=request.param))


@pytest.fixture
def key(namespace: str) -> str:
    return f"{namespace}:i:{{item}}:t"


def run(transport: SyncTransport, op: Op[Any]) -> Any:
    return drive(op, transport, lambda table: None)


TOKENS = "tok:{t}"


def lookup(transport: SyncTransport, key: str, lease: str, **kw: Any) -> store.LookupReply:
    request = LookupRequest(key, "v", TOKENS, lease, kw.pop("lease_ms", 5000), **kw)
    replies = run(transport, store.lookup([request], 1000, cluster=transport.cluster))
    reply: store.LookupReply = replies[0]
    return reply


def fill(
    transport: SyncTransport,
    key: str,
    lease: str,
    entry: bytes,
    ttl_ms: int = 60_000,
    settle_ms: int = 0,
) -> tuple[int, int]:
    result: tuple[int, int] = run(
        transport, store.fill([FillRequest(key, "v", lease, entry, ttl_ms, settle_ms)])
    )[0]
    return result


def test_miss_lease_fill_hit(transport: SyncTransport, key: str) -> None:
    assert lookup(transport, key, "L1").status == LookupStatus.LEASED
    assert lookup(transport, key, "L2").status == LookupStatus.WAIT  # someone else fills
    assert lookup(transport, key, "L1").status == LookupStatus.LEASED  # idempotent for the holder
    assert fill(transport, key, "L1", b"\x00\xffentry")[0] == FillStatus.STORED
    hit = lookup(transport, key, "L3")
    assert hit.status == LookupStatus.HIT and hit.entry == b"\x00\xffentry"


def test_write_between_lookup_and_fill_discards_the_fill(
    transport: SyncTransport, key: str
) -> None:
    assert lookup(transport, key, "L1").status == LookupStatus.LEASED
    run(transport, store.invalidate([key], settle_ms=0, cluster=transport.cluster))
    assert fill(transport, key, "L1", b"old")[0] == FillStatus.LOST
    assert lookup(transport, key, "L2").status == LookupStatus.LEASED


def test_settle_window_caps_the_ttl(transport: SyncTransport, key: str) -> None:
    run(transport, store.invalidate([key], settle_ms=300, cluster=transport.cluster))
    lookup(transport, key, "L1")
    stored, ttl = fill(transport, key, "L1", b"maybe-stale", ttl_ms=60_000, settle_ms=300)
    assert stored == FillStatus.STORED and 0 < ttl <= 300
    time.sleep(0.35)
    assert lookup(transport, key, "L2").status == LookupStatus.LEASED


def test_expired_variant_is_a_miss_even_if_the_key_lives(
    transport: SyncTransport, key: str
) -> None:
    lookup(transport, key, "L1")
    fill(transport, key, "L1", b"short", ttl_ms=100)
    run(
        transport,
        store.lookup(
            [LookupRequest(key, "w", TOKENS, "Lw", 5000)], 1000, cluster=transport.cluster
        ),
    )
    run(transport, store.fill([FillRequest(key, "w", "Lw", b"long", 60_000)]))
    time.sleep(0.15)
    assert lookup(transport, key, "L2").status == LookupStatus.LEASED


def test_lost_lease_expires(transport: SyncTransport, key: str) -> None:
    assert lookup(transport, key, "L1", lease_ms=100).status == LookupStatus.LEASED
    time.sleep(0.15)
    assert lookup(transport, key, "L2").status == LookupStatus.LEASED


def test_release_without_storing(transport: SyncTransport, key: str) -> None:
    lookup(transport, key, "L1")
    assert fill(transport, key, "L1", b"")[0] == FillStatus.RELEASED
    assert lookup(transport, key, "L2").status == LookupStatus.LEASED


def test_admission_counts_identical_misses(transport: SyncTransport, key: str) -> None:
    first = lookup(transport, key, "L1", admission=2, admission_window_ms=10_000)
    assert first.status == LookupStatus.NOT_ADMITTED
    second = lookup(transport, key, "L2", admission=2, admission_window_ms=10_000)
    assert second.status == LookupStatus.LEASED
    fill(transport, key, "L2", b"page")
    assert (
        lookup(transport, key, "L3", admission=2, admission_window_ms=10_000).status
        == LookupStatus.HIT
    )


def test_wrong_type_at_the_key_is_deleted_and_reported(
    transport: SyncTransport, key: str, backend: Any
) -> None:
    raw = backend.client()
    raw.set(key, "someone wrote a string here")
    reply = lookup(transport, key, "L1")
    assert reply.corrupt and reply.status == LookupStatus.LEASED
    assert raw.type(key) in (b"hash", "hash")
    raw.delete(key)
    raw.rpush(key, "x")
    assert fill(transport, key, "L1", b"x")[0] == FillStatus.GARBAGE


def test_drop_discards_the_current_entry(transport: SyncTransport, key: str) -> None:
    lookup(transport, key, "L1")
    fill(transport, key, "L1", b"bad")
    assert lookup(transport, key, "L2", drop=True).status == LookupStatus.LEASED


def test_table_tokens_are_created_and_replaced(transport: SyncTransport, namespace: str) -> None:
    tokens_key = f"{namespace}:t:{{t}}"

    def tokens() -> tuple[bytes, bytes]:
        request = LookupRequest(f"{namespace}:i:{{x}}:t", "", tokens_key, "L", 1000)
        (reply,) = run(transport, store.lookup([request], 60_000, cluster=transport.cluster))
        return reply.item_token, reply.query_token

    first = tokens()
    assert tokens() == first and first[0] != first[1]
    run(transport, store.invalidate([], 0, [(tokens_key, False)], 60_000, transport.cluster))
    queries_only = tokens()
    assert queries_only[0] == first[0] and queries_only[1] != first[1]
    run(transport, store.invalidate([], 0, [(tokens_key, True)], 60_000, transport.cluster))
    both = tokens()
    assert both[0] != first[0] and both[1] != queries_only[1]


def test_every_key_written_has_a_ttl(
    transport: SyncTransport, namespace: str, backend: Any
) -> None:
    keys = [f"{namespace}:i:{{item{i}}}:t" for i in range(5)]
    for i, k in enumerate(keys):
        lookup(transport, k, f"L{i}", admission=3, admission_window_ms=10_000)
        lookup(transport, k, f"L{i}", admission=3, admission_window_ms=10_000)
        lookup(transport, k, f"L{i}", admission=3, admission_window_ms=10_000)
        fill(transport, k, f"L{i}", b"e")
    run(
        transport,
        store.invalidate(
            keys[:2], 1000, [(f"{namespace}:t:{{t}}", True)], 60_000, transport.cluster
        ),
    )
    raw = backend.client()
    for k in [*keys, f"{namespace}:t:{{t}}"]:
        assert raw.pttl(k) > 0, k


def test_invalidating_many_items_across_slots(transport: SyncTransport, namespace: str) -> None:
    keys = [f"{namespace}:i:{{item{i}}}:t" for i in range(50)]  # spread over the cluster
    for k in keys:
        lookup(transport, k, "L")
        fill(transport, k, "L", b"e")
    run(transport, store.invalidate(keys, 0, cluster=transport.cluster))
    assert all(lookup(transport, k, "M").status == LookupStatus.LEASED for k in keys)


def test_scripts_are_reloaded_after_a_script_flush(
    transport: SyncTransport, key: str, backend: Any
) -> None:
    transport.client.script_flush()  # on a cluster: every node
    keys = [key.replace("{item}", f"{{item{i}}}") for i in range(20)]  # on every cluster node
    assert all(lookup(transport, k, "L1").status == LookupStatus.LEASED for k in keys)


def test_partition_tokens_expire_are_replaced_by_writes_and_bound_fills(
    transport: SyncTransport, namespace: str
) -> None:
    page = f"{namespace}:q:{{page}}:t"
    partition = f"{namespace}:p:{{part}}:t"  # another slot than the page's on a cluster

    def look(lease: str) -> store.LookupReply:
        request = LookupRequest(page, "", TOKENS, lease, 5000, partition_key=partition)
        replies = run(transport, store.lookup([request], 60_000, cluster=transport.cluster))
        reply: store.LookupReply = replies[0]
        return reply

    first = look("L1")
    assert first.partition_token
    assert 0 < transport.client.pttl(partition) <= 60_000  # every key has a TTL
    assert look("L2").partition_token == first.partition_token  # stable until a write
    run(transport, store.fill([FillRequest(page, "", "L1", b"", 0)]))  # release
    run(transport, store.invalidate([partition], 300, cluster=transport.cluster))
    second = look("L3")
    assert second.partition_token not in (b"", first.partition_token)
    assert second.partition_since_ms > 0  # the write
    assert 0 < transport.client.pttl(partition) <= 60_000
    fill_request = FillRequest(page, "", "L3", b"page", 60_000, 300, second.partition_since_ms)
    outcome, ttl = run(transport, store.fill([fill_request]))[0]
    assert outcome == FillStatus.STORED and 0 < ttl <= 300  # cut to the settle window
    # Without a settle window (strict reads) the partition's history does not cut it.
    again = LookupRequest(page, "", TOKENS, "L4", 5000, drop=True, partition_key=partition)
    third = run(transport, store.lookup([again], 60_000, cluster=transport.cluster))[0]
    assert third.status == LookupStatus.LEASED
    unbounded = FillRequest(page, "", "L4", b"page", 60_000, 0, third.partition_since_ms)
    assert run(transport, store.fill([unbounded]))[0] == (FillStatus.STORED, 60_000)


def test_a_partition_hash_another_server_made_is_replaced_and_bounds_fills(
    transport: SyncTransport, namespace: str
) -> None:
    """After a restart or failover an old partition token must not validate old pages."""
    page = f"{namespace}:q:{{page}}:t"
    partition = f"{namespace}:p:{{part}}:t"
    request = LookupRequest(page, "", TOKENS, "L1", 5000, partition_key=partition)
    first = run(transport, store.lookup([request], 60_000, cluster=transport.cluster))[0]
    run(transport, store.fill([FillRequest(page, "", "L1", b"", 0)]))
    # As a snapshot from another server (another replication id) would leave it.
    transport.client.hset(partition, mapping={"g": "0123456789abcdef/x", "c": 0})
    request = request._replace(lease_token="L2")
    second = run(transport, store.lookup([request], 60_000, cluster=transport.cluster))[0]
    assert second.partition_token not in (b"", first.partition_token)
    assert second.partition_since_ms > 0  # its history starts now: fills stay in the window
    fill_request = FillRequest(page, "", "L2", b"page", 60_000, 300, second.partition_since_ms)
    outcome, ttl = run(transport, store.fill([fill_request]))[0]
    assert outcome == FillStatus.STORED and 0 < ttl <= 300


def test_a_token_hash_another_server_made_gets_a_new_generation_and_keeps_a_bulk_mark(
    transport: SyncTransport, namespace: str, backend: Any
) -> None:
    tokens_key, schema_key = f"{namespace}:t:{{t}}", f"{namespace}:k:{{t}}"
    raw = backend.client()

    def generation() -> bytes:
        found: bytes = run(transport, store.read_schema(tokens_key, schema_key, 60_000))[0]
        return found

    def tokens() -> tuple[bytes, bytes]:
        request = LookupRequest(f"{namespace}:i:{{x}}:t", "", tokens_key, "L", 1000)
        (reply,) = run(transport, store.lookup([request], 60_000, cluster=transport.cluster))
        return reply.item_token, reply.query_token

    first = generation()
    assert generation() == first
    mark = store.Lifecycle(schema_key, forget_schema=False, mark="B99999999999999:", ttl_ms=60_000)
    run(
        transport,
        store.invalidate([], 0, (), 60_000, transport.cluster, lifecycle=[(tokens_key, mark)]),
    )
    assert generation() == first  # a bulk load keeps the generation
    marked = tokens()
    raw.hset(tokens_key, "n", "another-server")  # what a restart or a failover leaves
    renewed = generation()
    assert renewed != first
    after = tokens()
    assert after != marked and all(t.startswith(b"B99999999999999:") for t in after)
    raw.hset(tokens_key, "n", "another-server")
    run(transport, store.invalidate([], 0, [(tokens_key, False)], 60_000, transport.cluster))
    assert raw.hget(tokens_key, "g") is None  # replaced tokens: no generation of the other's
    assert generation() not in (first, renewed)


def hit_read(transport: SyncTransport, key: str, **kw: Any) -> store.LookupReply | None:
    """What the read-only hit script finds for ``key`` (None: the lookup script decides)."""
    request = LookupRequest(key, "v", TOKENS, "unused", 5000, **kw)
    (reply,) = run(transport, store.read_hits([request], transport.cluster))
    return reply  # type: ignore[no-any-return]


def test_the_hit_read_serves_exactly_the_lookup_scripts_hits(
    transport: SyncTransport, key: str
) -> None:
    assert hit_read(transport, key) is None  # nothing there
    assert lookup(transport, key, "L1").status == LookupStatus.LEASED
    assert hit_read(transport, key) is None  # a lease is not a hit
    fill(transport, key, "L1", b"\x00\n\xffentry\n")
    scripted = lookup(transport, key, "L2")
    read = hit_read(transport, key)
    assert scripted.status == LookupStatus.HIT and read is not None
    # The same reply as the lookup script's, but for the server's clock.
    assert read._replace(server_ms=0) == scripted._replace(server_ms=0)
    assert read.entry == b"\x00\n\xffentry\n"
    assert hit_read(transport, key, drop=True) is None  # a drop is the lookup script's


def test_the_hit_read_changes_nothing_and_leaves_repairs_to_the_lookup(
    transport: SyncTransport, backend: Any, key: str
) -> None:
    raw = backend.client()
    raw.set(key, "not a hash")
    assert hit_read(transport, key) is None
    assert raw.type(key) in (b"string", "string")  # untouched: the lookup script repairs
    assert lookup(transport, key, "L1").corrupt  # which it does
    fill(transport, key, "L1", b"entry")
    assert hit_read(transport, key) is not None
    generation = raw.hget(key, "g")
    raw.hset(key, "g", "another-server/1")  # state another server made
    assert hit_read(transport, key) is None
    raw.hset(key, "g", generation)
    maker = raw.hget(TOKENS, "n")
    raw.hset(TOKENS, "n", "another-server")  # tokens another server made
    assert hit_read(transport, key) is None
    raw.hset(TOKENS, "n", maker)
    raw.hset(TOKENS, "q", "x" * 256)  # a malformed token
    assert hit_read(transport, key) is None
    assert lookup(transport, key, "L2").foreign_token  # the lookup script replaces it


def test_the_hit_read_leaves_an_expired_or_refreshable_entry_to_the_lookup(
    transport: SyncTransport, backend: Any, key: str
) -> None:
    lookup(transport, key, "L1")
    fill(transport, key, "L1", b"entry", ttl_ms=5000)
    assert hit_read(transport, key) is not None
    backend.client().hset(key, "d:v", 10_000)  # its fill cost 10 s: a refresh is due
    assert hit_read(transport, key, refresh_factor=1.0) is None
    assert hit_read(transport, key, refresh_factor=0.0) is not None
    # Expired (its expiry, in server ms, moved into the past; no sleep a loaded machine
    # could outlast the entry in before the checks above).
    backend.client().hset(key, "x:v", 1)
    assert hit_read(transport, key) is None


def test_the_hit_read_of_a_batch_is_one_round_trip(
    transport: SyncTransport, namespace: str
) -> None:
    keys = [f"{namespace}:i:{{item{i}}}:t" for i in range(5)]
    for i, key in enumerate(keys[:3]):
        lookup(transport, key, f"L{i}")
        fill(transport, key, f"L{i}", f"entry{i}".encode())
    requests = [LookupRequest(key, "v", TOKENS, "unused", 5000) for key in keys]
    op = store.read_hits(requests, transport.cluster)
    batch = next(op)
    # One node: the HMGETs of the five entries and their table's tokens, then one hit
    # script for the clock and identity; a cluster (without its node lookup): one hit
    # script per entry and one for the tokens, each on its node.
    names = [call.script.name if call.script else call.args[0] for call in batch.calls]
    if transport.cluster:
        assert names == ["read_hits"] * 6
    else:
        assert names == ["HMGET"] * 6 + ["read_hits"]
    replies = drive_rest(op, batch, transport)
    assert [r.entry if r else None for r in replies] == [
        b"entry0",
        b"entry1",
        b"entry2",
        None,
        None,
    ]


def drive_rest(op: Op[Any], batch: Any, transport: SyncTransport) -> Any:
    try:
        op.send(transport.execute(batch.calls))
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the hit read sent a second batch")


def test_a_batch_judges_its_entries_as_the_hit_script_does(
    transport: SyncTransport, backend: Any, namespace: str
) -> None:
    """A batch reads its entries with HMGET and checks them in Python: the same
    verdicts as the hit script and the lookup script, entry by entry."""
    raw = backend.client()
    keys = [f"{namespace}:i:{{judged{i}}}:t" for i in range(6)]
    for i, key in enumerate(keys):
        lookup(transport, key, f"L{i}")
        fill(transport, key, f"L{i}", f"entry{i}".encode(), ttl_ms=60_000)
    raw.hset(keys[1], "g", "another-server/1")  # another server's state
    raw.hset(keys[2], "x:v", "1")  # expired long ago
    raw.hset(keys[3], "x:v", "soon")  # not a number the scripts write
    raw.delete(keys[4])
    raw.set(keys[4], "a string")  # another type
    requests = [LookupRequest(key, "v", TOKENS, "unused", 5000) for key in keys]
    # On a cluster, both ways: one hit script per key, and HMGETs with one per node.
    ways = [None, node_lookup(transport)] if transport.cluster else [None]
    expected = [b"entry0", None, None, None, None, b"entry5"]
    for node_of in ways:
        replies = run(transport, store.read_hits(requests, transport.cluster, node_of))
        assert [r.entry if r else None for r in replies] == expected
        for key, reply in zip(keys, replies, strict=True):
            single = hit_read(transport, key)
            assert (single is None) == (reply is None), key
            assert single is None or single._replace(server_ms=0) == reply._replace(server_ms=0)
    raw.hset(keys[5], "d:v", 10_000_000)  # its fill cost: an early refresh is due
    refreshing = [r._replace(refresh_factor=1.0) for r in requests]
    for node_of in ways:
        replies = run(transport, store.read_hits(refreshing, transport.cluster, node_of))
        assert replies[0] is not None and replies[5] is None
    raw.hset(TOKENS, "n", "another-server")  # the tokens another server made: no hits
    for node_of in ways:
        assert run(transport, store.read_hits(requests, transport.cluster, node_of)) == [None] * 6


def test_a_cluster_batch_reads_each_nodes_clock_and_identity_once(
    redis_cluster: Any, namespace: str
) -> None:
    import redis.cluster

    host, port = redis_cluster.startup_nodes[0]
    transport = SyncTransport(redis.cluster.RedisCluster(host=host, port=port))
    keys = [f"{namespace}:i:{{spread{i}}}:t" for i in range(12)]  # over the three masters
    for i, key in enumerate(keys):
        lookup(transport, key, f"L{i}")
        fill(transport, key, f"L{i}", f"entry{i}".encode())
    node_of = node_lookup(transport)
    assert node_of is not None
    requests = [LookupRequest(key, "v", TOKENS, "unused", 5000) for key in keys]
    op = store.read_hits(requests, True, node_of)
    batch = next(op)
    names = [call.script.name if call.script else call.args[0] for call in batch.calls]
    nodes = {node_of(key) for key in [*keys, TOKENS]}
    assert names == ["HMGET"] * 13 + ["read_hits"] * len(nodes) and len(nodes) == 3
    replies = drive_rest(op, batch, transport)
    assert [r.entry for r in replies] == [f"entry{i}".encode() for i in range(12)]
