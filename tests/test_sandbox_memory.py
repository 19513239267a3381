"""An answer cannot take the host's memory: the cap is a TOTAL per run, in both memory modes.

Real attack programs run under bubblewrap the way production runs them (in a verifier pool
child, which is a subreaper): many processes each allocating, filling ``/dev/shm``, ``/tmp`` and
memfds, forking until refused. What they took is measured by the kernel's own accounting:

* ``cgroup`` mode: the run's cgroup peak (``memory.max_usage_in_bytes`` / ``memory.peak``)
  must stay within ``memory_mb``; the kernel kills inside the run, never outside it.
* ``rlimit`` mode (no cgroups): the run is one process, so the total is its address space plus
  the tmpfs sizes. Where cgroups exist at all (root here) the test measures that with an
  observing cgroup around the run; elsewhere it checks the refusals and the fill limits only.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from flopnet.verifiers.pool import VerifierPool

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

MiB = 1024 * 1024
LIMITS = {"memory_mb": 256, "processes": 32, "tmpfs_mb": 64, "shm_mb": 16, "wall_s": 30.0}
#: What the kernel charges a run beyond its pages (page tables, kernel stacks, tmpfs inodes).
SLACK_MB = 48

# The attack programs (benchmarks/sandbox_bench.py runs them at full size): templates for
# str.format, sizes in MiB.
FORK_MEMORY = """
import os, time
kids = 0
for i in range({processes}):
    try:
        pid = os.fork()
    except OSError as exc:
        print("fork refused", exc.errno)
        break
    if pid == 0:
        b = bytearray({mib} * 2**20)
        for j in range(0, len(b), 4096):
            b[j] = 1
        time.sleep(2)
        os._exit(0)
    kids += 1
for _ in range(kids):
    os.wait()
print("children", kids)
"""
#: Files (memfds where path is None) of 8 MiB, each under the file-size limit, up to ``mib``.
FILL = """
import os
path, written = {path!r}, 0
try:
    while written < {mib}:
        if path is None:
            fd = os.memfd_create("fill")
        else:
            fd = os.open(path + str(written), os.O_CREAT | os.O_WRONLY)
        for _ in range(8):
            os.write(fd, b"z" * 2**20)
            written += 1
except OSError as exc:
    print("stopped", exc.errno)
print("written", written)
"""
PROCESSES = """
import os, time
n = 0
try:
    while n < 5000:
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        n += 1
except OSError as exc:
    print("fork refused", exc.errno)
print("processes", n)
"""
EVERYTHING = """
import os
for path in [f"/tmp/a{i}" for i in range(6)] + ["/dev/shm/b"]:
    with open(path, "wb") as fh:  # 10 MiB each: under the file-size limit
        for _ in range(10):
            fh.write(b"x" * 2**20)
b = bytearray(200 * 2**20)  # within the address-space limit alone
for j in range(0, len(b), 4096):
    b[j] = 1
print("all held")
"""


def _job_attack(mode: str, source: str, limits: dict[str, Any]) -> dict[str, Any]:
    """Run ``source`` in a ``mode`` sandbox; in rlimit mode inside an observing cgroup."""
    from flopnet.verifiers.sandbox.base import Limits
    from flopnet.verifiers.sandbox.bwrap import BwrapSandbox
    from flopnet.verifiers.sandbox.cgroups import detect
    from flopnet.verifiers.sandbox.process import become_subreaper

    become_subreaper()
    sandbox = BwrapSandbox(memory_cap=mode)
    observer = None
    if mode == "rlimit":
        layout, _ = detect()
        if layout is not None:
            # A safety net too: if the sandbox leaked, the test still cannot hurt the host.
            observer = layout.create(2048 * MiB, 4096)
            observer.enter()
    try:
        with sandbox.open_box() as box:
            box.write("main.py", source.encode())
            r = box.run(["python3", "-I", "-S", "/box/main.py"], limits=Limits(**limits))
    finally:
        observed = None
        if observer is not None:
            observer.leave()
            observed = observer.peak()
            observer.remove()
    return {
        "mode": sandbox.memory_mode,
        "description": sandbox.description,
        "out": r.stdout.decode("utf-8", "replace"),
        "describe": r.describe(),
        "peak": r.memory_peak,
        "oom": r.oom_killed,
        "observed": observed,
    }


@pytest.fixture(scope="module")
def pool() -> Iterator[VerifierPool]:
    with VerifierPool(2, max_jobs_per_worker=None) as p:
        yield p


@pytest.fixture(scope="module", params=["cgroup", "rlimit"])
def mode(request: pytest.FixtureRequest) -> str:
    from flopnet.verifiers.sandbox.cgroups import detect

    if request.param == "cgroup" and detect()[0] is None:
        pytest.skip(f"no usable cgroups here: {detect()[1]}")
    return str(request.param)


def _attack(pool: VerifierPool, mode: str, source: str, **limits: Any) -> dict[str, Any]:
    result: dict[str, Any] = pool.call(
        _job_attack, mode, textwrap.dedent(source), {**LIMITS, **limits}, timeout=120
    )
    assert result["mode"] == mode and mode in result["description"]
    return result


def _total_mb(r: dict[str, Any]) -> float | None:
    """What the run took in all, by the kernel's accounting (None where it cannot be seen)."""
    taken = r["peak"] if r["mode"] == "cgroup" else r["observed"]
    return None if taken is None else taken / MiB


def _bound_mb(mode: str) -> int:
    """cgroup: the cap itself; rlimit: one address space plus the two tmpfs."""
    if mode == "cgroup":
        return LIMITS["memory_mb"]
    return LIMITS["memory_mb"] + LIMITS["tmpfs_mb"] + LIMITS["shm_mb"] + SLACK_MB


def test_many_processes_allocating_stay_under_the_total(pool: VerifierPool, mode: str) -> None:
    # 7 processes x 200 MiB: per-process limits alone would let them hold 1.4 GiB.
    r = _attack(pool, mode, FORK_MEMORY.format(processes=7, mib=200))
    total = _total_mb(r)
    if mode == "cgroup":
        assert r["oom"] and total is not None and total <= _bound_mb(mode), r
    else:
        assert "fork refused 1" in r["out"], r  # EPERM: one process, threads only
    assert total is None or total <= _bound_mb(mode), r


@pytest.mark.parametrize(("path", "cap"), [("/dev/shm/fill", "shm_mb"), ("/tmp/fill", "tmpfs_mb")])
def test_tmpfs_fills_stop_at_their_size(pool: VerifierPool, mode: str, path: str, cap: str) -> None:
    r = _attack(pool, mode, FILL.format(path=path, mib=4096))
    assert "stopped 28" in r["out"], r  # ENOSPC
    written = int(r["out"].split("written ")[1].split()[0])
    assert written <= LIMITS[cap], r
    total = _total_mb(r)
    assert total is None or total <= _bound_mb(mode), r


def test_memfds_cannot_hold_memory_outside_the_cap(pool: VerifierPool, mode: str) -> None:
    # memfds of 8 MiB (each under the file-size limit): 3 GiB if nothing counted them.
    r = _attack(pool, mode, FILL.format(path=None, mib=3072))
    if mode == "rlimit":
        assert "stopped 1" in r["out"] and "written 0" in r["out"], r  # refused outright
    else:
        assert r["oom"] and "written" not in r["out"], r  # killed at the cap
    total = _total_mb(r)
    assert total is None or total <= _bound_mb(mode), r


def test_process_count_is_capped(pool: VerifierPool, mode: str) -> None:
    r = _attack(pool, mode, PROCESSES)
    count = int(r["out"].split("processes ")[1].split()[0])
    assert count < LIMITS["processes"], r
    if mode == "rlimit":
        assert count == 0, r


def test_memory_and_tmpfs_together_count_in_one_total(pool: VerifierPool, mode: str) -> None:
    # 60 MiB in /tmp + 10 MiB in /dev/shm + 200 MiB of heap: over 256 MiB only together.
    r = _attack(pool, mode, EVERYTHING)
    total = _total_mb(r)
    if mode == "cgroup":
        assert r["oom"] and "all held" not in r["out"], r
        assert total is not None and total <= LIMITS["memory_mb"], r
    else:
        # The rlimit fallback counts tmpfs apart: this fits its (larger) bound.
        assert total is None or total <= _bound_mb(mode), r
