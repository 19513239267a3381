"""Every stream protocol and gossip topic of a flopnet network, declared once.

Each stream is an :class:`~flopnet.protocol.rpc.Rpc`: its id, the signed request record, the
records that may answer it, and the deadline of the whole exchange (size caps follow from the
records). Versioning policy: a protocol id or topic name changes its version when its messages
change incompatibly; a node may serve several versions side by side during a migration.
"""

from __future__ import annotations

from flopnet.protocol.messages import (
    MAX_ENVELOPE_BYTES,
    AnnouncementRange,
    AnnouncementRangeRequest,
    Claim,
    ContributorProfile,
    Lease,
    LeaseRelease,
    LedgerCheckpoint,
    LedgerCheckpointRequest,
    LedgerEntry,
    LedgerRange,
    LedgerRangeRequest,
    Refusal,
    ReleaseAck,
    Submission,
    SubmissionReceipt,
    TaskSpec,
    TaskSpecRequest,
    Verdict,
    VerdictRequest,
)
from flopnet.protocol.rpc import GossipBudget, RequestBudget, Rpc

# A worker claims an announced task from its publisher: a signed lease, or a refusal. An honest
# worker claims a batch (at most its lease quota plus a few refusals) per generation and its
# pacer keeps inside this budget; a claimer ignoring "wait" refusals is held to it, told to
# slow down and charged beyond it (each request costs the publisher ~1 ms of stream handling).
CLAIM_BUDGET = RequestBudget(rate_per_s=8.0, burst=64.0)
CLAIM = Rpc("/flopnet/claim/1.0.0", Claim, (Lease, Refusal), timeout=10.0, budget=CLAIM_BUDGET)
# The receipt comes back once the submission is stored: no waiting for the model.
SUBMIT = Rpc("/flopnet/submit/1.0.0", Submission, (SubmissionReceipt, Refusal), timeout=30.0)
# A verdict request waits up to VerdictRequest.wait_seconds (at most 60 s) for a pending verdict.
VERDICT_WAIT_S = 30.0
VERDICT = Rpc("/flopnet/verdict/1.0.0", VerdictRequest, (Verdict, Refusal), VERDICT_WAIT_S + 15.0)
# Announcements a node missed on gossip, from the publisher's log.
ANNOUNCEMENTS = Rpc(
    "/flopnet/announcements/1.0.0", AnnouncementRangeRequest, (AnnouncementRange,), timeout=15.0
)
# Ledger replication: any node serves the verified chains it holds, a range per stream; a sync
# of 100,000 entries takes ~50 ranges, each verified entry by entry before it is stored.
LEDGER_RANGE = Rpc(
    "/flopnet/ledger-range/1.0.0", LedgerRangeRequest, (LedgerRange, Refusal), timeout=30.0
)
# Joining without the history: the latest checkpoint a node holds of a validator's chain (its
# signed entry and state, up to 4 MiB); the joiner then range-syncs only the entries after it.
# A joiner asks each peer once per chain (again every 5 s while the peer holds none of it yet):
# a budget above that keeps a 200-byte request from buying 4 MiB of upload at 50 a second.
CHECKPOINT_BUDGET = RequestBudget(rate_per_s=2.0, burst=64.0)
LEDGER_CHECKPOINT = Rpc(
    "/flopnet/ledger-checkpoint/1.0.0",
    LedgerCheckpointRequest,
    (LedgerCheckpoint, Refusal),
    timeout=60.0,
    budget=CHECKPOINT_BUDGET,
)
# A contributor hands its signed profile to a validator, which records it in its chain and
# answers with that ledger entry.
PROFILE = Rpc("/flopnet/profile/1.0.0", ContributorProfile, (LedgerEntry, Refusal), timeout=10.0)
# A validator fetches the spec of a task it does not hold (problem, gold answer, tests) from the
# publisher that signed the lease; publishers answer the manifest's validators only.
TASK_SPEC = Rpc("/flopnet/task-spec/1.0.0", TaskSpecRequest, (TaskSpec, Refusal), timeout=20.0)

# A worker hands back a lease it will not finish (paused, stopping, moving to other GPUs); only
# the lease's own worker may, and the publisher re-offers the sample at once.
RELEASE = Rpc("/flopnet/release/1.0.0", LeaseRelease, (ReleaseAck, Refusal), timeout=10.0)

RPCS: tuple[Rpc, ...] = (
    CLAIM,
    SUBMIT,
    VERDICT,
    ANNOUNCEMENTS,
    LEDGER_RANGE,
    LEDGER_CHECKPOINT,
    PROFILE,
    TASK_SPEC,
    RELEASE,
)

MAX_GOSSIP_BYTES = max(MAX_ENVELOPE_BYTES[LedgerEntry.TYPE], 4096)


# Gossip an author may publish per topic. A validator writes ledger entries as fast as it credits
# work; a heartbeat is due once per interval, so twice the rate (and a small burst) is a flood.
LEDGER_GOSSIP = GossipBudget(rate_per_s=200.0, burst=2000.0)


def heartbeat_budget(interval_s: float) -> GossipBudget:
    """What one node may publish on the heartbeat topic, given the heartbeat interval."""
    return GossipBudget(rate_per_s=2.0 / interval_s, burst=10.0)


# A submission may arrive a grace after its lease's deadline (it was on its way); a publisher
# re-offers an expired sample only after the grace too, so a late result and a re-issued lease
# never overlap. Both sides derive it from the manifest's lease length, so they agree.
MAX_LEASE_GRACE_S = 30.0


def lease_grace(lease_seconds: float) -> float:
    """How long after its deadline a lease's result is still accepted (and the sample held)."""
    return min(MAX_LEASE_GRACE_S, lease_seconds / 4)


def tasks_topic(network_id: str) -> str:
    """Topic of task announcements for one network."""
    return f"flopnet/1/{network_id}/tasks"


def ledger_topic(network_id: str) -> str:
    """Topic of ledger entries and heads for one network."""
    return f"flopnet/1/{network_id}/ledger"


def heartbeat_topic(network_id: str) -> str:
    """Topic of heartbeats (liveness, capacity, announcement heads) for one network."""
    return f"flopnet/1/{network_id}/heartbeat"
