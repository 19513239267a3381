"""Why no credit, in plain words: explanations read the reasons the validator really writes
(made here by the same functions), with each measured value beside its threshold."""

from __future__ import annotations

import dataclasses

from flopnet.ledger.policy import AuditDecision
from flopnet.node.explain import explain_credit, explain_verdict, measures, why_no_credit
from flopnet.node.model.calls import AuditMeasures
from flopnet.node.validator.judgement import ProofOutcome, lease_problem, with_second_opinion
from flopnet.proof.completion import check_completion
from flopnet.proof.measures import ChunkCheck, ToplocThresholds, replay_check
from flopnet.proof.policy import ProofPolicy, decide
from flopnet.proof.tally import ReplayTally
from flopnet.protocol.messages import Lease, Submission

POLICY = ProofPolicy(
    ToplocThresholds(10, 1.5, 2.0, 4, mant_err_mean_baseline=0.5),
    max_replay_mismatch_fraction=0.0,
    replay_tolerance=0.02,
)
HONEST = (ChunkCheck(3, 0.4, 0.3, 0), ChunkCheck(5, 0.6, 0.5, 1))
FORGED = (ChunkCheck(124, 27.75, 30.0, 9), ChunkCheck(2, 0.4, 0.3, 0))


def _completion(n: int = 48) -> object:
    return check_completion([1] * n, eos_id=2, max_new_tokens=n)


def test_a_passed_proof_shows_every_value_beside_its_threshold() -> None:
    decision = decide(HONEST, replay_check([0.0] * 48, 0.02), POLICY, _completion())  # type: ignore[arg-type]
    assert decision.passed
    e = explain_verdict(True, [*decision.reasons, "answer: wrong answer"], 1234)
    assert e.status == "credited" and "1,234 FLOPs" in e.headline
    by_name = {(m.check, m.name): m for m in e.measures}
    worst = by_name[("toploc (worst chunk)", "exp_mismatches")]
    assert (worst.value, worst.limit, worst.passed) == (5, 10, True)
    assert by_name[("toploc (worst chunk)", "mant_err_mean")].value == 0.6
    assert by_name[("sampling replay", "mismatch fraction")].value == 0.0
    assert ("toploc pooled", "average mant_err_mean") in by_name


def test_a_forged_proof_is_explained_with_its_evidence_and_advice() -> None:
    replay = replay_check([0.0] * 16 + [float("inf")] * 32, 0.02)
    decision = decide(FORGED, replay, POLICY, _completion())  # type: ignore[arg-type]
    assert not decision.passed
    e = explain_verdict(False, decision.reasons)
    assert e.category == "proof_mismatch" and e.your_fault is True
    assert "weights" in e.advice
    failing = [(m.name, m.value, m.limit) for m in e.measures if not m.passed]
    assert ("exp_mismatches", 124, 10) in failing and ("sign_mismatches", 9, 4) in failing
    fraction = next(m for m in e.measures if m.name == "mismatch fraction")
    assert round(fraction.value, 3) == 0.667 and fraction.limit == 0.0


def test_sampling_and_completion_failures_have_their_own_words() -> None:
    replay = replay_check([0.0] * 40 + [1.0] * 8, 0.02)
    decision = decide(HONEST, replay, POLICY, _completion())  # type: ignore[arg-type]
    assert explain_verdict(False, decision.reasons).category == "sampling"
    short = check_completion([1] * 10, eos_id=2, max_new_tokens=48)
    decision = decide(HONEST, replay_check([0.0] * 10, 0.02), POLICY, short)
    e = explain_verdict(False, decision.reasons)
    assert e.category == "completion" and "Do not cut" in e.advice


def test_a_failure_confirmed_by_a_second_opinion_is_explained_by_its_first_check() -> None:
    replay = replay_check([0.0] * 16 + [float("inf")] * 32, 0.02)
    decision = decide(FORGED, replay, POLICY, _completion())  # type: ignore[arg-type]
    confirmed = with_second_opinion(
        ProofOutcome(False, decision.reasons, True),
        AuditMeasures(FORGED, (0.0,) * 16 + (float("inf"),) * 32, _completion(), "", 0.0, 0.0),  # type: ignore[arg-type]
        AuditDecision(True, 1.0, 0),
        POLICY,
    )
    assert confirmed.second_opinion == "confirmed"
    e = explain_verdict(False, confirmed.reasons)
    assert e.category == "proof_mismatch"
    assert ("exp_mismatches", 124, 10) in [(m.name, m.value, m.limit) for m in e.measures]


def test_a_contributor_condemned_by_its_replay_tally_is_told_why() -> None:
    tallied = dataclasses.replace(
        POLICY, max_replay_mismatch_fraction=0.05, honest_replay_rate=0.001
    )
    replay = replay_check([0.0] * 23 + [1.0], 0.02)  # one impossible token: under 5 %
    decision = decide(HONEST, replay, tallied, _completion(24), ReplayTally(6, 144, 6))  # type: ignore[arg-type]
    assert not decision.passed
    e = explain_verdict(False, [f"first check: {r}" for r in decision.reasons])
    assert e.category == "sampling_tally" and e.your_fault is True
    assert "recent audits" in e.headline


def test_lease_problems_are_explained() -> None:
    lease = Lease(
        version=1,
        lease_id=b"\1" * 16,
        task_id="t",
        task_type="math",
        sample_index=0,
        worker=b"\2" * 32,
        validator=b"\3" * 32,
        seed=1,
        prompt_ids=(1, 2),
        max_new_tokens=8,
        temperature=0.6,
        top_p=0.95,
        issued_at=0.0,
        expires_at=10.0,
    )
    sub = Submission(
        version=1,
        lease=b"",
        token_ids=(1, 2),
        text="",
        finish_reason="eos",
        proofs=(b"\0" * 258,),
        generation_seconds=1.0,
    )
    common = {
        "lease": lease,
        "lease_signer": b"\4" * 32,
        "submitter": b"\2" * 32,
        "submission": sub,
        "validator": b"\3" * 32,
        "publishers": {b"\4" * 32},
        "already_used": False,
    }
    cases = {
        "lease_expired": {"received_at": 100.0},
        "duplicate": {"received_at": 1.0, "already_used": True},
        "sample_done": {"received_at": 1.0, "sample_credited": True},
        "unknown_task": {"received_at": 1.0, "unknown_task": "unknown task 't': gone"},
        "malformed": {"received_at": 1.0, "submitter": b"\5" * 32},
    }
    for category, change in cases.items():
        problem = lease_problem(**{**common, **change})  # type: ignore[arg-type]
        assert problem is not None
        assert explain_verdict(False, [problem.reason]).category == category, problem.reason
    assert explain_verdict(False, ["proof check failed: the model died"]).category == (
        "model_failure"
    )


def test_voided_and_pending_credits_and_the_why_list() -> None:
    forged = decide(FORGED, replay_check([0.0] * 48, 0.02), POLICY, _completion())  # type: ignore[arg-type]
    voided = {
        "state": "void",
        "accepted": True,
        "flops": 10,
        "reasons": ["toploc: 1 chunk(s) pass, worst 1 exponent mismatches (threshold 10)"],
        "timestamp": 2.0,
        "voided_by": {"reason": "audit failed: " + "; ".join(forged.reasons)},
    }
    e = explain_credit(voided)
    assert e.status == "voided" and "lock window" not in e.headline
    assert any(not m.passed for m in e.measures)  # the failed audit's own values
    pending = {**voided, "state": "pending", "voided_by": None}
    assert explain_credit(pending).status == "pending"
    rejected = {**pending, "state": "rejected", "accepted": False, "reasons": list(forged.reasons)}
    items = why_no_credit([pending, {**rejected, "timestamp": 1.0}, {**voided, "timestamp": 3.0}])
    assert [i["state"] for i in items] == ["void", "rejected"]
    assert measures(["nothing to read here"]) == []
