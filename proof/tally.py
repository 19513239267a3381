"""The per-contributor replay tally: impossible tokens counted over a contributor's recent audits.

One audit allows a few tokens the validator's sampler could not have drawn
(``max_replay_mismatch_fraction``): bf16 noise moves a nucleus boundary or flips an expert choice
now and then, and one honest sample must not be punished for it. A cheat that leaves only one
or a few such tokens per sample (a wider or narrower top-p, a fake end of sequence, one injected
token) hides under that allowance in a single audit. Over many audits it does not: honest work
produces impossible tokens at a small, calibrated rate, the cheat at a higher one.

The rule (as Gonka and GRAIL decide per participant, not per sample): keep the replay counts of
a contributor's last :data:`TALLY_WINDOW` audits; with ``tokens`` checked and ``mismatches``
impossible tokens in them, fail when a Poisson count at the honest ceiling rate
(``honest_replay_rate``, a per-model manifest parameter: the calibration's one-sided 99.9 %
upper bound of the worst honest variation's rate) would reach ``mismatches`` with probability
below :data:`TALLY_SIGNIFICANCE`. The significance is small enough that testing after every audit
for a contributor's whole life (a union bound over 10^5 audits) keeps an honest contributor's
chance of a false punishment below 10^-4, before counting that the rate is an upper bound.

Pure functions of numbers; the validator keeps the windows (durably, beside its verdicts).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TALLY_WINDOW = 32  # audits: long enough to separate, short enough that honest history cannot dilute
TALLY_SIGNIFICANCE = 1e-9


@dataclass(frozen=True)
class ReplayTally:
    """Replay counts summed over audits: tokens checked and tokens that could not be sampled."""

    audits: int = 0
    tokens: int = 0
    mismatches: int = 0

    def __post_init__(self) -> None:
        if min(self.audits, self.tokens, self.mismatches) < 0 or self.mismatches > self.tokens:
            raise ValueError(f"impossible replay tally {self}")

    def plus(self, tokens: int, mismatches: int) -> ReplayTally:
        """The tally with one more audit's counts."""
        return ReplayTally(self.audits + 1, self.tokens + tokens, self.mismatches + mismatches)

    @classmethod
    def of(cls, audits: Iterable[tuple[int, int]]) -> ReplayTally:
        """The tally of (tokens, mismatches) per audit."""
        tally = cls()
        for tokens, mismatches in audits:
            tally = tally.plus(tokens, mismatches)
        return tally


def poisson_tail(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam), accurate far into the tail (no 1 - CDF cancellation)."""
    if k <= 0:
        return 1.0
    if lam <= 0.0:
        return 0.0
    if k <= lam:  # the tail holds half the mass or more: one minus the (short) head is exact
        head, log_term = 0.0, -lam
        for i in range(k):
            head += math.exp(log_term)
            log_term += math.log(lam) - math.log(i + 1)
        return max(0.0, 1.0 - head)
    # Sum the terms from k upward in log space; they fall geometrically (k > lam).
    log_term = k * math.log(lam) - lam - math.lgamma(k + 1)
    total = 0.0
    i = k
    while True:
        term = math.exp(log_term)
        total += term
        if term <= total * 1e-17:  # also ends an underflowed (all-zero) sum
            return min(1.0, total)
        i += 1
        log_term += math.log(lam) - math.log(i)


def tally_p_value(tally: ReplayTally, honest_rate: float) -> float:
    """How likely honest work at ``honest_rate`` impossible tokens per token is to produce at
    least the tally's mismatches in its tokens."""
    return poisson_tail(tally.mismatches, honest_rate * tally.tokens)


def tally_failure(
    tally: ReplayTally, honest_rate: float, significance: float = TALLY_SIGNIFICANCE
) -> str | None:
    """Why the tally condemns the contributor (value beside limit), or None; off at rate 0."""
    if honest_rate <= 0.0 or tally.mismatches == 0:
        return None
    p = tally_p_value(tally, honest_rate)
    if p >= significance:
        return None
    return (
        f"{tally.mismatches} of {tally.tokens} tokens could not have been sampled over the "
        f"contributor's last {tally.audits} audit(s); honest work at the calibrated rate "
        f"{honest_rate:g} per token reaches that with probability {p:.2g} (< {significance:g})"
    )


def rate_upper_bound(mismatches: int, tokens: int, confidence: float = 0.999) -> float:
    """One-sided upper confidence bound of a per-token rate from ``mismatches`` in ``tokens``
    (the exact Poisson bound): what calibration sets ``honest_replay_rate`` from."""
    if tokens <= 0 or mismatches < 0 or not 0.0 < confidence < 1.0:
        raise ValueError("need tokens > 0, mismatches >= 0 and confidence in (0, 1)")
    # The lam at which P(X <= mismatches) = 1 - confidence, by bisection (monotone in lam).
    low, high = 0.0, float(mismatches) + 10.0 * math.sqrt(mismatches + 1.0) + 20.0
    for _ in range(200):
        mid = (low + high) / 2.0
        below = 1.0 - poisson_tail(mismatches + 1, mid)
        if below > 1.0 - confidence:
            low = mid
        else:
            high = mid
    return high / tokens


def honest_rate_ceiling(rows: Sequence[tuple[int, int]], confidence: float = 0.999) -> float:
    """The ``honest_replay_rate`` that honest measurements support: rows are (mismatches,
    tokens) of honest variations, each over its own prompts (of variations that share prompts,
    pass the worst: their impossible tokens are the same near-ties). The larger of the pooled
    rate's upper confidence bound and twice the worst row's rate, so that a variation measured
    on few tokens still sits well inside the ceiling."""
    if not rows:
        raise ValueError("need honest rows")
    pooled = rate_upper_bound(sum(m for m, _ in rows), sum(n for _, n in rows), confidence)
    return max(pooled, 2.0 * max(m / n for m, n in rows if n > 0))


def first_punishments(
    samples: Sequence[tuple[bool, int, int]],
    honest_rate: float,
    *,
    audits: int = TALLY_WINDOW,
    trials: int = 1000,
    seed: int = 0,
) -> list[int | None]:
    """The validator's decision over one contributor's audits, simulated: ``trials`` runs of
    ``audits`` audits drawn from ``samples`` ((passes its own checks, tokens replayed,
    impossible tokens) per audited sample), each judged as the validator judges (its own
    checks, then the tally over a :class:`ReplayBook`); for each run, the audit at which the
    contributor is first punished, or None. Seeded, so a result can be reproduced."""
    if not samples or audits < 1 or trials < 1:
        raise ValueError("need samples, audits >= 1 and trials >= 1")
    rng = random.Random(seed)
    firsts: list[int | None] = []
    for _ in range(trials):
        book, first = ReplayBook(honest_rate), None
        for n in range(1, audits + 1):
            passes, tokens, mismatches = rng.choice(samples)
            history = book.history(b"")
            tally = None if history is None else history.plus(tokens, mismatches)
            if not passes or (tally is not None and tally_failure(tally, honest_rate) is not None):
                first = n
                break
            book.record(b"", tokens, mismatches, True)
        firsts.append(first)
    return firsts


def audits_to_flag(firsts: Sequence[int | None], target: float = 0.99) -> int | None:
    """Fewest audits by which ``target`` of the runs were punished (:func:`first_punishments`)."""
    if not firsts:
        raise ValueError("need runs")
    flagged = sorted(n for n in firsts if n is not None)
    needed = math.ceil(target * len(firsts))
    return flagged[needed - 1] if len(flagged) >= needed else None


class ReplayBook:
    """A validator's replay windows of its contributors, in memory (the validator stores each
    change durably beside the audit's verdict and rebuilds the book from them at start)."""

    def __init__(
        self,
        honest_rate: float,
        windows: dict[bytes, list[tuple[int, int]]] | None = None,
        window: int = TALLY_WINDOW,
    ) -> None:
        if window < 1:
            raise ValueError("the tally window must hold at least one audit")
        self.honest_rate = honest_rate
        self.window = window
        self._windows = {who: list(w[-window:]) for who, w in (windows or {}).items()}

    def history(self, contributor: bytes) -> ReplayTally | None:
        """The tally of the contributor's kept audits, for the next decision; None when the
        policy keeps no tally (the next audit then leaves room for one more in the window)."""
        if self.honest_rate <= 0.0:
            return None
        kept = self._windows.get(contributor, [])
        return ReplayTally.of(kept[max(0, len(kept) - self.window + 1) :])

    def record(self, contributor: bytes, tokens: int, mismatches: int, passed: bool) -> None:
        """One audit's result: a pass keeps its counts, a failure (punished) starts afresh."""
        if not passed:
            self._windows.pop(contributor, None)
            return
        kept = self._windows.setdefault(contributor, [])
        kept.append((tokens, mismatches))
        del kept[: -self.window]
