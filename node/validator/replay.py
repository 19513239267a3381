"""Re-run the checks of an evidence file on this machine (``flopnet audit replay FILE``).

The model named in the evidence is loaded here (the same seeded or Hugging Face model, the
same dtype), every recorded check runs again on the worker's signed submission, and the policy
recorded with it is applied: the punishment stands when every check reaches the verdict the
validator recorded. The numbers themselves are compared too; another CPU or GPU may differ in
the last bits of some chunks, which is why the verdicts are what must agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flopnet.node.model.calls import AuditRequest, GenerateRequest, LoadSpec, ModelError
from flopnet.node.validator.evidence import CheckRecord, Evidence
from flopnet.node.validator.judgement import audit_outcome
from flopnet.proof.measures import ChunkCheck
from flopnet.protocol.envelope import open_envelope
from flopnet.protocol.errors import MalformedMessage
from flopnet.protocol.identity import peer_id_from_public_key
from flopnet.protocol.messages import Lease, Submission


@dataclass(frozen=True)
class CheckReplay:
    """One recorded check beside its re-run."""

    precision: str
    recorded_passed: bool
    passed: bool
    reasons: tuple[str, ...]
    chunks: int
    chunks_identical: int  # chunks whose four measures are exactly the recorded ones
    max_mant_err_mean_diff: float
    max_exp_mismatch_diff: int

    @property
    def reproduced(self) -> bool:
        return self.passed == self.recorded_passed


@dataclass(frozen=True)
class ReplayReport:
    """The evidence, who it punished, and every check as re-run here."""

    evidence: Evidence
    contributor: str  # peer id of the worker that signed the submission
    task_id: str
    weights_sha256: str  # of the model loaded here ("" when this backend cannot hash it)
    checks: tuple[CheckReplay, ...]

    @property
    def weights_match(self) -> bool | None:
        recorded = self.evidence.model.weights_sha256
        return None if not recorded or not self.weights_sha256 else recorded == self.weights_sha256

    @property
    def reproduced(self) -> bool:
        return self.weights_match is not False and all(c.reproduced for c in self.checks)


def _difference(recorded: ChunkCheck, measured: ChunkCheck) -> tuple[float, int]:
    a, b = recorded.mant_err_mean, measured.mant_err_mean
    mean = 0.0 if a == b else (math.inf if math.isinf(a) or math.isinf(b) else abs(a - b))
    return mean, abs(recorded.exp_mismatches - measured.exp_mismatches)


def compare(record: CheckRecord, rerun: CheckRecord) -> CheckReplay:
    """A recorded check beside the same check re-run (pure)."""
    pairs = list(zip(record.measures.checks, rerun.measures.checks, strict=False))
    diffs = [_difference(a, b) for a, b in pairs]
    return CheckReplay(
        precision=record.precision,
        recorded_passed=record.passed,
        passed=rerun.passed,
        reasons=rerun.reasons,
        chunks=len(rerun.measures.checks),
        chunks_identical=sum(1 for a, b in pairs if a == b),
        max_mant_err_mean_diff=max((d[0] for d in diffs), default=0.0),
        max_exp_mismatch_diff=max((d[1] for d in diffs), default=0),
    )


def replay_evidence(evidence: Evidence, threads: int = 0) -> ReplayReport:
    """Load the evidence's model here and re-run each of its checks (loads torch).

    Raises MalformedMessage when the submission inside is not a validly signed one, and
    ModelError when the model cannot be loaded or run.
    """
    from flopnet.node.model.child import ModelChild

    opened = open_envelope(evidence.submission, evidence.network_id, expected=Submission)
    submission = opened.expect(Submission)
    lease = open_envelope(submission.lease, evidence.network_id, expected=Lease).expect(Lease)
    if lease.worker != opened.signer:
        raise MalformedMessage("the submission is not signed by its lease's worker")
    m = evidence.model
    try:
        child = ModelChild.load(LoadSpec(m.name, m.seed, m.dtype, threads, revision=m.revision))
    except (OSError, RuntimeError, ValueError) as exc:  # torch's and transformers' errors
        raise ModelError(f"cannot load {m.name!r}: {type(exc).__name__}: {exc}") from None
    try:
        replays = []
        for record in evidence.checks:
            request = AuditRequest(
                GenerateRequest.of_lease(lease),
                tuple(submission.token_ids),
                tuple(submission.proofs),
                record.precision,
            )
            measures = child.audit(request)
            outcome = audit_outcome(measures, evidence.policy, evidence.replay_history)
            rerun = CheckRecord(record.precision, measures, outcome.passed, outcome.reasons)
            replays.append(compare(record, rerun))
        weights = child.info.weights_sha256
    finally:
        child.close()
    return ReplayReport(
        evidence=evidence,
        contributor=peer_id_from_public_key(opened.signer),
        task_id=lease.task_id,
        weights_sha256=weights,
        checks=tuple(replays),
    )
