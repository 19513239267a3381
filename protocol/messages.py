"""The wire messages, defined once as frozen typed records.

Each record with a ``TYPE`` travels inside a signed :mod:`protocol.envelope`; the envelope's
signer is the message's author (publisher for announcements and leases, worker for claims and
submissions, validator for verdicts and ledger entries). Field bounds are the decode caps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from flopnet.protocol.codec import Record, bounded

PROTOCOL_VERSION = 1
KEY = {"len": 32}
HASH = {"len": 32}
MAX_TOKENS = 32768
MAX_PROMPT_TOKENS = 16384
MAX_TEXT = 256 * 1024


@dataclass(frozen=True)
class TaskAnnouncement(Record):
    """A publisher offers ``samples`` samples of one task (gossip)."""

    TYPE: ClassVar[str] = "task_announcement"
    version: int = bounded(min=1, max=1)
    seq: int = bounded(min=0)  # per-publisher sequence number, so gaps are visible
    task_id: str = bounded(max_len=128)
    task_type: str = bounded(max_len=32)
    samples: int = bounded(min=1, max=64)
    max_new_tokens: int = bounded(min=1, max=MAX_TOKENS)
    announced_at: float = bounded(min=0.0)


@dataclass(frozen=True)
class Claim(Record):
    """A worker asks a publisher for a lease on one task (stream request)."""

    TYPE: ClassVar[str] = "claim"
    version: int = bounded(min=1, max=1)
    task_id: str = bounded(max_len=128)
    nonce: bytes = bounded(len=16)
    claimed_at: float = bounded(min=0.0)


@dataclass(frozen=True)
class Lease(Record):
    """The publisher's signed grant of one sample of a task to one worker.

    The lease carries the prompt's token ids, so the validator trusts the publisher's tokenisation
    rather than the worker's, and the sampling seed, so the validator can replay sampling.
    """

    TYPE: ClassVar[str] = "lease"
    version: int = bounded(min=1, max=1)
    lease_id: bytes = bounded(len=16)
    task_id: str = bounded(max_len=128)
    task_type: str = bounded(max_len=32)
    sample_index: int = bounded(min=0, max=63)
    worker: bytes = bounded(**KEY)
    validator: bytes = bounded(**KEY)
    seed: int = bounded(min=0)
    prompt_ids: tuple[int, ...] = bounded(
        max_items=MAX_PROMPT_TOKENS, item={"min": 0, "max": 2**31 - 1}
    )
    max_new_tokens: int = bounded(min=1, max=MAX_TOKENS)
    temperature: float = bounded(min=0.0, max=10.0)
    top_p: float = bounded(min=0.0, max=1.0)
    issued_at: float = bounded(min=0.0)
    expires_at: float = bounded(min=0.0)


@dataclass(frozen=True)
class Refusal(Record):
    """A negative answer to a request, with a machine-readable code and a human reason."""

    TYPE: ClassVar[str] = "refusal"
    version: int = bounded(min=1, max=1)
    code: str = bounded(max_len=64)
    reason: str = bounded(max_len=1024)


@dataclass(frozen=True)
class Submission(Record):
    """A worker's result for a lease, sent to the lease's validator (stream request)."""

    TYPE: ClassVar[str] = "submission"
    version: int = bounded(min=1, max=1)
    lease: bytes = bounded(max_len=256 * 1024)  # the publisher's signed lease envelope, verbatim
    token_ids: tuple[int, ...] = bounded(max_items=MAX_TOKENS, item={"min": 0, "max": 2**31 - 1})
    text: str = bounded(max_len=MAX_TEXT)
    finish_reason: str = bounded(max_len=16)
    proofs: tuple[bytes, ...] = bounded(max_items=MAX_TOKENS // 32 + 1, item={"max_len": 1024})
    generation_seconds: float = bounded(min=0.0)


@dataclass(frozen=True)
class Verdict(Record):
    """The validator's answer to a submission."""

    TYPE: ClassVar[str] = "verdict"
    version: int = bounded(min=1, max=1)
    submission_id: bytes = bounded(**HASH)
    lease_id: bytes = bounded(len=16)
    accepted: bool = bounded()
    reasons: tuple[str, ...] = bounded(max_items=64, item={"max_len": 1024})
    answer_score: float = bounded(min=0.0, max=1.0)
    flops: int = bounded(min=0)
    ledger_seq: int = bounded(min=-1)  # -1 when nothing was appended


@dataclass(frozen=True)
class CreditBody(Record):
    """The body of a ``credit`` ledger entry: what was checked and what it earned."""

    contributor: bytes = bounded(**KEY)
    lease_id: bytes = bounded(len=16)
    submission_id: bytes = bounded(**HASH)
    task_id: str = bounded(max_len=128)
    sample_index: int = bounded(min=0, max=63)
    prompt_tokens: int = bounded(min=0)
    generated_tokens: int = bounded(min=0)
    flops: int = bounded(min=0)
    flop_formula: str = bounded(max_len=64)
    accepted: bool = bounded()
    answer_score: float = bounded(min=0.0, max=1.0)
    reasons: tuple[str, ...] = bounded(max_items=64, item={"max_len": 1024})


@dataclass(frozen=True)
class LedgerEntry(Record):
    """One link of a validator's hash chain; the envelope's signer is the validator."""

    TYPE: ClassVar[str] = "ledger_entry"
    version: int = bounded(min=1, max=1)
    seq: int = bounded(min=0)
    prev_hash: bytes = bounded(**HASH)
    timestamp: float = bounded(min=0.0)
    kind: str = bounded(max_len=32)
    body: bytes = bounded(max_len=64 * 1024)  # canonical bytes of the kind's body record


@dataclass(frozen=True)
class SubmissionReceipt(Record):
    """The validator's acknowledgement that a submission is stored durably and queued."""

    TYPE: ClassVar[str] = "submission_receipt"
    version: int = bounded(min=1, max=1)
    submission_id: bytes = bounded(**HASH)
    lease_id: bytes = bounded(len=16)
    received_at: float = bounded(min=0.0)
    queue_position: int = bounded(min=0)


@dataclass(frozen=True)
class VerdictRequest(Record):
    """A worker asks for the verdict on a submission, waiting up to ``wait_seconds``."""

    TYPE: ClassVar[str] = "verdict_request"
    version: int = bounded(min=1, max=1)
    submission_id: bytes = bounded(**HASH)
    wait_seconds: float = bounded(min=0.0, max=60.0)


@dataclass(frozen=True)
class LedgerHead(Record):
    """A validator's chain head, gossiped so replicas notice what they miss."""

    TYPE: ClassVar[str] = "ledger_head"
    version: int = bounded(min=1, max=1)
    seq: int = bounded(min=0)
    hash: bytes = bounded(**HASH)
    timestamp: float = bounded(min=0.0)  # when announced: each announcement is new bytes


@dataclass(frozen=True)
class Heartbeat(Record):
    """Liveness and capacity of a node (gossip), with the publisher's announcement head."""

    TYPE: ClassVar[str] = "heartbeat"
    version: int = bounded(min=1, max=1)
    roles: tuple[str, ...] = bounded(max_items=3, item={"max_len": 16})
    software: str = bounded(max_len=64)
    gpus: int = bounded(min=0, max=1024)
    gpu_names: tuple[str, ...] = bounded(max_items=16, item={"max_len": 128})
    load: float = bounded(min=0.0, max=1e6)
    free_slots: int = bounded(min=0, max=1_000_000)
    announce_seq: int = bounded(min=0)  # 0 when the node publishes nothing
    sent_at: float = bounded(min=0.0)


@dataclass(frozen=True)
class ContributorProfile(Record):
    """How a contributor wants to appear on the leaderboard (signed by the contributor)."""

    TYPE: ClassVar[str] = "contributor_profile"
    version: int = bounded(min=1, max=1)
    display_name: str = bounded(max_len=64)
    team: str = bounded(max_len=64)
    updated_at: float = bounded(min=0.0)


@dataclass(frozen=True)
class AnnouncementRangeRequest(Record):
    """Ask a publisher for its announcements ``from_seq`` onwards (gap resync)."""

    TYPE: ClassVar[str] = "announcement_range_request"
    version: int = bounded(min=1, max=1)
    from_seq: int = bounded(min=1)
    limit: int = bounded(min=1, max=512)


@dataclass(frozen=True)
class AnnouncementRange(Record):
    """Sealed announcement envelopes in seq order, and the publisher's current head."""

    TYPE: ClassVar[str] = "announcement_range"
    version: int = bounded(min=1, max=1)
    items: tuple[bytes, ...] = bounded(max_items=512, item={"max_len": 4096})
    head_seq: int = bounded(min=0)


RELEASE_REASONS = ("paused", "stopping", "devices_changed", "model_failed", "restarted")


@dataclass(frozen=True)
class LeaseRelease(Record):
    """A worker hands a lease back before submitting anything for it (signed by the lease's
    worker), so its publisher re-offers the sample at once instead of waiting for it to lapse."""

    TYPE: ClassVar[str] = "lease_release"
    version: int = bounded(min=1, max=1)
    lease_id: bytes = bounded(len=16)
    task_id: str = bounded(max_len=128)
    sample_index: int = bounded(min=0, max=63)
    reason: str = bounded(max_len=32)  # one of RELEASE_REASONS; others are refused
    released_at: float = bounded(min=0.0)


@dataclass(frozen=True)
class ReleaseAck(Record):
    """The publisher's answer to a lease release: the sample is open again (``reopened``), or
    it was settled or re-issued already and nothing changed."""

    TYPE: ClassVar[str] = "release_ack"
    version: int = bounded(min=1, max=1)
    lease_id: bytes = bounded(len=16)
    reopened: bool = bounded()


MAX_TASK_SPEC_BYTES = 4 * 1024 * 1024  # a code task's tests can run to megabytes


@dataclass(frozen=True)
class TaskSpecRequest(Record):
    """A validator asks a publisher for one task's full spec (the lease names only its id)."""

    TYPE: ClassVar[str] = "task_spec_request"
    version: int = bounded(min=1, max=1)
    task_id: str = bounded(max_len=128)


@dataclass(frozen=True)
class TaskSpec(Record):
    """One task as its publisher defines it: the problem, the gold answer and the verifier's
    further fields (code tests, entry point) as a canonical msgpack map. Served to the
    manifest's validators only, since it holds the answer."""

    TYPE: ClassVar[str] = "task_spec"
    version: int = bounded(min=1, max=1)
    task_id: str = bounded(max_len=128)
    task_type: str = bounded(max_len=32)
    problem: str = bounded(max_len=MAX_TEXT)
    answer: str = bounded(max_len=64 * 1024)
    verifier: bytes = bounded(max_len=MAX_TASK_SPEC_BYTES - MAX_TEXT - 128 * 1024)


# Version 2 added the proof policy's pooled baseline, sign limit and replay tolerance, version 3
# the replay tally's honest rate; an older manifest is refused: found the network again with
# ``flopnet network init``.
MANIFEST_VERSION = 3


@dataclass(frozen=True)
class NetworkManifest(Record):
    """Everything the nodes of one network agree on, signed by the founder key.

    ``network_id`` ends with the first 16 hex digits of SHA-256(founder key), so a manifest
    signed by any other key cannot claim the same network. The proof fields are the validators'
    :class:`proof.policy.ProofPolicy` (``proof.policy.policy_from_params``).
    """

    TYPE: ClassVar[str] = "network_manifest"
    version: int = bounded(min=MANIFEST_VERSION, max=MANIFEST_VERSION)
    network_id: str = bounded(max_len=64)
    founder: bytes = bounded(**KEY)
    created_at: float = bounded(min=0.0)
    model: str = bounded(max_len=256)  # a seeded model name, or a Hugging Face id
    model_revision: str = bounded(max_len=128)
    model_seed: int = bounded(min=0)
    dtype: str = bounded(max_len=16)
    weights_sha256: str = bounded(max_len=64)  # empty: not pinned
    max_new_tokens: int = bounded(min=1, max=MAX_TOKENS)
    temperature: float = bounded(min=0.0, max=10.0)
    top_p: float = bounded(min=0.0, max=1.0)
    samples_per_task: int = bounded(min=1, max=64)
    lease_seconds: float = bounded(min=1.0, max=86400.0)
    proof_chunk: int = bounded(min=1, max=4096)
    proof_topk: int = bounded(min=1, max=4096)
    max_exp_mismatches: int = bounded(min=0, max=4096)
    max_mant_err_mean: float = bounded(min=0.0)
    max_mant_err_median: float = bounded(min=0.0)
    max_sign_mismatches: int = bounded(min=0, max=4096)
    mant_err_mean_baseline: float = bounded(min=0.0)  # of the pooled check; 0: no pooled check
    replay_tolerance: float = bounded(min=0.0)  # score units a sampled token may fall short by
    max_replay_mismatch_fraction: float = bounded(min=0.0, max=1.0)
    honest_replay_rate: float = bounded(min=0.0, max=1.0)  # per-contributor tally; 0: none
    publishers: tuple[bytes, ...] = bounded(max_items=256, item=KEY)
    validators: tuple[bytes, ...] = bounded(max_items=256, item=KEY)
    lock_window_seconds: float = bounded(min=0.0)
    audit_rate_floor: float = bounded(min=0.0, max=1.0)
    bootstrap: tuple[str, ...] = bounded(max_items=64, item={"max_len": 512})


@dataclass(frozen=True)
class ReachabilityRequest(Record):
    """Ask a peer to dial us back on these addresses (are we reachable from outside?)."""

    TYPE: ClassVar[str] = "reachability_request"
    version: int = bounded(min=1, max=1)
    addrs: tuple[str, ...] = bounded(max_items=8, item={"max_len": 256})


@dataclass(frozen=True)
class ReachabilityReply(Record):
    """The addresses the peer could dial, with a fresh identity, within its deadline."""

    TYPE: ClassVar[str] = "reachability_reply"
    version: int = bounded(min=1, max=1)
    reachable: tuple[str, ...] = bounded(max_items=8, item={"max_len": 256})


MAX_LEDGER_RANGE = 2048  # entries in one ledger_range


@dataclass(frozen=True)
class LedgerRangeRequest(Record):
    """Ask any node for a validator's ledger entries from ``from_seq`` on (range sync)."""

    TYPE: ClassVar[str] = "ledger_range_request"
    version: int = bounded(min=1, max=1)
    signer: bytes = bounded(**KEY)  # the validator whose chain is wanted
    from_seq: int = bounded(min=0)
    limit: int = bounded(min=1, max=MAX_LEDGER_RANGE)


@dataclass(frozen=True)
class LedgerRange(Record):
    """Sealed ledger entries of one validator in seq order, and the responder's head of that
    chain (-1 when it holds none); each entry is verified on its own by the receiver."""

    TYPE: ClassVar[str] = "ledger_range"
    version: int = bounded(min=1, max=1)
    signer: bytes = bounded(**KEY)
    entries: tuple[bytes, ...] = bounded(
        max_items=MAX_LEDGER_RANGE,
        item={"max_len": 80 * 1024},  # a ledger_entry's cap
    )
    head_seq: int = bounded(min=-1)


# A checkpoint's state fits one envelope with its entry (ledger/checkpoint.py's format).
MAX_CHECKPOINT_STATE_BYTES = 4 * 1024 * 1024 - 64 * 1024


@dataclass(frozen=True)
class LedgerCheckpointRequest(Record):
    """Ask any node for the latest checkpoint it holds of a validator's chain (joining)."""

    TYPE: ClassVar[str] = "ledger_checkpoint_request"
    version: int = bounded(min=1, max=1)
    signer: bytes = bounded(**KEY)
    # Made at least this long (chain time) before the responder's head: the joiner needs the
    # single entries of its longest window after the checkpoint.
    min_age_s: float = bounded(min=0.0, max=366 * 86400.0)


@dataclass(frozen=True)
class LedgerCheckpoint(Record):
    """A validator's signed checkpoint entry, verbatim, and the state it commits to by SHA-256
    (both empty when the responder holds none old enough); the responder's head of that chain.
    The receiver verifies both before adopting them."""

    TYPE: ClassVar[str] = "ledger_checkpoint"
    version: int = bounded(min=1, max=1)
    signer: bytes = bounded(**KEY)
    entry: bytes = bounded(max_len=80 * 1024)  # a ledger_entry's cap
    state: bytes = bounded(max_len=MAX_CHECKPOINT_STATE_BYTES)
    head_seq: int = bounded(min=-1)


MESSAGE_TYPES: dict[str, type[Record]] = {
    cls.TYPE: cls
    for cls in (
        TaskAnnouncement,
        Claim,
        Lease,
        Refusal,
        Submission,
        SubmissionReceipt,
        VerdictRequest,
        Verdict,
        LedgerEntry,
        LedgerHead,
        Heartbeat,
        ContributorProfile,
        AnnouncementRangeRequest,
        AnnouncementRange,
        NetworkManifest,
        ReachabilityRequest,
        ReachabilityReply,
        LedgerRangeRequest,
        LedgerRange,
        LedgerCheckpointRequest,
        LedgerCheckpoint,
        TaskSpecRequest,
        TaskSpec,
        LeaseRelease,
        ReleaseAck,
    )
}

# Per-type caps on the whole envelope, checked before any parsing.
MAX_ENVELOPE_BYTES: dict[str, int] = {
    TaskAnnouncement.TYPE: 4 * 1024,
    Claim.TYPE: 1024,
    Lease.TYPE: 200 * 1024,
    Refusal.TYPE: 4 * 1024,
    Submission.TYPE: 4 * 1024 * 1024,
    SubmissionReceipt.TYPE: 1024,
    VerdictRequest.TYPE: 1024,
    Verdict.TYPE: 80 * 1024,
    LedgerEntry.TYPE: 80 * 1024,
    LedgerHead.TYPE: 1024,
    Heartbeat.TYPE: 4 * 1024,
    ContributorProfile.TYPE: 1024,
    AnnouncementRangeRequest.TYPE: 1024,
    AnnouncementRange.TYPE: 512 * 4200,
    NetworkManifest.TYPE: 64 * 1024,
    ReachabilityRequest.TYPE: 4 * 1024,
    ReachabilityReply.TYPE: 4 * 1024,
    LedgerRangeRequest.TYPE: 1024,
    LedgerRange.TYPE: 4 * 1024 * 1024,  # a range is cut to fit, whatever its entry count
    LedgerCheckpointRequest.TYPE: 1024,
    LedgerCheckpoint.TYPE: 4 * 1024 * 1024,
    TaskSpecRequest.TYPE: 1024,
    TaskSpec.TYPE: MAX_TASK_SPEC_BYTES,
    LeaseRelease.TYPE: 1024,
    ReleaseAck.TYPE: 1024,
}
