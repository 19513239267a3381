"""Running programs with no sandbox at all: only with an explicit unsafe flag.

The program runs as the node's own user with the node's file system and network. What remains:
``prlimit`` limits (CPU, memory, file size; the process limit counts every process of the user,
so it is left to the wall-time kill), an empty environment, a throw-away working directory, and,
when the process is a subreaper, the killing of left-over descendants after each run. That stops
accidents (an infinite loop, an output flood), not attacks.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence

from flopnet.verifiers.sandbox.base import BOX, SANDBOX_ENV, DirBox, Limits, RunResult
from flopnet.verifiers.sandbox.process import PipeProcess, Spawn, run_process

WARNING = (
    "running untrusted code WITHOUT a sandbox: it can read the node's keys, use the network "
    "and write files as the node's user"
)


class UnsafeSandbox:
    """No isolation; see the module docstring."""

    name = "unsafe"

    def __init__(self) -> None:
        self.prlimit = shutil.which("prlimit")

    def has_tool(self, tool: str) -> bool:
        return shutil.which(tool) is not None

    def open_box(self) -> UnsafeBox:
        return UnsafeBox(self)


class UnsafeBox(DirBox):
    """A temporary directory; ``/box`` in command lines is rewritten to its real path."""

    def __init__(self, sandbox: UnsafeSandbox) -> None:
        super().__init__("flopnet-unsafe-box-", 0o700)
        self._sandbox = sandbox

    def _real(self, arg: str) -> str:
        if arg == BOX or arg.startswith(BOX + "/"):
            return str(self.path) + arg[len(BOX) :]
        return arg

    def _spawn(self, argv: Sequence[str], limits: Limits, cwd: str) -> Spawn:
        cmd = [self._real(a) for a in argv]
        if self._sandbox.prlimit:
            # No --nproc: unsandboxed, it would count all of the user's processes.
            opts = [o for o in limits.prlimit_args() if not o.startswith("--nproc")]
            cmd = [self._sandbox.prlimit, *opts, "--", *cmd]
        env = dict(SANDBOX_ENV, HOME=cwd)
        return Spawn(tuple(cmd), env, cwd=cwd, kill_orphans=True)

    def run(
        self, argv: Sequence[str], *, limits: Limits, stdin: bytes = b"", build: bool = False
    ) -> RunResult:
        with tempfile.TemporaryDirectory(prefix="flopnet-unsafe-cwd-") as cwd:
            return run_process(self._spawn(argv, limits, cwd), limits=limits, stdin=stdin)

    def start(self, argv: Sequence[str], *, limits: Limits) -> PipeProcess:
        """``argv`` running with its stdin and stdout on pipes (no isolation: see the module)."""
        cwd = tempfile.TemporaryDirectory(prefix="flopnet-unsafe-cwd-")

        def done(result: RunResult) -> RunResult:
            cwd.cleanup()
            return result

        try:
            return PipeProcess(self._spawn(argv, limits, cwd.name), limits=limits, on_finish=done)
        except BaseException:
            cwd.cleanup()
            raise
