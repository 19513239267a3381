"""Widgets every screen shares: the header (node, peer id, peer count, state badge and why),
and the base screen that redraws from the app's data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Static

from flopnet.tui.format import LEVEL_STYLE, short_peer

if TYPE_CHECKING:
    from flopnet.tui.app import FlopnetApp
    from flopnet.tui.data import NodeData


class NodeHeader(Static):
    """Two lines: the app, node, peer id and peer count; then the badge and why."""

    DEFAULT_CSS = """
    NodeHeader { height: 2; background: $panel; color: $text; padding: 0 1; }
    """

    def show(self, data: NodeData, title: str, nodes: int, index: int) -> None:
        status = data.status
        peer_id = str(status.get("peer_id", ""))
        peers = len(status.get("peers") or ())
        first = Text()
        first.append(title, "bold")
        node = data.name + (f" ({index + 1}/{nodes})" if nodes > 1 else "")
        first.append(f"  {node}", "bold cyan")
        first.append(f"  {short_peer(peer_id) if peer_id else '-'}")
        first.append(f"  {peers} peer{'s' if peers != 1 else ''}")
        if not data.connected:
            first.append("  (no live events)", "dim")
        first.append("  ^p commands", "dim")
        badge = data.badge
        second = Text()
        second.append(
            f" {badge.get('badge', '')} ", LEVEL_STYLE.get(badge.get("level", ""), "bold")
        )
        why = badge.get("why", "")
        if data.error and not status:
            why = data.error
        second.append(f" {why}")
        self.update(Text("\n").join([first, second]))


class NodeScreen(Screen[None]):
    """A screen of one node's data: the header, the screen's body, the footer.

    Subclasses implement :meth:`body` (compose) and :meth:`show` (redraw from the data), and
    name the documents they need in ``NEEDS``.
    """

    NEEDS: tuple[str, ...] = ("status",)
    TITLE_TEXT = ""

    def compose(self) -> ComposeResult:
        yield NodeHeader(id="header")
        yield from self.body()
        # Twelve keys fit 80 columns; the palette's own key is shown in the header instead.
        yield Footer(compact=True, show_command_palette=False)

    def body(self) -> ComposeResult:
        yield from ()

    @property
    def flop_app(self) -> FlopnetApp:
        from flopnet.tui.app import FlopnetApp

        app = self.app
        assert isinstance(app, FlopnetApp)
        return app

    def on_screen_resume(self) -> None:
        self.redraw()

    def on_mount(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        """Redraw the header and the body from the app's current node."""
        app = self.flop_app
        data = app.current
        header = self.query("#header")
        if not header:
            return  # not composed yet (a live event while the screen is pushed): on_mount draws
        header.first(NodeHeader).show(data, app.title_text, len(app.nodes), app.index)
        self.show(data)

    def show(self, data: NodeData) -> None:
        """Redraw the screen's body (subclasses)."""

    def now(self) -> float:
        return self.flop_app.clock()

    def doc(self, name: str) -> Any:
        return self.flop_app.current.doc(name)
