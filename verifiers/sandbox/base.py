"""What every sandbox runner shares: limits, run results, the box interface, the errors.

A *box* is one job's working directory, seen as ``/box`` inside the sandbox. Files are written
into it from outside; a ``build`` run (a trusted compiler) may write into it, every other run sees
it read-only and gets a fresh, size-capped ``/tmp`` as its working directory.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, Self

from flopnet.protocol.errors import VerifierError

#: Where the box appears inside every sandbox.
BOX = "/box"
#: Environment every sandboxed program gets (nothing from the node's own environment).
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONIOENCODING": "utf-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}
MiB = 1024 * 1024


class SandboxError(VerifierError):
    """A sandbox runner failed to run a program (not the program failing)."""


class SandboxUnavailable(SandboxError):
    """No sandbox that works on this machine; the message says what to install."""


class ChannelError(SandboxError):
    """Talking to a live sandboxed process failed: ``kind`` is "closed", "timeout" or "overflow"."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}{': ' + detail if detail else ''}")
        self.kind = kind


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run.

    ``cpu_s`` and ``wall_s`` bound time (CPU time is enforced by the kernel, wall time by the
    runner); ``memory_mb`` is the address-space limit; ``processes`` the number of processes and
    threads; ``output_bytes`` what is kept of stdout (more kills the program); ``file_bytes`` the
    largest file it may write (its stdout included); ``tmpfs_mb`` the size of its ``/tmp`` and
    ``shm_mb`` of its ``/dev/shm`` (runners that mount one).
    """

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    processes: int = 64
    output_bytes: int = 4 * MiB
    stderr_bytes: int = 64 * 1024
    file_bytes: int = 16 * MiB
    tmpfs_mb: int = 64
    shm_mb: int = 16

    def __post_init__(self) -> None:
        names = ("wall_s", "cpu_s", "memory_mb", "processes", "output_bytes", "tmpfs_mb", "shm_mb")
        for name in names:
            if getattr(self, name) <= 0:
                raise VerifierError(f"sandbox limit {name} must be positive")

    def with_(self, **changes: float | int) -> Limits:
        """A copy with some limits changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def prlimit_args(self) -> list[str]:
        """``prlimit`` options that apply these limits to the program (soft = hard)."""
        return [
            f"--nproc={self.processes}",
            f"--as={self.memory_mb * MiB}",
            f"--cpu={self.cpu_s}",
            f"--fsize={max(self.file_bytes, self.output_bytes + 1)}",
            "--core=0",
            "--nofile=256",
        ]


@dataclass(frozen=True)
class RunResult:
    """How one sandboxed run ended.

    ``exit_code`` is the program's status (negative: killed by that signal); ``timed_out`` means
    the runner killed it at the wall-time limit; ``output_exceeded`` that stdout passed
    ``output_bytes`` (only that many bytes are kept). Runners with a total memory cap (a cgroup)
    also say the run's peak (``memory_peak``, bytes) and whether the kernel killed a process of
    the run at that cap (``oom_killed``).
    """

    exit_code: int
    stdout: bytes
    stderr: bytes
    wall_s: float
    timed_out: bool = False
    output_exceeded: bool = False
    memory_peak: int | None = None
    oom_killed: bool = False

    @property
    def ok(self) -> bool:
        return (
            self.exit_code == 0
            and not self.timed_out
            and not self.output_exceeded
            and not self.oom_killed
        )

    def describe(self) -> str:
        """A short human reason for a failed run ("exit code 1", "CPU time limit", ...)."""
        if self.timed_out:
            return f"wall-time limit ({self.wall_s:.1f} s)"
        if self.oom_killed:
            return "memory limit (the run's total) exceeded"
        if self.output_exceeded or self.exit_code == -signal.SIGXFSZ:
            return "output/file size limit exceeded"
        if self.exit_code == -signal.SIGXCPU or self.exit_code == -signal.SIGKILL:
            # The kernel sends SIGXCPU, then SIGKILL, at the CPU limit.
            return "CPU time limit (or killed)"
        if self.exit_code < 0:
            try:
                return f"killed by {signal.Signals(-self.exit_code).name}"
            except ValueError:
                return f"killed by signal {-self.exit_code}"
        tail = self.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        detail = f": {tail[0][:200]}" if tail else ""
        return f"exit code {self.exit_code}{detail}"


class Box(Protocol):
    """One job's files and the runs over them (a context manager)."""

    def write(self, name: str, data: bytes) -> None:
        """Put a file at ``/box/<name>`` (name: a plain file name)."""

    def run(
        self, argv: Sequence[str], *, limits: Limits, stdin: bytes = b"", build: bool = False
    ) -> RunResult:
        """Run ``argv`` in the sandbox; ``build=True`` lets a trusted compiler write the box."""

    def close(self) -> None:
        """Remove the box and anything left of its runs."""

    # Runners that can keep a program running while the caller talks to it also have
    # ``start(argv, *, limits) -> LiveProcess`` (see :func:`can_start`); it is optional so that
    # runners without it keep working.

    def __enter__(self) -> Box: ...

    def __exit__(self, *exc: object) -> None: ...


class LiveProcess(Protocol):
    """A sandboxed program still running, talked to over its stdin and stdout (line by line).

    :meth:`Box.start`, where a runner has it, returns one. The caller bounds every exchange
    with a deadline and must call :meth:`finish`, which kills what is left.
    """

    def send(self, data: bytes, deadline: float) -> None:
        """Write ``data`` to its stdin by ``deadline`` (``time.monotonic()``); ChannelError else."""

    def read_line(self, deadline: float, cap: int) -> bytes:
        """Its next stdout line (newline stripped); ChannelError on EOF, deadline or > ``cap``."""

    def finish(self, grace_s: float = 0.5) -> RunResult:
        """Close its stdin, give it ``grace_s`` to exit, then kill what is left; how it ended."""


class Sandbox(Protocol):
    """A sandbox runner: a name, what tools it has, and boxes."""

    name: str

    def has_tool(self, tool: str) -> bool:
        """Whether the executable ``tool`` (python3, node, g++, rustc) runs in this sandbox."""

    def open_box(self) -> Box:
        """A new, empty box."""


def can_start(box: object) -> bool:
    """Whether ``box`` can start a live process (``start``); the Python relay needs one."""
    return callable(getattr(box, "start", None))


class DirBox:
    """A box kept in a host temporary directory (the bwrap and unsafe runners)."""

    #: File mode of written files (the bwrap runner's sandbox uid must be able to read them).
    file_mode = 0o644

    def __init__(self, prefix: str, dir_mode: int) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.path.chmod(dir_mode)

    def write(self, name: str, data: bytes) -> None:
        target = self.path / check_name(name)
        target.write_bytes(data)
        target.chmod(self.file_mode)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_name(name: str) -> str:
    """``name`` if it is a plain file name usable inside the box; VerifierError otherwise."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise VerifierError(f"bad file name for the sandbox box: {name!r}")
    return name
