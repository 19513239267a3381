"""Six node processes on 127.0.0.1: discovery from one bootstrap peer, a killed and a frozen one."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from flopnet.node.cli.devnet import Devnet, DevnetOptions
from flopnet.node.local import api_get, read_node_info

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_six_processes_survive_a_killed_and_a_frozen_peer(tmp_path: Path) -> None:
    options = DevnetOptions(
        workers=4,
        tasks=10,
        max_new_tokens=160,
        data_dir=tmp_path,
        lease_seconds=8,
        timeout=300,
        bootstrap_node=True,
    )
    net = Devnet(options)
    try:
        net.start()
        assert len(net.procs) == 6  # bootstrap, publisher+validator, four workers
        validator_info = net.validator_info
        assert validator_info is not None
        killed, frozen = net.workers[0], net.workers[1]

        # Discovery: workers were given only the bootstrap node, yet reach the validator.
        worker_ids = {read_node_info(w.data_dir)["peer_id"] for w in net.workers}  # type: ignore[index]
        assert wait_until(
            lambda: worker_ids <= set(api_get(validator_info, "/status")["peers"]), 60
        ), "workers did not find the validator through the DHT"

        # Kill one worker in the middle of its work (it holds a lease), freeze another.
        info = read_node_info(killed.data_dir)
        assert info is not None

        def generating() -> bool:
            return bool(api_get(info, "/status")["worker"]["phase"] == "generating")

        assert wait_until(generating, 120, interval=0.01), "the victim never held a lease"
        os.killpg(killed.process.pid, signal.SIGKILL)
        os.killpg(frozen.process.pid, signal.SIGSTOP)
        frozen_id = read_node_info(frozen.data_dir)["peer_id"]  # type: ignore[index]

        # The others finish every task within the lease deadlines; nothing hangs.
        started = time.time()
        finished = net.wait_done(240, allow_dead=frozenset({killed.name}))
        assert finished, "the network did not finish after losing two workers"
        assert time.time() - started < 240

        # The frozen peer is marked gone by the validator's liveness table.
        def frozen_is_gone() -> bool:
            table = api_get(validator_info, "/status")["peer_table"]
            return any(p["peer_id"] == frozen_id and p["state"] == "gone" for p in table)

        assert wait_until(frozen_is_gone, 60, interval=0.5), "the frozen peer was never marked gone"
        # Health monitoring aborts its connection too (a ping it cannot answer).
        assert wait_until(
            lambda: frozen_id not in api_get(validator_info, "/status")["peers"], 60, interval=0.5
        ), "the frozen peer's connection was never dropped"
        net.capture_status()
    finally:
        net.stop()
    summary = net.summary(True)
    assert summary["tasks_validated"] == 10
    publisher = net.final_status["validator"]["publisher"]
    assert publisher["samples_reopened"] >= 1  # at least the killed worker's lease was re-issued
