"""Abuse control: per-peer rate limits, a misbehaviour score, bans, and replay detection.

Pure: callers pass ``now``. Every peer starts at score 0; violations subtract points, time gives
them back; at the threshold the peer is banned for a while (the host then disconnects it and
refuses its streams and gossip) and everyone else keeps being served.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


class Violation(enum.Enum):
    """Misbehaviours, each with its cost in score points (``cost``).

    The values are the names: two misbehaviours of equal cost must stay two members (an enum
    with equal values makes the second an alias of the first, and a ban would then be logged
    and counted under the wrong name).
    """

    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    BAD_SIGNATURE = "bad_signature"
    WRONG_SIGNER = "wrong_signer"
    REPLAY = "replay"
    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"

    @property
    def cost(self) -> float:
        """Score points the misbehaviour costs."""
        return _COSTS[self]


_COSTS = {
    Violation.MALFORMED: 20.0,
    Violation.OVERSIZED: 20.0,
    Violation.BAD_SIGNATURE: 25.0,
    Violation.WRONG_SIGNER: 25.0,
    Violation.REPLAY: 10.0,
    Violation.RATE_LIMIT: 2.0,
    Violation.TIMEOUT: 5.0,
}


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class _PeerScore:
    score: float = 0.0
    updated: float = 0.0
    banned_until: float = 0.0
    violations: dict[str, int] = field(default_factory=dict)


@dataclass
class PeerGuard:
    """Rate limits (token buckets per peer and protocol) and scores with bans."""

    rate_per_s: float = 50.0
    burst: float = 100.0
    ban_threshold: float = -100.0
    ban_seconds: float = 600.0
    recovery_per_s: float = 0.5
    nonce_memory: int = 10_000
    _buckets: dict[tuple[str, str], _Bucket] = field(default_factory=dict)
    _scores: dict[str, _PeerScore] = field(default_factory=dict)
    _nonces: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    def _score(self, peer: str, now: float) -> _PeerScore:
        s = self._scores.get(peer)
        if s is None:
            s = self._scores[peer] = _PeerScore(updated=now)
        # Good behaviour over time earns back points, up to zero.
        s.score = min(0.0, s.score + (now - s.updated) * self.recovery_per_s)
        s.updated = now
        return s

    def score(self, peer: str, now: float) -> float:
        """The peer's current score (0 for a peer never charged)."""
        return self._score(peer, now).score if peer in self._scores else 0.0

    def is_banned(self, peer: str, now: float) -> bool:
        """True while ``peer`` is banned."""
        s = self._scores.get(peer)
        return s is not None and s.banned_until > now

    def penalize(self, peer: str, violation: Violation, now: float) -> bool:
        """Record a violation; return True if it (newly) bans the peer."""
        s = self._score(peer, now)
        s.score -= violation.cost
        s.violations[violation.value] = s.violations.get(violation.value, 0) + 1
        if s.score <= self.ban_threshold and s.banned_until <= now:
            s.banned_until = now + self.ban_seconds
            return True
        return False

    def allow(
        self,
        peer: str,
        key: str,
        now: float,
        *,
        rate: float | None = None,
        burst: float | None = None,
    ) -> bool:
        """Take a token from the peer's bucket for ``key`` (a protocol or topic); False if empty.

        The default budget is the stream budget (``rate_per_s``, ``burst``). The caller charges
        the violation (so that a ban it causes is announced and enforced where it is seen).
        """
        rate = self.rate_per_s if rate is None else rate
        burst = self.burst if burst is None else burst
        bucket = self._buckets.get((peer, key))
        if bucket is None:
            bucket = self._buckets[(peer, key)] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def is_replay(self, key: bytes) -> bool:
        """Remember ``key`` (a nonce or message id); True if it was seen recently."""
        if key in self._nonces:
            self._nonces.move_to_end(key)
            return True
        self._nonces[key] = None
        while len(self._nonces) > self.nonce_memory:
            self._nonces.popitem(last=False)
        return False

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Peers with a non-zero score or a ban, for the API."""
        out = []
        for peer, s in sorted(self._scores.items()):
            score = self._score(peer, now).score
            if score < 0 or s.banned_until > now:
                out.append(
                    {
                        "peer_id": peer,
                        "score": round(score, 1),
                        "banned_for_s": round(max(0.0, s.banned_until - now), 1),
                        "violations": dict(s.violations),
                    }
                )
        return out
