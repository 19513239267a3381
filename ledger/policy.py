"""Credit policy and adaptive auditing: pure functions of ledger data, no I/O.

Credit states. A credit entry is *pending* for the manifest's lock window after its timestamp,
then *final*. An invalidation voids credit only while it is pending: a ``hard`` one voids every
pending credit of the contributor (on every validator's chain), a ``soft`` one only the credit it
names. Formally a credit with timestamp ``t`` is voided by an invalidation at ``T`` when
``t <= T`` and ``t > T - lock_window``. Final credit is never taken back, so a contributor can
rely on it; pending credit is what a validator can still claw back when an audit fails.

Adaptive auditing (after BOINC's adaptive replication). A validator audits (runs the expensive
proof check on) every submission of a contributor it has not yet seen pass ``warmup`` audits in
a row; after that the audit rate falls as ``warmup / consecutive_valid`` down to the manifest's
floor, and never below :data:`MIN_SPOT_RATE`, so random spot checks never stop. A failed audit
resets the count to zero. Whether a submission is audited is decided by a draw that only the
validator can compute (an HMAC of the submission id under the validator's key), so a worker
cannot predict which of its submissions will be checked, and the decision is reproducible after
a restart. An unaudited submission is credited like any other: pending for the lock window.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from flopnet.ledger.kinds import HARD, SOFT
from flopnet.protocol.errors import LedgerError

DEFAULT_LOCK_WINDOW_S = 86400.0
MIN_SPOT_RATE = 0.01  # however trusted a contributor is, at least 1 in 100 is audited
DEFAULT_WARMUP = 10  # consecutive valid audits before the rate starts to fall


class CreditState(enum.Enum):
    """Where a credit stands at a given time."""

    PENDING = "pending"
    FINAL = "final"
    VOID = "void"


@dataclass(frozen=True)
class Credit:
    """What the policy needs to know of a credit entry."""

    signer: bytes
    seq: int
    contributor: bytes
    timestamp: float
    flops: int = 0
    accepted: bool = True


@dataclass(frozen=True)
class Invalidation:
    """What the policy needs to know of an invalidation entry."""

    contributor: bytes
    timestamp: float
    severity: str  # HARD or SOFT
    credit_signer: bytes = b""
    credit_seq: int = -1


def is_final(credit_timestamp: float, now: float, lock_window: float) -> bool:
    """True once the lock window after the credit's timestamp has passed."""
    return now >= credit_timestamp + lock_window


def voids(invalidation: Invalidation, credit: Credit, lock_window: float) -> bool:
    """True if ``invalidation`` voids ``credit``: same contributor, credit still pending at the
    invalidation's time, and (for a soft one) the very credit it names."""
    if invalidation.severity not in (HARD, SOFT):
        raise LedgerError(f"unknown invalidation severity {invalidation.severity!r}")
    if invalidation.contributor != credit.contributor:
        return False
    if not invalidation.timestamp - lock_window < credit.timestamp <= invalidation.timestamp:
        return False
    if invalidation.severity == SOFT:
        return (credit.signer, credit.seq) == (invalidation.credit_signer, invalidation.credit_seq)
    return True


def credit_state(
    credit: Credit, invalidations: Iterable[Invalidation], now: float, lock_window: float
) -> CreditState:
    """The state of ``credit`` at ``now``, given every invalidation known."""
    if any(voids(inv, credit, lock_window) for inv in invalidations):
        return CreditState.VOID
    if is_final(credit.timestamp, now, lock_window):
        return CreditState.FINAL
    return CreditState.PENDING


def credit_states(
    credits: Iterable[Credit], invalidations: Iterable[Invalidation], now: float, lock_window: float
) -> dict[tuple[bytes, int], CreditState]:
    """The state of every credit, keyed by (signer, seq): :func:`credit_state` for each, with the
    invalidations grouped by contributor first (a ledger holds many of both)."""
    by_contributor: dict[bytes, list[Invalidation]] = {}
    for inv in invalidations:
        by_contributor.setdefault(inv.contributor, []).append(inv)
    return {
        (c.signer, c.seq): credit_state(c, by_contributor.get(c.contributor, ()), now, lock_window)
        for c in credits
    }


# ---------------------------------------------------------------------------------------------
# Adaptive auditing


@dataclass(frozen=True)
class AuditState:
    """A validator's record of one contributor: valid audits in a row, audits, failures."""

    consecutive_valid: int = 0
    audits: int = 0
    failures: int = 0


@dataclass(frozen=True)
class AuditPolicy:
    """The audit rate as a function of a contributor's record (``floor`` from the manifest)."""

    floor: float
    warmup: int = DEFAULT_WARMUP

    def __post_init__(self) -> None:
        if not 0.0 <= self.floor <= 1.0:
            raise LedgerError(f"audit rate floor {self.floor} is outside [0, 1]")
        if self.warmup < 1:
            raise LedgerError("the audit warm-up must be at least one valid result")

    @property
    def effective_floor(self) -> float:
        """The floor actually applied: the manifest's, but never below :data:`MIN_SPOT_RATE`."""
        return max(self.floor, MIN_SPOT_RATE)

    def rate(self, state: AuditState | None) -> float:
        """The probability of auditing the contributor's next submission: 1.0 for a new
        contributor (or one whose last audit failed), falling as ``warmup / n`` with ``n``
        consecutive valid audits, down to the floor."""
        n = 0 if state is None else state.consecutive_valid
        if n < self.warmup:
            return 1.0
        return max(self.effective_floor, min(1.0, self.warmup / n))

    def should_audit(self, state: AuditState | None, draw: float) -> bool:
        """Audit when the draw (uniform in [0, 1)) falls below the rate."""
        return draw < self.rate(state)


def audit_draw(secret: bytes, submission_id: bytes) -> float:
    """A uniform draw in [0, 1) that only the holder of ``secret`` can compute in advance."""
    digest = hmac.new(secret, b"flopnet-audit\0" + submission_id, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def after_audit(state: AuditState | None, passed: bool) -> AuditState:
    """The contributor's record after one audit: a pass extends the run, a failure resets it."""
    s = state or AuditState()
    if passed:
        return AuditState(s.consecutive_valid + 1, s.audits + 1, s.failures)
    return AuditState(0, s.audits + 1, s.failures + 1)


def after_passes(state: AuditState | None, passes: int) -> AuditState:
    """The record after ``passes`` audits in a row that all passed: what ``passes`` calls of
    :func:`after_audit` give, at once (a checkpoint's or a simulation's many audits)."""
    if passes < 0:
        raise LedgerError(f"a count of passed audits cannot be negative: {passes}")
    s = state or AuditState()
    return AuditState(s.consecutive_valid + passes, s.audits + passes, s.failures)


def audit_states(results: Iterable[tuple[bytes, bool]]) -> dict[bytes, AuditState]:
    """Every contributor's record from (contributor, passed) audit results in chain order."""
    states: dict[bytes, AuditState] = {}
    for contributor, passed in results:
        states[contributor] = after_audit(states.get(contributor), passed)
    return states


@dataclass(frozen=True)
class AuditDecision:
    """Whether to audit one submission, and the numbers an ``audit`` entry records."""

    audit: bool
    rate: float
    consecutive_valid: int


class AuditBook:
    """A validator's audit records of its contributors (in memory, rebuilt from its chain's
    ``audit`` entries at start: ``AuditBook(policy, store.audit_results(own_key))``)."""

    def __init__(self, policy: AuditPolicy, results: Iterable[tuple[bytes, bool]] = ()) -> None:
        self.policy = policy
        self.states = audit_states(results)

    def decide(self, contributor: bytes, draw: float) -> AuditDecision:
        """Audit or not, for a submission whose draw (see :func:`audit_draw`) is ``draw``."""
        state = self.states.get(contributor)
        return AuditDecision(
            audit=self.policy.should_audit(state, draw),
            rate=self.policy.rate(state),
            consecutive_valid=0 if state is None else state.consecutive_valid,
        )

    def record(self, contributor: bytes, passed: bool) -> AuditState:
        """Record an audit's result (after its ``audit`` entry is durable)."""
        state = after_audit(self.states.get(contributor), passed)
        self.states[contributor] = state
        return state

    def record_passes(self, contributor: bytes, passes: int) -> AuditState:
        """Record ``passes`` audits in a row that passed (see :func:`after_passes`)."""
        state = after_passes(self.states.get(contributor), passes)
        self.states[contributor] = state
        return state


# ---------------------------------------------------------------------------------------------
# Checking a validator's audit entries (anyone can, from its chain and the manifest)


@dataclass(frozen=True)
class AuditRecord:
    """What an ``audit`` entry says, with its place in the chain."""

    seq: int
    contributor: bytes
    submission_id: bytes
    passed: bool
    rate: float
    consecutive_valid: int


def audit_problems(
    records: Iterable[AuditRecord],
    policy: AuditPolicy,
    credits: dict[bytes, bool],
    hard_invalidated: set[bytes],
    initial: dict[bytes, AuditState] | None = None,
) -> list[tuple[int, str]]:
    """(seq, message) for every audit entry inconsistent with the chain before it or the policy.

    ``records`` are one validator's audit entries in chain order; ``credits`` maps the submission
    ids it credited to whether the credit was accepted; ``hard_invalidated`` holds the submission
    ids its hard invalidations name. An entry must record the consecutive valid audits its
    earlier entries give, and the rate the manifest's policy gives for that record; it must
    audit a submission the validator credited, with the same outcome; a failed audit must come
    with a hard invalidation. (Which submissions were drawn for audit cannot be checked: the draw
    is keyed by the validator's secret.) ``initial`` holds the records before the first entry
    given (a chain joined at a checkpoint starts from its state's audit book).
    """
    problems: list[tuple[int, str]] = []
    states: dict[bytes, AuditState] = dict(initial or {})
    for r in records:
        state = states.get(r.contributor)
        where = f"entry seq {r.seq}: audit of {r.contributor[:6].hex()}"
        expected_n = 0 if state is None else state.consecutive_valid
        if r.consecutive_valid != expected_n:
            problems.append(
                (
                    r.seq,
                    f"{where} records {r.consecutive_valid} consecutive valid audits; "
                    f"the chain's earlier audits give {expected_n}",
                )
            )
        expected_rate = policy.rate(state)
        if abs(r.rate - expected_rate) > 1e-9:
            problems.append(
                (
                    r.seq,
                    f"{where} records rate {r.rate:.4f}; the manifest's policy gives "
                    f"{expected_rate:.4f} for that record",
                )
            )
        accepted = credits.get(r.submission_id)
        if accepted is None:
            problems.append((r.seq, f"{where} names a submission this validator never credited"))
        elif accepted != r.passed:
            problems.append(
                (
                    r.seq,
                    f"{where} {'passed' if r.passed else 'failed'}, but its credit was "
                    f"{'accepted' if accepted else 'rejected'}",
                )
            )
        if not r.passed and r.submission_id not in hard_invalidated:
            problems.append((r.seq, f"{where} failed without a hard invalidation"))
        states[r.contributor] = after_audit(state, r.passed)
    return problems
