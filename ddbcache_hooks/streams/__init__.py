"""Invalidation from DynamoDB Streams, for writes made outside registered clients.

* :func:`handler` — an AWS Lambda function on a DynamoDB Streams event source
  (``ddbcache_hooks.streams.handler``);
* :class:`Consumer` — a long-running consumer (``ddbcache streams --table T``).

Both apply a stream record exactly as the write path applies a write made
through a registered client. See docs/streams.md.
"""

from __future__ import annotations

from .consumer import Consumer
from .lambda_handler import handler

__all__ = ["Consumer", "handler"]
