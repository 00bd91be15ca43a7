"""What a forked child redoes: one place for every after-fork step.

A lock that a thread of the parent held at fork time stays held for ever in
the child, where that thread does not exist; a connection, a thread or a
random prefix of the parent must not be used by the child. Modules register
their steps here (:func:`in_child`) and hand objects whose ``_lock`` must be
new in the child to :func:`fork_safe`; one ``os.register_at_fork`` hook runs
them, locks first, then the steps in the order they were registered.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

_locked: weakref.WeakSet[Any] = weakref.WeakSet()
_steps: list[Callable[[], None]] = []


def fork_safe(*objects: Any) -> None:
    """Give these objects a fresh ``_lock`` in a forked child."""
    for obj in objects:
        if obj is not None:
            _locked.add(obj)


def in_child(step: Callable[[], None]) -> Callable[[], None]:
    """Run ``step`` in every forked child (a decorator; returns ``step``)."""
    _steps.append(step)
    return step


def _after_fork_in_child() -> None:
    for obj in list(_locked):
        lock = getattr(obj, "_lock", None)
        if lock is not None:
            obj._lock = threading.RLock() if "RLock" in type(lock).__name__ else threading.Lock()
    for step in _steps:
        step()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
