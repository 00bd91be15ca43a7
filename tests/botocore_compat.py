"""What differs between the botocore releases the package accepts, for the tests.

- The SigV4 signing clock: botocore 1.34 reads ``datetime.datetime.utcnow()``
  inside ``botocore.auth``; later releases call ``botocore.auth.get_current_datetime()``.
- Credentials that carry the account id (``aws_account_id``, ``AWS_ACCOUNT_ID``)
  exist from botocore 1.35 on; before, the own account is known only from the
  ``account_id`` option.
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Callable

import botocore.auth
import botocore.session
import pytest

#: Whether this botocore's credentials can carry the account id.
CREDENTIALS_CARRY_ACCOUNT = (
    "aws_account_id" in inspect.signature(botocore.session.Session.create_client).parameters
)

#: Python source that pins the signing clock to ``_PINNED_AT`` (a child process's
#: start-up code); ``pin_source`` fills in the time.
_PIN_SOURCE = """
import datetime as _datetime
import types as _types

import botocore.auth as _auth

_pinned = _datetime.datetime.fromisoformat({iso!r})
if hasattr(_auth, "get_current_datetime"):
    _auth.get_current_datetime = lambda: _pinned
else:
    class _Pinned(_datetime.datetime):
        @classmethod
        def utcnow(cls):
            return _pinned.astimezone(_datetime.timezone.utc).replace(tzinfo=None)

    _shim = _types.ModuleType("datetime")
    _shim.__dict__.update(vars(_datetime))
    _shim.datetime = _Pinned
    _auth.datetime = _shim
"""


def pin_source(when: datetime.datetime) -> str:
    """Source code that pins botocore's signing clock at ``when`` (timezone-aware)."""
    return _PIN_SOURCE.format(iso=when.isoformat())


def pin_signing_clock(
    monkeypatch: pytest.MonkeyPatch, now: Callable[[], datetime.datetime]
) -> None:
    """botocore signs at ``now()`` (timezone-aware) until the test ends."""
    if hasattr(botocore.auth, "get_current_datetime"):
        monkeypatch.setattr(botocore.auth, "get_current_datetime", now)
        return

    class Pinned(datetime.datetime):
        @classmethod
        def utcnow(cls) -> datetime.datetime:  # type: ignore[override]
            return now().astimezone(datetime.timezone.utc).replace(tzinfo=None)

    shim = type(datetime)("datetime")
    shim.__dict__.update(vars(datetime))
    shim.datetime = Pinned  # type: ignore[attr-defined]
    monkeypatch.setattr(botocore.auth, "datetime", shim)
