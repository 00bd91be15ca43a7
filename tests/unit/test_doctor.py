"""What ``ddbcache doctor`` says about a server's memory and persistence settings."""

from __future__ import annotations

from typing import Any

import pytest

from ddbcache_hooks import doctor


class Info:
    """A client whose INFO answers what a test says."""

    def __init__(self, **sections: dict[str, Any]) -> None:
        self.sections = sections

    def info(self, section: str) -> dict[str, Any]:
        return self.sections[section]


@pytest.mark.parametrize(
    ("policy", "meaning"),
    [
        ("noeviction", "misses are not cached, while hits and invalidations go on"),
        ("allkeys-lru", "fine for a cache"),
        ("volatile-ttl", "closest to expiry are evicted first"),
        ("something-new", "does not know"),
    ],
)
def test_memory_says_what_the_policy_means(policy: str, meaning: str) -> None:
    client = Info(memory={"maxmemory": 2 << 30, "maxmemory_policy": policy, "used_memory": 3 << 20})
    said = doctor.memory(client)
    assert said.startswith("3.0 MiB used of 2.0 GiB, maxmemory-policy " + policy)
    assert meaning in said


def test_memory_without_a_limit() -> None:
    client = Info(memory={"maxmemory": 0, "maxmemory_policy": "noeviction", "used_memory": 10})
    assert "no maxmemory: the server grows" in doctor.memory(client)


def test_persistence() -> None:
    client = Info(
        persistence={"aof_enabled": 1, "rdb_last_save_time": 0, "rdb_changes_since_last_save": 3}
    )
    assert doctor.persistence(client).startswith("AOF on, no RDB snapshot since")
    client = Info(
        persistence={
            "aof_enabled": 0,
            "rdb_saves": 2,
            "rdb_last_save_time": 86400,
            "rdb_changes_since_last_save": 3,
        }
    )
    said = doctor.persistence(client)
    assert said.startswith("AOF off, last RDB snapshot 1970-01-02 00:00:00 UTC, 3 changes since")
