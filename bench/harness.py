"""A tiny benchmark harness: interleaved rounds, medians, p99, ratios from one run.

The machine is shared and noisy, so absolute numbers drift between runs; what
is compared is always measured in the same run, in alternating rounds, and
reported as a ratio.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class Series:
    name: str
    samples_ns: list[int] = field(default_factory=list)

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples_ns) / 1000

    @property
    def p99_us(self) -> float:
        ordered = sorted(self.samples_ns)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000


def measure(
    cases: dict[str, Callable[[], object]],
    *,
    rounds: int = 20,
    per_round: int = 50,
    warmup: int = 20,
) -> dict[str, Series]:
    """Time each case ``rounds * per_round`` times, alternating cases round by round."""
    series = {name: Series(name) for name in cases}
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for name, fn in cases.items():
            samples = series[name].samples_ns
            for _ in range(per_round):
                started = clock()
                fn()
                samples.append(clock() - started)
    return series


def table(rows: Iterable[tuple[str, ...]], headers: tuple[str, ...]) -> str:
    rows = [headers, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]} ({platform.python_implementation()})"
    )
