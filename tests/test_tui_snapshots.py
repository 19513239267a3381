"""SVG snapshots of every screen at 80x24 (the smallest supported terminal) and at 160x48,
over the seeded devnet data with a fixed clock
(pytest-textual-snapshot; after a deliberate change: ``pytest --snapshot-update``)."""

from __future__ import annotations

from typing import Any

import pytest
from tuikit import seeded_app

SMALL = (80, 24)
LARGE = (160, 48)

# (node shown, keys pressed, sizes)
CASES: dict[str, tuple[str, tuple[str, ...], tuple[tuple[int, int], ...]]] = {
    "dashboard_gpus": ("worker-1", ("d",), (SMALL, LARGE)),
    "dashboard_devnet": ("validator", ("d",), (SMALL, LARGE)),
    "tasks": ("worker-1", ("t",), (SMALL, LARGE)),
    "task_detail": ("worker-1", ("t", "enter"), (SMALL, LARGE)),
    "why_no_credit": ("cheater-1", ("w",), (SMALL, LARGE)),
    "network": ("worker-1", ("n",), (SMALL, LARGE)),
    "leaderboard": ("worker-1", ("l",), (SMALL, LARGE)),
    "logs": ("validator", ("o", "i"), (SMALL, LARGE)),
    "setup_health": ("worker-1", ("s",), (SMALL, LARGE)),
    "validator": ("validator", ("v",), (SMALL, LARGE)),
    "control_dialog": ("worker-1", ("c",), (SMALL, LARGE)),
}


@pytest.mark.parametrize(
    ("name", "size"),
    [(name, size) for name, (_, _, sizes) in CASES.items() for size in sizes],
    ids=lambda v: v if isinstance(v, str) else f"{v[0]}x{v[1]}",
)
def test_screen_snapshot(snap_compare: Any, name: str, size: tuple[int, int]) -> None:
    node, keys, _ = CASES[name]
    assert snap_compare(seeded_app(node), press=[*keys, "_"], terminal_size=size)
