"""The task record, its wire form, and the checks and caps every loader applies.

A task file is untrusted input: every text field is checked to be text that encodes as UTF-8
and is size-capped here, and a finished task must fit the wire caps of
:class:`~flopnet.protocol.messages.TaskSpec` (a validator fetches it over the network) and of the
lease (the prompt's token ids). A record that cannot become a task raises
:class:`UnusableRecord`; loaders count those and skip them.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flopnet.protocol.codec import packb, unpackb
from flopnet.protocol.errors import ConfigError, MalformedMessage
from flopnet.protocol.messages import MAX_PROMPT_TOKENS, MAX_TASK_SPEC_BYTES, MAX_TEXT, TaskSpec

#: The task types a loader writes (the names of ``flopnet.verifiers.registry.REGISTRY``).
TASK_TYPES = ("math", "code", "code_output_prediction", "llm_judge")
#: Other names a task type is known by (the registry's aliases), mapped to the type.
TYPE_ALIASES = {
    "verifiable_math": "math",
    "verifiable_code": "code",
    "output_prediction": "code_output_prediction",
    "code_output": "code_output_prediction",
    "judge": "llm_judge",
    "stem": "llm_judge",
}
#: The languages code tasks are posed in (the code verifier's names, ``verifiers.languages``).
LANGUAGES = ("python", "javascript", "cpp", "rust")

# The user message (problem + instruction) must tokenise within the lease's prompt cap even
# with a byte-level tokenizer (one token per byte), leaving room for the chat template.
MAX_USER_MESSAGE_BYTES = MAX_PROMPT_TOKENS - 384
MAX_PROBLEM_BYTES = MAX_USER_MESSAGE_BYTES - 1024  # room for the instruction around it
MAX_ANSWER_BYTES = 16 * 1024  # the wire allows 64 KiB; no gold answer needs more
MAX_VERIFIER_BYTES = 2 * 1024 * 1024  # code tests; the wire allows ~3.6 MiB
MAX_TASK_ID = 128
# A spec travels inside a signed envelope: leave room for its header and signature.
_ENVELOPE_ROOM = 4096


class UnusableRecord(ConfigError):
    """One record of a task file cannot become a task; the loader skips it and says why."""


@dataclass(frozen=True)
class Task:
    """One problem with its gold answer (math, judge, output prediction) or its tests (code, in
    ``verifier``)."""

    task_id: str
    task_type: str
    problem: str
    answer: str
    # Further fields of the verifier's task spec (code: tests, entry_point, language, limits;
    # judge: question).
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


def canonical_type(name: object) -> str:
    """The task type called ``name`` (or an alias); ConfigError when unknown."""
    if isinstance(name, str):
        key = name.strip().lower().replace("-", "_")
        key = TYPE_ALIASES.get(key, key)
        if key in TASK_TYPES:
            return key
    raise ConfigError(f"unknown task type {name!r} (one of: {', '.join(TASK_TYPES)})")


def text(
    value: object, what: str, max_bytes: int, *, allow_empty: bool = False, numbers: bool = False
) -> str:
    """``value`` as checked text: a string that encodes as UTF-8, within ``max_bytes``.

    With ``numbers``, a number is taken as its text (AMC stores answers as floats like 27.0).
    """
    if isinstance(value, bool) or value is None:
        raise UnusableRecord(f"{what} is {value!r}, not text")
    if isinstance(value, int | float) and not numbers:
        raise UnusableRecord(f"{what} is a number, not text")
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise UnusableRecord(f"{what} is not a finite number")
        value = str(int(value)) if value.is_integer() else repr(value)
    if not isinstance(value, str):
        raise UnusableRecord(f"{what} is a {type(value).__name__}, not text")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        # JSON can carry lone surrogates ("\\ud800"); they cannot be signed or sent.
        raise UnusableRecord(f"{what} is not valid Unicode text") from None
    if size > max_bytes:
        raise UnusableRecord(f"{what} is {size} bytes (at most {max_bytes})")
    if "\x00" in value:
        raise UnusableRecord(f"{what} contains a NUL character")
    if not allow_empty and not value.strip():
        raise UnusableRecord(f"{what} is empty")
    return value


_STEM_CHARS = re.compile(r"[^A-Za-z0-9_.]+")


def file_stem(name: str) -> str:
    """A file name's stem as a task-id prefix: its first dotted part, tidied and shortened."""
    stem = _STEM_CHARS.sub("_", name.split(".")[0]).strip("_") or "tasks"
    return stem[:48]


def make_task_id(stem: str, index: int, problem: str, *parts: str) -> str:
    """``stem-index[-part...]-digest``: unique per record and variant, stable across runs."""
    digest = hashlib.sha256(problem.encode("utf-8")).hexdigest()[:10]
    return "-".join((stem, str(index), *parts, digest))[:MAX_TASK_ID]


_TASK_SET = re.compile(r"^(.*?)-\d+(?:-|$)")


def task_set_of(task_id: str) -> str:
    """The task set a task id names (loaders name tasks ``<set>-<index>[-...]``, see
    :func:`make_task_id`): ``arith-3-…`` is in ``arith``."""
    match = _TASK_SET.match(task_id)
    return match.group(1) if match else task_id


def check_task(task: Task) -> Task:
    """``task`` if it fits every wire cap (spec, user message); UnusableRecord otherwise."""
    from flopnet.node.tasks.prompts import user_message

    if len(task.task_id) > MAX_TASK_ID:
        raise UnusableRecord(f"task id longer than {MAX_TASK_ID} characters")
    message = user_message(task)
    size = len(message.encode("utf-8"))
    if size > MAX_USER_MESSAGE_BYTES:
        raise UnusableRecord(f"the prompt is {size} bytes (at most {MAX_USER_MESSAGE_BYTES})")
    if len(task.answer.encode("utf-8")) > MAX_ANSWER_BYTES:
        raise UnusableRecord(f"the answer is longer than {MAX_ANSWER_BYTES} bytes")
    try:
        verifier = len(packb(dict(task.verifier)))
        spec = len(task_spec(task).encode())
    except MalformedMessage as exc:  # nested too deeply, a surrogate in a test, ...
        raise UnusableRecord(f"the tests cannot be encoded: {exc}") from None
    if verifier > MAX_VERIFIER_BYTES:
        raise UnusableRecord(f"the tests take {verifier} bytes (at most {MAX_VERIFIER_BYTES})")
    if len(task.problem.encode("utf-8")) > MAX_TEXT or spec > MAX_TASK_SPEC_BYTES - _ENVELOPE_ROOM:
        raise UnusableRecord(f"the task spec is {spec} bytes, over the wire cap")
    return task
