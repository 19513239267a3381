"""The validator's view: its queue, the audit rate per contributor, the last rejections with
their reasons, and the health of its sandbox and model process."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import DataTable, Static

from flopnet.tui.data import NodeData
from flopnet.tui.format import LEVEL_MARK, LEVEL_STYLE, ago, short_peer
from flopnet.tui.widgets import NodeScreen


def summary_text(view: dict[str, Any] | None) -> Text:
    """Queue depth, verdicts by reason, sandbox and model health (pure)."""
    out = Text()
    if not view:
        out.append("reading…", "dim")
        return out
    if not view.get("validator"):
        out.append("this node is not a validator", "dim")
        return out
    out.append(f"queue {view['queued']}  ", "bold")
    reasons = view.get("verdicts_by_reason") or {}
    out.append(", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "no verdict yet")
    out.append("\n")
    for key in ("sandbox", "model"):
        check = view.get(key) or {}
        level = check.get("level", "ok")
        out.append(f"{LEVEL_MARK.get(level, '?')} {key}: ", LEVEL_STYLE.get(level, ""))
        out.append(f"{check.get('summary', '')}\n")
    return out


def rate_rows(view: dict[str, Any] | None) -> list[tuple[Any, ...]]:
    rows = []
    for r in (view or {}).get("audit_rates") or []:
        failures = Text(str(r["failures"]), "bold red" if r["failures"] else "")
        rows.append(
            (short_peer(r["peer_id"]), f"{r['audit_rate']:.2f}", r["consecutive_valid"], failures)
        )
    return rows


def rejection_rows(view: dict[str, Any] | None, now: float) -> list[tuple[Any, ...]]:
    rows = []
    for r in (view or {}).get("rejections") or []:
        rows.append(
            (
                ago(r["timestamp"], now),
                short_peer(r["peer_id"]),
                r["category"],
                r["reasons"][0][:60],
            )
        )
    return rows


class ValidatorScreen(NodeScreen):
    """What the validator is checking and how it judged."""

    CSS_PATH = "validator.tcss"
    NEEDS = ("status", "validator")

    def body(self) -> ComposeResult:
        yield Static(id="val-summary", classes="panel")
        with Horizontal(id="val-tables"):
            yield DataTable(id="val-rates", zebra_stripes=True)
            yield DataTable(id="val-queue", zebra_stripes=True)
        yield DataTable(id="val-rejections", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#val-summary").border_title = "Validator"
        self.query_one("#val-rates", DataTable).add_columns("contributor", "rate", "ok", "fail")
        self.query_one("#val-queue", DataTable).add_columns("queued from", "waiting")
        self.query_one("#val-rejections", DataTable).add_columns("when", "from", "why", "reason")
        super().on_mount()

    def show(self, data: NodeData) -> None:
        view = data.doc("validator")
        self.query_one("#val-summary", Static).update(summary_text(view))
        rates = self.query_one("#val-rates", DataTable)
        rates.clear()
        for row in rate_rows(view):
            rates.add_row(*row)
        queue = self.query_one("#val-queue", DataTable)
        queue.clear()
        for item in (view or {}).get("queue") or []:
            queue.add_row(short_peer(item["peer_id"]), f"{item['waiting_s']:.0f}s")
        rejections = self.query_one("#val-rejections", DataTable)
        rejections.clear()
        for row in rejection_rows(view, self.now()):
            rejections.add_row(*row)
