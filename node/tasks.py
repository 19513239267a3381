"""Task sets: a built-in generator of arithmetic word problems, and loaders for task files.

The built-in set needs no data files, so a devnet runs on a fresh machine. Files in the
DeepScaleR format (a JSON array of objects with ``problem`` and ``answer``) and JSONL files with
the same fields (MATH-500) load with :func:`load_tasks_file`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import ConfigError

MAX_PROBLEM_CHARS = 16_000


@dataclass(frozen=True)
class Task:
    """One problem with its gold answer."""

    task_id: str
    task_type: str
    problem: str
    answer: str


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


def _normalise_answer(answer: object) -> str:
    # Minerva stores answers as lists with trailing newlines; AMC as floats like 27.0.
    if isinstance(answer, list):
        answer = answer[0] if answer else ""
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    return str(answer).strip()


def load_tasks_file(path: Path, limit: int | None = None) -> list[Task]:
    """Load math tasks from a DeepScaleR JSON array or a JSONL file of ``problem``/``answer``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read tasks file {path}: {exc}") from None
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON or JSONL: {exc}") from None
    stem = path.stem
    tasks: list[Task] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or "problem" not in record or "answer" not in record:
            raise ConfigError(f"{path}: record {index} lacks 'problem' or 'answer'")
        problem = str(record["problem"])
        answer = _normalise_answer(record["answer"])
        if not answer or len(problem) > MAX_PROBLEM_CHARS:
            continue  # an empty gold answer cannot label anything
        digest = hashlib.sha256(problem.encode()).hexdigest()[:10]
        tasks.append(Task(f"{stem}-{index}-{digest}", "math", problem, answer))
        if limit is not None and len(tasks) >= limit:
            break
    if not tasks:
        raise ConfigError(f"{path}: no usable tasks")
    return tasks
