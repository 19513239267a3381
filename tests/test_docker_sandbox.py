"""The code verifier's Docker runner against a real engine: the bubblewrap attack set, and more.

Every program runs as production runs it: in a verifier pool child (a subreaper), through
``DockerSandbox`` and the image built from docker/sandbox.Dockerfile. The host side is then
checked: no process or container left, no file written, no secret read, no connection received.
Beyond bubblewrap's set, the limits that belong to the container as a whole are tried: memory of
several processes together, CPU share, ``/dev/shm``. Run with ``make test-images`` (the
``docker`` marker keeps these out of the ordinary run).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import socket
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_DATA
from docker_support import docker, ensure_images
from test_verifiers_code import ADD_TASK, MIN_MAX, fenced

from flopnet.verifiers.pool import VerifierPool
from flopnet.verifiers.registry import Verifiers, VerifyOptions
from flopnet.verifiers.sandbox.base import MiB

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]
LABEL = "label=org.flopnet.sandbox=1"


def _job(source: str, limits: dict[str, Any], stdin: bytes, build: bool) -> dict[str, Any]:
    """In a pool child: one Python program through the real Docker runner."""
    from flopnet.verifiers.sandbox import Limits, SandboxConfig, open_sandbox
    from flopnet.verifiers.sandbox.process import become_subreaper

    become_subreaper()
    runner = open_sandbox(SandboxConfig(kind="docker"))
    with runner.open_box() as box:
        box.write("main.py", source.encode())
        argv = ["python3", "-I", "-S", "/box/main.py"]
        result = box.run(argv, limits=Limits(**limits), stdin=stdin, build=build)
    out = dataclasses.asdict(result)
    out["out"] = result.stdout.decode("utf-8", "replace")
    out["err"] = result.stderr.decode("utf-8", "replace")
    out["describe"] = result.describe()
    return out


@pytest.fixture(scope="module")
def pool() -> Iterator[VerifierPool]:
    ensure_images()
    with VerifierPool(2, max_jobs_per_worker=None) as p:
        yield p
    # Nothing of any run is left on the engine.
    assert docker("ps", "-aq", "--filter", LABEL).stdout.strip() == ""
    assert docker("volume", "ls", "-q", "--filter", LABEL).stdout.strip() == ""


def run(
    pool: VerifierPool, source: str, stdin: bytes = b"", build: bool = False, **limits: Any
) -> dict[str, Any]:
    limits.setdefault("wall_s", 20.0)
    program = textwrap.dedent(source)
    found: dict[str, Any] = pool.call(_job, program, limits, stdin, build, timeout=180)
    return found


def host_processes(marker: str) -> list[int]:
    """Pids on the host whose command line holds ``marker`` (containers' processes included)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except OSError:
            continue
    return pids


def test_a_program_runs_unprivileged_with_its_stdin(pool: VerifierPool) -> None:
    source = """
    import os, sys
    caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapPrm'))]
    print(os.getuid(), os.getgid(), caps, sys.stdin.read().upper())
    """
    for build in (False, True):  # compilers run as the same user, without capabilities
        r = run(pool, source, stdin=b"hello", build=build)
        assert r["exit_code"] == 0, r
        assert r["out"].split() == ["10001", "10001", "['0000000000000000',", "'0000000000000000']",
                                    "HELLO"]  # fmt: skip


def test_cpu_time_and_wall_time(pool: VerifierPool) -> None:
    r = run(pool, "while True: pass", cpu_s=1, wall_s=15)
    assert r["exit_code"] != 0 and not r["timed_out"] and "CPU" in r["describe"]
    started = time.monotonic()
    r = run(pool, "import time; time.sleep(60)", wall_s=1)
    assert r["timed_out"] and time.monotonic() - started < 30  # killed, not waited for


def test_one_cpu_for_the_whole_answer(pool: VerifierPool) -> None:
    # Two busy processes for 3 s of wall time get about one CPU between them (nano_cpus).
    source = """
    import os, time
    def burn():
        end = time.monotonic() + 3
        while time.monotonic() < end:
            pass
    started = time.monotonic()
    kids = [pid for pid in (os.fork() for _ in range(2)) if pid or (burn(), os._exit(0))[1]]
    for pid in kids:
        os.waitpid(pid, 0)
    t = os.times()
    print(t.children_user + t.children_system, time.monotonic() - started)
    """
    r = run(pool, source, cpu_s=20)
    cpu, wall = map(float, r["out"].split())
    assert cpu / wall < 1.3, r  # two unlimited processes on this 2-core host would reach ~2


def test_fork_bomb(pool: VerifierPool) -> None:
    marker = f"forkbomb-{uuid.uuid4().hex}"
    sleeper = ["/usr/bin/python3", "-c", "import time; time.sleep(60)", marker]
    source = f"""
    import os
    children = []
    try:
        while True:
            children.append(os.posix_spawn({sleeper[0]!r}, {sleeper!r}, {{}}))
    except OSError as exc:
        print("stopped after", len(children), exc.errno)
    """
    r = run(pool, source, processes=32)
    assert "stopped after" in r["out"], r
    assert int(r["out"].split()[2]) <= 32  # the pids cgroup held
    assert host_processes(marker) == []  # and the container took them all down


def test_memory_bombs(pool: VerifierPool) -> None:
    r = run(pool, "x = bytearray(4 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert r["exit_code"] != 0 and "allocated" not in r["out"] and "MemoryError" in r["err"]
    # Four processes of 150 MB each stay under the per-process limit, not under the
    # container's 256 MB: the kernel kills them.
    source = """
    import os, time
    kids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            block = bytearray(150 * 1024 * 1024)
            time.sleep(3)
            os._exit(0)
        kids.append(pid)
    print(sorted(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in kids))
    """
    r = run(pool, source, memory_mb=256)
    assert r["exit_code"] != 0 or "-9" in r["out"], r  # someone was OOM-killed
    assert r["out"].strip() != "[0, 0, 0, 0]"


def test_no_network(pool: VerifierPool) -> None:
    # A listener on the host's loopback: with host networking the program could reach it.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        source = f"""
        import socket
        for address in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
            try:
                socket.create_connection(address, timeout=2).close()
                print("CONNECTED", *address)
            except OSError as exc:
                print("blocked", *address, exc.errno)
        try:
            print("RESOLVED", socket.gethostbyname("example.com"))
        except OSError:
            print("no dns")
        devices = open("/proc/net/dev").readlines()[2:]
        print("interfaces", *[line.split(":")[0].strip() for line in devices])
        """
        r = run(pool, source)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert r["out"].count("blocked") == 3 and "no dns" in r["out"], r
    assert "interfaces lo\n" in r["out"]  # only a loopback of its own, not the host's


def test_writes_outside_tmp_and_filling_tmp(pool: VerifierPool, tmp_path: Path) -> None:
    (tmp_path / "victim.txt").write_text("original")
    escape = f"{Path(__file__).resolve().parent}/escape-{uuid.uuid4().hex}"
    # Host paths (not even visible inside), the read-only box, the read-only root.
    targets = [f"{tmp_path}/victim.txt", escape, "/box/x", "/usr/x", "/etc/passwd", "/x", "/root/x"]
    source = f"""
    import os
    for path in {targets!r}:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
            print("WROTE", path)
        except OSError as exc:
            print("denied", path, exc.errno)
    for where in ("/tmp", "/dev/shm"):
        written = 0
        try:
            for i in range(1000):
                with open(f"{{where}}/fill{{i}}", "wb") as fh:
                    fh.write(b"z" * 2**20)
                written += 1
        except OSError as exc:
            for i in range(written + 1):  # make room again: stdout lives on /tmp too
                os.remove(f"{{where}}/fill{{i}}")
            print("full", where, written)
    """
    r = run(pool, source, tmpfs_mb=16, memory_mb=512)
    assert "WROTE" not in r["out"] and r["out"].count("denied") == len(targets), r
    full = {line.split()[1]: int(line.split()[2]) for line in r["out"].splitlines()
            if line.startswith("full")}  # fmt: skip
    assert set(full) == {"/tmp", "/dev/shm"} and max(full.values()) <= 16, r
    assert (tmp_path / "victim.txt").read_text() == "original" and not Path(escape).exists()


def test_the_node_keys_and_environment_stay_out(pool: VerifierPool, tmp_path: Path) -> None:
    secret = uuid.uuid4().hex
    key = tmp_path / ".flopnet" / "identity.key"
    key.parent.mkdir()
    key.write_text(secret)
    paths = [str(key), str(Path.home() / ".flopnet" / "identity.key"), str(Path.home()), "/data"]
    source = f"""
    import os
    for path in {paths!r}:
        try:
            print("LISTED" if os.path.isdir(path) else "READ", path,
                  os.listdir(path) if os.path.isdir(path) else open(path).read())
        except OSError as exc:
            print("denied", path, exc.errno)
    print("env", sorted(os.environ))
    """
    r = run(pool, source)
    assert secret not in r["out"] and "READ" not in r["out"], r
    assert "FLOPNET" not in r["out"] and "DOCKER" not in r["out"]
    # The home directory of the image's user is /tmp: only that may be listed, nothing else.
    assert all("LISTED /tmp" in line for line in r["out"].splitlines() if "LISTED" in line)


def test_output_floods(pool: VerifierPool) -> None:
    started = time.monotonic()
    r = run(pool, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
            output_bytes=MiB, file_bytes=2 * MiB)  # fmt: skip
    assert r["output_exceeded"] and len(r["stdout"]) == MiB
    r = run(pool, "import sys\nwhile True:\n    sys.stderr.write('y' * 65536)\n", file_bytes=MiB)
    assert r["exit_code"] != 0 and not r["timed_out"] and len(r["stderr"]) <= 64 * 1024
    assert time.monotonic() - started < 60


def test_a_left_over_daemon_dies_with_its_container(pool: VerifierPool) -> None:
    marker = f"daemon-{uuid.uuid4().hex}"
    # A child in a session of its own, orphaned when the program exits.
    sleeper = ["python3", "-c", "import time; time.sleep(60)", marker]
    source = f"""
    import subprocess
    subprocess.Popen({sleeper!r}, start_new_session=True, stdout=subprocess.DEVNULL)
    print("parent done")
    """
    r = run(pool, source)
    assert r["exit_code"] == 0 and "parent done" in r["out"], r
    assert host_processes(marker) == []


# -- the code verifier through Docker -----------------------------------------------------------


@pytest.fixture(scope="module")
def verifiers(pool: VerifierPool) -> Iterator[Verifiers]:
    with Verifiers(VerifyOptions(sandbox="docker", code_budget_s=60), workers=2) as v:
        assert v.sandbox().kind == "docker"
        yield v


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos._exit(0)",  # before any test ran
        "def add(a, b):\n    import sys\n    sys.exit(0)",  # from inside the first test
        "import atexit, os\natexit.register(os._exit, 0)\ndef add(a, b):\n    return None",
        "def add(a, b):\n    import os\n    os.kill(1, 9)\n    return None",  # the container's init
        "print('3 passed, 0 failed')\nraise SystemExit(0)",  # a made-up report
    ],
)
def test_an_early_exit_does_not_pass(verifiers: Verifiers, code: str) -> None:
    r = verifiers.verify(ADD_TASK, fenced(code))
    assert r.score == 0.0 and not r.passed, r.reasons
    assert "sandbox: docker" in r.reasons


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def test_honest_answers_pass_in_every_language(verifiers: Verifiers) -> None:
    good = verifiers.verify(ADD_TASK, fenced("def add(a, b):\n    return a + b"))
    assert good.passed, good.reasons
    problem = json.loads(_shared("rllm_test_codeforces.json").read_text())[0]
    task = {"task_type": "code", "tests": problem["tests"]}
    for lang, program in MIN_MAX.items():  # node, g++ and rustc come from the image
        r = verifiers.verify(task, fenced(program, lang))
        assert r.passed and f"language: {lang}" in r.reasons, (lang, r.reasons)


def test_humaneval_references_pass(verifiers: Verifiers) -> None:
    with gzip.open(_shared("HumanEval.jsonl.gz"), "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(12), fh, strict=False)]
    items = [
        (
            {"task_type": "code", "tests": row["test"], "entry_point": row["entry_point"]},
            fenced(row["prompt"] + row["canonical_solution"]),
            None,
        )
        for row in rows
    ]
    results = list(verifiers.verify_many(items))
    assert all(r.passed for r in results), [r.reasons for r in results if not r.passed]
