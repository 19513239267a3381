"""GossipSub topic names and stream protocol ids, each carrying the protocol version."""

from __future__ import annotations

from protocol.host import StreamLimits
from protocol.messages import MAX_ENVELOPE_BYTES, Claim, Lease, LedgerEntry, Submission, Verdict

CLAIM_PROTOCOL = "/flopnet/claim/1.0.0"
SUBMIT_PROTOCOL = "/flopnet/submit/1.0.0"

CLAIM_LIMITS = StreamLimits(
    max_request=MAX_ENVELOPE_BYTES[Claim.TYPE],
    max_response=MAX_ENVELOPE_BYTES[Lease.TYPE],
    timeout=10.0,
)
# A submission waits for its verdict: the validator's prefill, proof check and answer verifier.
SUBMIT_LIMITS = StreamLimits(
    max_request=MAX_ENVELOPE_BYTES[Submission.TYPE],
    max_response=MAX_ENVELOPE_BYTES[Verdict.TYPE],
    timeout=180.0,
)
MAX_GOSSIP_BYTES = max(MAX_ENVELOPE_BYTES[LedgerEntry.TYPE], 4096)


def tasks_topic(network_id: str) -> str:
    """Topic of task announcements for one network."""
    return f"flopnet/1/{network_id}/tasks"


def ledger_topic(network_id: str) -> str:
    """Topic of ledger entries for one network."""
    return f"flopnet/1/{network_id}/ledger"
