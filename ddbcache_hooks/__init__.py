"""Read-through Redis / Valkey cache for Amazon DynamoDB, as a botocore plugin.

    import boto3, ddbcache_hooks
    ddbcache_hooks.register(boto3.Session(), redis="redis://localhost:6379")

See README.md and docs/ for the guarantees and every option.

The public names are imported on first use, so that importing the package
(which the start-up hook does when DDBCACHE_ENABLED is set) stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from . import tracking as _tracking
from ._version import __version__

# DynamoDB clients a session creates before register(session) are covered too.
_tracking.install()

if TYPE_CHECKING:
    from ._autoload import current
    from .config import Options, TablePolicy
    from .errors import CacheConnectionError, ConfigurationError, RegistrationError
    from .handlers import disabled, refresh
    from .keys import TableRef, refs_for_table_arn
    from .near import NearCache
    from .peek import Peek
    from .plugin import AsyncRegistration, Registration, register, register_async

_PUBLIC = {
    "AsyncRegistration": ".plugin",
    "register_async": ".plugin",
    "CacheConnectionError": ".errors",
    "ConfigurationError": ".errors",
    "RegistrationError": ".errors",
    "NearCache": ".near",
    "Peek": ".peek",
    "Registration": ".plugin",
    "Options": ".config",
    "TablePolicy": ".config",
    "TableRef": ".keys",
    "refs_for_table_arn": ".keys",
    "current": "._autoload",
    "disabled": ".handlers",
    "refresh": ".handlers",
    "register": ".plugin",
}

__all__ = [
    "AsyncRegistration",
    "CacheConnectionError",
    "ConfigurationError",
    "NearCache",
    "Options",
    "Peek",
    "Registration",
    "RegistrationError",
    "TablePolicy",
    "TableRef",
    "__version__",
    "current",
    "disabled",
    "refresh",
    "refs_for_table_arn",
    "register",
    "register_async",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'ddbcache_hooks' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
