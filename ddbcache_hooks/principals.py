"""The caller's IAM principal (``isolation="principal"``), resolved once per credential set.

What the identity must include is what fine-grained policies can tell apart:

- long-lived keys (an IAM user's, or any key without a session token): the key
  itself; a key belongs to one user for life (no network call);
- botocore's assume-role provider (a profile's ``role_arn``): the role session,
  ``arn:…:sts::<account>:assumed-role/<role>/<session>``, from the provider
  (no network call);
- instance roles, container (ECS/EKS Pod Identity) roles and IAM Identity
  Center (SSO): STS ``GetCallerIdentity``'s ARN, once per credential set;
- every other temporary credential (passed in explicitly or through the
  environment, web identity, Cognito identity pools, a credential process):
  the credential set itself. One role session ARN can cover callers that
  policies tell apart (Cognito users share ``…/CognitoIdentityCredentials``
  but differ in ``${cognito-identity.amazonaws.com:sub}``; session tags and
  session policies are not in the ARN), so nothing coarser is safe.

When a principal cannot be resolved (STS unreachable, say), the call bypasses
the cache and one warning says why: the library never guesses.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

from . import forks
from .access import access_key_of

log = logging.getLogger("ddbcache_hooks")

#: Credential providers whose principal STS names and their credentials do not.
STS_METHODS = frozenset({"iam-role", "container-role", "sso"})
#: AssumeRole arguments that make one session ARN cover differing permissions.
_SESSION_SCOPED = ("Policy", "PolicyArns", "Tags", "TransitiveTagKeys")
#: How long an unresolved credential set bypasses the cache before STS is asked again.
RETRY_S = 60.0
#: Credential sets remembered at most (then forgotten all at once: resolved again).
MAX_KNOWN = 1024


class Unresolved(Exception):
    """The principal behind a credential set could not be resolved."""


def _fields(credentials: Any) -> dict[str, Any]:
    return getattr(credentials, "__dict__", None) or {}


def session_token_of(credentials: Any) -> str | None:
    fields = _fields(credentials)
    token = fields.get("_token") if "_access_key" in fields else fields.get("token")
    return token if isinstance(token, str) and token else None


def assumed_role_arn(credentials: Any) -> str | None:
    """The role session of botocore's assume-role provider, read from its fetcher."""
    fetcher = getattr(_fields(credentials).get("_refresh_using"), "__self__", None)
    role_arn = getattr(fetcher, "_role_arn", None)
    session = getattr(fetcher, "_role_session_name", None)
    extra = getattr(fetcher, "_assume_kwargs", None) or {}
    if not isinstance(role_arn, str) or not isinstance(session, str):
        return None
    if any(name in extra for name in _SESSION_SCOPED):
        return None
    parts = role_arn.split(":", 5)
    if len(parts) != 6 or parts[2] != "iam" or not parts[5].startswith("role/"):
        return None
    role = parts[5].rsplit("/", 1)[-1]
    return f"arn:{parts[1]}:sts::{parts[4]}:assumed-role/{role}/{session}"


def local_principal(credentials: Any) -> str | None:
    """The principal the credentials themselves tell; None when only STS can tell it."""
    key = access_key_of(credentials)
    if key is None:
        raise Unresolved("the credentials are not loaded yet")
    if credentials is None:
        return "anonymous"
    if session_token_of(credentials) is None:
        return "key:" + key
    method = getattr(credentials, "method", None)
    if method == "assume-role":
        arn = assumed_role_arn(credentials)
        if arn is not None:
            return arn
    if method in STS_METHODS:
        return None
    return "session:" + key


def caller_arn(credentials: Any, region: str | None, endpoint_url: str | None) -> str:
    """STS GetCallerIdentity with the caller's credentials (short time-outs, one attempt)."""
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    fields = _fields(credentials)
    refreshable = "_access_key" in fields
    try:
        client = botocore.session.Session().create_client(
            "sts",
            region_name=region or "us-east-1",
            endpoint_url=endpoint_url,
            aws_access_key_id=fields["_access_key" if refreshable else "access_key"],
            aws_secret_access_key=fields["_secret_key" if refreshable else "secret_key"],
            aws_session_token=session_token_of(credentials),
            config=Config(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1}),
        )
        arn = client.get_caller_identity()["Arn"]
    except (BotoCoreError, ClientError, KeyError) as exc:
        raise Unresolved(f"STS GetCallerIdentity failed: {exc}") from exc
    if not isinstance(arn, str) or not arn:
        raise Unresolved("STS GetCallerIdentity returned no ARN")
    return arn


def scope_digest(principal: str) -> str:
    return hashlib.blake2b(principal.encode("utf-8"), digest_size=12).hexdigest()


class Principals:
    """Principal digests by access key, for every client of the process."""

    def __init__(self, ask_sts: Any = caller_arn, clock: Any = time.monotonic) -> None:
        self._ask_sts = ask_sts
        self.clock = clock
        #: access key -> scope digest, or the monotonic time until which it is unresolved.
        self._known: dict[str, str | float] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def scope(self, credentials: Any, region: str | None, endpoint_url: str | None) -> str | None:
        """The caller's principal digest; None: bypass the cache for this call."""
        key = access_key_of(credentials)
        if key is None:
            return None  # a deferred provider loads with the call itself
        known = self._known.get(key)
        if isinstance(known, str):
            return known
        if known is not None and known > self.clock():
            return None
        try:
            principal = local_principal(credentials)
            if principal is None:
                principal = self._ask_sts(credentials, region, endpoint_url)
        except Unresolved as exc:
            self._unresolved(key, str(exc))
            return None
        found = scope_digest(principal)
        with self._lock:
            if len(self._known) >= MAX_KNOWN:
                self._known.clear()
            self._known[key] = found
        return found

    def _unresolved(self, key: str, reason: str) -> None:
        with self._lock:
            if len(self._warned) >= MAX_KNOWN:
                self._warned.clear()
            self._known[key] = self.clock() + RETRY_S
            first = key not in self._warned
            self._warned.add(key)
        if first:
            log.warning(
                "isolation='principal': the caller's IAM principal is unknown (%s); "
                "its reads bypass the cache (asked again every %d s)",
                reason,
                int(RETRY_S),
            )

    def clear(self) -> None:
        with self._lock:
            self._known.clear()
            self._warned.clear()


#: One per process: a credential set is resolved once whichever client uses it.
PRINCIPALS = Principals()
forks.fork_safe(PRINCIPALS)
