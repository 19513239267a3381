"""Reliable announcements over best-effort gossip: the publisher's log and the hearer's gap tracker.

Every announcement a publisher seals gets the next sequence number and stays in its log, so a
node that sees a gap (seq jumps), or learns from a heartbeat that the head moved past what it
heard, or joins late, fetches the missing range over a stream. Both classes are pure.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

MAX_RANGE = 512


@dataclass
class AnnouncementLog:
    """The publisher's sealed announcements by sequence number (1-based), bounded in memory."""

    capacity: int = 100_000
    _items: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    head: int = 0

    def next_seq(self) -> int:
        """The sequence number the next announcement must carry."""
        return self.head + 1

    def append(self, seq: int, sealed: bytes) -> None:
        """Record the sealed announcement ``seq`` (which must be :meth:`next_seq`)."""
        if seq != self.head + 1:
            raise ValueError(f"announcement seq {seq} does not follow head {self.head}")
        self._items[seq] = sealed
        self.head = seq
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def restore(self, items: list[tuple[int, bytes]]) -> None:
        """Reload consecutive (seq, sealed) pairs after a restart; the head continues from them."""
        if not items:
            return
        self._items.clear()
        self.head = items[0][0] - 1
        for seq, sealed in items:
            self.append(seq, sealed)

    def range(self, from_seq: int, limit: int) -> list[bytes]:
        """Up to ``limit`` sealed announcements from ``from_seq`` on (older ones may be evicted)."""
        limit = max(0, min(limit, MAX_RANGE))
        first = max(from_seq, self.head - len(self._items) + 1)
        return [self._items[s] for s in range(first, min(self.head, first + limit - 1) + 1)]


@dataclass
class SeqTracker:
    """What a hearer has seen of one publisher's sequence: contiguous prefix plus stragglers."""

    contiguous: int = 0  # every seq <= this has been seen
    _ahead: set[int] = field(default_factory=set)
    known_head: int = 0

    def saw(self, seq: int) -> bool:
        """Record ``seq``; return False if it was already seen (a duplicate)."""
        if seq <= self.contiguous or seq in self._ahead:
            return False
        self._ahead.add(seq)
        while self.contiguous + 1 in self._ahead:
            self.contiguous += 1
            self._ahead.discard(self.contiguous)
        self.known_head = max(self.known_head, seq)
        return True

    def head_is(self, head: int) -> None:
        """Learn the publisher's head (from a heartbeat or a range reply)."""
        self.known_head = max(self.known_head, head)

    def missing_from(self) -> int | None:
        """The first seq to fetch, or None when nothing is missing."""
        if self.contiguous < self.known_head:
            return self.contiguous + 1
        return None

    def gap_count(self) -> int:
        """How many seqs up to the known head have not been seen."""
        return max(0, self.known_head - self.contiguous - len(self._ahead))
