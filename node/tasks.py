"""Task sets: a built-in generator of arithmetic word problems, and loaders for task files.

The built-in set needs no data files, so a devnet runs on a fresh machine. :func:`load_tasks_file`
reads math tasks (DeepScaleR JSON arrays, MATH-500 JSONL: ``problem`` and ``answer``) and code
tasks (HumanEval JSONL, also gzipped: ``prompt``, ``test``, ``entry_point``; MBPP JSONL: ``text``,
``test_list``, ``test_setup_code``), whose tests the validator's sandboxed code verifier runs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flopnet.protocol.codec import packb, unpackb
from flopnet.protocol.errors import ConfigError, MalformedMessage
from flopnet.protocol.messages import TaskSpec

MAX_PROBLEM_CHARS = 16_000


@dataclass(frozen=True)
class Task:
    """One problem with its gold answer (math) or its tests (code, in ``verifier``)."""

    task_id: str
    task_type: str
    problem: str
    answer: str
    # Further fields of the verifier's task spec (code: tests, entry_point, test_setup_code).
    verifier: Mapping[str, Any] = field(default_factory=dict, hash=False)


def task_spec(task: Task) -> TaskSpec:
    """The wire form of a task, as a publisher serves it to validators."""
    return TaskSpec(
        version=1,
        task_id=task.task_id,
        task_type=task.task_type,
        problem=task.problem,
        answer=task.answer,
        verifier=packb(dict(task.verifier)),
    )


def task_from_spec(spec: TaskSpec) -> Task:
    """A task from its wire form; MalformedMessage if the verifier fields are not a map."""
    verifier = unpackb(spec.verifier, max_bytes=len(spec.verifier))
    if not isinstance(verifier, dict):
        raise MalformedMessage("a task's verifier fields must be a map")
    return Task(spec.task_id, spec.task_type, spec.problem, spec.answer, verifier)


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


def _code_task(stem: str, index: int, record: Mapping[str, Any]) -> Task | None:
    """A HumanEval or MBPP record as a code task, or None if it is neither."""
    if {"prompt", "test", "entry_point"} <= record.keys():  # HumanEval
        problem = (
            "Complete the following Python function.\n\n```python\n"
            f"{str(record['prompt']).rstrip()}\n```"
        )
        spec: dict[str, Any] = {
            "tests": str(record["test"]),
            "entry_point": str(record["entry_point"]),
        }
    elif {"text", "test_list"} <= record.keys():  # MBPP
        tests = [str(t) for t in record["test_list"]]
        problem = f"{record['text']}\nYour code should pass these tests:\n" + "\n".join(tests)
        spec = {"tests": tests, "test_setup_code": str(record.get("test_setup_code") or "")}
    else:
        return None
    digest = hashlib.sha256(problem.encode()).hexdigest()[:10]
    return Task(f"{stem}-{index}-{digest}", "code", problem, "", {**spec, "language": "python"})


def load_tasks_file(path: Path, limit: int | None = None) -> list[Task]:
    """Load tasks: math from DeepScaleR JSON arrays or ``problem``/``answer`` JSONL, code from
    HumanEval or MBPP JSONL (``.gz`` files are read compressed)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                text = f.read()
        else:
            text = path.read_text(encoding="utf-8")
    except (OSError, EOFError) as exc:
        raise ConfigError(f"cannot read tasks file {path}: {exc}") from None
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON or JSONL: {exc}") from None
    stem = path.name.split(".")[0]
    tasks: list[Task] = []
    for index, record in enumerate(records):
        code = _code_task(stem, index, record) if isinstance(record, dict) else None
        if code is not None:
            if len(code.problem) <= MAX_PROBLEM_CHARS:
                tasks.append(code)
            if limit is not None and len(tasks) >= limit:
                break
            continue
        if not isinstance(record, dict) or "problem" not in record or "answer" not in record:
            raise ConfigError(
                f"{path}: record {index} is not a math (problem, answer), HumanEval or MBPP task"
            )
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
