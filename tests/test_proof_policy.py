"""The pure parts of the proof decision: completion check, decide with reasons, calibration."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flopnet.proof.calibrate import RULES, UNBOUNDED_TOLERANCE, calibrate
from flopnet.proof.completion import check_completion
from flopnet.proof.policy import ProofPolicy, decide, recommended_policy
from flopnet.proof.sampling import ReplayCheck, replay_check
from flopnet.proof.toploc import ChunkCheck, ToplocThresholds, pooled_failure
from flopnet.protocol.errors import ConfigError

EOS = 257
POLICY = ProofPolicy(ToplocThresholds(), max_replay_mismatch_fraction=0.05)
GOOD = ChunkCheck(exp_mismatches=2, mant_err_mean=0.5, mant_err_median=1.0, sign_mismatches=0)
CLEAN = ReplayCheck(checked=64, mismatches=0, mismatch_positions=(), max_shortfall=0.01)


# --- completion ---------------------------------------------------------------------------


def test_complete_outputs() -> None:
    assert check_completion([1, 2, EOS], eos_id=EOS, max_new_tokens=8).complete
    assert check_completion([1, 2, 3], eos_id=EOS, max_new_tokens=3).complete
    ended = check_completion([EOS], eos_id=EOS, max_new_tokens=3)
    assert ended.complete and ended.ends_with_eos and ended.first_eos == 0


def test_cut_short_without_eos() -> None:
    got = check_completion([1, 2, 3], eos_id=EOS, max_new_tokens=8)
    assert not got.complete
    assert got.reasons == ("output stops after 3 tokens without eos, short of max_new_tokens 8",)
    assert not check_completion([], eos_id=EOS, max_new_tokens=8).complete


def test_eos_inside_and_too_long() -> None:
    inside = check_completion([1, EOS, 2, EOS], eos_id=EOS, max_new_tokens=8)
    assert inside.reasons == ("eos at position 1 before the last token (position 3)",)
    long = check_completion([1, 2, 3, 4], eos_id=EOS, max_new_tokens=3)
    assert long.reasons == ("4 tokens > max_new_tokens 3",)
    with pytest.raises(ConfigError):
        check_completion([1], eos_id=EOS, max_new_tokens=0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=20), st.integers(1, 20))
def test_completion_matches_how_generation_stops(tokens: list[int], limit: int) -> None:
    # An honest generation is: tokens without eos until eos (kept) or the limit.
    honest_shape = (
        len(tokens) <= limit
        and EOS not in tokens[:-1]
        and (len(tokens) == limit or (bool(tokens) and tokens[-1] == EOS))
    )
    assert check_completion(tokens, eos_id=EOS, max_new_tokens=limit).complete == honest_shape


# --- decide -------------------------------------------------------------------------------


def test_pass_reasons_name_every_value_beside_its_threshold() -> None:
    done = check_completion([1] * 64, eos_id=EOS, max_new_tokens=64)
    decision = decide([GOOD, GOOD], CLEAN, POLICY, done)
    assert decision.passed
    toploc, replay, completion = decision.reasons
    assert "worst 2 exponent mismatches (threshold 38)" in toploc
    assert "mant_err_mean 0.5 (threshold 10)" in toploc
    assert "mant_err_median 1 (threshold 8)" in toploc
    assert "sign_mismatches 0 (threshold 4)" in toploc
    assert "0/64 mismatches (threshold fraction 0.05)" in replay
    assert "worst shortfall 0.01 (tolerance 0.1)" in replay
    assert completion == "completion: 64 tokens, reaches max_new_tokens (max_new_tokens 64)"


def test_each_check_fails_on_its_own() -> None:
    cut = check_completion([1] * 10, eos_id=EOS, max_new_tokens=64)
    failed = decide([GOOD], CLEAN, POLICY, cut)
    assert not failed.passed
    assert failed.reasons == (
        "completion: output stops after 10 tokens without eos, short of max_new_tokens 64",
    )
    strict = ProofPolicy(ToplocThresholds(), max_replay_mismatch_fraction=0.0)
    one = ReplayCheck(checked=64, mismatches=1, mismatch_positions=(5,))
    assert (
        "1/64 tokens could not have been sampled (0.016 > 0.0)"
        in (decide([GOOD], one, strict).reasons[0])
    )
    assert decide([GOOD], one, POLICY).passed  # 1/64 is within 5%
    bad = ChunkCheck(40, 0.5, 1.0, 0)
    assert decide([GOOD, bad], CLEAN, POLICY).reasons == ("toploc chunk 1: exp_mismatches 40 > 38",)


def test_recommended_policies() -> None:
    for model in ("tiny", "small"):
        for dtype in ("bfloat16", "float32"):
            rec = recommended_policy(model, dtype)
            # Calibrated thresholds are tighter than the paper's, never looser.
            assert rec.toploc.max_exp_mismatches <= 38
            assert rec.toploc.max_mant_err_mean <= 10
            assert rec.max_replay_mismatch_fraction <= 0.05
    assert recommended_policy("some/hf-model", "bfloat16") == ProofPolicy(ToplocThresholds())


# --- calibration --------------------------------------------------------------------------


def test_calibration_rules_and_margins() -> None:
    checks = [ChunkCheck(3, 0.4, 0.0, 0), ChunkCheck(6, 0.8, 1.0, 1), ChunkCheck(1, 0.2, 0.0, 0)]
    replays = [
        replay_check([0.0, 0.03, 0.0], UNBOUNDED_TOLERANCE),
        replay_check([0.0, 0.0], UNBOUNDED_TOLERANCE),
    ]
    got = calibrate([checks[:2], checks[2:]], replays, current=POLICY)
    assert (got.chunks, got.samples, got.tokens) == (3, 2, 5)
    by = {s.measure: s for s in got.suggestions}
    assert by["max_exp_mismatches"].suggested == 14  # 2 * 6 + 2
    assert by["max_mant_err_mean"].suggested == 1.3  # 1.5 * 0.8 + 0.1
    assert by["max_mant_err_median"].suggested == 2  # 1 + 1
    assert by["max_sign_mismatches"].suggested == 4  # floor
    assert by["replay_tolerance"].suggested == 0.09  # 3 * 0.03
    assert by["max_replay_mismatch_fraction"].suggested == 0.0  # honest had none
    assert by["max_exp_mismatches"].margin == 8
    assert by["max_exp_mismatches"].current == 38
    assert by["max_exp_mismatches"].current_honest_failures == 0
    # Baseline: 1.5 x the average chunk mean (0.4667), on the 0.05 grid; sample 0 (average 0.6
    # over 2 chunks) sits 0.7 + (1.3 - 0.7) / sqrt(2) - 0.6 below its pooled limit.
    assert by["mant_err_mean_baseline"].suggested == 0.7
    assert by["mant_err_mean_baseline"].honest_worst == pytest.approx(0.6)
    assert by["mant_err_mean_baseline"].margin == pytest.approx(0.1 + 0.6 / math.sqrt(2), abs=1e-6)
    assert math.isnan(by["mant_err_mean_baseline"].current)
    assert got.policy.toploc == ToplocThresholds(14, 1.3, 2.0, 4, mant_err_mean_baseline=0.7)
    assert got.policy.replay_tolerance == 0.09
    assert set(by) == set(RULES)


def test_calibration_counts_honest_failures_and_caps() -> None:
    broken = ChunkCheck(128, float(2**64), float(2**64), 0)
    replays = [replay_check([0.0, math.inf], UNBOUNDED_TOLERANCE)]
    got = calibrate([[GOOD, broken]], replays, current=POLICY)
    by = {s.measure: s for s in got.suggestions}
    assert by["max_exp_mismatches"].suggested == 64  # capped at topk / 2
    assert by["max_exp_mismatches"].current_honest_failures == 1
    assert by["max_mant_err_mean"].honest_worst == 0.5  # the 2**64 chunk is left out
    assert by["max_replay_mismatch_fraction"].honest_worst == 0.5
    assert by["max_replay_mismatch_fraction"].suggested == 1.0
    assert by["max_replay_mismatch_fraction"].current_honest_failures == 1
    with pytest.raises(ValueError):
        calibrate([], replays, current=POLICY)
    with pytest.raises(ValueError):
        calibrate([[GOOD], [GOOD]], replays, current=POLICY)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 64),
            st.floats(0, 20, allow_nan=False),
            st.integers(0, 20),
            st.integers(0, 8),
        ),
        min_size=1,
        max_size=30,
    ),
    st.lists(st.floats(0, 2, allow_nan=False), min_size=1, max_size=30),
)
def test_suggested_policy_accepts_all_its_honest_data(
    raw: list[tuple[int, float, int, int]], shortfalls: list[float]
) -> None:
    checks = [ChunkCheck(e, m, float(med), s) for e, m, med, s in raw]
    replay = replay_check(shortfalls, UNBOUNDED_TOLERANCE)
    got = calibrate([checks], [replay], current=POLICY)
    if max(e for e, *_ in raw) <= 31:  # below the cap, nothing honest is rejected
        assert decide(
            checks, replay_check(shortfalls, got.policy.replay_tolerance), got.policy
        ).passed
    for s in got.suggestions:
        assert s.margin >= 0 or s.measure == "max_exp_mismatches"
    pooled = pooled_failure(checks, got.policy.toploc)
    assert pooled is None


def test_pooled_check_catches_a_shift_every_chunk_hides() -> None:
    t = ToplocThresholds(10, 1.5, 2.0, 4, mant_err_mean_baseline=0.5)
    policy = ProofPolicy(t, max_replay_mismatch_fraction=0.0)
    shifted = [ChunkCheck(3, 1.2, 1.0, 0)] * 4  # each chunk under 1.5
    failed = decide(shifted, CLEAN, policy)
    assert failed.reasons == (
        "toploc pooled: average mant_err_mean 1.2 over 4 chunks > 1 "
        "(baseline 0.5 + (1.5 - 0.5) / sqrt(4))",
    )
    assert decide(shifted[:1], CLEAN, policy).passed  # one chunk: the per-chunk limit rules
    assert decide(shifted, CLEAN, ProofPolicy(replace(t, mant_err_mean_baseline=None))).passed
    honest = [ChunkCheck(2, 0.4, 0.0, 0), ChunkCheck(1, 0.9, 1.0, 0)]
    passed = decide(honest, CLEAN, policy)
    assert passed.passed
    assert "toploc pooled: average mant_err_mean 0.65 over 2 chunks (limit 1.21)" in passed.reasons
    # A chunk without exponent matches fails by itself and stays out of the average.
    forged = ChunkCheck(128, float(2**64), float(2**64), 0)
    assert pooled_failure([*honest, forged], t) is None
