"""The built-in task set: arithmetic word problems with exact integer answers.

It needs no data files, so a devnet runs on a fresh machine.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from flopnet.node.tasks.base import Task
from flopnet.protocol.errors import ConfigError


def _bakery(rng: random.Random) -> tuple[str, int]:
    trays, per_tray = rng.randint(3, 12), rng.randint(6, 24)
    sold = rng.randint(1, trays * per_tray - 1)
    return (
        f"A baker fills {trays} trays with {per_tray} cookies each and sells {sold} cookies. "
        "How many cookies are left?",
        trays * per_tray - sold,
    )


def _train(rng: random.Random) -> tuple[str, int]:
    speed, hours, extra = rng.randint(40, 120), rng.randint(2, 9), rng.randint(5, 90)
    return (
        f"A train travels at {speed} km per hour for {hours} hours and then {extra} km more. "
        "How many kilometres does it travel in total?",
        speed * hours + extra,
    )


def _garden(rng: random.Random) -> tuple[str, int]:
    rows, cols, dead = rng.randint(4, 20), rng.randint(4, 20), rng.randint(0, 15)
    return (
        f"A garden has {rows} rows of {cols} tulips. {dead} tulips wilt. "
        "How many tulips are still blooming?",
        rows * cols - dead,
    )


def _savings(rng: random.Random) -> tuple[str, int]:
    weekly, weeks, spent = rng.randint(5, 60), rng.randint(3, 30), rng.randint(10, 100)
    return (
        f"Mia saves {weekly} dollars every week for {weeks} weeks, then spends {spent} dollars. "
        "How many dollars does she have now?",
        weekly * weeks - spent,
    )


_TEMPLATES: tuple[Callable[[random.Random], tuple[str, int]], ...] = (
    _bakery,
    _train,
    _garden,
    _savings,
)


def builtin_tasks(count: int, seed: int = 0) -> list[Task]:
    """``count`` arithmetic word problems with exact integer answers, the same for a given seed."""
    if count < 1:
        raise ConfigError("the task count must be at least 1")
    rng = random.Random(seed)
    tasks = []
    for i in range(count):
        problem, answer = _TEMPLATES[i % len(_TEMPLATES)](rng)
        tasks.append(Task(f"arith-{seed}-{i}", "math", problem, str(answer)))
    return tasks
