"""Threshold calibration: honest measurements → suggested thresholds, each with its margin.

Pure statistics; the honest generations that produce the measurements are run elsewhere
(``node/proof_calibration.py``, ``flopnet proof calibrate``). The rule per measure is

    suggested = max(floor, round_up(headroom * honest_worst + slack, step))

so a threshold sits well above everything honest seen (``headroom`` times the worst, plus a fixed
``slack`` for measures that are often exactly 0) yet as low as that allows, because every unit of
slack is room for a cheat. ``floor`` keeps a threshold meaningful when the honest worst is 0
(fp32 on one machine is bit-exact, but other hardware is not). The margin reported beside each
suggestion is ``suggested - honest_worst``. The pooled check's baseline (see
:func:`proof.toploc.pooled_mant_err`) is the exception: it is derived from the honest *average*,
and its margin is the smallest gap between an honest sample's average and its pooled limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from flopnet.proof.policy import ProofPolicy
from flopnet.proof.sampling import ReplayCheck
from flopnet.proof.tally import honest_rate_ceiling
from flopnet.proof.toploc import ChunkCheck, ToplocThresholds, pooled_mant_err

__all__ = [
    "RULES",
    "UNBOUNDED_TOLERANCE",
    "Calibration",
    "Rule",
    "Suggestion",
    "calibrate",
    "suggest_threshold",
]

_NO_MATCH = 2.0**63  # mantissa errors at or above this mean "no exponent matched"

UNBOUNDED_TOLERANCE = 1e9
"""A replay tolerance that never binds: replays measured with it expose the honest shortfalls."""


@dataclass(frozen=True)
class Rule:
    """How one threshold is derived from the honest worst value."""

    headroom: float
    slack: float
    step: float
    floor: float


RULES: dict[str, Rule] = {
    # Random forgeries land at 110-128 of 128, so even 2x honest + 2 leaves a wide gap.
    "max_exp_mismatches": Rule(headroom=2.0, slack=2.0, step=1.0, floor=4.0),
    "max_mant_err_mean": Rule(headroom=1.5, slack=0.1, step=0.05, floor=0.25),
    # Medians are whole numbers: +1 allows one step beyond the honest worst.
    "max_mant_err_median": Rule(headroom=1.0, slack=1.0, step=1.0, floor=1.0),
    # Honest chunks show 0-1 (a stray point outside the prover's top-k); negation shows ~topk.
    "max_sign_mismatches": Rule(headroom=2.0, slack=2.0, step=1.0, floor=4.0),
    # Score units: the honest worst shortfall of a sampled token below the best candidate.
    "replay_tolerance": Rule(headroom=3.0, slack=0.0, step=0.005, floor=0.02),
    # Fraction of tokens failing the replay at the suggested tolerance; 0 when honest had none.
    "max_replay_mismatch_fraction": Rule(headroom=2.0, slack=0.0, step=0.005, floor=0.0),
    # Applied to the honest *average* chunk mant_err_mean (the pooled check's centre).
    "mant_err_mean_baseline": Rule(headroom=1.5, slack=0.0, step=0.05, floor=0.05),
}


@dataclass(frozen=True)
class Suggestion:
    """One threshold: the honest data behind it, the suggestion, its margin, and the current one."""

    measure: str
    honest_worst: float
    honest_mean: float
    suggested: float
    margin: float
    current: float
    # Honest chunks (samples, for the replay and pooled measures) failing the current threshold.
    current_honest_failures: int


@dataclass(frozen=True)
class Calibration:
    """Suggested thresholds from ``chunks`` honest chunk checks and ``samples`` replays."""

    chunks: int
    samples: int
    tokens: int
    policy: ProofPolicy
    suggestions: tuple[Suggestion, ...]


def _round_up(value: float, step: float) -> float:
    # The small epsilon keeps exact multiples (0.3 / 0.05 = 5.999...) from rounding up a step.
    return round(math.ceil(value / step - 1e-9) * step, 6)


def suggest_threshold(measure: str, worst: float) -> float:
    """The threshold the calibration rule of ``measure`` gives for an honest worst value."""
    rule = RULES[measure]
    return max(rule.floor, _round_up(rule.headroom * worst + rule.slack, rule.step))


def calibrate(
    checks: Sequence[Sequence[ChunkCheck]],
    replays: Sequence[ReplayCheck],
    *,
    current: ProofPolicy,
    topk: int = 128,
) -> Calibration:
    """Suggest a :class:`ProofPolicy` from honest measurements, one entry per honest sample.

    ``checks[i]`` are sample i's chunk checks and ``replays[i]`` its replay, measured with a
    tolerance that does not bind (:data:`UNBOUNDED_TOLERANCE`), so that ``max_shortfall`` is the
    true honest worst. Chunks with no exponent match (mantissa errors 2**64) are honest failures
    no threshold can absorb: they are counted by ``current_honest_failures`` and left out of the
    mantissa statistics. The pooled check's baseline is 1.5x the honest average chunk
    ``mant_err_mean``, raised if needed until every honest sample passes the pooled check.
    """
    chunks = [c for sample in checks for c in sample]
    if not chunks or not replays or len(checks) != len(replays):
        raise ValueError("calibration needs honest chunks and one replay per honest sample")
    finite = [c for c in chunks if c.mant_err_mean < _NO_MATCH]
    values: dict[str, list[float]] = {
        "max_exp_mismatches": [float(c.exp_mismatches) for c in chunks],
        "max_mant_err_mean": [c.mant_err_mean for c in finite] or [0.0],
        "max_mant_err_median": [c.mant_err_median for c in finite] or [0.0],
        "max_sign_mismatches": [float(c.sign_mismatches) for c in chunks],
        "replay_tolerance": [r.max_shortfall for r in replays],
    }
    suggested = {m: suggest_threshold(m, max(v)) for m, v in values.items()}
    # Exponent mismatches beyond half the points mean the top-k sets barely overlap: never
    # suggest accepting that, however noisy the honest data.
    suggested["max_exp_mismatches"] = min(suggested["max_exp_mismatches"], float(topk // 2))
    # With a tolerance that does not bind, the mismatches left are tokens outside the top-p set
    # (or the vocabulary); the suggested tolerance is above every honest shortfall, so these are
    # exactly the honest mismatches it would leave.
    fractions = [r.mismatches / r.checked if r.checked else 0.0 for r in replays]
    values["max_replay_mismatch_fraction"] = fractions
    suggested["max_replay_mismatch_fraction"] = suggest_threshold(
        "max_replay_mismatch_fraction", max(fractions)
    )
    toploc = ToplocThresholds(
        max_exp_mismatches=int(suggested["max_exp_mismatches"]),
        max_mant_err_mean=suggested["max_mant_err_mean"],
        max_mant_err_median=suggested["max_mant_err_median"],
        max_sign_mismatches=int(suggested["max_sign_mismatches"]),
    )
    toploc = replace(toploc, mant_err_mean_baseline=_baseline(checks, values, toploc))

    t = current.toploc
    in_force = {
        "max_exp_mismatches": float(t.max_exp_mismatches),
        "max_mant_err_mean": t.max_mant_err_mean,
        "max_mant_err_median": t.max_mant_err_median,
        "max_sign_mismatches": float(t.max_sign_mismatches),
        "replay_tolerance": current.replay_tolerance,
        "max_replay_mismatch_fraction": current.max_replay_mismatch_fraction,
    }
    measured: dict[str, list[float]] = {
        "max_exp_mismatches": [float(c.exp_mismatches) for c in chunks],
        "max_mant_err_mean": [c.mant_err_mean for c in chunks],
        "max_mant_err_median": [c.mant_err_median for c in chunks],
        "max_sign_mismatches": [float(c.sign_mismatches) for c in chunks],
        "replay_tolerance": [r.max_shortfall for r in replays],
        "max_replay_mismatch_fraction": fractions,
    }
    suggestions = [
        Suggestion(
            measure=m,
            honest_worst=max(values[m]),
            honest_mean=sum(values[m]) / len(values[m]),
            suggested=suggested[m],
            margin=round(suggested[m] - max(values[m]), 6),
            current=in_force[m],
            current_honest_failures=sum(v > in_force[m] for v in measured[m]),
        )
        for m in RULES
        if m != "mant_err_mean_baseline"
    ]
    suggestions.append(_baseline_suggestion(checks, values, toploc, t))
    # The per-contributor tally is needed only where one audit allows impossible tokens. Its
    # rate is the ceiling of all honest replays as one row: the variations share prompts, so
    # their rows are not independent (proof.tally.honest_rate_ceiling); rounded up, never down.
    mismatches = sum(r.mismatches for r in replays)
    checked = sum(r.checked for r in replays)
    honest_rate = (
        math.ceil(honest_rate_ceiling([(mismatches, checked)]) * 1e6) / 1e6
        if suggested["max_replay_mismatch_fraction"] > 0 and checked > 0
        else 0.0
    )
    policy = ProofPolicy(
        toploc=toploc,
        max_replay_mismatch_fraction=suggested["max_replay_mismatch_fraction"],
        replay_tolerance=suggested["replay_tolerance"],
        honest_replay_rate=honest_rate,
    )
    return Calibration(
        chunks=len(chunks),
        samples=len(replays),
        tokens=sum(r.checked for r in replays),
        policy=policy,
        suggestions=tuple(suggestions),
    )


def _pooled_margins(checks: Sequence[Sequence[ChunkCheck]], t: ToplocThresholds) -> list[float]:
    """limit - average of the pooled check for each sample it applies to."""
    out = []
    for sample in checks:
        pooled = pooled_mant_err(sample, t)
        if pooled is not None:
            out.append(pooled[2] - pooled[0])
    return out


def _baseline(
    checks: Sequence[Sequence[ChunkCheck]], values: dict[str, list[float]], t: ToplocThresholds
) -> float:
    honest_mean = sum(values["max_mant_err_mean"]) / len(values["max_mant_err_mean"])
    baseline = suggest_threshold("mant_err_mean_baseline", honest_mean)
    step = RULES["mant_err_mean_baseline"].step
    # At baseline == max_mant_err_mean the pooled limit is the per-chunk one, which every honest
    # chunk meets, so this ends.
    while baseline < t.max_mant_err_mean and any(
        m < 0 for m in _pooled_margins(checks, replace(t, mant_err_mean_baseline=baseline))
    ):
        baseline = min(t.max_mant_err_mean, _round_up(baseline + step, step))
    return baseline


def _baseline_suggestion(
    checks: Sequence[Sequence[ChunkCheck]],
    values: dict[str, list[float]],
    suggested: ToplocThresholds,
    current: ToplocThresholds,
) -> Suggestion:
    """The pooled check: worst honest sample average, and its smallest margin to the limit."""
    averages = []
    for sample in checks:
        means = [c.mant_err_mean for c in sample if c.mant_err_mean < _NO_MATCH]
        if len(means) >= 2:
            averages.append(sum(means) / len(means))
    margins = _pooled_margins(checks, suggested)
    current_fails = sum(m < 0 for m in _pooled_margins(checks, current))
    honest = values["max_mant_err_mean"]
    base = suggested.mant_err_mean_baseline
    assert base is not None
    now = current.mant_err_mean_baseline
    return Suggestion(
        measure="mant_err_mean_baseline",
        honest_worst=max(averages, default=0.0),
        honest_mean=sum(honest) / len(honest),
        suggested=base,
        margin=round(min(margins, default=math.inf), 6),
        current=math.nan if now is None else now,  # nan: the pooled check is off
        current_honest_failures=current_fails,
    )
