"""Print the markdown tables of docs/scale.md from the JSON in benchmarks/results/.

python scripts/scale_tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def sweep_table() -> str:
    rows = json.loads((RESULTS / "scale_sweep.json").read_text())["rows"]
    kinds = sorted({k for r in rows for k in r["against_honest"]} - {"honest"})
    out = []
    for fraction in sorted({r["cheat_fraction"] for r in rows}, reverse=True):
        part = [r for r in rows if r["cheat_fraction"] == fraction]
        floors = [f"{r['audit_floor']:.0%}" for r in part]
        out.append(
            f"Cheaters forging {fraction:.0%} of their samples (scale {part[0]['sample_scale']:,}):"
        )
        out.append("")
        out.append("| cheat | " + " | ".join(floors) + " |")
        out.append("|---|" + "---|" * len(floors))
        for kind in kinds:
            cells = [f"{(r['against_honest'].get(kind) or 0.0):.2f}" for r in part]
            out.append(f"| {kind} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(sweep_table())
