"""What the simulated workers generate: task sets, R1's answer lengths, and the FLOPs the
validator credits for them (the ledger's own formula over R1's config)."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

from flopnet.ledger.flops import model_shape, shape_flops
from flopnet.sim.inputs import R1_CONFIG, TASK_SETS, TaskSet

if TYPE_CHECKING:
    from flopnet.sim.config import SimConfig


def task_mix(cfg: SimConfig) -> list[tuple[TaskSet, float]]:
    """The configured task sets with their shares normalised."""
    sets = [TASK_SETS[name] for name in cfg.task_sets]
    total = sum(t.share for t in sets)
    return [(t, t.share / total) for t in sets]


def mean_generated(cfg: SimConfig) -> float:
    """Mean generated tokens per sample over the mix (the lognormal's mean, before the cap)."""
    return sum(t.mean_generated * share for t, share in task_mix(cfg))


class Workload:
    """Draws a sample's task set and generated length; credits its FLOPs."""

    def __init__(self, cfg: SimConfig, rng: random.Random) -> None:
        self.rng = rng
        mix = task_mix(cfg)
        self.sets = [t for t, _ in mix]
        self.cumulative: list[float] = []
        acc = 0.0
        for _, share in mix:
            acc += share
            self.cumulative.append(acc)
        self.shape = model_shape(R1_CONFIG)
        self._mu = {t.name: math.log(t.mean_generated) - t.sigma**2 / 2 for t in self.sets}

    def task_set(self) -> TaskSet:
        x = self.rng.random()
        for t, edge in zip(self.sets, self.cumulative, strict=True):
            if x < edge:
                return t
        return self.sets[-1]

    def generated(self, task_set: TaskSet) -> int:
        """Tokens R1 generates for one sample of the set (lognormal, capped at the lease's max)."""
        g = self.rng.lognormvariate(self._mu[task_set.name], task_set.sigma)
        return max(1, min(task_set.max_new_tokens, round(g)))

    def flops(self, prompt_tokens: int, generated_tokens: int) -> int:
        """``matmul-v1`` FLOPs of one sample, as the validator credits them."""
        return shape_flops(self.shape, prompt_tokens, generated_tokens)
