"""What the Docker tests share: a running engine with flopnet's images, and compose devnets.

The images come from scripts/images.sh (debootstrap base images, a wheelhouse, builds with no
network); it is quick when everything is up to date. The tests skip only when Docker cannot be
installed or started at all; a failing image build is a failure.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGES_SCRIPT = REPO / "scripts" / "images.sh"
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
NODE_SERVICES = ("validator", "worker-1", "worker-2")


def _tail(result: subprocess.CompletedProcess[str], lines: int = 30) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


@functools.cache
def ensure_images() -> None:
    """Start dockerd if needed and build the images (once per test session)."""
    engine = subprocess.run(
        ["bash", str(IMAGES_SCRIPT), "dockerd"], capture_output=True, text=True, timeout=900
    )
    if engine.returncode != 0:
        pytest.skip(f"Docker cannot be installed or started here:\n{_tail(engine)}")
    built = subprocess.run(
        ["bash", str(IMAGES_SCRIPT), "all"], capture_output=True, text=True, timeout=3600
    )
    assert built.returncode == 0, f"scripts/images.sh failed:\n{_tail(built)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; the result (never raises for a non-zero exit)."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class ComposeDevnet:
    """One devnet of docker/compose.yaml under its own project name, ports and state folder."""

    root: Path
    tasks: int = 6
    max_new_tokens: int = 48

    def __post_init__(self) -> None:
        self.project = f"flopnet-test-{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "FLOPNET_DEVNET_DIR": str(self.root),
            "FLOPNET_VALIDATOR_PORT": str(free_port()),
            "FLOPNET_WORKER1_PORT": str(free_port()),
            "FLOPNET_WORKER2_PORT": str(free_port()),
            "FLOPNET_DEVNET_TASKS": str(self.tasks),
            "FLOPNET_DEVNET_MAX_NEW_TOKENS": str(self.max_new_tokens),
        }

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``docker-compose -p <project> -f docker/compose.yaml ARGS``; checked."""
        command = shutil.which("docker-compose") or "docker-compose"
        result = subprocess.run(
            [command, "-p", self.project, "-f", str(COMPOSE_FILE), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, f"docker-compose {' '.join(args)}:\n{_tail(result)}"
        return result

    def container(self, service: str) -> str:
        """The container id of ``service``."""
        return self.compose("ps", "-q", service).stdout.strip()

    def inspect(self, service: str, template: str) -> str:
        return docker("inspect", "-f", template, self.container(service)).stdout.strip()

    def wait_started(self, service: str, timeout: float = 600) -> None:
        """Wait until ``service``'s node has written its node.json (its model is loaded)."""
        deadline = time.time() + timeout
        while not (self.root / service / "node.json").exists():
            assert self.inspect(service, "{{.State.Running}}") == "true", f"{service} exited"
            assert time.time() < deadline, f"{service} did not start in {timeout}s"
            time.sleep(0.5)

    # Generous: on the shared 2-core machine the whole devnet can be starved for minutes.
    def wait_done(self, timeout: float = 900) -> dict[str, Any]:
        """Poll the publisher's /status (from the host, over loopback) until all is done."""
        from flopnet.node.local import api_get, read_node_info

        deadline = time.time() + timeout
        last: dict[str, Any] = {}
        while time.time() < deadline:
            info = read_node_info(self.root / "validator")
            try:
                last = api_get(info, "/status") if info else {}
            except Exception:
                last = {}  # starting or restarting
            if (last.get("publisher") or {}).get("all_done"):
                return last
            time.sleep(0.5)
        raise AssertionError(f"the compose devnet did not finish in {timeout}s: {last}")

    def down(self) -> None:
        self.compose("down", "--volumes", "--timeout", "60")
