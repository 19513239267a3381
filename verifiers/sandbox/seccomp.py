"""A seccomp filter that makes a sandboxed program ONE process: the rlimit fallback's total cap.

Without cgroups the kernel caps memory per process (``RLIMIT_AS``), so N processes may hold N
times the cap. This filter, handed to bubblewrap (``--seccomp FD``), lets the program start
threads (``clone`` with ``CLONE_THREAD``: they share its address space) but not processes
(``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD``: EPERM; ``clone3``, whose flags a filter
cannot read: ENOSYS, so the C library falls back to ``clone``). It also refuses the ways to hold
memory outside the address space and outside a size-capped tmpfs: ``memfd_create``,
``memfd_secret`` and SysV ``shmget`` (EPERM). Then the program's memory is at most its address
space plus the tmpfs sizes, whatever it does.

The filter is classic BPF built here (no libseccomp needed), for x86-64 and arm64; another
architecture, or a 32-bit/x32 system call on x86-64, is refused the same way.
"""

from __future__ import annotations

import errno
import platform
import struct

# <linux/filter.h>, <linux/seccomp.h>, <linux/audit.h>
_LD_ABS_W = 0x20
_JEQ = 0x15
_JGE = 0x35
_JSET = 0x45
_RET = 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_KILL_PROCESS = 0x80000000
CLONE_THREAD = 0x00010000
_X32_BIT = 0x40000000

#: (audit arch, system call numbers) per machine.
ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {
            "clone": 56,
            "fork": 57,
            "vfork": 58,
            "shmget": 29,
            "memfd_create": 319,
            "clone3": 435,
            "memfd_secret": 447,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {"clone": 220, "shmget": 194, "memfd_create": 279, "clone3": 435, "memfd_secret": 447},
    ),
}
_REFUSED = ("fork", "vfork", "shmget", "memfd_create", "memfd_secret")


def supported() -> bool:
    return platform.machine() in ARCHES


def _program(machine: str) -> list[tuple[int, int | str, int | str, int]]:
    """(code, jump-if-true, jump-if-false, k), jumps as labels that :func:`one_process` resolves."""
    arch, nr = ARCHES[machine]
    prog: list[tuple[int, int | str, int | str, int]] = [
        (_LD_ABS_W, 0, 0, 4),  # seccomp_data.arch
        (_JEQ, 0, "kill", arch),
        (_LD_ABS_W, 0, 0, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":
        prog.append((_JGE, "eperm", 0, _X32_BIT))
    for name in _REFUSED:
        if name in nr:
            prog.append((_JEQ, "eperm", 0, nr[name]))
    prog.append((_JEQ, "enosys", 0, nr["clone3"]))
    prog.append((_JEQ, 0, "allow", nr["clone"]))
    prog.append((_LD_ABS_W, 0, 0, 16))  # low 32 bits of args[0] (little-endian): the flags
    prog.append((_JSET, "allow", "eperm", CLONE_THREAD))
    return prog


def one_process() -> bytes:
    """The filter for this machine, as the bytes of a ``struct sock_filter`` array."""
    machine = platform.machine()
    if machine not in ARCHES:
        raise OSError(f"no seccomp filter for {machine}")
    prog = _program(machine)
    returns = {
        "allow": RET_ALLOW,
        "eperm": RET_ERRNO | errno.EPERM,
        "enosys": RET_ERRNO | errno.ENOSYS,
        "kill": RET_KILL_PROCESS,
    }
    labels = {name: len(prog) + i for i, name in enumerate(returns)}
    out = bytearray()
    for pc, (code, jt, jf, k) in enumerate(prog):
        # Jump offsets count from the next instruction.
        t = labels[jt] - pc - 1 if isinstance(jt, str) else jt
        f = labels[jf] - pc - 1 if isinstance(jf, str) else jf
        out += struct.pack("=HBBI", code, t, f, k)
    for value in returns.values():
        out += struct.pack("=HBBI", _RET, 0, 0, value)
    return bytes(out)
