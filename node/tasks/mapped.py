"""Any JSON/JSONL file read through a field mapping (``--map problem=question,answer=gt``).

The mapping names the record field of each role and the task type
(:class:`~flopnet.node.tasks.sources.FieldMap`); a missing field or a value of the wrong kind makes
that record unusable (skipped and counted), never the loader crash.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from flopnet.node.tasks.base import (
    MAX_ANSWER_BYTES,
    MAX_PROBLEM_BYTES,
    Task,
    UnusableRecord,
    check_task,
    make_task_id,
    text,
)
from flopnet.node.tasks.code_tasks import code_task_from_fields
from flopnet.node.tasks.math_tasks import judge_task, math_task
from flopnet.node.tasks.sources import FieldMap

_MISSING = object()
_ID_CHARS = re.compile(r"[^A-Za-z0-9_.]+")


def lookup(record: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` (``a``, ``a.b``, ``a.0``) in ``record``, or a private sentinel."""
    value: Any = record
    for piece in path.split("."):
        if isinstance(value, Mapping) and piece in value:
            value = value[piece]
        elif isinstance(value, list) and piece.isdigit() and int(piece) < len(value):
            value = value[int(piece)]
        else:
            return _MISSING
    return value


def _field(record: Mapping[str, Any], fm: FieldMap, role: str, required: bool = True) -> Any:
    path = fm.field_for(role)
    if path is None:
        return None
    value = lookup(record, path)
    if value is _MISSING:
        if required:
            raise UnusableRecord(f"no field {path!r} ({role})")
        return None
    return value


def _id_part(record: Mapping[str, Any], fm: FieldMap) -> str | None:
    value = _field(record, fm, "id", required=False)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UnusableRecord("the id field is neither text nor an integer")
    return _ID_CHARS.sub("_", str(value)).strip("_")[:40] or None


def mapped_tasks(
    fm: FieldMap, stem: str, index: int, record: Mapping[str, Any], languages: Sequence[str]
) -> list[Task]:
    """The tasks of one record under ``fm``."""
    problem = _field(record, fm, "problem")
    id_part = _id_part(record, fm)
    parts = (id_part,) if id_part else ()
    if fm.task_type == "code":
        return code_task_from_fields(
            stem,
            index,
            problem,
            _field(record, fm, "tests"),
            (fm.language,) if fm.language else languages,
            entry_point=_field(record, fm, "entry_point", required=False),
            setup=_field(record, fm, "setup", required=False),
            id_part=id_part,
        )
    answer = _field(record, fm, "answer")
    if fm.task_type == "math":
        return [math_task(stem, index, problem, answer, *parts)]
    if fm.task_type == "llm_judge":
        return [judge_task(stem, index, problem, answer, *parts)]
    # code_output_prediction: the problem shows code and input, the answer is its output.
    statement = text(problem, "problem", MAX_PROBLEM_BYTES)
    # Exact, not stripped: leading spaces of an output matter.
    gold = text(answer, "answer", MAX_ANSWER_BYTES, allow_empty=True, numbers=True)
    task_id = make_task_id(stem, index, statement, "op", *parts)
    return [check_task(Task(task_id, "code_output_prediction", statement, gold, {}))]
