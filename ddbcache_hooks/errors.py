"""Exceptions the library raises to its caller."""

from __future__ import annotations


class ConfigurationError(ValueError):
    """An option or ``DDBCACHE_*`` variable has a bad value; the message names it."""


class CacheConnectionError(ConnectionError):
    """Redis did not answer when ``register()`` checked it."""


class RegistrationError(TypeError):
    """``register()`` was given something it cannot attach to."""
