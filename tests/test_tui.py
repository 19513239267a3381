"""The Textual view, driven headless, against the real local API (Hypercorn-trio) of a node."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from textual.widgets import DataTable, Static

from flopnet.node.api import build_app, load_or_create_token, serve_api
from flopnet.tui.app import FlopnetView, NodeTarget, attach_targets

STATUS: dict[str, Any] = {
    "peer_id": "12D3KooWValidatorPeerIdForTheTuiTest000000000000",
    "roles": ["publisher", "validator"],
    "network_id": "tui-net",
    "uptime_s": 12.0,
    "peers": ["a", "b"],
    "model": None,
    "publisher": {
        "tasks": 6,
        "samples": {"open": 0, "leased": 0, "done": 6},
        "all_done": True,
        "announced": 12,
        "leases_issued": 8,
        "claims_refused": 3,
        "refusals": {},
        "samples_reopened": 2,
    },
    "validator": {"accepted": 6, "rejected": 2},
    "worker": None,
}
BOARD = [
    {
        "peer_id": "12D3KooWHonestWorkerNumberOne0000000000000000000",
        "flops": 8_900_747_520,
        "tasks_accepted": 4,
        "tasks_rejected": 0,
        "generated_tokens": 190,
    },
    {
        "peer_id": "12D3KooWCheaterWorker000000000000000000000000000",
        "flops": 0,
        "tasks_accepted": 0,
        "tasks_rejected": 2,
        "generated_tokens": 0,
    },
]


@pytest.fixture
def node_dir(tmp_path: Path) -> Iterator[Path]:
    """A node data dir with a real API server answering on 127.0.0.1."""
    data_dir = tmp_path / "validator"
    data_dir.mkdir()
    token = load_or_create_token(data_dir)
    app = build_app(token, {"/status": lambda: STATUS, "/leaderboard": lambda: BOARD})
    ready = threading.Event()
    stop: list[tuple[trio.CancelScope, trio.lowlevel.TrioToken]] = []

    async def serve() -> None:
        with trio.CancelScope() as scope:
            stop.append((scope, trio.lowlevel.current_trio_token()))
            async with trio.open_nursery() as nursery:
                url = await nursery.start(serve_api, app, 0)
                (data_dir / "node.json").write_text(json.dumps({"api_url": url}))
                ready.set()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(30)
    yield data_dir
    scope, trio_token = stop[0]
    trio.from_thread.run_sync(scope.cancel, trio_token=trio_token)
    thread.join(10)


def test_api_requires_the_token(node_dir: Path) -> None:
    url = json.loads((node_dir / "node.json").read_text())["api_url"]
    assert httpx.get(url + "/status", timeout=5).status_code == 401
    wrong = httpx.get(url + "/status", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401
    token = (node_dir / "api.token").read_text()
    ok = httpx.get(url + "/status", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert ok.json()["network_id"] == "tui-net"
    assert oct((node_dir / "api.token").stat().st_mode & 0o777) == "0o600"


def test_view_shows_nodes_and_leaderboard(node_dir: Path, tmp_path: Path) -> None:
    asyncio.run(_drive_view(node_dir, tmp_path))


async def _drive_view(node_dir: Path, tmp_path: Path) -> None:
    targets = [NodeTarget("validator", node_dir), NodeTarget("worker-9", tmp_path / "missing")]
    app = FlopnetView(targets, title="test devnet")
    async with app.run_test(size=(130, 30)) as pilot:
        board = app.query_one("#leaderboard", DataTable)
        for _ in range(50):
            await pilot.pause(0.1)
            if board.row_count == 2:
                break
        nodes = app.query_one("#nodes", DataTable)
        assert nodes.row_count == 2
        assert nodes.get_row_at(0)[0] == "validator"
        assert nodes.get_row_at(0)[1] == "publisher,validator"
        assert nodes.get_row_at(1)[3] == "starting / unreachable"
        assert board.get_row_at(0)[2] == "8.90 G"
        assert board.get_row_at(1)[4] == "2"
        summary = str(app.query_one("#summary", Static).render())
        assert "6 done" in summary and "all validated" in summary
        svg = Path(app.save_screenshot(path=str(tmp_path), filename="view.svg"))
        assert "all" in svg.read_text() and svg.stat().st_size > 1000
        await pilot.press("q")


def test_attach_targets(node_dir: Path, tmp_path: Path) -> None:
    assert attach_targets(node_dir) == [NodeTarget("validator", node_dir)]
    assert attach_targets(tmp_path) == [NodeTarget("validator", node_dir)]
    with pytest.raises(SystemExit, match="no running node"):
        attach_targets(tmp_path / "validator" / "nothing-here")
