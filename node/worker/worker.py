"""The worker role: hear announcements, claim, generate with proofs, submit, keep the verdict.

Every lease is on the task board (:mod:`flopnet.node.worker.board`) with its stage. The
contributor's control (:mod:`flopnet.node.controller`) gates claiming: paused, finishing or
outside its active hours, the worker claims nothing. "Pause now" cancels a generation in
progress (the model process is stopped mid-sample and restarted before the next one) and hands
every lease not yet submitted back to its publisher with a signed release, which re-offers it at
once; submitted leases keep waiting for their verdicts, so nothing acknowledged is lost. A lease
the model process cannot generate is handed back the same way rather than left to lapse.

Every lease and every finished submission is written to the durable outbox
(:mod:`flopnet.node.worker.outbox`) before it is sent: a worker killed at any moment sends its
finished, unjudged submissions again after a restart, and hands back the leases it held unfinished.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from flopnet.node.config import NodeConfig
from flopnet.node.counters import Timings, counters
from flopnet.node.model.calls import (
    Generated,
    GenerateRequest,
    ModelClient,
    ModelError,
    ModelUnavailable,
)
from flopnet.node.model.streaming import OutputCallback, OutputDelta
from flopnet.node.profile import ProfileSharer, load_profile
from flopnet.node.publisher.announcements import SeqTracker
from flopnet.node.worker.board import TaskBoard, TaskEntry
from flopnet.node.worker.cheats import cheat_output, cheat_request
from flopnet.node.worker.outbox import Outbox
from flopnet.node.worker.pacing import FINAL_REFUSALS, ClaimPacer
from flopnet.protocol.catalog import (
    ANNOUNCEMENTS,
    CLAIM,
    RELEASE,
    SUBMIT,
    VERDICT,
    VERDICT_WAIT_S,
    lease_grace,
)
from flopnet.protocol.envelope import Opened, message_id, open_envelope, seal
from flopnet.protocol.errors import FlopnetError, MalformedMessage, PeerError, ProtocolTimeout
from flopnet.protocol.host import Notice, P2PHost
from flopnet.protocol.identity import Identity, peer_id_from_public_key
from flopnet.protocol.messages import (
    AnnouncementRange,
    AnnouncementRangeRequest,
    Claim,
    Lease,
    LeaseRelease,
    Refusal,
    ReleaseAck,
    Submission,
    SubmissionReceipt,
    TaskAnnouncement,
    Verdict,
    VerdictRequest,
)

if TYPE_CHECKING:
    from flopnet.node.controller import Controller

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.2
TAKEN_BACKOFF_S = 3.0
ERROR_BACKOFF_S = 2.0
VERDICT_PATIENCE_S = 900.0
BAN_WAIT_S = 600.0  # a publisher's ban (its notice says how long; this is the protocol's)
BATCH_GATHER_S = 0.5
RESEND_EVERY_S = 20.0  # how often finished submissions that failed to send are tried again


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
    resent: int = 0  # finished submissions sent again (after a restart or a failed send)
    bans: int = 0  # peers that told us they banned us
    released: int = 0  # leases handed back unfinished (paused, model failures)
    model_restarts: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # claim refusals by code
    last_verdict: str = ""
    recent: list[dict[str, object]] = field(default_factory=list)


class Acknowledged:
    """Tells a task's starter, once, that its submission was acknowledged (or failed)."""

    def __init__(self, task_status: Any) -> None:
        self._status: Any | None = task_status

    def __call__(self) -> None:
        if self._status is not None:
            status, self._status = self._status, None
            status.started()


class Worker:
    """Claims up to ``batch_size`` tasks at a time and runs them together on the local model."""

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        host: P2PHost,
        model: ModelClient,
        outbox: Outbox,
        *,
        control: Controller | None = None,
        board: TaskBoard | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self._in_flight: set[bytes] = set()  # lease ids being generated or submitted right now
        self.net = config.network
        self.identity = identity
        self.host = host
        self.model = model
        self.stats = WorkerStats()
        self.timings = Timings()  # generation (decode + proofs) seconds per batch
        self._offers: dict[str, _Offer] = {}
        self._trackers: dict[str, SeqTracker] = {}
        self._wakeup = trio.Event()
        self._resync_wanted = trio.Event()
        self.pacer = ClaimPacer()
        host.on_notice.append(self.on_notice)
        self.busy = False
        self._phase = "idle"  # idle, generating, submitting (see the phase property)
        # Leases submitted (or being submitted) whose verdicts are awaited in the background,
        # while the worker generates the next batch.
        self._settling: set[bytes] = set()
        self._background: trio.Nursery | None = None
        self.control = control
        self.board = board if board is not None else TaskBoard()
        self._generation: trio.CancelScope | None = None  # the generation in progress
        self._stop_reason = ""  # set by stop_generating until the leases in hand are handed back
        self._restart_wanted = False
        if control is not None:
            control.stop_hooks.append(self.stop_generating)
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

    @property
    def phase(self) -> str:
        """idle, generating, submitting, or awaiting_verdict (idle with verdicts to come)."""
        if self._phase == "idle" and self._settling:
            return "awaiting_verdict"
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        self._phase = value

    async def run(self) -> None:
        """Claim, generate, submit, forever."""
        async with trio.open_nursery() as nursery:
            self._background = nursery  # verdicts are awaited here, beside the next batch
            nursery.start_soon(self._resync_loop)
            nursery.start_soon(self._resend_loop)
            await self._work_loop()

    async def _resend_loop(self) -> None:
        """Send again every finished submission that was never judged while its lease holds
        (a validator answers a resend with the same receipt, so a duplicate costs nothing);
        leases held but never finished (a crash mid-generation) are handed back."""
        while True:
            now = time.time()
            for pending in self.outbox.pending():
                if pending.lease_id in self._in_flight:
                    continue
                opened = open_envelope(pending.lease, self.net.network_id, expected=Lease)
                lease = opened.expect(Lease)
                if self.board.get(lease.lease_id.hex()) is None:
                    self._show(opened)  # the TUI shows what a restart found
                if pending.submission is None:
                    if now < lease.expires_at:
                        await self._release([opened], "restarted")
                    self.outbox.judged(pending.lease_id)  # handed back, or lapsed already
                    continue
                if now > lease.expires_at + lease_grace(lease.expires_at - lease.issued_at):
                    self.outbox.judged(pending.lease_id)  # too late for any validator
                    note = "finished before a restart, too late to send after it"
                    self.board.move(lease.lease_id.hex(), "failed", now, note=note)
                    continue
                self.stats.resent += 1
                log.info("sending again the unjudged submission for %s", lease.task_id)
                submission = open_envelope(
                    pending.submission, self.net.network_id, expected=Submission
                ).expect(Submission)
                await self._deliver_and_settle(
                    lease, pending.submission, 0.0, len(submission.token_ids)
                )
            await trio.sleep(RESEND_EVERY_S)

    @property
    def batch_size(self) -> int:
        """Leases generated together (the contributor may change it while the node runs)."""
        return self.control.settings.batch_size if self.control else self.config.batch_size

    def _may_claim(self) -> bool:
        return self.control is None or self.control.may_claim()

    def stop_generating(self, reason: str = "paused") -> None:
        """Stop the generation in progress and hand back every lease not yet submitted
        (called by the control on "pause now", and before a model restart)."""
        self._stop_reason = reason
        if self._generation is not None:
            self._generation.cancel()
            # The model process is stopped mid-sample (it serves one request at a time and
            # would otherwise finish it); it is started again before the next generation.
            if self.model.interrupt():
                self._restart_wanted = True
        self._wakeup.set()

    def restart_model_soon(self) -> None:
        """Restart the model process before the next generation (new devices, say)."""
        self._restart_wanted = True
        self._wakeup.set()

    async def _restart_model(self) -> None:
        self._restart_wanted = False
        self.stats.model_restarts += 1
        try:
            if self.control is not None:
                with self.control.hold("restarting the model process"):
                    await self.model.restart()
            else:
                await self.model.restart()
        except ModelError as exc:
            self.stats.errors += 1
            log.error("the model process did not restart: %s", exc)
            self._restart_wanted = True
            await trio.sleep(ERROR_BACKOFF_S)

    async def _wait_change(self, timeout: float) -> None:
        """Sleep until an announcement, a control change or ``timeout``."""
        self._wakeup = trio.Event()
        events = [self._wakeup] + ([self.control.changed()] if self.control else [])
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:

                async def first(event: trio.Event) -> None:
                    await event.wait()
                    nursery.cancel_scope.cancel()

                for event in events:
                    nursery.start_soon(first, event)

    async def _work_loop(self) -> None:
        while True:
            self._stop_reason = ""  # nothing is in hand here
            if self._restart_wanted:
                await self._restart_model()
                continue
            if not self._may_claim():
                if self.control is not None and not self._settling:
                    self.control.finished()  # a finishing node has nothing left: now paused
                await self._wait_change(1.0)
                continue
            leases = await self._claim_batch()
            if not leases:
                await self._wait_change(1.0)
                continue
            self.busy = True
            try:
                await self._run_leases(
                    [open_envelope(lb, self.net.network_id, expected=Lease) for lb in leases]
                )
            finally:
                self.busy = False
                self.phase = "idle"

    async def _run_leases(self, leases: list[Opened]) -> None:
        """Generate and submit the leases; a lease not finished when this returns (handed back,
        failed, cancelled) leaves the outbox, where a finished one stays until it is judged."""
        try:
            await self._generate_and_submit(leases)
        finally:
            for opened in leases:
                lease_id = opened.expect(Lease).lease_id
                if lease_id not in self._settling:  # else its verdict is awaited, still ours
                    self._in_flight.discard(lease_id)
                self.outbox.abandon(lease_id)

    async def _generate_and_submit(self, leases: list[Opened]) -> None:
        """Generate the leases' samples (together), then submit each and keep its verdict.

        A stop ("pause now") before or during generation hands the leases back; a lease our
        model cannot generate (it failed on the batch, then on the lease alone) is handed back
        too, so its sample is re-offered at once instead of lapsing.
        """
        if self._stop_reason:
            await self._release(leases, self._stop_reason)
            return
        started = time.perf_counter()
        now = time.time()
        for opened in leases:
            self.board.move(opened.expect(Lease).lease_id.hex(), "generating", now)
        self.phase = "generating"
        with trio.CancelScope() as scope:
            self._generation = scope
            try:
                results = await self._generate([o.expect(Lease) for o in leases])
            finally:
                self._generation = None
        if scope.cancelled_caught:
            await self._release(leases, self._stop_reason or "paused")
            return
        elapsed = time.perf_counter() - started
        done = [(o, g) for o, g in zip(leases, results, strict=True) if g is not None]
        failed = [o for o, g in zip(leases, results, strict=True) if g is None]
        if failed:
            await self._release(failed, "model_failed")
        if not done:
            return
        self.stats.generation_seconds += elapsed
        self.timings.observe("generation", elapsed)
        for _, gen in done:
            self.timings.observe("proof_build", gen.proof_s)
        self.stats.generations += len(done)
        self.stats.batches += 1
        self.stats.tokens_generated += sum(len(g.token_ids) for _, g in done)
        now = time.time()
        for opened, gen in done:
            self.board.generated(
                opened.expect(Lease).lease_id.hex(),
                now,
                output=gen.text,
                tokens=len(gen.token_ids),
                proofs=len(gen.proofs),
                finish_reason=gen.finish_reason,
                decode_s=gen.prefill_s + gen.decode_s,
                proof_s=gen.proof_s,
            )
        self.phase = "submitting"
        # Each submission is sent and its receipt awaited here; its verdict is awaited in the
        # background, so the model starts the next batch at once instead of idling until the
        # validator has judged this one.
        background = self._background
        assert background is not None, "run() starts the background nursery"
        async with trio.open_nursery() as nursery:
            for opened, gen in done:
                lease = opened.expect(Lease)
                sealed = self._seal(opened.raw, gen, elapsed)
                self.outbox.finished(lease.lease_id, sealed)  # durable before it is sent
                nursery.start_soon(
                    partial(
                        background.start,
                        self._deliver_and_settle,
                        lease,
                        sealed,
                        elapsed,
                        len(gen.token_ids),
                    )
                )

    async def _generate(self, leases: Sequence[Lease]) -> list[Generated | None]:
        """One sample per lease: the batch together, then (if our model fails on the batch,
        out of memory at that size, say) one by one. None for a lease the model failed on."""
        cheat = self.config.cheat  # None but in a devnet's cheater workers
        requests = [cheat_request(cheat, GenerateRequest.of_lease(lease)) for lease in leases]
        try:
            if len(requests) == 1:
                gens = [await self.model.generate(requests[0], self._streamer(leases))]
            else:
                gens = list(await self.model.generate_batch(requests, self._streamer(leases)))
            if cheat is not None and self.model.info is not None:
                gens = [cheat_output(cheat, g, self.model.info.vocab_size) for g in gens]
            return list(gens)
        except ModelError as exc:
            self.stats.errors += 1
            log.warning("batch of %d: %s: %s", len(leases), type(exc).__name__, exc)
            if isinstance(exc, ModelUnavailable):
                # Our model process died or hung: restart it before the next generation.
                self._restart_wanted = True
                return [None] * len(leases)
            if len(leases) == 1:
                await trio.sleep(ERROR_BACKOFF_S)
                return [None]
        out: list[Generated | None] = []
        for lease, request in zip(leases, requests, strict=True):
            entry = self.board.get(lease.lease_id.hex())
            if entry is not None:  # what the failed batch streamed is not this sample's text
                entry.output, entry.tokens = "", 0
            try:
                out.append(await self.model.generate(request, self._streamer([lease])))
            except ModelError as exc:
                self.stats.errors += 1
                log.warning("lease alone: %s: %s", type(exc).__name__, exc)
                out.append(None)
                if isinstance(exc, ModelUnavailable):
                    self._restart_wanted = True
        return out

    def _streamer(self, leases: Sequence[Lease]) -> OutputCallback:
        """Where the model process's text deltas go: each row's lease on the task board (the
        API's ``/tasks/{id}`` and the TUI's task view show the output as it grows)."""
        lease_ids = [lease.lease_id.hex() for lease in leases]

        def on_output(deltas: Sequence[OutputDelta]) -> None:
            for delta in deltas:
                if 0 <= delta.row < len(lease_ids):
                    self.board.streamed(lease_ids[delta.row], delta.tokens, delta.text)

        return on_output

    async def _release(self, leases: Sequence[Opened], reason: str) -> None:
        """Hand leases back to their publishers with a signed release (best effort: a release
        that does not arrive leaves the lease to lapse, as before)."""
        for opened in leases:
            lease = opened.expect(Lease)
            release = LeaseRelease(
                version=1,
                lease_id=lease.lease_id,
                task_id=lease.task_id,
                sample_index=lease.sample_index,
                reason=reason,
                released_at=time.time(),
            )
            note = f"handed back ({reason})"
            try:
                reply = await self.host.call(
                    peer_id_from_public_key(opened.signer), RELEASE, release
                )
                if isinstance(reply.message, Refusal):
                    note = f"release refused: {reply.message.code}: {reply.message.reason}"
                elif not reply.expect(ReleaseAck).reopened:
                    note = f"handed back ({reason}); the publisher had settled it already"
            except FlopnetError as exc:
                note = f"release not delivered ({exc}); the lease will lapse"
                log.warning("releasing %s: %s", lease.task_id, exc)
            self.stats.released += 1
            self.board.move(lease.lease_id.hex(), "released", time.time(), note=note)
            offer = self._offers.get(lease.task_id)
            if offer is not None:  # not straight back to it: let another worker take it
                offer.not_before = time.time() + TAKEN_BACKOFF_S
            log.info("lease on %s: %s", lease.task_id, note)

    async def _claim_batch(self) -> list[bytes]:
        """Leases on up to ``batch_size`` distinct tasks (claims are cheap; generation is not)."""
        leases: list[bytes] = []
        tried: set[str] = set()
        # Announcements arrive one by one: give a batch a moment to fill before claiming.
        gather_until = time.monotonic() + BATCH_GATHER_S
        batch_size = self.batch_size
        while batch_size > 1 and self._ready() < batch_size:
            left = gather_until - time.monotonic()
            if left <= 0 or not self._ready():
                break
            self._wakeup = trio.Event()
            with trio.move_on_after(left):
                await self._wakeup.wait()
        refusals = 0
        while len(leases) < batch_size and refusals < self.pacer.refusals_per_round:
            if not self._may_claim():
                break  # paused meanwhile: what is claimed runs (or is handed back), no more
            task_id = self._pick(exclude=tried)
            if task_id is None:
                break
            tried.add(task_id)
            publisher = self._offers[task_id].publisher_peer
            await trio.sleep(self.pacer.wait(publisher, time.time()))  # spaced, never a flood
            if task_id not in self._offers:
                continue  # settled meanwhile (a verdict awaited in the background closed it)
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
        self._in_flight.add(lease.lease_id)  # ours to finish; the resend loop keeps off it
        self.outbox.claimed(lease.lease_id, opened.raw, lease.expires_at)
        self._show(opened)
        return opened.raw

    def _show(self, opened: Opened) -> None:
        """Put a lease on the task board (claimed now, or found in the outbox after a restart)."""
        lease = opened.expect(Lease)
        self.board.claimed(
            TaskEntry(
                lease_id=lease.lease_id.hex(),
                task_id=lease.task_id,
                task_type=lease.task_type,
                sample_index=lease.sample_index,
                publisher=peer_id_from_public_key(opened.signer),
                validator=peer_id_from_public_key(lease.validator),
                claimed_at=time.time(),
                expires_at=lease.expires_at,
                prompt_ids=tuple(lease.prompt_ids),
            )
        )

    def _seal(self, lease_bytes: bytes, gen: Generated, elapsed: float) -> bytes:
        submission = Submission(
            version=1,
            lease=lease_bytes,
            token_ids=gen.token_ids,
            text=gen.text,
            finish_reason=gen.finish_reason,
            proofs=gen.proofs,
            generation_seconds=float(elapsed),
        )
        return seal(submission, self.identity, self.net.network_id)

    async def _deliver_and_settle(
        self,
        lease: Lease,
        sealed: bytes,
        elapsed: float,
        tokens: int,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Submit one sample and keep its verdict; errors are counted, never end the batch.
        ``task_status`` is told once the submission is acknowledged (or failed). A send that
        fails stays in the outbox, and the resend loop tries it again."""
        self._in_flight.add(lease.lease_id)
        self._settling.add(lease.lease_id)
        acknowledged = Acknowledged(task_status)
        try:
            await self._deliver(lease, sealed, elapsed, tokens, acknowledged)
        except FlopnetError as exc:
            self.stats.errors += 1
            log.warning("task %s: %s: %s", lease.task_id, type(exc).__name__, exc)
            self.board.move(lease.lease_id.hex(), "failed", time.time(), note=str(exc)[:300])
            self._offers.get(lease.task_id, _Offer("", 0)).not_before = (
                time.time() + ERROR_BACKOFF_S
            )
        finally:
            self._in_flight.discard(lease.lease_id)
            self._settling.discard(lease.lease_id)
            acknowledged()

    async def _deliver(
        self,
        lease: Lease,
        sealed: bytes,
        elapsed: float,
        tokens: int,
        acknowledged: Callable[[], None],
    ) -> None:
        # The lease's validator key is the peer asked, and the host checks who signed the answer.
        validator_peer = peer_id_from_public_key(lease.validator)
        reply = await self.host.call(validator_peer, SUBMIT, sealed)
        if isinstance(reply.message, Refusal):
            self.outbox.judged(lease.lease_id)  # a refusal is final: sending again won't help
            raise PeerError(f"the validator refused the submission: {reply.message.reason}")
        receipt = reply.expect(SubmissionReceipt)
        if receipt.submission_id != message_id(sealed):
            raise MalformedMessage("the receipt is for another submission")
        self.board.move(
            lease.lease_id.hex(),
            "submitted",
            time.time(),
            submission_id=receipt.submission_id.hex(),
            queue_position=receipt.queue_position,
        )
        acknowledged()  # the batch may end: the verdict is awaited in the background
        verdict = await self._await_verdict(validator_peer, lease, message_id(sealed))
        self.outbox.judged(lease.lease_id)
        if verdict.accepted:
            self.stats.accepted += 1
            self.stats.flops_credited += verdict.flops
            self._offers.pop(lease.task_id, None)
            await self.profile.share(lease.validator)
        else:
            self.stats.rejected += 1
        self.board.move(
            lease.lease_id.hex(),
            "verdict",
            time.time(),
            accepted=verdict.accepted,
            reasons=tuple(verdict.reasons),
            answer_score=verdict.answer_score,
            flops=verdict.flops,
            ledger_seq=verdict.ledger_seq,
        )
        self.stats.last_verdict = "; ".join(verdict.reasons)[:300]
        self.stats.recent = [
            {
                "task_id": lease.task_id,
                "accepted": verdict.accepted,
                "flops": verdict.flops,
                "tokens": tokens,
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
        return counters(
            self.stats,
            phase=self.phase,
            known_tasks=len(self._offers),
            batch_size=self.batch_size,
            tokens_per_s=round(self.stats.tokens_generated / self.stats.generation_seconds, 2)
            if self.stats.generation_seconds
            else 0.0,
            in_flight=len(self.board.in_flight()),
            stages=self.board.by_stage(),
        )
