"""The proof decision: TOPLOC chunk checks and sampling replay → pass or fail, with reasons.

A pure function of data, so the rule a validator applies can be tested and audited without a model.
Every reason names the measured value beside its threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proof.sampling import ReplayCheck
from proof.toploc import ChunkCheck, ToplocThresholds, failing_chunks


@dataclass(frozen=True)
class ProofPolicy:
    """Thresholds from the network parameters."""

    toploc: ToplocThresholds
    max_replay_mismatch_fraction: float = 0.05


@dataclass(frozen=True)
class ProofDecision:
    passed: bool
    reasons: tuple[str, ...]


def decide(checks: Sequence[ChunkCheck], replay: ReplayCheck, policy: ProofPolicy) -> ProofDecision:
    """Fail if any TOPLOC chunk is outside its thresholds or too many tokens fail the replay."""
    reasons: list[str] = []
    for index, why in failing_chunks(checks, policy.toploc):
        reasons.append(f"toploc chunk {index}: {why}")
    if replay.checked:
        fraction = replay.mismatches / replay.checked
        if fraction > policy.max_replay_mismatch_fraction:
            reasons.append(
                f"sampling replay: {replay.mismatches}/{replay.checked} tokens could not have "
                f"been sampled ({fraction:.3f} > {policy.max_replay_mismatch_fraction})"
            )
    if reasons:
        return ProofDecision(False, tuple(reasons))
    worst = max((c.exp_mismatches for c in checks), default=0)
    return ProofDecision(
        True,
        (
            f"toploc: {len(checks)} chunk(s) pass, worst {worst} exponent mismatches "
            f"(threshold {policy.toploc.max_exp_mismatches})",
            f"sampling replay: {replay.mismatches}/{replay.checked} mismatches",
        ),
    )
