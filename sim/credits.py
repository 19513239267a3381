"""Each contributor's credit as the ledger's policy says it stands: pending for the lock window,
then final, voided while pending by a hard invalidation (:mod:`flopnet.ledger.policy`)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from flopnet.ledger.kinds import HARD
from flopnet.ledger.policy import Credit, Invalidation, is_final, voids


@dataclass
class Account:
    """One contributor's credits (FLOPs in real units: a simulated sample's times the scale)."""

    contributor: bytes
    pending: deque[tuple[float, int]] = field(default_factory=deque)
    final_flops: int = 0
    void_flops: int = 0
    credits: int = 0
    voided: int = 0
    invalidations: int = 0

    def credit(self, timestamp: float, flops: int, lock_window: float) -> None:
        self.settle(timestamp, lock_window)
        self.pending.append((timestamp, flops))
        self.credits += 1

    def settle(self, now: float, lock_window: float) -> None:
        """Move the credits whose lock window has passed to final."""
        while self.pending and is_final(self.pending[0][0], now, lock_window):
            self.final_flops += self.pending.popleft()[1]

    def invalidate(self, now: float, lock_window: float) -> int:
        """A hard invalidation at ``now``: every pending credit it voids is lost. Returns the
        FLOPs voided."""
        self.settle(now, lock_window)
        self.invalidations += 1
        inv = Invalidation(self.contributor, now, HARD)
        kept: deque[tuple[float, int]] = deque()
        lost = 0
        for timestamp, flops in self.pending:
            if voids(inv, Credit(b"", 0, self.contributor, timestamp, flops), lock_window):
                lost += flops
                self.voided += 1
            else:
                kept.append((timestamp, flops))
        self.pending = kept
        self.void_flops += lost
        return lost

    def pending_flops(self) -> int:
        return sum(f for _, f in self.pending)
