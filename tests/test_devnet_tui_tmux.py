"""``make devnet`` as a person runs it: in a terminal (tmux), the TUI opens on the devnet and
reaches "all validated"; q quits, the devnet stops and make exits 0."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[1]


def tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], capture_output=True, text=True, check=False, timeout=30
    ).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_make_devnet_opens_the_tui_and_reaches_all_validated(tmp_path: Path) -> None:
    session = f"flopnet-{uuid.uuid4().hex[:8]}"
    args = f"--workers 1 --tasks 2 --data-dir {tmp_path / 'devnet'}"
    command = f"make devnet DEVNET_ARGS='{args}'; echo MAKE-EXITED-$?; sleep 600"
    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", "-c", str(REPO), command)
    screen = ""
    try:
        deadline = time.time() + 600
        while time.time() < deadline and "all validated" not in screen:
            time.sleep(1.0)
            screen = tmux("capture-pane", "-p", "-t", session)
            assert "MAKE-EXITED" not in screen, screen
        assert "all validated" in screen, screen
        assert "Dash" in screen and "Pause" in screen  # the footer's keys
        (tmp_path / "screen.txt").write_text(screen)
        tmux("send-keys", "-t", session, "q")
        while time.time() < deadline and "MAKE-EXITED" not in screen:
            time.sleep(1.0)
            screen = tmux("capture-pane", "-p", "-t", session)
        assert "MAKE-EXITED-0" in screen, screen
        assert "2/2 samples validated" in screen, screen
    finally:
        tmux("kill-session", "-t", session)
