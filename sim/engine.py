"""The simulation's processes: workers that join, claim, generate, submit, freeze and leave;
validators that take their queues in the schedule's order and audit as their audit books draw;
publishers that lease and settle. Every decision is the project's own code; this module only
moves time (SimPy) and keeps the counts.

Resolution: one simulated sample stands for ``scale`` real samples of the same worker (see
:meth:`SimConfig.scale`). A worker generates each simulated sample at the real per-stream speed
(so leases, deadlines and lapses keep their real lengths) and starts the next one after the time
its machine would take for ``scale`` samples; a validator's audit of a simulated sample costs
``scale`` real prefills. Rates per sample (audits, detection, false positives, refusals) are the
real ones; totals are multiplied back by the scale in the report.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Generator
from typing import Any

from flopnet.ledger.kinds import KIND_AUDIT, KIND_CREDIT, KIND_INVALIDATION
from flopnet.node.model.hardware import Gpu, Hardware, plan_for
from flopnet.node.publisher.leases import Denied, Grant, validator_for
from flopnet.node.validator.schedule import next_index
from flopnet.node.worker.pacing import FINAL_REFUSALS, ClaimPacer
from flopnet.protocol.catalog import lease_grace
from flopnet.protocol.errors import ConfigError
from flopnet.sim.actors import Publisher, Submission, Validator, Worker, key_of
from flopnet.sim.config import DAY, HOUR, SimConfig
from flopnet.sim.credits import Account
from flopnet.sim.inputs import (
    CHEAT_KINDS,
    GARBAGE,
    GIB,
    GPU_CLASSES,
    R1_CONFIG,
    CheatKind,
    GpuClass,
)
from flopnet.sim.proofs import HONEST, ProofTable
from flopnet.sim.workload import Workload

SCHEDULE_WINDOW = 256  # as node/validator/validator.py: the oldest queued the next is chosen from
TAKEN_BACKOFF_S = 3.0  # as node/worker/worker.py after a round of refusals
INSPECT_S = 0.002  # an unaudited submission: decode and completion check, no prefill
SYBIL_LIFETIME_S = DAY

Proc = Generator[Any, Any, Any]


def fits(gpu: GpuClass, max_seq_tokens: int = 32768) -> bool:
    """Whether the hardware plan lets this machine run R1 in fp8 (flopnet.node.model.hardware)."""
    hw = Hardware(cpu_cores=64, ram_bytes=1024 * GIB, vllm=True)
    hw = Hardware(
        hw.cpu_cores,
        hw.ram_bytes,
        tuple(Gpu(gpu.name, int(gpu.gpu_memory_gib * GIB)) for _ in range(gpu.gpus)),
        vllm=True,
    )
    try:
        plan_for(hw, R1_CONFIG, "fp8", max_seq_tokens, model_name="DeepSeek-R1")
    except ConfigError:
        return False
    return True


class Simulation:
    """One run: build the network from the config, run it, keep the counts."""

    def __init__(self, cfg: SimConfig) -> None:
        import simpy

        self.cfg = cfg
        self.env = simpy.Environment()
        self.scale = cfg.scale()
        root = random.Random(cfg.seed)
        self.rng = random.Random(root.getrandbits(64))
        self.workload = Workload(cfg, random.Random(root.getrandbits(64)))
        self.table = ProofTable(cfg.proof_model)
        self.refused_classes = sorted(
            {n for n, _ in cfg.gpu_mix if GPU_CLASSES[n].runs_r1 and not fits(GPU_CLASSES[n])}
        )
        usable = [(n, s) for n, s in cfg.gpu_mix if n not in self.refused_classes and s > 0]
        if not usable:
            raise ConfigError(f"no GPU class of the mix can run R1: {self.refused_classes}")
        vgpu = GPU_CLASSES[cfg.validator_gpu]
        capacity = vgpu.gpus * vgpu.dense_fp8_tflops * 1e12 * cfg.validator_mfu
        self.validators = [Validator.make(i, cfg, capacity) for i in range(cfg.validator_count)]
        self.validator_keys = sorted(v.key for v in self.validators)
        self.by_key = {v.key: v for v in self.validators}
        streams = max(GPU_CLASSES[n].streams for n, _ in usable)
        slots = max(1, math.ceil(streams / self.scale))
        backlog = max(
            2000, math.ceil(2 * cfg.workers * slots / cfg.publishers / cfg.samples_per_task)
        )
        self.publishers = [
            Publisher(i, cfg, backlog, random.Random(root.getrandbits(64)))
            for i in range(cfg.publishers)
        ]
        for p in self.publishers:
            p.top_up(self.workload.task_set)
        self.workers = self._make_workers(usable, root)
        self.slots = slots
        self.sid = 0
        self.refusals: Counter[str] = Counter()
        self.lease_waits: list[tuple[float, float, bool]] = []  # (time, wait, newcomer)
        self.late = 0
        self.hourly: list[dict[str, float]] = []
        self.wall_s = self.cpu_s = 0.0
        self.finished_at: float | None = None  # when a limited task set was all done

    def _make_workers(self, usable: list[tuple[str, float]], root: random.Random) -> list[Worker]:
        cfg, rng = self.cfg, random.Random(root.getrandbits(64))
        names = [n for n, _ in usable]
        weights = [s for _, s in usable]
        cheats: list[Any] = []
        for kind, share in cfg.cheaters:
            cheats += [CHEAT_KINDS[kind]] * round(share * cfg.workers)
        cheats += [None] * (cfg.workers - len(cheats))
        rng.shuffle(cheats)
        out = []
        for i in range(cfg.workers):
            gpu = GPU_CLASSES[rng.choices(names, weights)[0]]
            key = key_of("worker", i, cfg.seed)
            pacer = ClaimPacer(rng=random.Random(rng.getrandbits(64)))
            out.append(Worker(i, key, gpu, cheats[i], False, pacer, Account(key)))
        return out

    # -- running -----------------------------------------------------------------------------

    def run(self) -> Simulation:
        started, cpu = time.perf_counter(), time.process_time()
        env, cfg = self.env, self.cfg
        for v in self.validators:
            env.process(self._validate(v))
        for w in self.workers:
            join = 0.0 if self.rng.random() < cfg.initial_share else self.rng.random()
            env.process(self._life(w, join * cfg.duration_s))
        for k in range(cfg.sybil_swarms):
            env.process(self._swarm(k, (k + 1) / (cfg.sybil_swarms + 1) * cfg.duration_s))
        env.process(self._clock())
        env.run(until=cfg.duration_s)
        for w in self.workers:
            w.account.settle(cfg.duration_s, cfg.lock_window_s)
            if w.online:
                w.online_s += cfg.duration_s - w.online_since
        self.wall_s = time.perf_counter() - started
        self.cpu_s = time.process_time() - cpu
        return self

    def _clock(self) -> Proc:
        """Hourly counts for the timeline."""
        while True:
            yield self.env.timeout(HOUR)
            self.hourly.append(
                {
                    "hour": self.env.now / HOUR,
                    "online": sum(w.online for w in self.workers),
                    "queued": sum(len(v.queue) for v in self.validators),
                    "leased": sum(p.book.counts()["leased"] for p in self.publishers)
                    if len(self.hourly) % 6 == 0
                    else -1,
                }
            )

    def _life(self, w: Worker, join_at: float) -> Proc:
        cfg, env, rng = self.cfg, self.env, self.rng
        yield env.timeout(join_at)
        while True:
            end = env.now + rng.expovariate(1 / (cfg.session_hours * HOUR))
            w.online, w.online_since = True, env.now
            slots = [env.process(self._slot(w, end)) for _ in range(self.slots)]
            yield env.all_of(slots)
            w.online = False
            w.online_s += env.now - w.online_since
            if rng.random() >= cfg.return_share:
                return
            yield env.timeout(rng.expovariate(1 / (cfg.away_hours * HOUR)))

    def _claim(self, w: Worker, end: float) -> Proc:
        """Claim rounds until a lease (or the session ends): the worker's own loop, with the
        real pacer and the publishers' real lease books. Returns (publisher, grant, lease id)."""
        env, rng = self.env, self.rng
        while env.now < end:
            refusals = 0
            while refusals < w.pacer.refusals_per_round:
                ready = [p for p in self.publishers if not w.pacer.paused(p.name, env.now)]
                if not ready:
                    break
                p = ready[rng.randrange(len(ready))]
                wait = w.pacer.wait(p.name, env.now)
                if wait > 0:
                    yield env.timeout(wait)
                w.pacer.sent(p.name, env.now)
                if not p.tasks:
                    refusals += 1  # nothing announced: as task_done
                    continue
                task_id = p.pick()
                decision = p.book.claim(task_id, w.key, env.now)
                if isinstance(decision, Denied):
                    self.refusals[decision.code] += 1
                    refusals += 1
                    w.pacer.refused(p.name, decision.code, env.now)
                    if decision.code in FINAL_REFUSALS and decision.code == "task_done":
                        p.finish(task_id)
                    continue
                self.sid += 1
                lease_id = self.sid.to_bytes(16, "big")
                p.book.record_lease(decision, lease_id, w.key)
                w.pacer.granted(p.name)
                w.leases += 1
                return p, decision, lease_id
            paused = [w.pacer.wait(p.name, env.now) for p in self.publishers]
            yield env.timeout(max(TAKEN_BACKOFF_S, min(paused)))
        return None

    def _slot(self, w: Worker, end: float) -> Proc:
        """One of the worker's streams: claim, generate, submit, then idle for the samples this
        simulated one stands for."""
        cfg, env, rng = self.cfg, self.env, self.rng
        per_stream = w.gpu.output_tokens_per_s / w.gpu.streams
        while env.now < end:
            asked = env.now
            newcomer = all(p.book.standing(w.key).newcomer for p in self.publishers)
            got = yield from self._claim(w, end)
            if got is None:
                return
            publisher, grant, lease_id = got
            self.lease_waits.append((asked, env.now - asked, newcomer))
            task_set = publisher.task_sets[grant.task_id]
            generated = self.workload.generated(task_set)
            cheat = w.cheat is not None and rng.random() < cfg.cheat_fraction
            kind = w.cheat if cheat else None
            cost = kind.cost if kind is not None else 1.0
            if kind is not None:
                generated = max(1, round(generated * kind.length))
            gen_s = generated / per_stream * max(cost, 0.01)
            if cfg.freezes_per_day and rng.random() < -math.expm1(
                -cfg.freezes_per_day * gen_s / DAY
            ):
                gen_s += cfg.freeze_minutes * 60
            yield env.timeout(gen_s)
            if env.now >= end:
                return  # left mid-sample: the lease lapses in the publisher's book
            w.samples += 1
            w.cheated += cheat
            w.gpu_seconds += self.scale * generated * cost / w.gpu.output_tokens_per_s
            verdict = self._submit(
                w, publisher, grant, lease_id, task_set.prompt_tokens, generated, kind
            )
            if cfg.wait_verdict:
                yield verdict  # the worker asks for its verdict before it claims again
            cycle = self.slots * self.scale * generated * cost / w.gpu.output_tokens_per_s
            rest = cycle - (env.now - asked)
            if rest > 0:
                yield env.timeout(min(rest, max(0.0, end - env.now)))

    def _submit(
        self,
        w: Worker,
        publisher: Publisher,
        grant: Grant,
        lease_id: bytes,
        prompt: int,
        generated: int,
        kind: CheatKind | None,
    ) -> Any:
        task_id = grant.task_id
        row = self.table.row(HONEST if kind is None else kind.row)
        _, unaudited_pass = row.draw(self.rng)
        self.sid += 1
        sub = Submission(
            self.sid,
            w,
            publisher,
            task_id,
            lease_id,
            prompt,
            generated,
            grant.expires_at,
            self.env.now,
            row,
            unaudited_pass,
            self.env.event(),
            1 if w.sybil else self.scale,
        )
        v = self.by_key[validator_for(task_id, grant.sample_index, self.validator_keys)]
        v.queue.append(sub)
        v.max_queue = max(v.max_queue, len(v.queue))
        if v.wake is not None and not v.wake.triggered:  # type: ignore[attr-defined]
            v.wake.succeed()  # type: ignore[attr-defined]
        return sub.done

    def _validate(self, v: Validator) -> Proc:
        """The validator's loop: the schedule picks, the audit book draws, the judgement's
        verdict (precomputed per stored sample) decides; then credit, audit and invalidation."""
        cfg, env = self.cfg, self.env
        grace = lease_grace(cfg.lease_seconds)
        while True:
            if not v.queue:
                v.wake = env.event()
                yield v.wake
                continue
            window = v.queue[:SCHEDULE_WINDOW]
            index = next_index([s.worker.key for s in window], v.audits.states, v.turn)
            v.turn += 1
            sub = v.queue.pop(index)
            w = sub.worker
            v.waits.append(env.now - sub.submitted_at)
            late = sub.submitted_at > sub.expires_at + grace
            row = sub.outcomes
            flops = self.workload.flops(sub.prompt, sub.generated)
            if late:
                audits, failed, passed = 0, False, False
                self.late += 1
            else:
                audits, failed = v.stream.check(w.key, sub.weight, row)
                passed = not failed and sub.unaudited_pass
            service = audits * flops / v.flops_per_s + (sub.weight - audits) * INSPECT_S
            v.busy_s += service
            yield env.timeout(service)
            v.entries[KIND_CREDIT] += sub.weight  # every count here is of real entries
            v.real_credits += sub.weight
            v.audited += audits
            w.audits += audits
            v.entries[KIND_AUDIT] += audits
            if failed:
                w.failed_audits += 1
                v.entries[KIND_INVALIDATION] += audits  # each failed audit invalidates
                w.account.invalidate(env.now, cfg.lock_window_s)
            if passed:
                w.account.credit(env.now, flops * sub.weight, cfg.lock_window_s)
            else:
                w.rejected += 1
            if sub.publisher.book.settle(sub.lease_id, passed, env.now) is not None and passed:
                sub.publisher.finish(sub.task_id)
                sub.publisher.top_up(self.workload.task_set)
            sub.done.succeed()
            if self.finished_at is None and all(p.exhausted() for p in self.publishers):
                self.finished_at = env.now

    def _swarm(self, k: int, at: float) -> Proc:
        """A Sybil swarm: fresh identities that hoard leases or send garbage for a day."""
        yield self.env.timeout(at)
        cfg = self.cfg
        for i in range(cfg.sybil_size):
            key = key_of(f"sybil-{k}", i, cfg.seed)
            pacer = ClaimPacer(rng=random.Random(self.rng.getrandbits(64)))
            w = Worker(-1, key, GPU_CLASSES[cfg.validator_gpu], GARBAGE, True, pacer, Account(key))
            self.workers.append(w)
            self.env.process(self._sybil(w, self.env.now + SYBIL_LIFETIME_S))

    def _sybil(self, w: Worker, end: float) -> Proc:
        env = self.env
        w.online = True
        while env.now < end:
            got = yield from self._claim(w, end)
            if got is None:
                break
            publisher, grant, lease_id = got
            if self.cfg.sybil_behaviour == "garbage":
                yield env.timeout(1.0)
                self._submit(w, publisher, grant, lease_id, 100, 1000, GARBAGE)
            else:
                w.lapsed += 1  # holds it until it lapses and the worker cools down
        w.online = False
