"""Honest throughput under attack, and what an attacker's CPU second costs a validator.

For each scenario a fresh devnet (separate processes on 127.0.0.1: publisher+validator, two
honest workers, the seeded tiny model) runs until its workers have a record (a few accepted
results), then one attack of ``flopnet.testing.hostile`` runs in a process of its own for a fixed
window, while the honest credit made in that window is counted. The baseline is the same window
with no attack. Per scenario:

* ``honest_share``: honest tasks validated per second in the window, as a share of the
  baseline's (the goal is >= 80 %);
* ``validator_cpu_s`` and ``validator_disk_bytes``: what the validator's processes (daemon, model
  child, verifier children) spent in the window, and its data directory's growth;
* ``per_attacker_cpu_s``: the validator's CPU and disk above the baseline's, per CPU second the
  attacker spent (from the attack process's own rusage);
* with ``--controls``, after each attack a control on a fresh devnet: a process that only burns
  the CPU the attacker used (the same share of a core, over the same window) and talks to
  nobody. On a machine whose cores the devnet already fills, an attacker's own CPU is taken from
  honest work whatever the defence; ``share_vs_control`` (the attack's share over its control's)
  is what the attack costs beyond that, which is what the protocol decides.

    python benchmarks/attack_bench.py [--seconds 30] [--tasks 600] [--controls] [--out FILE]

Writes ``benchmarks/results/attacks.json``. The machine is shared: the load average at each
scenario's start is recorded beside its numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flopnet.node.cli.devnet import VALIDATOR_DIR, Devnet, DevnetOptions
from flopnet.node.local import api_get, flopnet_argv
from flopnet.protocol.manifest import MANIFEST_FILE

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "attacks.json"
SCENARIOS: dict[str, list[str]] = {
    "none": [],
    "hoard": ["--identities", "12"],
    "forged": ["--rate", "20"],
    "garbage": ["--identities", "6"],
    "replay": ["--rate", "200"],
    "heartbeats": ["--rate", "200"],
}
TICKS = os.sysconf("SC_CLK_TCK")
# The control's CPU burner: busy for ``share`` of every 10 ms, for ``seconds``.
_BURNER = """
import sys, time
share, seconds = float(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + seconds
while time.monotonic() < end:
    busy = time.monotonic() + 0.01 * share
    while time.monotonic() < busy:
        pass
    time.sleep(0.01 * (1 - share))
"""


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid``'s process tree, children that exited included."""
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return total / TICKS


def _disk_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def _accepted(info: dict[str, Any]) -> int:
    return int(api_get(info, "/status", timeout=20)["validator"]["accepted"])


def run_scenario(name: str, seconds: float, tasks: int, root: Path) -> dict[str, Any]:
    """One devnet, warmed up, then ``seconds`` of attack ``name`` (or none)."""
    net = Devnet(
        DevnetOptions(
            workers=2,
            tasks=tasks,
            max_new_tokens=32,
            data_dir=root / name,
            lease_seconds=20,
            timeout=3600,
        )
    )
    try:
        net.start()
        info = net.validator_info
        assert info is not None
        deadline = time.time() + 300
        while _accepted(info) < 4:
            if time.time() > deadline:
                raise RuntimeError("the devnet did not warm up")
            time.sleep(0.5)
        validator_pid = int(info["pid"])
        validator_dir = net.root / VALIDATOR_DIR

        def sample() -> tuple[int, float, int, float]:
            return (
                _accepted(info),
                _cpu_s(validator_pid),
                _disk_bytes(validator_dir),
                time.monotonic(),
            )

        attacker_cpu = 0.0
        outcome: dict[str, Any] = {}
        load = os.getloadavg()[0]
        if name == "none":
            before = sample()
            time.sleep(seconds)
        elif name.startswith("cpu:"):  # a control: burn a share of a core, talk to nobody
            share = float(name.split(":", 2)[1])
            burner = subprocess.Popen([sys.executable, "-c", _BURNER, str(share), str(seconds)])
            before = sample()
            _, _, usage = os.wait4(burner.pid, 0)
            burner.returncode = 0
            attacker_cpu = usage.ru_utime + usage.ru_stime
        else:
            out = net.root / "attack.json"
            command = [*flopnet_argv()[:2], "flopnet.testing.hostile", name]
            command += ["--manifest", str(net.root / MANIFEST_FILE)]
            command += ["--bootstrap", info["addrs"][0], "--seconds", str(seconds)]
            command += ["--out", str(out), *SCENARIOS[name]]
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            assert process.stderr is not None
            for line in process.stderr:  # the window starts when the attack does
                if line.strip() == "attacking":
                    break
            load = os.getloadavg()[0]
            before = sample()
            process.stderr.read()
            _, _, usage = os.wait4(process.pid, 0)
            process.returncode = 0
            attacker_cpu = usage.ru_utime + usage.ru_stime
            outcome = json.loads(out.read_text()) if out.exists() else {}
            outcome.pop("notices", None)
        accepted0, cpu0, disk0, t0 = before
        accepted1, cpu1, disk1, t1 = sample()
        elapsed = t1 - t0
    finally:
        net.stop()
    return {
        "scenario": name,
        "load_average_at_start": round(load, 2),
        "window_s": round(elapsed, 2),
        "honest_tasks": accepted1 - accepted0,
        "honest_tasks_per_s": round((accepted1 - accepted0) / elapsed, 4),
        "validator_cpu_s": round(cpu1 - cpu0, 2),
        "validator_disk_bytes": disk1 - disk0,
        "attacker_cpu_s": round(attacker_cpu, 2),
        "attack": outcome,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="attack window per scenario")
    parser.add_argument(
        "--tasks", type=int, default=600, help="tasks per devnet (more than a window holds)"
    )
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS))
    parser.add_argument("--controls", action="store_true", help="a CPU control after each attack")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="flopnet-attacks-") as tmp:
        for name in args.scenarios:
            row = run_scenario(name, args.seconds, args.tasks, Path(tmp))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "attack"}), flush=True)
            if args.controls and row["attacker_cpu_s"] > 0:
                share = min(1.0, row["attacker_cpu_s"] / max(row["window_s"], 1e-9))
                control = run_scenario(f"cpu:{share:.3f}", row["window_s"], args.tasks, Path(tmp))
                control["control_for"] = name
                rows.append(control)
                print(json.dumps({k: v for k, v in control.items() if k != "attack"}), flush=True)
    base = next((r for r in rows if r["scenario"] == "none"), None)
    for row in rows:
        if base is None or base["honest_tasks_per_s"] == 0:
            continue
        row["honest_share"] = round(row["honest_tasks_per_s"] / base["honest_tasks_per_s"], 3)
    for row in rows:
        control = next((c for c in rows if c.get("control_for") == row["scenario"]), None)
        if control is not None and control.get("honest_share"):
            row["share_vs_control"] = round(row["honest_share"] / control["honest_share"], 3)
    for row in rows:
        if base is None or base["honest_tasks_per_s"] == 0 or "control_for" in row:
            continue
        if row["attacker_cpu_s"] > 0:
            # Against the attack's own control when there is one (the same window and the same
            # CPU taken from the devnet), else against the baseline scaled to the window.
            control = next((c for c in rows if c.get("control_for") == row["scenario"]), base)
            scale = row["window_s"] / control["window_s"]
            extra_cpu = row["validator_cpu_s"] - control["validator_cpu_s"] * scale
            extra_disk = row["validator_disk_bytes"] - control["validator_disk_bytes"] * scale
            row["per_attacker_cpu_s"] = {
                "validator_cpu_s": round(extra_cpu / row["attacker_cpu_s"], 3),
                "validator_disk_bytes": round(extra_disk / row["attacker_cpu_s"]),
                "compared_with": control["scenario"],
            }
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "note": "2-core VM shared with other developers' work; loopback only; no GPU",
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": args.seconds,
        "tasks": args.tasks,
        "scenarios": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
