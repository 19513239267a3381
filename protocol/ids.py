"""GossipSub topic names and stream protocol ids, each carrying the protocol version.

Versioning policy: a stream protocol id or topic name changes its version when its messages
change incompatibly; a node may serve several versions side by side during a migration.
"""

from __future__ import annotations

from flopnet.protocol.host import StreamLimits
from flopnet.protocol.messages import (
    MAX_ENVELOPE_BYTES,
    AnnouncementRange,
    AnnouncementRangeRequest,
    Claim,
    ContributorProfile,
    Lease,
    LedgerEntry,
    LedgerRange,
    LedgerRangeRequest,
    Submission,
    SubmissionReceipt,
    TaskSpec,
    TaskSpecRequest,
    Verdict,
    VerdictRequest,
)

CLAIM_PROTOCOL = "/flopnet/claim/1.0.0"
SUBMIT_PROTOCOL = "/flopnet/submit/1.0.0"
VERDICT_PROTOCOL = "/flopnet/verdict/1.0.0"
ANNOUNCEMENTS_PROTOCOL = "/flopnet/announcements/1.0.0"

CLAIM_LIMITS = StreamLimits(
    max_request=MAX_ENVELOPE_BYTES[Claim.TYPE],
    max_response=MAX_ENVELOPE_BYTES[Lease.TYPE],
    timeout=10.0,
)
# The receipt comes back once the submission is stored: no waiting for the model.
SUBMIT_LIMITS = StreamLimits(
    max_request=MAX_ENVELOPE_BYTES[Submission.TYPE],
    max_response=MAX_ENVELOPE_BYTES[SubmissionReceipt.TYPE],
    timeout=30.0,
)
# A verdict request waits up to VerdictRequest.wait_seconds (at most 60 s) for a pending verdict.
VERDICT_WAIT_S = 30.0
VERDICT_LIMITS = StreamLimits(
    max_request=MAX_ENVELOPE_BYTES[VerdictRequest.TYPE],
    max_response=MAX_ENVELOPE_BYTES[Verdict.TYPE],
    timeout=VERDICT_WAIT_S + 15.0,
)
ANNOUNCEMENTS_LIMITS = StreamLimits(
    max_request=MAX_ENVELOPE_BYTES[AnnouncementRangeRequest.TYPE],
    max_response=MAX_ENVELOPE_BYTES[AnnouncementRange.TYPE],
    timeout=15.0,
)
MAX_GOSSIP_BYTES = max(MAX_ENVELOPE_BYTES[LedgerEntry.TYPE], 4096)


def tasks_topic(network_id: str) -> str:
    """Topic of task announcements for one network."""
    return f"flopnet/1/{network_id}/tasks"


def ledger_topic(network_id: str) -> str:
    """Topic of ledger entries and heads for one network."""
    return f"flopnet/1/{network_id}/ledger"


def heartbeat_topic(network_id: str) -> str:
    """Topic of heartbeats (liveness, capacity, announcement heads) for one network."""
    return f"flopnet/1/{network_id}/heartbeat"


# Ledger replication: any node serves the verified chains it holds, a range per stream; a sync
# of 100,000 entries takes ~50 ranges, each verified entry by entry before it is stored.
LEDGER_RANGE_PROTOCOL = "/flopnet/ledger-range/1.0.0"
LEDGER_RANGE_LIMITS = StreamLimits(
    max_request=MAX_ENVELOPE_BYTES[LedgerRangeRequest.TYPE],
    max_response=MAX_ENVELOPE_BYTES[LedgerRange.TYPE],
    timeout=30.0,
)
# A contributor hands its signed profile to a validator, which records it in its chain and
# answers with that ledger entry.
PROFILE_PROTOCOL = "/flopnet/profile/1.0.0"
PROFILE_LIMITS = StreamLimits(
    max_request=MAX_ENVELOPE_BYTES[ContributorProfile.TYPE],
    max_response=MAX_ENVELOPE_BYTES[LedgerEntry.TYPE],
    timeout=10.0,
)
# A validator fetches the spec of a task it does not hold (problem, gold answer, tests) from the
# publisher that signed the lease; publishers answer the manifest's validators only.
TASK_SPEC_PROTOCOL = "/flopnet/task-spec/1.0.0"
TASK_SPEC_LIMITS = StreamLimits(
    max_request=MAX_ENVELOPE_BYTES[TaskSpecRequest.TYPE],
    max_response=MAX_ENVELOPE_BYTES[TaskSpec.TYPE],
    timeout=20.0,
)
