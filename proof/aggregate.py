"""Per-contributor evidence over several audits, for cheats one audit cannot separate from noise.

A cheat that one audit catches with probability ``p`` is caught at least once in ``n`` independent
audits with probability ``1 - (1 - p)**n`` (:func:`audits_for_confidence`). A cheat that no single
audit catches may still shift a measure's average: averaged over a contributor's audits (as Gonka
and GRAIL aggregate per participant), the honest spread shrinks and the shift stands out.
:func:`audits_to_separate` measures that empirically from per-sample statistics: for ``n`` audits
the limit is the highest average of ``n`` honest samples seen in ``trials`` random draws (so no
honest draw fails it), and the detection rate is the share of draws of ``n`` cheat samples whose
average exceeds it. Pure functions of numbers, seeded, so a result can be reproduced.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


def audits_for_confidence(p: float, target: float = 0.99) -> int | None:
    """Fewest independent audits that catch a cheat caught with probability ``p`` per audit at
    least once with probability ``target``; None when ``p`` is 0 (never caught)."""
    if not 0.0 <= p <= 1.0 or not 0.0 < target < 1.0:
        raise ValueError("p must be in [0, 1] and target in (0, 1)")
    if p == 0.0:
        return None
    if p == 1.0:
        return 1
    return max(1, math.ceil(math.log(1.0 - target) / math.log(1.0 - p)))


@dataclass(frozen=True)
class Separation:
    """Audits needed for an average to separate a cheat from honest work."""

    audits: int | None  # fewest audits reaching ``target`` (None: not within ``max_audits``)
    limit: float  # the honest limit at that many audits (or at max_audits)
    detection: float  # share of cheat draws above the limit there
    target: float


def _mean_of_draw(values: Sequence[float], n: int, rng: random.Random) -> float:
    return sum(rng.choice(values) for _ in range(n)) / n


def audits_to_separate(
    honest: Sequence[float],
    cheat: Sequence[float],
    *,
    target: float = 0.99,
    max_audits: int = 64,
    trials: int = 2000,
    seed: int = 0,
) -> Separation:
    """Fewest audits ``n`` whose average of a per-sample statistic (higher = more suspicious)
    flags a cheat in ``target`` of draws, with the limit above every honest draw's average."""
    if not honest or not cheat:
        raise ValueError("need honest and cheat samples")
    if max_audits < 1 or trials < 1:
        raise ValueError("max_audits and trials must be >= 1")
    rng = random.Random(seed)
    limit = detection = 0.0
    for n in range(1, max_audits + 1):
        limit = max(_mean_of_draw(honest, n, rng) for _ in range(trials))
        caught = sum(_mean_of_draw(cheat, n, rng) > limit for _ in range(trials))
        detection = caught / trials
        if detection >= target:
            return Separation(n, limit, detection, target)
    return Separation(None, limit, detection, target)
