"""The per-contributor replay tally: its statistics, its decision, and a validator that uses it.

One audit allows a few impossible tokens (bf16 noise); a cheat that stays under that allowance
in every audit is condemned once its impossible tokens over the contributor's recent audits are
beyond what honest work produces. The validator keeps the windows beside its verdicts, so a
restart keeps them, and a failure starts the contributor afresh.
"""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_validator_audit import (
    NET,
    WORKER,
    _entries,
    _honest,
    _queue,
    _submission,
    _verdicts,
    make_validator,
    validator_parts,
)

from flopnet.ledger.kinds import HARD, AuditBody, InvalidationBody
from flopnet.ledger.policy import AuditPolicy
from flopnet.node.config import NetworkParams, NodeConfig
from flopnet.node.model.calls import GenerateRequest
from flopnet.node.model.fake import FakeModel
from flopnet.node.validator.evidence import EVIDENCE_DIR, read_evidence
from flopnet.node.validator.inbox import Inbox, TallyUpdate
from flopnet.proof.completion import CompletionCheck
from flopnet.proof.measures import ChunkCheck, ReplayCheck
from flopnet.proof.params import CHUNK
from flopnet.proof.policy import ProofPolicy, decide, recommended_policy
from flopnet.proof.tally import (
    TALLY_SIGNIFICANCE,
    ReplayBook,
    ReplayTally,
    audits_to_flag,
    first_punishments,
    honest_rate_ceiling,
    poisson_tail,
    rate_upper_bound,
    tally_failure,
)
from flopnet.proof.toploc import ToplocThresholds
from flopnet.protocol.envelope import message_id
from flopnet.protocol.errors import ConfigError

# -- the statistics ---------------------------------------------------------------------------


def _exact_tail(k: int, lam: Fraction, terms: int = 400) -> float:
    """P(X >= k) as 1 - sum of the head, in exact rationals (e^-lam by its series)."""
    exp_neg = sum(Fraction((-lam) ** i) / math.factorial(i) for i in range(terms))
    head = sum(exp_neg * lam**i / math.factorial(i) for i in range(k))
    return float(1 - head)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.fractions(Fraction(1, 1000), Fraction(12)))
def test_poisson_tail_matches_the_exact_sum(k: int, lam: Fraction) -> None:
    exact = _exact_tail(k, lam)
    assert poisson_tail(k, float(lam)) == pytest.approx(exact, rel=1e-9, abs=1e-15)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**4), st.floats(0.0, 5e3, allow_nan=False))
def test_poisson_tail_is_a_probability_falling_in_k(k: int, lam: float) -> None:
    p, q = poisson_tail(k, lam), poisson_tail(k + 1, lam)
    assert 0.0 <= q <= p <= 1.0


def test_deep_tails_do_not_cancel_to_zero() -> None:
    # 1 - CDF would give 0 here; the tail is what a decision at 1e-9 needs.
    assert 0.0 < poisson_tail(30, 1.0) < 1e-30
    assert poisson_tail(5, 1e-300) == 0.0  # underflow ends the sum instead of looping


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 60), st.integers(1, 10**6), st.sampled_from([0.9, 0.99, 0.999]))
def test_rate_upper_bound_is_the_exact_poisson_bound(k: int, tokens: int, conf: float) -> None:
    bound = rate_upper_bound(k, tokens, conf) * tokens
    # At the bound, seeing k or fewer is exactly 1 - conf likely; just below, more likely.
    assert 1.0 - poisson_tail(k + 1, bound) == pytest.approx(1.0 - conf, rel=1e-6)
    assert 1.0 - poisson_tail(k + 1, bound * 0.99) > 1.0 - conf
    assert bound > k


def test_honest_rate_ceiling_takes_the_larger_of_pool_and_worst_row() -> None:
    # One thin row with a high rate dominates: twice its rate.
    assert honest_rate_ceiling([(3, 3_268), (8, 80_115)]) == pytest.approx(2 * 3 / 3_268)
    # One impossible token in many: the pooled bound dominates.
    assert honest_rate_ceiling([(1, 14_614)]) == pytest.approx(rate_upper_bound(1, 14_614))
    with pytest.raises(ValueError):
        honest_rate_ceiling([])


# -- the decision -----------------------------------------------------------------------------


def test_the_tally_condemns_what_honest_work_does_not_reach() -> None:
    rate = 0.001
    assert tally_failure(ReplayTally(1, 100, 1), rate) is None  # one near-tie: nothing to see
    assert tally_failure(ReplayTally(10, 1_000, 12), 0.0) is None  # rate 0: no tally
    why = tally_failure(ReplayTally(10, 1_000, 12), rate)
    assert why is not None and "12 of 1000 tokens" in why and "last 10 audit(s)" in why
    # The limit sits where the Poisson tail (here of mean 1) crosses the significance.
    assert poisson_tail(12, 1.0) < TALLY_SIGNIFICANCE < poisson_tail(11, 1.0)
    assert tally_failure(ReplayTally(10, 1_000, 11), rate) is None


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 50), st.integers(0, 5_000), st.integers(0, 50))
def test_more_impossible_tokens_never_look_more_honest(audits: int, tokens: int, m: int) -> None:
    m = min(m, tokens)
    worse = min(m + 1, tokens)
    if tally_failure(ReplayTally(audits, tokens, m), 0.002) is not None:
        assert tally_failure(ReplayTally(audits, tokens, worse), 0.002) is not None


def test_tally_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError):
        ReplayTally(1, 10, 11)
    with pytest.raises(ValueError):
        ReplayTally(-1, 0, 0)


def _policy(rate: float) -> ProofPolicy:
    return ProofPolicy(
        ToplocThresholds(), max_replay_mismatch_fraction=0.05, honest_replay_rate=rate
    )


def test_decide_adds_this_audit_to_the_history_before_judging() -> None:
    checks = [ChunkCheck(0, 0.0, 0.0, 0)]
    replay = ReplayCheck(checked=24, mismatches=1, mismatch_positions=(3,), max_shortfall=0.0)
    done = CompletionCheck(24, 24, False, None, ())
    alone = decide(checks, replay, _policy(0.001), done)
    assert alone.passed  # 1 of 24 is under the allowance of 5 %
    history = ReplayTally(6, 144, 6)
    verdict = decide(checks, replay, _policy(0.001), done, history)
    assert not verdict.passed
    assert any(r.startswith("replay tally: 7 of 168 tokens") for r in verdict.reasons)
    # The same history under a policy without a tally passes, and says nothing about it.
    off = decide(checks, replay, _policy(0.0), done, history)
    assert off.passed and not any("tally" in r for r in off.reasons)
    honest = decide(
        checks, dataclasses.replace(replay, mismatches=0), _policy(0.001), done, history
    )
    assert honest.passed  # six impossible tokens earlier, none now: 6 in 168 is not enough
    assert any(r.startswith("replay tally: 6/168 tokens over the last 7") for r in honest.reasons)


def test_the_book_keeps_a_window_and_forgets_a_punished_contributor() -> None:
    book = ReplayBook(0.001, window=4)
    for i in range(6):
        book.record(b"a", 10, i, True)
    # The next decision sees the newest window - 1 audits (the next one completes the window).
    assert book.history(b"a") == ReplayTally.of([(10, 3), (10, 4), (10, 5)])
    book.record(b"a", 10, 0, False)
    assert book.history(b"a") == ReplayTally()
    assert ReplayBook(0.0).history(b"a") is None
    reloaded = ReplayBook(0.001, {b"b": [(5, 0)] * 10}, window=4)
    assert reloaded.history(b"b") == ReplayTally(3, 15, 0)


def test_simulated_runs_punish_a_cheat_and_never_honest_work() -> None:
    honest = [(True, 100, 0)] * 40 + [(True, 100, 1)]  # one near-tie in 4,100 tokens
    cheat = [(True, 100, 2), (True, 100, 3), (True, 100, 1)]  # a wider nucleus: a few per sample
    rate = honest_rate_ceiling([(1, 4_100)])
    assert all(f is None for f in first_punishments(honest, rate, trials=200))
    runs = first_punishments(cheat, rate, trials=200)
    n = audits_to_flag(runs)
    assert n is not None and 1 < n <= 32
    # A sample that fails its own checks is punished at once, tally or not.
    assert first_punishments([(False, 100, 0)], 0.0, trials=5) == [1] * 5


def test_models_that_allow_impossible_tokens_keep_a_tally() -> None:
    for model in ("smollm2-135m", "deepseek-v3-tiny", "deepseek-v3-small"):
        policy = recommended_policy(model, "bfloat16")
        assert policy.max_replay_mismatch_fraction > 0 and policy.honest_replay_rate > 0
    # A policy that allows none needs none.
    assert recommended_policy("tiny", "bfloat16").honest_replay_rate == 0.0


def test_the_manifest_bounds_the_rate() -> None:
    with pytest.raises(ConfigError, match="honest_replay_rate"):
        NetworkParams(network_id="x", honest_replay_rate=1.5)
    with pytest.raises(ConfigError, match="honest_replay_rate"):
        NetworkParams(network_id="x", honest_replay_rate=-0.1)
    assert NetworkParams(network_id="x", honest_replay_rate=0.002).proof_policy() == (
        dataclasses.replace(NetworkParams(network_id="x").proof_policy(), honest_replay_rate=0.002)
    )


# -- a validator that keeps the tally ------------------------------------------------------------

TALLY_NET = dataclasses.replace(NET, honest_replay_rate=0.001)
ALWAYS = AuditPolicy(floor=1.0)


async def _one_token_injected(model: FakeModel, index: int) -> bytes:
    """A sample with one token swapped and its proof recomputed: TOPLOC passes, the replay
    finds one impossible token in 24 (under the 5 % a single audit allows)."""
    lease_bytes, out = await _honest(model, index)
    tokens = list(out.token_ids)
    tokens[3] = 1 + tokens[3] % 255  # never the eos (0)
    request = GenerateRequest(
        tuple(range(1 + index, 20 + index)),
        1000 + index,
        NET.temperature,
        NET.top_p,
        NET.max_new_tokens,
    )
    proofs = [model.proof(request, tokens[i : i + CHUNK]) for i in range(0, len(tokens), CHUNK)]
    cheat = dataclasses.replace(out, token_ids=tuple(tokens))
    return _submission(lease_bytes, cheat, proofs)


@pytest.mark.timeout(120)
def test_a_cheat_under_the_allowance_is_condemned_by_its_tally_across_a_restart(
    tmp_path: Path,
) -> None:
    config = NodeConfig(roles=("validator",), data_dir=tmp_path, network=TALLY_NET)

    async def main() -> list[bytes]:
        subs: list[bytes] = []
        async with validator_parts(tmp_path, "fake") as parts:
            assert isinstance(parts.model, FakeModel)
            subs = [await _one_token_injected(parts.model, i) for i in range(9)]
            first = make_validator(config, parts, audit_policy=ALWAYS)
            for data in subs[:3]:
                _queue(parts.inbox, data)
            assert all(v.accepted for v in await _verdicts(first, subs[:3], 30))
            assert first.replays.history(WORKER.public_key) == ReplayTally(3, 72, 3)
            # A restarted validator reads the windows back from its inbox.
            second = make_validator(config, parts, audit_policy=ALWAYS)
            assert second.replays.history(WORKER.public_key) == ReplayTally(3, 72, 3)
            for data in subs[3:]:
                _queue(parts.inbox, data)
            verdicts = await _verdicts(second, subs[3:], 30)
            passed = [v.accepted for v in verdicts]
            # 7 impossible tokens in 168 is beyond honest work at 0.001 per token (p < 1e-9).
            assert passed == [True, True, True, False, True, True], passed
            condemned = verdicts[3]
            assert any("first check: replay tally: 7 of 168" in r for r in condemned.reasons)
            assert any("second opinion (float32): replay tally" in r for r in condemned.reasons)
            kinds = [kind for kind, _ in _entries(parts.store)]
            assert kinds.count("invalidation") == 1
            invalidation = next(b for k, b in _entries(parts.store) if k == "invalidation")
            assert isinstance(invalidation, InvalidationBody) and invalidation.severity == HARD
            audits = [b for k, b in _entries(parts.store) if k == "audit"]
            assert [a.passed for a in audits if isinstance(a, AuditBody)] == [
                True,
                True,
                True,
                True,
                True,
                True,
                False,
                True,
                True,
            ]
            # Punished: the window starts afresh, in memory and on disk.
            assert second.replays.history(WORKER.public_key) == ReplayTally(2, 48, 2)
            assert parts.inbox.replay_windows() == {WORKER.public_key: [(24, 1), (24, 1)]}
        return subs

    subs = trio.run(main)
    evidence = read_evidence(tmp_path / EVIDENCE_DIR / f"{message_id(subs[6]).hex()}.json")
    assert evidence.replay_history == ReplayTally(6, 144, 6)
    assert evidence.policy.honest_replay_rate == 0.001
    raw = json.loads((tmp_path / EVIDENCE_DIR / f"{message_id(subs[6]).hex()}.json").read_text())
    assert raw["body"]["replay_history"] == {"audits": 6, "tokens": 144, "mismatches": 6}


def test_the_inbox_keeps_the_newest_window_and_clears_it_on_a_failure(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "inbox.sqlite")
    try:
        for i in range(4):
            sid = bytes([i]) * 32
            inbox.add(sid, bytes([i]) * 16, "peer", b"envelope")
            inbox.set_verdict(sid, b"verdict", None, TallyUpdate(b"a" * 32, 10 + i, i, True, 2))
        inbox.add(b"\x09" * 32, b"\x09" * 16, "peer", b"envelope")
        inbox.set_verdict(b"\x09" * 32, b"v", None, TallyUpdate(b"b" * 32, 5, 0, True, 2))
        assert inbox.replay_windows() == {b"a" * 32: [(12, 2), (13, 3)], b"b" * 32: [(5, 0)]}
        inbox.add(b"\x0a" * 32, b"\x0a" * 16, "peer", b"envelope")
        inbox.set_verdict(b"\x0a" * 32, b"v", None, TallyUpdate(b"a" * 32, 10, 9, False, 2))
        assert inbox.replay_windows() == {b"b" * 32: [(5, 0)]}
    finally:
        inbox.close()
    reopened = Inbox(tmp_path / "inbox.sqlite")  # durable: the same windows after a restart
    try:
        assert reopened.replay_windows() == {b"b" * 32: [(5, 0)]}
    finally:
        reopened.close()
