"""Ledger replication on a P2PHost: gossip of heads and entries, range serving, the sync loop.

Every node keeps verified copies of the chains of the manifest's validators and serves them to
others. What to fetch is decided by the pure :class:`ledger.sync.SyncPlanner`; every entry is
verified (signature, body, signer in the manifest, link to the stored chain) by
:meth:`ledger.store.LedgerStore.ingest_range` before it is stored. The store is the only state
that matters: a node killed during a sync resumes from its stored heads.

A validator also announces its own head on the ledger topic every ``head_interval`` seconds
(and a node that misses gossip still catches up by probing its peers), appends a checkpoint of
its chain once a day, and records signed contributor profiles it is handed over
``/flopnet/profile/1.0.0``.

Joining: a chain of which nothing is stored starts from a checkpoint (``ledger.joining``) fetched
over ``/flopnet/ledger-checkpoint/1.0.0`` and verified before it is adopted, unless
``join_from_checkpoint`` is off (``--full-history``). Every node keeps the state of each
checkpoint it replicates, derived from its own entries and checked against the signed SHA-256,
and so serves checkpoints as well as ranges.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import trio

from flopnet.ledger.chain import (
    EntryError,
    VerifiedEntry,
    entry_name,
    signer_name,
)
from flopnet.ledger.checkpoint import (
    CHECKPOINT_INTERVAL_S,
    JOIN_TAIL_S,
    CheckpointError,
    checkpoint_due,
)
from flopnet.ledger.joining import (
    adopt_checkpoint,
    append_checkpoint,
    checkpoint_for_joiner,
    checkpoint_progress,
    keep_checkpoint_state,
)
from flopnet.ledger.kinds import KIND_CHECKPOINT, KIND_PROFILE, ProfileBody, open_profile
from flopnet.ledger.store import EquivocationError, LedgerStore, RangeResult
from flopnet.ledger.sync import Fetch, SyncPlanner
from flopnet.protocol.catalog import LEDGER_CHECKPOINT, LEDGER_RANGE, ledger_topic
from flopnet.protocol.codec import Record
from flopnet.protocol.envelope import Opened, open_envelope, seal
from flopnet.protocol.errors import FlopnetError, LedgerError, MalformedMessage, PeerError
from flopnet.protocol.guard import Violation
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import (
    MAX_ENVELOPE_BYTES,
    LedgerCheckpoint,
    LedgerCheckpointRequest,
    LedgerEntry,
    LedgerHead,
    LedgerRange,
    LedgerRangeRequest,
    Refusal,
)
from flopnet.protocol.rpc import Rpc, refusal

log = logging.getLogger(__name__)
_Reply = TypeVar("_Reply", LedgerRange, LedgerCheckpoint)
# Room left in a ledger_range envelope for its other fields and the msgpack framing.
_RANGE_OVERHEAD = 4096
_INGEST_SLICE = 256
PROFILE_MIN_INTERVAL_S = 600.0  # one recorded profile per contributor per validator per 10 min


@dataclass
class SyncStats:
    """Counters for the API."""

    fetched: int = 0  # entries stored from ranges
    gossip_stored: int = 0
    duplicates: int = 0
    ranges_served: int = 0
    entries_served: int = 0
    fetch_failures: int = 0
    rejected: int = 0  # entries that failed verification
    equivocations: int = 0
    checkpoints_served: int = 0
    checkpoints_adopted: int = 0  # chains joined at a checkpoint
    checkpoints_kept: int = 0  # replicated checkpoints whose state we derived and keep
    checkpoints_made: int = 0  # of our own chain (validators)
    false_checkpoints: int = 0  # signed states our copy of the entries contradicts


class LedgerSync:
    """Replicates the chains of ``validators`` into ``store`` and serves them to others."""

    def __init__(
        self,
        host: P2PHost,
        store: LedgerStore,
        identity: Identity,
        network_id: str,
        validators: set[bytes],
        *,
        on_entry: Callable[[VerifiedEntry], None] | None = None,
        batch: int = 2048,
        head_interval: float = 5.0,
        probe_interval: float = 30.0,
        tick: float = 0.5,
        join_from_checkpoint: bool = True,
        checkpoint_min_age: float = JOIN_TAIL_S,
        checkpoint_interval: float = CHECKPOINT_INTERVAL_S,
    ) -> None:
        self.host = host
        self.store = store
        self.identity = identity
        self.network_id = network_id
        self.validators = set(validators)
        self.on_entry = on_entry
        self.head_interval = head_interval
        self.tick = tick
        self.is_validator = identity.public_key in self.validators
        self.checkpoint_min_age = checkpoint_min_age
        self.checkpoint_interval = checkpoint_interval
        self.planner = SyncPlanner(
            self.validators,
            own=identity.public_key,
            batch=batch,
            probe_interval=probe_interval,
            join_from_checkpoint=join_from_checkpoint,
        )
        self.stats = SyncStats()
        self._wake = trio.Event()
        self._checkpoint_blocked_until = 0.0

    # -- gossip ------------------------------------------------------------------------------

    async def on_ledger_gossip(self, sender: str, data: bytes) -> None:
        """Handle a ``ledger_entry`` or ``ledger_head`` from the ledger topic.

        Raises MalformedMessage (the host charges the sender) for anything not signed by a
        manifest validator or of another type.
        """
        opened = open_envelope(data, self.network_id)
        signer = opened.signer
        if signer not in self.validators:
            raise MalformedMessage("ledger gossip signed by a key that is not a validator")
        message = opened.message
        if isinstance(message, LedgerHead):
            self.store.record_head(data, self.network_id)  # what `ledger verify` checks against
            self.planner.heard(signer, message.seq, sender)
            stored = self.store.entry_hash(signer, message.seq)
            if stored is not None and stored != message.hash:
                self.planner.conflicting_head(signer, message.seq, sender)
            self._wake.set()
        elif isinstance(message, LedgerEntry):
            self.planner.heard(signer, message.seq, sender)
            head = self.store.head(signer)
            top = -1 if head is None else head[0]
            if signer == self.identity.public_key and message.seq > top:
                # Only append_local extends our own chain: an entry of ours we never stored was
                # signed with our key elsewhere (a stolen key, or a restored old copy).
                log.error(
                    "%s signed with our key is not in our chain", entry_name(message.seq, None)
                )
                return
            if message.seq <= top + 1:
                result = self.store.ingest_range([data], self.network_id, self.validators)
                self.stats.gossip_stored += len(result.stored)
                self._after_ingest(result, f"gossip from {sender}")
            else:
                self._wake.set()  # a gap: the sync loop fetches it
        else:
            raise MalformedMessage(f"unexpected {type(message).__name__} on the ledger topic")

    def _after_ingest(self, result: RangeResult, where: str) -> str:
        """Count and report an ingest: ``ok``, ``bad`` (an entry failed verification: whoever
        served it is at fault) or ``retry`` (it did not follow our stored head)."""
        self.stats.duplicates += result.duplicates
        for entry in result.stored:
            if entry.kind == KIND_CHECKPOINT:
                self._keep_checkpoint(entry)
        if self.on_entry is not None:
            for entry in result.stored:
                try:
                    self.on_entry(entry)
                except Exception:  # a consumer's bug must not stop replication
                    log.exception("ledger entry callback failed")
        error = result.error
        if error is None:
            return "ok"
        if isinstance(error, EquivocationError):
            # Whoever relayed it passed on a validator's own signatures: not their fault.
            self.stats.equivocations += 1
            log.warning("%s: %s", where, error)
            return "ok"
        if isinstance(error, EntryError):
            self.stats.rejected += 1
            log.warning("%s: refused: %s", where, error)
            return "bad"
        log.info("%s: %s", where, error)
        return "retry"

    # -- serving -----------------------------------------------------------------------------

    async def handle_range(self, peer_id: str, opened: Opened) -> LedgerRange:
        """Serve a ``ledger_range_request``: stored entries from ``from_seq`` on, cut to fit."""
        request = opened.expect(LedgerRangeRequest)
        entries: list[bytes] = []
        head = self.store.head(request.signer) if request.signer in self.validators else None
        if head is not None:
            budget = MAX_ENVELOPE_BYTES[LedgerRange.TYPE] - _RANGE_OVERHEAD
            for envelope in self.store.entries(request.signer, request.from_seq, request.limit):
                budget -= len(envelope) + 5  # msgpack bin header
                if budget < 0:
                    break
                entries.append(envelope)
        self.stats.ranges_served += 1
        self.stats.entries_served += len(entries)
        return LedgerRange(
            version=1,
            signer=request.signer,
            entries=tuple(entries),
            head_seq=-1 if head is None else head[0],
        )

    def _keep_checkpoint(self, entry: VerifiedEntry) -> None:
        """Derive, check and keep a replicated checkpoint's state (so we serve it too)."""
        try:
            keep_checkpoint_state(self.store, entry)
            self.stats.checkpoints_kept += 1
        except CheckpointError as exc:
            # The validator signed a summary its own entries contradict: evidence, kept in the
            # chain (the entry is stored); `flopnet ledger verify` names it too.
            self.stats.false_checkpoints += 1
            log.error("false checkpoint: %s", exc)
        except (LedgerError, MalformedMessage) as exc:
            log.warning("cannot derive the state of checkpoint %d: %s", entry.seq, exc)

    async def handle_checkpoint(self, peer_id: str, opened: Opened) -> LedgerCheckpoint:
        """Serve a ``ledger_checkpoint_request``: the latest checkpoint we keep of the chain made
        at least ``min_age_s`` before our head (entry and state empty when there is none)."""
        request = opened.expect(LedgerCheckpointRequest)
        found = None
        head = None
        if request.signer in self.validators:
            head = self.store.head(request.signer)
            found = checkpoint_for_joiner(self.store, request.signer, request.min_age_s)
        self.stats.checkpoints_served += found is not None
        entry, state = found or (b"", b"")
        return LedgerCheckpoint(
            version=1,
            signer=request.signer,
            entry=entry,
            state=state,
            head_seq=-1 if head is None else head[0],
        )

    async def handle_profile(self, peer_id: str, opened: Opened) -> LedgerEntry | Refusal:
        """Record a contributor's signed profile in our chain (validators only); answers the
        ledger entry that holds it, or a refusal."""
        body = ProfileBody(profile=opened.raw)
        profile = open_profile(body, self.network_id)  # also refuses control characters
        me = self.identity.public_key
        if not self.is_validator:
            return refusal("not_a_validator", "this node keeps no ledger of its own")
        if not self.store.has_credited(me, profile.contributor):
            # Anyone can make a key; only contributors we credited may write to our chain.
            return refusal("unknown_contributor", "no credit of yours is on this ledger")
        last = self.store.last_profile(me, profile.contributor)
        if last is not None:
            if profile.updated_at <= last[0]:
                return refusal("stale_profile", "a newer profile is already recorded")
            if time.time() - last[1] < PROFILE_MIN_INTERVAL_S:
                return refusal("too_frequent", "one profile change per 10 minutes")
        seq, _, entry = self.store.append_local(self.identity, self.network_id, KIND_PROFILE, body)
        log.info("recorded the profile of %s as %s", peer_id, entry_name(seq, None))
        await self._publish(entry)
        return open_envelope(entry, self.network_id, expected=LedgerEntry).expect(LedgerEntry)

    # -- publishing (validators) -------------------------------------------------------------

    async def _publish(self, data: bytes) -> None:
        try:
            await self.host.publish(ledger_topic(self.network_id), data)
        except Exception as exc:  # gossip is best effort; replicas also probe
            log.warning("publishing on the ledger topic failed: %s", exc)

    async def publish_entry(self, envelope: bytes) -> None:
        """Gossip one of our own new entries (already durable in the store)."""
        await self._publish(envelope)

    async def publish_head(self) -> None:
        """Gossip our chain's head, signed, so replicas notice what they miss. It carries the time
        of the announcement, not of the head entry: the same head signed again would be the same
        bytes, which peers count as a replay (an idle validator was banned after 20)."""
        head = self.store.head(self.identity.public_key)
        if head is None:
            return
        message = LedgerHead(version=1, seq=head[0], hash=head[1], timestamp=time.time())
        await self._publish(seal(message, self.identity, self.network_id))

    # -- the sync loop -----------------------------------------------------------------------

    def local_heads(self) -> dict[bytes, int]:
        """The stored head seq of every replicated chain."""
        out = {}
        for signer in self.validators:
            head = self.store.head(signer)
            out[signer] = -1 if head is None else head[0]
        return out

    async def run(self) -> None:
        """Fetch what we miss, forever; validators also announce their head periodically.

        Nothing in here may end the node: ``P2PHost.running()`` swallows an exception from the
        tasks it holds, so one escaping would stop the node silently, with exit status 0.
        """
        async with trio.open_nursery() as nursery:
            if self.is_validator and self.head_interval > 0:
                nursery.start_soon(self._head_loop)
            while True:
                try:
                    fetches = self.planner.plan(
                        self.local_heads(), self.host.connected_peers(), time.monotonic()
                    )
                except Exception:  # e.g. the store cannot be read: try again in a while
                    log.exception("planning ledger fetches")
                    fetches = []
                    await trio.sleep(5 * self.tick)
                for fetch in fetches:
                    nursery.start_soon(self._fetch, fetch)
                self._wake = trio.Event()
                with trio.move_on_after(self.tick):
                    await self._wake.wait()

    async def _head_loop(self) -> None:
        while True:
            try:
                await self.maybe_checkpoint()
            except Exception:
                log.exception("checkpointing our chain")
            try:
                await self.publish_head()
            except Exception:
                log.exception("announcing our ledger head")
            await trio.sleep(self.head_interval)

    async def maybe_checkpoint(self, now: float | None = None) -> int | None:
        """Append (and gossip) a checkpoint of our own chain when one is due; its seq, or None.
        Derived from our last checkpoint's kept state and the entries since (milliseconds)."""
        me = self.identity.public_key
        if self.checkpoint_interval <= 0:
            return None
        since, entries_since = checkpoint_progress(self.store, me)
        now = time.time() if now is None else now
        if now < self._checkpoint_blocked_until:
            return None
        if not checkpoint_due(now, self.checkpoint_interval, since, entries_since):
            return None
        try:
            seq, state = append_checkpoint(self.store, self.identity, self.network_id, now=now)
        except CheckpointError as exc:
            # e.g. more contributors than a state holds: said once an interval, not every 5 s.
            log.error("cannot checkpoint our chain: %s", exc)
            self._checkpoint_blocked_until = now + self.checkpoint_interval
            return None
        self.stats.checkpoints_made += 1
        log.info("checkpoint at seq %d: %d bytes of state", seq, len(state))
        (entry,) = self.store.entries(me, seq, 1)
        await self._publish(entry)
        return seq

    async def _ask(self, fetch: Fetch, rpc: Rpc, request: Record, answer: type[_Reply]) -> _Reply:
        """One request about ``fetch``'s chain; raises PeerError for a refusal, MalformedMessage
        for an answer of another type or about another chain (or another FlopnetError)."""
        opened = await self.host.call(fetch.peer, rpc, request)
        if isinstance(opened.message, Refusal):
            raise PeerError(f"{rpc.protocol_id} refused: {opened.message.reason}")
        reply = opened.expect(answer)
        if reply.signer != fetch.signer:
            raise MalformedMessage(f"{rpc.protocol_id}: an answer about another chain")
        return reply

    async def _request(self, fetch: Fetch) -> LedgerRange:
        """One range request; raises MalformedMessage or another FlopnetError."""
        request = LedgerRangeRequest(
            version=1, signer=fetch.signer, from_seq=fetch.from_seq, limit=fetch.limit
        )
        return await self._ask(fetch, LEDGER_RANGE, request, LedgerRange)

    async def _fetch_checkpoint(self, fetch: Fetch) -> tuple[bool, int | None, bool]:
        """Fetch a checkpoint and adopt it if it verifies: (ok, the peer's head, adopted).
        Raises MalformedMessage (or CheckpointError) for a reply or checkpoint that is bad."""
        request = LedgerCheckpointRequest(
            version=1, signer=fetch.signer, min_age_s=self.checkpoint_min_age
        )
        reply = await self._ask(fetch, LEDGER_CHECKPOINT, request, LedgerCheckpoint)
        if not reply.entry:
            if reply.state:
                raise MalformedMessage("a checkpoint state without its entry")
            return True, reply.head_seq, False
        if self.store.head(fetch.signer) is not None:
            return True, reply.head_seq, False  # gossip stored its start meanwhile
        signer, seq = adopt_checkpoint(
            self.store, reply.entry, reply.state, self.network_id, {fetch.signer}
        )
        self.stats.checkpoints_adopted += 1
        log.info(
            "joined %s's chain at its checkpoint seq %d (from %s; %d bytes of state)",
            signer_name(signer),
            seq,
            fetch.peer,
            len(reply.state),
        )
        return True, reply.head_seq, True

    async def _fetch(self, fetch: Fetch) -> None:
        """Fetch ``fetch``'s checkpoint, or its range and on while the peer has more, with the
        next range always requested before the current one is verified and stored (the peer
        prepares and sends it meanwhile). Never raises: a failing peer is backed off."""
        ok, peer_head, adopted, bad = False, None, False, False
        try:
            if fetch.checkpoint:
                try:
                    ok, peer_head, adopted = await self._fetch_checkpoint(fetch)
                except (MalformedMessage, CheckpointError, EntryError) as exc:
                    log.warning("ledger checkpoint from %s: %s", fetch.peer, exc)
                    bad = True
                    await self.host.penalize(fetch.peer, Violation.BAD_SIGNATURE)
                except FlopnetError as exc:
                    log.info("ledger checkpoint from %s: %s", fetch.peer, exc)
            else:
                ok, peer_head = await self._fetch_ranges(fetch)
        except Exception:  # a bug here must not take the node down with it
            log.exception("ledger fetch from %s", fetch.peer)
            ok = False
        if not ok:
            self.stats.fetch_failures += 1
        now = time.monotonic()
        self.planner.done(fetch, now, peer_head=peer_head, ok=ok, adopted=adopted, bad=bad)
        self._wake.set()

    async def _fetch_ranges(self, fetch: Fetch) -> tuple[bool, int | None]:
        """The ranges of :meth:`_fetch`: (success, the peer's head of the chain)."""
        ok, peer_head = False, None
        async with trio.open_nursery() as nursery:
            # Errors are handled inside the nursery: leaving it, they would come out wrapped in
            # an ExceptionGroup (trio's strict groups) that no handler here matches.
            try:
                ok, peer_head = await self._fetch_from(nursery, fetch)
            except MalformedMessage as exc:
                log.warning("ledger range from %s: %s", fetch.peer, exc)
                await self.host.penalize(fetch.peer, Violation.MALFORMED)
            except FlopnetError as exc:
                name = signer_name(fetch.signer)
                log.info("ledger range from %s for %s: %s", fetch.peer, name, exc)
            finally:
                nursery.cancel_scope.cancel()  # a request still in flight is not needed
        return ok, peer_head

    async def _fetch_from(self, nursery: trio.Nursery, fetch: Fetch) -> tuple[bool, int | None]:
        """The fetch loop of :meth:`_fetch`: (success, the peer's head of the chain)."""
        allowed = {fetch.signer} & self.validators
        where = f"range from {fetch.peer}"
        peer_head = None
        pending: _Pending | None = _Pending.start(nursery, self._request, fetch)
        current = fetch
        while pending is not None:
            reply = await pending.result()
            peer_head, pending = reply.head_seq, None
            if not reply.entries:
                break
            following = replace(current, from_seq=current.from_seq + len(reply.entries))
            if peer_head >= following.from_seq:
                pending = _Pending.start(nursery, self._request, following)
            outcome = await self._ingest(reply.entries, allowed, where)
            if outcome != "ok":
                if outcome == "bad":
                    await self.host.penalize(fetch.peer, Violation.BAD_SIGNATURE)
                return outcome == "done", peer_head
            current = following
        return True, peer_head

    async def _ingest(self, entries: Sequence[bytes], allowed: set[bytes], where: str) -> str:
        """Verify and store a range in slices, letting other tasks run between them (a slice
        of 256 entries takes ~50 ms). ``ok``; ``done`` when the chain cannot continue from this
        range (equivocation evidence stored); or :meth:`_after_ingest`'s ``bad``/``retry``."""
        for start in range(0, len(entries), _INGEST_SLICE):
            part = entries[start : start + _INGEST_SLICE]
            result = self.store.ingest_range(part, self.network_id, allowed)
            self.stats.fetched += len(result.stored)
            outcome = self._after_ingest(result, where)
            if outcome != "ok":
                return outcome
            if result.error is not None:
                return "done"
            await trio.sleep(0)
        return "ok"

    def snapshot(self) -> dict[str, object]:
        """Replication state for the API: counters, chains we lag on, equivocations held."""
        heads = self.local_heads()
        return {
            **vars(self.stats),
            "heads": {signer_name(s): seq for s, seq in sorted(heads.items())},
            "behind": {
                signer_name(s): {"have": ours, "known": theirs}
                for s, (ours, theirs) in sorted(self.planner.behind(heads).items())
            },
            "equivocation_evidence": len(self.store.equivocations()),
        }


class _Pending:
    """The outcome of a request running in the background (a one-shot future)."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: LedgerRange | None = None
        self._error: BaseException | None = None

    @classmethod
    def start(
        cls,
        nursery: trio.Nursery,
        request: Callable[[Fetch], Awaitable[LedgerRange]],
        fetch: Fetch,
    ) -> _Pending:
        pending = cls()

        async def run() -> None:
            try:
                pending._value = await request(fetch)
            except Exception as exc:  # handed to the waiter, never out of the nursery
                pending._error = exc
            finally:
                pending._done.set()

        nursery.start_soon(run)
        return pending

    async def result(self) -> LedgerRange:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value
