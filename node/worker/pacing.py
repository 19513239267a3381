"""How fast a worker claims: a pure pacer per publisher (callers pass ``now``).

A worker that retries claims in a tight loop when every task is taken overruns the publisher's
stream budget and gets itself banned, with or without an attacker around. So claims to one
publisher are spaced (``interval``) and kept inside the publisher's claim budget
(``catalog.CLAIM_BUDGET``, mirrored here as a token bucket with headroom), a claim round stops
after a few refusals, and a refusal that says "not you, not now" (a quota reached, newcomers
full, a cool-down, over the rate, a ban) pauses claims to that publisher with exponential
backoff, reset by the next lease.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from flopnet.protocol.catalog import CLAIM_BUDGET
from flopnet.protocol.peers import Backoff
from flopnet.protocol.rpc import RequestBudget

# Refusals that say the worker itself must wait, whatever the task: back off from the publisher.
PAUSING_REFUSALS = frozenset(
    {"too_many_leases", "newcomers_full", "cooling_down", "rate_limited", "banned"}
)
# Refusals that end an offer for good.
FINAL_REFUSALS = frozenset({"task_done", "unknown_task", "failed_before"})


@dataclass
class _Publisher:
    next_claim: float = 0.0
    paused_until: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=60.0))
    tokens: float | None = None  # the mirrored claim budget (None: full, never used)
    updated: float = 0.0


@dataclass
class ClaimPacer:
    """Claim pacing and backoff per publisher."""

    interval: float = 0.05  # claims to one publisher at least this far apart
    refusals_per_round: int = 4
    rng: random.Random = field(default_factory=random.Random)
    # The publisher's claim budget, kept with headroom (its clock and ours, requests in flight):
    # an honest worker is never told to slow down, let alone charged for it.
    budget: RequestBudget = CLAIM_BUDGET
    headroom: float = 0.8
    _publishers: dict[str, _Publisher] = field(default_factory=dict)

    def _of(self, publisher: str) -> _Publisher:
        # Not setdefault: that would build a _Publisher (and its Backoff) on every call.
        p = self._publishers.get(publisher)
        if p is None:
            p = self._publishers[publisher] = _Publisher()
        return p

    def _tokens(self, p: _Publisher, now: float) -> float:
        capacity = self.budget.burst * self.headroom
        if p.tokens is None:
            return capacity
        return min(capacity, p.tokens + (now - p.updated) * self.budget.rate_per_s * self.headroom)

    def wait(self, publisher: str, now: float) -> float:
        """Seconds until a claim may go to ``publisher`` (0 when it may go now)."""
        p = self._of(publisher)
        short = 1.0 - self._tokens(p, now)
        budget_wait = short / (self.budget.rate_per_s * self.headroom) if short > 0 else 0.0
        return max(0.0, p.paused_until - now, p.next_claim - now, budget_wait)

    def paused(self, publisher: str, now: float) -> bool:
        """Whether claims to ``publisher`` are paused (a backoff, not mere spacing)."""
        return self._of(publisher).paused_until > now

    def sent(self, publisher: str, now: float) -> None:
        """A claim went to ``publisher`` at ``now``."""
        p = self._of(publisher)
        p.tokens = self._tokens(p, now) - 1.0
        p.updated = now
        p.next_claim = now + self.interval

    def granted(self, publisher: str) -> None:
        """A lease came back: the publisher is serving us again."""
        self._of(publisher).backoff.reset()

    def refused(self, publisher: str, code: str, now: float) -> float:
        """A claim was refused with ``code``; returns the pause it caused (0 for none)."""
        if code not in PAUSING_REFUSALS:
            return 0.0
        p = self._of(publisher)
        pause = p.backoff.next_delay(self.rng)
        p.paused_until = max(p.paused_until, now + pause)
        return pause

    def banned(self, publisher: str, seconds: float, now: float) -> None:
        """The publisher told us it banned us for ``seconds``: no claims until then."""
        p = self._of(publisher)
        p.paused_until = max(p.paused_until, now + seconds)
