"""The I/O a cache decision needs, as values.

The consistency protocol (``protocol.py``) and the Redis operations
(``store.py``) are written once, as generators that *yield* these effects and
receive their results. A small driver carries them out: blocking for botocore
(``handlers.drive``), awaiting for aiobotocore (``handlers.drive_async``). That is how the sync
and async paths share every decision without sharing a line of I/O code.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, NamedTuple, TypeVar

from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    ResponseError,
    TryAgainError,
)

T = TypeVar("T")


class Script(NamedTuple):
    """A Lua script, sent by SHA and loaded again when the server lost it."""

    name: str
    source: str
    sha: str


class Call(NamedTuple):
    """One Redis command of a batch: a script call (``script`` set) or a plain command."""

    script: Script | None
    args: tuple[Any, ...]
    #: For scripts: how many of ``args`` are keys. For commands: unused.
    numkeys: int = 0
    #: On a cluster, a key whose node a keyless command (``TIME``) goes to.
    route: str = ""

    @property
    def first_key(self) -> str:
        if self.route:
            return self.route
        return str(self.args[0] if self.script else self.args[1])


class RedisBatch(NamedTuple):
    """Commands sent together: one round trip (one per node, in parallel, on a cluster)."""

    calls: Sequence[Call]
    #: Error replies come back as values (a peek's plain reads, a batch's hit read:
    #: a key of another type is not an outage) instead of failing the batch.
    errors_as_values: bool = False


class Sleep(NamedTuple):
    seconds: float


class DescribeTable(NamedTuple):
    """Fetch a table's key schema with the calling DynamoDB client; result may be None."""

    table: str


#: Errors a slot in migration answers (``MIGRATING`` / ``IMPORTING``): not an outage.
#: A script whose key exists on the source runs there, and once it deleted the key
#: it may not create it again; keys in flight answer ASK, split multi-key calls
#: TRYAGAIN. Each is sent again, alone, to the node the cluster client now names.
NON_LOCAL_KEY = "non local key"


def migrating(reply: Any) -> bool:
    """An error reply that a slot in migration explains (see :data:`NON_LOCAL_KEY`).

    Also redis-py's ``ClusterError`` ("TTL exhausted": it followed redirections, or
    waited out ``TRYAGAIN``, as often as it allows), which only a slot in flux
    causes; not ``ClusterDownError``, its subclass for a cluster that is down.
    """
    if isinstance(reply, (AskError, TryAgainError)):
        return True
    if isinstance(reply, ClusterError) and not isinstance(reply, ClusterDownError):
        return True
    return isinstance(reply, ResponseError) and NON_LOCAL_KEY in str(reply)


Effect = RedisBatch | Sleep | DescribeTable
Op = Generator[Effect, Any, T]
