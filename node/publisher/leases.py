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
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Sequence
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
    _standing: dict[bytes, Standing] = field(default_factory=dict)
    # (task, worker) pairs whose submission was rejected: that worker may not lease the task again,
    # so a cheater cannot keep a task busy forever.
    _failed: set[tuple[str, bytes]] = field(default_factory=set)
    _done: int = 0

    def add_task(self, task_id: str, samples: int) -> None:
        """Register a task with ``samples`` open samples."""
        for index in range(samples):
            if (task_id, index) not in self._samples:
                self._samples[(task_id, index)] = _Sample()
                self._by_task.setdefault(task_id, []).append(index)

    def standing(self, worker: bytes) -> Standing:
        """A worker's record (a fresh one for a worker never seen)."""
        return self._standing.setdefault(worker, Standing())

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
        return sum(s.active for s in self._standing.values() if s.newcomer)

    def expire(self, now: float) -> list[tuple[str, int]]:
        """Re-open every lease whose deadline (plus the grace) has passed; the workers whose
        leases lapsed cool down. Returns the re-opened samples."""
        reopened = []
        for key, sample in self._samples.items():
            if sample.state is SampleState.LEASED and sample.expires_at + self.grace_seconds <= now:
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
        if (task_id, worker) in self._failed:
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
        self.standing(worker).active += 1

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
        sample = self._samples[key]
        if sample.state is SampleState.DONE:
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
                self.standing(sample.worker).active -= 1
            sample.state, sample.lease_id, sample.worker = SampleState.DONE, lease_id, worker
            self._done += 1
            return key
        if not current:
            return None  # the lease expired and was re-issued; the newer lease decides
        if sample.worker is not None:
            self._failed.add((key[0], sample.worker))
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
            self.standing(sample.worker).active -= 1
        sample.state, sample.lease_id, sample.worker, sample.expires_at = (
            SampleState.OPEN,
            None,
            None,
            0.0,
        )

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

    def all_done(self) -> bool:
        """True when every sample of every task is done."""
        return bool(self._samples) and self._done == len(self._samples)
