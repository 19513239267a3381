"""A real devnet (separate processes on 127.0.0.1) under attack by hostile peers running in a
process of their own (``python -m flopnet.testing.hostile``): honest work goes on, nothing the
attackers send is credited (forgeries are not even stored; garbage on real leases is audited and
rejected), no honest worker is banned, and the attackers' costs fall on them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until

from flopnet.node.cli.devnet import Devnet, DevnetOptions
from flopnet.node.local import api_get, api_send, flopnet_argv, read_node_info
from flopnet.protocol.manifest import MANIFEST_FILE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def attack(net: Devnet, name: str, *options: str) -> subprocess.Popen[str]:
    """Start one attack in its own process against the devnet's publisher and validator."""
    info = net.validator_info
    assert info is not None
    out = net.root / f"attack-{name}.json"
    command = [*flopnet_argv()[:2], "flopnet.testing.hostile", name]
    command += ["--manifest", str(net.root / MANIFEST_FILE), "--bootstrap", info["addrs"][0]]
    command += ["--out", str(out), *options]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def started(process: subprocess.Popen[str]) -> bool:
    """Wait for an attack's identities to be up (it says ``attacking`` on stderr); False if it
    ended first."""
    assert process.stderr is not None
    return any(line.strip() == "attacking" for line in process.stderr)


def outcome(net: Devnet, name: str, process: subprocess.Popen[str]) -> dict[str, Any]:
    _, err = process.communicate(timeout=180)
    assert process.returncode == 0, err
    result: dict[str, Any] = json.loads((net.root / f"attack-{name}.json").read_text())
    return result


def test_honest_work_goes_on_under_sybils_forgeries_and_floods(tmp_path: Path) -> None:
    tasks = 40
    net = Devnet(
        DevnetOptions(
            workers=2,
            tasks=tasks,
            max_new_tokens=32,
            data_dir=tmp_path,
            lease_seconds=20,
            timeout=400,
        )
    )
    try:
        net.start()
        info = net.validator_info
        assert info is not None
        # The honest workers build a record first: trust is earned by accepted work.
        assert wait_until(lambda: api_get(info, "/status")["validator"]["accepted"] >= 4, 180)
        # Then they finish what they hold and wait until the attackers that need open tasks
        # are up: the garbage senders first (they need real leases), then the hoarders (who
        # take what newcomers may hold). On a slow machine honest work once finished every task
        # before the attack processes had started, and the attacks then tested nothing.
        workers = [read_node_info(w.data_dir) for w in net.workers]
        for worker in workers:
            assert worker is not None
            api_send(worker, "POST", "/control/pause", {"mode": "finish"})
        garbage_senders = attack(net, "garbage", "--identities", "4", "--seconds", "12")
        assert started(garbage_senders), "the garbage senders did not start"
        hoarders = attack(net, "hoard", "--identities", "12", "--seconds", "15")
        assert started(hoarders), "the hoarders did not start"
        for worker in workers:
            assert worker is not None
            api_send(worker, "POST", "/control/resume")
        attacks = {
            "hoard": hoarders,
            "forged": attack(net, "forged", "--seconds", "6", "--rate", "20"),
            "replay": attack(net, "replay", "--seconds", "12", "--rate", "100"),
            "heartbeats": attack(net, "heartbeats", "--seconds", "12", "--rate", "100"),
            "garbage": garbage_senders,
        }
        results = {name: outcome(net, name, proc) for name, proc in attacks.items()}
        assert net.wait_done(300), "honest work did not finish under attack"
        # Every garbage submission that got a receipt is judged before the figures are read.
        sent = results["garbage"]["receipts"]
        assert wait_until(lambda: api_get(info, "/status")["validator"]["rejected"] >= sent, 120)
        net.capture_status()
    finally:
        net.stop()

    summary = net.summary(True)
    assert summary["tasks_validated"] == tasks and summary["ok"], summary
    status = net.final_status["validator"]
    honest = {w["peer_id"] for w in summary["contributors"]}
    # No honest worker was charged, let alone banned; the attackers were.
    charged = {p["peer_id"]: p for p in status["penalties"]}
    assert not honest & set(charged), charged
    for worker in net.workers:
        assert net.final_status[worker.name]["worker"]["bans"] == 0

    # Sybils: each fresh identity held one lease at most, all of them together no more than
    # the newcomers' share; they got no credit, and their lapsed leases cooled them down.
    hoard = results["hoard"]
    assert 0 < hoard["max_leases_held"] <= max(8, tasks // 4), hoard
    assert hoard["refusals"].get("too_many_leases", 0) > 0, hoard
    # Forged leases: refused before anything was stored, charged, and the forger banned.
    forged = results["forged"]
    assert forged["receipts"] == 0 and forged["refusals"].get("bad_lease", 0) >= 1, forged
    assert forged["banned_identities"] == 1, forged
    # Replayed gossip (others' entries and heartbeats as one's own) and a heartbeat flood: the
    # cheap checks charge the author and the ban ends it.
    for name in ("replay", "heartbeats"):
        assert results[name]["published"] > 0, results[name]
    assert len(charged) >= 3, charged  # forger, replayer and flooder at least
    # Garbage with well-formed proofs on real leases: stored (the lease is good), audited
    # (newcomers are audited in full) and rejected, every one.
    garbage = results["garbage"]
    assert garbage["receipts"] >= 1, garbage
    validator = status["validator"]
    # Nothing of theirs was credited: every credit is an honest worker's, every rejection the
    # garbage senders'.
    assert validator["accepted"] == tasks, validator
    assert validator["rejected"] == garbage["receipts"], (validator, garbage)
