"""Calibrate the simulation on the largest real network this machine holds: a devnet of 30 node
processes (a publisher, a validator, 28 workers, each worker with its own model process) on
127.0.0.1 with the seeded ``tiny`` model, then the simulation of the same network, and the
figures side by side.

    .venv/bin/python benchmarks/calibrate_devnet.py [--workers 28] [--tasks 112]

The simulation is given what the devnet measured per sample (generation seconds and tokens,
validation seconds), not what it measured as a whole; it predicts the whole: throughput, time to
finish, claims refused per lease, ledger entries and bytes per sample and per replica. Writes
``benchmarks/results/calibration.json``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from ledger_bench import machine, stamp  # noqa: E402

from flopnet.node.cli.devnet import VALIDATOR_DIR, Devnet, DevnetOptions  # noqa: E402
from flopnet.node.local import LEDGER_FILE  # noqa: E402


def run_devnet(workers: int, tasks: int, max_new_tokens: int, separate: bool) -> dict[str, Any]:
    opts = DevnetOptions(
        workers=workers,
        tasks=tasks,
        max_new_tokens=max_new_tokens,
        separate_publisher=separate,
        timeout=1500.0,
    )
    devnet = Devnet(opts)
    started = time.time()
    finished = False
    try:
        devnet.start()
        ready = time.time()
        finished = devnet.wait_done(opts.timeout)
        done = time.time()
    finally:
        devnet.capture_status()
        devnet.stop()
    summary = devnet.summary(finished)
    statuses = devnet.final_status
    worker_rows = [s["worker"] for n, s in statuses.items() if s.get("worker")]
    replicas = [s["ledger"] for n, s in statuses.items() if s.get("worker")]
    validator = statuses.get(VALIDATOR_DIR, {}).get("validator") or {}
    with sqlite3.connect(devnet.root / VALIDATOR_DIR / LEDGER_FILE) as conn:
        kinds = {
            kind: {"entries": n, "mean_bytes": round(size, 1)}
            for kind, n, size in conn.execute(
                "SELECT kind, COUNT(*), AVG(LENGTH(envelope)) FROM entries GROUP BY kind"
            )
        }
        tokens = conn.execute(
            "SELECT AVG(generated_tokens), AVG(prompt_tokens) FROM credits WHERE accepted = 1"
        ).fetchone()
    leases = sum(w["leases"] for w in worker_rows)
    refusals = sum(sum(w["refusals"].values()) for w in worker_rows)
    received = [r["gossip_stored"] + r["fetched"] for r in replicas]
    validated = summary["tasks_validated"]
    return {
        "ok": summary["ok"],
        "node_processes": len(devnet.procs),
        "workers": workers,
        "tasks": tasks,
        "validated": validated,
        "startup_s": round(ready - started, 1),
        "work_s": round(done - ready, 1),
        "samples_per_minute": round(validated / (done - ready) * 60, 2),
        "generation_s_per_sample": summary["timing"]["generation_s_per_task"],
        "validation_s_per_sample": (summary["timing"]["proof_check_s_per_task"] or 0)
        + (summary["timing"]["answer_check_s_per_task"] or 0),
        "generated_tokens_per_sample": round(tokens[0] or 0, 1),
        "prompt_tokens_per_sample": round(tokens[1] or 0, 1),
        "audited": validator.get("audited"),
        "leases": leases,
        "refusals_per_lease": round(refusals / leases, 3) if leases else None,
        "ledger_entries": kinds,
        "entries_per_sample": round(sum(k["entries"] for k in kinds.values()) / validated, 3)
        if validated
        else None,
        "entries_received_per_worker_replica": {
            "min": min(received, default=0),
            "max": max(received, default=0),
        },
    }


def simulate(real: dict[str, Any]) -> dict[str, Any]:
    """The simulation of the same network, given the devnet's per-sample measurements."""
    from flopnet.ledger.flops import model_shape, shape_flops
    from flopnet.sim.config import SimConfig
    from flopnet.sim.engine import Simulation
    from flopnet.sim.inputs import GPU_CLASSES, R1_CONFIG, TASK_SETS, GpuClass, TaskSet
    from flopnet.sim.report import report

    g = real["generated_tokens_per_sample"] or 24.0
    p = round(real["prompt_tokens_per_sample"] or 40)
    per_sample = real["generation_s_per_sample"] or 1.0
    GPU_CLASSES["devnet-cpu"] = GpuClass(
        "devnet-cpu", 1, 0.0, g / per_sample, 0.0, "measured by this devnet", 1, False
    )
    # The validator's service per audited sample is the measured one: the simulation charges
    # R1's FLOPs of the sample at the validator's rate, so the rate is set to give that time.
    r1 = shape_flops(model_shape(R1_CONFIG), p, round(g))
    rate = r1 / max(real["validation_s_per_sample"], 1e-6)
    GPU_CLASSES["devnet-validator"] = GpuClass(
        "devnet-validator", 1, 0.0, 0.0, rate / 1e12, "measured by this devnet", 1, False
    )
    TASK_SETS["devnet"] = TaskSet("devnet", 1.0, p, g, 0.05, max_new_tokens=round(g * 1.5))
    cfg = SimConfig(
        workers=real["workers"],
        days=real["work_s"] * 2 / 86400,
        validators=1,
        publishers=1,
        task_sets=("devnet",),
        samples_per_task=1,
        gpu_mix=(("devnet-cpu", 1.0),),
        validator_gpu="devnet-validator",
        validator_mfu=1.0,
        initial_share=1.0,
        session_hours=1e6,
        return_share=1.0,
        freezes_per_day=0.0,
        audit_floor=1.0,
        lease_seconds=120.0,
        proof_model="tiny",
        sample_scale=1,
        task_limit=real["tasks"],
    )
    sim = Simulation(cfg).run()
    doc = report(sim)
    finished = sim.finished_at
    samples = doc["run"]["simulated_samples"]
    leases = doc["leases"]["leases_granted"]
    refusals = sum(doc["leases"]["refusals"].values())
    entries = sum(v.entries.total() for v in sim.validators)
    return {
        "validated": samples,
        "work_s": round(finished, 1) if finished else None,
        "samples_per_minute": round(samples / finished * 60, 2) if finished else None,
        "refusals_per_lease": round(refusals / leases, 3) if leases else None,
        "entries_per_sample": round(entries / samples, 3) if samples else None,
        "lease_wait_s": doc["leases"]["wait_seconds"],
        "validator_utilisation": doc["validators"]["utilisation"],
        "wall_seconds": doc["run"]["wall_seconds"],
    }


def compare(real: dict[str, Any], sim: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key in ("work_s", "samples_per_minute", "refusals_per_lease", "entries_per_sample"):
        a, b = real.get(key), sim.get(key)
        error = None if not a or b is None else round((b - a) / a, 3)
        out[key] = {
            "real": a,
            "simulated": b,
            "relative_error": error,
            "within_20_percent": error is not None and abs(error) <= 0.2,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=28)
    parser.add_argument("--tasks", type=int, default=112)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument(
        "--together", action="store_true", help="publisher and validator in one process"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/calibration.json")
    args = parser.parse_args()
    started = stamp()
    real = run_devnet(args.workers, args.tasks, args.max_new_tokens, not args.together)
    sim = simulate(real)
    result = {
        "benchmark": "calibration",
        "machine": machine(),
        "started": started,
        "finished": stamp(),
        "real": real,
        "simulated": sim,
        "comparison": compare(real, sim),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
