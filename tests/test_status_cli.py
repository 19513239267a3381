"""``flopnet status`` against a real node process: it answers, it is gone, it is stale."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flopnet.node.cli.status import describe
from flopnet.node.config import NetworkParams, create_network
from flopnet.node.local import read_node_info
from flopnet.protocol.identity import Identity, load_or_create_identity

FLOPNET = (sys.executable, "-m", "flopnet.node.cli.main")


def status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLOPNET, "status", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_summary_lines_of_each_role() -> None:
    text = describe(
        {
            "name": "node",
            "ok": True,
            "status": {
                "peer_id": "12D3KooWabc",
                "roles": ["publisher", "validator", "worker"],
                "network_id": "devnet-1234",
                "uptime_s": 12.4,
                "peers": ["a", "b"],
                "state": {"badge": "working", "why": "generating 1 task"},
                "publisher": {
                    "tasks": 6,
                    "samples": {"done": 6, "leased": 1, "open": 0},
                    "task_sets": {
                        "arith": {"done": 4, "leased": 0, "open": 0},
                        "HumanEval": {"done": 2, "leased": 1, "open": 0},
                    },
                },
                "validator": {"accepted": 6, "rejected": 1, "queued": 0},
                "worker": {"phase": "idle", "accepted": 3, "rejected": 0, "released": 1},
            },
        }
    )
    assert text.startswith("node: working - generating 1 task")
    assert "publisher, validator, worker  12D3KooWabc  2 peers  up 12s  network devnet-1234" in text
    assert "publisher: 6 tasks, 6 done, 1 leased, 0 open" in text
    assert "    HumanEval: 2/3 samples done\n    arith: 4/4 samples done" in text
    assert "validator: 0 queued, 6 accepted, 1 rejected" in text
    assert "worker: idle, 3 accepted, 0 rejected, 1 handed back" in text
    assert describe({"name": "x", "ok": False, "error": "gone"}) == "x: gone"


def test_no_node_is_a_clear_error(tmp_path: Path) -> None:
    r = status("--data-dir", str(tmp_path / "nothing"))
    assert r.returncode == 1
    assert "not running (no node.json" in r.stdout and "Traceback" not in r.stderr
    # The default data dir comes from FLOPNET_HOME.
    env = {**os.environ, "FLOPNET_HOME": str(tmp_path / "home")}
    r = status(env=env)
    assert r.returncode == 1 and "home: not running" in r.stdout


@pytest.mark.timeout(180)
def test_status_of_a_real_node(tmp_path: Path) -> None:
    data_dir = tmp_path / "pub"
    key = load_or_create_identity(data_dir).public_key.hex()
    params = NetworkParams(network_id="pending", publishers=(key,), validators=(key,))
    manifest = tmp_path / "network.manifest"
    create_network(Identity(b"\xc3" * 32), "status", params, manifest)
    node = subprocess.Popen(
        [
            *FLOPNET,
            "node",
            "--role",
            "publisher",
            "--data-dir",
            str(data_dir),
            "--manifest",
            str(manifest),
            "--tasks",
            "3",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while read_node_info(data_dir) is None:
            assert node.poll() is None, "the node exited"
            assert time.time() < deadline, "the node did not start"
            time.sleep(0.2)
        r = status("--data-dir", str(data_dir))
        assert r.returncode == 0, r.stderr
        peer_id = load_or_create_identity(data_dir).peer_id
        assert f"publisher  {peer_id}" in r.stdout
        assert "publisher: 3 tasks, 0 done" in r.stdout
        r = status("--data-dir", str(data_dir), "--json")
        document = json.loads(r.stdout)
        assert r.returncode == 0 and document["nodes"][0]["status"]["peer_id"] == peer_id
        publisher = document["nodes"][0]["status"]["publisher"]
        assert publisher["task_sets"] == {"arith": {"open": 3, "leased": 0, "done": 0}}

        # A wrong token is refused by the node: that is not a healthy answer.
        token = data_dir / "api.token"
        real = token.read_text()
        token.write_text("0" * 32)
        r = status("--data-dir", str(data_dir))
        assert r.returncode == 1 and "refused: HTTP 401" in r.stdout
        token.write_text(real)
    finally:
        node.send_signal(signal.SIGKILL)  # leaves a stale node.json behind, as a crash would
        node.wait(30)
    assert (data_dir / "node.json").exists()
    r = status("--data-dir", str(data_dir), "--timeout", "2")
    assert r.returncode == 1 and "does not answer" in r.stdout and "Traceback" not in r.stderr
