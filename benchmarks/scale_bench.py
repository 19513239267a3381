"""The figures of docs/scale.md: the 10,000-worker week, the audit-floor sweep of every cheat,
and the plots (PNG, matplotlib) beside their JSON.

    .venv/bin/python benchmarks/scale_bench.py            # everything (long; run it niced)
    .venv/bin/python benchmarks/scale_bench.py --only sweep,plots

Parts: ``headline`` (``flopnet simulate --workers 10000 --days 7``, timed), ``sweep`` (audit
floors 1-10 %, every cheat kind at 1 % of the workers, all its samples forged, and again at a
tenth of its samples), ``plots`` (from the JSON files, including the join and calibration
benchmarks when they have run). Results: ``benchmarks/results/scale_*.json``; plots:
``docs/scale/*.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PLOTS = ROOT / "docs" / "scale"
FLOORS = (0.01, 0.02, 0.03, 0.05, 0.07, 0.10)
sys.path.insert(0, str(ROOT / "benchmarks"))


def _simulate(**fields: Any) -> dict[str, Any]:
    from flopnet.sim.config import SimConfig
    from flopnet.sim.engine import Simulation
    from flopnet.sim.report import report

    return report(Simulation(SimConfig(**fields)).run())


def _machine() -> dict[str, Any]:
    from ledger_bench import machine

    return machine()


def headline(budget: int) -> None:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load = os.getloadavg()
    doc = _simulate(workers=10_000, days=7.0, sample_budget=budget, keep=("timeline",))
    doc["measured"] = {"started": started, "load_average_at_start": load, "machine": _machine()}
    name = (
        "scale_10k_7d.json" if budget == 1_000_000 else f"scale_10k_7d_budget{budget // 1000}k.json"
    )
    (RESULTS / name).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["run"]))


def sweep() -> None:
    from flopnet.sim.inputs import CHEAT_KINDS

    cheaters = tuple((kind, 0.02) for kind in sorted(CHEAT_KINDS))
    rows = []
    for fraction in (1.0, 0.1):
        for floor in FLOORS:
            doc = _simulate(
                workers=300,
                days=3.0,
                cheaters=cheaters,
                cheat_fraction=fraction,
                audit_floor=floor,
                sample_budget=15_000,
                seed=11,
            )
            row = {
                "audit_floor": floor,
                "cheat_fraction": fraction,
                "sample_scale": doc["config"]["sample_scale"],
                "against_honest": {k: v["against_honest"] for k, v in doc["credit"].items()},
                "failed_audits": {k: v["failed_audits"] for k, v in doc["credit"].items()},
                "audited_share": doc["validators"]["audited_share"],
                "validator_machines_per_1000": doc["validators"][
                    "validator_machines_per_1000_online_workers"
                ],
                "wall_seconds": doc["run"]["wall_seconds"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            (RESULTS / "scale_sweep.json").write_text(
                json.dumps({"machine": _machine(), "rows": rows}, indent=1) + "\n"
            )


def plots() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    sweep_file = RESULTS / "scale_sweep.json"
    if sweep_file.exists():
        rows = json.loads(sweep_file.read_text())["rows"]
        for fraction in sorted({r["cheat_fraction"] for r in rows}, reverse=True):
            part = [r for r in rows if r["cheat_fraction"] == fraction]
            fig, ax = plt.subplots(figsize=(8, 5))
            kinds = sorted({k for r in part for k in r["against_honest"]} - {"honest"})
            for kind in kinds:
                xs = [r["audit_floor"] * 100 for r in part]
                ys = [r["against_honest"].get(kind) or 0.0 for r in part]
                ax.plot(xs, ys, marker="o", label=kind)
            ax.axhline(1.0, color="black", linestyle="--", label="honest")
            ax.set_xlabel("audit floor (%)")
            ax.set_ylabel("final credit per GPU-second, honest = 1")
            ax.set_title(
                f"Cheating pays below the dashed line only ({fraction:.0%} of samples forged)"
            )
            ax.legend(fontsize=7, ncol=2)
            fig.tight_layout()
            fig.savefig(PLOTS / f"cheat_vs_floor_{round(fraction * 100)}.png", dpi=110)
            plt.close(fig)
    big = RESULTS / "scale_10k_7d.json"
    if not big.exists():
        big = RESULTS / "scale_10k_7d_budget100k.json"
    if big.exists():
        doc = json.loads(big.read_text())
        timeline = doc.get("timeline") or []
        if timeline:
            fig, ax = plt.subplots(figsize=(8, 4))
            ax.plot([t["hour"] / 24 for t in timeline], [t["online"] for t in timeline])
            ax.set_xlabel("day")
            ax.set_ylabel("workers online")
            ax.set_title("10,000 workers, 7 days: churn")
            fig.tight_layout()
            fig.savefig(PLOTS / "online.png", dpi=110)
            plt.close(fig)
    join = RESULTS / "join.json"
    if join.exists():
        j = json.loads(join.read_text())
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = ["from the first entry", "checkpoint + tail"]
        ax.bar(labels, [j["full"]["cpu_s"], j["checkpoint"]["cpu_s"]], color=["grey", "tab:blue"])
        ax.set_ylabel("CPU seconds to verify and store")
        ax.set_title(f"Joining a chain of {j['entries']:,} entries")
        fig.tight_layout()
        fig.savefig(PLOTS / "join.png", dpi=110)
        plt.close(fig)
    calibration = RESULTS / "calibration.json"
    if calibration.exists():
        whole = json.loads(calibration.read_text())
        c, processes = whole["comparison"], whole["real"]["node_processes"]
        keys = [k for k, v in c.items() if v["real"] and v["simulated"] is not None]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar([i - 0.2 for i in range(len(keys))], [1.0] * len(keys), 0.4, label="real")
        ax.bar(
            [i + 0.2 for i in range(len(keys))],
            [c[k]["simulated"] / c[k]["real"] for k in keys],
            0.4,
            label="simulated",
        )
        ax.axhspan(0.8, 1.2, color="green", alpha=0.1, label="within 20 %")
        ax.set_xticks(range(len(keys)), keys, rotation=15, fontsize=8)
        ax.set_ylabel("simulated / real")
        ax.set_title(f"A {processes}-process devnet against its simulation")
        ax.legend()
        fig.tight_layout()
        fig.savefig(PLOTS / "calibration.png", dpi=110)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="headline,sweep,plots")
    parser.add_argument("--budget", type=int, default=1_000_000, help="headline sample budget")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    parts = {"headline": lambda: headline(args.budget), "sweep": sweep, "plots": plots}
    for name in args.only.split(","):
        parts[name]()


if __name__ == "__main__":
    main()
