"""Who may be served a hit: the read access DynamoDB has shown each credential identity.

Entries are shared by every caller of a namespace, so a hit must go only to a
caller DynamoDB would answer. Per process, per credential identity (a digest of
the access key id the client signs with) and per grant (a table, or one index
of it), the first read goes to DynamoDB; its success proves the grant for
``access_recheck_s``, an authorization error denies it for as long.

A grant is the table (or index), not the operation: a caller DynamoDB answers
a GetItem, Query or Scan of a table without conditions can read every item of
it through any of them, so a hit of another read operation gives it nothing
new. What conditions narrow (``dynamodb:LeadingKeys``, ``dynamodb:Attributes``)
takes ``isolation="principal"``. No I/O:
the handlers read the credentials and report DynamoDB's answers here.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Mapping
from typing import Any

from . import forks
from .keys import TableRef

#: (table, index): the IAM resource a read names (an index is a resource of its own).
Grant = tuple[TableRef, str | None]
#: Error codes (or code fragments) that say DynamoDB refused the caller, not the request.
_DENIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)
#: Grants remembered per process at most; beyond, expired ones go, then all (re-proved).
MAX_GRANTS = 10000
#: Identity of a client that signs nothing (no credentials).
ANONYMOUS = "anonymous"


def is_denial(status: int, parsed: Mapping[str, Any] | None) -> bool:
    """DynamoDB's answer is an authorization or authentication error (or HTTP 403)."""
    if status == 403:
        return True
    error = (parsed or {}).get("Error")
    code = error.get("Code") if isinstance(error, Mapping) else None
    if not isinstance(code, str):
        return False
    return code.startswith("AccessDenied") or "NotAuthorized" in code or code in _DENIAL_CODES


@functools.lru_cache(maxsize=1024)
def identity_digest(access_key: str) -> str:
    """A short digest of an access key id: the identity's name anywhere it is kept."""
    return hashlib.blake2b(access_key.encode("utf-8"), digest_size=12).hexdigest()


def access_key_of(credentials: Any) -> str | None:
    """The access key id a credentials object signs with, read without refreshing it.

    RefreshableCredentials keep it in ``_access_key`` (the public property may
    block on a refresh); a deferred provider that never loaded has None there,
    and the call that follows loads it. None: not known yet.
    """
    if credentials is None:
        return ANONYMOUS
    fields = getattr(credentials, "__dict__", None) or {}
    key = fields.get("_access_key") if "_access_key" in fields else fields.get("access_key")
    return key if isinstance(key, str) and key else None


def credential_identity(signer: Any) -> str | None:
    """The identity of the credentials a client's request signer holds (no I/O)."""
    key = access_key_of(getattr(signer, "_credentials", None))
    if key is None:
        return None
    return ANONYMOUS if key == ANONYMOUS else identity_digest(key)


def proved(signer: Any, wanted: tuple[Grant, ...]) -> bool:
    """The signer's credentials (as they are now) have every grant proved."""
    identity = credential_identity(signer)
    return identity is not None and not GATE.unproven(identity, wanted)


def grants(plan: Any) -> tuple[Grant, ...]:
    """The grants a read plan's hits would use (one per table of a BatchGetItem)."""
    if plan.table is not None:
        return ((plan.table, plan.index),)
    return tuple(dict.fromkeys((slot.table, None) for slot in plan.slots))


class AccessGate:
    """Grants DynamoDB proved or refused, per identity, each for a bounded time."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        #: (identity, grant) -> (until, allowed), ``until`` on ``clock``.
        self._seen: dict[tuple[str, Grant], tuple[float, bool]] = {}
        #: (identity, grant) -> until: a proving read in flight (one per process at a time).
        self._flying: dict[tuple[str, Grant], float] = {}
        self._lock = threading.Lock()

    def unproven(self, identity: str, wanted: tuple[Grant, ...]) -> tuple[Grant, ...]:
        """The grants not proved for this identity, or whose proof ran out (usually none)."""
        now = self.clock()
        seen = self._seen
        missing: tuple[Grant, ...] = ()
        for grant in wanted:
            known = seen.get((identity, grant))
            if known is None or not known[1] or known[0] <= now:
                missing += (grant,)
        return missing

    def prove(self, identity: str, wanted: tuple[Grant, ...], for_s: float) -> None:
        """DynamoDB answered this identity: its grants hold for ``for_s`` (a denial stands)."""
        now = self.clock()
        with self._lock:
            for grant in wanted:
                known = self._seen.get((identity, grant))
                if known is not None and not known[1] and known[0] > now:
                    continue  # refused within the interval: no hit until it ends
                self._seen[(identity, grant)] = (now + for_s, True)
            self._bound(now)

    def deny(self, identity: str, wanted: tuple[Grant, ...], for_s: float) -> None:
        """DynamoDB refused this identity: no hit for these grants for ``for_s``."""
        now = self.clock()
        with self._lock:
            for grant in wanted:
                self._seen[(identity, grant)] = (now + for_s, False)
            self._bound(now)

    def lead(self, identity: str, wanted: tuple[Grant, ...], for_s: float) -> bool:
        """Take the proving read of these grants; False when one is in flight already.

        The others then wait for its answer (``in_flight``) rather than each
        reading DynamoDB: concurrent first reads cost one read, as misses do.
        """
        now = self.clock()
        with self._lock:
            if any(self._flying.get((identity, g), 0.0) > now for g in wanted):
                return False
            if len(self._flying) > MAX_GRANTS:
                self._flying.clear()
            for grant in wanted:
                self._flying[(identity, grant)] = now + for_s
        return True

    def landed(self, identity: str, wanted: tuple[Grant, ...]) -> None:
        """The proving read was answered (or failed): nobody waits for it any more."""
        with self._lock:
            for grant in wanted:
                self._flying.pop((identity, grant), None)

    def in_flight(self, identity: str, wanted: tuple[Grant, ...]) -> bool:
        now = self.clock()
        return any(self._flying.get((identity, g), 0.0) > now for g in wanted)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
            self._flying.clear()

    def _bound(self, now: float) -> None:
        if len(self._seen) <= MAX_GRANTS:
            return
        for key in [k for k, (until, _) in self._seen.items() if until <= now]:
            del self._seen[key]
        if len(self._seen) > MAX_GRANTS:
            self._seen.clear()  # costs one read per grant again, never a wrong hit


#: One per process: a grant proved through any registration serves them all.
GATE = AccessGate()
forks.fork_safe(GATE)


@forks.in_child
def _no_reads_in_flight_in_child() -> None:
    """The parent's proving reads never answer in the child: nobody waits for them."""
    GATE._flying.clear()
