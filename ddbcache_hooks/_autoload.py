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
   uncached.

A registration made in code wins over this one (code > environment), and an
explicit ``DDBCACHE_ENABLED=0`` wins over both. Nothing here ever raises into
the application.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plugin import Registration

log = logging.getLogger("ddbcache_hooks")

#: Set by ``ddbcache-run``: the process it started. Descendants are left alone
#: unless DDBCACHE_RUN_CHILDREN is set too.
RUN_PID = "DDBCACHE_RUN_PID"
RUN_CHILDREN = "DDBCACHE_RUN_CHILDREN"
REDIS_URL = "DDBCACHE_REDIS_URL"

_lock = threading.Lock()
_state: dict[str, Any] = {
    "activated": False,
    "installed": False,
    "registration": None,
    "failed": False,
    "original": None,
}


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
    """Patch botocore now if it is loaded, else as soon as it is imported."""
    _state["installed"] = True
    module = sys.modules.get("botocore.session")
    if module is not None:
        patch(module)
    else:
        sys.meta_path.insert(0, _PatchOnImport())


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """One-shot post-import hook for ``botocore.session``."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "botocore.session":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run_module = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            patch(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


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

            _state["registration"] = register_from_environment(os.environ)
            _state["failed"] = _state["registration"] is None
        return _state["registration"]


def current() -> Registration | None:
    """The registration environment activation made in this process, or None.

    None when the process was not switched on from the environment
    (``DDBCACHE_ENABLED``), when Redis did not answer, or after the
    registration's ``unregister()``. Made now if no DynamoDB client was created
    yet (Redis is contacted then), so an application can use it at start-up:
    ``stats()``, ``invalidate()``, ``invalidate_table()``, ``unregister()``.
    """
    if not _state["installed"]:
        return None
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
        if wanted() and check_environment():
            install()
    except Exception:  # never break interpreter start-up
        log.exception("ddbcache-hooks: environment activation failed; caching is off")
