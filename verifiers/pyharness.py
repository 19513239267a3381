"""The tests' side of a Python test run; runs INSIDE a sandbox: ``python3 harness.py job.json``.

It runs the task's tests one at a time, each under its own alarm, and reports every test. The
relay (:mod:`verifiers.code`) has already cut ``check()`` into one wrapped statement per test
(:func:`verifiers.code_tests.instrument`). Two modes:

* **relay** (the default): the candidate's code is *not* in this process. Every name the tests use
  but do not define (the entry point, ``Solution``, a helper class) is a :class:`Remote` proxy;
  calling one sends the call, as plain data (:mod:`verifiers.plain`), to the relay outside the
  sandbox, which hands it to the answer's own sandboxed process and brings back a plain value
  built afresh here. So ``assert candidate(x) == y`` compares two builtin values made by this
  process; nothing the answer defines (an ``__eq__``, a patched builtin, an ``exit()``) runs
  here, and what this process reports is the verdict. Messages are JSON lines on a private copy
  of stdout: ``["total", n]``, ``["test", i, passed, reason]``, ``["error", text]``, and
  requests (``resolve``, ``call``, ``getattr``, ``setattr``) answered on stdin.
* **local** (only for sandboxes that cannot hold a live process): the old in-process harness.
  The candidate's code runs in this interpreter, so it can reach the reporter: its results are
  not proof against reward hacks. Lines ``<nonce> total <n>``, ``<nonce> <i> pass|fail <json>``.

Tests: ``asserts`` (MBPP): each statement is one test, run after ``setup``. ``check`` (HumanEval,
LeetCode): each wrapped statement of ``check()`` is one test; with ``entry_point`` the harness
calls ``check(<entry_point>)``, without, the source calls ``check`` itself.

Only modules that are cheap to import are used here (no ``json``, ``ast``, ``signal``): two
interpreters start per answer, and their start-up is most of the verifier's cost.
"""

import _json
import _signal
import builtins
import posix
import sys

if __name__ == "__main__":  # in the sandbox: the copy written into the box beside this file
    sys.path.insert(0, __file__.rpartition("/")[0])
    import plain
else:
    from flopnet.verifiers import plain  # type: ignore[no-redef]

_PREFIX = "__flopnet_"
_LINK: "Link" = None  # type: ignore[assignment]  # set by main() before any test runs


class _TestTimeout(BaseException):
    """One test ran past its alarm (a BaseException, so ``except Exception`` cannot eat it)."""


class AnswerError(Exception):
    """The answer failed in a way that has no builtin exception type (died, timed out, ...)."""


def _reason(exc):
    if isinstance(exc, _TestTimeout):
        return "timeout"
    if isinstance(exc, AssertionError):
        return "assertion failed" + (": " + str(exc)[:160] if str(exc) else "")
    return (type(exc).__name__ + ": " + str(exc))[:200]


def _alarm(seconds):
    _signal.setitimer(_signal.ITIMER_REAL, seconds)


class Reporter:
    """Test outcomes, each reported once; ``emit(kind, fields)`` writes one message."""

    def __init__(self, emit, timeout):
        self.emit = emit
        self.timeout = timeout
        self.done = set()

    def begin(self, i):
        _alarm(self.timeout)

    def passed(self, i):
        _alarm(0)
        if i not in self.done:
            self.done.add(i)
            self.emit("test", [i, True, ""])

    def failed(self, i, exc):
        _alarm(0)
        if i not in self.done:
            self.done.add(i)
            self.emit("test", [i, False, _reason(exc)])

    def fail_rest(self, total, why):
        for i in range(total):
            if i not in self.done:
                self.done.add(i)
                self.emit("test", [i, False, why])


def _legacy_emit(out, nonce):
    def emit(kind, fields):
        if kind == "test":
            i, ok, why = fields
            text = str(i) + (" pass" if ok else " fail " + _json.encode_basestring_ascii(why))
        elif kind == "total":
            text = "total " + str(fields[0])
        else:
            text = kind + " " + _json.encode_basestring_ascii(fields[0])
        out.write((nonce + " " + text + "\n").encode())
        out.flush()

    return emit


# -- the link to the answer ----------------------------------------------------------------------


class Link:
    """Requests to the answer through the relay. SIGALRM waits while one is in flight: the relay
    answers every request within its own deadline, and a half-written line would break the
    channel."""

    def __init__(self, inp, out):
        self.inp = inp
        self.out = out
        self.seq = 0

    def send(self, msg):
        self.out.write(plain.dump_light(msg))
        self.out.flush()

    def request(self, op, *fields):
        self.seq += 1
        seq = self.seq
        old = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGALRM})
        try:
            self.send([op, seq, *fields])
            while True:
                line = self.inp.readline()
                if not line:
                    posix._exit(4)  # the relay is gone: nothing left to report to
                reply = plain.load_light(line.decode("utf-8"))
                if reply[1] == seq:
                    break
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, old)
        if reply[0] == "ok":
            return plain.decode(reply[2], Remote)
        raise _exception(str(reply[2]), str(reply[3]))


def _exception(name, text):
    """The answer's exception as a builtin type where there is one (tests may expect a
    ValueError), else AnswerError; BaseExceptions such as SystemExit never cross."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(text)
    return AnswerError(text if name.startswith("Answer") else name + ": " + text)


def _ref_of(value):
    return object.__getattribute__(value, "_ref") if type(value) is Remote else None


def _enc(value):
    return plain.encode(value, _ref_of)


class Remote:
    """An object of the answer's process. Calls, attributes, assignments, iteration, ``len`` and
    indexing go there (what comes back is plain data or another reference); it equals only
    itself and has no truth value or order: it is not plain data."""

    __slots__ = ("_ref",)

    def __init__(self, ref):
        object.__setattr__(self, "_ref", ref)

    def __call__(self, *args, **kwargs):
        kw = [[str(k), _enc(v)] for k, v in kwargs.items()]
        return _LINK.request("call", _enc(self), _enc(list(args)), kw)

    def __getattr__(self, name):
        if name.startswith("__"):  # protocol probes (copy, pickle) stay local
            raise AttributeError(name)
        return _LINK.request("getattr", _enc(self), name)

    def __setattr__(self, name, value):
        _LINK.request("setattr", _enc(self), name, _enc(value))

    def __iter__(self):
        items = _LINK.request("iter", _enc(self))
        if type(items) is not list:
            raise TypeError("the answer's object did not iterate")
        return iter(items)

    def __len__(self):
        n = _LINK.request("len", _enc(self))
        if type(n) is not int:
            raise TypeError("the answer's len() is not an int")
        return n

    def __getitem__(self, key):
        return _LINK.request("getitem", _enc(self), _enc(key))

    def __eq__(self, other):
        return type(other) is Remote and _ref_of(other) == _ref_of(self)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(_ref_of(self))

    def __bool__(self):
        raise AnswerError("the answer returned an object, not plain data")

    def __repr__(self):
        return "<answer object>"


# -- the tests -----------------------------------------------------------------------------------


def _run_check(job, ns, rep, load):
    count = job["count"]
    total = max(count, 1)
    rep.emit("total", [total])
    if not load(total):
        return
    entry = job.get("entry_point")
    try:
        if count == 0:
            rep.begin(0)
        exec(compile(job["test_source"], "tests.py", "exec"), ns)
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


def _run_asserts(job, ns, rep, load):
    tests = job["tests"]
    compiled = [compile(t, "<test " + str(i) + ">", "exec") for i, t in enumerate(tests)]
    rep.emit("total", [len(tests)])
    if not load(len(tests)):
        return
    if job.get("setup"):
        try:
            rep.begin(-1)
            exec(compile(job["setup"], "setup.py", "exec"), ns)
            _alarm(0)
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


def _loader(job, ns, rep):
    """How the candidate's names get into ``ns``: by reference (relay) or by running it here."""

    def run_prelude():
        exec(compile(job.get("prelude", "") or "", "prelude.py", "exec"), ns)
        exec(compile(job.get("helpers", "") or "", "helpers.py", "exec"), ns)
        for name in job.get("modules", ()):
            try:  # noqa: SIM105  (contextlib would cost start-up time)
                ns.setdefault(name, __import__(name))
            except ImportError:
                pass

    def relay(total):
        try:
            rep.begin(-1)
            run_prelude()
            _alarm(0)
            # The entry point is the answer's even where the helpers define a stub of it.
            entry = job.get("entry_point")
            names = [n for n in job.get("remote", ()) if n not in ns or n == entry]
            ns.update(_LINK.request("resolve", names))
            return True
        except BaseException as exc:
            _alarm(0)
            why = str(exc) if isinstance(exc, AnswerError) else "setup raised " + _reason(exc)
            rep.fail_rest(total, why)
            return False

    def local(total):
        try:
            rep.begin(-1)
            run_prelude()
            exec(compile(job["code"], "solution.py", "exec"), ns)
            _alarm(0)
            return True
        except BaseException as exc:
            _alarm(0)
            rep.fail_rest(total, "the solution raised " + _reason(exc))
            return False

    return local if job.get("local") else relay


def main():
    global _LINK
    with open(sys.argv[1], encoding="utf-8") as fh:
        job = plain.load_light(fh.read())
    sys.path.extend(job.get("path", ()))
    # Open for the life of the process (it ends with _exit, not by leaving a block).
    inp = open(posix.dup(0), "rb")  # noqa: SIM115
    out = open(posix.dup(1), "wb")  # noqa: SIM115
    if job.get("local"):
        emit = _legacy_emit(out, inp.readline().decode().strip())
    else:
        _LINK = Link(inp, out)

        def emit(kind, fields):
            _LINK.send([kind, *fields])

    devnull = posix.open("/dev/null", posix.O_RDWR)
    posix.dup2(devnull, 0)
    posix.dup2(devnull, 1)  # prints are not results
    rep = Reporter(emit, float(job.get("test_timeout", 5.0)))

    def on_alarm(signum, frame):
        raise _TestTimeout()

    _signal.signal(_signal.SIGALRM, on_alarm)
    ns = {"__name__": "solution", "__builtins__": builtins}
    for name in ("begin", "passed", "failed"):
        ns[_PREFIX + name] = getattr(rep, name)
    run = _run_check if job["mode"] == "check" else _run_asserts
    try:
        run(job, ns, rep, _loader(job, ns, rep))
    except SyntaxError as exc:
        emit("error", ["the tests do not compile: " + str(exc)])
    out.flush()
    posix._exit(0)  # skip interpreter teardown: candidate threads or atexit hooks must not run on


if __name__ == "__main__":
    main()
