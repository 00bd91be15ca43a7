"""``ddbcache doctor``'s checks of a Redis: what the server is, and one real cache cycle.

The cycle runs the library's own protocol steps and transport (no command
written by hand) on a scratch table of the namespace: lookup and lease, fill,
hit (one read-only script, one round trip), an item invalidation, a miss, a table
drop; the near cache's subscription, the counters' flush and a streams
checkpoint when asked. The scratch keys are deleted afterwards. Each step is a
callable returning what it saw, or raising (``cli.cmd_doctor`` prints a line).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import acl, layout_marker
from .config import Settings
from .connections import is_cluster
from .handlers import drive
from .keys import KeyLayout, Location
from .plan import Invalidation, ReadPlan, WritePlan
from .protocol import Protocol
from .scripts import READ_HITS
from .transport import SyncTransport

Step = tuple[str, Callable[[], str]]
HERE = Location("aws", "doctor")

#: What each eviction policy means for this cache.
POLICIES = {
    "noeviction": "when memory is full, fills are refused (counted as redis_oom): misses "
    "are not cached, while hits and invalidations go on (what drops state needs no memory)",
    "allkeys-lru": "least recently used keys are evicted to make room: fine for a cache",
    "allkeys-lfu": "least frequently used keys are evicted to make room: fine for a cache",
    "allkeys-random": "random keys are evicted to make room: fine, hot entries may go too",
    "volatile-lru": "keys with a TTL (every key of this cache) are evicted, least recently "
    "used first: fine for a cache",
    "volatile-lfu": "keys with a TTL are evicted, least frequently used first: fine",
    "volatile-random": "keys with a TTL are evicted at random: fine",
    "volatile-ttl": "keys closest to expiry are evicted first (settle markers, then entries): fine",
}

# Which of the library's commands this user may run: redis.acl_check_cmd with two
# arguments, a key of the namespace (its channel for pub/sub), or fewer where the
# command takes none (COMMAND's next argument would be a subcommand). ARGV: the
# key, the channel, then the commands ('script|load').
_PERMISSIONS = """
local refused = {}
for i = 3, #ARGV do
  local arg = ARGV[1]
  if ARGV[i] == 'publish' or ARGV[i] == 'subscribe' then arg = ARGV[2] end
  for n = 2, 0, -1 do
    local parts = {}
    for p in string.gmatch(ARGV[i], '[^|]+') do table.insert(parts, p) end
    for j = 1, n do table.insert(parts, arg) end
    local ok, allowed = pcall(redis.acl_check_cmd, unpack(parts))
    if ok then
      if not allowed then table.insert(refused, ARGV[i]) end
      break
    end
  end
end
return refused
"""


def _info(client: Any, section: str) -> dict[str, Any]:
    """One node's INFO section (a cluster client answers per node: the first one)."""
    info: dict[str, Any] = client.info(section)
    if is_cluster(client) and info and all(isinstance(v, dict) for v in info.values()):
        info = next(iter(info.values()))
    return info


def server(client: Any) -> str:
    """Engine, version, mode and role."""
    info = _info(client, "server")
    engine = "Valkey" if "valkey_version" in info else "Redis"
    version = info.get("valkey_version") or info.get("redis_version")
    if is_cluster(client):
        return f"{engine} {version}, cluster mode with {len(client.get_primaries())} primaries"
    role = _info(client, "replication").get("role", "?")
    if role != "master":
        raise RuntimeError(
            f"{engine} {version} is a {role}, not a primary: the cache runs uncached there "
            "(point the URL at the primary endpoint)"
        )
    return f"{engine} {version}, standalone, role {role}"


def memory(client: Any) -> str:
    info = _info(client, "memory")
    limit = int(info.get("maxmemory", 0))
    policy = str(info.get("maxmemory_policy", "?"))
    used = int(info.get("used_memory", 0))
    size = f"{_size(used)} used of {_size(limit)}" if limit else f"{_size(used)} used, no limit"
    meaning = POLICIES.get(policy, "an eviction policy this check does not know")
    if not limit:
        meaning = "no maxmemory: the server grows until the machine runs out of memory"
    return f"{size}, maxmemory-policy {policy}: {meaning}"


def persistence(client: Any) -> str:
    info = _info(client, "persistence")
    aof = "AOF on" if str(info.get("aof_enabled", "0")) == "1" else "AOF off"
    saved = int(info.get("rdb_last_save_time", 0) or 0)
    changes = info.get("rdb_changes_since_last_save", "?")
    if not saved or str(info.get("rdb_saves", "")) == "0":  # rdb_saves: Redis 7 and later
        rdb = "no RDB snapshot since the server started"
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(saved))
        rdb = f"last RDB snapshot {when} UTC, {changes} changes since"
    return f"{aof}, {rdb} (a restart from an old snapshot starts the cache cold, safely)"


def layout(client: Any, settings: Settings) -> str:
    """The key layout this configuration uses, against the one the namespace's processes
    recorded (a cluster's ``cluster_buckets``, see layout_marker.py); nothing is written."""
    buckets = settings.cluster_buckets
    if not is_cluster(client):
        if buckets:
            raise ValueError(
                f"cluster_buckets={buckets} has no effect on a single node: unset "
                "DDBCACHE_CLUSTER_BUCKETS"
            )
        return "single node: every key on one server, a hit is one command"
    ours = (
        f"{buckets} buckets per table: a hit reads one node"
        if buckets
        else "entries spread by key: a GetItem hit reads two nodes (cluster_buckets makes it one)"
    )
    marker = KeyLayout(settings.namespace).marker()
    found = client.get(marker)
    if found is not None:
        layout_marker.check_recorded(found, buckets, marker)
        return f"{ours}; the namespace's processes use the same"
    return f"{ours}; no process of the namespace has recorded its layout yet"


def round_trip(client: Any, count: int = 5) -> str:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.ping()
        times.append((time.perf_counter() - started) * 1000)
    return f"median {statistics.median(times):.2f} ms over {count} PINGs (max {max(times):.2f})"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def permissions(client: Any, namespace: str, lacking: list[str]) -> str:
    """Whether this user may run every command the library sends (Redis 7's
    redis.acl_check_cmd); the ones it may not are added to ``lacking``."""
    key = f"{acl.key_pattern(namespace)[:-1]}doctor"
    names = acl.commands()
    script = client.register_script(_PERMISSIONS)
    try:
        refused = script(keys=[], args=[key, acl.channel(namespace), *names])
    except Exception as exc:
        if "acl_check_cmd" in str(exc):  # before Redis 7: the cycle below still tells
            return "not checked (the server has no redis.acl_check_cmd)"
        raise
    missing = [r.decode() if isinstance(r, bytes) else str(r) for r in refused]
    lacking.extend(missing)
    if missing:
        terms = " ".join(f"+{name}" for name in missing)
        raise PermissionError(
            f"this user may not run {', '.join(missing)}; allow with ACL SETUSER <user> {terms} "
            f"(the whole rule: {acl.setuser(namespace, '<user>', '<password>')})"
        )
    return f"the {len(names)} commands the library sends are allowed"


class Cycle:
    """One real cache cycle in scratch keys of the namespace (see the module docstring)."""

    def __init__(
        self, client: Any, settings: Settings, *, near: bool, metrics: bool, streams: bool
    ) -> None:
        self.client = client
        self.name = f"ddbcache-doctor-{uuid.uuid4().hex[:8]}"
        self.namespace = settings.namespace
        self.settings = dataclasses.replace(
            settings,
            key_schema={self.name: ("pk",)},
            include_tables=("*",),
            exclude_tables=(),
            tables={},
            near_cache=None,  # hits must come from Redis
            publish_invalidations=True,
            _table_cache={},
        )
        self.transport = SyncTransport(client)
        self.protocol = Protocol(self.settings, cluster=self.transport.cluster)
        (self.table,) = HERE.refs(self.name)
        self.key = {"pk": {"S": "probe"}}
        self._pubsub: Any = None
        self._near, self._metrics, self._streams = near, metrics, streams

    def steps(self) -> list[Step]:
        steps: list[Step] = []
        if self._near:
            steps.append(("near cache subscribe", self.subscribe))
        steps += [
            ("lookup -> lease -> fill", self.lookup_lease_fill),
            ("hit", self.hit),
            ("item invalidation -> miss", self.invalidate_item),
        ]
        if self._near:
            steps.append(("near cache message", self.hear))
        steps.append(("table drop -> miss", self.drop_table))
        if self._metrics:
            steps.append(("counters flush", self.flush_counters))
        if self._streams:
            steps.append(("streams checkpoint", self.checkpoint))
        return steps

    def _run(self, op: Any) -> Any:
        return drive(op, self.transport, lambda table: None)

    def _read(self) -> tuple[ReadPlan, dict[str, Any] | None]:
        plan = self.protocol.planner.plan(
            "GetItem", {"TableName": self.name, "Key": self.key}, HERE
        )
        assert isinstance(plan, ReadPlan)
        return plan, self._run(self.protocol.serve(plan))

    def _miss_and_fill(self) -> None:
        plan, response = self._read()
        if response is not None:
            raise AssertionError("expected a miss, the cache answered")
        fills = self.protocol.completed(
            plan, {"Item": {**self.key, "checked": {"S": "by ddbcache doctor"}}}, True
        )
        if not fills:
            raise AssertionError("the miss took no lease (another caller holds it?)")
        self._run(self.protocol.fill(fills))

    def lookup_lease_fill(self) -> str:
        self._miss_and_fill()
        return f"a miss leased and filled {self.name} (scratch table of the namespace)"

    def hit(self) -> str:
        sent: list[tuple[str, ...]] = []
        execute = self.transport.execute

        def recording(calls: Any, errors_as_values: bool = False) -> list[Any]:
            sent.append(tuple(c.script.name if c.script else c.args[0] for c in calls))
            return execute(calls, errors_as_values)

        self.transport.execute = recording  # type: ignore[method-assign]
        try:
            _, response = self._read()
        finally:
            del self.transport.execute
        if not response or "Item" not in response:
            raise AssertionError("the entry just filled was not served")
        if len(sent) != 1 or set(sent[0]) != {READ_HITS.name}:
            raise AssertionError(f"the hit sent {sent}, not one batch of {READ_HITS.name}")
        return f"served by the read-only hit script ({len(sent[0])} command(s), one round trip)"

    def invalidate_item(self) -> str:
        plan = self.protocol.planner.plan(
            "PutItem", {"TableName": self.name, "Item": self.key}, HERE
        )
        assert isinstance(plan, WritePlan)
        self._run(self.protocol.invalidate(plan, {}))
        self._miss_and_fill()
        return "the write dropped the entry; the next read missed (and filled again)"

    def drop_table(self) -> str:
        self.hit()
        token = self.protocol.layout.tokens(self.table)
        self._run(self.protocol.deliver(Invalidation(tables={token: True})))
        plan, response = self._read()
        self._run(self.protocol.release(plan))
        if response is not None:
            raise AssertionError("the table's tokens were replaced, yet the entry was served")
        return "replacing the table's tokens dropped its entries"

    def subscribe(self) -> str:
        self._pubsub = self.client.pubsub()
        self._pubsub.subscribe(self.protocol.channel)
        message = self._pubsub.get_message(timeout=2.0)
        if not message or message["type"] not in ("subscribe", b"subscribe"):
            raise AssertionError(f"no subscription confirmed on {self.protocol.channel}")
        return f"listening on {self.protocol.channel}"

    def hear(self) -> str:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            message = self._pubsub.get_message(timeout=0.5)
            if message and message["type"] in ("message", b"message"):
                return "the invalidation's message arrived"
        raise AssertionError(f"no message on {self.protocol.channel} after an invalidation")

    def flush_counters(self) -> str:
        from .metrics import Flusher

        flusher = Flusher(lambda: {"doctor_checks": 1}, self.client, self.namespace, 3600)
        try:
            flusher.flush()
            if not self.client.hgetall(flusher._key):
                raise AssertionError("the counters written were not found")
        finally:
            flusher.stop()
            self.client.unlink(flusher._key)
        return "counters written (as metrics_flush_s does) and read back (as ddbcache stats)"

    def checkpoint(self) -> str:
        from .streams import state

        keys = state.StreamKeys.of(self.namespace, f"arn:doctor:{self.name}")
        owner, shard = "doctor", "shardId-doctor"
        self._run(state.mark_started(keys, 60_000))
        self._run(state.lease_shards([(keys, [shard])], owner, 10_000, 60_000))
        written = self._run(state.checkpoint([(keys, [(shard, "42")])], owner, 10_000, 60_000))
        read = self._run(state.read_checkpoints([keys]))
        self._run(state.release([keys], owner, [[shard]]))
        if written != [[True]] or read[0].get(shard) != "42":
            raise AssertionError(f"checkpoint not kept (written {written}, read {read})")
        return "a shard leased, a checkpoint written and read back, the lease released"

    def clean_up(self) -> str:
        if self._pubsub is not None:
            self._pubsub.close()
        deleted = self.transport.scan_delete(f"{self.namespace}:*{self.name}*")
        return f"{deleted} scratch keys deleted"
