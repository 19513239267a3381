"""Attack tests for the sandbox runners, run for real.

Every attack runs the way production does: in a verifier pool child (a subreaper that reaps the
sandbox's orphans), through the runner's box. The host side is then checked: no process left,
no file written, no secret read, no connection received. bubblewrap tests skip only when bwrap
is not installed; the unsafe runner is checked for what it promises (limits, no left-overs).
"""

from __future__ import annotations

import os
import shutil
import socket
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flopnet.protocol.errors import VerifierError
from flopnet.verifiers.pool import VerifierPool
from flopnet.verifiers.sandbox import Limits, SandboxConfig, SandboxUnavailable, select_sandbox
from flopnet.verifiers.sandbox.base import MiB

HAS_BWRAP = shutil.which("bwrap") is not None
needs_bwrap = pytest.mark.skipif(not HAS_BWRAP, reason="bubblewrap is not installed")

# -- jobs run in pool children -----------------------------------------------------------------


def _job_run(
    kind: str,
    source: str,
    limits: dict[str, Any],
    stdin: bytes = b"",
    build: bool = False,
    memory_cap: str = "auto",
) -> dict[str, Any]:
    from flopnet.verifiers.sandbox import open_sandbox
    from flopnet.verifiers.sandbox.process import become_subreaper

    become_subreaper()
    sandbox = open_sandbox(SandboxConfig(kind=kind, memory_cap=memory_cap))
    with sandbox.open_box() as box:
        box.write("main.py", source.encode())
        argv = ["python3", "-I", "-S", "/box/main.py"]
        r = box.run(argv, limits=Limits(**limits), stdin=stdin, build=build)
    return {
        "code": r.exit_code,
        "out": r.stdout.decode("utf-8", "replace"),
        "err": r.stderr.decode("utf-8", "replace"),
        "timed_out": r.timed_out,
        "exceeded": r.output_exceeded,
        "wall": r.wall_s,
        "describe": r.describe(),
    }


def _job_zombies_after(kind: str, runs: int) -> int:
    """Zombie children of this (subreaper) process left after ``runs`` sandbox runs."""
    from flopnet.verifiers.sandbox import open_sandbox
    from flopnet.verifiers.sandbox.process import become_subreaper

    become_subreaper()
    sandbox = open_sandbox(SandboxConfig(kind=kind))
    with sandbox.open_box() as box:
        box.write("main.py", b"import os\nif os.fork() == 0:\n    os._exit(0)\nprint('x')\n")
        for _ in range(runs):
            box.run(["python3", "-I", "-S", "/box/main.py"], limits=Limits(wall_s=10))
    time.sleep(0.3)
    from flopnet.verifiers.sandbox.process import reap_orphans

    reap_orphans()
    me = str(os.getpid())
    zombies = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        zombies += fields[0] == "Z" and fields[1] == me
    return zombies


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[VerifierPool]:
    with VerifierPool(2, max_jobs_per_worker=None) as p:
        yield p


def _run(
    pool: VerifierPool,
    source: str,
    kind: str = "bwrap",
    stdin: bytes = b"",
    build: bool = False,
    memory_cap: str = "auto",
    **limits: Any,
) -> dict[str, Any]:
    limits.setdefault("wall_s", 10.0)
    result: dict[str, Any] = pool.call(
        _job_run, kind, textwrap.dedent(source), limits, stdin, build, memory_cap, timeout=120
    )
    return result


#: Both ways of capping memory: cgroups where this machine allows them ("auto"), and the
#: fallback without them ("rlimit": one process per run, seccomp).
MODES = pytest.mark.parametrize("memory_cap", ["auto", "rlimit"])


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(pid))
    return found


# -- bubblewrap attacks ------------------------------------------------------------------------


@needs_bwrap
def test_bwrap_runs_a_program(pool: VerifierPool) -> None:
    r = _run(pool, "import sys; print(sys.stdin.read().upper())", stdin=b"hello")
    assert r["code"] == 0 and r["out"].strip() == "HELLO"


@needs_bwrap
@pytest.mark.parametrize("build", [False, True])
def test_bwrap_no_capabilities(pool: VerifierPool, build: bool) -> None:
    # Build runs (compilers) keep the node's uid; neither kind may hold capabilities.
    source = "print([l for l in open('/proc/self/status') if l.startswith('Cap')])"
    r = _run(pool, source, build=build)
    assert "CapEff:\\t0000000000000000" in r["out"] and "CapPrm:\\t0000000000000000" in r["out"]


@needs_bwrap
@MODES
def test_bwrap_infinite_loop(pool: VerifierPool, memory_cap: str) -> None:
    r = _run(pool, "while True: pass", cpu_s=1, wall_s=10, memory_cap=memory_cap)
    assert r["code"] != 0 and not r["timed_out"]  # the kernel's CPU limit, well before wall time
    assert r["wall"] < 5
    r = _run(pool, "import time; time.sleep(60)", wall_s=1, memory_cap=memory_cap)
    assert r["timed_out"] and r["wall"] < 5


@needs_bwrap
@MODES
def test_bwrap_fork_bomb(pool: VerifierPool, memory_cap: str) -> None:
    marker = f"forkbomb-{uuid.uuid4().hex}"
    source = f"""
    import os, sys, time
    sys.argv.append({marker!r})
    n = 0
    try:
        while True:
            if os.fork() == 0:
                os.execv("/usr/bin/python3", ["python3", "-c", "import time; time.sleep(30)",
                                              {marker!r}])
            n += 1
    except OSError as exc:
        print("stopped after", n, exc.errno)
    """
    t0 = time.monotonic()
    r = _run(pool, source, processes=32, wall_s=10, memory_cap=memory_cap)
    assert time.monotonic() - t0 < 20
    assert "stopped after" in r["out"]
    assert int(r["out"].split()[2]) <= (32 if memory_cap == "auto" else 0)  # the limit held
    time.sleep(0.2)
    assert _processes_with(marker) == []  # and nothing survived the sandbox


@needs_bwrap
@MODES
def test_bwrap_memory_bomb(pool: VerifierPool, memory_cap: str) -> None:
    source = "x = bytearray(4 * 1024**3)\nprint('allocated')"
    r = _run(pool, source, memory_mb=256, memory_cap=memory_cap)
    assert r["code"] != 0 and "allocated" not in r["out"] and "MemoryError" in r["err"]
    growing = "a = []\nwhile True:\n    a.append(bytearray(10**7))\n"
    r = _run(pool, growing, memory_mb=256, wall_s=10, memory_cap=memory_cap)
    assert r["code"] != 0 and not r["timed_out"]


@needs_bwrap
def test_bwrap_no_network(pool: VerifierPool) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    source = f"""
    import socket
    for host, port in (("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((host, port))
            print("CONNECTED", host)
        except OSError as exc:
            print("blocked", host, exc.errno)
    try:
        socket.getaddrinfo("example.com", 80)
        print("RESOLVED")
    except OSError:
        print("no dns")
    """
    try:
        r = _run(pool, source)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert "CONNECTED" not in r["out"] and "RESOLVED" not in r["out"]
    assert r["out"].count("blocked") == 3


@needs_bwrap
def test_bwrap_writes_outside_the_work_dir(pool: VerifierPool, tmp_path: Path) -> None:
    host_file = tmp_path / "victim.txt"
    host_file.write_text("original")
    repo_marker = Path(__file__).resolve().parent / f"sandbox-escape-{uuid.uuid4().hex}"
    targets = [str(host_file), str(repo_marker), "/box/x", "/usr/x", "/etc/x", "/x", "/root/x"]
    source = f"""
    for path in {targets!r}:
        try:
            with open(path, "w") as fh:
                fh.write("pwned")
            print("WROTE", path)
        except OSError as exc:
            print("denied", path, exc.errno)
    open("/tmp/scratch", "w").write("fine")  # the private tmpfs is writable
    print("tmp ok")
    written = 0
    try:  # ...but small: filling it stops at its size
        for i in range(1000):
            with open(f"/tmp/fill{{i}}", "wb") as fh:
                fh.write(b"z" * 2**20)
            written += 1
    except OSError as exc:
        print("full after", written, "MiB", exc.errno)
    """
    r = _run(pool, source, tmpfs_mb=16)
    assert "WROTE" not in r["out"] and "tmp ok" in r["out"]
    assert "full after" in r["out"] and int(r["out"].split("full after ")[1].split()[0]) <= 16
    assert host_file.read_text() == "original"
    assert not repo_marker.exists()


@needs_bwrap
def test_bwrap_cannot_read_the_node_keys(pool: VerifierPool, tmp_path: Path) -> None:
    secret = uuid.uuid4().hex
    home = tmp_path / "home"
    (home / ".flopnet").mkdir(parents=True)
    key = home / ".flopnet" / "identity.key"
    key.write_text(secret)
    real_home_key = Path.home() / ".flopnet" / "identity.key"
    paths = [str(key), str(real_home_key), "~/.flopnet/identity.key", str(Path.home())]
    source = f"""
    import os
    for path in {paths!r}:
        path = os.path.expanduser(path)
        try:
            if os.path.isdir(path):
                print("LISTED", path, os.listdir(path))
            else:
                print("READ", path, open(path).read())
        except OSError as exc:
            print("denied", path, exc.errno)
    print("env", sorted(os.environ))
    """
    r = _run(pool, source)
    assert secret not in r["out"]
    assert "READ" not in r["out"] and "LISTED" not in r["out"]
    assert "FLOPNET" not in r["out"]  # an empty environment: no paths, tokens or keys


@needs_bwrap
@MODES
def test_bwrap_output_flood(pool: VerifierPool, memory_cap: str) -> None:
    source = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
    t0 = time.monotonic()
    r = _run(pool, source, output_bytes=1 * MiB, file_bytes=2 * MiB, memory_cap=memory_cap)
    assert r["exceeded"] and len(r["out"]) == 1 * MiB
    assert time.monotonic() - t0 < 10
    # A flood on stderr is cut at the file-size limit as well.
    r = _run(pool, "import sys\nwhile True:\n    sys.stderr.write('y' * 65536)\n", file_bytes=MiB)
    assert r["code"] != 0 and not r["timed_out"]


@needs_bwrap
@MODES
def test_bwrap_leftover_daemon(pool: VerifierPool, memory_cap: str) -> None:
    marker = f"daemon-{uuid.uuid4().hex}"
    source = f"""
    import os
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/usr/bin/python3", ["python3", "-c", "import time; time.sleep(60)",
                                          {marker!r}])
        os._exit(0)
    print("parent done")
    """
    r = _run(pool, source, memory_cap=memory_cap)
    if memory_cap == "rlimit":  # one process per run: the daemon is never born
        assert r["code"] != 0 and "PermissionError" in r["err"]
    else:
        assert r["code"] == 0 and "parent done" in r["out"]
    time.sleep(0.3)
    assert _processes_with(marker) == []


@needs_bwrap
def test_bwrap_orphans_are_reaped(pool: VerifierPool) -> None:
    assert pool.call(_job_zombies_after, "bwrap", 20, timeout=120) == 0


# -- the unsafe runner -------------------------------------------------------------------------


def test_unsafe_runner_limits_and_leftovers(pool: VerifierPool) -> None:
    r = _run(pool, "print(input()[::-1])", kind="unsafe", stdin=b"abc")
    assert r["code"] == 0 and r["out"].strip() == "cba"
    r = _run(pool, "while True: pass", kind="unsafe", cpu_s=1)
    assert r["code"] != 0 and r["wall"] < 5
    r = _run(pool, "import sys\nwhile True: sys.stdout.write('x'*65536)\n", kind="unsafe",
             output_bytes=MiB, file_bytes=2 * MiB)  # fmt: skip
    assert r["exceeded"]
    marker = f"unsafe-daemon-{uuid.uuid4().hex}"
    source = f"""
    import os
    if os.fork() == 0:
        os.setsid()
        os.execv("/usr/bin/python3", ["python3", "-c", "import time; time.sleep(60)", {marker!r}])
    """
    _run(pool, source, kind="unsafe")
    time.sleep(0.3)
    assert _processes_with(marker) == []  # killed by the subreaper after the run


# -- choosing a sandbox ------------------------------------------------------------------------


def test_unsafe_needs_the_explicit_flag() -> None:
    with pytest.raises(SandboxUnavailable, match="explicit"):
        select_sandbox("unsafe")
    assert select_sandbox("unsafe", allow_unsafe=True).kind == "unsafe"
    with pytest.raises(SandboxUnavailable):
        select_sandbox("chroot")


@needs_bwrap
def test_auto_picks_bwrap() -> None:
    assert select_sandbox("auto").kind == "bwrap"


def test_no_sandbox_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from flopnet.verifiers import sandbox as sandbox_mod

    def missing(config: SandboxConfig) -> None:
        raise SandboxUnavailable(f"{config.kind} missing")

    monkeypatch.setattr(sandbox_mod, "_probe", missing)
    with pytest.raises(SandboxUnavailable) as info:
        select_sandbox("auto")
    message = str(info.value)
    assert "apt-get install bubblewrap" in message and "unsafe" in message
    assert isinstance(info.value, VerifierError)


def test_limits_validation() -> None:
    with pytest.raises(VerifierError):
        Limits(wall_s=0)
    assert "--nproc=8" in Limits(processes=8).prlimit_args()


def test_concurrent_sandbox_runs(pool: VerifierPool) -> None:
    if not HAS_BWRAP:
        pytest.skip("bubblewrap is not installed")
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda: results.append(_run(pool, "print(6*7)"))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r["out"].strip() for r in results] == ["42"] * 6


# -- live processes (what the Python relay talks to) ---------------------------------------------


def _job_live(kind: str, memory_cap: str) -> dict[str, Any]:
    """Talk to three live sandboxed programs: an echo, a flood, a quitter."""
    from flopnet.verifiers.sandbox import open_sandbox
    from flopnet.verifiers.sandbox.base import ChannelError
    from flopnet.verifiers.sandbox.process import become_subreaper

    become_subreaper()
    sandbox = open_sandbox(SandboxConfig(kind=kind, memory_cap=memory_cap))
    programs = {
        "echo": "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)",
        "flood": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
        "quit": "print('bye', end='')",
    }
    seen: dict[str, Any] = {}
    with sandbox.open_box() as box:
        for name, source in programs.items():
            box.write(f"{name}.py", source.encode())
        limits = Limits(wall_s=30, cpu_s=30)
        argv = ["python3", "-I", "-S", "/box/echo.py"]
        echo = box.start(argv, limits=limits)  # type: ignore[attr-defined]
        echo.send(b"hello\n", time.monotonic() + 10)
        seen["echo"] = echo.read_line(time.monotonic() + 10, 100)
        try:
            echo.read_line(time.monotonic() + 0.3, 100)
        except ChannelError as exc:
            seen["silence"] = exc.kind
        seen["echo_end"] = echo.finish().exit_code  # stdin closed: the loop ends by itself
        for name in ("flood", "quit"):
            live = box.start(["python3", "-I", "-S", f"/box/{name}.py"], limits=limits)  # type: ignore[attr-defined]
            try:
                live.read_line(time.monotonic() + 10, 1024 * 1024)
            except ChannelError as exc:
                seen[name] = exc.kind
            seen[f"{name}_killed"] = live.finish(grace_s=0.2).timed_out
    return seen


@pytest.mark.parametrize(
    ("kind", "memory_cap"), [("bwrap", "auto"), ("bwrap", "rlimit"), ("unsafe", "auto")]
)
def test_live_processes(pool: VerifierPool, kind: str, memory_cap: str) -> None:
    if kind == "bwrap" and not HAS_BWRAP:
        pytest.skip("bubblewrap is not installed")
    seen = pool.call(_job_live, kind, memory_cap, timeout=120)
    assert seen["echo"] == b"HELLO" and seen["silence"] == "timeout" and seen["echo_end"] == 0
    assert seen["flood"] == "overflow" and seen["flood_killed"]  # never more than the cap read
    assert seen["quit"] == "closed" and not seen["quit_killed"]
