"""Setup and health: identity, manifest, model and weights hash, GPUs, sandbox, disk and clock,
each with a verdict and a sentence."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from flopnet.tui.data import NodeData
from flopnet.tui.format import LEVEL_MARK, LEVEL_STYLE
from flopnet.tui.widgets import NodeScreen

TITLES = {
    "identity": "Identity",
    "manifest": "Manifest",
    "model": "Model and weights",
    "gpus": "GPUs",
    "sandbox": "Sandbox",
    "disk": "Disk",
    "clock": "Clock",
}


def health_text(health: dict[str, Any] | None, config: dict[str, Any] | None) -> Text:
    """Every check on its own lines, worst marked first in its line (pure)."""
    out = Text()
    if not health:
        out.append("reading…", "dim")
        return out
    for check in health.get("checks") or []:
        level = check.get("level", "ok")
        out.append(f"{LEVEL_MARK.get(level, '?')} ", LEVEL_STYLE.get(level, ""))
        out.append(f"{TITLES.get(check['check'], check['check']):<18}", "bold")
        out.append(f"{check.get('summary', '')}\n")
        details = check.get("details") or {}
        if check["check"] == "model" and details.get("weights_sha256"):
            out.append(f"{'':20}sha256 {details['weights_sha256']}\n", "dim")
        if check["check"] == "manifest" and details.get("weights_sha256"):
            out.append(f"{'':20}pinned {details['weights_sha256']}\n", "dim")
    control = (config or {}).get("control")
    if control:
        s = control.get("settings") or {}
        out.append("\nControl  ", "bold")
        out.append(
            f"schedule {s.get('schedule') or 'always'}, batch size {s.get('batch_size')}, "
            f"GPUs {s.get('gpus') or 'all'} (c to change)"
        )
    return out


class HealthScreen(NodeScreen):
    """What the node runs on, and whether it is sound."""

    CSS_PATH = "health.tcss"
    NEEDS = ("status", "health", "config")

    def body(self) -> ComposeResult:
        with VerticalScroll(id="health-scroll"):
            yield Static(id="health-text")

    def show(self, data: NodeData) -> None:
        text = health_text(data.doc("health"), data.doc("config"))
        self.query_one("#health-text", Static).update(text)
