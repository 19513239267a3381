"""The Textual app, driven headless with Pilot: every screen and key binding over seeded data
(a real devnet's documents), and the live path against a real local API (Hypercorn-trio) with
the real controller and event stream: server-sent events, pause and resume, the control dialog.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from textual.command import CommandPalette
from textual.widgets import DataTable, Input, RichLog, Static
from tuikit import CLOCK, seed_docs, seeded_app

from flopnet.node.api import build_api, load_or_create_token, serve_api
from flopnet.node.api_schema import ApiError, Call, Endpoint, Param
from flopnet.node.control import Settings
from flopnet.node.controller import Controller
from flopnet.node.events import EventBus
from flopnet.node.sse import event_stream
from flopnet.node.state import node_badge
from flopnet.node.worker.board import TaskBoard, TaskEntry
from flopnet.tui.app import FlopnetApp
from flopnet.tui.client import NodeTarget, attach_targets
from flopnet.tui.screens.control import ControlScreen, parse_gpus
from flopnet.tui.screens.task_detail import TaskDetailScreen

SIZE = (80, 24)


def text_of(app: FlopnetApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def run(coro: Any) -> None:
    asyncio.run(coro)


# -- every screen and binding, seeded ---------------------------------------------------------


def test_every_screen_by_its_key_with_the_header_on_each() -> None:
    async def main() -> None:
        app = seeded_app("worker-1")
        async with app.run_test(size=SIZE) as pilot:
            expected = {
                "d": ("DashboardScreen", "#dash-work", "tokens/s"),
                "t": ("TasksScreen", None, None),
                "w": ("WhyScreen", "#why-detail", "Nothing to explain"),
                "n": ("NetworkScreen", "#network-self", "reachable from outside"),
                "l": ("LeaderboardScreen", "#board-title", "all time"),
                "o": ("LogsScreen", "#logs-level", "INFO"),
                "s": ("HealthScreen", "#health-text", "Identity"),
                "v": ("ValidatorScreen", "#val-summary", "not a validator"),
            }
            for key, (screen, selector, needle) in expected.items():
                await pilot.press(key)
                await pilot.pause()
                assert type(app.screen).__name__ == screen
                header = text_of(app, "#header")
                assert "worker-1" in header and "waiting for tasks" in header
                if selector is not None:
                    assert needle in text_of(app, selector), (key, text_of(app, selector))
            assert app.first_paint_at is not None

    run(main())


def test_dashboard_shows_gpus_from_nvml_and_credit() -> None:
    async def main() -> None:
        app = seeded_app("worker-1")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            machine = text_of(app, "#dash-machine")
            assert "GPU0" in machine and "GPU1" in machine and "H200" in machine
            assert any(bar in machine for bar in "▁▂▃▄▅▆▇█")
            credit = text_of(app, "#dash-credit")
            assert "pending" in credit and " G  (4)" in credit and "FLOPs/day" in credit
            app.action_node(-1)  # the validator: publisher progress, no GPU
            await pilot.pause()
            assert "all validated" in text_of(app, "#dash-work")
            assert "no GPU" in text_of(app, "#dash-machine")
            assert "earns no credit" in text_of(app, "#dash-credit")

    run(main())


def test_tasks_filter_and_detail_with_values_beside_thresholds() -> None:
    async def main() -> None:
        app = seeded_app("worker-1")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("t")
            await pilot.pause()
            table = app.screen.query_one("#tasks-table", DataTable)
            assert table.row_count == 4
            app.screen.query_one("#tasks-filter", Input).value = "arith-0-3"
            await pilot.pause()
            assert table.row_count == 1
            table.focus()
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, TaskDetailScreen)
            detail = text_of(app, "#task-detail")
            assert "arith-0-3#0" in detail and "Proof and verdict values" in detail
            assert "(limit" in detail and "✔" in detail and "Output" in detail
            await pilot.press("escape")
            await pilot.pause()
            assert type(app.screen).__name__ == "TasksScreen"

    run(main())


def test_why_no_credit_explains_the_cheaters_rejection() -> None:
    async def main() -> None:
        app = seeded_app("cheater-1")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("w")
            await pilot.pause()
            assert app.screen.query_one("#why-table", DataTable).row_count == 1
            detail = text_of(app, "#why-detail")
            assert "activation proof does not match" in detail
            assert "What to do" in detail and "exp_mismatches" in detail and "(limit 10)" in detail

    run(main())


def test_leaderboard_windows_logs_levels_and_node_switching() -> None:
    async def main() -> None:
        app = seeded_app("worker-1")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("l")
            await pilot.pause()
            table = app.screen.query_one("#board-table", DataTable)
            first = table.get_row_at(0)
            assert "▶" in str(first[1])  # your own row, pinned on top
            for key, window in (("1", "24h"), ("2", "7d"), ("3", "all")):
                await pilot.press(key)
                await pilot.pause()
                assert app.current.window == window
            await pilot.press("o")
            await pilot.pause()
            log = app.screen.query_one("#logs-view", RichLog)
            shown = {}
            for key in ("a", "i", "e"):
                await pilot.press(key)
                await pilot.pause()
                shown[key] = len(log.lines)
            assert shown["a"] >= shown["i"] >= shown["e"]
            app.screen.query_one("#logs-search", Input).value = "no-such-text-anywhere"
            await pilot.pause()
            assert len(log.lines) == 0
            await pilot.press("escape", "right_square_bracket")
            await pilot.pause()
            assert app.current.name == "cheater-1"
            await pilot.press("left_square_bracket")
            await pilot.pause()
            assert app.current.name == "worker-1"

    run(main())


def test_validator_screen_shows_queue_rates_and_rejections() -> None:
    async def main() -> None:
        app = seeded_app("validator")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("v")
            await pilot.pause()
            summary = text_of(app, "#val-summary")
            assert "proof_mismatch 1" in summary and "sandbox" in summary and "model" in summary
            assert app.screen.query_one("#val-rates", DataTable).row_count == 2
            rejections = app.screen.query_one("#val-rejections", DataTable)
            assert rejections.row_count == 1 and rejections.get_row_at(0)[2] == "proof_mismatch"

    run(main())


def test_command_palette_control_dialog_and_commands_without_a_node() -> None:
    async def main() -> None:
        app = seeded_app("worker-1")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+p")
            await pilot.pause()
            assert isinstance(app.screen, CommandPalette)
            await pilot.press(*"Show Why", "enter")
            await pilot.pause(0.3)
            assert type(app.screen).__name__ == "WhyScreen"
            await pilot.press("c")
            await pilot.pause()
            assert isinstance(app.screen, ControlScreen)
            await pilot.press("escape")
            await pilot.pause()
            for key in ("p", "f", "r"):  # seeded: no live node, said plainly
                await pilot.press(key)
                await pilot.pause()
            assert any("not attached" in n.message for n in app._notifications)
            await pilot.press("q")

    run(main())
    assert parse_gpus("0, 2") == [0, 2] and parse_gpus("all") is None
    with pytest.raises(ValueError):
        parse_gpus("zero")


# -- live: a real API, its controller and event stream ---------------------------------------


class LiveNode:
    """A node's API on 127.0.0.1 with the real controller and event stream (no libp2p)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.bus: EventBus | None = None
        self.control: Controller | None = None
        self.docs = seed_docs("worker-1")

    def status(self, call: Call) -> dict[str, Any]:
        assert self.control is not None
        doc = {**self.docs["status"], "control": self.control.snapshot()}
        doc["state"] = node_badge(doc).to_json()
        return doc

    def endpoints(self) -> list[Endpoint]:
        assert self.control is not None and self.bus is not None
        control, bus = self.control, self.bus

        def doc(name: str) -> Any:
            return lambda call: self.docs[name]

        def pause(call: Call) -> Any:
            if call.body["mode"] == "now":
                return control.pause_now()
            return control.finish_then_pause()

        out = [
            Endpoint("GET", "/status", "status", self.status),
            Endpoint(
                "GET",
                "/events",
                "events",
                lambda c: event_stream(bus, c.headers.get("last-event-id")),
                stream=True,
            ),
            Endpoint(
                "POST",
                "/control/pause",
                "pause",
                pause,
                body=(Param("mode", "enum", required=True, choices=("now", "finish")),),
            ),
            Endpoint("POST", "/control/resume", "resume", lambda c: control.resume(), body=()),
            Endpoint(
                "PUT",
                "/control/schedule",
                "schedule",
                lambda c: control.set_schedule(c.body["schedule"]),
                body=(Param("schedule", "str", required=True, nullable=True),),
            ),
            Endpoint(
                "PUT",
                "/control/batch-size",
                "batch",
                lambda c: control.set_batch_size(c.body["batch_size"]),
                body=(Param("batch_size", "int", required=True),),
            ),
        ]
        for name in ("tasks", "system", "credits", "why", "peers", "logs", "health", "config"):
            out.append(Endpoint("GET", f"/{name}", name, doc(name)))
        return out


@pytest.fixture
def live_node(tmp_path: Path) -> Iterator[LiveNode]:
    data_dir = tmp_path / "worker-1"
    data_dir.mkdir()
    node = LiveNode(data_dir)
    token = load_or_create_token(data_dir)
    ready = threading.Event()
    stop: list[tuple[trio.CancelScope, trio.lowlevel.TrioToken]] = []

    async def serve() -> None:
        node.bus = EventBus()
        node.control = Controller(data_dir, Settings(), node.bus)
        with trio.CancelScope() as scope:
            stop.append((scope, trio.lowlevel.current_trio_token()))
            async with trio.open_nursery() as nursery:
                url = await nursery.start(serve_api, build_api(token, node.endpoints()), 0)
                (data_dir / "node.json").write_text(json.dumps({"api_url": url}))
                ready.set()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(30)
    yield node
    scope, trio_token = stop[0]
    trio.from_thread.run_sync(scope.cancel, trio_token=trio_token)
    thread.join(10)


async def until(pilot: Any, check: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await pilot.pause(0.05)
    raise AssertionError("the TUI never showed it")


def test_live_events_pause_resume_and_the_control_dialog(live_node: LiveNode) -> None:
    async def main() -> None:
        app = FlopnetApp(attach_targets(live_node.data_dir), "live")
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.current.connected and app.current.status)
            await until(pilot, lambda: "waiting for tasks" in text_of(app, "#header"))
            await pilot.press("p")
            await until(pilot, lambda: "paused (manual)" in text_of(app, "#header"))
            assert live_node.control is not None and not live_node.control.may_claim()
            await pilot.press("r")
            await until(pilot, lambda: "paused" not in text_of(app, "#header"))
            await pilot.press("f")
            await until(pilot, lambda: "finishing, then pausing" in text_of(app, "#header"))
            await pilot.press("r")
            # The control dialog: a schedule is applied; a bad batch size is refused, saying why.
            await pilot.press("c")
            await pilot.pause()
            dialog = app.screen
            dialog.query_one("#schedule", Input).value = "00:00-24:00"
            dialog.query_one("#batch", Input).value = "0"
            await pilot.click("#apply")
            await until(
                pilot, lambda: "refused" in str(dialog.query_one("#control-message").render())
            )
            assert live_node.control.settings.schedule is not None
            assert any("batch_size must be" in n.message for n in app._notifications)
            await pilot.press("escape")

    run(main())


def test_attach_targets_and_a_url_target(tmp_path: Path) -> None:
    node = tmp_path / "w"
    node.mkdir()
    (node / "node.json").write_text(json.dumps({"api_url": "http://127.0.0.1:1"}))
    (node / "api.token").write_text("t" * 32)
    assert attach_targets(node) == [NodeTarget("w", node)]
    assert attach_targets(tmp_path) == [NodeTarget("w", node)]
    with pytest.raises(SystemExit, match="no running node"):
        attach_targets(tmp_path / "nothing-here")
    token = tmp_path / "token"
    token.write_text("abc\n")
    remote = NodeTarget("r", url="http://127.0.0.1:9/", token_file=token)
    assert remote.endpoint() == ("http://127.0.0.1:9", "abc")
    assert CLOCK > 0


def test_the_tui_imports_neither_torch_nor_libp2p_nor_the_node() -> None:
    import subprocess
    import sys

    code = (
        "import sys, flopnet.tui.app; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'libp2p', 'trio'}), "
        "[m for m in sys.modules if m.startswith('flopnet.') and not m.startswith('flopnet.tui')])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[] []"


def test_a_task_view_follows_its_output_as_it_streams(tmp_path: Path) -> None:
    """The worker's real task board behind a real API: deltas appended while the lease is
    generating reach the open task view through the event stream, in order."""
    data_dir = tmp_path / "worker-1"
    data_dir.mkdir()
    node = LiveNode(data_dir)
    lease = "ab" * 16
    board_ready = threading.Event()
    parts: dict[str, Any] = {}

    def endpoints() -> list[Endpoint]:
        board: TaskBoard = parts["board"]

        def task(call: Call) -> Any:
            entry = board.get(call.path["lease_id"])
            if entry is None:
                raise ApiError(404, "no such lease", "lease_id")
            return {**entry.detail(), "prompt": "What is 2+2?", "measures": []}

        extra = [
            Endpoint("GET", "/tasks/{lease_id}", "task", task),
            Endpoint(
                "GET",
                "/tasks",
                "tasks",
                lambda c: {"tasks": [e.summary() for e in board.entries()]},
            ),
        ]
        return extra + [e for e in LiveNode.endpoints(node) if e.path != "/tasks"]

    async def serve() -> None:
        node.bus = EventBus()
        node.control = Controller(data_dir, Settings(), node.bus)
        bus = node.bus
        board = TaskBoard(lambda entry: bus.publish("task", entry.summary()))
        board.claimed(TaskEntry(lease, "arith-0-1", "math", 0, "p", "v", CLOCK, CLOCK + 60))
        board.move(lease, "generating", CLOCK)
        parts.update(board=board, token=trio.lowlevel.current_trio_token())
        async with trio.open_nursery() as nursery:
            parts["scope"] = nursery.cancel_scope
            url = await nursery.start(
                serve_api, build_api(load_or_create_token(data_dir), endpoints()), 0
            )
            (data_dir / "node.json").write_text(json.dumps({"api_url": url}))
            board_ready.set()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert board_ready.wait(30)

    def stream(tokens: int, text: str) -> None:
        trio.from_thread.run_sync(
            parts["board"].streamed, lease, tokens, text, trio_token=parts["token"]
        )

    async def main() -> None:
        app = FlopnetApp(attach_targets(data_dir), "live")
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.current.connected and app.current.status)
            await app.push_screen(TaskDetailScreen(lease))
            await pilot.pause()
            await until(pilot, lambda: "(not generated yet)" in text_of(app, "#task-detail"))
            stream(4, "Two plus")
            await until(
                pilot, lambda: "Two plus ▍ (4 tokens so far)" in text_of(app, "#task-detail")
            )
            stream(9, " two is four.")
            await until(
                pilot,
                lambda: "Two plus two is four. ▍ (9 tokens so far)" in text_of(app, "#task-detail"),
            )

    try:
        run(main())
    finally:
        trio.from_thread.run_sync(parts["scope"].cancel, trio_token=parts["token"])
        thread.join(10)
