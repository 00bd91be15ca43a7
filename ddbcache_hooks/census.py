"""Which IAM principals use a namespace, kept as digests, so that sharing is seen.

Each process records the principal behind each credential set it reads with
(once per set, in a daemon thread, not before DELAY_S after it registered:
never on a call's path) in one small hash,
``<namespace>:principals`` (digest -> last seen, Unix seconds), that expires a
day after its last write; fields older than that are dropped as it is written.
When more than one principal reads a namespace whose entries are shared
(``isolation="shared"``), the process warns once, and ``ddbcache doctor`` /
``ddbcache stats`` show it. Raw identities never leave the process.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from . import forks
from .access import access_key_of
from .principals import Unresolved, caller_arn, local_principal, scope_digest

log = logging.getLogger("ddbcache_hooks")

#: How long a principal counts as using the namespace after its last record.
WINDOW_S = 86400
#: A process records its principals this long after it registered at the earliest:
#: never among its first calls (the STS client and the round trip wait until then).
DELAY_S = 30.0
#: Credential sets a process remembers having recorded (then it records again).
MAX_NOTED = 1024
FIX = (
    "give each access level its own namespace, or set isolation='principal' "
    "(DDBCACHE_ISOLATION=principal); hits already go only to callers DynamoDB "
    "answered for the table (access_recheck_s), but item- and attribute-level "
    "conditions hold only with isolation='principal'"
)


def census_key(namespace: str) -> str:
    return namespace + ":principals"


def principal_of(credentials: Any, region: str | None, endpoint_url: str | None) -> str | None:
    """The principal to count: the role session STS names for temporary credentials."""
    try:
        principal = local_principal(credentials)
        if principal is None or principal.startswith("session:"):
            principal = caller_arn(credentials, region, endpoint_url)
    except Unresolved as exc:
        log.debug("principal not recorded: %s", exc)
        return None
    return principal


def live_principals(client: Any, namespace: str, now: float | None = None) -> int:
    """How many principals read the namespace within the last WINDOW_S."""
    fields = client.hgetall(census_key(namespace))
    cutoff = (time.time() if now is None else now) - WINDOW_S
    return sum(1 for seen in fields.values() if float(seen) >= cutoff)


def report(client: Any, namespace: str) -> str:
    """One line for ``ddbcache doctor`` / ``ddbcache stats``."""
    count = live_principals(client, namespace)
    if count <= 1:
        return f"{count} IAM principal(s) read namespace {namespace!r} in the last day"
    return (
        f"{count} IAM principals read namespace {namespace!r} in the last day: "
        f"if their access differs, {FIX}"
    )


class Census:
    """Records this process's principals for one namespace; warns once when shared."""

    def __init__(self, client: Any, namespace: str, shared: bool) -> None:
        self._client = client
        self._namespace = namespace
        self._shared = shared
        self._noted: set[str] = set()
        self._warned = False
        self._lock = threading.Lock()
        self._started = time.monotonic()
        forks.fork_safe(self)

    def note(self, credentials: Any, region: str | None, endpoint_url: str | None) -> None:
        """A credential set DynamoDB answered: record its principal (once per set)."""
        key = access_key_of(credentials)
        if key is None or key in self._noted:
            return
        with self._lock:
            if key in self._noted:
                return
            if len(self._noted) >= MAX_NOTED:
                self._noted.clear()
            self._noted.add(key)
        threading.Thread(
            target=self._record,
            args=(credentials, region, endpoint_url),
            name="ddbcache-census",
            daemon=True,
        ).start()

    def _record(self, credentials: Any, region: str | None, endpoint_url: str | None) -> None:
        time.sleep(max(0.0, self._started + DELAY_S - time.monotonic()))
        principal = principal_of(credentials, region, endpoint_url)
        if principal is None:
            return
        now = int(time.time())
        key = census_key(self._namespace)
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hset(key, scope_digest(principal), now)
            pipe.expire(key, WINDOW_S)
            pipe.hgetall(key)
            fields = pipe.execute()[-1]
            old = [f for f, seen in fields.items() if float(seen) < now - WINDOW_S]
            if old:
                self._client.hdel(key, *old)
        except (RedisError, RedisClusterException) as exc:  # best effort: the cache goes on
            # (a cluster client closed by unregister() meanwhile raises the latter)
            log.debug("could not record the namespace's principals: %s", exc)
            return
        live = len(fields) - len(old)
        if self._shared and live > 1 and not self._warned:
            self._warned = True
            log.warning(
                "%d IAM principals read namespace %r, whose entries they share; %s",
                live,
                self._namespace,
                FIX,
            )
