"""Read-through Redis / Valkey cache for Amazon DynamoDB, as a botocore plugin.

    import boto3, ddbcache_hooks
    ddbcache_hooks.register(boto3.Session(), redis="redis://localhost:6379")

See README.md and docs/ for the guarantees and every option.
"""

from ._version import __version__
from .config import TablePolicy
from .errors import CacheConnectionError, ConfigurationError, RegistrationError
from .handlers import disabled
from .plugin import Registration, register

__all__ = [
    "CacheConnectionError",
    "ConfigurationError",
    "Registration",
    "RegistrationError",
    "TablePolicy",
    "__version__",
    "disabled",
    "register",
]
