"""One wrapper on botocore's ``Session.create_client``: who is told of each new DynamoDB client.

botocore has no event that every session emits, so seeing the DynamoDB clients
of any session takes a wrapper on the public ``Session.create_client``. It is
installed once (now if ``botocore.session`` is loaded, else as soon as it is
imported, so nothing heavy is imported early) and calls its observers with
``(session, client)``: environment activation attaches its registration
(_autoload.py), ``register()`` checks for clients that no registration reaches
(plugin.py). An observer never makes the application fail.

This module imports nothing of the package, so both can use it without a cycle.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

log = logging.getLogger("ddbcache_hooks")

Observer = Callable[[Any, Any], None]

#: Called in order with (session, client) for every botocore DynamoDB client made.
observers: list[Observer] = []
_state: dict[str, Any] = {"original": None}


def observe(observer: Observer) -> None:
    """Tell ``observer`` of every DynamoDB client made from now on (once per observer)."""
    if observer not in observers:
        observers.append(observer)
    install("botocore.session", patch)


def install(name: str, patcher: Callable[[ModuleType], None]) -> None:
    """Run ``patcher`` on module ``name`` now if it is loaded, else right after its import."""
    module = sys.modules.get(name)
    if module is not None:
        patcher(module)
    elif not any(isinstance(f, PatchOnImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, PatchOnImport(name, patcher))


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


def patch(module: ModuleType) -> None:
    """Wrap ``module.Session.create_client`` (once)."""
    session_class = module.Session
    if _state["original"] is not None:
        return
    original = session_class.create_client
    _state["original"] = original

    @functools.wraps(original)
    def create_client(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        client = original(self, service_name, *args, **kwargs)
        if service_name == "dynamodb":
            created(self, client)
        return client

    session_class.create_client = create_client


def created(session: Any, client: Any) -> None:
    """Tell every observer of a new DynamoDB client; never raises."""
    for observer in list(observers):
        try:
            observer(session, client)
        except Exception:  # an application must never fail because of this hook
            log.exception("ddbcache-hooks: looking at a new DynamoDB client failed")


def unpatch() -> None:
    """Undo :func:`patch` (tests)."""
    original = _state["original"]
    if original is not None:
        import botocore.session

        botocore.session.Session.create_client = original
        _state["original"] = None
