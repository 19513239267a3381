"""Exactly one credit per sample with two validators and a worker frozen past its deadline.

A devnet of separate processes on 127.0.0.1: a publisher+validator, a second validator, three
workers. One worker is frozen (SIGSTOP, its model process too) while it generates, for longer
than its lease and the validator's grace: the sample is re-leased and done by another worker;
thawed, the frozen worker sends its late result anyway. At the end every sample has exactly one
accepted credit across both validators' chains, both validators judged some samples, each
replicated the other's chain, and `flopnet ledger verify` passes on both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import wait_until

from flopnet.ledger.store import LedgerStore
from flopnet.node.cli.devnet import Devnet, DevnetOptions
from flopnet.node.local import LEDGER_FILE, api_get, flopnet_argv, read_node_info
from flopnet.protocol.catalog import lease_grace

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
TASKS = 12
LEASE_S = 8.0


def test_two_validators_credit_each_sample_once_despite_a_late_result(tmp_path: Path) -> None:
    net = Devnet(
        DevnetOptions(
            workers=3,
            validators=2,
            tasks=TASKS,
            max_new_tokens=96,
            data_dir=tmp_path,
            lease_seconds=LEASE_S,
            timeout=400,
        )
    )
    try:
        net.start()
        assert [p.name for p in net.validators] == ["validator", "validator-2"]
        frozen = net.workers[0]
        info = read_node_info(frozen.data_dir)
        assert info is not None

        def generating() -> bool:
            return bool(api_get(info, "/status")["worker"]["phase"] == "generating")

        assert wait_until(generating, 180, interval=0.01), "the worker never generated"
        held = [t["lease_id"] for t in api_get(info, "/tasks?stage=generating")["tasks"]]
        os.killpg(frozen.process.pid, signal.SIGSTOP)
        # Past the deadline and the grace: the publisher re-leases the frozen worker's sample.
        time.sleep(LEASE_S + lease_grace(LEASE_S) + 4)
        os.killpg(frozen.process.pid, signal.SIGCONT)
        assert net.wait_done(300), "the network did not finish"
        # The thawed worker finishes its sample and sends the late result, which is judged.
        ended = ("verdict", "failed", "released")

        def late_results() -> list[dict[str, object]] | None:
            found = [api_get(info, f"/tasks/{lease}") for lease in held]
            return found if all(t["stage"] in ended for t in found) else None

        assert wait_until(lambda: late_results() is not None, 120), "the late result hung"
        late = late_results() or []
        print("the frozen worker's leases:", [(t["stage"], t["accepted"], t["note"]) for t in late])
        assert net.wait_replicated(60), "the validators' chains did not converge"
        net.capture_status()
    finally:
        net.stop()

    assert held, "the frozen worker held no lease"
    publisher = net.final_status["validator"]["publisher"]
    assert publisher["samples_reopened"] >= 1, publisher  # the frozen worker's sample
    keys = {p.name: bytes.fromhex(p.public_key) for p in net.validators}
    for proc in net.validators:
        with LedgerStore(proc.data_dir / LEDGER_FILE) as store:
            rows = store.connection.execute(
                "SELECT signer, task_id, lease_id, accepted FROM credits"
            ).fetchall()
        accepted = Counter((task, bytes(lease)) for signer, task, lease, ok in rows if ok)
        # One accepted credit per sample (samples=1: a task is a sample), over both chains.
        per_task = Counter(task for task, _ in accepted)
        assert len(per_task) == TASKS and set(per_task.values()) == {1}, per_task
        signers = {bytes(signer) for signer, *_ in rows}
        assert signers == set(keys.values()), "a validator's chain is missing here"
        verify = subprocess.run(
            [*flopnet_argv(), "ledger", "verify", "--data-dir", str(proc.data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
    summary = net.summary(True)
    assert summary["tasks_validated"] == TASKS, summary
