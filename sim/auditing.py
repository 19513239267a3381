"""A validator's audit decisions over the real submissions one simulated sample stands for.

The audit book decides per real submission; a simulated sample stands for ``scale`` of them. The
rate changes only at an audit, so the submissions before the next audit are a geometric count at
the book's current rate (memoryless: a count can be drawn afresh for each simulated sample); that
is what drawing each submission against the rate gives. Rates come from the book's own policy
(:meth:`AuditPolicy.rate`, tabulated once per record size). Each audit's verdict is a stored
sample's; results go to :meth:`AuditBook.record`, or, when every stored sample of the kind passes,
a run of passes to :meth:`AuditBook.record_passes` in one step, with the rest of the sample's
audits at the floor counted by one binomial draw.

The validator's keyed draw (:func:`~flopnet.ledger.policy.audit_draw`, an HMAC only it can compute)
is what keeps workers from predicting audits; its statistics are a uniform draw's, which a seeded
generator gives here at a tenth of the cost.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np

from flopnet.ledger.policy import AuditBook, AuditState
from flopnet.sim.proofs import Outcomes


@dataclass
class AuditStream:
    """One validator's audit draws over its book."""

    book: AuditBook
    rng: random.Random
    np_rng: np.random.Generator
    rates: np.ndarray = field(init=False)  # rate by consecutive valid audits, to the floor

    def __post_init__(self) -> None:
        policy, floor = self.book.policy, self.book.policy.effective_floor
        table: list[float] = []
        while not table or table[-1] > floor:
            table.append(policy.rate(AuditState(consecutive_valid=len(table))))
        self.rates = np.array(table[:-1] or [floor])

    @property
    def floor(self) -> float:
        return self.book.policy.effective_floor

    def _rate(self, contributor: bytes) -> tuple[int, float]:
        state = self.book.states.get(contributor)
        n = 0 if state is None else state.consecutive_valid
        return n, self.book.policy.rate(state)

    def check(self, contributor: bytes, submissions: int, outcomes: Outcomes) -> tuple[int, bool]:
        """Audit ``submissions`` real submissions whose verdicts come from ``outcomes``:
        returns (audits made, whether one failed). A failed audit ends the sample: the
        contributor is audited on every submission again, and the rest fail as it did."""
        if outcomes.pass_share == 1.0:
            return self._passing(contributor, submissions), False
        return self._one_by_one(contributor, submissions, outcomes)

    def _passing(self, contributor: bytes, submissions: int) -> int:
        n, _ = self._rate(contributor)
        audits, left = 0, submissions
        if n < len(self.rates):
            # Geometric gaps at each rate of the ramp down to the floor, one draw per audit.
            cum = np.cumsum(self.np_rng.geometric(self.rates[n:]))
            audits = int(np.searchsorted(cum, left, side="right"))
            if audits < len(cum):
                self.book.record_passes(contributor, audits)
                return audits
            left -= int(cum[-1])
        audits += int(self.np_rng.binomial(left, self.floor)) if left > 0 else 0
        self.book.record_passes(contributor, audits)
        return audits

    def _one_by_one(
        self, contributor: bytes, submissions: int, outcomes: Outcomes
    ) -> tuple[int, bool]:
        left, audits = submissions, 0
        while left > 0:
            _, rate = self._rate(contributor)
            skip = 0 if rate >= 1.0 else int(math.log(1.0 - self.rng.random()) / math.log1p(-rate))
            if skip >= left:
                return audits, False
            left -= skip + 1
            audits += 1
            passed = outcomes.draw(self.rng)[0]
            self.book.record(contributor, passed)
            if not passed:
                # Its record is back at zero: every later submission of the sample is audited
                # (rate 1) and fails as this one did; the validator pays for each of them.
                return audits + left, True
        return audits, False
