"""The DynamoDB clients of every botocore session, from the moment the package is imported.

botocore copies a session's event hooks into each client when it creates it,
so a client made before ``register(session)`` never sees hooks registered on
the session afterwards: it would read uncached and, worse, write without
invalidating what the registered clients cached. So importing the package
wraps ``botocore.session.Session.create_client`` (now, or as soon as
``botocore.session`` is imported) to remember, weakly, each DynamoDB client a
session creates; ``register(session)`` attaches to those too. A client made
before the package was imported is not known here: register it directly
(``register(client)``), see README.md.

Sync botocore / boto3 clients only: aiobotocore's ``AioSession`` creates its
clients in ``_create_client``, and ``register_async(session)`` covers the
clients it creates afterwards.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

_lock = threading.Lock()
#: A session's event emitter -> the DynamoDB clients it created.
_clients: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()
_state: dict[str, Any] = {"original": None, "waiting": False}


def install() -> None:
    """Track DynamoDB clients from now on (idempotent)."""
    module = sys.modules.get("botocore.session")
    if module is not None:
        _wrap(module)
        return
    with _lock:
        if _state["waiting"]:
            return
        _state["waiting"] = True
    sys.meta_path.insert(0, PatchOnImport("botocore.session", _wrap))


def _wrap(module: ModuleType) -> None:
    session_class = module.Session
    with _lock:
        if _state["original"] is not None:
            return
        original = _state["original"] = session_class.create_client

    @functools.wraps(original)
    def create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = original(self, *args, **kwargs)
        service = kwargs.get("service_name", args[0] if args else None)
        if service == "dynamodb":
            _remember(self.get_component("event_emitter"), client)
        return client

    session_class.create_client = create_client


def _remember(emitter: Any, client: Any) -> None:
    with _lock:
        clients = _clients.get(emitter)
        if clients is None:
            clients = _clients[emitter] = weakref.WeakSet()
        clients.add(client)


def clients_of(emitter: Any) -> list[Any]:
    """The live DynamoDB clients the session of ``emitter`` created since tracking began."""
    with _lock:
        return list(_clients.get(emitter, ()))


def tracking() -> bool:
    """Whether clients are being tracked (``botocore.session`` was wrapped)."""
    return _state["original"] is not None


class PatchOnImport(importlib.abc.MetaPathFinder):
    """One-shot post-import hook for one module (``botocore.session``, ``aiobotocore.session``)."""

    def __init__(self, name: str, patcher: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.patcher = patcher

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run_module = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            self.patcher(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
