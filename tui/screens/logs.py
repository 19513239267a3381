"""Logs: the node's recent log lines, by level (keys: a all, i info, e warnings and errors)
and by search text."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Input, RichLog, Static

from flopnet.tui.data import NodeData
from flopnet.tui.widgets import NodeScreen

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LEVEL_STYLE = {"WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red", "DEBUG": "dim"}


def log_lines(logs: dict[str, Any] | None, level: str, text: str) -> list[Text]:
    """Lines at ``level`` or above holding ``text`` (pure)."""
    floor = LEVELS.index(level)
    needle = text.lower().strip()
    out = []
    for line in (logs or {}).get("lines") or []:
        lvl = line.get("level", "INFO")
        if (LEVELS.index(lvl) if lvl in LEVELS else 1) < floor:
            continue
        message = str(line.get("message", ""))
        if needle and needle not in message.lower() and needle not in line.get("logger", ""):
            continue
        stamp = time.strftime("%H:%M:%S", time.localtime(line.get("at", 0)))
        row = Text(f"{stamp} ")
        row.append(f"{lvl[:4]:<4} ", LEVEL_STYLE.get(lvl, ""))
        row.append(f"{line.get('logger', '').removeprefix('flopnet.')}: ", "dim")
        row.append(message)
        out.append(row)
    return out


class LogsScreen(NodeScreen):
    """The node's log, filtered."""

    CSS_PATH = "logs.tcss"
    NEEDS = ("status", "logs")
    AUTO_FOCUS = "#logs-view"  # letters are keys here; "/" moves to the search field
    BINDINGS: ClassVar = [
        Binding("a", "level('DEBUG')", "All"),
        Binding("i", "level('INFO')", "Info+"),
        Binding("e", "level('WARNING')", "Warn+"),
        Binding("slash", "search", "Search", show=False),
        Binding("escape", "leave_search", "Back", show=False),
    ]

    level = "INFO"

    def body(self) -> ComposeResult:
        with Horizontal(id="logs-bar"):
            yield Static(id="logs-level")
            yield Input(placeholder="search", id="logs-search")
        yield RichLog(id="logs-view", wrap=True, markup=False, max_lines=2000)

    def action_search(self) -> None:
        self.query_one("#logs-search", Input).focus()

    def action_leave_search(self) -> None:
        self.query_one("#logs-view", RichLog).focus()

    def action_level(self, level: str) -> None:
        self.level = level
        self.redraw()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.redraw()

    def show(self, data: NodeData) -> None:
        self.query_one("#logs-level", Static).update(f"level ≥ {self.level}")
        view = self.query_one("#logs-view", RichLog)
        text = self.query_one("#logs-search", Input).value
        lines = log_lines(data.doc("logs"), self.level, text)
        view.clear()
        for line in lines[-500:]:
            view.write(line)
