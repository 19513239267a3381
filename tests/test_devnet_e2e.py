"""The judged command, as real processes on 127.0.0.1: publisher+validator and workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_DATA

from flopnet.ledger.store import LedgerStore
from flopnet.node.cli.devnet import Devnet, DevnetOptions
from flopnet.node.local import api_get, flopnet_argv, read_node_info
from flopnet.protocol.identity import load_or_create_identity

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
DATA = SHARED_DATA


def flopnet(*args: str, timeout: float = 540) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*flopnet_argv(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def devnet(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    small = ("--model", "tiny", "--workers", "2", "--tasks", "6", "--max-new-tokens", "48")
    where = ("--data-dir", str(tmp_path), "--timeout", "400")
    result = flopnet("devnet", "--headless", "--json", *small, *where, *extra)
    assert result.stdout.strip(), f"no JSON on stdout; stderr:\n{result.stderr}"
    return result.returncode, json.loads(result.stdout)


@contextlib.contextmanager
def running(options: DevnetOptions) -> Iterator[Devnet]:
    """A started devnet, stopped however the block ends."""
    net = Devnet(options)
    try:
        net.start()
        yield net
    finally:
        net.stop()


def settle(net: Devnet, tasks: int, allow_dead: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Wait (up to 240 s) until every task is validated; the summary, checked for ``tasks``."""
    finished = net.wait_done(240, allow_dead=allow_dead)
    net.capture_status()
    summary = net.summary(finished)
    assert finished, summary
    assert summary["tasks_validated"] == tasks
    return summary


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a node's process group (the daemon and its model child) and reap it."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def reaches_phase(data_dir: Path, phase: str, timeout: float = 120.0) -> bool:
    """Poll a worker's /status until it reports ``phase`` (a brief state: poll fast)."""
    info = read_node_info(data_dir)
    assert info is not None
    deadline = time.time() + timeout
    while time.time() < deadline:
        if api_get(info, "/status")["worker"]["phase"] == phase:
            return True
        time.sleep(0.005)
    return False


def test_devnet_validates_every_task(tmp_path: Path) -> None:
    code, summary = devnet(tmp_path)
    assert code == 0, summary
    assert summary["tasks_validated"] == 6
    assert summary["tasks_rejected"] == 0
    rows = summary["contributors"]
    assert len(rows) == 2 and not any(r["cheater"] for r in rows)
    assert sum(r["tasks"] for r in rows) == 6
    assert summary["flops_credited"] == sum(r["flops"] for r in rows) > 0
    # Each worker shared its signed profile; the validator recorded it on its ledger.
    assert {(r["display_name"], r["team"]) for r in rows} == {
        ("worker-1", "devnet"),
        ("worker-2", "devnet"),
    }
    for row in rows:
        assert row["peer_id"].startswith("12D3KooW")
        # FLOPs are the validator's 2·N·(P+G), never a worker's claim: positive for any work.
        assert (row["flops"] > 0) == (row["tasks"] > 0)

    # Every node ran as its own process and kept its state; the ledger verifies.
    validator_key = load_or_create_identity(tmp_path / "validator").public_key
    with LedgerStore(tmp_path / "validator" / "ledger.sqlite") as store:
        # A credit and an audit result per task (a devnet's audit rate floor is 1.0), and a
        # profile per worker.
        assert store.head(validator_key) == (13, store.head(validator_key)[1])  # type: ignore[index]
        assert len(store.audit_results(validator_key)) == 6
        network_id = summary["network_id"]
        assert store.verify_all(network_id) == []

    board = flopnet("leaderboard", "--data-dir", str(tmp_path), "--json", timeout=60)
    assert board.returncode == 0, board.stderr
    # Every chain verifies, audit entries included (against the manifest's audit policy).
    verified = flopnet("ledger", "verify", "--data-dir", str(tmp_path), timeout=60)
    assert verified.returncode == 0 and "all chains verify" in verified.stdout, verified.stdout
    ranked = json.loads(board.stdout)
    assert {r["peer_id"] for r in ranked} == {r["peer_id"] for r in rows}
    assert ranked[0]["flops"] >= ranked[-1]["flops"]


def test_devnet_batched_generation_with_pinned_weights(tmp_path: Path) -> None:
    from flopnet.node.config import NetworkParams

    code, summary = devnet(tmp_path, "--workers", "1", "--batch-size", "3", "--pin-weights")
    assert code == 0, summary
    assert summary["tasks_validated"] == 6 and summary["tasks_rejected"] == 0
    # Six tasks in calls of up to three: batched rows pass the same proof check as single ones.
    assert summary["timing"]["tasks_per_generation_call"] > 1.0
    assert len(NetworkParams.load(tmp_path / "network.manifest").weights_sha256) == 64


@pytest.mark.skipif(not (DATA / "HumanEval.jsonl.gz").exists(), reason="no ../shared/data")
def test_devnet_runs_code_tasks_through_the_sandboxed_verifier(tmp_path: Path) -> None:
    """Publisher and validator in separate processes: the validator holds no task set and
    fetches each code task's spec (its tests) from the publisher over the task-spec stream."""
    data = str(DATA / "HumanEval.jsonl.gz")
    code, summary = devnet(
        tmp_path, "--workers", "1", "--tasks", "2", "--tasks-file", data, "--separate-publisher"
    )
    assert code == 0, summary
    assert summary["tasks_validated"] == 2
    log = (tmp_path / "validator" / "node.log").read_text()
    # The code verifier judged each response (a random model writes no solution): no errors.
    assert log.count("ACCEPT HumanEval-") == 2 and "verifier error" not in log
    assert log.count("fetched the spec of task HumanEval-") == 2
    assert (tmp_path / "publisher" / "node.log").read_text().count(" on HumanEval-") >= 2  # leases


def test_devnet_rejects_every_cheat_and_releases_their_tasks(tmp_path: Path) -> None:
    """One cheater per cheat of the detection table beside two honest workers: every cheat is
    rejected with the check that caught it, and the honest workers do all the work."""
    kinds = ("wrong_model", "injected", "truncated", "temperature", "top_p", "prompt_swap")
    code, summary = devnet(
        tmp_path, "--tasks", "10", *(arg for kind in kinds for arg in ("--cheat", kind))
    )
    assert code == 0, summary
    assert summary["tasks_validated"] == 10
    cheaters = {r["cheater"]: r for r in summary["contributors"] if r["cheater"]}
    honest = [r for r in summary["contributors"] if not r["cheater"]]
    assert sorted(cheaters) == sorted(kinds) and len(honest) == 2
    for kind, cheater in cheaters.items():
        assert cheater["rejected"] >= 1, f"{kind}: the cheater must have been leased a task"
        assert cheater["tasks"] == 0 and cheater["flops"] == 0, kind
    assert summary["tasks_rejected"] == sum(c["rejected"] for c in cheaters.values())
    assert sum(r["tasks"] for r in honest) == 10

    # The rejections are on the ledger with the proof check's reasons; each failed audit also
    # wrote a hard invalidation of the cheater's pending credit, and the chains still verify.
    with LedgerStore(tmp_path / "validator" / "ledger.sqlite") as store:
        rejected = store.connection.execute(
            "SELECT COUNT(*) FROM credits WHERE accepted = 0"
        ).fetchone()[0]
        hard = store.connection.execute(
            "SELECT COUNT(*) FROM invalidations WHERE severity = 'hard'"
        ).fetchone()[0]
    assert rejected == summary["tasks_rejected"] == hard
    verified = flopnet("ledger", "verify", "--data-dir", str(tmp_path), timeout=60)
    assert verified.returncode == 0, verified.stdout
    log = (tmp_path / "validator" / "node.log").read_text()
    # What caught them: TOPLOC for other weights and another prompt, the sampling replay for
    # changed tokens and sampling parameters, the completion check for a cut-short output.
    assert "exp_mismatches" in log and "sampling replay:" in log and "completion:" in log


def test_devnet_bad_arguments_fail_clearly(tmp_path: Path) -> None:
    result = flopnet(
        "devnet", "--headless", "--model", "tiny", "--workers", "0", "--data-dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert "at least one honest worker" in result.stderr


def test_devnet_survives_a_worker_killed_mid_lease(tmp_path: Path) -> None:
    options = DevnetOptions(
        workers=3, tasks=6, max_new_tokens=160, data_dir=tmp_path, lease_seconds=5, timeout=300
    )
    with running(options) as net:
        victim = net.workers[0]
        # Killed while generating: its lease must expire and go to another worker. (Killed
        # after its receipt, its durable submission would still be validated and credited.)
        assert reaches_phase(victim.data_dir, "generating"), "the victim never held a lease"
        kill(victim.process)
        settle(net, 6, allow_dead=frozenset({victim.name}))
    publisher = net.final_status["validator"]["publisher"]
    assert publisher["samples_reopened"] >= 1, publisher  # the dead worker's lease was re-issued
    assert publisher["leases_issued"] >= 7


def test_validator_killed_after_receipts_loses_nothing(tmp_path: Path) -> None:
    options = DevnetOptions(
        workers=2, tasks=6, max_new_tokens=96, data_dir=tmp_path, lease_seconds=15, timeout=300
    )
    with running(options) as net:
        assert reaches_phase(net.workers[0].data_dir, "awaiting_verdict"), (
            "no worker ever waited for a verdict"
        )
        validator = next(p for p in net.procs if p.kind == "validator")
        kill(validator.process)  # mid-queue: receipts already given
        net.restart(validator.name)
        summary = settle(net, 6)
    validator_key = load_or_create_identity(tmp_path / "validator").public_key
    with LedgerStore(tmp_path / "validator" / "ledger.sqlite") as store:
        assert store.verify_all(summary["network_id"]) == []
        rows = store.connection.execute(
            "SELECT lease_id, COUNT(*) FROM credits WHERE signer = ? GROUP BY lease_id",
            (validator_key,),
        ).fetchall()
    assert all(count == 1 for _, count in rows), "a lease was credited twice"
    accepted = store_accepted = sum(c["tasks"] for c in summary["contributors"])
    with LedgerStore(tmp_path / "validator" / "ledger.sqlite") as store:
        store_accepted = store.connection.execute(
            "SELECT COUNT(DISTINCT task_id) FROM credits WHERE accepted = 1"
        ).fetchone()[0]
    assert accepted == store_accepted == 6  # one accepted credit per task, none lost, none doubled


def finished_unjudged(worker_dir: Path, state: str = "finished") -> list[bytes]:
    """Lease ids the worker has finished (sealed) and not had judged, from its outbox (or, with
    ``state="claimed"``, the leases it holds unfinished)."""
    path = worker_dir / "worker.sqlite"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT lease_id FROM outbox WHERE state = ?", (state,)).fetchall()
    except sqlite3.OperationalError:
        return []  # the table is being created
    finally:
        conn.close()
    return [bytes(r[0]) for r in rows]


def test_worker_killed_before_its_submission_is_judged_resends_it(tmp_path: Path) -> None:
    """A worker killed with finished work in hand sends it again on restart: the work it did
    is credited under its original lease, not redone by someone else."""
    options = DevnetOptions(
        workers=1, tasks=3, max_new_tokens=48, data_dir=tmp_path, lease_seconds=90, timeout=300
    )
    with running(options) as net:
        worker = net.workers[0]
        validator = next(p for p in net.procs if p.kind == "validator")
        assert reaches_phase(worker.data_dir, "generating"), "the worker never held a lease"
        # Freeze the validator: the finished submission cannot be judged (nor, most often,
        # even sent) before the worker dies.
        os.killpg(validator.process.pid, signal.SIGSTOP)
        try:
            deadline = time.time() + 120
            while not (owed := finished_unjudged(worker.data_dir)) and time.time() < deadline:
                time.sleep(0.05)
            assert owed, "the worker never finished its lease"
            kill(worker.process)
        finally:
            os.killpg(validator.process.pid, signal.SIGCONT)
        net.restart(worker.name)
        settle(net, 3)
    with LedgerStore(tmp_path / "validator" / "ledger.sqlite") as store:
        credited = {
            bytes(r[0])
            for r in store.connection.execute("SELECT lease_id FROM credits WHERE accepted = 1")
        }
    assert set(owed) <= credited, "the finished work was not credited under its lease"
    assert finished_unjudged(worker.data_dir) == []
    assert net.final_status[worker.name]["worker"]["resent"] >= 1


def test_worker_killed_mid_generation_hands_its_leases_back_on_restart(tmp_path: Path) -> None:
    """A worker killed while generating finds its unfinished leases in its outbox on restart and
    hands them back (reason "restarted"): with ten-minute leases, the network finishes in a
    fraction of that instead of waiting for them to lapse."""
    options = DevnetOptions(
        workers=1, tasks=3, max_new_tokens=400, data_dir=tmp_path, lease_seconds=600, timeout=300
    )
    with running(options) as net:
        worker = net.workers[0]
        assert reaches_phase(worker.data_dir, "generating"), "the worker never held a lease"
        kill(worker.process)
        held = finished_unjudged(worker.data_dir, "claimed")
        assert held, "the worker held no unfinished lease when it was killed"
        net.restart(worker.name)
        settle(net, 3)  # within 240 s, well inside the leases' ten minutes
    publisher = next(s for s in net.final_status.values() if s.get("publisher"))
    assert publisher["publisher"]["leases_released"] >= len(held)
    # The restarted worker's task board shows what it handed back (the TUI's Tasks screen).
    assert net.final_status[worker.name]["worker"]["stages"]["released"] >= len(held)
    assert finished_unjudged(worker.data_dir, "claimed") == []
