"""The judgement of one submission, as pure functions of what was checked.

The validator (:mod:`flopnet.node.validator.validator`) does the I/O: it opens the envelopes,
asks the model process to measure, runs the answer verifier, writes the ledger and answers the
worker. Every decision in between is here, a function of data, testable without a network, a
model or a database:

* :func:`lease_problem` - the cheap checks of a submission and its lease, before anything costs;
* :func:`proof_outcome` - the network's proof limits applied to what the model measured;
* :func:`judge` - everything together: the ``credit`` entry, for an audit its ``audit`` entry
  and for a failed audit the ``hard`` invalidation, with every reason kept.

Answer correctness labels the data; the proof decides the credit: a wrong but honestly computed
answer earns FLOPs, a forged computation earns nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flopnet.ledger.flops import MATMUL_FORMULA, inference_flops
from flopnet.ledger.kinds import (
    HARD,
    KIND_AUDIT,
    KIND_CREDIT,
    KIND_INVALIDATION,
    AuditBody,
    InvalidationBody,
)
from flopnet.ledger.policy import AuditDecision
from flopnet.node.model.calls import (
    AuditMeasures,
    Inspection,
    ModelError,
    ModelInputError,
)
from flopnet.proof.measures import replay_check
from flopnet.proof.params import CHUNK, PROOF_BYTES
from flopnet.proof.policy import ProofPolicy, decide
from flopnet.proof.tally import ReplayTally
from flopnet.protocol.catalog import lease_grace
from flopnet.protocol.codec import Record
from flopnet.protocol.messages import CreditBody, Lease, Submission
from flopnet.verifiers.result import Result

MAX_REASONS = 64
MAX_REASON_CHARS = 1024


@dataclass(frozen=True)
class Problem:
    """Why a submission cannot be credited on its face: a stable code, a human reason, and
    whether an honest worker can never cause it (then the sender is charged for it)."""

    code: str
    reason: str
    dishonest: bool = False


def lease_problem(
    *,
    lease: Lease,
    lease_signer: bytes,
    submitter: bytes,
    submission: Submission,
    validator: bytes,
    publishers: frozenset[bytes] | set[bytes],
    received_at: float,
    already_used: bool,
    sample_credited: bool = False,
    unknown_task: str | None = None,
) -> Problem | None:
    """What the checks that cost nothing find (signatures were checked when the envelopes
    were opened), or None. Run before a submission is stored, and again before it is judged;
    ``unknown_task`` says why the leased task's spec is not held, when it is not."""
    if lease_signer not in publishers:
        return Problem("bad_lease", "the lease is not signed by a publisher of this network", True)
    if lease.validator != validator:
        return Problem("other_validator", "the lease names another validator", True)
    if lease.worker != submitter:
        return Problem("not_your_lease", "the lease was granted to another worker", True)
    if received_at > lease.expires_at + lease_grace(lease.expires_at - lease.issued_at):
        return Problem("lease_expired", "the lease expired before the submission arrived")
    if already_used:
        return Problem("duplicate", "duplicate: this lease was already validated")
    if sample_credited:
        return Problem(
            "sample_done",
            f"sample {lease.sample_index} of {lease.task_id!r} was already credited "
            "(a late result of a re-issued lease)",
        )
    if unknown_task is not None:
        return Problem("unknown_task", unknown_task)
    generated = len(submission.token_ids)
    if generated == 0:
        return Problem("no_tokens", "no generated tokens", True)
    if generated > lease.max_new_tokens:
        reason = f"{generated} tokens exceed the lease's max of {lease.max_new_tokens}"
        return Problem("too_many_tokens", reason, True)
    expected_proofs = math.ceil(generated / CHUNK)
    if len(submission.proofs) != expected_proofs:
        reason = (
            f"{len(submission.proofs)} proofs for {generated} tokens; expected {expected_proofs}"
        )
        return Problem("proof_count", reason, True)
    for index, proof in enumerate(submission.proofs):
        if len(proof) != PROOF_BYTES:
            reason = f"proof {index} has {len(proof)} bytes; expected {PROOF_BYTES}"
            return Problem("proof_size", reason, True)
    return None


@dataclass(frozen=True)
class ProofOutcome:
    """The proof's verdict on a submission, and whether it is an audit result to record."""

    passed: bool
    reasons: tuple[str, ...]
    audited: bool  # an audit entry is written (and a failed one invalidates)
    text: str = ""  # the output as the validator decoded it (the worker's text is never used)
    # After a failed audit: "confirmed" (the second check failed too: punished), "overturned"
    # (it passed: credited) or "unavailable" (rejected, nobody punished); "" when not asked.
    second_opinion: str = ""
    # (tokens replayed, impossible tokens) of the check that decided, for the replay tally.
    replay_counts: tuple[int, int] = (0, 0)


def proof_outcome(
    measured: AuditMeasures | Inspection | ModelError,
    decision: AuditDecision,
    policy: ProofPolicy,
    history: ReplayTally | None = None,
) -> ProofOutcome:
    """Apply the network's limits to what the model measured for one submission (``history``:
    the replay tally of the contributor's recent audits before this one).

    An audit passes when every TOPLOC chunk, the sampling replay and the way the output ends are
    within the limits; an unaudited submission only has to end as an honest generation ends,
    and its credit stays pending. Data the model cannot evaluate is a failed proof; a failure of
    our own model (given up on after its retries) fails the submission without an audit result,
    so it never invalidates anyone's credit.
    """
    if isinstance(measured, ModelError):
        audited = decision.audit and isinstance(measured, ModelInputError)
        return ProofOutcome(False, (f"proof check failed: {measured}",), audited)
    if isinstance(measured, Inspection):
        note = (
            f"not audited (audit rate {decision.rate:.3f} after {decision.consecutive_valid} "
            "valid audits): credit pending until its lock window ends"
        )
        reasons = (note, *(f"completion: {r}" for r in measured.completion.reasons))
        return ProofOutcome(measured.completion.complete, reasons, False, measured.text)
    return audit_outcome(measured, policy, history)


def audit_outcome(
    measured: AuditMeasures, policy: ProofPolicy, history: ReplayTally | None = None
) -> ProofOutcome:
    """An audit's verdict: every TOPLOC chunk, the sampling replay and the way the output ends
    within the network's limits, and with ``history`` the contributor's replay tally too."""
    replay = replay_check(measured.shortfalls, policy.replay_tolerance)
    verdict = decide(measured.checks, replay, policy, measured.completion, history)
    counts = (replay.checked, replay.mismatches)
    return ProofOutcome(verdict.passed, verdict.reasons, True, measured.text, "", counts)


SECOND_OPINION_PRECISION = "float32"
_REASONS_PER_CHECK = 16


def wants_second_opinion(
    measured: AuditMeasures | Inspection | ModelError, proof: ProofOutcome
) -> bool:
    """A failed audit is checked a second way before anyone is punished: a hard invalidation
    voids all of a contributor's pending credit, and one check's numerical noise (a kernel, a
    padded batch, an expert routing flipped by bf16 rounding) must not cost an honest worker
    that. Data the model could not evaluate at all is not noise and needs no second look."""
    return isinstance(measured, AuditMeasures) and proof.audited and not proof.passed


def with_second_opinion(
    first: ProofOutcome,
    second: AuditMeasures | ModelError,
    decision: AuditDecision,
    policy: ProofPolicy,
    history: ReplayTally | None = None,
) -> ProofOutcome:
    """The outcome once the failed first check has been repeated in float32 (``second``),
    judged against the same ``history`` as the first.

    Both failed: the audit fails with both checks' reasons (and the contributor is punished).
    The second passed: the first was noise, the submission is credited and the audit passes.
    Our model could not run the second check: the submission is rejected without an audit
    result, as for any failure of our own model, so nobody is punished on one check.
    """
    precision = SECOND_OPINION_PRECISION
    firsts = tuple(f"first check: {r}" for r in first.reasons[:_REASONS_PER_CHECK])
    if isinstance(second, ModelError) and not isinstance(second, ModelInputError):
        why = f"second opinion ({precision}) unavailable: {second}; rejected without punishment"
        return ProofOutcome(False, (*firsts, why), False, first.text, "unavailable")
    other = proof_outcome(second, decision, policy, history)  # an input error fails it
    if other.passed:
        why = f"second opinion ({precision} prefill) passed: the first check's failure was noise"
        return ProofOutcome(
            True, (why, *firsts), True, other.text, "overturned", other.replay_counts
        )
    seconds = tuple(f"second opinion ({precision}): {r}" for r in other.reasons)
    return ProofOutcome(
        False, (*firsts, *seconds[:_REASONS_PER_CHECK]), True, first.text, "confirmed"
    )


def answer_reasons(answer: Result) -> list[str]:
    """The answer verifier's findings, as credit reasons."""
    reasons = [f"answer: {r}" for r in answer.reasons]
    if answer.error:
        reasons.append(f"answer: verifier error: {answer.error}")
    failed_rules = [name for name, ok in answer.rules if not ok]
    reasons.append("rules: " + (", ".join(f"{n} failed" for n in failed_rules) or "all pass"))
    return reasons


@dataclass(frozen=True)
class Judgement:
    """What one checked submission writes: its credit first, then any audit entries."""

    credit: CreditBody
    entries: tuple[tuple[str, Record], ...]
    audited: bool

    @property
    def accepted(self) -> bool:
        return self.credit.accepted


def judge(
    *,
    submission_id: bytes,
    contributor: bytes,
    lease: Lease,
    generated: int,
    problem: Problem | None,
    decision: AuditDecision | None,
    proof: ProofOutcome | None,
    answer: Result | None,
    model_config: Mapping[str, Any],
    validator: bytes,
    credit_seq: int,
) -> Judgement:
    """The ledger entries of one submission.

    ``problem`` is what :func:`lease_problem` (or a later cheap check) found, and then nothing
    else was checked. ``credit_seq`` is the sequence number the credit entry will get: a failed
    audit's invalidation names it. FLOPs come from the validator's own model config and the
    token counts it checked itself, never from the worker.
    """
    reasons: list[str] = [problem.reason] if problem is not None else []
    accepted = problem is None and proof is not None and proof.passed
    if problem is None and proof is not None:
        reasons.extend(proof.reasons)
        if accepted and answer is not None:
            reasons.extend(answer_reasons(answer))
    audited = problem is None and proof is not None and proof.audited and decision is not None
    prompt_tokens = len(lease.prompt_ids)
    flops = inference_flops(model_config, prompt_tokens, generated) if accepted else 0
    credit = CreditBody(
        contributor=contributor,
        lease_id=lease.lease_id,
        submission_id=submission_id,
        task_id=lease.task_id,
        sample_index=lease.sample_index,
        prompt_tokens=prompt_tokens,
        generated_tokens=generated,
        flops=flops,
        flop_formula=MATMUL_FORMULA,
        accepted=accepted,
        answer_score=float(answer.score) if accepted and answer is not None else 0.0,
        reasons=tuple(r[:MAX_REASON_CHARS] for r in reasons[:MAX_REASONS]),
    )
    entries: list[tuple[str, Record]] = [(KIND_CREDIT, credit)]
    if audited:
        assert decision is not None
        entries.append(
            (
                KIND_AUDIT,
                AuditBody(
                    contributor=contributor,
                    submission_id=submission_id,
                    passed=accepted,
                    rate=decision.rate,
                    consecutive_valid=decision.consecutive_valid,
                    reasons=credit.reasons,
                ),
            )
        )
        if not accepted:
            entries.append(
                (
                    KIND_INVALIDATION,
                    InvalidationBody(
                        contributor=contributor,
                        severity=HARD,
                        credit_signer=validator,
                        credit_seq=credit_seq,
                        submission_id=submission_id,
                        reason=("audit failed: " + "; ".join(credit.reasons))[:MAX_REASON_CHARS],
                    ),
                )
            )
    return Judgement(credit, tuple(entries), audited)
