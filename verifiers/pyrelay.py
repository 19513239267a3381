"""The relay of a Python test run: two sandboxed processes, the verdict decided between them.

The tests' process (:mod:`verifiers.pyharness`) runs the task's tests with proxies in place of
the answer's names and reports each test; the answer's process (:mod:`verifiers.pyanswer`) runs
the candidate's code and serves calls. This module, outside both sandboxes, carries every request
from the first to the second and every reply back, each one decoded and re-encoded by
:mod:`verifiers.plain` on the way: only plain data and references (by id into the answer's
current process, or by global name) cross, never bytes the answer chose. The answer cannot touch
the tests' process, so exiting early, killing itself, writing to its channel or faking a report
only ever fails its own calls.

The answer's process is restarted (at most :data:`MAX_RESTARTS` times) when it hangs past a
call's deadline, dies or breaks the protocol; references into a dead process are refused as
stale, names are looked up again. The pure checks (:func:`check_request`, :func:`check_reply`,
:func:`note_report`) are apart from the I/O (:class:`AnswerProcess`, :func:`relay`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flopnet.verifiers import plain
from flopnet.verifiers.sandbox.base import ChannelError, LiveProcess, RunResult

REQUESTS = ("resolve", "call", "getattr", "setattr", "iter", "len", "getitem")
MAX_RESTARTS = 2
#: Object ids of one answer process lie in [floor, floor + ID_SPAN); a restart moves the floor.
ID_SPAN = 1 << 32
MAX_TEXT = 500
MAX_NAMES = 1000


@dataclass
class Outcomes:
    """What the tests' process reported."""

    total: int | None = None
    tests: dict[int, tuple[bool, str]] = field(default_factory=dict)
    error: str | None = None


# -- pure checks ---------------------------------------------------------------------------------


def _name(value: object) -> str:
    if type(value) is not str or not value.isidentifier() or len(value) > 200:
        raise plain.PlainError("malformed name")
    return value


def _refs(floor: int, ceiling: int) -> Callable[[plain.Ref], plain.Ref]:
    def check(ref: plain.Ref) -> plain.Ref:
        if type(ref.key) is int and not floor <= ref.key < ceiling:
            raise plain.PlainError("stale reference: the answer's process was restarted")
        return ref

    return check


def _value(data: object, floor: int, ceiling: int) -> Any:
    """``data`` decoded strictly and encoded again: only what :mod:`plain` can express remains."""
    return plain.encode(plain.decode(data, _refs(floor, ceiling)))


def _seq(msg: object) -> int:
    if type(msg) is not list or len(msg) < 2 or type(msg[1]) is not int:
        raise plain.PlainError("malformed message")
    return msg[1]


def check_request(msg: object, floor: int) -> list[Any]:
    """The request for the answer, rebuilt from the tests' message; PlainError if malformed."""
    seq = _seq(msg)
    assert isinstance(msg, list)
    op, fields = msg[0], msg[2:]
    ceiling = floor + ID_SPAN
    if op == "resolve" and len(fields) == 1 and type(fields[0]) is list:
        if len(fields[0]) > MAX_NAMES:
            raise plain.PlainError("too many names")
        return [op, seq, [_name(n) for n in fields[0]]]
    if op not in REQUESTS or not fields:
        raise plain.PlainError(f"unknown request {op!r}")
    target = plain.decode(fields[0], _refs(floor, ceiling))
    if type(target) is not plain.Ref:
        raise plain.PlainError("a request needs an object reference")
    target_data = plain.encode(target)
    if op == "call" and len(fields) == 3 and type(fields[2]) is list:
        args = plain.decode(fields[1], _refs(floor, ceiling))
        if type(args) is not list:
            raise plain.PlainError("call arguments must be a list")
        kwargs = []
        for item in fields[2]:
            if type(item) is not list or len(item) != 2:
                raise plain.PlainError("malformed keyword argument")
            kwargs.append([_name(item[0]), _value(item[1], floor, ceiling)])
        return [op, seq, target_data, plain.encode(args), kwargs]
    if op == "getattr" and len(fields) == 2:
        return [op, seq, target_data, _name(fields[1])]
    if op == "setattr" and len(fields) == 3:
        return [op, seq, target_data, _name(fields[1]), _value(fields[2], floor, ceiling)]
    if op in ("iter", "len") and len(fields) == 1:
        return [op, seq, target_data]
    if op == "getitem" and len(fields) == 2:
        return [op, seq, target_data, _value(fields[1], floor, ceiling)]
    raise plain.PlainError(f"malformed {op} request")


def check_reply(msg: object, seq: int, floor: int) -> list[Any]:
    """The reply for the tests, rebuilt from the answer's message; PlainError if malformed."""
    if _seq(msg) != seq:
        raise plain.PlainError("reply to another request")
    assert isinstance(msg, list)
    if msg[0] == "ok" and len(msg) == 3:
        return ["ok", seq, _value(msg[2], floor, floor + ID_SPAN)]
    if msg[0] == "raise" and len(msg) == 4 and type(msg[3]) is str:
        try:
            name = _name(msg[2])
        except plain.PlainError:
            name = "AnswerError"
        return ["raise", seq, name, msg[3][:MAX_TEXT]]
    raise plain.PlainError("malformed reply")


def failure(seq: int, name: str, text: str) -> list[Any]:
    return ["raise", seq, name, text[:MAX_TEXT]]


def note_report(msg: object, out: Outcomes) -> bool:
    """Record a report of the tests' process; False when ``msg`` is not a report."""
    if type(msg) is not list or not msg or msg[0] not in ("total", "test", "error"):
        return False
    kind, fields = msg[0], msg[1:]
    if kind == "total" and len(fields) == 1 and type(fields[0]) is int and out.total is None:
        out.total = fields[0]
    elif kind == "error" and fields and type(fields[0]) is str:
        out.error = fields[0][:MAX_TEXT]
    elif kind == "test" and len(fields) == 3 and out.total is not None:
        i, ok, why = fields
        if type(i) is int and 0 <= i < out.total and i not in out.tests and type(ok) is bool:
            out.tests[i] = (ok, str(why)[:MAX_TEXT])
    return True


# -- I/O -----------------------------------------------------------------------------------------


class AnswerProcess:
    """The answer's server, started on demand and restarted after a hang, a death or garbage.

    ``start(floor)`` launches a fresh process whose object ids begin at ``floor``. Never raises
    for the answer's faults: every request gets a reply.
    """

    def __init__(self, start: Callable[[int], LiveProcess], *, call_s: float) -> None:
        self._start = start
        self.call_s = call_s
        self.floor = 0
        self.restarts = 0
        self.events: list[str] = []
        self.failed: str | None = None
        self._proc: LiveProcess | None = None
        self._ready = False
        self._last: RunResult | None = None

    def begin(self) -> None:
        """Start the process now, so that it loads while the tests' process starts too."""
        if self._proc is None and self.failed is None:
            self._proc = self._start(self.floor)
            self._ready = False

    def _wait_ready(self, deadline: float) -> bool:
        assert self._proc is not None
        try:
            # The solution's own loading is under its alarm; on a loaded validator starting
            # the interpreter may take long: only the answer's whole budget bounds it.
            line = self._proc.read_line(deadline, 4096)
            msg = plain.loads(line)
        except (ChannelError, plain.PlainError) as exc:
            self._drop(f"did not start ({exc})")
            return False
        if msg == ["ready"]:
            self._ready = True
            return True
        if type(msg) is list and len(msg) == 2 and msg[0] == "failed" and type(msg[1]) is str:
            self.failed = msg[1][:MAX_TEXT]  # the solution itself raised: a restart would too
        else:
            self.failed = "the answer's process broke the protocol at start"
        self._drop(None)
        return False

    def ask(self, request: list[Any], deadline: float) -> list[Any]:
        """The answer's reply to ``request`` (already checked), by ``deadline`` at the latest."""
        seq = request[1]
        if self.failed is not None:
            return failure(seq, "AnswerError", self.failed)
        if self._proc is None:
            if self.restarts > MAX_RESTARTS:
                return failure(seq, "AnswerDied", "the answer's process was restarted too often")
            self.begin()
        if not self._ready and not self._wait_ready(deadline):
            if self.failed is not None:
                return failure(seq, "AnswerError", self.failed)
            return failure(seq, "AnswerDied", "the answer's process did not start")
        assert self._proc is not None
        call_deadline = min(deadline, time.monotonic() + self.call_s)
        try:
            self._proc.send(plain.dumps(request), call_deadline)
            line = self._proc.read_line(call_deadline, plain.MAX_BYTES)
            reply = check_reply(plain.loads(line), seq, self.floor)
        except ChannelError as exc:
            self._drop(exc.kind)
            if exc.kind == "timeout":
                return failure(seq, "AnswerTimeout", "the answer did not reply in time")
            return failure(seq, "AnswerDied", f"the answer's process died ({self._describe()})")
        except plain.PlainError as exc:
            self._drop(f"protocol: {exc}")
            return failure(seq, "AnswerError", f"the answer's reply was not plain data: {exc}")
        return reply

    def _describe(self) -> str:
        return self._last.describe() if self._last is not None else "unknown"

    def _drop(self, why: str | None) -> None:
        """End the current process; ``why`` (None: no restart will follow) goes to the events."""
        if self._proc is not None:
            self._last = self._proc.finish(grace_s=0.0)
            self._proc = None
        if why is not None:
            self.events.append(why)
        self.floor += ID_SPAN
        self.restarts += 1
        self._ready = False

    def close(self) -> RunResult | None:
        if self._proc is not None:
            self._last = self._proc.finish()
            self._proc = None
        return self._last


def relay(tests: LiveProcess, answer: AnswerProcess, deadline: float) -> Outcomes:
    """Carry the tests' requests to the answer until the tests' process ends or time is up."""
    out = Outcomes()
    answer.begin()
    while True:
        try:
            msg = plain.loads(tests.read_line(deadline, plain.MAX_BYTES))
        except (ChannelError, plain.PlainError):
            return out  # ended, out of time, or broken: unreported tests fail
        if note_report(msg, out):
            continue
        try:
            reply = answer.ask(check_request(msg, answer.floor), deadline)
        except plain.PlainError as exc:
            seq = msg[1] if type(msg) is list and len(msg) > 1 and type(msg[1]) is int else 0
            reply = failure(seq, "AnswerError", str(exc))
        try:
            tests.send(plain.dumps(reply), deadline)
        except (ChannelError, plain.PlainError):
            return out
