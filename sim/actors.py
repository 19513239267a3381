"""The simulated publishers, validators and workers: state around the real decision objects
(a publisher's ``LeaseBook``, a validator's ``AuditBook`` and queue order, a worker's
``ClaimPacer``). The processes that move them through time are in :mod:`flopnet.sim.engine`."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flopnet.ledger.policy import AuditBook, AuditPolicy
from flopnet.node.publisher.leases import LeaseBook
from flopnet.node.worker.pacing import ClaimPacer
from flopnet.protocol.catalog import lease_grace
from flopnet.sim.auditing import AuditStream
from flopnet.sim.config import SimConfig
from flopnet.sim.credits import Account
from flopnet.sim.inputs import CheatKind, GpuClass, TaskSet
from flopnet.sim.proofs import Outcomes


def key_of(kind: str, index: int, seed: int) -> bytes:
    """A stable 32-byte identity for a simulated node."""
    return hashlib.sha256(f"flopnet-sim\0{seed}\0{kind}\0{index}".encode()).digest()


class Publisher:
    """A publisher's lease book over a backlog of tasks it tops up as tasks finish."""

    def __init__(self, index: int, cfg: SimConfig, backlog: int, rng: random.Random) -> None:
        self.index = index
        self.name = f"publisher-{index}"
        self.rng = rng
        self.samples = cfg.samples_per_task
        self.backlog = min(backlog, cfg.task_limit) if cfg.task_limit else backlog
        self.limit = cfg.task_limit
        self.book = LeaseBook(
            lease_seconds=cfg.lease_seconds,
            max_active_per_worker=cfg.max_leases_per_worker,
            grace_seconds=lease_grace(cfg.lease_seconds),
            newcomer_active=min(cfg.newcomer_leases, cfg.max_leases_per_worker),
            lapse_cooldown_s=cfg.lease_seconds,  # as node/publisher/publisher.py sets it
        )
        self.tasks: list[str] = []
        self._position: dict[str, int] = {}
        self.task_sets: dict[str, TaskSet] = {}
        self._next = 0
        self.announcements = 0  # task announcements gossiped (opens and re-opens)

    def top_up(self, draw: Callable[[], TaskSet]) -> None:
        while len(self.tasks) < self.backlog and not (self.limit and self._next >= self.limit):
            task_id = f"p{self.index}-t{self._next}"
            self._next += 1
            self.book.add_task(task_id, self.samples)
            self.task_sets[task_id] = draw()
            self._position[task_id] = len(self.tasks)
            self.tasks.append(task_id)
            self.announcements += 1

    def exhausted(self) -> bool:
        """Every task of a limited set is done (never, for a backlog topped up for ever)."""
        return bool(self.limit) and self._next >= self.limit and not self.tasks

    def pick(self) -> str:
        """A task announced and not finished, at random (as a worker picks among its offers)."""
        return self.tasks[self.rng.randrange(len(self.tasks))]

    def finish(self, task_id: str) -> None:
        """Retire a task whose samples are all done (swap-remove keeps picking O(1))."""
        if not self.book.retire(task_id):
            return
        i = self._position.pop(task_id)
        last = self.tasks.pop()
        if last != task_id:
            self.tasks[i] = last
            self._position[last] = i
        del self.task_sets[task_id]


@dataclass(slots=True)
class Submission:
    """One simulated sample on its way through a validator."""

    sid: int
    worker: Worker
    publisher: Publisher
    task_id: str
    lease_id: bytes
    prompt: int
    generated: int
    expires_at: float
    submitted_at: float
    outcomes: Outcomes
    unaudited_pass: bool
    done: Any  # the SimPy event of its verdict
    weight: int  # real submissions it stands for: the scale, or 1 for a Sybil's one forgery


@dataclass
class Validator:
    """A validator: its queue, its audit book, its prefill capacity and its chain's size."""

    index: int
    key: bytes
    audits: AuditBook
    stream: AuditStream
    flops_per_s: float
    queue: list[Submission] = field(default_factory=list)
    turn: int = 0
    busy_s: float = 0.0
    waits: list[float] = field(default_factory=list)
    entries: Counter[str] = field(default_factory=Counter)
    audited: int = 0  # real audits
    real_credits: int = 0  # real submissions judged
    max_queue: int = 0
    wake: object = None  # the SimPy event the idle validator waits on

    @classmethod
    def make(cls, index: int, cfg: SimConfig, flops_per_s: float) -> Validator:
        key = key_of("validator", index, cfg.seed)
        policy = AuditPolicy(floor=cfg.audit_floor, warmup=cfg.audit_warmup)
        book = AuditBook(policy)
        rng = random.Random(hashlib.sha256(b"audits\0" + key).digest())
        stream = AuditStream(book, rng, np.random.default_rng([cfg.seed, index]))
        return cls(index, key, book, stream, flops_per_s)


@dataclass
class Worker:
    """A contributor: its machine, its honesty, its pacer and what it earned."""

    index: int
    key: bytes
    gpu: GpuClass
    cheat: CheatKind | None
    sybil: bool
    pacer: ClaimPacer
    account: Account
    online: bool = False
    online_since: float = 0.0
    samples: int = 0
    cheated: int = 0
    gpu_seconds: float = 0.0  # real machine time spent on submitted work
    leases: int = 0
    lapsed: int = 0
    rejected: int = 0
    audits: int = 0
    failed_audits: int = 0
    online_s: float = 0.0
    newcomer_waits: int = 0

    @property
    def kind(self) -> str:
        if self.sybil:
            return "sybil"
        return self.cheat.name if self.cheat is not None else "honest"
