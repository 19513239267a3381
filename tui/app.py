"""``flopnet tui``: the Textual app a contributor (or a validator) lives in.

It attaches to one node or to every node of a devnet, over their local APIs only (HTTP, the
token file; through an SSH-forwarded port too), so it never imports torch or libp2p and
quitting it leaves the daemons running. Each node's server-sent events keep its data current
(:mod:`flopnet.tui.data`); the documents a screen shows are read again when an event makes
them stale, and every few seconds in case the event stream is down.

Screens (one per module in :mod:`flopnet.tui.screens`): Dashboard, Tasks (and a task's
detail), Why no credit, Network, Leaderboard, Logs, Setup and health, Validator, and the
Control dialog (schedule, batch size, GPUs). Keys are in the footer; ctrl+p opens the command
palette.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from flopnet.tui.client import ApiFailure, NodeClient, NodeTarget, attach_targets
from flopnet.tui.data import NodeData
from flopnet.tui.screens.dashboard import DashboardScreen
from flopnet.tui.screens.health import HealthScreen
from flopnet.tui.screens.leaderboard import LeaderboardScreen
from flopnet.tui.screens.logs import LogsScreen
from flopnet.tui.screens.network import NetworkScreen
from flopnet.tui.screens.tasks import TasksScreen
from flopnet.tui.screens.validator import ValidatorScreen
from flopnet.tui.screens.why import WhyScreen
from flopnet.tui.widgets import NodeScreen

__all__ = ["FlopnetApp", "NodeTarget", "attach_targets", "run_tui"]

POLL_S = 3.0  # documents are read again this often even without events
RECONNECT_S = 1.0

SCREENS_BY_MODE: dict[str, tuple[str, str, str, type[NodeScreen]]] = {
    # mode: (key, footer label, title, screen)
    "dashboard": ("d", "Dash", "Dashboard", DashboardScreen),
    "tasks": ("t", "Task", "Tasks", TasksScreen),
    "why": ("w", "Why", "Why no credit", WhyScreen),
    "network": ("n", "Net", "Network", NetworkScreen),
    "leaderboard": ("l", "Rank", "Leaderboard", LeaderboardScreen),
    "logs": ("o", "Log", "Logs", LogsScreen),
    "health": ("s", "Sys", "Setup and health", HealthScreen),
    "validator": ("v", "Val", "Validator", ValidatorScreen),
}


class FlopnetApp(App[None]):
    """The TUI over one or more nodes (see the module's docstring)."""

    TITLE = "flopnet"
    CSS_PATH = "app.tcss"
    MODES: ClassVar[dict[str, Any]] = {mode: s for mode, (*_, s) in SCREENS_BY_MODE.items()}
    DEFAULT_MODE = "dashboard"
    BINDINGS: ClassVar = [
        *[
            Binding(key, f"mode('{mode}')", label, tooltip=title)
            for mode, (key, label, title, _) in SCREENS_BY_MODE.items()
        ],
        Binding("p", "pause_now", "Pause", tooltip="pause now: hand the leases back"),
        Binding("f", "finish_then_pause", "Fin", tooltip="finish the work in hand, then pause"),
        Binding("r", "resume", "Run", tooltip="resume: end a manual pause"),
        Binding("c", "control", "Ctl", tooltip="schedule, batch size, GPUs"),
        Binding("right_square_bracket", "node(1)", "Next node", show=False),
        Binding("left_square_bracket", "node(-1)", "Prev node", show=False),
        # Not in the footer (80 columns hold the rest); ctrl+p lists it with every command.
        Binding("q", "quit", "Quit", show=False),
    ]

    def __init__(
        self,
        targets: list[NodeTarget],
        title: str = "flopnet",
        *,
        seed: dict[str, NodeData] | None = None,
        live: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.targets = targets
        self.title_text = title
        self.nodes = [(seed or {}).get(t.name) or NodeData(t.name) for t in targets] or [
            NodeData("none")
        ]
        self.index = 0
        self.live = live
        self.clock = clock
        self.clients: list[NodeClient] = []
        self._stale: list[set[str]] = [set() for _ in self.nodes]
        self._wanted = asyncio.Event()
        self.first_paint_at: float | None = None
        self.event_seen_at: dict[int, float] = {}  # event id -> when it was applied (benchmarks)

    @property
    def current(self) -> NodeData:
        return self.nodes[self.index]

    @property
    def client(self) -> NodeClient | None:
        return self.clients[self.index] if self.clients else None

    # -- start and stop ------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.call_after_refresh(self._painted)
        if not self.live:
            return
        self.clients = [NodeClient(t) for t in self.targets]
        for i in range(len(self.clients)):
            self.run_worker(self._follow(i), group="events", exclusive=False)
        self.run_worker(self._refresher(), group="refresh")
        self.set_interval(POLL_S, self._poll)
        self._poll()

    def _painted(self) -> None:
        if self.first_paint_at is None:
            self.first_paint_at = time.time()

    async def on_unmount(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.aclose()

    # -- data ----------------------------------------------------------------------------------

    def _needs(self) -> set[str]:
        screen = self.screen
        needs = set(getattr(screen, "NEEDS", ())) | {"status"}
        return needs

    def _poll(self) -> None:
        """Mark what the screen shows as stale (the fallback when events are not flowing)."""
        for i in range(len(self.nodes)):
            self._stale[i].add("status")
        self._stale[self.index] |= self._needs()
        self._wanted.set()

    async def _refresher(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            for i, client in enumerate(self.clients):
                wanted = self._stale[i] & (self._needs() if i == self.index else {"status"})
                self._stale[i] -= wanted
                changed = False
                for name in sorted(wanted):
                    value = await self._read(client, i, name)
                    if value is not None:
                        self.nodes[i].put(name, value)
                        changed = True
                self.nodes[i].error = client.last_error
                if i == self.index and (changed or client.last_error):
                    self.redraw()
            await asyncio.sleep(0.05)  # a burst of events is read once

    async def _read(self, client: NodeClient, i: int, name: str) -> Any:
        params: dict[str, Any] = {}
        path = "/" + name
        if name == "leaderboard":
            params = {"window": self.nodes[i].window, "limit": 200}
        elif name == "logs":
            params = {"level": "DEBUG", "limit": 1000}
        return await client.get(path, **params)

    async def _follow(self, i: int) -> None:
        """Apply node ``i``'s events as they come; reconnect when the stream drops."""
        client, data = self.clients[i], self.nodes[i]
        while True:
            try:
                async for event_id, kind, body in client.events(data.last_event_id):
                    self._stale[i] |= data.apply(event_id, kind, body)
                    self.event_seen_at[event_id] = time.time()
                    if i == self.index and kind in (
                        "open",
                        "control",
                        "status",
                        "log",
                        "system",
                        "task",
                    ):
                        self.redraw()
                    self._wanted.set()
            except Exception as exc:  # a node that stops or restarts: try again
                client.last_error = f"events: {type(exc).__name__}: {exc}"
            if data.connected:
                data.connected = False
                if i == self.index:
                    self.redraw()
            await asyncio.sleep(RECONNECT_S)

    def redraw(self) -> None:
        redraw = getattr(self.screen, "redraw", None)
        if callable(redraw):
            redraw()

    # -- actions -------------------------------------------------------------------------------

    def action_mode(self, mode: str) -> None:
        self.switch_mode(mode)
        self._stale[self.index] |= self._needs()
        self._wanted.set()

    def action_node(self, step: int) -> None:
        self.index = (self.index + step) % len(self.nodes)
        self._stale[self.index] |= self._needs()
        self._wanted.set()
        self.redraw()

    async def command(self, method: str, path: str, body: dict[str, Any], done: str) -> bool:
        """Send a command to the current node; say what happened."""
        client = self.client
        if client is None:
            self.notify("not attached to a live node", severity="warning")
            return False
        try:
            answer = await client.send(method, path, body)
        except ApiFailure as exc:
            self.notify(str(exc), title="refused", severity="error")
            return False
        status = self.current.status
        if isinstance(answer, dict) and "effective" in answer and status:
            self.current.apply(self.current.last_event_id or 0, "control", answer)
        self.notify(done)
        self.redraw()
        return True

    async def action_pause_now(self) -> None:
        await self.command("POST", "/control/pause", {"mode": "now"}, "paused: leases handed back")

    async def action_finish_then_pause(self) -> None:
        await self.command(
            "POST", "/control/pause", {"mode": "finish"}, "finishing the work in hand, then pausing"
        )

    async def action_resume(self) -> None:
        await self.command("POST", "/control/resume", {}, "resumed")

    def action_control(self) -> None:
        from flopnet.tui.screens.control import ControlScreen

        self.push_screen(ControlScreen())

    def action_window(self, window: str) -> None:
        self.current.window = window
        self._stale[self.index].add("leaderboard")
        self._wanted.set()
        self.redraw()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for mode, (key, _, title, _) in SCREENS_BY_MODE.items():
            yield SystemCommand(f"Show {title}", f"the {title} screen ({key})", self._go(mode))
        yield SystemCommand("Pause now", "stop generating, hand leases back", self.action_pause_now)
        yield SystemCommand(
            "Finish then pause",
            "finish the work in hand, then pause",
            self.action_finish_then_pause,
        )
        yield SystemCommand("Resume", "end a manual pause", self.action_resume)
        yield SystemCommand("Control", "schedule, batch size, GPUs", self.action_control)
        for window in ("24h", "7d", "all"):
            yield SystemCommand(
                f"Leaderboard: {window}", f"rank by the last {window}", self._window(window)
            )
        if len(self.nodes) > 1:
            for i, node in enumerate(self.nodes):
                yield SystemCommand(f"Node: {node.name}", "show this node", self._select(i))

    def _go(self, mode: str) -> Callable[[], None]:
        return lambda: self.action_mode(mode)

    def _window(self, window: str) -> Callable[[], None]:
        return lambda: self.action_window(window)

    def _select(self, index: int) -> Callable[[], None]:
        return lambda: self.action_node(index - self.index)


def run_tui(targets: list[NodeTarget], title: str = "flopnet") -> None:
    """Run the TUI until the user quits."""
    FlopnetApp(targets, title).run()
