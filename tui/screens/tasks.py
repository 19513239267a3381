"""Tasks: the worker's leases with their stage, filtered by text; Enter opens one
(:mod:`flopnet.tui.screens.task_detail`)."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Input, Static

from flopnet.tui.data import NodeData
from flopnet.tui.format import ago, flops
from flopnet.tui.screens.task_detail import TaskDetailScreen
from flopnet.tui.widgets import NodeScreen

STAGE_STYLE = {
    "verdict": "green",
    "released": "yellow",
    "failed": "red",
    "generating": "cyan",
    "submitted": "cyan",
}


def task_rows(tasks: dict[str, Any] | None, text: str, now: float) -> list[tuple[Any, ...]]:
    """Rows of the table, filtered by ``text`` (in the task, stage or verdict) (pure)."""
    out = []
    needle = text.lower().strip()
    for t in (tasks or {}).get("tasks") or []:
        verdict = {True: "accepted", False: "rejected", None: ""}[t.get("accepted")]
        haystack = f"{t['task_id']} {t['stage']} {verdict} {t.get('note', '')}".lower()
        if needle and needle not in haystack:
            continue
        stage = Text(t["stage"], STAGE_STYLE.get(t["stage"], ""))
        out.append(
            (
                t["task_id"],
                t["sample_index"],
                stage,
                ago(t.get("since"), now),
                t.get("tokens", 0),
                verdict or "-",
                flops(t.get("flops")) if t.get("accepted") else "-",
                t["lease_id"],
            )
        )
    return out


class TasksScreen(NodeScreen):
    """The worker's leases; Enter opens one."""

    CSS_PATH = "tasks.tcss"
    NEEDS = ("status", "tasks")
    AUTO_FOCUS = "#tasks-table"  # letters are keys here; "/" moves to the filter
    BINDINGS: ClassVar = [
        Binding("slash", "filter", "Filter", show=False),
        Binding("escape", "leave_filter", "Back", show=False),
    ]

    def body(self) -> ComposeResult:
        yield Input(placeholder="filter: task, stage or verdict", id="tasks-filter")
        yield DataTable(id="tasks-table", cursor_type="row", zebra_stripes=True)
        yield Static("Enter: details   /: filter", classes="hint")

    def on_mount(self) -> None:
        table = self.query_one("#tasks-table", DataTable)
        table.add_columns("task", "#", "stage", "since", "tokens", "verdict", "FLOPs")
        super().on_mount()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.redraw()

    def show(self, data: NodeData) -> None:
        table = self.query_one("#tasks-table", DataTable)
        text = self.query_one("#tasks-filter", Input).value
        tasks = data.doc("tasks")
        row_key = None
        if table.row_count and table.cursor_row >= 0:
            row_key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value
        table.clear()
        for row in task_rows(tasks, text, self.now()):
            table.add_row(*row[:-1], key=row[-1])
        if row_key is not None and row_key in {r[-1] for r in task_rows(tasks, text, self.now())}:
            table.move_cursor(row=table.get_row_index(row_key))
        if tasks is not None and not tasks.get("worker", True):
            table.add_row("this node has no worker role", "", "", "", "", "", "")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        if key:
            self.app.push_screen(TaskDetailScreen(str(key)))

    def action_filter(self) -> None:
        self.query_one("#tasks-filter", Input).focus()

    def action_leave_filter(self) -> None:
        self.query_one("#tasks-table", DataTable).focus()
