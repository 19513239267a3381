"""Host memory an untrusted answer can take, before and after the total cap (issue 13, item 4).

    python benchmarks/sandbox_bench.py [--baseline-rev REV] [--safety-mib 6144]
                                       [--out benchmarks/results/sandbox_memory.json]

Each attack program runs once per variant, through the bubblewrap runner with its default limits
(1 GiB of memory, 64 processes, 64 MiB /tmp), the way the code verifier runs an answer:

* ``before``: the runner of git revision REV (exported with ``git archive``, first on PYTHONPATH);
* ``after_cgroup`` and ``after_rlimit``: this checkout's runner in each memory mode.

Every variant runs in a child process placed in an observing cgroup, which measures all it and
its sandboxes take (the kernel's own accounting: tmpfs pages, memfds and every process counted)
and is also a safety net (``--safety-mib``) so that the "before" runs cannot hurt the host. The
host's MemAvailable is sampled during each run too; other work on the machine moves it, the
cgroup figure does not. Needs write access to cgroups (root), like the measurement itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))  # the attack programs of the tests

from run import machine  # noqa: E402
from test_sandbox_memory import FILL, FORK_MEMORY, PROCESSES  # noqa: E402

MiB = 1024 * 1024
#: The attack programs of the tests, at full size: the issue's six processes of 900 MB each
#: under a 1 GiB per-process limit, fills of up to 2 GiB, forks until refused.
ATTACKS = {
    "fork_x_memory": FORK_MEMORY.format(processes=6, mib=900),
    "dev_shm_fill": FILL.format(path="/dev/shm/f", mib=2048),
    "tmp_fill": FILL.format(path="/tmp/f", mib=2048),
    "memfd_fill": FILL.format(path=None, mib=2048),
    "many_processes": PROCESSES,
}


def child(name: str, mode: str) -> None:
    """One attack in one variant (run in a child process inside the observing cgroup)."""
    from flopnet.verifiers.sandbox import Limits, SandboxConfig, open_sandbox
    from flopnet.verifiers.sandbox.process import become_subreaper

    become_subreaper()
    # The "before" runner has no memory_cap: its config is built without one.
    extra = {} if mode == "before" else {"memory_cap": mode}
    config = SandboxConfig("bwrap", **extra)
    sandbox = open_sandbox(config)
    with sandbox.open_box() as box:
        box.write("main.py", ATTACKS[name].encode())
        r = box.run(["python3", "-I", "-S", "/box/main.py"], limits=Limits(wall_s=60, cpu_s=60))
    print(
        json.dumps(
            {
                "sandbox": getattr(sandbox, "description", sandbox.name),
                "output": r.stdout.decode("utf-8", "replace").strip().splitlines()[-2:],
                "ended": r.describe(),
                "run_peak_mib": _mib(getattr(r, "memory_peak", None)),
            }
        )
    )


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / MiB, 1)


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def measure(name: str, mode: str, baseline: str | None, safety: int) -> dict[str, Any]:
    """Run ``child(name, mode)`` inside a fresh observing cgroup; what it took."""
    from flopnet.verifiers.sandbox.cgroups import detect

    layout, why = detect()
    if layout is None:
        raise SystemExit(f"this benchmark measures with cgroups, and none are usable: {why}")
    observer = layout.create(safety, 100_000)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if baseline is not None:
        env["PYTHONPATH"] = baseline
    argv = [sys.executable, __file__, "--child", name, mode]
    before = sorted(mem_available() for _ in range(5))[2]
    lowest = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            lowest[0] = min(lowest[0], mem_available())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = subprocess.run(observer.wrap(argv, None), env=env, capture_output=True, text=True)
    finally:
        done.set()
        sampler.join()
        peak, kills = observer.peak(), observer.oom_kills()
        observer.remove()
    if out.returncode != 0 or not out.stdout.strip():
        report: dict[str, Any] = {"child_failed": out.stderr.strip()[-500:]}
    else:
        report = json.loads(out.stdout.strip().splitlines()[-1])
    report["observed_peak_mib"] = _mib(peak)
    report["safety_net_kills"] = kills
    report["host_available_drop_mib"] = round((before - lowest[0]) / MiB, 1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-rev", default=None, help="git revision for 'before'")
    parser.add_argument("--safety-mib", type=int, default=6144)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "sandbox_memory.json"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "limits": "bwrap runner defaults: 1024 MiB memory, 64 processes, /tmp 64 MiB",
        "safety_net_mib": args.safety_mib,
        "baseline_rev": args.baseline_rev,
        "attacks": {},
    }
    with tempfile.TemporaryDirectory(prefix="flopnet-baseline-") as tmp:
        variants: list[tuple[str, str | None]] = [("after_cgroup", None), ("after_rlimit", None)]
        if args.baseline_rev:
            tree = Path(tmp) / "flopnet"
            tree.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", args.baseline_rev], capture_output=True
            )
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
            variants.insert(0, ("before", tmp))
        for name in ATTACKS:
            results = {}
            for label, baseline in variants:
                mode = "before" if label == "before" else label.removeprefix("after_")
                results[label] = measure(name, mode, baseline, args.safety_mib * MiB)
                print(name, label, json.dumps(results[label]), file=sys.stderr, flush=True)
            report["attacks"][name] = results
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
