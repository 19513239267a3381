"""Why no credit: every rejected or voided result in plain words, with the evidence (each
measured value beside its threshold) and what to do about it."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from flopnet.tui.data import NodeData
from flopnet.tui.format import ago, flops
from flopnet.tui.screens.task_detail import measures_text
from flopnet.tui.widgets import NodeScreen


def why_rows(why: dict[str, Any] | None, now: float) -> list[tuple[Any, ...]]:
    """One row per rejected or voided credit, newest first (pure)."""
    rows = []
    for i, item in enumerate((why or {}).get("items") or []):
        e = item["explanation"]
        state = Text("voided", "bold red") if item["state"] == "void" else Text("rejected", "red")
        lost = flops(item["flops"]) if item["state"] == "void" else "-"
        rows.append((ago(item["timestamp"], now), item["task_id"], state, lost, e["headline"], i))
    return rows


def explanation_text(item: dict[str, Any]) -> Text:
    """One item's explanation in full (pure)."""
    e = item["explanation"]
    out = Text()
    out.append(e["headline"] + "\n", "bold")
    fault = {True: "caused by this node", False: "not this node's fault", None: "cause unclear"}
    out.append(f"{item['task_id']}#{item['sample_index']}  ", "dim")
    out.append(f"{fault[e['your_fault']]}  validator seq {item['seq']}\n", "dim")
    out.append("What to do: ", "bold")
    out.append(e["advice"] + "\n")
    if e["measures"]:
        out.append_text(measures_text(e["measures"]))
    out.append("Evidence\n", "bold underline")
    for line in e["evidence"]:
        out.append(f"• {line}\n")
    return out


class WhyScreen(NodeScreen):
    """Rejected and voided results, one explained at a time."""

    CSS_PATH = "why.tcss"
    NEEDS = ("status", "why")
    AUTO_FOCUS = "#why-table"

    def body(self) -> ComposeResult:
        yield DataTable(id="why-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="why-detail-scroll"):
            yield Static(id="why-detail")

    def on_mount(self) -> None:
        table = self.query_one("#why-table", DataTable)
        table.add_columns("when", "task", "what", "lost", "why")
        super().on_mount()

    def show(self, data: NodeData) -> None:
        table = self.query_one("#why-table", DataTable)
        cursor = table.cursor_row
        table.clear()
        why = data.doc("why")
        rows = why_rows(why, self.now())
        for row in rows:
            table.add_row(*row[:-1], key=str(row[-1]))
        detail = self.query_one("#why-detail", Static)
        if not rows:
            detail.update(
                Text(
                    "Nothing to explain: no result of this node was rejected or voided."
                    if why is not None
                    else "reading…",
                    "green" if why is not None else "dim",
                )
            )
            return
        table.move_cursor(row=min(max(cursor, 0), len(rows) - 1))
        self._explain(why, table.cursor_row)

    def _explain(self, why: dict[str, Any] | None, index: int) -> None:
        items = (why or {}).get("items") or []
        if 0 <= index < len(items):
            self.query_one("#why-detail", Static).update(explanation_text(items[index]))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._explain(self.doc("why"), event.cursor_row)
