"""Write sim/proof_measurements.json: the per-sample measurements of the proof detection
benchmark (benchmarks/results/proof_detection.json), which the simulation feeds to the real
proof decision. ``tests/test_sim.py`` checks that the packaged copy matches the benchmark's.

    python scripts/sim_proof_data.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "benchmarks" / "results" / "proof_detection.json"
TARGET = ROOT / "sim" / "proof_measurements.json"


def packaged(bench: dict[str, Any]) -> dict[str, Any]:
    """The measurements the simulation needs, keyed by ``model/dtype`` and row name."""
    rows: dict[str, dict[str, Any]] = {}
    for row in bench["rows"]:
        key = f"{row['model']}/{row['manifest_dtype']}"
        rows.setdefault(key, {})[row["name"]] = {
            "kind": row["kind"],
            "measurements": row["measurements"],
        }
    return {
        "source": "benchmarks/results/proof_detection.json",
        "date": bench["date"],
        "rows": rows,
    }


def main() -> None:
    data = packaged(json.loads(SOURCE.read_text()))
    TARGET.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"wrote {TARGET} ({TARGET.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
