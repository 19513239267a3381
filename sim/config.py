"""The simulation's one config object: the network to simulate, and how finely."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from flopnet.ledger.policy import DEFAULT_LOCK_WINDOW_S, DEFAULT_WARMUP, MIN_SPOT_RATE
from flopnet.protocol.errors import ConfigError
from flopnet.sim.inputs import CHEAT_KINDS, GPU_CLASSES, TASK_SETS

HOUR = 3600.0
DAY = 86400.0


@dataclass(frozen=True)
class SimConfig:
    """Everything one run depends on; the same config and seed give the same result."""

    workers: int = 1000
    days: float = 7.0
    validators: int = 0  # 0: 20 per 1,000 workers (enough at the default floor)
    publishers: int = 4
    task_sets: tuple[str, ...] = ("math", "code")
    samples_per_task: int = 4
    task_limit: int = 0  # tasks per publisher in all (0: a backlog topped up for ever)
    gpu_mix: tuple[tuple[str, float], ...] = (("h200x8", 0.8), ("b200x8", 0.2))
    validator_gpu: str = "h200x8"
    validator_mfu: float = 0.4  # share of the dense fp8 peak a validator's prefill reaches
    # Churn: a share of the workers is there at the start, the rest joins over the run; each
    # stays for a session, leaves, and may come back with the same identity.
    initial_share: float = 0.5
    session_hours: float = 48.0
    away_hours: float = 12.0
    return_share: float = 0.7
    freezes_per_day: float = 0.2  # a frozen worker holds its leases until they lapse
    freeze_minutes: float = 30.0
    cheaters: tuple[tuple[str, float], ...] = ()  # (kind, share of workers)
    cheat_fraction: float = 1.0  # of its samples a cheater forges
    sybil_swarms: int = 0
    sybil_size: int = 500
    sybil_behaviour: str = "hoard"  # "hoard" (claim, never submit) or "garbage"
    audit_floor: float = 0.05
    audit_warmup: int = DEFAULT_WARMUP
    lock_window_s: float = DEFAULT_LOCK_WINDOW_S
    lease_seconds: float = 1800.0
    max_leases_per_worker: int = 8
    newcomer_leases: int = 1
    wait_verdict: bool = True  # a worker asks for its verdict before it claims again
    proof_model: str = "small"  # the measured model whose proof outcomes stand in for R1's
    # One simulated sample stands for `sample_scale` real ones of the same worker (0: the
    # smallest scale that keeps the run within `sample_budget` simulated samples).
    sample_scale: int = 0
    sample_budget: int = 1_000_000
    seed: int = 0
    keep: tuple[str, ...] = field(default=())  # optional outputs: "timeline"

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= 1_000_000:
            raise ConfigError("--workers must be in 1..1,000,000")
        if not 0 < self.days <= 3650:
            raise ConfigError("--days must be in (0, 3650]")
        if self.validators < 0 or self.publishers < 1:
            raise ConfigError("a network needs at least one validator and one publisher")
        for name in self.task_sets:
            if name not in TASK_SETS:
                raise ConfigError(f"unknown task set {name!r}; known: {sorted(TASK_SETS)}")
        if not self.task_sets:
            raise ConfigError("at least one task set")
        for name, share in self.gpu_mix:
            if name not in GPU_CLASSES:
                raise ConfigError(f"unknown GPU class {name!r}; known: {sorted(GPU_CLASSES)}")
            if share < 0:
                raise ConfigError("GPU shares must be >= 0")
        if not any(share > 0 for _, share in self.gpu_mix):
            raise ConfigError("the GPU mix is empty")
        if self.validator_gpu not in GPU_CLASSES:
            raise ConfigError(f"unknown validator GPU class {self.validator_gpu!r}")
        for kind, share in self.cheaters:
            if kind not in CHEAT_KINDS:
                raise ConfigError(f"unknown cheat {kind!r}; known: {sorted(CHEAT_KINDS)}")
            if not 0 <= share <= 1:
                raise ConfigError("a cheater share must be in [0, 1]")
        if sum(share for _, share in self.cheaters) > 1:
            raise ConfigError("cheater shares add up to more than 1")
        if self.sybil_behaviour not in ("hoard", "garbage"):
            raise ConfigError("--sybil-behaviour is hoard or garbage")
        if not 0 <= self.audit_floor <= 1 or not 0 <= self.cheat_fraction <= 1:
            raise ConfigError("--audit-floor and --cheat-fraction must be in [0, 1]")
        if self.lock_window_s < 0 or self.lease_seconds <= 0:
            raise ConfigError("--lock-window must be >= 0 and --lease-seconds > 0")
        if not 0 <= self.initial_share <= 1 or not 0 <= self.return_share <= 1:
            raise ConfigError("--initial-share and --return-share must be in [0, 1]")
        if self.session_hours <= 0 or self.away_hours <= 0 or self.freezes_per_day < 0:
            raise ConfigError("churn times must be positive")
        if self.sample_scale < 0 or self.sample_budget < 1000:
            raise ConfigError("--sample-scale must be >= 0 and --sample-budget >= 1000")

    @property
    def validator_count(self) -> int:
        return self.validators or max(1, math.ceil(self.workers * 0.02))

    @property
    def duration_s(self) -> float:
        return self.days * DAY

    @property
    def effective_floor(self) -> float:
        return max(self.audit_floor, MIN_SPOT_RATE)

    def real_samples_per_s(self) -> float:
        """Samples per second the whole network would produce at full strength (every worker
        online, every stream busy): what the sample scale is chosen against."""
        from flopnet.sim.workload import mean_generated

        total = sum(share for _, share in self.gpu_mix)
        tokens = sum(GPU_CLASSES[n].output_tokens_per_s * s / total for n, s in self.gpu_mix)
        return self.workers * tokens / mean_generated(self)

    def scale(self) -> int:
        """How many real samples one simulated sample stands for."""
        if self.sample_scale:
            return self.sample_scale
        online = self.initial_share + (1 - self.initial_share) / 2  # joins spread over the run
        expected = self.real_samples_per_s() * self.duration_s * online
        return max(1, math.ceil(expected / self.sample_budget))
