"""The node's API and TUI while a devnet runs: the issue's three figures.

    .venv/bin/python benchmarks/tui_bench.py [--out benchmarks/results/tui.json]

Starts a devnet (2 workers, 6 tasks, 96 new tokens; real processes on 127.0.0.1) and, while
it works:

* **API status latency**: ``GET /status`` on the validator and on a worker, one after another
  over a kept-alive connection (each answer builds the whole status document), N times;
  p50/p99/max in ms. Target: p99 < 20 ms.
* **Event latency**: the TUI (the real app, headless, attached live to a worker) and a
  command that changes the worker's state (the schedule, set and cleared: it publishes a
  ``control`` event and changes nothing else). Latency = when the TUI applied the event and
  redrew its header minus when the daemon published it (both the machine's wall clock).
  Target: < 250 ms.
* **First paint**: a fresh ``python`` process that imports the TUI, attaches to the devnet and
  runs headless; time from just before the process is spawned to the first frame (cold: the
  interpreter and every import included). Target: < 1 s.

Writes one JSON document with the machine, the date, the load average before and after (the
machine is shared: other work competes for its 2 cores) and every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from flopnet.node.cli.devnet import Devnet, DevnetOptions
from flopnet.node.local import read_node_info
from flopnet.tui.app import FlopnetApp
from flopnet.tui.client import attach_targets

STATUS_CALLS = 300
TOGGLES = 30
COLD_STARTS = 5

FIRST_PAINT = r"""
import asyncio, sys, time
from pathlib import Path
from flopnet.tui.app import FlopnetApp
from flopnet.tui.client import attach_targets

async def main():
    app = FlopnetApp(attach_targets(Path(sys.argv[1])), "bench")
    async with app.run_test(size=(80, 24)) as pilot:
        while app.first_paint_at is None:
            await pilot.pause(0.01)
        print(app.first_paint_at)

asyncio.run(main())
"""


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "n": len(values),
        "p50": round(pick(0.50), 2),
        "p99": round(pick(0.99), 2),
        "max": round(ordered[-1], 2),
        "mean": round(statistics.fmean(values), 2),
    }


def status_latency(node_dir: Path) -> dict[str, float]:
    info = read_node_info(node_dir)
    assert info is not None
    headers = {"Authorization": f"Bearer {info['token']}"}
    out = []
    with httpx.Client(base_url=info["api_url"], headers=headers, timeout=10) as client:
        client.get("/status").raise_for_status()
        for _ in range(STATUS_CALLS):
            started = time.perf_counter()
            client.get("/status").raise_for_status()
            out.append((time.perf_counter() - started) * 1000)
    return percentiles(out)


async def event_latency(node_dir: Path) -> dict[str, float]:
    info = read_node_info(node_dir)
    assert info is not None
    headers = {"Authorization": f"Bearer {info['token']}"}
    app = FlopnetApp(attach_targets(node_dir), "bench")
    latencies = []
    async with (
        app.run_test(size=(80, 24)) as pilot,
        httpx.AsyncClient(base_url=info["api_url"], headers=headers, timeout=10) as client,
    ):
        while not app.current.connected:
            await pilot.pause(0.05)
        for i in range(TOGGLES):
            schedule = "00:00-24:00" if i % 2 == 0 else None
            answer = await client.put("/control/schedule", json={"schedule": schedule})
            answer.raise_for_status()
            deadline = time.time() + 5
            while time.time() < deadline and _schedule(app) != schedule:
                await pilot.pause(0.005)
            await pilot.pause(0.2)
    published = _published_control_events(info)
    for seq, at in published.items():
        seen = app.event_seen_at.get(seq)
        if seen is not None:
            latencies.append((seen - at) * 1000)
    return percentiles(latencies)


def _schedule(app: FlopnetApp) -> Any:
    return ((app.current.status.get("control") or {}).get("settings") or {}).get("schedule")


def _published_control_events(info: dict[str, Any]) -> dict[int, float]:
    """The control events the daemon published (id -> its publication time), read back from
    the event stream's replay of kept events."""
    headers = {"Authorization": f"Bearer {info['token']}", "Last-Event-ID": "0"}
    out: dict[int, float] = {}
    with httpx.stream(
        "GET",
        info["api_url"] + "/events",
        headers=headers,
        params={"kinds": "control"},
        timeout=httpx.Timeout(10, read=2),
    ) as stream:
        event_id = 0
        try:
            for line in stream.iter_lines():
                if line.startswith(": keepalive"):
                    break  # the replay of kept events is over
                if line.startswith("id:"):
                    event_id = int(line[3:])
                elif line.startswith("data:"):
                    at = json.loads(line[5:]).get("at")
                    if at is not None:  # not a resync notice
                        out[event_id] = at
        except httpx.ReadTimeout:
            pass  # the replay is over
    return out


def first_paint(devnet_dir: Path) -> dict[str, float]:
    times = []
    for _ in range(COLD_STARTS):
        started = time.time()
        done = subprocess.run(
            [sys.executable, "-c", FIRST_PAINT, str(devnet_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the TUI did not start: {done.stderr[-3000:]}")
        times.append((float(done.stdout.strip().splitlines()[-1]) - started) * 1000)
    return percentiles(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tui.json"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="flopnet-tui-bench-"))
    net = Devnet(DevnetOptions(workers=2, tasks=6, max_new_tokens=96, data_dir=root))
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_before": [round(x, 1) for x in load_before],
    }
    try:
        net.start()
        working = {"busy": True}

        def watch() -> None:
            net.wait_done(600)
            working["busy"] = False

        threading.Thread(target=watch, daemon=True).start()
        result["status_validator_ms"] = status_latency(root / "validator")
        result["status_worker_ms"] = status_latency(root / "worker-1")
        result["status_measured_while_devnet_busy"] = working["busy"]
        result["event_to_tui_ms"] = asyncio.run(event_latency(root / "worker-1"))
        result["first_paint_cold_ms"] = first_paint(root)
        result["devnet_finished"] = net.wait_done(600)
    finally:
        net.stop()
    result["load_after"] = [round(x, 1) for x in os.getloadavg()]
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
