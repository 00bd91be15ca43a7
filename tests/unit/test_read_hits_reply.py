"""The hit script's one-string reply, parsed (store.parse_hits)."""

from __future__ import annotations

import pytest

from ddbcache_hooks.store import MalformedReply, parse_hits


def test_a_reply_with_every_part_is_parsed_in_order() -> None:
    values = b"ITQTpart" + b"g/1" + b"e\n1" + b"g/2" + b"entry 2"
    reply = b"1800 5f3e 2 2 4 77 - - 3 3 3 7\n" + values
    hits = parse_hits(reply, 3, 1, 1)
    assert hits.server_ms == 1800 and hits.server_id == b"5f3e"
    assert hits.tokens == [(b"IT", b"QT")]
    assert hits.partitions == [(b"part", 77)]
    assert hits.entries == [None, (b"g/1", b"e\n1"), (b"g/2", b"entry 2")]


def test_nothing_found_is_a_header_alone() -> None:
    hits = parse_hits(b"5 - - - - -\n", 1, 1, 0)
    assert hits.tokens == [None] and hits.entries == [None] and hits.partitions == []


@pytest.mark.parametrize(
    "reply",
    [
        None,
        [b"1", b"2"],
        b"no newline",
        b"1 id - -\n",  # a header for fewer keys than were read
        b"1 id 2 2 - -\nITQTextra",  # values longer than the header says
        b"1 id 2 2 - -\nIT",  # shorter
        b"x id 2 2 - -\nITQT",  # not a number
    ],
)
def test_any_other_shape_is_a_malformed_reply(reply: object) -> None:
    with pytest.raises(MalformedReply, match="read_hits replied"):
        parse_hits(reply, 1, 1, 0)  # type: ignore[arg-type]
