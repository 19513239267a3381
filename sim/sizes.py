"""Bytes on the wire, measured by sealing real records with the project's own code: the ledger
entries the validator's judgement writes for a sample, gossip messages, a submission."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from flopnet.ledger.chain import make_entry
from flopnet.ledger.kinds import KIND_CREDIT
from flopnet.ledger.policy import AuditDecision
from flopnet.node.validator.judgement import ProofOutcome, judge
from flopnet.proof.params import PROOF_BYTES
from flopnet.protocol.envelope import seal
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import Heartbeat, Lease, LedgerHead, Submission, TaskAnnouncement
from flopnet.sim.inputs import R1_CONFIG
from flopnet.verifiers.result import Result

NETWORK = "flopnet-sim-0123456789abcdef"
# A typical verdict's reasons, worded as the proof decision and the answer verifier word them.
_PROOF_REASONS = (
    "toploc: 157 chunk(s) pass, worst 7 exponent mismatches (threshold 16), mant_err_mean 0.98 "
    "(threshold 1.6), mant_err_median 1 (threshold 2), sign_mismatches 0 (threshold 4)",
    "sampling replay: 0/5000 mismatches (threshold fraction 0), worst shortfall 0.0213 "
    "(tolerance 0.105)",
    "toploc pooled: average mant_err_mean 0.742 over 157 chunks (limit 1.19)",
    "completion: 5000 tokens, ends with eos (max_new_tokens 32768)",
)


@dataclass(frozen=True)
class Sizes:
    """Envelope bytes of what one sample puts on the network."""

    credit: int
    audit: int
    invalidation: int
    ledger_head: int
    heartbeat: int
    announcement: int
    submission_fixed: int  # a submission's bytes beside its tokens
    submission_per_token: float

    def submission(self, generated: int) -> float:
        return self.submission_fixed + self.submission_per_token * generated


def _lease(identity: Identity, prompt: int) -> Lease:
    return Lease(
        version=1,
        lease_id=b"\x01" * 16,
        task_id="deepscaler-train-000123",
        task_type="math",
        sample_index=1,
        worker=b"\x02" * 32,
        validator=identity.public_key,
        seed=2**62,
        prompt_ids=tuple(100_000 + i for i in range(prompt)),
        max_new_tokens=32768,
        temperature=0.6,
        top_p=0.95,
        issued_at=1.9e9,
        expires_at=1.9e9 + 1800,
    )


def _entries(identity: Identity, passed: bool) -> list[tuple[str, int]]:
    lease = _lease(identity, 180)
    proof = ProofOutcome(passed, _PROOF_REASONS, audited=True)
    answer = Result(1.0, True, ("math-verify: 42 matches 42",), None, (("format", True),))
    j = judge(
        submission_id=b"\x03" * 32,
        contributor=b"\x02" * 32,
        lease=lease,
        generated=5000,
        problem=None,
        decision=AuditDecision(True, 0.05, 200),
        proof=proof,
        answer=answer,
        model_config=R1_CONFIG,
        validator=identity.public_key,
        credit_seq=123_456_789,
    )
    out = []
    for offset, (kind, body) in enumerate(j.entries):
        raw = make_entry(identity, NETWORK, 123_456_789 + offset, b"\x05" * 32, kind, body, 1.9e9)
        out.append((kind, len(raw)))
    return out


@cache
def measured() -> Sizes:
    """Seal one of each record (an R1-sized sample: 180 prompt tokens, 5,000 generated)."""
    identity = Identity(b"\x11" * 32)
    passed = dict(_entries(identity, True))
    failed = dict(_entries(identity, False))
    head = seal(
        LedgerHead(version=1, seq=123_456_789, hash=b"\x05" * 32, timestamp=1.9e9),
        identity,
        NETWORK,
    )
    heartbeat = seal(
        Heartbeat(
            version=1,
            roles=("worker",),
            software="flopnet 0.1",
            gpus=8,
            gpu_names=("NVIDIA H200",) * 8,
            load=0.93,
            free_slots=0,
            announce_seq=0,
            sent_at=1.9e9,
        ),
        identity,
        NETWORK,
    )
    announcement = seal(
        TaskAnnouncement(
            version=1,
            seq=1_000_000,
            task_id="deepscaler-train-000123",
            task_type="math",
            samples=4,
            max_new_tokens=32768,
            announced_at=1.9e9,
        ),
        identity,
        NETWORK,
    )
    lease = seal(_lease(identity, 180), identity, NETWORK)

    def submission(generated: int) -> int:
        proofs = tuple(b"\x07" * PROOF_BYTES for _ in range(-(-generated // 32)))
        tokens = tuple(100_000 + (i % 29_000) for i in range(generated))
        sub = Submission(
            version=1,
            lease=lease,
            token_ids=tokens,
            text="word " * generated,
            finish_reason="stop",
            proofs=proofs,
            generation_seconds=120.0,
        )
        return len(seal(sub, identity, NETWORK))

    small, large = submission(1024), submission(2048)
    per_token = (large - small) / 1024
    return Sizes(
        credit=passed[KIND_CREDIT],
        audit=passed["audit"],
        invalidation=failed["invalidation"],
        ledger_head=len(head),
        heartbeat=len(heartbeat),
        announcement=len(announcement),
        submission_fixed=round(small - per_token * 1024),
        submission_per_token=per_token,
    )
