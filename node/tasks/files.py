"""Task files as untrusted input (JSON arrays, JSONL, gzipped), their records turned into tasks
by format, and a whole task set from several sources.

A file that cannot be read or parsed, or whose records are not of a known format, is a
ConfigError naming the file and the record; a record of the right format that cannot become a
task (an empty gold answer, an oversized field, unusable tests) is skipped and counted.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flopnet.node.tasks.base import LANGUAGES, Task, UnusableRecord, file_stem
from flopnet.node.tasks.code_tasks import (
    humaneval_task,
    is_rllm_code_record,
    mbpp_task,
    rllm_code_tasks,
)
from flopnet.node.tasks.mapped import mapped_tasks
from flopnet.node.tasks.math_tasks import is_math_record, math_task
from flopnet.node.tasks.sources import FieldMap, TaskSourceSpec
from flopnet.protocol.errors import ConfigError

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 512 * 1024 * 1024  # DeepScaleR's 40k problems take 20 MB
#: Tasks generated from an output-prediction source when no ``--tasks`` limit is given.
DEFAULT_GENERATED = 64

Builder = Callable[[int, Mapping[str, Any]], list[Task]]


@dataclass
class LoadedSource:
    """What one source gave: its tasks, how many records were read, why others were skipped."""

    name: str
    tasks: list[Task]
    records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        """One line for the log: counts and the commonest skip reasons."""
        line = f"{self.name}: {len(self.tasks)} tasks from {self.records} records"
        if self.skipped:
            reasons = "; ".join(f"{n}× {why}" for why, n in self.skipped.most_common(3))
            line += f", {sum(self.skipped.values())} skipped ({reasons})"
        return line


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, an integer of 4300+ digits
        raise ConfigError(f"{where}: not JSON or JSONL: {exc}") from None


def read_records(path: Path) -> list[Any]:
    """The records of a JSON array or JSONL file (``.gz``: gzipped), at most 512 MiB of text."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigError(f"cannot read tasks file {path}: {exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: more than {MAX_FILE_BYTES >> 20} MiB of task data")
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    stripped = content.lstrip()
    if not stripped:
        raise ConfigError(f"{path}: the file is empty")
    if stripped[0] == "[":
        records = _loads(content, str(path))
        if not isinstance(records, list):
            raise ConfigError(f"{path}: not a JSON array")
        return records
    return [
        _loads(line, f"{path}: line {number}")
        for number, line in enumerate(content.splitlines(), 1)
        if line.strip()
    ]


# Record formats, recognised from the first record; every record must then be of that format.
_FORMATS: tuple[tuple[str, Callable[[Mapping[str, Any]], bool]], ...] = (
    ("HumanEval", lambda r: {"prompt", "test", "entry_point"} <= r.keys()),
    ("MBPP", lambda r: {"text", "test_list"} <= r.keys()),
    ("rllm code", is_rllm_code_record),
    ("math", is_math_record),
)


def detect_format(record: Mapping[str, Any]) -> str | None:
    """The name of the format ``record`` is in, or None."""
    return next((name for name, matches in _FORMATS if matches(record)), None)


def _builder(fmt: str, stem: str, languages: Sequence[str]) -> Builder:
    if fmt == "HumanEval":
        return lambda i, r: [humaneval_task(stem, i, r)]
    if fmt == "MBPP":
        return lambda i, r: [mbpp_task(stem, i, r)]
    if fmt == "rllm code":
        return lambda i, r: rllm_code_tasks(stem, i, r, languages)
    return lambda i, r: [math_task(stem, i, r["problem"], r["answer"])]


_NUMBERS = re.compile(r"\d+")


def load_file(
    path: Path,
    *,
    limit: int | None = None,
    languages: Sequence[str] = LANGUAGES,
    field_map: FieldMap | None = None,
) -> LoadedSource:
    """The tasks of one file, at most ``limit``; ConfigError when the file is unusable."""
    records = read_records(path)
    stem = file_stem(path.name)
    matches: Callable[[Mapping[str, Any]], bool]
    if field_map is not None:
        fm = field_map
        fmt = f"--map {fm.text}"
        build: Builder = lambda i, r: mapped_tasks(fm, stem, i, r, languages)  # noqa: E731
        matches = lambda r: True  # noqa: E731  (a missing field skips just that record)
    else:
        first = records[0] if records else None
        if not isinstance(first, dict):
            raise ConfigError(f"{path}: record 0 is not a JSON object")
        found = detect_format(first)
        if found is None:
            raise ConfigError(
                f"{path}: record 0 is not a task format flopnet knows (math: problem and "
                "answer; HumanEval; MBPP; LeetCode/Codeforces/CodeContests: problem and tests); "
                "name its fields with --map, e.g. --map problem=question,answer=gt"
            )
        fmt = found
        build = _builder(fmt, stem, languages)
        matches = dict(_FORMATS)[fmt]
    loaded = LoadedSource(str(path), [])
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ConfigError(f"{path}: record {index} is not a JSON object")
        if not matches(record):
            raise ConfigError(f"{path}: record {index} is not a {fmt} record like record 0")
        loaded.records += 1
        try:
            made = build(index, record)
        except UnusableRecord as exc:
            loaded.skipped[_NUMBERS.sub("N", str(exc))] += 1
            continue
        room = len(made) if limit is None else limit - len(loaded.tasks)
        loaded.tasks.extend(made[:room])
        if limit is not None and len(loaded.tasks) >= limit:
            break
    if not loaded.tasks:
        raise ConfigError(f"{path}: no usable tasks ({loaded.describe()})")
    return loaded


def load_source(
    spec: TaskSourceSpec,
    *,
    limit: int | None = None,
    languages: Sequence[str] = LANGUAGES,
    seed: int = 0,
) -> LoadedSource:
    """The tasks of one ``--tasks-file`` source."""
    if spec.kind == "output-prediction":
        from flopnet.node.tasks.output_prediction import generate_output_prediction

        count = DEFAULT_GENERATED if limit is None else limit
        return generate_output_prediction(spec.path, count=count, seed=seed)
    return load_file(spec.path, limit=limit, languages=languages, field_map=spec.field_map)


def load_task_sources(
    specs: Sequence[TaskSourceSpec],
    *,
    limit: int | None = None,
    languages: Sequence[str] = LANGUAGES,
    seed: int = 0,
) -> list[Task]:
    """A mixed task set: each source's tasks (at most ``limit`` per source), in source order.

    The limit is per source so that every source of a mixed set is represented; the set's size
    is at most ``limit`` times the number of sources.
    """
    if not specs:
        raise ConfigError("no task sources given")
    tasks: list[Task] = []
    seen: dict[str, str] = {}
    for spec in specs:
        loaded = load_source(spec, limit=limit, languages=languages, seed=seed)
        log.info("tasks %s", loaded.describe())
        for task in loaded.tasks:
            if task.task_id in seen:
                raise ConfigError(
                    f"task {task.task_id} comes from both {seen[task.task_id]} and "
                    f"{spec.argument()} (is a file given twice?)"
                )
            seen[task.task_id] = spec.argument()
        tasks.extend(loaded.tasks)
    return tasks


def load_tasks_file(
    path: Path,
    limit: int | None = None,
    *,
    languages: Sequence[str] = LANGUAGES,
    field_map: FieldMap | None = None,
) -> list[Task]:
    """Load one task file (any known format, or through ``field_map``)."""
    return load_file(path, limit=limit, languages=languages, field_map=field_map).tasks
