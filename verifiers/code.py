"""The code verifier: extract the answer's code, run the task's tests in a sandbox, score.

:func:`check_code` runs in a verifier pool child (it starts sandbox processes and reaps their
orphans, so it makes that child a subreaper). Python function tests (HumanEval, MBPP, LeetCode)
run in one sandboxed interpreter through :mod:`verifiers.pyharness`; stdin/stdout tests run the
program once per test, built first for compiled languages. Score = fraction of tests passed.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

from flopnet.protocol.errors import VerifierError
from flopnet.verifiers.code_tests import CodeTests, outputs_match, parse_report, parse_tests, score
from flopnet.verifiers.extract import LANGUAGE_TAGS, extract_code
from flopnet.verifiers.languages import (
    BUILD_LIMITS,
    LANGUAGES,
    Language,
    language,
    prepare,
    require_tool,
)
from flopnet.verifiers.result import Result
from flopnet.verifiers.sandbox import BOX, Box, Limits, SandboxConfig, open_sandbox
from flopnet.verifiers.sandbox.base import MiB
from flopnet.verifiers.sandbox.process import become_subreaper

HARNESS = Path(__file__).with_name("pyharness.py")
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
        if tests.needs_python:
            return _python_tests(box, block.code, tests, budget_s, reasons)
        return _stdio_tests(box, lang, block.code, tests, budget_s, reasons)


def _python_tests(
    box: Box, code: str, tests: CodeTests, budget_s: float, reasons: list[str]
) -> Result:
    nonce = secrets.token_hex(16)
    job = {
        "mode": tests.kind,
        "code": code,
        "prelude": tests.prelude,
        "setup": tests.setup,
        "tests": list(tests.asserts),
        "test_source": tests.test_source,
        "entry_point": tests.entry_point,
        "test_timeout": tests.time_limit_s,
    }
    box.write("harness.py", HARNESS.read_bytes())
    box.write("job.json", json.dumps(job).encode("utf-8"))
    # A check() source hides its test count until the harness parses it; assume one per assert.
    expected = tests.count if tests.kind == "asserts" else tests.test_source.count("assert") or 1
    wall = min(budget_s, tests.time_limit_s * (expected + 1) + 5.0)
    limits = Limits(wall_s=wall, cpu_s=math.ceil(wall), memory_mb=tests.memory_mb)
    run = box.run(
        ["python3", "-I", "-B", f"{BOX}/harness.py", f"{BOX}/job.json"],
        limits=limits,
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
