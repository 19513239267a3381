"""The publisher's lease book: which sample of which task is open, leased, or done, and who may
hold how many leases.

A pure state machine (no clock, no I/O): callers pass ``now``. The rules it keeps:

* **Trust is earned.** A worker without accepted work (a newcomer: any fresh identity) holds at
  most ``newcomer_active`` leases; every accepted result adds one, up to ``max_active``. All
  newcomers together hold at most ``newcomer_share`` of the samples not yet done (never fewer
  than ``newcomer_floor``), so a swarm of throwaway identities cannot take the work away from
  workers with a record.
* **Hoarding costs the hoarder.** A lease that lapses (its deadline passes without a result)
  puts its worker in a cool-down of ``lapse_cooldown_s`` and takes back one lease of standing.
* **One credit per sample.** An expired lease re-opens only after its deadline plus
  ``grace_seconds`` (the validator accepts a submission that long after the deadline), so a late
  result and a re-issued lease never overlap; an accepted result for any lease of a sample closes
  it, and a rejection of a superseded lease changes nothing.
* A rejected submission re-opens its sample, and its worker may not lease that task again.
* **A lease can be handed back.** Its own worker may release a lease it will not finish (it
  paused, say): the sample re-opens at once, with no lapse charged; the worker waits
  ``release_cooldown_s`` before its next lease, so claim-and-release cannot churn the publisher's
  announcements.

Every decision costs time independent of the book's history (an expiry heap, the lease holders
kept apart), and a task whose samples are all done can be retired, so a publisher (or the
simulation, :mod:`flopnet.sim`) running for months keeps only its open work in memory.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


class SampleState(enum.Enum):
    OPEN = "open"
    LEASED = "leased"
    DONE = "done"


@dataclass
class _Sample:
    state: SampleState = SampleState.OPEN
    lease_id: bytes | None = None
    worker: bytes | None = None
    expires_at: float = 0.0
    attempts: int = 0


@dataclass
class Standing:
    """What the book knows of one worker's record."""

    accepted: int = 0
    rejected: int = 0
    lapsed: int = 0
    released: int = 0
    active: int = 0
    cooldown_until: float = 0.0

    @property
    def newcomer(self) -> bool:
        return self.accepted == 0


@dataclass(frozen=True)
class Grant:
    """The book's decision to lease ``(task_id, sample_index)`` to a worker."""

    task_id: str
    sample_index: int
    expires_at: float


@dataclass(frozen=True)
class Denied:
    """Why a claim was refused: a stable code and a human reason."""

    code: str
    reason: str


def validator_for(task_id: str, sample_index: int, validators: Sequence[bytes]) -> bytes:
    """The validator every lease of one sample goes to: one validator per sample keeps a sample
    from being credited twice by two validators that do not yet know of each other's credit."""
    if not validators:
        raise ValueError("no validators")
    digest = hashlib.sha256(f"{task_id}\0{sample_index}".encode()).digest()
    ordered = sorted(validators)
    return ordered[int.from_bytes(digest[:8], "big") % len(ordered)]


@dataclass
class LeaseBook:
    """Lease state for a publisher's tasks, each sampled ``samples`` times."""

    lease_seconds: float
    max_active_per_worker: int = 1
    grace_seconds: float = 0.0
    newcomer_active: int = 1
    newcomer_share: float = 0.25
    newcomer_floor: int = 8
    lapse_cooldown_s: float = 300.0
    release_cooldown_s: float = 5.0
    _samples: dict[tuple[str, int], _Sample] = field(default_factory=dict)
    _by_task: dict[str, list[int]] = field(default_factory=dict)
    _by_lease: dict[bytes, tuple[str, int]] = field(default_factory=dict)
    _by_worker_lease: dict[bytes, bytes] = field(default_factory=dict)  # lease -> its worker
    _task_leases: dict[str, list[bytes]] = field(default_factory=dict)  # to forget on retire
    _standing: dict[bytes, Standing] = field(default_factory=dict)
    # Workers holding at least one lease: the newcomers' share is summed over these only.
    _holders: dict[bytes, Standing] = field(default_factory=dict)
    # (expires_at, order, key, lease_id) of every recorded lease; entries whose sample moved on
    # are skipped when they come up, so expiring costs the leases due, not the whole book.
    _expiry: list[tuple[float, int, tuple[str, int], bytes]] = field(default_factory=list)
    _order: int = 0
    # task -> workers whose submission for it was rejected: they may not lease the task again,
    # so a cheater cannot keep a task busy forever.
    _failed: dict[str, set[bytes]] = field(default_factory=dict)
    _done: int = 0

    def add_task(self, task_id: str, samples: int) -> None:
        """Register a task with ``samples`` open samples."""
        for index in range(samples):
            if (task_id, index) not in self._samples:
                self._samples[(task_id, index)] = _Sample()
                self._by_task.setdefault(task_id, []).append(index)

    def standing(self, worker: bytes) -> Standing:
        """A worker's record (a fresh one for a worker never seen)."""
        s = self._standing.get(worker)
        if s is None:  # not setdefault: that builds a Standing on every call
            s = self._standing[worker] = Standing()
        return s

    def quota(self, worker: bytes) -> int:
        """How many leases the worker may hold at once: earned by accepted results, lost by
        lapses."""
        s = self.standing(worker)
        if s.newcomer:
            return min(self.newcomer_active, self.max_active_per_worker)
        earned = self.newcomer_active + s.accepted - s.lapsed
        return max(1, min(self.max_active_per_worker, earned))

    def newcomer_capacity(self) -> int:
        """How many leases all newcomers together may hold now."""
        not_done = len(self._samples) - self._done
        return max(self.newcomer_floor, math.ceil(self.newcomer_share * not_done))

    def _newcomer_active(self) -> int:
        return sum(s.active for s in self._holders.values() if s.newcomer)

    def _hold(self, worker: bytes, delta: int) -> None:
        s = self.standing(worker)
        s.active += delta
        if s.active > 0:
            self._holders[worker] = s
        else:
            self._holders.pop(worker, None)

    def expire(self, now: float) -> list[tuple[str, int]]:
        """Re-open every lease whose deadline (plus the grace) has passed; the workers whose
        leases lapsed cool down. Returns the re-opened samples, in deadline order."""
        reopened = []
        heap = self._expiry
        while heap and heap[0][0] + self.grace_seconds <= now:
            expires_at, _, key, lease_id = heapq.heappop(heap)
            sample = self._samples.get(key)
            if (
                sample is None
                or sample.state is not SampleState.LEASED
                or sample.lease_id != lease_id
                or sample.expires_at != expires_at
            ):
                continue  # settled, re-issued or retired since
            if sample.worker is not None:
                s = self.standing(sample.worker)
                s.lapsed += 1
                s.cooldown_until = max(s.cooldown_until, now + self.lapse_cooldown_s)
            self._release(sample)
            reopened.append(key)
        return reopened

    def claim(self, task_id: str, worker: bytes, now: float) -> Grant | Denied:
        """Decide a worker's claim on a task: the first open sample, or a refusal that says why
        (and what to do about it)."""
        self.expire(now)
        indices = self._by_task.get(task_id)
        if not indices:
            return Denied("unknown_task", f"no task {task_id!r}")
        if worker in self._failed.get(task_id, ()):
            return Denied("failed_before", "this worker's earlier submission for the task failed")
        s = self.standing(worker)
        if s.cooldown_until > now:
            return Denied(
                "cooling_down",
                "a lease of yours lapsed, was rejected or was handed back: no new lease for "
                f"{s.cooldown_until - now:.0f} s",
            )
        quota = self.quota(worker)
        if s.active >= quota:
            more = (
                "; each accepted result earns one more"
                if quota < self.max_active_per_worker
                else ""
            )
            return Denied("too_many_leases", f"you hold {s.active} of your {quota} lease(s){more}")
        open_index = next(
            (i for i in indices if self._samples[(task_id, i)].state is SampleState.OPEN), None
        )
        if open_index is None:
            if all(self._samples[(task_id, i)].state is SampleState.DONE for i in indices):
                return Denied("task_done", f"every sample of {task_id!r} is done")
            return Denied("task_taken", f"every open sample of {task_id!r} is leased")
        if s.newcomer and self._newcomer_active() >= self.newcomer_capacity():
            return Denied(
                "newcomers_full",
                "workers without accepted work hold their share of the open samples; try later",
            )
        return Grant(task_id, open_index, now + self.lease_seconds)

    def record_lease(self, grant: Grant, lease_id: bytes, worker: bytes) -> None:
        """Mark a granted sample as leased under ``lease_id``."""
        sample = self._samples[(grant.task_id, grant.sample_index)]
        sample.state, sample.lease_id, sample.worker = SampleState.LEASED, lease_id, worker
        sample.expires_at = grant.expires_at
        sample.attempts += 1
        self._by_lease[lease_id] = (grant.task_id, grant.sample_index)
        self._by_worker_lease[lease_id] = worker
        self._task_leases.setdefault(grant.task_id, []).append(lease_id)
        self._order += 1
        heapq.heappush(
            self._expiry,
            (grant.expires_at, self._order, (grant.task_id, grant.sample_index), lease_id),
        )
        self._hold(worker, 1)

    def settle(
        self, lease_id: bytes, accepted: bool, now: float | None = None
    ) -> tuple[str, int] | None:
        """Apply a validator's verdict on a lease: close the sample or re-open it.

        An accepted result closes its sample even when its lease was superseded (it is the one
        credit of the sample); a rejection of a superseded lease changes nothing. A rejected
        worker cools down like one whose lease lapsed (given ``now``): forged work costs its
        sender its next leases. Returns the affected sample, or None when nothing changed.
        """
        key = self._by_lease.get(lease_id)
        if key is None:
            return None
        worker = self._by_worker_lease.get(lease_id)
        sample = self._samples.get(key)
        if sample is None or sample.state is SampleState.DONE:
            return None
        current = sample.lease_id == lease_id
        if worker is not None:
            s = self.standing(worker)
            if accepted:
                s.accepted += 1
            elif current:
                s.rejected += 1
                if now is not None:
                    s.cooldown_until = max(s.cooldown_until, now + self.lapse_cooldown_s)
        if accepted:
            if sample.state is SampleState.LEASED and sample.worker is not None:
                self._hold(sample.worker, -1)
            sample.state, sample.lease_id, sample.worker = SampleState.DONE, lease_id, worker
            self._done += 1
            return key
        if not current:
            return None  # the lease expired and was re-issued; the newer lease decides
        if sample.worker is not None:
            self._failed.setdefault(key[0], set()).add(sample.worker)
        self._release(sample)
        return key

    def release(
        self, lease_id: bytes, worker: bytes, now: float
    ) -> tuple[str, int] | Denied | None:
        """A worker hands a lease back: the sample re-opens at once (returned), nothing changes
        when the lease was settled or superseded already (None), and a lease of another worker
        is refused (a Denied that no honest worker causes)."""
        key = self._by_lease.get(lease_id)
        if key is None:
            return Denied("unknown_lease", "this publisher granted no lease with that id")
        if self._by_worker_lease.get(lease_id) != worker:
            return Denied("not_your_lease", "only the lease's own worker may release it")
        sample = self._samples[key]
        if sample.state is not SampleState.LEASED or sample.lease_id != lease_id:
            return None  # settled, lapsed or re-issued meanwhile: nothing to hand back
        s = self.standing(worker)
        s.released += 1
        s.cooldown_until = max(s.cooldown_until, now + self.release_cooldown_s)
        self._release(sample)
        return key

    def lease_of(self, lease_id: bytes) -> tuple[str, int] | None:
        """The (task, sample) a lease id was granted for, if this book granted it."""
        return self._by_lease.get(lease_id)

    def _release(self, sample: _Sample) -> None:
        if sample.state is SampleState.LEASED and sample.worker is not None:
            self._hold(sample.worker, -1)
        sample.state, sample.lease_id, sample.worker, sample.expires_at = (
            SampleState.OPEN,
            None,
            None,
            0.0,
        )

    def retire(self, task_id: str) -> bool:
        """Forget a task whose samples are all done (its leases, refusals and samples), so the
        book holds only open work; a later claim on it is ``unknown_task``. Returns whether the
        task was retired (False while a sample is open or leased, or for an unknown task)."""
        indices = self._by_task.get(task_id)
        if not indices or any(
            self._samples[(task_id, i)].state is not SampleState.DONE for i in indices
        ):
            return False
        for i in indices:
            del self._samples[(task_id, i)]
        self._done -= len(indices)
        del self._by_task[task_id]
        for lease_id in self._task_leases.pop(task_id, ()):
            self._by_lease.pop(lease_id, None)
            self._by_worker_lease.pop(lease_id, None)
        self._failed.pop(task_id, None)
        return True

    def open_tasks(self) -> list[str]:
        """Task ids with at least one open sample, in insertion order."""
        seen: dict[str, None] = {}
        for (task_id, _), sample in self._samples.items():
            if sample.state is SampleState.OPEN:
                seen[task_id] = None
        return list(seen)

    def counts(self) -> dict[str, int]:
        """How many samples are open, leased and done."""
        out = {state.value: 0 for state in SampleState}
        for sample in self._samples.values():
            out[sample.state.value] += 1
        return out

    def counts_by(self, group: Callable[[str], str]) -> dict[str, dict[str, int]]:
        """:meth:`counts` per group of tasks (``group(task_id)``: a task set, say)."""
        out: dict[str, dict[str, int]] = {}
        for (task_id, _), sample in self._samples.items():
            counts = out.setdefault(group(task_id), {state.value: 0 for state in SampleState})
            counts[sample.state.value] += 1
        return out

    def all_done(self) -> bool:
        """True when every sample of every task is done."""
        return bool(self._samples) and self._done == len(self._samples)
