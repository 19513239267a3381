"""A minimal Textual view of running nodes: roles, counters, and the validator's leaderboard.

It talks to each node's local API over HTTP only (found through ``node.json`` and ``api.token``
in the node's data directory), so it never imports torch or libp2p, and quitting it leaves
``flopnet node`` daemons running. The full TUI is a later issue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

REFRESH_S = 1.0


@dataclass(frozen=True)
class NodeTarget:
    """A node to show: a display name and its data directory."""

    name: str
    data_dir: Path

    def endpoint(self) -> tuple[str, str] | None:
        """(API base URL, token) once the node is up, else None."""
        try:
            info = json.loads((self.data_dir / "node.json").read_text())
            token = (self.data_dir / "api.token").read_text().strip()
        except (OSError, json.JSONDecodeError):
            return None
        return str(info["api_url"]), token


def attach_targets(data_dir: Path) -> list[NodeTarget]:
    """The node in ``data_dir``, or every node one level below it (a devnet's directory)."""
    if (data_dir / "node.json").exists():
        return [NodeTarget(data_dir.name, data_dir)]
    targets = [NodeTarget(p.parent.name, p.parent) for p in sorted(data_dir.glob("*/node.json"))]
    if not targets:
        raise SystemExit(f"flopnet: error: no running node found under {data_dir}")
    return targets


def _fmt_flops(value: int) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return str(value)


class FlopnetView(App[None]):
    """Nodes and leaderboard, refreshed every second."""

    TITLE = "flopnet"
    BINDINGS: ClassVar = [Binding("q", "quit", "Quit"), Binding("r", "refresh", "Refresh")]
    CSS = """
    #summary { height: 3; padding: 0 1; }
    DataTable { height: auto; max-height: 50%; margin: 0 1 1 1; }
    """

    def __init__(self, targets: list[NodeTarget], title: str = "flopnet") -> None:
        super().__init__()
        self.targets = targets
        self.sub_title = title
        self._client: httpx.AsyncClient | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting…", id="summary")
        yield DataTable(id="nodes", zebra_stripes=True)
        yield DataTable(id="leaderboard", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        nodes = self.query_one("#nodes", DataTable)
        nodes.add_columns("node", "roles", "peer id", "state", "accepted", "rejected", "tokens")
        board = self.query_one("#leaderboard", DataTable)
        board.add_columns("rank", "contributor", "FLOPs", "tasks", "rejected", "tokens")
        self._client = httpx.AsyncClient(timeout=2.0)
        self.set_interval(REFRESH_S, self.action_refresh)
        self.call_later(self.action_refresh)

    async def on_unmount(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def _get(self, target: NodeTarget, path: str) -> Any:
        endpoint = target.endpoint()
        if endpoint is None or self._client is None:
            return None
        url, token = endpoint
        try:
            response = await self._client.get(
                url + path, headers={"Authorization": f"Bearer {token}"}
            )
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError):
            return None

    async def action_refresh(self) -> None:
        """Poll every node and redraw."""
        nodes = self.query_one("#nodes", DataTable)
        nodes.clear()
        board_rows: list[dict[str, Any]] = []
        summary = "waiting for the publisher…"
        for target in self.targets:
            status = await self._get(target, "/status")
            if status is None:
                nodes.add_row(target.name, "", "", "starting / unreachable", "", "", "")
                continue
            role = status.get("worker") or status.get("validator") or {}
            nodes.add_row(
                target.name,
                ",".join(status["roles"]),
                status["peer_id"][-12:],
                f"up {status['uptime_s']:.0f}s, {len(status['peers'])} peers",
                str(role.get("accepted", "")),
                str(role.get("rejected", "")),
                str(role.get("tokens_generated", "")),
            )
            publisher = status.get("publisher")
            if publisher:
                s = publisher["samples"]
                summary = (
                    f"tasks {publisher['tasks']}: {s['done']} done, {s['leased']} leased, "
                    f"{s['open']} open; {publisher['leases_issued']} leases issued"
                    + ("  ✔ all validated" if publisher["all_done"] else "")
                )
            if status.get("validator"):
                board_rows = await self._get(target, "/leaderboard") or []
        self.query_one("#summary", Static).update(summary)
        board = self.query_one("#leaderboard", DataTable)
        board.clear()
        for rank, row in enumerate(board_rows, 1):
            board.add_row(
                str(rank),
                row["peer_id"],
                _fmt_flops(int(row["flops"])),
                str(row["tasks_accepted"]),
                str(row["tasks_rejected"]),
                str(row["generated_tokens"]),
            )


def run_tui(targets: list[NodeTarget], title: str = "flopnet") -> None:
    """Run the view until the user quits."""
    FlopnetView(targets, title).run()
