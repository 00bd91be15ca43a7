"""Environment activation: caching for an application that is not changed at all.

The ``ddbcache_hooks.pth`` start-up hook imports this module only when a
``DDBCACHE_*`` variable is set, before the application runs. It then:

1. reports unknown ``DDBCACHE_*`` names (with the closest known one), a
   ``DDBCACHE_ENABLED`` that is not a boolean, and bad values, by name (the
   application then runs uncached);
2. when ``DDBCACHE_ENABLED`` is on, waits for ``botocore.session`` to be
   imported (nothing heavy is imported before the application asks for
   botocore itself);
3. wraps ``botocore.session.Session.create_client`` (public API, through
   _clienthook.py) so that
   every DynamoDB client any session creates is attached to one registration,
   made on the first such client: that is when Redis is first contacted. If
   Redis does not answer, one warning is logged and the application runs
   uncached. aiobotocore's ``AioSession._create_client`` (which overrides
   ``create_client``) is wrapped the same way once ``aiobotocore.session`` is
   imported: its DynamoDB clients get an async registration, one per event
   loop, with the same settings and Redis, so an aioboto3 write invalidates
   what a boto3 client of the same process cached, and the reverse.

The same wrappers tell, once, of DynamoDB clients that will not be cached: in
a process that ``ddbcache-run`` did not start itself (a reloader's child, say)
and, for registrations made in code, of clients made from another session
(plugin.py). A registration made in code wins over this one (code >
environment), and an explicit ``DDBCACHE_ENABLED=0`` wins over both. Nothing
here ever raises into the application.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import weakref
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import _clienthook

if TYPE_CHECKING:
    import asyncio

    from .plugin import Registration

log = logging.getLogger("ddbcache_hooks")

#: Set by ``ddbcache-run``: the process it started. Descendants are left alone
#: unless DDBCACHE_RUN_CHILDREN is set too.
RUN_PID = "DDBCACHE_RUN_PID"
RUN_CHILDREN = "DDBCACHE_RUN_CHILDREN"
REDIS_URL = "DDBCACHE_REDIS_URL"

_lock = threading.Lock()
#: Variables by which a reloader marks the child process that serves the application.
RELOADER_MARKS = ("WERKZEUG_RUN_MAIN", "RUN_MAIN")

_state: dict[str, Any] = {
    "activated": False,
    "registration": None,
    "failed": False,
    "original_async": None,
    # Attach environment activation's registration to new DynamoDB clients.
    "attach": False,
    # The pid of the process ddbcache-run started, in a descendant left uncached.
    "run_pid": None,
    "child_told": False,
}
#: The environment's async registration of each event loop (a task that makes it).
_async_registrations: weakref.WeakKeyDictionary[Any, asyncio.Future[Any]] = (
    weakref.WeakKeyDictionary()
)


def wanted(environ: Any = os.environ) -> bool:
    """Whether this process should be activated from the environment."""
    from .config import env_flag

    try:
        if not env_flag("ENABLED", environ):
            return False
    except ValueError as exc:
        log.warning("ddbcache-hooks: %s; caching is off", exc)
        return False
    started_by = environ.get(RUN_PID)
    if started_by and started_by != str(os.getpid()):
        try:
            children = bool(env_flag(RUN_CHILDREN[len("DDBCACHE_") :], environ))
        except ValueError:
            children = False
        if not children:
            _state["run_pid"] = started_by  # said at its first DynamoDB client
        return children
    return True


def check_environment(environ: Any = os.environ) -> bool:
    """Report bad ``DDBCACHE_*`` values by name; True when activation can go on."""
    from .config import from_environment
    from .errors import ConfigurationError

    if not environ.get(REDIS_URL):
        log.warning(
            "ddbcache-hooks: DDBCACHE_ENABLED is set but %s is not; caching is off", REDIS_URL
        )
        return False
    try:
        from_environment(environ)
    except ConfigurationError as exc:
        log.warning("ddbcache-hooks: %s; caching is off", exc)
        return False
    return True


def child_message(environ: Any = os.environ) -> str:
    """What a process ``ddbcache-run`` did not start itself says at its first DynamoDB client."""
    marks = [name for name in RELOADER_MARKS if environ.get(name)]
    what = (
        f"a reloader's child process ({marks[0]} is set), which serves the application"
        if marks
        else "a process the command started"
    )
    return (
        f"ddbcache-hooks: DynamoDB clients in this process (pid {os.getpid()}) are not cached: "
        f"ddbcache-run caches only the command it started (pid {environ.get(RUN_PID)}), "
        f"and this is {what}. Run `ddbcache-run --children ...` to cache here too"
    )


def _tell_child() -> None:
    if _state["run_pid"] is not None and not _state["child_told"]:
        _state["child_told"] = True
        log.warning("%s", child_message())


def install() -> None:
    """Attach new botocore clients, and wrap aiobotocore, now where loaded, else when imported."""
    _clienthook.observe(_on_client)
    _clienthook.install("aiobotocore.session", patch_async)


def _on_client(session: Any, client: Any) -> None:
    """A session made a DynamoDB client: attach it, or say why it is not cached."""
    if _state["attach"]:
        attach(client)
    else:
        _tell_child()


def stop_attaching() -> None:
    """Environment activation's registration was unregistered: new clients stay uncached
    (the wrapper on create_client stays: it also serves register()'s checks)."""
    _state["attach"] = False


def patch_async(module: ModuleType) -> None:
    """Wrap aiobotocore's ``AioSession._create_client`` (it overrides botocore's
    ``create_client``, so :func:`patch` never sees its clients)."""
    session_class = module.AioSession
    if _state["original_async"] is not None:
        return
    original = session_class._create_client
    _state["original_async"] = original

    @functools.wraps(original)
    async def _create_client(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        client = await original(self, service_name, *args, **kwargs)
        if service_name == "dynamodb":
            if _state["attach"]:
                await attach_async(client)
            else:
                _tell_child()
        return client

    session_class._create_client = _create_client


def unpatch_async() -> None:
    """Undo :func:`patch_async` (an async registration of the environment was unregistered)."""
    original = _state["original_async"]
    if original is not None:
        import aiobotocore.session

        aiobotocore.session.AioSession._create_client = original
        _state["original_async"] = None


async def attach_async(client: Any) -> None:
    """Attach the running loop's environment registration to a new aiobotocore
    DynamoDB client; never raises."""
    try:
        registration = await _async_registration()
        if registration is not None:
            registration.attach_client(client)
    except Exception:  # an application must never fail because of this hook
        log.exception("ddbcache-hooks: could not attach to an aiobotocore client; it runs uncached")


def _async_registration() -> asyncio.Future[Any]:
    """One registration per event loop (a redis.asyncio client belongs to its loop),
    made once: concurrent first clients await the same task."""
    import asyncio  # only here: aiobotocore, which imports it, is in use

    loop = asyncio.get_running_loop()
    with _lock:
        task = _async_registrations.get(loop)
        if task is None:
            from .plugin import register_async_from_environment

            task = loop.create_task(register_async_from_environment(os.environ, unpatch_async))
            _async_registrations[loop] = task
        return task


def attach(client: Any) -> None:
    """Attach the environment registration to a new DynamoDB client; never raises."""
    try:
        registration = _registration()
        if registration is not None:
            registration.attach_client(client)
    except Exception:  # an application must never fail because of this hook
        log.exception("ddbcache-hooks: could not attach to a DynamoDB client; it runs uncached")


def _registration() -> Any:
    with _lock:
        if _state["registration"] is None and not _state["failed"]:
            from .plugin import register_from_environment

            _state["registration"] = register_from_environment(os.environ, stop_attaching)
            _state["failed"] = _state["registration"] is None
        return _state["registration"]


def own_command(argv: Sequence[str] | None = None) -> bool:
    """Whether this process is ``ddbcache`` / ``ddbcache-run`` (``python -m ddbcache_hooks``
    too): they read and report the variables themselves, and ``ddbcache-run`` hands them
    to the command it runs, which activates."""
    argv = list(getattr(sys, "orig_argv", getattr(sys, "argv", [])) if argv is None else argv)
    names = {os.path.splitext(os.path.basename(arg))[0] for arg in argv[:2]}
    module = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-m"), None)
    return bool(names & {"ddbcache", "ddbcache-run"}) or module == "ddbcache_hooks"


def current() -> Registration | None:
    """The registration environment activation made in this process, or None.

    None when the process was not switched on from the environment
    (``DDBCACHE_ENABLED``), when Redis did not answer, or after the
    registration's ``unregister()``. Made now if no DynamoDB client was created
    yet (Redis is contacted then), so an application can use it at start-up:
    ``stats()``, ``invalidate()``, ``invalidate_table()``, ``unregister()``.
    """
    if not _state["attach"]:
        return None  # not switched on from the environment, or unregistered
    registration: Registration | None = _registration()
    if registration is None or not registration.active:
        return None
    return registration


def activate() -> None:
    """Entry point of the start-up hook (idempotent: some interpreters read a .pth twice)."""
    if _state["activated"]:
        return
    _state["activated"] = True
    try:
        if own_command():
            return
        from .config import warn_unknown_variables

        warn_unknown_variables()
        if wanted() and check_environment():
            _state["attach"] = True
            install()
        elif _state["run_pid"] is not None:
            install()  # to say so at this process's first DynamoDB client
    except Exception:  # never break interpreter start-up
        log.exception("ddbcache-hooks: environment activation failed; caching is off")
