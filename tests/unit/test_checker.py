"""The staleness checker itself: it must find real stale reads and never cry wolf."""

from __future__ import annotations

from tests.checker import CONSISTENT, DELETED, Record, find_reordered, find_stale


def write(value: str | None, invoked: int, completed: int, certain: bool = True) -> Record:
    return Record("write", "k", value, invoked, completed, "PutItem", certain)


def read(value: str | None, invoked: int, completed: int, certain: bool = True) -> Record:
    return Record("read", "k", value, invoked, completed, "GetItem", certain)


def test_reports_a_read_of_a_value_a_completed_write_replaced() -> None:
    old, new = write("old", 10, 20), write("new", 30, 40)
    stale = read("old", 50, 60)
    (found,) = find_stale([old, new, stale], {})
    assert found.read == stale and found.newer == new


def test_overlapping_writes_and_reads_are_not_stale() -> None:
    old, new = write("old", 10, 20), write("new", 30, 40)
    assert not find_stale([old, new, read("old", 35, 60)], {})  # began before new completed
    concurrent = write("other", 15, 35)  # overlaps both: unordered with them
    assert not find_stale([old, concurrent, read("other", 50, 60)], {})


def test_an_uncertain_write_never_proves_a_read_stale() -> None:
    """A PartiQL UPDATE that may have done nothing: reading the older value is fine."""
    old = write("old", 10, 20)
    maybe = write("maybe", 30, 40, certain=False)
    assert not find_stale([old, maybe, read("old", 50, 60)], {})
    # ... but it may be the source of a read, and a certain write after it still counts.
    after = write("new", 70, 80)
    assert not find_stale([old, maybe, read("maybe", 50, 60)], {})
    (found,) = find_stale([old, maybe, after, read("maybe", 90, 95)], {})
    assert found.newer == after


def test_an_uncertain_read_is_not_judged() -> None:
    old, new = write("old", 10, 20), write("new", 30, 40)
    assert not find_stale([old, new, read("old", 50, 60, certain=False)], {})


def test_absent_items_and_the_initial_value() -> None:
    deleted, again = write(DELETED, 10, 20), write("back", 30, 40)
    (found,) = find_stale([deleted, again, read(DELETED, 50, 60)], {})
    assert found.newer == again
    assert find_stale([write("new", 10, 20), read("initial", 30, 40)], {"k": "initial"})
    assert not find_stale([read("initial", 30, 40)], {"k": "initial"})


def consistent(value: str | None, invoked: int, completed: int) -> Record:
    return Record("read", "k", value, invoked, completed, CONSISTENT)


def test_reordered_writes_are_found_through_a_consistent_read() -> None:
    """Two overlapping writes; DynamoDB kept "a" (a consistent read saw it after both
    returned), and a later read still returns "b": stale, though the writes overlap."""
    a, b = write("a", 10, 40), write("b", 15, 35)
    saw_a = consistent("a", 50, 55)
    later = read("b", 60, 65)
    assert not find_stale([a, b, saw_a, later], {})
    (found,) = find_reordered([a, b, saw_a, later], {})
    assert found.read == later and found.newer == a


def test_reordered_rule_does_not_cry_wolf() -> None:
    a, b = write("a", 10, 40), write("b", 15, 35)
    # The read began before the consistent read completed.
    assert not find_reordered([a, b, consistent("a", 50, 55), read("b", 52, 65)], {})
    # The value read may have been written after the consistent read began.
    c = write("c", 45, 70)
    assert not find_reordered([a, c, consistent("a", 50, 55), read("c", 60, 65)], {})
    # The write the consistent read saw had not returned when the read began.
    slow = write("a", 10, 80)
    assert not find_reordered([slow, b, consistent("a", 50, 55), read("b", 60, 65)], {})
    # Same value: nothing to judge.
    assert not find_reordered([a, b, consistent("a", 50, 55), read("a", 60, 65)], {})
