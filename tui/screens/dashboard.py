"""The Dashboard: the machine (each GPU's utilisation and memory with sparklines, from NVML;
CPU and RAM when there is no GPU), the work (tokens/s, tasks by stage), credit (pending vs
final, FLOPs per day), and the network's progress when this node publishes."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from flopnet.tui.data import NodeData
from flopnet.tui.format import flops, percent, size, spark
from flopnet.tui.widgets import NodeScreen

SPARK = 20
STAGE_NAMES = (
    ("claimed", "claimed"),
    ("generating", "generating"),
    ("submitting", "submitting"),
    ("submitted", "submitted"),
    ("verdict", "verdicts"),
    ("released", "handed back"),
    ("failed", "failed"),
)


def machine_text(system: dict[str, Any] | None) -> Text:
    """Per-GPU utilisation and memory with sparklines, else CPU and RAM (pure)."""
    out = Text()
    if not system or not system.get("last"):
        out.append("waiting for the first sample…", "dim")
        return out
    last, series = system["last"], system.get("series") or {}
    gpus = last.get("gpus") or []
    for gpu in gpus:
        i = gpu["index"]
        out.append(f"GPU{i} ", "bold")
        out.append(f"{gpu['name'][:18]}\n")
        out.append(f"  util {percent(gpu['util_pct']):>4} ")
        out.append(spark(series.get(f"gpu{i}_util_pct", []), SPARK, 100.0) + "\n", "green")
        mem = f"{size(gpu['mem_used'])}/{size(gpu['mem_total'])}"
        out.append(f"  mem  {mem:>17} ")
        out.append(spark(series.get(f"gpu{i}_mem_pct", []), SPARK // 2, 100.0) + "\n", "cyan")
    if not gpus:
        out.append("no GPU (NVML); CPU and RAM\n", "dim")
    out.append(f"CPU {percent(last['cpu_pct']):>4} ")
    out.append(spark(series.get("cpu_pct", []), SPARK, 100.0) + "\n", "green")
    ram = f"{size(last['ram_used'])}/{size(last['ram_total'])}"
    out.append(f"RAM {ram} ")
    out.append(spark(series.get("ram_pct", []), SPARK // 2, 100.0), "cyan")
    return out


def work_text(status: dict[str, Any]) -> Text:
    """Tokens/s and tasks by stage for a worker; queue and verdicts for a validator (pure)."""
    out = Text()
    worker = status.get("worker")
    if worker:
        out.append("tokens/s ", "bold")
        out.append(f"{worker.get('tokens_per_s', 0.0):.1f}")
        out.append(f"  ({worker.get('tokens_generated', 0)} generated)\n", "dim")
        stages = worker.get("stages") or {}
        parts = [f"{label} {stages.get(key, 0)}" for key, label in STAGE_NAMES if stages.get(key)]
        out.append("tasks ", "bold")
        out.append(", ".join(parts) if parts else "none yet")
        out.append(f"\naccepted {worker.get('accepted', 0)}  rejected {worker.get('rejected', 0)}")
        out.append(f"  batch {worker.get('batch_size', 1)}\n")
    validator = status.get("validator")
    if validator:
        out.append("validator ", "bold")
        out.append(
            f"queued {validator.get('queued', 0)}, accepted {validator.get('accepted', 0)}, "
            f"rejected {validator.get('rejected', 0)}, audits {validator.get('audits', 0)}\n"
        )
    publisher = status.get("publisher")
    if publisher:
        s = publisher.get("samples") or {}
        out.append("network ", "bold")
        out.append(
            f"{publisher.get('tasks', 0)} tasks: {s.get('done', 0)} done, "
            f"{s.get('leased', 0)} leased, {s.get('open', 0)} open"
        )
        if publisher.get("all_done"):
            out.append("  ✔ all validated", "bold green")
        out.append("\n")
    if not out.plain:
        out.append("no worker, validator or publisher role", "dim")
    return out


def credit_text(credits: dict[str, Any] | None) -> Text:
    """Pending vs final credit and FLOPs per day (pure)."""
    out = Text()
    if not credits:
        out.append("no credit read yet", "dim")
        return out
    if not credits.get("worker", True):
        out.append("this node does no work of its own: it earns no credit", "dim")
        return out
    summary = credits.get("summary") or {}

    def row(state: str, label: str, style: str) -> None:
        entry = summary.get(state) or {}
        out.append(f"{label:<9}", style)
        out.append(f"{flops(entry.get('flops', 0)):>10}  ({entry.get('count', 0)})\n")

    row("pending", "pending", "bold yellow")
    row("final", "final", "bold green")
    row("void", "voided", "bold red")
    row("rejected", "rejected", "dim")
    days = credits.get("flops_per_day") or []
    values = [float(d["flops"]) for d in days]
    out.append("FLOPs/day ", "bold")
    out.append(spark(values, min(14, len(values) or 1)), "magenta")
    if days:
        out.append(f" today {flops(days[-1]['flops'])}")
    return out


class DashboardScreen(NodeScreen):
    """The node at a glance."""

    CSS_PATH = "dashboard.tcss"
    NEEDS = ("status", "system", "credits")

    def body(self) -> ComposeResult:
        with Horizontal(id="dash-top"):
            yield Static(id="dash-machine", classes="panel")
            with Vertical(id="dash-right"):
                yield Static(id="dash-work", classes="panel")
                yield Static(id="dash-credit", classes="panel")

    def on_mount(self) -> None:
        self.query_one("#dash-machine").border_title = "Machine"
        self.query_one("#dash-work").border_title = "Work"
        self.query_one("#dash-credit").border_title = "Credit"
        super().on_mount()

    def show(self, data: NodeData) -> None:
        self.query_one("#dash-machine", Static).update(machine_text(data.doc("system")))
        self.query_one("#dash-work", Static).update(work_text(data.status))
        credits = data.doc("credits")
        if credits is not None and data.status and "worker" not in data.status.get("roles", []):
            credits = {**credits, "worker": False}
        self.query_one("#dash-credit", Static).update(credit_text(credits))
