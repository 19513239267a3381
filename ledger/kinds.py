"""Bodies of the ledger entry kinds beyond ``credit``: invalidation, audit result, profile.

A body is a record without an envelope type: it travels as the ``body`` bytes of a signed
``ledger_entry`` and is decoded strictly like every wire record. Some kinds need more than the
record's own bounds (a profile embeds an envelope signed by the contributor); :data:`BODY_CHECKS`
holds those checks, run by :mod:`ledger.chain` with the network id whenever an entry is verified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flopnet.protocol.codec import Record, bounded
from flopnet.protocol.envelope import open_envelope
from flopnet.protocol.errors import MalformedMessage
from flopnet.protocol.messages import (
    MAX_CHECKPOINT_STATE_BYTES,
    MAX_ENVELOPE_BYTES,
    ContributorProfile,
    CreditBody,
)

KIND_CREDIT = "credit"
KIND_INVALIDATION = "invalidation"
KIND_AUDIT = "audit"
KIND_PROFILE = "profile"
KIND_CHECKPOINT = "checkpoint"

# A checkpoint state (ledger/checkpoint.py) travels beside its entry in one 4 MiB reply.
MAX_STATE_BYTES = MAX_CHECKPOINT_STATE_BYTES
MIN_STATE_BYTES = 86  # header, formula count and row counts of an empty state

HARD = "hard"
SOFT = "soft"
SEVERITIES = (HARD, SOFT)


@dataclass(frozen=True)
class InvalidationBody(Record):
    """The body of an ``invalidation`` entry: a contributor's credit is void.

    ``hard`` voids every credit of the contributor that is still pending (on every validator's
    chain); ``soft`` voids only the credit entry ``credit_seq`` of ``credit_signer``'s chain.
    Final credits are never voided. The named credit is the evidence in both cases.
    """

    contributor: bytes = bounded(len=32)
    severity: str = bounded(max_len=8)
    credit_signer: bytes = bounded(len=32)
    credit_seq: int = bounded(min=0)
    submission_id: bytes = bounded(len=32)
    reason: str = bounded(max_len=1024)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")


@dataclass(frozen=True)
class AuditBody(Record):
    """The body of an ``audit`` entry: the result of auditing one submission.

    ``rate`` is the audit probability the policy gave the contributor and ``consecutive_valid``
    the count it was computed from, so anyone can check the rate against the manifest's policy.
    """

    contributor: bytes = bounded(len=32)
    submission_id: bytes = bounded(len=32)
    passed: bool = bounded()
    rate: float = bounded(min=0.0, max=1.0)
    consecutive_valid: int = bounded(min=0)
    reasons: tuple[str, ...] = bounded(max_items=64, item={"max_len": 1024})


@dataclass(frozen=True)
class ProfileBody(Record):
    """The body of a ``profile`` entry: a contributor's signed ``contributor_profile`` envelope,
    recorded verbatim by a validator so every replica can show (and check) display names."""

    profile: bytes = bounded(max_len=MAX_ENVELOPE_BYTES[ContributorProfile.TYPE])


@dataclass(frozen=True)
class Profile:
    """A verified profile: who signed it, what it says, and its message id."""

    contributor: bytes
    display_name: str
    team: str
    updated_at: float
    profile_id: bytes


def open_profile(body: ProfileBody, network_id: str) -> Profile:
    """Verify the contributor's signature inside a profile body; raises MalformedMessage."""
    opened = open_envelope(body.profile, network_id, expected=ContributorProfile)
    message = opened.expect(ContributorProfile)
    for text in (message.display_name, message.team):
        # Control characters would let a name rewrite the lines around it in a terminal table.
        if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in text):
            raise MalformedMessage("a profile name or team holds control characters")
    return Profile(
        contributor=opened.signer,
        display_name=message.display_name,
        team=message.team,
        updated_at=message.updated_at,
        profile_id=opened.message_id,
    )


def _check_profile(body: Record, network_id: str) -> None:
    assert isinstance(body, ProfileBody)
    open_profile(body, network_id)


@dataclass(frozen=True)
class CheckpointBody(Record):
    """The body of a ``checkpoint`` entry: the SHA-256 of the chain's state (credit sums and
    audit book, :mod:`flopnet.ledger.checkpoint`) over its entries up to ``covers_seq``, the
    entry before this one, with the state's size."""

    covers_seq: int = bounded(min=0)
    state_sha256: bytes = bounded(len=32)
    contributors: int = bounded(min=0, max=MAX_STATE_BYTES // 44)
    state_bytes: int = bounded(min=MIN_STATE_BYTES, max=MAX_STATE_BYTES)


ENTRY_BODIES: dict[str, type[Record]] = {
    KIND_CREDIT: CreditBody,
    KIND_INVALIDATION: InvalidationBody,
    KIND_AUDIT: AuditBody,
    KIND_PROFILE: ProfileBody,
    KIND_CHECKPOINT: CheckpointBody,
}

# Checks beyond a body's record bounds, by kind: (body, network id) -> None or MalformedMessage.
BODY_CHECKS: dict[str, Callable[[Record, str], None]] = {KIND_PROFILE: _check_profile}
