"""Range-sync planning for ledger replication: which range to fetch from which peer, and when.

Pure: the caller tells the planner what it heard (validator-signed heads and entries), what it
holds (its store's heads), who is connected and what each fetch returned, always with ``now``;
the planner answers with :class:`Fetch` requests. The store is the only durable state, so a node
killed during a sync plans the same fetches again from its stored heads after a restart.

How a node learns what it misses:

* a validator's gossiped head or entry shows a seq beyond the stored head (fetch at once);
* every reply says how far the responder's copy goes (keep fetching while it is ahead);
* anti-entropy: each connected peer is probed for each chain every ``probe_interval`` seconds
  (every ``catch_up_interval`` while a signed head says we are behind), which finds chains
  whose validator is offline or not connected to us, and heads whose gossip was lost.

Joining without the history: a chain of which nothing is stored starts with a checkpoint
fetch (``Fetch.checkpoint``), asked first of the peers known to hold the most of it. The joining
phase ends when a checkpoint is adopted, or once every peer has been asked and one that holds the
chain had no checkpoint old enough or could not serve one (then ranges from seq 0 follow: the
history is the way in). Peers that hold nothing of the chain do not end it (they are asked again
later: a node that meets workers before it meets a validator still joins at a checkpoint), nor do
peers that serve a checkpoint that does not verify.

A peer that fails a fetch is left alone for a while (doubling from ``retry_after`` up to
``max_backoff``), and one fetch per chain is in flight at a time, so ranges are stored in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flopnet.protocol.messages import MAX_LEDGER_RANGE


@dataclass(frozen=True)
class Fetch:
    """Ask ``peer`` for ``signer``'s entries ``from_seq`` .. ``from_seq + limit - 1``, or, with
    ``checkpoint``, for the latest checkpoint it holds of that chain."""

    signer: bytes
    peer: str
    from_seq: int
    limit: int
    checkpoint: bool = False


@dataclass
class _Chain:
    known_head: int = -1  # the highest seq a validator-signed message has shown us
    peer_heads: dict[str, int] = field(default_factory=dict)  # how far each peer's copy goes
    probed_at: dict[str, float] = field(default_factory=dict)
    not_before: dict[str, float] = field(default_factory=dict)  # per-peer backoff
    failures: dict[str, int] = field(default_factory=dict)
    conflict: tuple[int, str] | None = None  # (seq, peer): a signed head we hold differently
    in_flight: Fetch | None = None
    joining: bool = False  # nothing stored yet: a checkpoint is tried first
    checkpoint_asked: set[str] = field(default_factory=set)
    history_only: bool = False  # a peer asked holds the chain but gave no checkpoint


class SyncPlanner:
    """Plans range fetches for the chains of ``validators`` (except ``own``, our own chain)."""

    def __init__(
        self,
        validators: Iterable[bytes],
        *,
        own: bytes | None = None,
        batch: int = MAX_LEDGER_RANGE,
        probe_interval: float = 30.0,
        catch_up_interval: float = 1.0,
        retry_after: float = 1.0,
        max_backoff: float = 30.0,
        max_in_flight: int = 4,
        join_from_checkpoint: bool = True,
        checkpoint_retry: float = 5.0,
    ) -> None:
        if not 1 <= batch <= MAX_LEDGER_RANGE:
            raise ValueError(f"batch must be in 1..{MAX_LEDGER_RANGE}")
        self.batch = batch
        self.probe_interval = probe_interval
        self.catch_up_interval = catch_up_interval
        self.retry_after = retry_after
        self.max_backoff = max_backoff
        self.max_in_flight = max_in_flight
        self.checkpoint_retry = checkpoint_retry
        self._chains = {
            v: _Chain(joining=join_from_checkpoint) for v in sorted(validators) if v != own
        }

    def heard(self, signer: bytes, seq: int, peer: str) -> None:
        """A validator-signed head or entry with ``seq`` reached us from ``peer`` (its author)."""
        chain = self._chains.get(signer)
        if chain is None:
            return
        chain.known_head = max(chain.known_head, seq)
        chain.peer_heads[peer] = max(chain.peer_heads.get(peer, -1), seq)

    def conflicting_head(self, signer: bytes, seq: int, peer: str) -> None:
        """A signed head names a hash we hold differently at ``seq``: fetch that entry from
        ``peer`` so that the store keeps the conflicting entry as equivocation evidence."""
        chain = self._chains.get(signer)
        if chain is not None:
            chain.conflict = (seq, peer)

    def plan(self, local: Mapping[bytes, int], connected: Iterable[str], now: float) -> list[Fetch]:
        """Fetches to start now; ``local`` is the stored head seq per signer (-1 or absent when
        none is stored), ``connected`` the peers we can ask."""
        peers = sorted(set(connected))
        busy = sum(chain.in_flight is not None for chain in self._chains.values())
        out: list[Fetch] = []
        for signer, chain in self._chains.items():
            if busy + len(out) >= self.max_in_flight:
                break
            if chain.in_flight is not None:
                continue
            fetch = self._next(signer, chain, local.get(signer, -1), peers, now)
            if fetch is not None:
                chain.in_flight = fetch
                chain.probed_at[fetch.peer] = now
                out.append(fetch)
        return out

    def _next(
        self, signer: bytes, chain: _Chain, head: int, peers: list[str], now: float
    ) -> Fetch | None:
        usable = [p for p in peers if chain.not_before.get(p, 0.0) <= now]
        if chain.joining:
            if head >= 0:
                chain.joining = False  # a chain is stored (adopted, or held from before)
            else:
                fetch = self._next_checkpoint(signer, chain, usable, now)
                if chain.joining:
                    return fetch
        if chain.conflict is not None:
            seq, peer = chain.conflict
            if peer in usable:
                chain.conflict = None
                return Fetch(signer, peer, seq, 1)
        ahead = [p for p in usable if chain.peer_heads.get(p, -1) > head]
        if ahead:
            # The peer with the most, ties by id, so the choice is reproducible.
            best = max(ahead, key=lambda p: (chain.peer_heads[p], p))
            return Fetch(signer, best, head + 1, self.batch)
        # Nobody is known to hold more: probe the peers not asked lately; often while a signed
        # head says there is more (a peer may be fetching it from the validator right now).
        interval = self.catch_up_interval if chain.known_head > head else self.probe_interval
        stale = [p for p in usable if now - chain.probed_at.get(p, float("-inf")) >= interval]
        if not stale:
            return None
        peer = min(stale, key=lambda p: (chain.probed_at.get(p, float("-inf")), p))
        return Fetch(signer, peer, head + 1, self.batch)

    def _next_checkpoint(
        self, signer: bytes, chain: _Chain, usable: list[str], now: float
    ) -> Fetch | None:
        """The joining phase: a checkpoint fetch, or None while there is nobody to ask, or None
        with the phase ended (ranges from seq 0 are planned instead)."""
        # A peer that held nothing of the chain is asked again later (it may be syncing it):
        # soon while a signed head says the chain exists, else at the anti-entropy pace.
        interval = self.checkpoint_retry if chain.known_head >= 0 else self.probe_interval
        unasked = [
            p
            for p in usable
            if p not in chain.checkpoint_asked
            and now - chain.probed_at.get(p, float("-inf")) >= interval
        ]
        if chain.history_only and not unasked:
            chain.joining = False
            chain.probed_at.clear()  # checkpoint asks do not delay the first range probes
            return None
        if not unasked:
            return None
        best = max(unasked, key=lambda p: (chain.peer_heads.get(p, -1), p))
        return Fetch(signer, best, 0, 1, checkpoint=True)

    def done(
        self,
        fetch: Fetch,
        now: float,
        *,
        peer_head: int | None,
        ok: bool,
        adopted: bool = False,
        bad: bool = False,
    ) -> None:
        """A fetch ended: ``ok`` with the responder's head of the chain (-1: it holds none), or
        failed (unreachable, timed out, served something that did not verify). For a checkpoint
        fetch, ``adopted`` says whether its checkpoint now anchors our chain, and ``bad`` that the
        peer served one that does not verify (it is not asked again, and does not end joining:
        a liar must not push us onto the whole history)."""
        chain = self._chains.get(fetch.signer)
        if chain is None:
            return
        if chain.in_flight == fetch:
            chain.in_flight = None
        if fetch.checkpoint:
            if adopted:
                chain.joining = False
            elif bad:
                chain.checkpoint_asked.add(fetch.peer)
            elif not ok or (peer_head is not None and peer_head >= 0):
                # It holds the chain without a checkpoint old enough, or does not serve them.
                chain.checkpoint_asked.add(fetch.peer)
                chain.history_only = True
        if ok:
            chain.failures.pop(fetch.peer, None)
            chain.not_before.pop(fetch.peer, None)
            if peer_head is not None:
                chain.peer_heads[fetch.peer] = peer_head
        else:
            n = chain.failures.get(fetch.peer, 0) + 1
            chain.failures[fetch.peer] = n
            delay = min(self.max_backoff, self.retry_after * 2 ** (n - 1))
            chain.not_before[fetch.peer] = now + delay
            # What we believed the peer holds may be wrong; learn it again from its next reply.
            chain.peer_heads.pop(fetch.peer, None)

    def forget_peer(self, peer: str) -> None:
        """A peer disconnected: drop what we knew of its copies and any backoff."""
        for chain in self._chains.values():
            chain.peer_heads.pop(peer, None)
            chain.probed_at.pop(peer, None)
            chain.not_before.pop(peer, None)
            chain.failures.pop(peer, None)
            chain.checkpoint_asked.discard(peer)

    def behind(self, local: Mapping[bytes, int]) -> dict[bytes, tuple[int, int]]:
        """Chains where someone is known to hold more than we do: signer -> (ours, theirs)."""
        out = {}
        for signer, chain in self._chains.items():
            theirs = max([chain.known_head, *chain.peer_heads.values()])
            ours = local.get(signer, -1)
            if theirs > ours:
                out[signer] = (ours, theirs)
        return out

    def in_flight(self) -> list[Fetch]:
        """The fetches started and not yet done."""
        return [c.in_flight for c in self._chains.values() if c.in_flight is not None]
