"""The worker role: hear announcements, claim, generate with proofs, submit, keep the verdict."""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field

import trio

from node.config import NodeConfig
from node.model_service import ModelService, ModelServiceError
from protocol.envelope import open_envelope, seal
from protocol.errors import FlopnetError, MalformedMessage
from protocol.host import P2PHost
from protocol.identity import Identity, peer_id_from_public_key
from protocol.ids import CLAIM_LIMITS, CLAIM_PROTOCOL, SUBMIT_LIMITS, SUBMIT_PROTOCOL
from protocol.messages import Claim, Lease, Refusal, Submission, TaskAnnouncement, Verdict

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.2
TAKEN_BACKOFF_S = 3.0
ERROR_BACKOFF_S = 2.0


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
    last_verdict: str = ""
    recent: list[dict[str, object]] = field(default_factory=list)


class Worker:
    """Claims tasks one at a time and runs them on the local model."""

    def __init__(
        self, config: NodeConfig, identity: Identity, host: P2PHost, model: ModelService
    ) -> None:
        self.config = config
        self.net = config.network
        self.identity = identity
        self.host = host
        self.model = model
        self.stats = WorkerStats()
        self._offers: dict[str, _Offer] = {}
        self._last_seq: dict[str, int] = {}
        self._wakeup = trio.Event()

    async def on_announcement(self, sender: str, data: bytes) -> None:
        """Gossip handler: remember tasks offered by the network's publishers."""
        try:
            opened = open_envelope(data, self.net.network_id, expected=TaskAnnouncement)
        except MalformedMessage as exc:
            log.warning("dropping announcement from %s: %s", sender, exc)
            return
        if opened.signer not in self.net.publisher_keys:
            log.warning("dropping announcement signed by a non-publisher (%s)", sender)
            return
        ann = opened.expect(TaskAnnouncement)
        publisher = peer_id_from_public_key(opened.signer)
        self._last_seq[publisher] = max(self._last_seq.get(publisher, 0), ann.seq)
        offer = self._offers.get(ann.task_id)
        if offer is None:
            self._offers[ann.task_id] = _Offer(publisher, ann.announced_at)
        else:
            offer.announced_at = ann.announced_at
        self._wakeup.set()

    async def run(self) -> None:
        """Claim, generate, submit, forever."""
        while True:
            task_id = self._pick()
            if task_id is None:
                self._wakeup = trio.Event()
                with trio.move_on_after(1.0):
                    await self._wakeup.wait()
                continue
            try:
                lease_bytes = await self._claim(task_id)
                if lease_bytes is not None:
                    await self._work(lease_bytes)
            except FlopnetError as exc:
                self.stats.errors += 1
                log.warning("task %s: %s: %s", task_id, type(exc).__name__, exc)
                self._offers.get(task_id, _Offer("", 0)).not_before = time.time() + ERROR_BACKOFF_S
                await trio.sleep(ERROR_BACKOFF_S)

    def _pick(self) -> str | None:
        # A random pick spreads workers over tasks instead of all racing for the first one.
        now = time.time()
        ready = [t for t, o in self._offers.items() if o.not_before <= now]
        return random.choice(ready) if ready else None

    async def _claim(self, task_id: str) -> bytes | None:
        offer = self._offers[task_id]
        claim = Claim(version=1, task_id=task_id, nonce=os.urandom(16), claimed_at=time.time())
        reply = await self.host.request(
            offer.publisher_peer,
            CLAIM_PROTOCOL,
            seal(claim, self.identity, self.net.network_id),
            CLAIM_LIMITS,
        )
        opened = open_envelope(reply, self.net.network_id)
        if opened.signer not in self.net.publisher_keys:
            raise MalformedMessage("claim answered by a key that is not a publisher")
        if isinstance(opened.message, Refusal):
            refusal = opened.message
            if refusal.code in ("task_done", "unknown_task", "failed_before"):
                self._offers.pop(task_id, None)
            else:
                offer.not_before = time.time() + TAKEN_BACKOFF_S
            log.debug("claim on %s refused: %s", task_id, refusal.reason)
            return None
        lease = opened.expect(Lease)
        if lease.worker != self.identity.public_key or lease.task_id != task_id:
            raise MalformedMessage("the lease does not match our claim")
        self.stats.leases += 1
        return opened.raw

    async def _work(self, lease_bytes: bytes) -> None:
        lease = open_envelope(lease_bytes, self.net.network_id, expected=Lease).expect(Lease)
        started = time.perf_counter()
        try:
            gen = await self.model.call(
                "generate",
                prompt_ids=list(lease.prompt_ids),
                seed=lease.seed,
                temperature=lease.temperature,
                top_p=lease.top_p,
                max_new_tokens=lease.max_new_tokens,
            )
        except ModelServiceError as exc:
            raise ModelServiceError(f"generation failed: {exc}") from None
        elapsed = time.perf_counter() - started
        self.stats.generation_seconds += elapsed
        self.stats.generations += 1
        self.stats.tokens_generated += len(gen["token_ids"])
        submission = Submission(
            version=1,
            lease=lease_bytes,
            token_ids=tuple(gen["token_ids"]),
            text=gen["text"],
            finish_reason=gen["finish_reason"],
            proofs=tuple(gen["proofs"]),
            generation_seconds=float(elapsed),
        )
        validator_peer = peer_id_from_public_key(lease.validator)
        reply = await self.host.request(
            validator_peer,
            SUBMIT_PROTOCOL,
            seal(submission, self.identity, self.net.network_id),
            SUBMIT_LIMITS,
        )
        opened = open_envelope(reply, self.net.network_id, expected=Verdict)
        if opened.signer != lease.validator:
            raise MalformedMessage("the verdict is not signed by the lease's validator")
        verdict = opened.expect(Verdict)
        if verdict.accepted:
            self.stats.accepted += 1
            self.stats.flops_credited += verdict.flops
            self._offers.pop(lease.task_id, None)
        else:
            self.stats.rejected += 1
        self.stats.last_verdict = "; ".join(verdict.reasons)[:300]
        self.stats.recent = [
            {
                "task_id": lease.task_id,
                "accepted": verdict.accepted,
                "flops": verdict.flops,
                "tokens": len(gen["token_ids"]),
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

    def snapshot(self) -> dict[str, object]:
        """Counters for the API."""
        s = self.stats
        return {
            "leases": s.leases,
            "accepted": s.accepted,
            "rejected": s.rejected,
            "errors": s.errors,
            "tokens_generated": s.tokens_generated,
            "flops_credited": s.flops_credited,
            "generation_seconds": round(s.generation_seconds, 3),
            "generations": s.generations,
            "known_tasks": len(self._offers),
            "last_verdict": s.last_verdict,
            "recent": list(s.recent),
        }
