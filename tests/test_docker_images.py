"""The node image and the compose devnet, on a real Docker engine (``make test-images``).

Deselected from the ordinary run (the ``docker`` marker); run with
``pytest -m docker tests/test_docker_images.py``. The engine is started and the images are built
by scripts/images.sh when needed; the tests skip only where Docker cannot run at all.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_support import NODE_SERVICES, ComposeDevnet, docker, ensure_images
from test_devnet_e2e import reaches_phase

from flopnet.ledger.store import LedgerStore
from flopnet.protocol.identity import load_or_create_identity

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module", autouse=True)
def images() -> None:
    ensure_images()


@pytest.fixture
def devnets(tmp_path: Path) -> Iterator[Callable[..., ComposeDevnet]]:
    """Make compose devnets (each its own project) and take them down afterwards."""
    made: list[ComposeDevnet] = []

    def make(**options: Any) -> ComposeDevnet:
        made.append(ComposeDevnet(tmp_path / f"devnet-{len(made)}", **options))
        return made[-1]

    try:
        yield make
    finally:
        for net in made:
            net.down()


def test_node_image_runs_as_a_user_with_volumes_and_a_health_check() -> None:
    config = json.loads(docker("image", "inspect", "flopnet/node:cpu").stdout)[0]["Config"]
    assert config["User"] == "10000:10000"
    assert config["Entrypoint"][:2] == ["/usr/bin/tini", "--"]  # signals reach the daemon
    assert set(config["Volumes"]) == {"/data", "/home/flopnet/.flopnet"}
    assert "FLOPNET_HOME=/home/flopnet/.flopnet" in config["Env"]
    assert config["Healthcheck"]["Test"][1:4] == ["flopnet", "status", "--data-dir"]
    run = docker("run", "--rm", "--network", "none", "flopnet/node:cpu", "status")
    # No node in a fresh container: the health check's command says so and fails.
    assert run.returncode == 1 and ".flopnet: not running" in run.stdout


def test_compose_file_is_valid(tmp_path: Path) -> None:
    net = ComposeDevnet(tmp_path)
    assert "gpu" in net.compose("config", "--profiles").stdout.split()
    config = net.compose("--profile", "gpu", "config").stdout
    assert "worker-gpu" in config and "driver: nvidia" in config


def _credits(root: Path, network_id: str) -> list[tuple[bytes, int]]:
    validator_key = load_or_create_identity(root / "validator").public_key
    with LedgerStore(root / "validator" / "ledger.sqlite") as store:
        assert store.verify_all(network_id) == []
        rows = store.connection.execute(
            "SELECT lease_id, accepted FROM credits WHERE signer = ?", (validator_key,)
        ).fetchall()
    return [(bytes(lease), int(accepted)) for lease, accepted in rows]


def test_compose_devnet_validates_every_task(devnets: Callable[..., ComposeDevnet]) -> None:
    devnet = devnets()
    started = time.monotonic()
    devnet.compose("up", "--detach")
    status = devnet.wait_done()
    wall = time.monotonic() - started
    assert status["validator"]["accepted"] == 6 and status["validator"]["rejected"] == 0
    credits = _credits(devnet.root, status["network_id"])
    assert sorted(a for _, a in credits) == [1] * 6
    # The image's health check (`flopnet status`) reports every node healthy.
    deadline = time.time() + 90
    health = {}
    while time.time() < deadline:
        health = {s: devnet.inspect(s, "{{.State.Health.Status}}") for s in NODE_SERVICES}
        if set(health.values()) == {"healthy"}:
            break
        time.sleep(2)
    assert set(health.values()) == {"healthy"}, health
    devnet.compose("stop", "--timeout", "60")
    for service in NODE_SERVICES:  # every daemon stopped on SIGTERM, none was killed
        assert devnet.inspect(service, "{{.State.ExitCode}}") == "0", service
        assert "node stopped" in (devnet.root / service / "node.log").read_text()
    print(f"compose devnet: 6 tasks validated in {wall:.1f} s from `up`")


def test_docker_stop_of_the_validator_loses_no_acknowledged_work(
    devnets: Callable[..., ComposeDevnet],
) -> None:
    # Longer generations: a worker holds its receipt a while before the verdict comes.
    devnet = devnets(max_new_tokens=96)
    devnet.compose("up", "--detach")
    worker_dir = devnet.root / "worker-1"
    devnet.wait_started("worker-1")
    # The worker holds a receipt: its submission is in the validator's durable inbox.
    assert reaches_phase(worker_dir, "awaiting_verdict"), "no worker ever waited for a verdict"
    stopped_at = time.monotonic()
    devnet.compose("stop", "--timeout", "60", "validator")
    stop_seconds = time.monotonic() - stopped_at
    assert devnet.inspect("validator", "{{.State.ExitCode}}") == "0"  # not killed at the grace
    log = (devnet.root / "validator" / "node.log").read_text()
    assert "signal 15: shutting down" in log and "node stopped" in log
    (devnet.root / "validator" / "node.json").unlink(missing_ok=True)  # a stale one is left
    devnet.compose("start", "validator")
    devnet.wait_started("validator")
    status = devnet.wait_done()
    credits = _credits(devnet.root, status["network_id"])
    leases = [lease for lease, _ in credits]
    assert len(leases) == len(set(leases)), "a lease was credited twice"
    assert sum(a for _, a in credits) == 6  # every task credited once, nothing lost
    print(f"docker stop of the validator took {stop_seconds:.1f} s")


def test_bubblewrap_cannot_run_in_a_default_container() -> None:
    # Docker's seccomp profile refuses new user namespaces: why a containerised validator of
    # code answers needs the Docker runner (docs/deploy.md).
    run = docker("run", "--rm", "--network", "none", "flopnet/base:bookworm", "unshare",
                 "--user", "true")  # fmt: skip
    assert run.returncode != 0 and "Operation not permitted" in run.stderr, run


def test_a_containerised_verifier_runs_code_in_sibling_sandboxes(tmp_path: Path) -> None:
    # The node image has no bubblewrap: `--sandbox auto` must find the engine through the
    # mounted socket and run each program in a flopnet-sandbox:1 container beside its own.
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]
    rows = [
        {"id": "good", "task_type": "code", "tests": tests,
         "response": "</think>```python\ndef add(a, b):\n    return a + b\n```"},
        {"id": "bad", "task_type": "code", "tests": tests,
         "response": "</think>```python\ndef add(a, b):\n    return a - b\n```"},
    ]  # fmt: skip
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp_path.chmod(0o755)  # readable by the image's user (pytest makes it 0700, root's)
    (tmp_path / "in.jsonl").chmod(0o644)
    socket_gid = str(os.stat("/var/run/docker.sock").st_gid)
    run = docker(
        "run", "--rm", "--network", "none", "--group-add", socket_gid,
        "-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", f"{tmp_path}:/in:ro",
        "flopnet/node:cpu", "verify", "/in/in.jsonl", "--no-progress", "--workers", "1",
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = {r["id"]: r for r in map(json.loads, run.stdout.splitlines())}
    assert got["good"]["passed"] and got["good"]["score"] == 1.0, got["good"]
    assert not got["bad"]["passed"] and got["bad"]["score"] == 0.0
    assert "sandbox: docker" in got["good"]["reasons"]
