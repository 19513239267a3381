"""Running one sandbox process with a wall-time limit and capped output, and reaping orphans.

:func:`run_process` runs a program to its end. Its output goes to files in a private directory
(never to pipes read into memory): the program's ``RLIMIT_FSIZE`` makes an output flood stop at
the cap with SIGXFSZ, and the runner reads back at most the cap. :class:`PipeProcess` keeps a
program running and talks to it line by line (the Python relay's two sides); what it reads is
bounded per line, and every wait has a deadline.

Orphans: on some hosts every bwrap run leaves an orphan that init reaps late, and zombies count
against the process limit (facts.md measured 14–80 % of runs failing with EAGAIN). A process
that calls :func:`become_subreaper` adopts its descendants' orphans and :func:`run_process` reaps
them after each run. Only a process that runs nothing but sandboxes should do that (a verifier
pool child): reaping with ``waitpid(-1)`` elsewhere could steal another component's child.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flopnet.verifiers.sandbox.base import ChannelError, Limits, RunResult, SandboxError

_PR_SET_CHILD_SUBREAPER = 36
_subreaper = False
#: util-linux's setpriv, to drop from root to the sandbox uid in the child.
SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")


def as_user(argv: Sequence[str], uid: int) -> list[str]:
    """``argv`` run as ``uid`` (gid ``uid``, no supplementary groups), through setpriv.

    Cheaper than ``Popen(user=...)``: that makes Python fork the whole calling process (page
    tables and all: a verifier child holds sympy), where a plain Popen can use vfork.
    """
    if SETPRIV is None:
        raise SandboxError("setpriv (util-linux) not found")
    return [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]


def become_subreaper() -> bool:
    """Make this process adopt orphaned descendants (Linux prctl); True when it took effect."""
    global _subreaper
    if _subreaper:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        _subreaper = False
    return _subreaper


def is_subreaper() -> bool:
    return _subreaper


def _adopted_children() -> list[int]:
    """Pids whose parent is this process (orphans adopted as a subreaper, among others)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(entry))
    return found


def reap_orphans(kill: bool = False) -> int:
    """Reap exited adopted children; with ``kill``, SIGKILL live ones first. Returns the count.

    Does nothing unless this process is a subreaper (see the module docstring).
    """
    if not _subreaper:
        return 0
    if kill:
        for pid in _adopted_children():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    reaped = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped += 1


def _read_capped(path: Path, cap: int) -> tuple[bytes, bool]:
    with path.open("rb") as fh:
        data = fh.read(cap + 1)
    return data[:cap], len(data) > cap


@dataclass(frozen=True)
class Spawn:
    """How to start one program: its command line, environment, directory and uid.

    ``user`` switches the process to that uid and gid before exec (prefer :func:`as_user`);
    ``pass_fds`` stay open in it; ``kill_orphans`` kills any adopted descendant still alive after
    it (the unsandboxed runner's only defence against left-over daemons).
    """

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None = None
    user: int | None = None
    pass_fds: tuple[int, ...] = ()
    kill_orphans: bool = False

    def popen(self, stdin: Any, stdout: Any, stderr: Any) -> subprocess.Popen[bytes]:
        extra: dict[str, object] = {}
        if self.user is not None:
            extra = {"user": self.user, "group": self.user, "extra_groups": []}
        try:
            return subprocess.Popen(
                list(self.argv),
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=dict(self.env),
                cwd=self.cwd,
                close_fds=True,
                pass_fds=self.pass_fds,
                start_new_session=True,  # Ctrl-C on the node must not reach the sandbox
                **extra,  # type: ignore[call-overload]
            )
        except OSError as exc:
            raise SandboxError(f"cannot start {self.argv[0]!r}: {exc}") from None


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """``proc.wait(timeout)`` woken by the exit itself: Popen's own wait polls with sleeps that
    grow to 50 ms, which cost a short sandbox run up to a third of its time."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # no pidfd (Linux < 5.3), or already reaped
        return proc.wait(timeout)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout)
            poller.poll(left * 1000)
        return proc.returncode
    finally:
        os.close(fd)


def _kill(proc: subprocess.Popen[bytes]) -> int:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()
    return proc.wait()


def run_process(spawn: Spawn, *, limits: Limits, stdin: bytes = b"") -> RunResult:
    """Run ``spawn`` to its end or to ``limits.wall_s``; never raises for the program's faults."""
    with tempfile.TemporaryDirectory(prefix="flopnet-io-") as io_dir:
        io = Path(io_dir)
        (io / "stdin").write_bytes(stdin)
        out_path, err_path = io / "stdout", io / "stderr"
        started = time.monotonic()
        with (
            (io / "stdin").open("rb") as fin,
            out_path.open("wb") as fout,
            err_path.open("wb") as ferr,
        ):
            proc = spawn.popen(fin, fout, ferr)
            timed_out = False
            try:
                code = _wait(proc, limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                code = _kill(proc)
            except BaseException:
                _kill(proc)
                raise
        wall = time.monotonic() - started
        stdout, exceeded = _read_capped(out_path, limits.output_bytes)
        stderr, _ = _read_capped(err_path, limits.stderr_bytes)
    reap_orphans(kill=spawn.kill_orphans)
    return RunResult(
        exit_code=code,
        stdout=stdout,
        stderr=stderr,
        wall_s=wall,
        timed_out=timed_out,
        output_exceeded=exceeded,
    )


class PipeProcess:
    """A live sandboxed process on pipes (the :class:`~.base.LiveProcess` of the local runners).

    Its stdout is read in lines into a bounded buffer (a flood is an overflow, never memory);
    stderr goes to a capped file. ``on_finish`` lets the runner amend the result (exit statuses,
    its cgroup's figures) and release what it holds once the process is gone.
    """

    def __init__(
        self,
        spawn: Spawn,
        *,
        limits: Limits,
        on_finish: Callable[[RunResult], RunResult] | None = None,
    ) -> None:
        self._limits = limits
        self._kill_orphans = spawn.kill_orphans
        self._on_finish = on_finish
        self._io = tempfile.TemporaryDirectory(prefix="flopnet-io-")
        self._err_path = Path(self._io.name) / "stderr"
        self._buffer = bytearray()
        self._result: RunResult | None = None
        self.started = time.monotonic()
        try:
            with self._err_path.open("wb") as ferr:
                self._proc = spawn.popen(subprocess.PIPE, subprocess.PIPE, ferr)
        except BaseException:
            self._io.cleanup()
            raise
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in = self._proc.stdin.fileno()
        self._out = self._proc.stdout.fileno()
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        poller = select.poll()
        poller.register(fd, event)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChannelError("timeout")
            if poller.poll(left * 1000):
                return

    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._in, view)
            except BlockingIOError:
                self._wait(self._in, select.POLLOUT, deadline)
                continue
            except (BrokenPipeError, ValueError, OSError):
                raise ChannelError("closed", "the process stopped reading") from None
            view = view[written:]

    def read_line(self, deadline: float, cap: int) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > cap:
                raise ChannelError("overflow", f"a line longer than {cap} bytes")
            try:
                chunk = os.read(self._out, 1 << 16)
            except BlockingIOError:
                self._wait(self._out, select.POLLIN, deadline)
                continue
            if not chunk:
                raise ChannelError("closed", "the process closed its output")
            self._buffer += chunk

    def finish(self, grace_s: float = 0.5) -> RunResult:
        if self._result is not None:
            return self._result
        proc = self._proc
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        killed = False
        try:
            code = _wait(proc, grace_s)
        except subprocess.TimeoutExpired:
            killed = True
            code = _kill(proc)
        assert proc.stdout is not None
        proc.stdout.close()
        stderr, _ = _read_capped(self._err_path, self._limits.stderr_bytes)
        self._io.cleanup()
        reap_orphans(kill=self._kill_orphans)
        result = RunResult(
            exit_code=code,
            stdout=b"",
            stderr=stderr,
            wall_s=time.monotonic() - self.started,
            timed_out=killed,
        )
        self._result = self._on_finish(result) if self._on_finish else result
        return self._result
