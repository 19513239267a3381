"""Container figures (issue 18): image build times and sizes, the compose devnet's wall time
beside the same devnet as plain processes, and the Docker sandbox's throughput beside bubblewrap's.

    make bench-images        # = scripts/images.sh all, then:
    python benchmarks/images_bench.py [--devnet-runs 2] [--programs 40] [--times FILE]
                                      [--out benchmarks/results/images.json]

Build times come from ``scripts/images.sh``'s log (``.images/times.tsv``; ``--times`` reads
another, e.g. a fresh clone's, whose builds started from nothing). Sizes are the engine's.
Sandbox throughput: the first ``--programs`` HumanEval reference solutions through the code
verifier (``Verifiers``, pool children) with each sandbox and 1 and 2 workers, and the median
of one bare ``python3 -c pass`` run. Needs a running engine with the images.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the compose devnet driver of the Docker tests
sys.path.insert(0, str(REPO / "benchmarks"))

from conftest import SHARED_DATA  # noqa: E402
from docker_support import ComposeDevnet, docker  # noqa: E402
from run import machine as base_machine  # noqa: E402
from run import run_devnet  # noqa: E402

from flopnet.verifiers.registry import Verifiers, VerifyOptions  # noqa: E402

IMAGES = (
    "flopnet/base:bookworm",
    "flopnet/sandbox-base:bookworm",
    "flopnet/node:cpu",
    "flopnet-sandbox:1",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def image_figures(times_file: Path) -> dict[str, Any]:
    """The last recorded time of each step of scripts/images.sh, and every image's size."""
    steps: dict[str, dict[str, Any]] = {}
    if times_file.exists():
        for line in times_file.read_text().splitlines():
            when, step, seconds, size = [*line.split("\t"), ""][:4]
            steps[step] = {"at": when, "seconds": int(seconds), "bytes": int(size or 0)}
    sizes = {}
    for image in IMAGES:
        found = docker("image", "inspect", "-f", "{{.Size}}", image)
        sizes[image] = int(found.stdout) if found.returncode == 0 else None
    return {"steps": steps, "sizes_bytes": sizes, "times_file": str(times_file)}


def compose_devnet_runs(runs: int) -> list[dict[str, Any]]:
    """Wall time of the compose devnet from ``up`` until every task is validated."""
    results = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="flopnet-compose-bench-") as tmp:
            net = ComposeDevnet(Path(tmp) / "devnet")
            try:
                started = time.perf_counter()
                net.compose("up", "--detach")
                status = net.wait_done()
                wall = time.perf_counter() - started
            finally:
                net.down()
        validator = status["validator"]
        results.append(
            {
                "wall_s": round(wall, 2),
                "accepted": validator["accepted"],
                "rejected": validator["rejected"],
            }
        )
        log(f"compose devnet run {i + 1}: {results[-1]}")
    return results


def process_devnet() -> dict[str, Any]:
    """The same devnet (2 workers, 6 tasks, 48 tokens) as plain processes: `flopnet devnet`."""
    summary = run_devnet([])
    return {"wall_s": summary["command_seconds"], "tasks_validated": summary["tasks_validated"]}


def bare_run_ms(kind: str, runs: int = 20) -> float:
    """Median wall time of one ``python3 -c pass`` in the sandbox (in this process)."""
    from flopnet.verifiers.sandbox import Limits, SandboxConfig, open_sandbox

    sandbox = open_sandbox(SandboxConfig(kind))
    times = []
    with sandbox.open_box() as box:
        for _ in range(runs):
            times.append(box.run(["python3", "-I", "-S", "-c", "pass"], limits=Limits()).wall_s)
    return round(1000 * statistics.median(times), 1)


def code_throughput(kind: str, programs: int, workers: int) -> dict[str, Any]:
    """HumanEval references through the code verifier with ``kind``: programs/s, all passed?"""
    with gzip.open(SHARED_DATA / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(programs), fh, strict=False)]
    items = [
        (
            {"task_type": "code", "tests": row["test"], "entry_point": row["entry_point"]},
            f"</think>\n```python\n{row['prompt'] + row['canonical_solution']}\n```\n",
            None,
        )
        for row in rows
    ]
    with Verifiers(VerifyOptions(sandbox=kind), workers=workers) as v:
        v.pool.wait_ready()
        started = time.perf_counter()
        results = list(v.verify_many(items))
        seconds = time.perf_counter() - started
    return {
        "programs": len(items),
        "passed": sum(r.passed for r in results),
        "seconds": round(seconds, 2),
        "programs_per_s": round(len(items) / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devnet-runs", type=int, default=2)
    parser.add_argument("--programs", type=int, default=40)
    parser.add_argument("--times", type=Path, default=REPO / ".images" / "times.tsv")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "images.json")
    args = parser.parse_args()
    docker_version = docker("version", "-f", "{{.Server.Version}}").stdout.strip()
    report: dict[str, Any] = {
        "benchmark": "container-images",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            **base_machine(),
            "docker_server": docker_version,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "images": image_figures(args.times),
    }
    report["compose_devnet"] = compose_devnet_runs(args.devnet_runs)
    report["process_devnet"] = process_devnet()
    log(f"process devnet: {report['process_devnet']}")
    sandbox: dict[str, Any] = {}
    for kind in ("bwrap", "docker"):
        sandbox[kind] = {"bare_python_run_median_ms": bare_run_ms(kind)}
        for workers in (1, 2):
            sandbox[kind][f"humaneval_{workers}_workers"] = code_throughput(
                kind, args.programs, workers
            )
        log(f"sandbox {kind}: {sandbox[kind]}")
    report["sandbox"] = sandbox
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
