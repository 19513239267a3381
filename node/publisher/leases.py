"""The publisher's lease book: which sample of which task is open, leased, or done.

A pure state machine (no clock, no I/O): callers pass ``now``. Expired leases return to open so
another worker can take them; a rejected submission re-opens its sample; an accepted one closes it.
"""

from __future__ import annotations

import enum
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


@dataclass
class LeaseBook:
    """Lease state for a publisher's tasks, each sampled ``samples`` times."""

    lease_seconds: float
    max_active_per_worker: int = 1
    _samples: dict[tuple[str, int], _Sample] = field(default_factory=dict)
    _by_lease: dict[bytes, tuple[str, int]] = field(default_factory=dict)
    # (task, worker) pairs whose submission was rejected: that worker may not lease the task again,
    # so a cheater cannot keep a task busy forever.
    _failed: set[tuple[str, bytes]] = field(default_factory=set)

    def add_task(self, task_id: str, samples: int) -> None:
        """Register a task with ``samples`` open samples."""
        for index in range(samples):
            self._samples.setdefault((task_id, index), _Sample())

    def expire(self, now: float) -> list[tuple[str, int]]:
        """Re-open every lease whose deadline has passed; return the re-opened samples."""
        reopened = []
        for key, sample in self._samples.items():
            if sample.state is SampleState.LEASED and sample.expires_at <= now:
                self._release(sample)
                reopened.append(key)
        return reopened

    def claim(self, task_id: str, worker: bytes, now: float) -> Grant | Denied:
        """Decide a worker's claim on a task: the first open sample, or a refusal."""
        self.expire(now)
        indices = sorted(i for (t, i) in self._samples if t == task_id)
        if not indices:
            return Denied("unknown_task", f"no task {task_id!r}")
        active = sum(
            1
            for s in self._samples.values()
            if s.state is SampleState.LEASED and s.worker == worker
        )
        if (task_id, worker) in self._failed:
            return Denied("failed_before", "this worker's earlier submission for the task failed")
        if active >= self.max_active_per_worker:
            return Denied("too_many_leases", f"worker already holds {active} active lease(s)")
        for index in indices:
            if self._samples[(task_id, index)].state is SampleState.OPEN:
                return Grant(task_id, index, now + self.lease_seconds)
        if all(self._samples[(task_id, i)].state is SampleState.DONE for i in indices):
            return Denied("task_done", f"every sample of {task_id!r} is done")
        return Denied("task_taken", f"every open sample of {task_id!r} is leased")

    def record_lease(self, grant: Grant, lease_id: bytes, worker: bytes) -> None:
        """Mark a granted sample as leased under ``lease_id``."""
        sample = self._samples[(grant.task_id, grant.sample_index)]
        sample.state, sample.lease_id, sample.worker = SampleState.LEASED, lease_id, worker
        sample.expires_at = grant.expires_at
        sample.attempts += 1
        self._by_lease[lease_id] = (grant.task_id, grant.sample_index)

    def settle(self, lease_id: bytes, accepted: bool) -> tuple[str, int] | None:
        """Apply a validator's verdict on a lease: close the sample or re-open it.

        Returns the affected sample, or None for an unknown or already re-issued lease.
        """
        key = self._by_lease.get(lease_id)
        if key is None:
            return None
        sample = self._samples[key]
        if sample.lease_id != lease_id or sample.state is SampleState.DONE:
            return None  # the lease expired and was re-issued; the newer lease decides
        if accepted:
            sample.state = SampleState.DONE
        else:
            if sample.worker is not None:
                self._failed.add((key[0], sample.worker))
            self._release(sample)
        return key

    @staticmethod
    def _release(sample: _Sample) -> None:
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
        return bool(self._samples) and all(
            s.state is SampleState.DONE for s in self._samples.values()
        )
