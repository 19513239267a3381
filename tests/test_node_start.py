"""A node checks what it is about to run against the manifest before it joins the network."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from flopnet.node.config import NetworkParams, create_network
from flopnet.node.daemon import check_pinned_weights
from flopnet.node.local import flopnet_argv
from flopnet.protocol.errors import ConfigError
from flopnet.protocol.identity import Identity

FOUNDER = Identity(b"\xb1" * 32)
FLOPNET = tuple(flopnet_argv())


def test_pinned_weights_decision() -> None:
    check_pinned_weights("tiny", "", "ab" * 32)  # not pinned: any weights
    check_pinned_weights("tiny", "ab" * 32, "ab" * 32)
    with pytest.raises(ConfigError, match="refusing to start"):
        check_pinned_weights("tiny", "ab" * 32, "cd" * 32)


@pytest.mark.timeout(180)
def test_a_node_with_other_weights_than_the_manifest_pins_refuses_to_start(
    tmp_path: Path,
) -> None:
    params = NetworkParams(network_id="pending", weights_sha256="00" * 32)
    create_network(FOUNDER, "pinned", params, tmp_path / "network.manifest")
    node = subprocess.run(
        [
            *FLOPNET,
            "node",
            "--role",
            "worker",
            "--data-dir",
            str(tmp_path / "worker"),
            "--manifest",
            str(tmp_path / "network.manifest"),
            "--torch-threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert node.returncode == 2, node.stderr
    assert "manifest pins 0000000000000000...: refusing to start" in node.stderr


@pytest.mark.timeout(240)
def test_network_init_pins_the_weights_and_a_node_with_them_starts(tmp_path: Path) -> None:
    from flopnet.node.local import read_node_info

    made = subprocess.run(
        [*FLOPNET, "network", "init", "--out", str(tmp_path / "net"), "--pin-weights"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    manifest = tmp_path / "net" / "network.manifest"
    pinned = NetworkParams.load(manifest).weights_sha256
    assert len(pinned) == 64 and f"weights pinned: sha256 {pinned}" in made.stdout
    data_dir = tmp_path / "worker"
    node = subprocess.Popen(
        [
            *FLOPNET,
            "node",
            "--role",
            "worker",
            "--data-dir",
            str(data_dir),
            "--manifest",
            str(manifest),
            "--torch-threads",
            "1",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while read_node_info(data_dir) is None and node.poll() is None:
            assert time.time() < deadline, "the node did not come up"
            time.sleep(0.2)
        assert node.poll() is None, node.stderr.read() if node.stderr else ""
    finally:
        node.terminate()
        node.wait(timeout=30)


_BROKEN_WORKER = """
import sys
if __name__ == "__main__":
    import trio
    import flopnet.node.worker.worker as worker

    async def broken(self):
        await trio.sleep(1)
        raise KeyError("a bug of ours")

    worker.Worker.run = broken  # a bug in one part of the daemon, simulated
    from flopnet.node.cli.main import main

    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(180)
def test_a_bug_in_the_worker_stops_the_node_with_a_plain_error_and_its_traceback_logged(
    tmp_path: Path,
) -> None:
    """The whole daemon exits (status 70, so a supervisor restarts it) instead of living on
    half shut down; the traceback is in node.log, one plain line says where."""
    create_network(FOUNDER, "broken", NetworkParams(network_id="pending"), tmp_path / "m")
    script = tmp_path / "broken_worker.py"
    script.write_text(_BROKEN_WORKER)
    data = tmp_path / "worker"
    node = subprocess.run(
        [
            FLOPNET[0],
            str(script),
            "node",
            "--role",
            "worker",
            "--data-dir",
            str(data),
            "--manifest",
            str(tmp_path / "m"),
            "--torch-threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert node.returncode == 70, node.stderr
    last = node.stderr.strip().splitlines()[-1]
    assert last == (
        "flopnet: error: internal error, the node stopped (KeyError: 'a bug of ours'); "
        f"the traceback is in {data / 'node.log'}"
    )
    logged = (data / "node.log").read_text()
    assert "CRITICAL flopnet.node: the node stopped on an internal error" in logged
    assert "KeyError: 'a bug of ours'" in logged
