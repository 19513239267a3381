"""Test harness that runs INSIDE the sandbox: ``python3 harness.py job.json`` (stdlib only).

It executes the candidate's code, then its tests one at a time, each under its own alarm, and
reports every test on a private copy of stdout as ``<nonce> <i> pass`` or ``<nonce> <i> fail
<json reason>`` (after ``<nonce> total <n>``). The nonce is read from stdin before any candidate
code runs, and the candidate's own stdout goes to /dev/null, so printing "pass" lines or exiting
early (``sys.exit(0)``, ``os._exit(0)``) cannot fake results: unreported tests count as failed.
Code running in the same interpreter can still dig the nonce out of memory; that is the limit of
in-process testing, shared by every HumanEval-style harness.

Job modes:

* ``asserts`` (MBPP): ``tests`` is a list of statements; each is one test, run after ``setup``.
* ``check`` (HumanEval, LeetCode): ``test_source`` defines ``check(candidate)``. Each top-level
  statement of ``check`` that contains an ``assert`` becomes one test (setup statements between
  them run normally; ``assert True`` placeholders do not count). With ``entry_point`` the harness
  calls ``check(<entry_point>)``; without, the source calls ``check`` itself (LeetCode's
  ``check(Solution().method)``).
"""

import ast
import builtins
import json
import os
import signal
import sys

_PREFIX = "__flopnet_"


class _TestTimeout(BaseException):
    """One test ran past its alarm (a BaseException, so ``except Exception`` cannot eat it)."""


def _reason(exc):
    if isinstance(exc, _TestTimeout):
        return "timeout"
    if isinstance(exc, AssertionError):
        return "assertion failed" + (": " + str(exc)[:160] if str(exc) else "")
    return (type(exc).__name__ + ": " + str(exc))[:200]


class Reporter:
    def __init__(self, out, nonce, timeout):
        self.out = out
        self.nonce = nonce
        self.timeout = timeout
        self.done = set()

    def line(self, text):
        self.out.write(self.nonce + " " + text + "\n")
        self.out.flush()

    def begin(self, i):
        signal.setitimer(signal.ITIMER_REAL, self.timeout)

    def passed(self, i):
        signal.setitimer(signal.ITIMER_REAL, 0)
        if i not in self.done:
            self.done.add(i)
            self.line(str(i) + " pass")

    def failed(self, i, exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        if i not in self.done:
            self.done.add(i)
            self.line(str(i) + " fail " + json.dumps(_reason(exc)))

    def fail_rest(self, total, why):
        for i in range(total):
            if i not in self.done:
                self.done.add(i)
                self.line(str(i) + " fail " + json.dumps(why))


def _is_test(stmt):
    """A statement with an assert that is not a constant-true placeholder."""
    for node in ast.walk(stmt):
        if isinstance(node, ast.Assert):
            test = node.test
            if not (isinstance(test, ast.Constant) and bool(test.value)):
                return True
    return False


def _call(name, *args):
    return ast.Expr(ast.Call(ast.Name(_PREFIX + name, ast.Load()), list(args), []))


def _wrap(stmt, i):
    handler = ast.ExceptHandler(
        ast.Name("BaseException", ast.Load()),
        _PREFIX + "exc",
        [_call("failed", ast.Constant(i), ast.Name(_PREFIX + "exc", ast.Load()))],
    )
    return ast.Try(
        [_call("begin", ast.Constant(i)), stmt, _call("passed", ast.Constant(i))],
        [handler],
        [],
        [],
    )


def instrument(source):
    """(code object, number of tests) with each test statement of check() wrapped; 0 tests means
    check() has no top-level assert (the whole call is then one test)."""
    tree = ast.parse(source, "tests.py")
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks:
        raise ValueError("the test source defines no check() function")
    check = checks[-1]
    body, count = [], 0
    for stmt in check.body:
        if _is_test(stmt):
            body.append(_wrap(stmt, count))
            count += 1
        else:
            body.append(stmt)
    check.body = body
    ast.fix_missing_locations(tree)
    return compile(tree, "tests.py", "exec"), count


def _run_check(job, ns, rep):
    code, count = instrument(job["test_source"])
    total = max(count, 1)
    rep.line("total " + str(total))
    if not _load_solution(job, ns, rep, total):
        return
    entry = job.get("entry_point")
    try:
        if count == 0:
            rep.begin(0)
        exec(code, ns)
        if entry:
            if not callable(ns.get(entry)):
                rep.fail_rest(total, "the solution does not define " + entry)
                return
            ns["check"](ns[entry])
        if count == 0:
            rep.passed(0)
    except BaseException as exc:
        if count == 0:
            rep.failed(0, exc)
        rep.fail_rest(total, "not reached: " + _reason(exc))
    rep.fail_rest(total, "not reached")


def _run_asserts(job, ns, rep):
    tests = job["tests"]
    compiled = [compile(t, "<test " + str(i) + ">", "exec") for i, t in enumerate(tests)]
    rep.line("total " + str(len(tests)))
    if not _load_solution(job, ns, rep, len(tests)):
        return
    if job.get("setup"):
        try:
            rep.begin(-1)
            exec(compile(job["setup"], "setup.py", "exec"), ns)
            signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException as exc:
            rep.fail_rest(len(tests), "test setup raised " + _reason(exc))
            return
    for i, code in enumerate(compiled):
        try:
            rep.begin(i)
            exec(code, ns)
            rep.passed(i)
        except BaseException as exc:
            rep.failed(i, exc)


def _load_solution(job, ns, rep, total):
    try:
        rep.begin(-1)
        exec(compile(job.get("prelude", "") or "", "prelude.py", "exec"), ns)
        exec(compile(job["code"], "solution.py", "exec"), ns)
        signal.setitimer(signal.ITIMER_REAL, 0)
        return True
    except BaseException as exc:
        signal.setitimer(signal.ITIMER_REAL, 0)
        rep.fail_rest(total, "the solution raised " + _reason(exc))
        return False


def main():
    nonce = sys.stdin.readline().strip()
    with open(sys.argv[1], encoding="utf-8") as fh:
        job = json.load(fh)
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the candidate's prints are not results
    rep = Reporter(out, nonce, float(job.get("test_timeout", 5.0)))

    def on_alarm(signum, frame):
        raise _TestTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    ns = {"__name__": "solution", "__builtins__": builtins}
    for name in ("begin", "passed", "failed"):
        ns[_PREFIX + name] = getattr(rep, name)
    try:
        if job["mode"] == "check":
            _run_check(job, ns, rep)
        else:
            _run_asserts(job, ns, rep)
    except SyntaxError as exc:
        rep.line("error " + json.dumps("the tests do not compile: " + str(exc)))
    except ValueError as exc:
        rep.line("error " + json.dumps(str(exc)))
    out.flush()
    os._exit(0)  # skip interpreter teardown: candidate threads or atexit hooks must not run on


if __name__ == "__main__":
    main()
