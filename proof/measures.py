"""What a proof check measures, and the limits applied to it: plain data and pure functions.

The model process measures (TOPLOC chunk comparisons, per-token sampling shortfalls, how the
output ends); the decision that applies a network's limits to those numbers
(:mod:`flopnet.proof.policy`) runs in the daemon. Nothing here imports torch, so the daemon can
hold these records and take the decision outside the process that touches untrusted tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

NO_MATCH_ERROR = float(2**64)  # the reference's mantissa errors when no exponent matches

# Score units (logits / temperature + noise; plain logits when greedy). Must be calibrated per
# model and dtype and carried in the manifest; this default suits small models in bf16.
DEFAULT_TOLERANCE = 0.1


@dataclass(frozen=True)
class ChunkCheck:
    """One chunk's comparison of a proof with the verifier's own hidden states."""

    exp_mismatches: int
    mant_err_mean: float
    mant_err_median: float
    sign_mismatches: int


@dataclass(frozen=True)
class ToplocThresholds:
    """Acceptance limits; a chunk fails when a measure is strictly above its limit.

    The first three are the paper-era values of TOPLOC (fail on more than 38 of 128 exponent
    mismatches, a mean above 10 or a median above 8); calibrate them per model and hardware.
    ``max_sign_mismatches`` is ours: honest chunks show about 0 (only a stray point outside the
    prover's top-k whose random value happens to match the exponent can differ in sign), while a
    model with negated states shows about topk.

    ``mant_err_mean_baseline`` (ours, off by default) turns on a pooled check over a whole
    submission, see :func:`pooled_failure`: the honest average of ``mant_err_mean``, from
    calibration.
    """

    max_exp_mismatches: int = 38
    max_mant_err_mean: float = 10.0
    max_mant_err_median: float = 8.0
    max_sign_mismatches: int = 4
    mant_err_mean_baseline: float | None = None


def failing_chunks(
    checks: Sequence[ChunkCheck], thresholds: ToplocThresholds
) -> list[tuple[int, str]]:
    """Return (chunk index, reason) for each chunk over a threshold, value beside limit."""
    failures: list[tuple[int, str]] = []
    for index, check in enumerate(checks):
        reasons: list[str] = []
        if check.exp_mismatches > thresholds.max_exp_mismatches:
            reasons.append(
                f"exp_mismatches {check.exp_mismatches} > {thresholds.max_exp_mismatches}"
            )
        if check.mant_err_mean > thresholds.max_mant_err_mean:
            reasons.append(
                f"mant_err_mean {check.mant_err_mean:g} > {thresholds.max_mant_err_mean:g}"
            )
        if check.mant_err_median > thresholds.max_mant_err_median:
            reasons.append(
                f"mant_err_median {check.mant_err_median:g} > {thresholds.max_mant_err_median:g}"
            )
        if check.sign_mismatches > thresholds.max_sign_mismatches:
            reasons.append(
                f"sign_mismatches {check.sign_mismatches} > {thresholds.max_sign_mismatches}"
            )
        if reasons:
            failures.append((index, "; ".join(reasons)))
    return failures


def pooled_mant_err(
    checks: Sequence[ChunkCheck], thresholds: ToplocThresholds
) -> tuple[float, int, float] | None:
    """(average mant_err_mean, chunks averaged, limit) of the pooled check; None when off.

    A per-chunk limit must tolerate the noisiest honest chunk; a cheat that shifts every chunk a
    little (int8 weights, 1% weight noise) can stay under it chunk by chunk. Averaged over n
    chunks, honest noise shrinks like 1/sqrt(n) while such a shift does not, so the average must
    stay below ``baseline + (max_mant_err_mean - baseline) / sqrt(n)``: the per-chunk limit at
    n = 1, the same number of honest standard deviations above the honest mean for any n.
    Chunks without an exponent match (errors 2**64) fail on their own and are left out; the
    check is off without a baseline or with fewer than two chunks.
    """
    baseline = thresholds.mant_err_mean_baseline
    means = [c.mant_err_mean for c in checks if c.mant_err_mean < NO_MATCH_ERROR]
    if baseline is None or len(means) < 2:
        return None
    n = len(means)
    limit = baseline + (thresholds.max_mant_err_mean - baseline) / math.sqrt(n)
    return sum(means) / n, n, limit


def pooled_failure(checks: Sequence[ChunkCheck], thresholds: ToplocThresholds) -> str | None:
    """The reason the pooled check fails (value beside limit), or None; see pooled_mant_err."""
    pooled = pooled_mant_err(checks, thresholds)
    if pooled is None or pooled[0] <= pooled[2]:
        return None
    average, n, limit = pooled
    baseline = thresholds.mant_err_mean_baseline
    return (
        f"average mant_err_mean {average:.3g} over {n} chunks > {limit:.3g} "
        f"(baseline {baseline:g} + ({thresholds.max_mant_err_mean:g} - {baseline:g}) / sqrt({n}))"
    )


@dataclass(frozen=True)
class ReplayCheck:
    """Outcome of :func:`replay_sampling`: positions checked and those that fail."""

    checked: int
    mismatches: int
    mismatch_positions: tuple[int, ...]
    # Largest score shortfall (best candidate's score minus the token's) among the tokens that
    # passed: how close honest tokens came to the tolerance. What calibration measures.
    max_shortfall: float = 0.0

    @property
    def mismatch_rate(self) -> float:
        return self.mismatches / self.checked if self.checked else 0.0


def replay_check(
    shortfalls: Sequence[float], tolerance: float, *, start_position: int = 0
) -> ReplayCheck:
    """Apply a tolerance to per-token shortfalls from :func:`replay_shortfalls` (pure)."""
    bad = [i for i, s in enumerate(shortfalls) if not s <= tolerance]  # NaN and inf fail
    passing = [s for s in shortfalls if s <= tolerance]
    return ReplayCheck(
        checked=len(shortfalls),
        mismatches=len(bad),
        mismatch_positions=tuple(start_position + i for i in bad),
        max_shortfall=max(passing, default=0.0),
    )
