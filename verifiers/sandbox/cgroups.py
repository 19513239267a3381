"""One cgroup per sandboxed run: a TOTAL memory and process cap for everything the run starts.

Rlimits are per process; a cgroup counts every process of the run together, its tmpfs pages
(``/tmp``, ``/dev/shm``, memfd, SysV shm) and its kernel memory included. :func:`detect` finds
what this machine allows, in this order:

* **cgroup v2** with the ``memory`` and ``pids`` controllers: run groups are created beside the
  node's own cgroup (cgroup v2 keeps processes in leaves only, so not below it), or below the root
  when the node sits in the root; ``memory.max``, ``memory.swap.max = 0``, ``memory.oom.group``
  and ``pids.max`` are set, and the peak comes from ``memory.peak``.
* **cgroup v1** with the ``memory`` and ``pids`` hierarchies mounted (hybrid hosts, this
  project's development VMs): run groups below the node's own cgroup in each hierarchy, with
  ``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes`` (when swap is accounted) and
  ``pids.max``; the peak is ``memory.max_usage_in_bytes``.

Anything else (no write access: a node not run as root and without a delegated subtree, a
container without its cgroup) returns None with the reason, and the runner falls back to
rlimits (see :mod:`verifiers.sandbox.bwrap`).

A process joins its group before it execs the sandbox: :meth:`RunGroup.wrap` prefixes the command
with a shell that writes ``0`` (itself) into each ``cgroup.procs`` and, when the sandbox runs as
another uid, ``setpriv`` to drop to it. Joining from the inside leaves no window in which the
program runs (and forks) outside the group.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flopnet.verifiers.sandbox.base import SandboxError
from flopnet.verifiers.sandbox.process import SETPRIV, as_user

PREFIX = "flopnet-run-"
#: Exit status of the join wrapper when it cannot enter the cgroup (stderr says so too).
JOIN_FAILED = 125
JOIN_MARK = "flopnet: cannot join the run's cgroup"
_JOIN = (
    'for f do [ "$f" = -- ] && break; echo 0 >"$f" || { echo "' + JOIN_MARK + '" >&2; '
    f'exit {JOIN_FAILED}; }}; shift; done; shift; exec "$@"'
)
_counter = itertools.count()


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _stat_field(text: str | None, key: str) -> int:
    """``key N`` from a flat-keyed cgroup file (memory.events, memory.oom_control)."""
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


@dataclass(frozen=True)
class Layout:
    """Where run groups go: ``version`` 1 or 2, the parent directory per hierarchy."""

    version: int
    parents: tuple[Path, ...]
    #: This process's own cgroup directories (where :meth:`RunGroup.leave` returns it).
    home: tuple[Path, ...]

    @property
    def name(self) -> str:
        return f"cgroup v{self.version}"

    def create(self, memory_bytes: int, pids: int) -> RunGroup:
        """A new group with these caps; SandboxError if the kernel refuses it."""
        name = f"{PREFIX}{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"
        dirs = tuple(parent / name for parent in self.parents)
        group = RunGroup(self, dirs)
        try:
            for d in dirs:
                d.mkdir()
            group.set_limits(memory_bytes, pids)
        except OSError as exc:
            group.remove()
            raise SandboxError(f"cannot set up a {self.name} group for the run: {exc}") from None
        return group


class RunGroup:
    """One run's cgroup (one directory per hierarchy). Remove it once its processes are gone."""

    def __init__(self, layout: Layout, dirs: tuple[Path, ...]) -> None:
        self.layout = layout
        self.dirs = dirs

    def _file(self, name: str) -> Path:
        """``name`` in whichever of the group's directories has it."""
        for d in self.dirs:
            if (d / name).exists():
                return d / name
        return self.dirs[0] / name

    def set_limits(self, memory_bytes: int, pids: int) -> None:
        if self.layout.version == 2:
            settings = [("memory.max", memory_bytes), ("memory.swap.max", 0)]
            settings += [("memory.oom.group", 1), ("pids.max", pids)]
        else:
            settings = [("memory.limit_in_bytes", memory_bytes)]
            settings += [("memory.memsw.limit_in_bytes", memory_bytes), ("pids.max", pids)]
        for name, value in settings:
            path = self._file(name)
            if path.exists() or name in ("memory.max", "memory.limit_in_bytes", "pids.max"):
                path.write_text(str(value))

    def wrap(self, argv: Sequence[str], uid: int | None) -> list[str]:
        """``argv`` run so that it starts inside this group (as ``uid`` when given)."""
        procs = [str(d / "cgroup.procs") for d in self.dirs]
        inner = list(argv) if uid is None else as_user(argv, uid)
        return ["/bin/sh", "-c", _JOIN, "sh", *procs, "--", *inner]

    def peak(self) -> int | None:
        """Most memory the group used at once, in bytes (None where the kernel does not say)."""
        name = "memory.peak" if self.layout.version == 2 else "memory.max_usage_in_bytes"
        text = _read(self._file(name))
        return int(text) if text and text.strip().isdigit() else None

    def oom_kills(self) -> int:
        """How many processes the kernel killed for the group's memory cap."""
        if self.layout.version == 2:
            return _stat_field(_read(self._file("memory.events")), "oom_kill")
        return _stat_field(_read(self._file("memory.oom_control")), "oom_kill")

    def enter(self) -> None:
        """Move the calling process into the group (to measure what it and its children take;
        its memory already charged stays where it was)."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text("0")

    def leave(self) -> None:
        """Move the calling process back to its own cgroup."""
        for d in self.layout.home:
            (d / "cgroup.procs").write_text("0")

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs:
            text = _read(d / "cgroup.procs") or ""
            found.update(int(p) for p in text.split() if p.isdigit())
        return sorted(found)

    def kill(self) -> None:
        """SIGKILL everything in the group (the pid namespace normally took it down already)."""
        kill_file = self.dirs[0] / "cgroup.kill"
        if self.layout.version == 2 and kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
            return
        for _ in range(20):  # a process may fork between our read and our kill
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)

    def remove(self) -> bool:
        """Kill what is left and remove the directories; False if one stays (busy)."""
        self.kill()
        removed = True
        for d in self.dirs:
            for attempt in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    # Killed processes leave their cgroup a moment after SIGKILL.
                    if attempt == 99:
                        removed = False
                    time.sleep(0.01)
        return removed


# -- detection -----------------------------------------------------------------------------------


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root, fs type, options) of each cgroup mount, from /proc/self/mountinfo."""
    found = []
    for line in (_read(Path("/proc/self/mountinfo")) or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or not tail[0].startswith("cgroup"):
            continue
        options = set(tail[2].split(",")) | set(fields[5].split(",") if len(fields) > 5 else ())
        found.append((fields[4], fields[3], tail[0], options))
    return found


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) → this process's cgroup path, from /proc/self/cgroup."""
    paths = {}
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _join(mount: str, root: str, path: str) -> Path | None:
    """The directory of cgroup ``path`` under a mount of hierarchy ``root``."""
    if root != "/" and not (path == root or path.startswith(root + "/")):
        return None
    relative = path[len(root) :] if root != "/" else path
    directory = Path(mount) / relative.lstrip("/")
    return directory if directory.is_dir() else None


def _v2() -> tuple[Layout | None, str]:
    mount = next((m for m in _mounts() if m[2] == "cgroup2"), None)
    own = _own_paths().get("")
    if mount is None or own is None:
        return None, "no cgroup v2 mount"
    available = (_read(Path(mount[0]) / "cgroup.controllers") or "").split()
    if not {"memory", "pids"} <= set(available):
        return None, f"cgroup v2 lacks memory/pids (has: {' '.join(available) or 'none'})"
    here = _join(mount[0], mount[1], own)
    if here is None:
        return None, "this process's cgroup v2 directory is not visible"
    parent = here if own == "/" else here.parent
    enabled = set((_read(parent / "cgroup.subtree_control") or "").split())
    try:
        if not {"memory", "pids"} <= enabled:
            (parent / "cgroup.subtree_control").write_text("+memory +pids")
    except OSError as exc:
        return None, f"cannot enable memory/pids below {parent}: {exc.strerror}"
    return Layout(2, (parent,), (here,)), ""


def _v1() -> tuple[Layout | None, str]:
    own = _own_paths()
    parents: list[Path] = []
    for controller in ("memory", "pids"):
        mount = next((m for m in _mounts() if m[2] == "cgroup" and controller in m[3]), None)
        if mount is None or controller not in own:
            return None, f"no cgroup v1 {controller} hierarchy"
        here = _join(mount[0], mount[1], own[controller])
        if here is None:
            return None, f"this process's cgroup v1 {controller} directory is not visible"
        parents.append(here)
    return Layout(1, tuple(parents), tuple(parents)), ""


def _clean_stale(layout: Layout) -> None:
    """Remove empty run groups left by processes that died before removing them."""
    for parent in layout.parents:
        with contextlib.suppress(OSError):
            for entry in parent.iterdir():
                if not entry.name.startswith(PREFIX):
                    continue
                pid = entry.name[len(PREFIX) :].split("-")[0]
                if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                    with contextlib.suppress(OSError):
                        entry.rmdir()


def detect() -> tuple[Layout | None, str]:
    """The cgroup layout run groups can use here, or (None, why not)."""
    if SETPRIV is None:
        return None, "setpriv (util-linux) not found"
    reasons = []
    for probe in (_v2, _v1):
        layout, why = probe()
        if layout is None:
            reasons.append(why)
            continue
        try:  # a trial group: write access and the limit files, not just their presence
            layout.create(64 * 1024 * 1024, 8).remove()
        except SandboxError as exc:
            reasons.append(str(exc))
            continue
        _clean_stale(layout)
        return layout, ""
    return None, "; ".join(reasons)
