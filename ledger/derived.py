"""The rows derived from a verified entry, and the credit sums per contributor and time bucket.

Pure: a function of an entry's signer, seq, timestamp and body. The store writes these rows in
the transaction that stores the entry, and the whole-store check recomputes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flopnet.ledger.kinds import AuditBody, InvalidationBody, ProfileBody, open_profile
from flopnet.protocol.codec import Record
from flopnet.protocol.messages import CreditBody

HOUR = 3600
QUARTER = 6 * HOUR  # a quarter of a UTC day
DAY = 86400
_LOW32 = 0xFFFFFFFF


def hour_of(timestamp: float) -> int:
    """The hour bucket of a timestamp (hours since the epoch, UTC)."""
    return int(timestamp // HOUR)


def quarter_of(timestamp: float) -> int:
    """The quarter-day bucket of a timestamp (6-hour periods since the epoch, UTC)."""
    return int(timestamp // QUARTER)


def day_of(timestamp: float) -> int:
    """The day bucket of a timestamp (days since the epoch, UTC)."""
    return int(timestamp // DAY)


@dataclass(frozen=True)
class Derived:
    """The rows an entry adds to the derived tables: ``rows`` maps table name to its one row."""

    rows: dict[str, tuple[object, ...]]

    @property
    def credit(self) -> tuple[object, ...] | None:
        return self.rows.get("credits")


def derive(signer: bytes, seq: int, timestamp: float, body: Record, network_id: str) -> Derived:
    """The derived rows of a verified entry (pure; raises MalformedMessage on a bad profile)."""
    if isinstance(body, CreditBody):
        row: tuple[object, ...] = (
            signer,
            seq,
            body.contributor,
            body.flops,
            body.flop_formula,
            body.generated_tokens,
            body.prompt_tokens,
            body.task_id,
            body.submission_id,
            int(body.accepted),
            body.answer_score,
            timestamp,
            body.lease_id,
            body.sample_index,
        )
        return Derived({"credits": row})
    if isinstance(body, InvalidationBody):
        row = (
            signer,
            seq,
            body.contributor,
            body.severity,
            body.credit_signer,
            body.credit_seq,
            body.submission_id,
            timestamp,
        )
        return Derived({"invalidations": row})
    if isinstance(body, AuditBody):
        row = (
            signer,
            seq,
            body.contributor,
            body.submission_id,
            int(body.passed),
            body.rate,
            body.consecutive_valid,
            timestamp,
        )
        return Derived({"audits": row})
    if isinstance(body, ProfileBody):
        p = open_profile(body, network_id)
        row = (signer, seq, p.contributor, p.display_name, p.team, p.updated_at, p.profile_id)
        return Derived({"profiles": row})
    return Derived({})


def credit_amounts(credit: tuple[object, ...]) -> tuple[int, int, int, int, int]:
    """(hi, lo, accepted, rejected, tokens) a ``credits`` row adds to the sums: rejected credits
    add FLOPs and tokens of zero, whatever their body says."""
    flops, tokens, accepted = credit[3], credit[5], credit[9]
    assert isinstance(flops, int) and isinstance(tokens, int)
    if accepted:
        return flops >> 32, flops & _LOW32, 1, 0, tokens
    return 0, 0, 0, 1, 0


def add_amounts(sums: dict[Any, list[int]], key: Any, amounts: tuple[int, ...]) -> None:
    current = sums.get(key)
    if current is None:
        sums[key] = list(amounts)
    else:
        for i, value in enumerate(amounts):
            current[i] += value


class Sums:
    """Credit sums of one signer's credits: all time per (contributor, formula), and per day,
    quarter day and hour per contributor (what the sum tables hold)."""

    def __init__(self) -> None:
        self.totals: dict[Any, list[int]] = {}
        self.days: dict[Any, list[int]] = {}
        self.quarters: dict[Any, list[int]] = {}
        self.hours: dict[Any, list[int]] = {}

    def add(self, credit: tuple[object, ...]) -> None:
        contributor, formula, timestamp = credit[2], credit[4], credit[11]
        assert isinstance(timestamp, float)
        amounts = credit_amounts(credit)
        add_amounts(self.totals, (contributor, formula), amounts)
        add_amounts(self.days, (day_of(timestamp), contributor), amounts)
        add_amounts(self.quarters, (quarter_of(timestamp), contributor), amounts)
        add_amounts(self.hours, (hour_of(timestamp), contributor), amounts)
