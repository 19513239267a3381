"""Shared test helpers: where the task data lives, and waiting for a condition."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import trio

# Third-party task data is never copied into the repo: it sits in ../shared/data beside the
# checkout (on developer machines and in CI alike).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


async def wait_for(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    """Inside trio: sleep until ``predicate`` is true; raise TooSlowError after ``timeout``."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
