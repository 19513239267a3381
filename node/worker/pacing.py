"""How fast a worker claims: a pure pacer per publisher (callers pass ``now``).

A worker that retries claims in a tight loop when every task is taken overruns the publisher's
stream budget and gets itself banned, with or without an attacker around. So claims to one
publisher are spaced (``interval``), a claim round stops after a few refusals, and a refusal
that says "not you, not now" (a quota reached, newcomers full, a cool-down, over the rate, a
ban) pauses claims to that publisher with exponential backoff, reset by the next lease.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from flopnet.protocol.peers import Backoff

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


@dataclass
class ClaimPacer:
    """Claim pacing and backoff per publisher."""

    interval: float = 0.05  # at most 20 claims/s to one publisher, well under its budget
    refusals_per_round: int = 4
    rng: random.Random = field(default_factory=random.Random)
    _publishers: dict[str, _Publisher] = field(default_factory=dict)

    def _of(self, publisher: str) -> _Publisher:
        # Not setdefault: that would build a _Publisher (and its Backoff) on every call.
        p = self._publishers.get(publisher)
        if p is None:
            p = self._publishers[publisher] = _Publisher()
        return p

    def wait(self, publisher: str, now: float) -> float:
        """Seconds until a claim may go to ``publisher`` (0 when it may go now)."""
        p = self._of(publisher)
        return max(0.0, p.paused_until - now, p.next_claim - now)

    def paused(self, publisher: str, now: float) -> bool:
        """Whether claims to ``publisher`` are paused (a backoff, not mere spacing)."""
        return self._of(publisher).paused_until > now

    def sent(self, publisher: str, now: float) -> None:
        """A claim went to ``publisher`` at ``now``."""
        self._of(publisher).next_claim = now + self.interval

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
