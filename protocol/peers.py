"""Liveness: a table of peers with states (healthy, unhealthy, gone) and reconnection backoff.

Pure: callers pass ``now``. A peer is healthy while its heartbeats keep arriving, unhealthy once
it has missed a few, and gone after longer silence (a frozen peer keeps its TCP connection open,
so silence, not the connection, is what counts).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import Any

from flopnet.protocol.messages import Heartbeat


class PeerState(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    GONE = "gone"


@dataclass
class PeerRecord:
    """What we know of one peer."""

    peer_id: str
    first_seen: float
    last_heard: float
    connected: bool = False
    state: PeerState = PeerState.HEALTHY
    heartbeat: Heartbeat | None = None

    def to_json(self, now: float) -> dict[str, Any]:
        hb = self.heartbeat
        return {
            "peer_id": self.peer_id,
            "state": self.state.value,
            "connected": self.connected,
            "silent_s": round(now - self.last_heard, 1),
            "roles": list(hb.roles) if hb else [],
            "software": hb.software if hb else "",
            "gpus": hb.gpus if hb else 0,
            "load": hb.load if hb else 0.0,
            "free_slots": hb.free_slots if hb else 0,
        }


@dataclass
class PeerTable:
    """Peers keyed by peer id, with heartbeat-driven states."""

    heartbeat_interval: float
    unhealthy_after_missed: int = 3
    gone_after_missed: int = 6
    _peers: dict[str, PeerRecord] = field(default_factory=dict)

    def _record(self, peer_id: str, now: float) -> PeerRecord:
        record = self._peers.get(peer_id)
        if record is None:
            record = self._peers[peer_id] = PeerRecord(peer_id, now, now)
        return record

    def heard(self, peer_id: str, now: float, heartbeat: Heartbeat | None = None) -> None:
        """Any valid traffic from the peer (a heartbeat carries its details)."""
        record = self._record(peer_id, now)
        record.last_heard = max(record.last_heard, now)
        if heartbeat is not None:
            record.heartbeat = heartbeat

    def connected(self, peer_id: str, now: float) -> None:
        self._record(peer_id, now).connected = True

    def disconnected(self, peer_id: str, now: float) -> None:
        if peer_id in self._peers:
            self._peers[peer_id].connected = False

    def state_at(self, record: PeerRecord, now: float) -> PeerState:
        """The state a record should be in at ``now``."""
        silent = now - record.last_heard
        if silent >= self.gone_after_missed * self.heartbeat_interval:
            return PeerState.GONE
        if silent >= self.unhealthy_after_missed * self.heartbeat_interval:
            return PeerState.UNHEALTHY
        return PeerState.HEALTHY

    def tick(self, now: float) -> list[tuple[str, PeerState, PeerState]]:
        """Update every state; return the transitions (peer, old, new)."""
        changes = []
        for record in self._peers.values():
            new = self.state_at(record, now)
            if new is not record.state:
                changes.append((record.peer_id, record.state, new))
                record.state = new
        return changes

    def get(self, peer_id: str) -> PeerRecord | None:
        return self._peers.get(peer_id)

    def records(self) -> list[PeerRecord]:
        """Every peer's record."""
        return list(self._peers.values())

    def in_state(self, state: PeerState) -> list[str]:
        return [p for p, r in self._peers.items() if r.state is state]

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Every peer as JSON-able data, for the API."""
        return [r.to_json(now) for r in sorted(self._peers.values(), key=lambda r: r.peer_id)]


@dataclass
class Backoff:
    """Exponential backoff with full jitter for re-dialing lost peers."""

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    attempts: int = 0

    def next_delay(self, rng: random.Random) -> float:
        """The delay before the next attempt; grows with each call until :meth:`reset`."""
        ceiling = min(self.cap, self.base * self.factor**self.attempts)
        self.attempts += 1
        return rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0
