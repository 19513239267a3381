"""Benchmarks of the walking skeleton: the judged devnet command, end to end.

    python benchmarks/run.py [--repeats 3] [--out benchmarks/results/devnet.json]

Runs ``flopnet devnet --headless --workers 2 --tasks 6 --max-new-tokens 48 --json`` (real
processes on 127.0.0.1) ``--repeats`` times, once more with ``--cheaters 1``, and writes one JSON
document: the machine, the date, every run's summary, and medians of wall time, generation time
per task, validation time per task (proof check and answer check) and proof bytes per token.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flopnet.node.local import flopnet_argv

JUDGED = ["--headless", "--workers", "2", "--tasks", "6", "--max-new-tokens", "48", "--json"]


def run_devnet(extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flopnet-bench-") as data_dir:
        started = time.perf_counter()
        result = subprocess.run(
            [
                *flopnet_argv(),
                "devnet",
                *JUDGED,
                "--data-dir",
                data_dir,
                *extra,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"devnet failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    summary: dict[str, Any] = json.loads(result.stdout)
    summary["command_seconds"] = round(elapsed, 2)
    return summary


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r["timing"][key] for r in runs if r["timing"].get(key) is not None]
    return round(statistics.median(values), 4) if values else None


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "devnet.json"
    )
    args = parser.parse_args()
    honest = [run_devnet([]) for _ in range(args.repeats)]
    cheater = run_devnet(["--cheaters", "1"])
    report = {
        "benchmark": "devnet-walking-skeleton",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "command": "flopnet devnet " + " ".join(JUDGED),
        "median": {
            "command_seconds": statistics.median(r["command_seconds"] for r in honest),
            "wall_seconds": statistics.median(r["wall_seconds"] for r in honest),
            "startup_seconds": statistics.median(r["startup_seconds"] for r in honest),
            "generation_s_per_task": median_of(honest, "generation_s_per_task"),
            "proof_check_s_per_task": median_of(honest, "proof_check_s_per_task"),
            "answer_check_s_per_task": median_of(honest, "answer_check_s_per_task"),
            "proof_bytes_per_token": median_of(honest, "proof_bytes_per_token"),
        },
        "with_one_cheater": {
            "command_seconds": cheater["command_seconds"],
            "tasks_validated": cheater["tasks_validated"],
            "tasks_rejected": cheater["tasks_rejected"],
        },
        "runs": honest,
        "cheater_run": cheater,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"median": report["median"], "with_one_cheater": report["with_one_cheater"]}))
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
