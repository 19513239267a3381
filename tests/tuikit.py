"""Seeded data for the TUI's tests: the documents a real devnet served (recorded by
``scripts/tui_seed.py``), read with a fixed clock so every render is the same."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from flopnet.tui.app import FlopnetApp
from flopnet.tui.client import NodeTarget
from flopnet.tui.data import NodeData

SEED_FILE = Path(__file__).parent / "data" / "tui_seed.json"
_SEED: dict[str, Any] = json.loads(SEED_FILE.read_text())
CLOCK: float = _SEED["clock"]
ORDER = ("validator", "worker-1", "cheater-1")  # as a devnet lists its nodes


def seeded_app(node: str = "validator", size_hint: str = "") -> FlopnetApp:
    """A TUI over the seeded devnet (no network), showing ``node`` first."""
    nodes = {
        name: NodeData(name, docs=copy.deepcopy(_SEED["nodes"][name]), connected=True)
        for name in ORDER
    }
    app = FlopnetApp(
        [NodeTarget(name) for name in ORDER],
        "flopnet devnet",
        seed=nodes,
        live=False,
        clock=lambda: CLOCK,
    )
    app.index = ORDER.index(node)
    return app


def seed_docs(node: str) -> dict[str, Any]:
    return copy.deepcopy(_SEED["nodes"][node])
