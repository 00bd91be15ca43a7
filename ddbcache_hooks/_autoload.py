"""Environment activation: caching for an application that is not changed at all.

The ``ddbcache_hooks.pth`` start-up hook imports this module only when
``DDBCACHE_ENABLED`` is set, before the application runs. It then:

1. checks the ``DDBCACHE_*`` variables (a bad one is reported by name and the
   application runs uncached);
2. waits for ``botocore.session`` to be imported (nothing heavy is imported
   before the application asks for botocore itself);
3. wraps ``botocore.session.Session.create_client`` (public API) so that
   every DynamoDB client any session creates is attached to one registration,
   made on the first such client: that is when Redis is first contacted. If
   Redis does not answer, one warning is logged and the application runs
   uncached. aiobotocore's ``AioSession._create_client`` (which overrides
   ``create_client``) is wrapped the same way once ``aiobotocore.session`` is
   imported: its DynamoDB clients get an async registration, one per event
   loop, with the same settings and Redis, so an aioboto3 write invalidates
   what a boto3 client of the same process cached, and the reverse.

A registration made in code wins over this one (code > environment), and an
explicit ``DDBCACHE_ENABLED=0`` wins over both. Nothing here ever raises into
the application.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import weakref
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

from .tracking import PatchOnImport

log = logging.getLogger("ddbcache_hooks")

#: Set by ``ddbcache-run``: the process it started. Descendants are left alone
#: unless DDBCACHE_RUN_CHILDREN is set too.
RUN_PID = "DDBCACHE_RUN_PID"
RUN_CHILDREN = "DDBCACHE_RUN_CHILDREN"
REDIS_URL = "DDBCACHE_REDIS_URL"

_lock = threading.Lock()
_state: dict[str, Any] = {
    "activated": False,
    "registration": None,
    "failed": False,
    "original": None,
    "original_async": None,
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
        return (environ.get(RUN_CHILDREN) or "").strip() in ("1", "true", "yes", "on")
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
        log.warning("ddbcache-hooks: bad setting %s; caching is off", exc)
        return False
    return True


def install() -> None:
    """Patch botocore and aiobotocore now where loaded, else as soon as imported."""
    for name, patcher in (("botocore.session", patch), ("aiobotocore.session", patch_async)):
        module = sys.modules.get(name)
        if module is not None:
            patcher(module)
        else:
            sys.meta_path.insert(0, _PatchOnImport(name, patcher))


_PatchOnImport = PatchOnImport


def patch(module: ModuleType) -> None:
    session_class = module.Session
    if _state["original"] is not None:
        return
    original = session_class.create_client
    _state["original"] = original

    @functools.wraps(original)
    def create_client(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        client = original(self, service_name, *args, **kwargs)
        if service_name == "dynamodb":
            attach(client)
        return client

    session_class.create_client = create_client


def unpatch() -> None:
    """Undo :func:`patch` (tests, and ``Registration.unregister`` of this registration)."""
    original = _state["original"]
    if original is not None:
        import botocore.session

        botocore.session.Session.create_client = original
        _state["original"] = None


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
            await attach_async(client)
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

            _state["registration"] = register_from_environment(os.environ, unpatch)
            _state["failed"] = _state["registration"] is None
        return _state["registration"]


def activate() -> None:
    """Entry point of the start-up hook (idempotent: some interpreters read a .pth twice)."""
    if _state["activated"]:
        return
    _state["activated"] = True
    try:
        if wanted() and check_environment():
            install()
    except Exception:  # never break interpreter start-up
        log.exception("ddbcache-hooks: environment activation failed; caching is off")
