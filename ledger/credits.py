"""One contributor's credits in a ledger store: pending, final, voided (and by what), rejected.

What the contributor's own node shows (``/credits``, the TUI's "why no credit?" screen) and
what ``flopnet credits`` lists: each credit entry of the contributor, from every stored chain,
with its state under the credit policy (:mod:`flopnet.ledger.policy`) at ``now`` and, for a
voided one, the invalidation that voided it and its reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flopnet.ledger.chain import decode_body, read_entry_unverified
from flopnet.ledger.kinds import InvalidationBody
from flopnet.ledger.policy import Credit, Invalidation, is_final, voids
from flopnet.ledger.store import LedgerStore
from flopnet.protocol.identity import peer_id_from_public_key
from flopnet.protocol.messages import CreditBody

REJECTED = "rejected"  # a credit entry whose submission failed its checks (0 FLOPs)
STATES = ("pending", "final", "void", REJECTED)


@dataclass(frozen=True)
class VoidedBy:
    """The invalidation that voided a credit: where it is and why it was written."""

    signer: bytes
    seq: int
    severity: str
    reason: str
    timestamp: float
    credit_signer: bytes = b""  # the credit it names (the evidence; the one a soft one voids)
    credit_seq: int = -1


@dataclass(frozen=True)
class CreditRecord:
    """A credit entry of the contributor and where it stands."""

    signer: bytes
    seq: int
    entry_hash: bytes
    timestamp: float
    body: CreditBody
    state: str  # one of STATES
    final_at: float  # when a pending credit becomes final
    voided_by: VoidedBy | None = None

    def to_json(self) -> dict[str, Any]:
        b = self.body
        return {
            "validator": self.signer.hex(),
            "validator_peer_id": peer_id_from_public_key(self.signer),
            "seq": self.seq,
            "entry_hash": self.entry_hash.hex(),
            "timestamp": self.timestamp,
            "state": self.state,
            "final_at": self.final_at,
            "task_id": b.task_id,
            "sample_index": b.sample_index,
            "lease_id": b.lease_id.hex(),
            "submission_id": b.submission_id.hex(),
            "prompt_tokens": b.prompt_tokens,
            "generated_tokens": b.generated_tokens,
            "flops": b.flops,
            "flop_formula": b.flop_formula,
            "accepted": b.accepted,
            "answer_score": b.answer_score,
            "reasons": list(b.reasons),
            "voided_by": None
            if self.voided_by is None
            else {
                "validator": self.voided_by.signer.hex(),
                "seq": self.voided_by.seq,
                "severity": self.voided_by.severity,
                "reason": self.voided_by.reason,
                "timestamp": self.voided_by.timestamp,
            },
        }


def _in(column: str, values: Sequence[bytes] | None) -> tuple[str, list[Any]]:
    if values is None:
        return "", []
    return f" AND {column} IN ({','.join('?' * len(values))})", list(values)


def invalidations_of(
    store: LedgerStore, contributor: bytes, validators: Sequence[bytes] | None = None
) -> list[VoidedBy]:
    """Every invalidation naming the contributor, oldest first, with its reason."""
    where, params = _in("i.signer", validators)
    rows = store.connection.execute(
        "SELECT i.signer, i.seq, i.timestamp, e.envelope FROM invalidations i JOIN entries e "
        "ON e.signer = i.signer AND e.seq = i.seq WHERE i.contributor = ?"
        + where
        + " ORDER BY i.timestamp",
        [contributor, *params],
    ).fetchall()
    out = []
    for signer, seq, timestamp, envelope in rows:
        body = decode_body("invalidation", read_entry_unverified(envelope).entry.body)
        assert isinstance(body, InvalidationBody)  # stored entries were verified
        out.append(
            VoidedBy(
                bytes(signer),
                int(seq),
                body.severity,
                body.reason,
                float(timestamp),
                body.credit_signer,
                body.credit_seq,
            )
        )
    return out


def contributor_credits(
    store: LedgerStore,
    contributor: bytes,
    *,
    validators: Sequence[bytes] | None = None,
    lock_window: float,
    now: float | None = None,
    limit: int = 1000,
) -> list[CreditRecord]:
    """The contributor's credit entries, newest first, each with its state at ``now``."""
    now = time.time() if now is None else now
    where, params = _in("c.signer", validators)
    rows = store.connection.execute(
        "SELECT c.signer, c.seq, e.hash, e.timestamp, e.envelope FROM credits c JOIN entries e "
        "ON e.signer = c.signer AND e.seq = c.seq WHERE c.contributor = ?"
        + where
        + " ORDER BY e.timestamp DESC LIMIT ?",
        [contributor, *params, max(0, int(limit))],
    ).fetchall()
    invalidations = invalidations_of(store, contributor, validators)
    out = []
    for signer, seq, entry_hash, timestamp, envelope in rows:
        body = decode_body("credit", read_entry_unverified(envelope).entry.body)
        assert isinstance(body, CreditBody)
        out.append(
            credit_record(
                bytes(signer),
                int(seq),
                bytes(entry_hash),
                float(timestamp),
                body,
                invalidations,
                now,
                lock_window,
            )
        )
    return out


def credit_record(
    signer: bytes,
    seq: int,
    entry_hash: bytes,
    timestamp: float,
    body: CreditBody,
    invalidations: Sequence[VoidedBy],
    now: float,
    lock_window: float,
) -> CreditRecord:
    """A credit's state (pure): rejected, voided by the first invalidation that voids it,
    final once its lock window passed, else pending."""
    final_at = timestamp + lock_window
    if not body.accepted:
        return CreditRecord(signer, seq, entry_hash, timestamp, body, REJECTED, final_at)
    credit = Credit(signer, seq, body.contributor, timestamp, body.flops, True)
    for inv in invalidations:
        view = Invalidation(
            body.contributor, inv.timestamp, inv.severity, inv.credit_signer, inv.credit_seq
        )
        if voids(view, credit, lock_window):
            return CreditRecord(signer, seq, entry_hash, timestamp, body, "void", final_at, inv)
    state = "final" if is_final(timestamp, now, lock_window) else "pending"
    return CreditRecord(signer, seq, entry_hash, timestamp, body, state, final_at)


def summarize(records: Sequence[CreditRecord]) -> dict[str, Any]:
    """FLOPs and counts by state."""
    out: dict[str, Any] = {state: {"count": 0, "flops": 0} for state in STATES}
    for r in records:
        out[r.state]["count"] += 1
        out[r.state]["flops"] += r.body.flops
    return out
