"""Network: this node's addresses and reachability, and each peer with its roles, liveness,
latency (libp2p ping) and whether the link is direct or through a relay."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from flopnet.tui.data import NodeData
from flopnet.tui.format import short_peer
from flopnet.tui.widgets import NodeScreen

STATE_STYLE = {"healthy": "green", "unhealthy": "yellow", "gone": "red"}


def self_text(peers: dict[str, Any] | None) -> Text:
    """This node: peer id, addresses, reachable or not, relayed addresses (pure)."""
    out = Text()
    me = (peers or {}).get("self")
    if not me:
        out.append("reading…", "dim")
        return out
    reachable = me.get("reachable")
    out.append("reachable from outside: ", "bold")
    out.append(
        {True: "yes", False: "no (add --relay to be reachable)", None: "not checked yet"}[
            reachable
        ],
        {True: "green", False: "bold red", None: "dim"}[reachable],
    )
    out.append("\n")
    for addr in (me.get("addrs") or [])[:2] + (me.get("relayed_addrs") or [])[:1]:
        out.append(f"{addr}\n", "dim")
    bans = (peers or {}).get("penalties") or []
    if bans:
        out.append(f"{len(bans)} peer(s) penalised or banned", "yellow")
    return out


def peer_rows(peers: dict[str, Any] | None) -> list[tuple[Any, ...]]:
    """One row per peer (pure)."""
    rows = []
    for peer in (peers or {}).get("peers") or []:
        latency = peer.get("latency_ms")
        rows.append(
            (
                short_peer(peer["peer_id"]),
                ",".join(peer.get("roles") or []) or "-",
                Text(peer.get("state", "?"), STATE_STYLE.get(peer.get("state", ""), "")),
                "-" if latency is None else f"{latency:.1f} ms",
                "relayed" if peer.get("relayed") else ("direct" if peer.get("connected") else "-"),
                f"{peer.get('load', 0):.1f}",
                peer.get("gpus", 0),
            )
        )
    return rows


class NetworkScreen(NodeScreen):
    """This node and its peers."""

    CSS_PATH = "network.tcss"
    NEEDS = ("status", "peers")

    def body(self) -> ComposeResult:
        yield Static(id="network-self", classes="panel")
        yield DataTable(id="network-peers", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#network-self").border_title = "This node"
        table = self.query_one("#network-peers", DataTable)
        table.add_columns("peer", "roles", "state", "latency", "link", "load", "GPUs")
        super().on_mount()

    def show(self, data: NodeData) -> None:
        peers = data.doc("peers")
        self.query_one("#network-self", Static).update(self_text(peers))
        table = self.query_one("#network-peers", DataTable)
        table.clear()
        for row in peer_rows(peers):
            table.add_row(*row)
