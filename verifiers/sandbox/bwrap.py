"""The bubblewrap runner: no network, read-only system, private tmpfs, kernel-enforced limits.

Each run is one ``bwrap`` invocation with every namespace unshared (so only a down loopback
network exists), nested user namespaces disabled, a read-only root holding ``/usr`` and a few
files of ``/etc`` (bound read-only), fresh ``/proc`` and ``/dev``, a size-capped ``/tmp`` (the
only writable place), the box at ``/box``, an empty environment, and ``--die-with-parent``.
Nothing of the node's home (``~/.flopnet`` and its keys) is mounted. Inside, ``prlimit`` applies
CPU, address-space, process, file-size and core limits before exec'ing the program; the runner
enforces wall time by killing bwrap, and the pid namespace takes every process of the sandbox
(daemons included) down with it.

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

from flopnet.verifiers.sandbox.base import (
    BOX,
    SANDBOX_ENV,
    DirBox,
    Limits,
    RunResult,
    SandboxUnavailable,
)
from flopnet.verifiers.sandbox.process import run_process

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
    """Runs programs under bubblewrap; see the module docstring for the isolation it gives."""

    name = "bwrap"

    def __init__(self, *, sandbox_uid: int = 65534, bwrap: str | None = None) -> None:
        found = bwrap or shutil.which("bwrap")
        if found is None:
            raise SandboxUnavailable(f"bubblewrap (bwrap) not found: {INSTALL_HINT}")
        prlimit = shutil.which("prlimit", path=_SEARCH_PATH)
        if prlimit is None:
            raise SandboxUnavailable("prlimit not found under /usr: install util-linux")
        self.bwrap = found
        self.prlimit = prlimit
        # Only root can (and must) switch uid; see the module docstring.
        self.run_uid: int | None = sandbox_uid if os.geteuid() == 0 else None
        self._system = _system_mounts()

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

    def command(self, box_dir: str, argv: Sequence[str], limits: Limits, build: bool) -> list[str]:
        """The full bwrap command line for one run (public for tests and debugging)."""
        env = dict(SANDBOX_ENV)
        extra: list[str] = []
        sysroot = _rust_sysroot() if build else None
        if sysroot is not None:
            extra = ["--ro-bind", sysroot, _RUST_MOUNT]
            env["PATH"] = f"{_RUST_MOUNT}/bin:{env['PATH']}"
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
            "--size",
            str(limits.tmpfs_mb * 1024 * 1024),
            "--tmpfs",
            "/tmp",
            "--bind" if build else "--ro-bind",
            box_dir,
            BOX,
            # bwrap builds the root on an unbounded tmpfs; left writable, files in / would fill
            # the host's memory. Only /tmp (size-capped) stays writable.
            "--remount-ro",
            "/",
            "--chdir",
            "/tmp",
            "--clearenv",
        ]
        for key, value in env.items():
            args += ["--setenv", key, value]
        return [*args, "--", self.prlimit, *limits.prlimit_args(), "--", *argv]


class BwrapBox(DirBox):
    """A host directory (0755, so the sandbox uid can read it) mounted at ``/box``."""

    def __init__(self, sandbox: BwrapSandbox) -> None:
        super().__init__("flopnet-box-", 0o755)
        self._sandbox = sandbox

    def run(
        self, argv: Sequence[str], *, limits: Limits, stdin: bytes = b"", build: bool = False
    ) -> RunResult:
        cmd = self._sandbox.command(str(self.path), argv, limits, build)
        result = run_process(
            cmd,
            limits=limits,
            stdin=stdin,
            env={"PATH": _SEARCH_PATH},
            user=None if build else self._sandbox.run_uid,
            group=None if build else self._sandbox.run_uid,
        )
        code = result.exit_code
        if 128 < code < 128 + 65:
            # bwrap reports a program killed by signal N as exit status 128 + N.
            return replace(result, exit_code=-(code - 128))
        return result
