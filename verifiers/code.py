"""The code verifier: extract the answer's code, run the task's tests in a sandbox, score.

:func:`check_code` runs in a verifier pool child (it starts sandbox processes and reaps their
orphans, so it makes that child a subreaper). Score = fraction of tests passed, and pass or fail
is always decided outside the process that runs the answer, on plain values:

* Python function tests (HumanEval, MBPP, LeetCode) run in two sandboxes: the task's tests with
  proxies (:mod:`verifiers.pyharness`) and the answer serving calls (:mod:`verifiers.pyanswer`),
  with every call relayed here as plain data (:mod:`verifiers.pyrelay`). A runner that cannot
  keep a process running (Docker today) falls back to the single in-process harness, and the
  result says that it is not proof against reward hacks.
* stdin/stdout tests run the program once per test (built first for compiled languages) and its
  output is compared here; a run that did not end cleanly fails whatever it printed.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

from flopnet.protocol.errors import VerifierError
from flopnet.verifiers.code_tests import (
    CodeTests,
    bindings,
    instrument,
    outputs_match,
    parse_report,
    parse_tests,
    score,
)
from flopnet.verifiers.extract import LANGUAGE_TAGS, extract_code
from flopnet.verifiers.languages import (
    BUILD_LIMITS,
    LANGUAGES,
    Language,
    language,
    prepare,
    require_tool,
)
from flopnet.verifiers.ports import PORT_LANGUAGES, compare, program
from flopnet.verifiers.pyrelay import AnswerProcess, relay
from flopnet.verifiers.result import Result
from flopnet.verifiers.sandbox import BOX, Box, Limits, Sandbox, SandboxConfig, open_sandbox
from flopnet.verifiers.sandbox.base import LiveProcess, MiB, can_start
from flopnet.verifiers.sandbox.process import become_subreaper

HERE = Path(__file__).parent
HARNESS = HERE / "pyharness.py"
ANSWER_SERVER = HERE / "pyanswer.py"
PLAIN = HERE / "plain.py"
#: Both harnesses: no user site, no environment (-I), no site module (-S), no .pyc writes (-B).
_PYTHON = ("python3", "-I", "-S", "-B")
#: Said in the reasons of a result from the in-process harness.
NOT_HACK_PROOF = (
    "in-process harness (this sandbox cannot relay calls): not proof against reward hacks"
)
#: Default wall-clock budget for all tests of one answer (builds excluded).
DEFAULT_BUDGET_S = 60.0


def hard_timeout(tests: CodeTests, budget_s: float = DEFAULT_BUDGET_S) -> float:
    """The pool's kill deadline for one code job: a build, the test budget, and slack."""
    return BUILD_LIMITS.wall_s + budget_s + 15.0


def _wanted_language(task: Mapping[str, object], tests: CodeTests) -> str | None:
    name = task.get("language")
    if name is None:
        return "python" if tests.needs_python else None
    if not isinstance(name, str):
        raise VerifierError("task language must be a string")
    key = name.lower()
    for lang, tags in LANGUAGE_TAGS.items():
        if key == lang or key in tags:
            return lang
    raise VerifierError(f"unsupported language {name!r} (supported: {', '.join(LANGUAGES)})")


def check_code(
    task: Mapping[str, object],
    response: str,
    *,
    sandbox: SandboxConfig,
    require_fence: bool = True,
    budget_s: float = DEFAULT_BUDGET_S,
) -> Result:
    """Judge the code in ``response`` against ``task``'s tests (see :mod:`verifiers.code_tests`)."""
    become_subreaper()
    if not isinstance(response, str):
        raise VerifierError(f"response must be a string, got {type(response).__name__}")
    tests = parse_tests(task)
    wanted = _wanted_language(task, tests)
    block, why = extract_code(response, wanted, require_fence=require_fence)
    if block is None or block.language is None:
        return Result(0.0, False, (why,))
    if tests.needs_python and block.language != "python":
        return Result(0.0, False, (why, f"function tests need Python, got {block.language}"))
    runner = open_sandbox(sandbox)
    lang = language(block.language)
    require_tool(runner, lang)
    reasons = [why, f"sandbox: {runner.name}"]
    with runner.open_box() as box:
        if tests.needs_python and can_start(box):
            return _relayed_tests(runner, box, block.code, tests, budget_s, reasons)
        if tests.needs_python:
            return _python_tests(box, block.code, tests, budget_s, [*reasons, NOT_HACK_PROOF])
        if tests.kind == "ported":
            return _ported_tests(box, lang, block.code, tests, budget_s, reasons)
        return _stdio_tests(box, lang, block.code, tests, budget_s, reasons)


def _ported_tests(
    box: Box, lang: Language, code: str, tests: CodeTests, budget_s: float, reasons: list[str]
) -> Result:
    """The answer built with the calls' harness and run once; each call's printed value is
    compared here, outside the answer's process, as a plain value."""
    assert tests.port is not None
    signature, calls = tests.port
    if lang.name not in PORT_LANGUAGES:
        return Result(0.0, False, (*reasons, f"no function-call harness for {lang.name}"))
    failed = prepare(box, lang, program(signature, calls, lang.name, code))
    if failed is not None:
        detail = failed.stderr.decode("utf-8", "replace").strip()[-300:]
        return Result(0.0, False, (*reasons, f"build failed: {failed.describe()}", detail))
    wall = min(budget_s, tests.time_limit_s * 2 + 2.0)
    limits = Limits(
        wall_s=wall,
        cpu_s=math.ceil(wall),
        memory_mb=tests.memory_mb,
        output_bytes=16 * MiB,
    )
    run = box.run(list(lang.run), limits=limits)
    outcomes = compare(run.stdout.decode("utf-8", "replace"), calls)
    if not run.ok:
        reasons = [*reasons, f"the program ended early: {run.describe()}"]
    return score(outcomes, len(calls), [*reasons, f"language: {lang.name}"])


def _python_limits(tests: CodeTests, budget_s: float) -> Limits:
    # A check() source hides its test count until it is parsed; assume one per assert.
    expected = tests.count if tests.kind == "asserts" else tests.test_source.count("assert") or 1
    wall = min(budget_s, tests.time_limit_s * (expected + 1) + 5.0)
    # Threads count as processes; the harnesses need one, an answer may start a few.
    return Limits(wall_s=wall, cpu_s=math.ceil(wall), memory_mb=tests.memory_mb, processes=16)


def _tests_job(tests: CodeTests) -> dict[str, object]:
    """What the tests' harness needs (:mod:`verifiers.pyharness`), check() cut into tests here."""
    source, count = instrument(tests.test_source) if tests.kind == "check" else ("", 0)
    return {
        "mode": tests.kind,
        "prelude": tests.prelude,
        "helpers": tests.helpers,
        "setup": tests.setup,
        "tests": list(tests.asserts),
        "test_source": source,
        "count": count,
        "entry_point": tests.entry_point,
        "test_timeout": tests.time_limit_s,
    }


_SITE_PATHS: dict[str, tuple[str, ...]] = {}


def _site_paths(runner: Sandbox) -> tuple[str, ...]:
    """The sandbox's Python package directories (asked once per runner kind). The harnesses start
    with ``-S`` (no site module: a few ms per interpreter, two per answer) and put these on
    sys.path themselves, so answers still import what the system has installed."""
    if runner.name in _SITE_PATHS:
        return _SITE_PATHS[runner.name]
    with runner.open_box() as box:
        probe = "import sys; print('\\n'.join(p for p in sys.path if p.endswith('-packages')))"
        run = box.run(["python3", "-I", "-c", probe], limits=Limits(wall_s=20, cpu_s=10))
    found = run.stdout.decode("utf-8", "replace").splitlines() if run.ok else []
    _SITE_PATHS[runner.name] = tuple(line for line in found if line)
    return _SITE_PATHS[runner.name]


def _relayed_tests(
    runner: Sandbox, box: Box, code: str, tests: CodeTests, budget_s: float, reasons: list[str]
) -> Result:
    """Tests in ``box``, the answer in a box of its own (it never sees the tests), relayed."""
    names = bindings(tests)
    paths = list(_site_paths(runner))
    job = {**_tests_job(tests), "remote": list(names.remote), "modules": list(names.modules)}
    box.write("harness.py", HARNESS.read_bytes())
    box.write("plain.py", PLAIN.read_bytes())
    box.write("job.json", json.dumps({**job, "path": paths}).encode("utf-8"))
    limits = _python_limits(tests, budget_s)
    deadline = time.monotonic() + limits.wall_s
    with runner.open_box() as answer_box:
        answer_box.write("pyanswer.py", ANSWER_SERVER.read_bytes())
        answer_box.write("plain.py", PLAIN.read_bytes())
        answer_job = {"code": code, "prelude": tests.prelude, "timeout": tests.time_limit_s}
        answer_box.write("answer.json", json.dumps({**answer_job, "path": paths}).encode())

        def start_answer(floor: int) -> LiveProcess:
            argv = [*_PYTHON, f"{BOX}/pyanswer.py", f"{BOX}/answer.json", str(floor)]
            return answer_box.start(argv, limits=limits)  # type: ignore[attr-defined,no-any-return]

        # A call's own alarm is the time limit; the relay waits twice that (plus a second) before
        # it calls the answer hung, as the stdin/stdout runs do, so load alone does not kill it.
        answer = AnswerProcess(start_answer, call_s=tests.time_limit_s * 2 + 1.0)
        argv = [*_PYTHON, f"{BOX}/harness.py", f"{BOX}/job.json"]
        tests_proc: LiveProcess = box.start(argv, limits=limits)  # type: ignore[attr-defined]
        try:
            out = relay(tests_proc, answer, deadline)
        finally:
            tests_run = tests_proc.finish()
            answer_run = answer.close()
    if out.error is not None:
        raise VerifierError(f"the task's tests are unusable: {out.error}")
    if out.total is None:
        return Result.failure(f"test harness did not start: {tests_run.describe()}")
    if answer.events:
        reasons.append("the answer's process was restarted: " + "; ".join(answer.events[:3]))
    if len(out.tests) < out.total:
        ended = tests_run if not tests_run.ok else answer_run
        reasons.append(f"the run ended early: {ended.describe() if ended else 'time budget'}")
    return score(out.tests, out.total, reasons)


def _python_tests(
    box: Box, code: str, tests: CodeTests, budget_s: float, reasons: list[str]
) -> Result:
    """The in-process harness, for runners without live processes (see the module docstring)."""
    nonce = secrets.token_hex(16)
    job = {**_tests_job(tests), "local": True, "code": code}
    box.write("harness.py", HARNESS.read_bytes())
    box.write("job.json", json.dumps(job).encode("utf-8"))
    box.write("plain.py", PLAIN.read_bytes())
    run = box.run(
        ["python3", "-I", "-B", f"{BOX}/harness.py", f"{BOX}/job.json"],
        limits=_python_limits(tests, budget_s),
        stdin=(nonce + "\n").encode(),
    )
    report = parse_report(run.stdout.decode("utf-8", "replace"), nonce)
    if report.error is not None:
        raise VerifierError(f"the task's tests are unusable: {report.error}")
    if report.total is None:
        return Result.failure(f"test harness did not start: {run.describe()}")
    if len(report.outcomes) < report.total and not run.ok:
        reasons.append(f"the run ended early: {run.describe()}")
    return score(report.outcomes, report.total, reasons)


def _stdio_tests(
    box: Box, lang: Language, code: str, tests: CodeTests, budget_s: float, reasons: list[str]
) -> Result:
    failed = prepare(box, lang, code)
    if failed is not None:
        detail = failed.stderr.decode("utf-8", "replace").strip()[-300:]
        return Result(0.0, False, (*reasons, f"build failed: {failed.describe()}", detail))
    deadline = time.monotonic() + budget_s
    outcomes: dict[int, tuple[bool, str]] = {}
    for i, (stdin, expected) in enumerate(tests.stdio):
        if time.monotonic() > deadline:
            outcomes[i] = (False, "not run: time budget exhausted")
            continue
        limits = Limits(
            wall_s=tests.time_limit_s * 2 + 1.0,
            cpu_s=math.ceil(tests.time_limit_s) + 1,
            memory_mb=tests.memory_mb,
            output_bytes=min(16 * MiB, 2 * len(expected) + 64 * 1024),
        )
        run = box.run(list(lang.run), limits=limits, stdin=stdin.encode("utf-8"))
        if not run.ok:
            outcomes[i] = (False, run.describe())
        elif outputs_match(expected, run.stdout.decode("utf-8", "replace")):
            outcomes[i] = (True, "")
        else:
            outcomes[i] = (False, "wrong answer")
    return score(outcomes, len(tests.stdio), [*reasons, f"language: {lang.name}"])
