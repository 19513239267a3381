"""Record the seeded data of the TUI's snapshot tests from a real devnet.

    .venv/bin/python scripts/tui_seed.py tests/data/tui_seed.json

Runs a devnet (one honest worker, one cheater), lets it finish, reads every document the TUI
shows from the validator, the honest worker and the cheater, adds a machine with two GPUs (as
NVML would report them: the snapshot shows the GPU path) to the honest worker, and writes one
JSON file. The snapshot tests load it with a fixed clock, so they render the same every time.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flopnet.node.cli.devnet import Devnet, DevnetOptions
from flopnet.node.local import api_get, read_node_info

PATHS = {
    "status": "/status",
    "tasks": "/tasks",
    "verdicts": "/verdicts",
    "credits": "/credits",
    "why": "/why",
    "peers": "/peers",
    "leaderboard": "/leaderboard?window=all",
    "logs": "/logs?level=DEBUG&limit=40",
    "config": "/config",
    "health": "/health",
    "validator": "/validator",
    "system": "/system",
}


def fake_gpus(now: float) -> dict[str, Any]:
    """Two H200s over three minutes, as the NVML path reports them."""
    series: dict[str, list[float]] = {"cpu_pct": [], "ram_pct": []}
    for i in range(2):
        series[f"gpu{i}_util_pct"] = [float((7 * t + 31 * i) % 100) for t in range(60)]
        series[f"gpu{i}_mem_pct"] = [40.0 + (t % 20) + 10 * i for t in range(60)]
    series["cpu_pct"] = [float(20 + t % 30) for t in range(60)]
    series["ram_pct"] = [35.0 + t % 5 for t in range(60)]
    gpus = [
        {
            "index": i,
            "name": "NVIDIA H200",
            "util_pct": series[f"gpu{i}_util_pct"][-1],
            "mem_used": int(143771 * 1024**2 * series[f"gpu{i}_mem_pct"][-1] / 100),
            "mem_total": 143771 * 1024**2,
            "temperature_c": 61.0 + i,
            "power_w": 512.0 + i,
        }
        for i in range(2)
    ]
    last = {
        "at": now,
        "gpus": gpus,
        "cpu_pct": 49.0,
        "ram_used": 9 * 1024**3,
        "ram_total": 24 * 1024**3,
    }
    return {
        "source": "nvml",
        "nvml_error": "",
        "driver": "570.86.15",
        "gpu_count": 2,
        "last": last,
        "series": series,
    }


def main(out: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="flopnet-seed-"))
    devnet = Devnet(DevnetOptions(workers=1, cheaters=1, tasks=4, data_dir=root))
    try:
        devnet.start()
        devnet.wait_done(400)
        time.sleep(4)  # replicas, receipts and profiles settle
        seed: dict[str, Any] = {"clock": time.time(), "nodes": {}}
        for name in ("validator", "worker-1", "cheater-1"):
            info = read_node_info(root / name)
            assert info is not None
            docs = {key: api_get(info, path) for key, path in PATHS.items()}
            details = {}
            for row in docs["tasks"]["tasks"][:3]:
                details[row["lease_id"]] = api_get(info, f"/tasks/{row['lease_id']}")
            docs["task_details"] = details
            if name == "worker-1":
                docs["system"] = fake_gpus(seed["clock"])
            seed["nodes"][name] = docs
    finally:
        devnet.stop()
    out.write_text(json.dumps(seed, indent=1, sort_keys=True))
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
