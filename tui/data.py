"""What the TUI knows of one node: the API's documents as last read, kept current by events.

:meth:`NodeData.apply` folds a server-sent event in (pure: no I/O) and returns the documents
that are now stale and must be read again; events that carry everything needed (control
changes, log lines, machine samples, the state badge) change the data at once, so the screen
shows them without another request.
"""

from __future__ import annotations

import builtins
import time
from dataclasses import dataclass, field
from typing import Any

# The documents a screen shows; the app reads what the current screen needs.
DOCUMENTS = (
    "status",
    "tasks",
    "verdicts",
    "credits",
    "why",
    "peers",
    "leaderboard",
    "logs",
    "config",
    "health",
    "validator",
    "system",
)
# Which documents an event makes stale.
STALE_AFTER: dict[str, tuple[str, ...]] = {
    "control": ("status",),
    "task": ("tasks", "verdicts", "status"),
    "verdict": ("validator", "status", "leaderboard"),
    "credit": ("credits", "why", "leaderboard"),
    "peers": ("peers", "status"),
    "resync": DOCUMENTS,
}
MAX_LOG_LINES = 2000
MAX_SERIES = 180


@dataclass
class NodeData:
    """The documents of one node (None until first read) and what the events changed."""

    name: str
    docs: dict[str, Any] = field(default_factory=dict)
    last_event_id: int | None = None
    connected: bool = False  # the event stream is up
    error: str = ""
    updated_at: float = 0.0
    window: str = "all"  # the leaderboard's window

    def doc(self, name: str) -> Any:
        return self.docs.get(name)

    def put(self, name: str, value: Any, now: float | None = None) -> None:
        self.docs[name] = value
        self.updated_at = time.time() if now is None else now

    @property
    def status(self) -> dict[str, Any]:
        return self.docs.get("status") or {}

    @property
    def badge(self) -> dict[str, str]:
        return self.status.get("state") or {"badge": "connecting", "why": "", "level": "busy"}

    def apply(self, event_id: int, kind: str, data: Any) -> builtins.set[str]:
        """Fold one event in; return the documents to read again."""
        if kind == "open":
            self.connected = True
            return {"status"}
        self.last_event_id = event_id
        stale = set(STALE_AFTER.get(kind, ()))
        if not isinstance(data, dict):
            return stale
        status = self.docs.get("status")
        if kind == "control" and isinstance(status, dict):
            status["control"] = {
                "settings": data.get("settings"),
                "effective": data.get("effective"),
            }
            # The badge follows from the control at once (the daemon's rule for a paused worker).
            effective = data.get("effective") or {}
            if effective.get("state") in ("paused", "finishing", "holding"):
                text = effective.get("badge", "")
                if effective.get("state") == "finishing":
                    text = "finishing, then pausing"
                level = "warn" if effective.get("state") == "paused" else "busy"
                status["state"] = {"badge": text, "why": effective.get("why", ""), "level": level}
        elif kind == "status" and isinstance(status, dict):
            status["state"] = {k: data.get(k, "") for k in ("badge", "why", "level")}
        elif kind == "log":
            logs = self.docs.setdefault("logs", {"lines": []})
            lines = logs.setdefault("lines", [])
            lines.extend(data.get("lines") or [])
            del lines[:-MAX_LOG_LINES]
        elif kind == "system":
            self._add_sample(data)
        elif kind == "task" and self._update_task(data):
            return set()  # its output grew: the row now says all there is to say
        return stale

    def _add_sample(self, sample: dict[str, Any]) -> None:
        system = self.docs.setdefault("system", {"series": {}, "last": None})
        system["last"] = sample
        series = system.setdefault("series", {})

        def push(name: str, value: float) -> None:
            values = series.setdefault(name, [])
            values.append(value)
            del values[:-MAX_SERIES]

        push("cpu_pct", float(sample.get("cpu_pct", 0.0)))
        total = sample.get("ram_total") or 0
        push("ram_pct", 100.0 * sample.get("ram_used", 0) / total if total else 0.0)
        for gpu in sample.get("gpus") or []:
            i = gpu.get("index", 0)
            push(f"gpu{i}_util_pct", float(gpu.get("util_pct", 0.0)))
            mem_total = gpu.get("mem_total") or 0
            push(f"gpu{i}_mem_pct", 100.0 * gpu.get("mem_used", 0) / mem_total if mem_total else 0)

    def _update_task(self, row: dict[str, Any]) -> bool:
        """Put the event's row in the tasks document; True if only its output grew (a
        streaming update: same stage), which makes no other document stale."""
        tasks = self.docs.get("tasks")
        if not isinstance(tasks, dict):
            return False
        rows = tasks.setdefault("tasks", [])
        for i, existing in enumerate(rows):
            if existing.get("lease_id") == row.get("lease_id"):
                rows[i] = row
                return existing.get("stage") == row.get("stage") == "generating"
        rows.insert(0, row)
        return False
