"""Running one sandbox process with a wall-time limit and capped output, and reaping orphans.

Output goes to files in a private directory (never to pipes read into memory): the program's
``RLIMIT_FSIZE`` makes an output flood stop at the cap with SIGXFSZ, and the runner reads back
at most the cap.

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
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from flopnet.verifiers.sandbox.base import Limits, RunResult, SandboxError

_PR_SET_CHILD_SUBREAPER = 36
_subreaper = False


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


def run_process(
    argv: Sequence[str],
    *,
    limits: Limits,
    stdin: bytes = b"",
    env: Mapping[str, str],
    cwd: str | None = None,
    user: int | None = None,
    group: int | None = None,
    kill_orphans: bool = False,
) -> RunResult:
    """Run ``argv`` to completion or to ``limits.wall_s``; never raises for the program's faults.

    ``user``/``group`` switch the process to that uid/gid before exec (the node runs as root);
    ``kill_orphans`` kills any adopted descendant still alive afterwards (the unsandboxed runner's
    only defence against left-over daemons).
    """
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
            extra: dict[str, object] = {}
            if user is not None:
                extra = {"user": user, "group": group, "extra_groups": []}
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=fin,
                    stdout=fout,
                    stderr=ferr,
                    env=dict(env),
                    cwd=cwd,
                    close_fds=True,
                    start_new_session=True,  # Ctrl-C on the node must not reach the sandbox
                    **extra,  # type: ignore[call-overload]
                )
            except OSError as exc:
                raise SandboxError(f"cannot start {argv[0]!r}: {exc}") from None
            timed_out = False
            try:
                code = proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.kill()
                code = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        wall = time.monotonic() - started
        stdout, exceeded = _read_capped(out_path, limits.output_bytes)
        stderr, _ = _read_capped(err_path, limits.stderr_bytes)
    reap_orphans(kill=kill_orphans)
    return RunResult(
        exit_code=code,
        stdout=stdout,
        stderr=stderr,
        wall_s=wall,
        timed_out=timed_out,
        output_exceeded=exceeded,
    )
