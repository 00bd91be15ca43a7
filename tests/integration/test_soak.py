"""The soak run's short form (bench/soak.py): counts only, no timing assertions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_run_has_no_stale_read_exception_or_hang() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env = {name: value for name, value in env.items() if not name.startswith("DDBCACHE_")}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "soak.py"),
            "--seconds-per-fault",
            "3",
            "--processes",
            "2",
            "--threads",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    print(out.stdout)
    rows = {
        line.split("|")[0].strip(): [cell.strip() for cell in line.split("|")[1:]]
        for line in out.stdout.splitlines()
        if "|" in line and not line.startswith(("fault", "-"))
    }
    assert set(rows) == {
        "none",
        "client-pause",
        "full-noeviction",
        "full-allkeys-lru",
        "kill-restart",
        "replica-behind-endpoint",
        "failover-promotion",
    }, out.stdout + out.stderr[-2000:]
    for fault, (reads, writes, outside, _, exceptions, hangs, *_) in rows.items():
        assert int(reads) > 0 and int(writes) > 0, fault
        assert (outside, exceptions, hangs) == ("0", "0", "0"), (fault, out.stdout)
    assert out.returncode == 0, out.stderr[-2000:]
