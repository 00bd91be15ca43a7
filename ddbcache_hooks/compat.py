"""A drop-in for the read-through ``CacheClient`` shim of the AWS Prescriptive Guidance pattern.

Change one import, keep the rest of the code::

    from ddbcache_hooks.compat import CacheClient

    client = CacheClient(boto3.client("dynamodb"), redis_client, ttl=300)
    # or
    dynamodb_resource.meta.client = CacheClient(dynamodb_resource.meta.client, redis_client)

Same constructor arguments, defaults and validation errors as the reference.
It is built on :func:`ddbcache_hooks.register`, not a second implementation:
the handlers are registered on the client passed in, and only calls made
through the ``CacheClient`` read from the cache — the client passed in keeps
reading uncached, as with the reference (its writes still invalidate, which
the reference did not do). See docs/migration.md for the differences.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any

from .plugin import Registration, register

#: Set while a call goes through a CacheClient; reads are cached only then.
_through_cache: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ddbcache_through_cache_client", default=False
)

_TTL_KEYS = ("item", "query", "scan", "item_negative")


class CacheClient:
    """A DynamoDB client with read-through caching (the reference shim's interface).

    Args:
        dynamodb_client: a boto3 / botocore DynamoDB client; it keeps working uncached.
        redis_client: a ``redis.Redis`` client (or ``RedisCluster``, or a URL).
        ttl: default TTL of entries in seconds.
        ttl_config: TTLs per kind: ``item``, ``query``, ``scan``, ``item_negative``.
        namespace: prefix of every Redis key.
    """

    def __init__(
        self,
        dynamodb_client: Any,
        redis_client: Any,
        ttl: int = 60 * 60,
        ttl_config: dict[str, int] | None = None,
        namespace: str = "CC",
    ) -> None:
        _validate_like_the_reference(ttl, ttl_config)
        self.dynamodb_client = dynamodb_client
        """The client passed in (it keeps reading uncached)."""
        self.ttl = ttl
        """The default TTL passed in (seconds)."""
        self.namespace = namespace
        """The key prefix passed in."""
        self._registration: Registration = register(
            dynamodb_client,
            redis_client,
            ttl=ttl,
            ttl_config=ttl_config,
            namespace=namespace,
            # The reference's documented behaviour: Query/Scan pages live out their TTL.
            query_invalidation="ttl",
            # The reference's hits carry no ResponseMetadata.
            response_metadata="omit",
            # Writes only drop what they touched, as the reference's do, whatever the environment.
            write_through=False,
        )
        hooks = self._registration._clients.get(dynamodb_client)
        if hooks is not None:
            hooks.gate = _through_cache.get

    @property
    def registration(self) -> Registration:
        """The underlying registration: ``stats()``, ``invalidate()``, ``unregister()``…"""
        return self._registration

    def __getattr__(self, name: str) -> Any:
        if not hasattr(self.dynamodb_client, name):
            raise AttributeError(f"'CacheClient' object has no attribute '{name}'")
        value = getattr(self.dynamodb_client, name)
        if name == "get_paginator":
            return _gated_paginator(value)
        if callable(value) and not isinstance(value, type):
            return _gated(value)
        return value


def _gated(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        token = _through_cache.set(True)
        try:
            return method(*args, **kwargs)
        finally:
            _through_cache.reset(token)

    return call


def _gated_paginator(get_paginator: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(get_paginator)
    def make(operation_name: str) -> Any:
        return _Paginator(get_paginator(operation_name))

    return make


class _Paginator:
    """A paginator whose pages are read through the cache."""

    def __init__(self, paginator: Any) -> None:
        self._paginator = paginator

    def paginate(self, **kwargs: Any) -> _Pages:
        return _Pages(self._paginator.paginate(**kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._paginator, name)


class _Pages:
    def __init__(self, pages: Any) -> None:
        self._pages = pages

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self._pages)
        while True:
            token = _through_cache.set(True)
            try:
                page = next(iterator)
            except StopIteration:
                return
            finally:
                _through_cache.reset(token)
            yield page

    def build_full_result(self) -> Any:
        return _gated(self._pages.build_full_result)()

    def search(self, expression: str) -> Iterator[Any]:
        token = _through_cache.set(True)
        try:
            yield from self._pages.search(expression)
        finally:
            _through_cache.reset(token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pages, name)


def _validate_like_the_reference(ttl: Any, ttl_config: dict[str, Any] | None) -> None:
    """The reference's checks and messages, so that code catching them keeps working."""
    if not isinstance(ttl, int) or ttl <= 0:
        raise ValueError(f"Default ttl must be a positive integer: {ttl}")
    if ttl_config:
        unknown = set(ttl_config.keys()) - set(_TTL_KEYS)
        if unknown:
            raise ValueError(f"Unknown ttl_config keys: {unknown}")
    for kind in _TTL_KEYS:
        value = (ttl_config or {}).get(kind, ttl)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"ttl_{kind} must be a positive integer")
