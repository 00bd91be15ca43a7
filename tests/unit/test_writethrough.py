"""Write-through images: numbers, sets and binary as DynamoDB returns them.

DynamoDB's documented number rules (Developer Guide, "Supported data types",
Number): numbers are variable length, leading and trailing zeroes are trimmed;
up to 38 digits of precision; positive values from 1E-130 to
9.9999999999999999999999999999999999999E+125, negative ones mirrored; a
response carries a number as a string without exponent.

Every case below was also run against dynalite 4.0.0 (an independent DynamoDB
implementation; moto returns numbers as sent): PutItem, then a consistent
GetItem. It returned exactly these strings, and rejected exactly these
inputs (it rejects "+5" too, which is why a leading "+" is not rendered).
"""

from __future__ import annotations

from typing import Any

import pytest

from ddbcache_hooks.effects import Call, RedisBatch
from ddbcache_hooks.writethrough import (
    NotRenderable,
    canonical_item,
    canonical_number,
    canonical_value,
    with_calls,
)


@pytest.mark.parametrize(
    ("sent", "returned"),
    [
        ("1.50", "1.5"),
        ("0100", "100"),
        ("100", "100"),
        ("0", "0"),
        ("-0", "0"),
        ("0.000", "0"),
        ("-1.0", "-1"),
        ("1E+2", "100"),
        ("1e2", "100"),
        ("1.5E1", "15"),
        ("123E-2", "1.23"),
        ("1E-5", "0.00001"),
        ("-2.50E-3", "-0.0025"),
        ("-.5e+3", "-500"),
        ("5E-1", "0.5"),
        ("-1E-130", "-0." + "0" * 129 + "1"),
        (".5", "0.5"),
        ("5.", "5"),
        ("000.00100", "0.001"),
        ("1E+125", "1" + "0" * 125),
        ("1E-130", "0." + "0" * 129 + "1"),
        (
            "9.9999999999999999999999999999999999999E+125",
            "99999999999999999999999999999999999999" + "0" * 88,
        ),
        ("12345678901234567890123456789012345678", "12345678901234567890123456789012345678"),
        # trailing zeros are not significant digits: 38 digits then zeros
        (
            "123456789012345678901234567890123456780000",
            "123456789012345678901234567890123456780000",
        ),
        ("0.12345678901234567890123456789012345678", "0.12345678901234567890123456789012345678"),
    ],
)
def test_numbers_as_dynamodb_returns_them(sent: str, returned: str) -> None:
    assert canonical_number(sent) == returned


@pytest.mark.parametrize(
    "sent",
    [
        "123456789012345678901234567890123456789",  # 39 significant digits
        "1.23456789012345678901234567890123456789",
        "1E+126",  # above the largest magnitude
        "1E-131",  # below the smallest
        "-1E+126",
        "NaN",
        "Infinity",
        "-inf",
        "1_000",  # Python's Decimal takes it; DynamoDB does not
        " 1",
        "1 ",
        "",
        "0x10",
        "1e",
        ".",
        "--1",
        "+5",  # dynalite rejects it; not stored, whatever DynamoDB does with it
    ],
)
def test_numbers_outside_the_rules_are_not_rendered(sent: str) -> None:
    with pytest.raises(NotRenderable):
        canonical_number(sent)


def test_not_a_string_is_not_a_number() -> None:
    with pytest.raises(NotRenderable):
        canonical_number(1.5)


def test_item_every_type() -> None:
    item = {
        "s": {"S": ""},
        "n": {"N": "01.10"},
        "b": {"B": bytearray(b"\x00\xff")},
        "bs": {"B": "text"},
        "t": {"BOOL": True},
        "z": {"NULL": True},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1.0", "2E1"]},
        "bset": {"BS": [b"a", bytearray(b"b")]},
        "l": {"L": [{"N": "3.00"}, {"M": {"x": {"NS": ["0100"]}}}]},
        "m": {"M": {"deep": {"L": []}}},
    }
    assert canonical_item(item) == {
        "s": {"S": ""},
        "n": {"N": "1.1"},
        "b": {"B": b"\x00\xff"},
        "bs": {"B": b"text"},
        "t": {"BOOL": True},
        "z": {"NULL": True},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "20"]},
        "bset": {"BS": [b"a", b"b"]},
        "l": {"L": [{"N": "3"}, {"M": {"x": {"NS": ["100"]}}}]},
        "m": {"M": {"deep": {"L": []}}},
    }


@pytest.mark.parametrize(
    "value",
    [
        {"NS": ["1", "1.0"]},  # one number twice: DynamoDB rejects the set
        {"NS": []},
        {"SS": ["a", 1]},
        {"S": 1},
        {"BOOL": "true"},
        {"NULL": False},
        {"X": "?"},
        {"S": "a", "N": "1"},
        {"B": 12},
        "plain",
    ],
)
def test_values_that_cannot_be_rendered(value: Any) -> None:
    with pytest.raises(NotRenderable):
        canonical_value(value)


def test_extra_calls_ride_in_the_steps_batch() -> None:
    first, last = Call(None, ("GET", "a")), Call(None, ("GET", "z"))

    def step() -> Any:
        replies = yield RedisBatch([Call(None, ("GET", "m"))])
        return replies

    op = with_calls(step(), [first], [last])
    batch = next(op)
    assert [c.args[1] for c in batch.calls] == ["a", "m", "z"]
    with pytest.raises(StopIteration) as done:
        op.send([1, 2, 3])
    assert done.value.value == ([2], [1])


def test_extra_calls_alone_when_the_step_sends_nothing() -> None:
    def step() -> Any:
        return "nothing"
        yield  # pragma: no cover

    op = with_calls(step(), [Call(None, ("GET", "a"))], [])
    assert [c.args[1] for c in next(op).calls] == ["a"]
    with pytest.raises(StopIteration) as done:
        op.send(["x"])
    assert done.value.value == ("nothing", ["x"])
