"""Pure decisions of the code verifier: which tests a task has, output comparison, scoring.

Test formats accepted in ``task["tests"]`` (a JSON string of any of them works too):

* HumanEval: a source defining ``check(candidate)``, with ``task["entry_point"]``;
* LeetCode (rllm): ``{"functional": source}`` where the source ends by calling
  ``check(Solution().method)`` itself; the usual LeetCode imports are provided;
* MBPP: a list of assert statements (or one string of them), with optional
  ``task["test_setup_code"]``;
* stdin/stdout: a list of ``{"input", "output"}`` pairs (Codeforces) or
  ``{"inputs": [...], "outputs": [...]}`` (CodeContests);
* function calls in another language (a LeetCode problem ported to JavaScript, C++ or Rust):
  ``{"signature": ..., "calls": [...]}`` (see :mod:`flopnet.verifiers.ports`).

``task["test_helpers"]`` (optional) is trusted source run with the tests before them, for helpers
the tests call besides the answer: HumanEval's prompt defines ``poly`` for problem 32's test and
``encode_cyclic`` for 38's. Without it those names are looked up in the answer, which may then
define them to suit itself.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from flopnet.protocol.errors import VerifierError
from flopnet.verifiers.ports import Call, Signature, parse_spec
from flopnet.verifiers.result import Result

MAX_TESTS = 200
MAX_SHOWN_FAILURES = 3
#: What LeetCode-style solutions assume is already imported (the LeetCodeDataset prelude).
LEETCODE_PRELUDE = """\
import bisect, collections, datetime, functools, heapq, itertools, math, operator, random, re
import string
from typing import *
from functools import *
from collections import *
from itertools import *
from heapq import *
from bisect import *
from string import *
from operator import *
from math import *
inf = float("inf")
"""
_SELF_CALL_RE = re.compile(r"^check\s*\(", re.MULTILINE)


@dataclass(frozen=True)
class CodeTests:
    """A task's tests in one normal form; ``kind`` is "check", "asserts" or "stdio"."""

    kind: str
    test_source: str = ""
    entry_point: str | None = None
    asserts: tuple[str, ...] = ()
    setup: str = ""
    prelude: str = ""
    helpers: str = ""
    stdio: tuple[tuple[str, str], ...] = ()
    time_limit_s: float = 5.0
    memory_mb: int = 1024
    port: tuple[Signature, tuple[Call, ...]] | None = None  # kind "ported"

    @property
    def count(self) -> int:
        if self.kind == "ported" and self.port is not None:
            return len(self.port[1])
        return len(self.asserts) if self.kind == "asserts" else len(self.stdio) or 1

    @property
    def needs_python(self) -> bool:
        return self.kind not in ("stdio", "ported")


def _number(task: Mapping[str, object], key: str, default: float, lo: float, hi: float) -> float:
    value = task.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise VerifierError(f"task field {key!r} must be a number")
    return min(max(float(value), lo), hi)


def _split_statements(source: str) -> tuple[str, ...]:
    """Top-level statements of a block of assert lines, each as its own source text."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise VerifierError(f"test asserts do not parse: {exc}") from None
    parts = [ast.get_source_segment(source, node) for node in tree.body]
    return tuple(p for p in parts if p)


def _stdio_pairs(tests: object) -> tuple[tuple[str, str], ...] | None:
    if isinstance(tests, Mapping) and "inputs" in tests and "outputs" in tests:
        inputs, outputs = tests["inputs"], tests["outputs"]
        if not isinstance(inputs, list) or not isinstance(outputs, list):
            raise VerifierError("stdio tests: inputs and outputs must be lists")
        if len(inputs) != len(outputs):
            raise VerifierError("stdio tests: inputs and outputs differ in length")
        pairs = list(zip(inputs, outputs, strict=True))
    elif isinstance(tests, Mapping) and "input" in tests and "output" in tests:
        pairs = [(tests["input"], tests["output"])]
    elif isinstance(tests, list) and tests and all(isinstance(t, Mapping) for t in tests):
        try:
            pairs = [(t["input"], t["output"]) for t in tests]
        except KeyError as exc:
            raise VerifierError(f"stdio test lacks {exc.args[0]!r}") from None
    else:
        return None
    if not all(isinstance(i, str) and isinstance(o, str) for i, o in pairs):
        raise VerifierError("stdio test inputs and outputs must be strings")
    return tuple(pairs)


def parse_tests(task: Mapping[str, object]) -> CodeTests:
    """The task's tests in normal form; VerifierError for a task that cannot be judged."""
    tests = task.get("tests")
    if isinstance(tests, str) and tests.lstrip()[:1] in ("{", "["):
        # A Python source may start with a dict or list literal too: then it stays a string.
        with contextlib.suppress(ValueError):
            tests = json.loads(tests)
    entry = task.get("entry_point")
    if entry is not None and (not isinstance(entry, str) or not entry.isidentifier()):
        raise VerifierError(f"entry_point must be an identifier, got {entry!r}")
    setup = task.get("test_setup_code") or task.get("setup") or ""
    if not isinstance(setup, str):
        raise VerifierError("test_setup_code must be a string")
    helpers = task.get("test_helpers") or ""
    if not isinstance(helpers, str):
        raise VerifierError("test_helpers must be a string")
    pairs = _stdio_pairs(tests)
    if isinstance(tests, Mapping) and "signature" in tests and "calls" in tests:
        kind = CodeTests(kind="ported", port=parse_spec(tests))
    elif pairs is not None:
        if not pairs:
            raise VerifierError("no stdio tests")
        limit = _number(task, "time_limit", 4.0, 0.25, 30.0)
        kind = CodeTests(kind="stdio", stdio=pairs[:MAX_TESTS], time_limit_s=limit)
    elif isinstance(tests, Mapping) and isinstance(tests.get("functional"), str):
        source = tests["functional"]
        kind = CodeTests("check", test_source=source, entry_point=entry, prelude=LEETCODE_PRELUDE)
    elif isinstance(tests, str) and "def check" in tests:
        if entry is None and not _SELF_CALL_RE.search(tests):
            raise VerifierError("HumanEval-style tests need an entry_point")
        kind = CodeTests(kind="check", test_source=tests, entry_point=entry)
    elif isinstance(tests, str) and tests.strip():
        kind = CodeTests(kind="asserts", asserts=_split_statements(tests))
    elif isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests):
        kind = CodeTests(kind="asserts", asserts=tuple(t for t in tests if t.strip()))
    else:
        raise VerifierError("task has no usable 'tests' (check source, asserts or stdio pairs)")
    if kind.kind == "asserts" and not kind.asserts:
        raise VerifierError("no test asserts")
    if kind.kind == "asserts" and len(kind.asserts) > MAX_TESTS:
        raise VerifierError(f"more than {MAX_TESTS} test asserts")
    memory = int(_number(task, "memory_limit_mb", 1024, 64, 4096))
    limit = kind.time_limit_s if kind.kind == "stdio" else _number(task, "time_limit", 5.0, 0.5, 30)
    return replace(kind, setup=setup, helpers=helpers, memory_mb=memory, time_limit_s=limit)


# -- which names the tests take from the answer ------------------------------------------------


@dataclass(frozen=True)
class Bindings:
    """How the tests' process binds the names its tests use but do not define.

    ``remote``: looked up in the answer's process (the entry point, its helpers and classes).
    ``modules``: standard-library modules the tests' process imports itself, so that a test
    leaning on the answer's ``import math`` never calls the answer's (maybe patched) module.
    Builtins stay the tests' own, except the function every MBPP assert calls when that name is a
    builtin's (MBPP 126 asks for a function called ``sum``).
    """

    remote: tuple[str, ...]
    modules: tuple[str, ...]


def _scan(source: str, loads: set[str], bound: set[str], called: set[str] | None = None) -> None:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return  # the harness reports unusable tests itself
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        if called is not None and isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            called.add(node.func.id)


def bindings(tests: CodeTests) -> Bindings:
    """Which free names of ``tests`` come from the answer, and which are stdlib modules."""
    loads: set[str] = set()
    bound: set[str] = set()
    for source in (tests.prelude, tests.helpers, tests.setup):
        _scan(source, loads, bound)
    entry: set[str] = set()
    if tests.kind == "check":
        _scan(tests.test_source, loads, bound)
        entry = {tests.entry_point} if tests.entry_point else set()
    else:
        common: set[str] | None = None
        for statement in tests.asserts:
            called: set[str] = set()
            _scan(statement, loads, bound, called)
            common = called if common is None else common & called
        if common and all(hasattr(builtins, name) for name in common):
            entry = common
    free = loads - bound - entry
    modules = {n for n in free if n in sys.stdlib_module_names}
    remote = {n for n in free - modules if not hasattr(builtins, n)} | entry
    return Bindings(tuple(sorted(remote)), tuple(sorted(modules)))


# -- one test per assert of check() -------------------------------------------------------------

#: Names of the harness's reporter functions inside the tests' namespace.
REPORT_PREFIX = "__flopnet_"


def _is_test(stmt: ast.stmt) -> bool:
    """A statement with an assert that is not a constant-true placeholder."""
    for node in ast.walk(stmt):
        if isinstance(node, ast.Assert):
            test = node.test
            if not (isinstance(test, ast.Constant) and bool(test.value)):
                return True
    return False


def _report(name: str, *args: ast.expr) -> ast.Expr:
    return ast.Expr(ast.Call(ast.Name(REPORT_PREFIX + name, ast.Load()), list(args), []))


def _wrap(stmt: ast.stmt, i: int) -> ast.Try:
    exc = ast.Name(REPORT_PREFIX + "exc", ast.Load())
    handler = ast.ExceptHandler(
        ast.Name("BaseException", ast.Load()),
        REPORT_PREFIX + "exc",
        [_report("failed", ast.Constant(i), exc)],
    )
    begin = _report("begin", ast.Constant(i))
    passed = _report("passed", ast.Constant(i))
    return ast.Try([begin, stmt, passed], [handler], [], [])


def instrument(source: str) -> tuple[str, int]:
    """(source, number of tests) with each test statement of ``check()`` wrapped to report its
    outcome; 0 tests means check() has no top-level assert (the whole call is then one test).
    Done here, not in the sandbox, so the harness need not import ``ast`` (time, per answer)."""
    try:
        tree = ast.parse(source, "tests.py")
    except SyntaxError as exc:
        raise VerifierError(f"the tests do not compile: {exc}") from None
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks:
        raise VerifierError("the test source defines no check() function")
    check = checks[-1]
    body: list[ast.stmt] = []
    count = 0
    for stmt in check.body:
        if _is_test(stmt):
            body.append(_wrap(stmt, count))
            count += 1
        else:
            body.append(stmt)
    check.body = body
    return ast.unparse(ast.fix_missing_locations(tree)), count


# -- output comparison ------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _token_equal(want: str, got: str) -> bool:
    if want == got:
        return True
    # Real numbers compare with the usual 1e-6 judge tolerance; integers must match exactly.
    if not any(c in want for c in ".eE") or want.lower() in ("inf", "nan"):
        return False
    try:
        a, b = float(want), float(got)
    except ValueError:
        return False
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-6 * max(1.0, abs(a))


def outputs_match(expected: str, actual: str) -> bool:
    """Judge-style comparison: trailing spaces and blank lines ignored, reals within 1e-6."""
    want, got = _lines(expected), _lines(actual)
    if want == got:
        return True
    want_tokens = " ".join(want).split()
    got_tokens = " ".join(got).split()
    return len(want_tokens) == len(got_tokens) and all(
        _token_equal(w, g) for w, g in zip(want_tokens, got_tokens, strict=True)
    )


# -- harness reports and scores ---------------------------------------------------------------


@dataclass(frozen=True)
class HarnessReport:
    """What the in-sandbox harness said: test count, each reported test, or a task error."""

    total: int | None
    outcomes: dict[int, tuple[bool, str]]
    error: str | None = None


def parse_report(stdout: str, nonce: str) -> HarnessReport:
    """Lines of :mod:`verifiers.pyharness` carrying ``nonce``; any other line is ignored."""
    total: int | None = None
    outcomes: dict[int, tuple[bool, str]] = {}
    prefix = nonce + " "
    for line in stdout.splitlines():
        if not line.startswith(prefix):
            continue
        parts = line[len(prefix) :].split(" ", 2)
        if parts[0] == "total" and len(parts) == 2 and parts[1].isdigit() and total is None:
            total = int(parts[1])
        elif parts[0] == "error":
            text = parts[1] + (" " + parts[2] if len(parts) > 2 else "")
            return HarnessReport(total, outcomes, _json_text(text))
        elif total is not None and len(parts) >= 2 and parts[0].isdigit():
            i = int(parts[0])
            if 0 <= i < total and i not in outcomes:
                reason = _json_text(parts[2]) if len(parts) > 2 else ""
                outcomes[i] = (parts[1] == "pass", reason)
    return HarnessReport(total, outcomes)


def _json_text(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return text[:200]
    return str(value)[:200]


def score(
    outcomes: Mapping[int, tuple[bool, str]], total: int, reasons: Sequence[str] = ()
) -> Result:
    """Score = fraction of ``total`` tests passed (unreported ones fail); passed when all pass."""
    if total <= 0:
        raise VerifierError("no tests to score")
    passed = sum(1 for i, (ok, _) in outcomes.items() if ok and 0 <= i < total)
    lines = [*reasons, f"{passed}/{total} tests passed"]
    failures = sorted((i, why) for i, (ok, why) in outcomes.items() if not ok)
    for i, why in failures[:MAX_SHOWN_FAILURES]:
        lines.append(f"test {i}: {why or 'failed'}")
    missing = total - len(outcomes)
    if missing > 0:
        lines.append(f"{missing} test(s) not reported (the program died or ran out of time)")
    return Result(passed / total, passed == total, tuple(lines))
