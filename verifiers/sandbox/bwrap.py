"""The bubblewrap runner: no network, read-only system, private tmpfs, kernel-enforced limits.

Each run is one ``bwrap`` invocation with every namespace unshared (so only a down loopback
network exists), nested user namespaces disabled, a read-only root holding ``/usr`` and a few
files of ``/etc`` (bound read-only), fresh ``/proc``, a read-only ``/dev`` (device nodes only),
size-capped tmpfs at ``/tmp`` and ``/dev/shm`` (the only writable places), the box at ``/box``,
an empty environment, and ``--die-with-parent``.
Nothing of the node's home (``~/.flopnet`` and its keys) is mounted. Inside, ``prlimit`` applies
CPU, address-space, process, file-size and core limits before exec'ing the program; the runner
enforces wall time by killing bwrap, and the pid namespace takes every process of the sandbox
(daemons included) down with it.

Memory is capped in TOTAL per run, in one of two modes (the sandbox's ``description`` names it):

* ``cgroup``: each run gets its own cgroup (:mod:`verifiers.sandbox.cgroups`, v2 or v1) whose
  ``memory.max`` is ``Limits.memory_mb`` for all its processes and tmpfs pages together and whose
  ``pids.max`` is ``Limits.processes``. Needs write access to the cgroup tree (root, or a
  delegated subtree).
* ``rlimit`` (the fallback): the program may not create processes at all, only threads
  (:mod:`verifiers.sandbox.seccomp`), so its memory is one address space (``RLIMIT_AS``) plus the
  ``/tmp`` and ``/dev/shm`` sizes. Build runs (trusted compilers, which fork) keep the per-process
  limits only.

Running as root: the kernel exempts uid 0 from ``RLIMIT_NPROC`` (a fork bomb would fill the
host's pid table), so untrusted programs run as an unprivileged uid (``sandbox_uid``, default
65534). Compilers (``build`` runs) run as the node's own uid because a toolchain such as rustup's
may live under a home directory that uid cannot traverse; they still run in the same sandbox.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import replace

from flopnet.verifiers.sandbox import seccomp
from flopnet.verifiers.sandbox.base import (
    BOX,
    SANDBOX_ENV,
    DirBox,
    Limits,
    MiB,
    RunResult,
    SandboxError,
    SandboxUnavailable,
)
from flopnet.verifiers.sandbox.cgroups import JOIN_FAILED, JOIN_MARK, Layout, RunGroup, detect
from flopnet.verifiers.sandbox.process import SETPRIV, PipeProcess, Spawn, as_user, run_process

INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)"
_SEARCH_PATH = "/usr/local/bin:/usr/bin:/bin"
_RUST_MOUNT = "/opt/rust"
_ETC_FILES = ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")
_TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def _system_mounts() -> list[str]:
    """``/usr`` read-only, the merged-/usr symlinks (or real dirs), the loader's /etc files."""
    args = ["--ro-bind", "/usr", "/usr"]
    for path in _TOP_LEVEL:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in _ETC_FILES:
        args += ["--ro-bind-try", path, path]
    return args


@functools.lru_cache(maxsize=1)
def _rust_sysroot() -> str | None:
    """The rustc toolchain directory when rustc lives outside /usr (rustup), else None."""
    rustc = shutil.which("rustc")
    if rustc is None or shutil.which("rustc", path=_SEARCH_PATH):
        return None
    try:
        out = subprocess.run(
            [rustc, "--print", "sysroot"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sysroot = out.stdout.strip()
    return sysroot if os.path.isfile(os.path.join(sysroot, "bin", "rustc")) else None


class BwrapSandbox:
    """Runs programs under bubblewrap; see the module docstring for the isolation it gives.

    ``memory_cap`` is ``"auto"`` (cgroups where this machine allows them, else rlimits),
    ``"cgroup"`` (required: SandboxUnavailable without) or ``"rlimit"``.
    """

    name = "bwrap"

    def __init__(
        self, *, sandbox_uid: int = 65534, bwrap: str | None = None, memory_cap: str = "auto"
    ) -> None:
        found = bwrap or shutil.which("bwrap")
        if found is None:
            raise SandboxUnavailable(f"bubblewrap (bwrap) not found: {INSTALL_HINT}")
        prlimit = shutil.which("prlimit", path=_SEARCH_PATH)
        if prlimit is None:
            raise SandboxUnavailable("prlimit not found under /usr: install util-linux")
        if memory_cap not in ("auto", "cgroup", "rlimit"):
            raise SandboxUnavailable(f"unknown memory cap mode {memory_cap!r}")
        self.bwrap = found
        self.prlimit = prlimit
        # Only root can (and must) switch uid; see the module docstring.
        self.run_uid: int | None = sandbox_uid if os.geteuid() == 0 else None
        self._system = _system_mounts()
        self.cgroups: Layout | None = None
        why = "rlimit mode chosen"
        if memory_cap != "rlimit":
            self.cgroups, why = detect()
            if self.cgroups is None and memory_cap == "cgroup":
                raise SandboxUnavailable(f"no usable cgroups for the sandbox: {why}")
        self.memory_mode = "cgroup" if self.cgroups is not None else "rlimit"
        self._filter = seccomp.one_process() if seccomp.supported() else None
        if self.cgroups is not None:
            self.description = (
                f"bwrap; memory and processes capped in total per run by a {self.cgroups.name} "
                "group"
            )
        elif self._filter is not None:
            self.description = (
                f"bwrap; no cgroups ({why}): one process per run (seccomp), memory capped by "
                "its address space, /tmp and /dev/shm size-capped"
            )
        else:
            self.description = (
                f"bwrap; no cgroups ({why}) and no seccomp filter for this machine: memory "
                "capped per process only (processes x memory)"
            )

    def has_tool(self, tool: str) -> bool:
        if tool == "rustc" and _rust_sysroot() is not None:
            return True
        return shutil.which(tool, path=_SEARCH_PATH) is not None

    def open_box(self) -> BwrapBox:
        return BwrapBox(self)

    def probe(self) -> None:
        """Run ``true`` in a sandbox; raise SandboxUnavailable saying why it does not work."""
        with self.open_box() as box:
            result = box.run(["true"], limits=Limits(wall_s=20, cpu_s=5))
        if result.exit_code != 0:
            detail = result.stderr.decode("utf-8", "replace").strip()[:300]
            raise SandboxUnavailable(
                f"bubblewrap does not work here ({detail or result.describe()}); it needs "
                "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
                "or an AppArmor profile allowing bwrap)"
            )

    def command(
        self,
        box_dir: str,
        argv: Sequence[str],
        limits: Limits,
        build: bool,
        seccomp_fd: int | None = None,
    ) -> list[str]:
        """The full bwrap command line for one run (public for tests and debugging)."""
        env = dict(SANDBOX_ENV)
        extra: list[str] = []
        sysroot = _rust_sysroot() if build else None
        if sysroot is not None:
            extra = ["--ro-bind", sysroot, _RUST_MOUNT]
            env["PATH"] = f"{_RUST_MOUNT}/bin:{env['PATH']}"
        if seccomp_fd is not None:
            extra += ["--seccomp", str(seccomp_fd)]
        args = [
            self.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            # Run by root, bwrap would leave the program every capability inside its namespaces.
            "--cap-drop",
            "ALL",
            "--hostname",
            "sandbox",
            *self._system,
            *extra,
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            # /dev is a tmpfs without a size: only its size-capped /dev/shm stays writable.
            "--size",
            str(limits.shm_mb * MiB),
            "--tmpfs",
            "/dev/shm",
            "--remount-ro",
            "/dev",
            "--size",
            str(limits.tmpfs_mb * MiB),
            "--tmpfs",
            "/tmp",
            "--bind" if build else "--ro-bind",
            box_dir,
            BOX,
            # bwrap builds the root on an unbounded tmpfs; left writable, files in / would fill
            # the host's memory. Only /tmp and /dev/shm (size-capped) stay writable.
            "--remount-ro",
            "/",
            "--chdir",
            "/tmp",
            "--clearenv",
        ]
        for key, value in env.items():
            args += ["--setenv", key, value]
        return [*args, "--", self.prlimit, *limits.prlimit_args(), "--", *argv]


def _signal_status(result: RunResult) -> RunResult:
    code = result.exit_code
    if 128 < code < 128 + 65:
        # bwrap reports a program killed by signal N as exit status 128 + N.
        return replace(result, exit_code=-(code - 128))
    return result


class _Launch:
    """What one run needs besides its command: its cgroup, its seccomp fd, its uid."""

    def __init__(self, sandbox: BwrapSandbox, limits: Limits, build: bool) -> None:
        self.group: RunGroup | None = None
        self.fd: int | None = None
        self.user = None if build else sandbox.run_uid
        if sandbox.cgroups is not None:
            self.group = sandbox.cgroups.create(limits.memory_mb * MiB, limits.processes)
        elif sandbox._filter is not None and not build:
            self.fd = os.memfd_create("flopnet-seccomp")
            os.write(self.fd, sandbox._filter)
            os.lseek(self.fd, 0, os.SEEK_SET)

    def spawn(self, command: list[str]) -> Spawn:
        """The command with its wrappers: join the group (as root), drop to the uid."""
        user = self.user
        if self.group is not None:
            argv, user = self.group.wrap(command, user), None
        elif user is not None and SETPRIV is not None:
            argv, user = as_user(command, user), None
        else:
            argv = command  # Popen switches the uid itself (slower: see as_user)
        fds = () if self.fd is None else (self.fd,)
        return Spawn(tuple(argv), {"PATH": _SEARCH_PATH}, user=user, pass_fds=fds)

    def started(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def finish(self, result: RunResult) -> RunResult:
        """The result with the group's figures; the group removed."""
        self.started()
        result = _signal_status(result)
        group, self.group = self.group, None
        if group is None:
            return result
        try:
            if result.exit_code == JOIN_FAILED and JOIN_MARK.encode() in result.stderr:
                raise SandboxError(result.stderr.decode("utf-8", "replace").strip()[-300:])
            return replace(result, memory_peak=group.peak(), oom_killed=group.oom_kills() > 0)
        finally:
            group.remove()


class BwrapBox(DirBox):
    """A host directory (0755, so the sandbox uid can read it) mounted at ``/box``."""

    def __init__(self, sandbox: BwrapSandbox) -> None:
        super().__init__("flopnet-box-", 0o755)
        self._sandbox = sandbox

    def run(
        self, argv: Sequence[str], *, limits: Limits, stdin: bytes = b"", build: bool = False
    ) -> RunResult:
        launch = _Launch(self._sandbox, limits, build)
        try:
            cmd = self._sandbox.command(str(self.path), argv, limits, build, launch.fd)
            result = run_process(launch.spawn(cmd), limits=limits, stdin=stdin)
        except BaseException:
            launch.finish(RunResult(-9, b"", b"", 0.0))
            raise
        return launch.finish(result)

    def start(self, argv: Sequence[str], *, limits: Limits) -> PipeProcess:
        """``argv`` running in the sandbox, its stdin and stdout on pipes (see LiveProcess)."""
        launch = _Launch(self._sandbox, limits, False)
        try:
            cmd = self._sandbox.command(str(self.path), argv, limits, False, launch.fd)
            process = PipeProcess(launch.spawn(cmd), limits=limits, on_finish=launch.finish)
        except BaseException:
            launch.finish(RunResult(-9, b"", b"", 0.0))
            raise
        launch.started()
        return process
