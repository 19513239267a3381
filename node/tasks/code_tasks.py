"""Code tasks: HumanEval and MBPP (Python function tests), LeetCode (rllm: a ``functional``
check source), Codeforces and CodeContests (rllm: stdin/stdout pairs).

A stdin/stdout problem becomes one task per language (Python, JavaScript, C++, Rust, as
SYNTHETIC-1 posed its problems in each): the language is in the task id, in the prompt and in
the verifier spec, so the code verifier builds and runs the answer in that language. A LeetCode
problem does too where it can be ported (its starter rendered in the language, its calls made by
the verifier's harness: :mod:`flopnet.node.tasks.leetcode`); HumanEval's and MBPP's tests are
Python code around the answer, so those are posed in Python only (``--languages`` chooses).
Every spec is checked with the validator's own test parser before it is accepted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flopnet.node.tasks.base import (
    MAX_PROBLEM_BYTES,
    MAX_VERIFIER_BYTES,
    Task,
    UnusableRecord,
    check_task,
    make_task_id,
    text,
)
from flopnet.protocol.errors import VerifierError

# The stated limit is for a judge's C++; interpreted languages get more (at least 1 s: the
# machines that verify are shared and noisy).
TIME_FACTOR = {"python": 2.0, "javascript": 2.0, "cpp": 1.0, "rust": 1.0}
# The sandbox caps address space, not resident memory; a JavaScript runtime needs about 1 GiB
# of address space to start at all, so a stated limit below that is not applied as such.
MIN_MEMORY_MB = 1024
MAX_MEMORY_MB = 4096
# rllm's LeetCode problems open with an instruction of their own; ours replaces it.
_RLLM_INTRO = "Please solve the programming task below using a self-contained code snippet"
_TIME_MS = re.compile(r"Time Limit:\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|sec|seconds?)\b", re.I)
_TIME_PROTO = re.compile(r"Time Limit:\s*\{'seconds':\s*(\d+),\s*'nanos':\s*(\d+)\}", re.I)
_MEMORY = re.compile(r"Memory Limit:\s*(\d+(?:\.\d+)?)\s*(MB|megabytes|Bytes)\b", re.I)


def _checked(task: Task) -> Task:
    """``task`` if the validator's test parser accepts its spec and it fits the wire."""
    from flopnet.verifiers.code_tests import parse_tests

    try:
        parse_tests(task.verifier)
    except VerifierError as exc:
        raise UnusableRecord(f"tests unusable: {exc}") from None
    return check_task(task)


def _strings(values: object, what: str) -> list[str]:
    if not isinstance(values, list) or not values:
        raise UnusableRecord(f"{what} is not a non-empty list")
    return [text(v, what, MAX_VERIFIER_BYTES, allow_empty=True) for v in values]


def humaneval_task(stem: str, index: int, record: Mapping[str, Any]) -> Task:
    """A HumanEval record (``prompt``, ``test``, ``entry_point``) as a Python function task."""
    prompt = text(record["prompt"], "prompt", MAX_PROBLEM_BYTES)
    problem = f"Complete the following Python function.\n\n```python\n{prompt.rstrip()}\n```"
    spec = {
        "tests": text(record["test"], "test", MAX_VERIFIER_BYTES),
        "entry_point": text(record["entry_point"], "entry_point", 256),
        # The prompt's own helpers (poly in 32, encode_cyclic in 38, encode_shift in 50) are
        # the tests': run before them, so an answer cannot redefine what checks it.
        "test_helpers": prompt,
        "language": "python",
    }
    return _checked(Task(make_task_id(stem, index, problem), "code", problem, "", spec))


def mbpp_task(stem: str, index: int, record: Mapping[str, Any]) -> Task:
    """An MBPP record (``text``, ``test_list``, ``test_setup_code``) as a Python function task;
    the asserts are shown in the problem, as MBPP's paper posed it."""
    tests = _strings(record["test_list"], "test_list")
    statement = text(record["text"], "text", MAX_PROBLEM_BYTES)
    problem = f"{statement}\nYour code should pass these tests:\n" + "\n".join(tests)
    setup = record.get("test_setup_code") or ""
    spec = {
        "tests": tests,
        "test_setup_code": text(setup, "test_setup_code", MAX_VERIFIER_BYTES, allow_empty=True),
        "language": "python",
    }
    return _checked(Task(make_task_id(stem, index, problem), "code", problem, "", spec))


def _decoded_tests(value: object) -> object:
    """rllm stores tests as a structure or as its JSON text."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        if len(value) > MAX_VERIFIER_BYTES:
            raise UnusableRecord("tests longer than the cap")
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            raise UnusableRecord("tests are not valid JSON text") from None
    return value


def stdio_pairs(tests: object) -> list[dict[str, str]]:
    """Codeforces (``[{input, output}]``) or CodeContests (``{inputs, outputs}``) tests as
    ``[{input, output}]``; UnusableRecord when they are neither."""
    from flopnet.verifiers.code_tests import MAX_TESTS

    if isinstance(tests, Mapping) and "inputs" in tests and "outputs" in tests:
        inputs = _strings(tests["inputs"], "tests.inputs")
        outputs = _strings(tests["outputs"], "tests.outputs")
        if len(inputs) != len(outputs):
            raise UnusableRecord("tests have different numbers of inputs and outputs")
        pairs = list(zip(inputs, outputs, strict=True))
    elif isinstance(tests, list) and tests and all(isinstance(t, Mapping) for t in tests):
        if not all("input" in t and "output" in t for t in tests):
            raise UnusableRecord("a stdio test lacks input or output")
        pairs = [
            (text(t["input"], "input", MAX_VERIFIER_BYTES, allow_empty=True),
             text(t["output"], "output", MAX_VERIFIER_BYTES, allow_empty=True))
            for t in tests
        ]  # fmt: skip
    else:
        raise UnusableRecord("tests are not stdin/stdout pairs")
    # The verifier runs at most MAX_TESTS; more would only cost bytes on the wire.
    return [{"input": i, "output": o} for i, o in pairs[:MAX_TESTS]]


def stated_limits(problem: str) -> tuple[float | None, int | None]:
    """The time limit (seconds) and memory limit (MB) a problem statement gives, if any."""
    seconds: float | None = None
    if m := _TIME_PROTO.search(problem):
        seconds = int(m.group(1)) + int(m.group(2)) / 1e9
    elif m := _TIME_MS.search(problem):
        value = float(m.group(1))
        seconds = value / 1000 if m.group(2).lower().startswith("m") else value
    memory: int | None = None
    if m := _MEMORY.search(problem):
        value = float(m.group(1))
        memory = int(value / 2**20) if m.group(2).lower() == "bytes" else int(value)
    return seconds, memory


def _limits(problem: str, language: str) -> dict[str, Any]:
    seconds, memory = stated_limits(problem)
    out: dict[str, Any] = {}
    if seconds is not None and seconds > 0:
        out["time_limit"] = round(min(30.0, max(1.0, seconds * TIME_FACTOR[language])), 3)
    if memory is not None and memory > 0:
        out["memory_limit_mb"] = min(MAX_MEMORY_MB, max(MIN_MEMORY_MB, memory))
    return out


def _leetcode_statement(problem: str) -> str:
    first, _, rest = problem.partition("\n")
    return rest.strip() if first.startswith(_RLLM_INTRO) else problem.strip()


def is_rllm_code_record(record: Mapping[str, Any]) -> bool:
    """Whether a record has rllm's code fields (``problem``, ``tests``, no ``answer``)."""
    return "problem" in record and "tests" in record and "answer" not in record


def rllm_code_tasks(
    stem: str, index: int, record: Mapping[str, Any], languages: Sequence[str]
) -> list[Task]:
    """An rllm code record as tasks: LeetCode (``tests.functional``) in Python; Codeforces and
    CodeContests (stdin/stdout) once per language in ``languages``."""
    problem = text(record["problem"], "problem", MAX_PROBLEM_BYTES)
    tests = _decoded_tests(record["tests"])
    if isinstance(tests, Mapping) and "functional" in tests:
        check = text(tests["functional"], "tests.functional", MAX_VERIFIER_BYTES)
        return _leetcode_tasks(stem, index, _leetcode_statement(problem), check, languages)
    pairs = stdio_pairs(tests)
    statement = problem.strip()
    out = []
    for lang in languages:
        spec: dict[str, Any] = {"tests": pairs, "language": lang, **_limits(statement, lang)}
        task_id = make_task_id(stem, index, statement, lang)
        out.append(_checked(Task(task_id, "code", statement, "", spec)))
    return out


def _leetcode_tasks(
    stem: str, index: int, statement: str, check: str, languages: Sequence[str]
) -> list[Task]:
    """A LeetCode problem in each of ``languages``: Python with its own tests, the others
    ported (:mod:`flopnet.node.tasks.leetcode`) where its types and tests allow."""
    from flopnet.node.tasks.leetcode import port_spec, ported_statement

    out = []
    if "python" in languages:
        function = {"tests": {"functional": check}, "language": "python"}
        task_id = make_task_id(stem, index, statement, "python")
        out.append(_checked(Task(task_id, "code", statement, "", function)))
    others = [lang for lang in languages if lang != "python"]
    if not others:
        return out
    try:
        spec = port_spec(statement, check)
    except UnusableRecord:
        if out:
            return out  # Python only: the problem's types or tests have no port
        raise
    for lang in others:
        ported = ported_statement(statement, spec, lang)
        task_id = make_task_id(stem, index, statement, lang)
        out.append(_checked(Task(task_id, "code", ported, "", {"tests": spec, "language": lang})))
    return out


def code_task_from_fields(
    stem: str,
    index: int,
    problem: object,
    tests: object,
    languages: Sequence[str],
    *,
    entry_point: object = None,
    setup: object = None,
    id_part: str | None = None,
) -> list[Task]:
    """Code tasks from mapped fields (``--map type=code,tests=...``): stdin/stdout tests once per
    language, any other tests (asserts, a check source) in Python."""
    statement = text(problem, "problem", MAX_PROBLEM_BYTES).strip()
    tests = _decoded_tests(tests)
    parts = (id_part,) if id_part else ()
    try:
        pairs: list[dict[str, str]] | None = stdio_pairs(tests)
    except UnusableRecord:
        pairs = None
    if pairs is None:
        spec: dict[str, Any] = {"tests": _plain_tests(tests), "language": "python"}
        if entry_point is not None:
            spec["entry_point"] = text(entry_point, "entry_point", 256)
        if setup is not None:
            spec["test_setup_code"] = text(setup, "setup", MAX_VERIFIER_BYTES, allow_empty=True)
        task_id = make_task_id(stem, index, statement, *parts, "python")
        return [_checked(Task(task_id, "code", statement, "", spec))]
    out = []
    for lang in languages:
        spec = {"tests": pairs, "language": lang, **_limits(statement, lang)}
        task_id = make_task_id(stem, index, statement, *parts, lang)
        out.append(_checked(Task(task_id, "code", statement, "", spec)))
    return out


def _plain_tests(tests: object) -> object:
    """Asserts (text or a list of texts) or a ``{"functional": source}`` map, checked as text."""
    if isinstance(tests, str):
        return text(tests, "tests", MAX_VERIFIER_BYTES)
    if isinstance(tests, list):
        return _strings(tests, "tests")
    if isinstance(tests, Mapping) and "functional" in tests:
        return {"functional": text(tests["functional"], "tests.functional", MAX_VERIFIER_BYTES)}
    raise UnusableRecord("tests are neither asserts, a check source nor stdin/stdout pairs")
