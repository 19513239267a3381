"""GossipSub topic names and stream protocol ids, each carrying the protocol version.

Versioning policy: a stream protocol id or topic name changes its version when its messages
change incompatibly; a node may serve several versions side by side during a migration.
"""

from __future__ import annotations

from protocol.host import StreamLimits
from protocol.messages import (
    MAX_ENVELOPE_BYTES,
    AnnouncementRange,
    AnnouncementRangeRequest,
    Claim,
    Lease,
    LedgerEntry,
    Submission,
    SubmissionReceipt,
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
