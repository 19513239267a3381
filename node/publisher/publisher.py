"""The publisher role: announce tasks, grant signed leases on claims, re-lease on failure.

Each announcement carries the next sequence number and stays in the announcement log; a task is
announced when it opens and again whenever it re-opens (an expired or rejected lease). Heartbeats
carry the log's head, and nodes that missed some fetch the range over a stream.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field

import trio

from flopnet.node.config import NodeConfig
from flopnet.node.model.prompt import encode_prompt
from flopnet.node.model.tokenizer import Tokenizer
from flopnet.node.publisher.announcements import AnnouncementLog
from flopnet.node.publisher.leases import Denied, Grant, LeaseBook, validator_for
from flopnet.node.publisher.store import PublisherStore
from flopnet.node.tasks import Task, task_set_of, task_spec, user_message
from flopnet.protocol.catalog import lease_grace, tasks_topic
from flopnet.protocol.envelope import Opened, seal
from flopnet.protocol.guard import Violation
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import (
    RELEASE_REASONS,
    AnnouncementRange,
    AnnouncementRangeRequest,
    Claim,
    Lease,
    LeaseRelease,
    Refusal,
    ReleaseAck,
    TaskAnnouncement,
    TaskSpec,
    TaskSpecRequest,
)
from flopnet.protocol.rpc import refusal

log = logging.getLogger(__name__)
EXPIRY_CHECK_S = 1.0
CLAIM_CLOCK_SKEW_S = 120.0


@dataclass
class PublisherStats:
    announced: int = 0
    leases_issued: int = 0
    claims_refused: int = 0
    samples_done: int = 0
    samples_reopened: int = 0
    leases_released: int = 0
    refusals: dict[str, int] = field(default_factory=dict)


class Publisher:
    """Owns the task set and its lease book."""

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        host: P2PHost,
        tokenizer: Tokenizer,
        tasks: list[Task],
        store: PublisherStore | None = None,
    ) -> None:
        self.config = config
        self.net = config.network
        self.identity = identity
        self.host = host
        self.tokenizer = tokenizer
        self.tasks = {t.task_id: t for t in tasks}
        self.book = LeaseBook(
            lease_seconds=self.net.lease_seconds,
            max_active_per_worker=config.max_leases_per_worker,
            grace_seconds=lease_grace(self.net.lease_seconds),
            newcomer_active=min(config.newcomer_leases, config.max_leases_per_worker),
            # A hoarder waits as long as the lease it let lapse before it may lease again.
            lapse_cooldown_s=self.net.lease_seconds,
        )
        for task in tasks:
            self.book.add_task(task.task_id, self.net.samples_per_task)
        self.stats = PublisherStats()
        self.log = AnnouncementLog()
        self._to_announce: list[str] = []
        self._announce_wanted = trio.Event()
        self.store = store
        if store is not None:
            self._restore(store)
        self._validators = sorted(self.net.validator_keys)
        self._prompt_ids: dict[str, tuple[int, ...]] = {}

    def _restore(self, store: PublisherStore) -> None:
        """Rebuild the lease book and announcement log from durable state after a restart."""
        for lease in store.leases():
            if lease.task_id not in self.tasks:
                continue  # the task set changed between runs
            grant = Grant(lease.task_id, lease.sample_index, lease.expires_at)
            self.book.record_lease(grant, lease.lease_id, lease.worker)
            if lease.outcome == "released":
                self.book.release(lease.lease_id, lease.worker, 0.0)  # no cool-down to restore
            elif lease.outcome is not None:
                self.book.settle(lease.lease_id, lease.outcome == "accepted")
        self.log.restore(store.announcements(self.log.capacity))

    def prompt_ids(self, task: Task) -> tuple[int, ...]:
        """The token ids of a task's prompt: assigned here, so worker and validator agree."""
        ids = self._prompt_ids.get(task.task_id)
        if ids is None:
            # The task decides the user message (problem + instruction); the model's own chat
            # template (or R1's format) wraps it.
            message = user_message(task)
            ids = tuple(encode_prompt(self.tokenizer, self.net.model, message, directive=""))
            self._prompt_ids[task.task_id] = ids
        return ids

    async def run(self) -> None:
        """Wait for enough workers, announce every task, then re-announce re-opened ones."""
        while len(self.host.connected_peers()) < self.config.wait_for_workers:
            await trio.sleep(0.2)
        self._queue_announcements(self.book.open_tasks())
        while True:
            self._expire(time.time())
            while self._to_announce:
                task_id = self._to_announce.pop(0)
                await self.announce(self.tasks[task_id])
            self._announce_wanted = trio.Event()
            with trio.move_on_after(EXPIRY_CHECK_S):
                await self._announce_wanted.wait()

    def _expire(self, now: float) -> None:
        """Re-open expired leases: count them and announce their tasks again."""
        for task_id, index in self.book.expire(now):
            log.info("lease on %s#%d expired; re-opened", task_id, index)
            self.stats.samples_reopened += 1
            self._queue_announcements([task_id])

    def _queue_announcements(self, task_ids: list[str]) -> None:
        self._to_announce.extend(t for t in task_ids if t not in self._to_announce)
        self._announce_wanted.set()

    async def announce(self, task: Task) -> bytes:
        """Seal the next announcement for ``task``, log it, and gossip it."""
        message = TaskAnnouncement(
            version=1,
            seq=self.log.next_seq(),
            task_id=task.task_id,
            task_type=task.task_type,
            samples=self.net.samples_per_task,
            max_new_tokens=self.net.max_new_tokens,
            announced_at=time.time(),
        )
        sealed = seal(message, self.identity, self.net.network_id)
        if self.store is not None:
            self.store.record_announcement(message.seq, sealed)
        self.log.append(message.seq, sealed)
        try:
            await self.host.publish(tasks_topic(self.net.network_id), sealed)
        except Exception as exc:  # gossip is best effort: the log and heartbeats cover a loss
            log.warning("publishing announcement %d failed: %s", message.seq, exc)
        self.stats.announced += 1
        return sealed

    async def handle_range(self, peer_id: str, opened: Opened) -> AnnouncementRange:
        """Serve logged announcements from a requested seq (gap and late-join resync)."""
        ask = opened.expect(AnnouncementRangeRequest)
        items = tuple(self.log.range(ask.from_seq, ask.limit))
        return AnnouncementRange(version=1, items=items, head_seq=self.log.head)

    async def handle_task_spec(self, peer_id: str, opened: Opened) -> TaskSpec | Refusal:
        """Serve one task's full spec (with its gold answer) to a validator of the manifest."""
        if opened.signer not in self.net.validator_keys:
            return refusal("forbidden", "task specs hold gold answers: validators only")
        task = self.tasks.get(opened.expect(TaskSpecRequest).task_id)
        if task is None:
            return refusal("unknown_task", "this publisher has no task with that id")
        return task_spec(task)

    async def handle_claim(self, peer_id: str, opened: Opened) -> Lease | Refusal:
        """Answer a claim with a Lease or a Refusal (``protocol.catalog.CLAIM``)."""
        claim = opened.expect(Claim)
        now = time.time()
        if abs(claim.claimed_at - now) > CLAIM_CLOCK_SKEW_S:
            return self._refuse("stale_claim", "claimed_at is too far from the publisher's clock")
        if self.host.guard.is_replay(opened.message_id):
            await self.host.penalize(peer_id, Violation.REPLAY)
            return self._refuse("replayed_claim", "this exact claim was already answered")
        self._expire(now)  # so a re-open during a claim is counted and announced too
        decision = self.book.claim(claim.task_id, opened.signer, now)
        if isinstance(decision, Denied):
            return self._refuse(decision.code, decision.reason)
        if not self._validators:
            return self._refuse("no_validator", "the network lists no validator")
        task = self.tasks[claim.task_id]
        # Every lease of a sample goes to the same validator, which credits a sample once.
        validator = validator_for(task.task_id, decision.sample_index, self._validators)
        lease = Lease(
            version=1,
            lease_id=os.urandom(16),
            task_id=task.task_id,
            task_type=task.task_type,
            sample_index=decision.sample_index,
            worker=opened.signer,
            validator=validator,
            seed=random.getrandbits(63),
            prompt_ids=self.prompt_ids(task),
            max_new_tokens=self.net.max_new_tokens,
            temperature=float(self.net.temperature),
            top_p=float(self.net.top_p),
            issued_at=now,
            expires_at=decision.expires_at,
        )
        if self.store is not None:  # durable before the lease leaves this process
            self.store.record_lease(
                lease.lease_id, task.task_id, decision.sample_index, opened.signer, lease.expires_at
            )
        self.book.record_lease(decision, lease.lease_id, opened.signer)
        self.stats.leases_issued += 1
        log.info(
            "lease %s on %s#%d to %s",
            lease.lease_id.hex()[:8],
            task.task_id,
            decision.sample_index,
            peer_id,
        )
        return lease

    async def handle_release(self, peer_id: str, opened: Opened) -> ReleaseAck | Refusal:
        """A worker hands a lease back (``protocol.catalog.RELEASE``): the sample re-opens and
        is announced again at once. Only the lease's own worker may release it (the host checked
        that the stream's peer signed the release); another's lease is refused and charged."""
        release = opened.expect(LeaseRelease)
        if release.reason not in RELEASE_REASONS:
            return refusal("malformed", f"unknown release reason {release.reason!r}")
        key = self.book.lease_of(release.lease_id)
        if key is not None and key != (release.task_id, release.sample_index):
            await self.host.penalize(peer_id, Violation.MALFORMED)
            return refusal("wrong_lease", "the lease was granted for another task or sample")
        outcome = self.book.release(release.lease_id, opened.signer, time.time())
        if isinstance(outcome, Denied):
            if outcome.code == "not_your_lease":
                await self.host.penalize(peer_id, Violation.MALFORMED)
            return refusal(outcome.code, outcome.reason)
        if outcome is not None:
            if self.store is not None:
                self.store.record_release(release.lease_id)
            self.stats.leases_released += 1
            log.info(
                "lease %s on %s#%d handed back by %s (%s); re-opened",
                release.lease_id.hex()[:8],
                *outcome,
                peer_id,
                release.reason,
            )
            self._queue_announcements([outcome[0]])
        return ReleaseAck(version=1, lease_id=release.lease_id, reopened=outcome is not None)

    def _refuse(self, code: str, reason: str) -> Refusal:
        self.stats.claims_refused += 1
        self.stats.refusals[code] = self.stats.refusals.get(code, 0) + 1
        return refusal(code, reason)

    def settle(self, lease_id: bytes, accepted: bool) -> None:
        """Apply a validator's verdict: close the sample, or re-open it for another worker."""
        key = self.book.settle(lease_id, accepted, time.time())
        if key is None:
            return
        if self.store is not None:
            self.store.record_outcome(lease_id, accepted)
        if accepted:
            self.stats.samples_done += 1
        else:
            self.stats.samples_reopened += 1
            log.info("sample %s#%d rejected; re-opened", *key)
            self._queue_announcements([key[0]])

    def snapshot(self) -> dict[str, object]:
        """Counters for the API (samples open, leased and done overall and per task set)."""
        return {
            "tasks": len(self.tasks),
            "samples": self.book.counts(),
            "task_sets": self.book.counts_by(task_set_of),
            "all_done": self.book.all_done(),
            "announced": self.stats.announced,
            "announce_head": self.log.head,
            "leases_issued": self.stats.leases_issued,
            "claims_refused": self.stats.claims_refused,
            "refusals": dict(self.stats.refusals),
            "samples_reopened": self.stats.samples_reopened,
            "leases_released": self.stats.leases_released,
        }
