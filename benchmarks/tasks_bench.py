"""Task sources: loading time of each shared data file and of output-prediction generation.

    .venv/bin/python benchmarks/tasks_bench.py [--repeats 5] [--data ../shared/data]
        [--out benchmarks/results/tasks.json]

Each shared file is loaded whole (every record, every language) ``--repeats`` times in this
process, through the same ``load_file`` a publisher runs; output prediction is generated from
MBPP (16 and 64 tasks) and from Codeforces (16 tasks), each run starting the sandbox child and
running the programs twice (two hash seeds) in bubblewrap. Medians, minimum and maximum are
written as JSON beside the machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flopnet.node.tasks.files import load_file
from flopnet.node.tasks.output_prediction import generate_output_prediction

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data"


def timed(fn: Callable[[], int], repeats: int) -> dict[str, Any]:
    """Seconds per call (median, min, max over ``repeats``) and what the call returned."""
    times, count = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        count = fn()
        times.append(time.perf_counter() - started)
    return {
        "tasks": count,
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "tasks.json")
    args = parser.parse_args()
    files: dict[str, Any] = {}
    for path in sorted(args.data.glob("*.json*")):
        row = timed(lambda p=path: len(load_file(p).tasks), args.repeats)
        row["bytes"] = path.stat().st_size
        row["tasks_per_s"] = round(row["tasks"] / row["median_s"]) if row["median_s"] else None
        files[path.name] = row
        print(f"{path.name:40} {row['tasks']:6} tasks  {row['median_s'] * 1000:8.1f} ms")
    generated: dict[str, Any] = {}
    for name, count in (("mbpp.jsonl", 16), ("mbpp.jsonl", 64), ("rllm_test_codeforces.json", 16)):
        path = args.data / name
        repeats = max(1, args.repeats // 2)
        row = timed(
            lambda p=path, c=count: len(generate_output_prediction(p, count=c).tasks), repeats
        )
        generated[f"{name} x{count}"] = row
        print(f"output prediction {name} x{count}: {row['median_s']:.2f} s")
    report = {
        "benchmark": "task-sources",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "repeats": args.repeats,
        "load_file": files,
        "output_prediction": generated,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
