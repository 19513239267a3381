"""A role's counters as the local API shows them (plain JSON values, seconds to the millisecond)."""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Seconds: from a fast prefill of a tiny model to a long generation of a large one.
TIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def counters(stats: Any, **extra: object) -> dict[str, object]:
    """Every field of a role's stats dataclass, floats rounded, plus ``extra`` values."""
    out: dict[str, object] = {
        name: round(value, 3) if isinstance(value, float) else value
        for name, value in dataclasses.asdict(stats).items()
    }
    out.update(extra)
    return out


@dataclass
class Histogram:
    """Observations counted into cumulative-ready buckets (Prometheus' shape, no dependency):
    ``counts[i]`` observations <= ``buckets[i]``, the last one past every bucket."""

    buckets: tuple[float, ...] = TIME_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), ending with +Inf."""
        out, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class Timings:
    """Named histograms of a role's timings (seconds)."""

    def __init__(self) -> None:
        self.histograms: dict[str, Histogram] = {}

    def observe(self, name: str, seconds: float) -> None:
        self.histograms.setdefault(name, Histogram()).observe(seconds)
