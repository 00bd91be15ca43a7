"""The DynamoDB clients of every botocore session, from the moment the package is imported.

botocore copies a session's event hooks into each client when it creates it,
so a client made before ``register(session)`` never sees hooks registered on
the session afterwards: it would read uncached and, worse, write without
invalidating what the registered clients cached. So importing the package
observes botocore's client creation (the one wrapper of _clienthook.py, now or
as soon as ``botocore.session`` is imported) to remember, weakly, each DynamoDB
client a session creates; ``register(session)`` attaches to those too. A
client made before the package was imported is not known here: register it
directly (``register(client)``), see README.md.

Sync botocore / boto3 clients only: aiobotocore's ``AioSession`` creates its
clients in ``_create_client``, and ``register_async(session)`` covers the
clients it creates afterwards.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import _clienthook

log = logging.getLogger("ddbcache_hooks")

_lock = threading.Lock()
#: A session's event emitter -> the DynamoDB clients it created.
_clients: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()


def install() -> None:
    """Track DynamoDB clients from now on (idempotent)."""
    _clienthook.observe(_remember)


def _remember(session: Any, client: Any) -> None:
    emitter = session.get_component("event_emitter")
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
    return bool(_clienthook._state["original"] is not None)


# --- clients no registration reaches -------------------------------------------------

_unreached = {"watching": False, "told": False}
_FIRST_CALL = "ddbcache-hooks-unregistered-session"


def watch_unreached(registered: Callable[[], int], attached: Callable[[Any], bool]) -> None:
    """Once a session is registered, look at every DynamoDB client any session makes:
    ``registered()`` counts the sessions registered in code, ``attached(client)`` says
    whether a registration has the client."""
    if not _unreached["watching"]:
        _unreached["watching"] = True
        _clienthook.observe(lambda session, client: _check(session, client, registered, attached))


def _check(
    session: Any, client: Any, registered: Callable[[], int], attached: Callable[[Any], bool]
) -> None:
    """A client no registration attached to, while sessions are registered: told at its
    first call (the application may still register the client itself before that)."""
    import botocore.client

    if _unreached["told"] or not isinstance(client, botocore.client.BaseClient):
        return
    if attached(client) or not registered():
        return
    client_ref = weakref.ref(client)
    from_default = _is_default_session(session)

    def first_call(**_: Any) -> None:
        current = client_ref()
        if current is None:
            return
        current.meta.events.unregister("before-call.dynamodb", unique_id=_FIRST_CALL)
        if attached(current) or _unreached["told"] or not registered():
            return
        _unreached["told"] = True
        log.warning("%s", unreached_message(from_default, registered()))

    client.meta.events.register("before-call.dynamodb", first_call, unique_id=_FIRST_CALL)


def _is_default_session(session: Any) -> bool:
    import sys

    boto3 = sys.modules.get("boto3")
    default = getattr(boto3, "DEFAULT_SESSION", None)
    try:
        return default is not None and default.events is session.get_component("event_emitter")
    except Exception:
        return False


def unreached_message(from_default: bool, registered: int) -> str:
    """What a DynamoDB client made from a session no registration is on says, once."""
    sessions = f"{registered} other session{'s' if registered != 1 else ''}"
    if from_default:
        return (
            "ddbcache-hooks: a DynamoDB client made from boto3's default session "
            "(boto3.client() / boto3.resource()) is not cached: register() was given "
            f"{sessions}. Call ddbcache_hooks.register() with no session to cache the "
            "default session, or make the clients from the registered session"
        )
    return (
        "ddbcache-hooks: a DynamoDB client made from a session that is not registered "
        f"is not cached (register() was given {sessions}). Register the session the "
        "application uses, or make the clients from the registered session"
    )
