"""The worker role: hear announcements, claim, generate with proofs, submit, keep the verdict."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass, field

import trio

from flopnet.node.config import NodeConfig
from flopnet.node.counters import counters
from flopnet.node.model.calls import (
    Generated,
    GenerateRequest,
    ModelClient,
    ModelError,
    ModelUnavailable,
)
from flopnet.node.profile import ProfileSharer, load_profile
from flopnet.node.publisher.announcements import SeqTracker
from flopnet.node.worker.pacing import FINAL_REFUSALS, ClaimPacer
from flopnet.protocol.catalog import ANNOUNCEMENTS, CLAIM, SUBMIT, VERDICT, VERDICT_WAIT_S
from flopnet.protocol.envelope import message_id, open_envelope, seal
from flopnet.protocol.errors import FlopnetError, MalformedMessage, PeerError, ProtocolTimeout
from flopnet.protocol.host import Notice, P2PHost
from flopnet.protocol.identity import Identity, peer_id_from_public_key
from flopnet.protocol.messages import (
    AnnouncementRange,
    AnnouncementRangeRequest,
    Claim,
    Lease,
    Refusal,
    Submission,
    SubmissionReceipt,
    TaskAnnouncement,
    Verdict,
    VerdictRequest,
)

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.2
TAKEN_BACKOFF_S = 3.0
ERROR_BACKOFF_S = 2.0
VERDICT_PATIENCE_S = 900.0
BAN_WAIT_S = 600.0  # a publisher's ban (its notice says how long; this is the protocol's)
BATCH_GATHER_S = 0.5


@dataclass
class _Offer:
    publisher_peer: str
    announced_at: float
    not_before: float = 0.0


@dataclass
class WorkerStats:
    leases: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: int = 0
    tokens_generated: int = 0
    flops_credited: int = 0
    generation_seconds: float = 0.0
    generations: int = 0
    batches: int = 0  # model calls; generations / batches is the batch size achieved
    announcements: int = 0
    resyncs: int = 0
    bans: int = 0  # peers that told us they banned us
    refusals: dict[str, int] = field(default_factory=dict)  # claim refusals by code
    last_verdict: str = ""
    recent: list[dict[str, object]] = field(default_factory=list)


class Worker:
    """Claims up to ``batch_size`` tasks at a time and runs them together on the local model."""

    def __init__(
        self, config: NodeConfig, identity: Identity, host: P2PHost, model: ModelClient
    ) -> None:
        self.config = config
        self.net = config.network
        self.identity = identity
        self.host = host
        self.model = model
        self.stats = WorkerStats()
        self._offers: dict[str, _Offer] = {}
        self._trackers: dict[str, SeqTracker] = {}
        self._wakeup = trio.Event()
        self._resync_wanted = trio.Event()
        self.pacer = ClaimPacer()
        host.on_notice.append(self.on_notice)
        self.busy = False
        self.phase = "idle"  # idle, generating, submitting, awaiting_verdict
        # Our display name and team go to each validator that credits us (if we have set one).
        self.profile = ProfileSharer(
            host, identity, self.net.network_id, lambda: load_profile(config.data_dir)
        )

    def _tracker(self, publisher: str) -> SeqTracker:
        return self._trackers.setdefault(publisher, SeqTracker())

    async def on_announcement(self, sender: str, data: bytes) -> None:
        """Gossip handler: remember tasks offered by the network's publishers.

        Raises MalformedMessage for anything invalid, which the host charges to the sender.
        """
        self._accept_announcement(data)

    def _accept_announcement(self, data: bytes) -> None:
        opened = open_envelope(data, self.net.network_id, expected=TaskAnnouncement)
        if opened.signer not in self.net.publisher_keys:
            raise MalformedMessage("announcement signed by a key that is not a publisher")
        ann = opened.expect(TaskAnnouncement)
        publisher = peer_id_from_public_key(opened.signer)
        tracker = self._tracker(publisher)
        if not tracker.saw(ann.seq):
            return  # a duplicate (gossip and resync can both deliver it)
        if tracker.missing_from() is not None:
            self._resync_wanted.set()
        self.stats.announcements += 1
        offer = self._offers.get(ann.task_id)
        if offer is None:
            self._offers[ann.task_id] = _Offer(publisher, ann.announced_at)
        else:
            offer.announced_at = ann.announced_at
            offer.not_before = 0.0  # re-announced: the task was re-opened
        self._wakeup.set()

    def on_publisher_head(self, publisher: str, head: int) -> None:
        """A publisher's heartbeat says how far its announcements go; fetch what we missed."""
        tracker = self._tracker(publisher)
        tracker.head_is(head)
        if tracker.missing_from() is not None:
            self._resync_wanted.set()

    async def _resync_loop(self) -> None:
        while True:
            await self._resync_wanted.wait()
            self._resync_wanted = trio.Event()
            for publisher, tracker in list(self._trackers.items()):
                try:
                    await self._resync(publisher, tracker)
                except FlopnetError as exc:
                    log.warning("resync from %s failed: %s", publisher, exc)
                    await trio.sleep(ERROR_BACKOFF_S)
                    self._resync_wanted.set()

    async def _resync(self, publisher: str, tracker: SeqTracker) -> None:
        while (start := tracker.missing_from()) is not None:
            request = AnnouncementRangeRequest(version=1, from_seq=start, limit=512)
            reply = await self.host.call(publisher, ANNOUNCEMENTS, request)
            batch = reply.expect(AnnouncementRange)
            tracker.head_is(batch.head_seq)
            for item in batch.items:
                self._accept_announcement(item)
            self.stats.resyncs += 1
            if not batch.items:
                # Evicted from the publisher's log: skip ahead rather than ask forever.
                tracker.contiguous = max(tracker.contiguous, batch.head_seq)
                break

    async def run(self) -> None:
        """Claim, generate, submit, forever."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._resync_loop)
            await self._work_loop()

    async def _work_loop(self) -> None:
        while True:
            leases = await self._claim_batch()
            if not leases:
                self._wakeup = trio.Event()
                with trio.move_on_after(1.0):
                    await self._wakeup.wait()
                continue
            self.busy = True
            try:
                await self._work_or_fall_back(leases)
            finally:
                self.busy = False
                self.phase = "idle"

    async def _work_or_fall_back(self, leases: list[bytes]) -> None:
        """Run the leases as one batch; if our model fails on the batch (out of memory at that
        size, say), run them one by one, so the leases are not simply lost."""
        try:
            await self._work(leases)
            return
        except FlopnetError as exc:
            self.stats.errors += 1
            log.warning("batch of %d: %s: %s", len(leases), type(exc).__name__, exc)
            if isinstance(exc, ModelUnavailable):
                # Our model process died or hung: restart it; the leases lapse and re-open.
                await trio.sleep(ERROR_BACKOFF_S)
                with contextlib.suppress(ModelError):
                    await self.model.restart()
                return
            if not isinstance(exc, ModelError) or len(leases) == 1:
                await trio.sleep(ERROR_BACKOFF_S)
                return
        for lease_bytes in leases:
            try:
                await self._work([lease_bytes])
            except FlopnetError as exc:
                self.stats.errors += 1
                log.warning("lease alone: %s: %s", type(exc).__name__, exc)

    async def _claim_batch(self) -> list[bytes]:
        """Leases on up to ``batch_size`` distinct tasks (claims are cheap; generation is not)."""
        leases: list[bytes] = []
        tried: set[str] = set()
        # Announcements arrive one by one: give a batch a moment to fill before claiming.
        gather_until = time.monotonic() + BATCH_GATHER_S
        while self.config.batch_size > 1 and self._ready() < self.config.batch_size:
            left = gather_until - time.monotonic()
            if left <= 0 or not self._ready():
                break
            self._wakeup = trio.Event()
            with trio.move_on_after(left):
                await self._wakeup.wait()
        refusals = 0
        while len(leases) < self.config.batch_size and refusals < self.pacer.refusals_per_round:
            task_id = self._pick(exclude=tried)
            if task_id is None:
                break
            tried.add(task_id)
            publisher = self._offers[task_id].publisher_peer
            await trio.sleep(self.pacer.wait(publisher, time.time()))  # spaced, never a flood
            try:
                lease_bytes = await self._claim(task_id)
            except FlopnetError as exc:
                self.stats.errors += 1
                log.warning("task %s: %s: %s", task_id, type(exc).__name__, exc)
                self._offers.get(task_id, _Offer("", 0)).not_before = time.time() + ERROR_BACKOFF_S
                refusals += 1
                continue
            if lease_bytes is None:
                refusals += 1
            else:
                leases.append(lease_bytes)
        return leases

    def _ready(self) -> int:
        now = time.time()
        return sum(1 for o in self._offers.values() if o.not_before <= now)

    def _pick(self, exclude: set[str] | frozenset[str] = frozenset()) -> str | None:
        # A random pick spreads workers over tasks instead of all racing for the first one.
        now = time.time()
        ready = [
            t
            for t, o in self._offers.items()
            if o.not_before <= now
            and t not in exclude
            and not self.pacer.paused(o.publisher_peer, now)
        ]
        return random.choice(ready) if ready else None

    def on_notice(self, notice: Notice) -> None:
        """A peer told us something: a publisher that banned us is left alone until it ends."""
        if notice.code == "banned":
            self.stats.bans += 1
            self.pacer.banned(notice.peer, BAN_WAIT_S, time.time())

    async def _claim(self, task_id: str) -> bytes | None:
        offer = self._offers[task_id]
        claim = Claim(version=1, task_id=task_id, nonce=os.urandom(16), claimed_at=time.time())
        # The offer's peer is a publisher of the manifest (its announcement was signed so), and
        # the host checks that the answer is signed by that peer.
        self.pacer.sent(offer.publisher_peer, time.time())
        opened = await self.host.call(offer.publisher_peer, CLAIM, claim)
        if isinstance(opened.message, Refusal):
            refusal = opened.message
            now = time.time()
            self.stats.refusals[refusal.code] = self.stats.refusals.get(refusal.code, 0) + 1
            if refusal.code in FINAL_REFUSALS:
                self._offers.pop(task_id, None)
            else:
                offer.not_before = now + TAKEN_BACKOFF_S
            pause = self.pacer.refused(offer.publisher_peer, refusal.code, now)
            log.log(
                logging.INFO if pause else logging.DEBUG,
                "claim on %s refused: %s: %s%s",
                task_id,
                refusal.code,
                refusal.reason,
                f" (claims paused {pause:.1f} s)" if pause else "",
            )
            return None
        self.pacer.granted(offer.publisher_peer)
        lease = opened.expect(Lease)
        if lease.worker != self.identity.public_key or lease.task_id != task_id:
            raise MalformedMessage("the lease does not match our claim")
        self.stats.leases += 1
        return opened.raw

    async def _work(self, leases: list[bytes]) -> None:
        """Generate the leases' samples together, then submit each and wait for its verdict."""
        opened = [
            open_envelope(lb, self.net.network_id, expected=Lease).expect(Lease) for lb in leases
        ]
        started = time.perf_counter()
        self.phase = "generating"
        requests = [GenerateRequest.of_lease(lease) for lease in opened]
        try:
            if len(requests) == 1:
                gens = [await self.model.generate(requests[0])]
            else:
                gens = await self.model.generate_batch(requests)
        except ModelError as exc:
            raise type(exc)(f"generation failed: {exc}") from None
        elapsed = time.perf_counter() - started
        self.stats.generation_seconds += elapsed
        self.stats.generations += len(gens)
        self.stats.batches += 1
        self.stats.tokens_generated += sum(len(g.token_ids) for g in gens)
        self.phase = "submitting"
        async with trio.open_nursery() as nursery:
            for lease_bytes, lease, gen in zip(leases, opened, gens, strict=True):
                nursery.start_soon(self._submit_and_settle, lease_bytes, lease, gen, elapsed)

    async def _submit_and_settle(
        self, lease_bytes: bytes, lease: Lease, gen: Generated, elapsed: float
    ) -> None:
        """Submit one sample and keep its verdict; errors are counted, never end the batch."""
        try:
            await self._submit(lease_bytes, lease, gen, elapsed)
        except FlopnetError as exc:
            self.stats.errors += 1
            log.warning("task %s: %s: %s", lease.task_id, type(exc).__name__, exc)
            self._offers.get(lease.task_id, _Offer("", 0)).not_before = (
                time.time() + ERROR_BACKOFF_S
            )

    async def _submit(
        self, lease_bytes: bytes, lease: Lease, gen: Generated, elapsed: float
    ) -> None:
        submission = Submission(
            version=1,
            lease=lease_bytes,
            token_ids=gen.token_ids,
            text=gen.text,
            finish_reason=gen.finish_reason,
            proofs=gen.proofs,
            generation_seconds=float(elapsed),
        )
        # The lease's validator key is the peer asked, and the host checks who signed the answer.
        validator_peer = peer_id_from_public_key(lease.validator)
        sealed = seal(submission, self.identity, self.net.network_id)
        reply = await self.host.call(validator_peer, SUBMIT, sealed)
        if isinstance(reply.message, Refusal):
            raise PeerError(f"the validator refused the submission: {reply.message.reason}")
        if reply.expect(SubmissionReceipt).submission_id != message_id(sealed):
            raise MalformedMessage("the receipt is for another submission")
        self.phase = "awaiting_verdict"
        verdict = await self._await_verdict(validator_peer, lease, message_id(sealed))
        if verdict.accepted:
            self.stats.accepted += 1
            self.stats.flops_credited += verdict.flops
            self._offers.pop(lease.task_id, None)
            await self.profile.share(lease.validator)
        else:
            self.stats.rejected += 1
        self.stats.last_verdict = "; ".join(verdict.reasons)[:300]
        self.stats.recent = [
            {
                "task_id": lease.task_id,
                "accepted": verdict.accepted,
                "flops": verdict.flops,
                "tokens": len(gen.token_ids),
                "seconds": round(elapsed, 3),
            },
            *self.stats.recent[:19],
        ]
        log.info(
            "%s on %s: %s",
            "accepted" if verdict.accepted else "rejected",
            lease.task_id,
            self.stats.last_verdict,
        )

    async def _await_verdict(
        self, validator_peer: str, lease: Lease, submission_id: bytes
    ) -> Verdict:
        """Ask the validator for the verdict until it is ready (its inbox survives restarts)."""
        deadline = time.time() + VERDICT_PATIENCE_S
        request = VerdictRequest(
            version=1, submission_id=submission_id, wait_seconds=VERDICT_WAIT_S
        )
        while time.time() < deadline:
            try:
                opened = await self.host.call(validator_peer, VERDICT, request)
            except (PeerError, ProtocolTimeout) as exc:
                log.info("verdict for %s not reachable yet: %s", lease.task_id, exc)
                await trio.sleep(ERROR_BACKOFF_S)
                continue
            if isinstance(opened.message, Refusal):
                if opened.message.code == "pending":
                    continue
                raise PeerError(f"validator refused: {opened.message.reason}")
            verdict = opened.expect(Verdict)
            if verdict.submission_id != submission_id:
                raise MalformedMessage("the verdict is for another submission")
            return verdict
        raise ProtocolTimeout(f"no verdict for {lease.task_id} within {VERDICT_PATIENCE_S}s")

    def snapshot(self) -> dict[str, object]:
        """Counters for the API."""
        return counters(self.stats, phase=self.phase, known_tasks=len(self._offers))
