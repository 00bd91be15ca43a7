"""An invalidation whose scripts Redis refuses falls back to plain ``DEL`` (store.py)."""

from __future__ import annotations

import pytest
from redis.exceptions import OutOfMemoryError, ReadOnlyError

from ddbcache_hooks import store
from ddbcache_hooks.effects import RedisBatch
from ddbcache_hooks.scripts import INVALIDATE_ITEMS, REPLACE_TOKENS


def test_refused_scripts_are_replaced_by_deletes() -> None:
    op = store.invalidate(["item"], 0, [("tokens", True)], 1000)
    batch = next(op)
    assert isinstance(batch, RedisBatch) and batch.errors_as_values
    assert [call.script for call in batch.calls] == [INVALIDATE_ITEMS, REPLACE_TOKENS]
    fallback = op.send([OutOfMemoryError("full"), ReadOnlyError("replica")])
    assert [call.args for call in fallback.calls] == [("DEL", "item"), ("DEL", "tokens")]
    with pytest.raises(StopIteration) as done:
        op.send([1, 1])
    assert done.value.value == []


def test_a_refused_delete_raises_the_refusal() -> None:
    op = store.invalidate(["item"], 0)
    next(op)
    op.send([ReadOnlyError("replica")])
    with pytest.raises(ReadOnlyError):
        op.send([ReadOnlyError("replica")])


def test_a_refused_generation_check_drops_the_table() -> None:
    op = store.invalidate([], 0, generations=[("tokens", "schema", b"g1")])
    next(op)
    fallback = op.send([OutOfMemoryError("full")])
    assert [call.args for call in fallback.calls] == [("DEL", "tokens", "schema")]
    with pytest.raises(StopIteration) as done:
        op.send([2])
    assert done.value.value == ["tokens"]
