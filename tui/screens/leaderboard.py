"""Leaderboard: contributors by credited FLOPs over 24 h, 7 days or all time (keys 1, 2, 3),
with this node's own row pinned on top and each one's recent average credit per day."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from flopnet.tui.data import NodeData
from flopnet.tui.format import flops, short_peer
from flopnet.tui.widgets import NodeScreen

WINDOW_TITLES = {"24h": "last 24 hours", "7d": "last 7 days", "all": "all time"}


def board_rows(rows: list[dict[str, Any]] | None) -> list[tuple[Any, ...]]:
    """Your row first (marked), then the ranking (pure)."""
    rows = rows or []
    mine = [r for r in rows if r.get("you")]
    out = []
    for row in [*mine, *rows]:
        you = bool(row.get("you"))
        name = row.get("display_name") or short_peer(row["peer_id"])
        label = Text(("▶ " if you else "") + name, "bold reverse" if you else "")
        out.append(
            (
                row["rank"],
                label,
                row.get("team") or "-",
                flops(row["flops"]),
                flops(row.get("pending_flops", 0)),
                flops(row.get("flops_7d", 0) / 7.0),
                row.get("tasks_accepted", 0),
                row.get("tasks_rejected", 0) + row.get("tasks_voided", 0),
            )
        )
    return out


class LeaderboardScreen(NodeScreen):
    """The ranking, from this node's own ledger replica."""

    CSS_PATH = "leaderboard.tcss"
    NEEDS = ("status", "leaderboard")
    BINDINGS: ClassVar = [
        Binding("1", "app.window('24h')", "24 h"),
        Binding("2", "app.window('7d')", "7 d"),
        Binding("3", "app.window('all')", "All"),
    ]

    def body(self) -> ComposeResult:
        yield Static(id="board-title", classes="hint")
        yield DataTable(id="board-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one("#board-table", DataTable)
        table.add_columns("#", "contributor", "team", "FLOPs", "pending", "avg/day", "ok", "bad")
        super().on_mount()

    def show(self, data: NodeData) -> None:
        title = f"Ranked by credited FLOPs, {WINDOW_TITLES[data.window]} (1: 24 h  2: 7 d  3: all)"
        self.query_one("#board-title", Static).update(title)
        table = self.query_one("#board-table", DataTable)
        table.clear()
        board = data.doc("leaderboard")
        for row in board_rows(board if isinstance(board, list) else None):
            table.add_row(*row)
