"""The node's API and control against a real devnet of separate processes on 127.0.0.1.

One devnet (a publisher+validator and three workers for two tasks, so one worker is idle;
every node sees two GPUs through a fake NVML on PYTHONPATH) serves all of this file: the API's
answers and errors, server-sent events, a sample's output streaming while it is generated,
pause now (the paused worker's lease is handed back with a signed release and taken by another
worker within seconds, not after the lease's two minutes), finish then pause, resume, nothing
lost or credited twice, receipts checked against the validator's chain, the GPU choice
restarting the model process, and ``flopnet status``.
The real-GPU check was not run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flopnet.ledger.store import LedgerStore
from flopnet.node.cli.devnet import Devnet, DevnetOptions
from flopnet.node.local import LEDGER_FILE, flopnet_argv, read_node_info

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
FAKE_NVML = Path(__file__).parent / "data" / "fake_nvml"
TASKS = 2
WORKERS = 3


class Node:
    """One devnet node's API, as a client with its token."""

    def __init__(self, data_dir: Path) -> None:
        info = read_node_info(data_dir)
        assert info is not None
        self.data_dir = data_dir
        self.url = info["api_url"]
        self.headers = {"Authorization": f"Bearer {info['token']}"}

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.url + path, headers=self.headers, params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def send(
        self, method: str, path: str, body: Any = None, content: bytes | None = None
    ) -> httpx.Response:
        if content is not None:
            return httpx.request(
                method, self.url + path, content=content, headers=self.headers, timeout=10
            )
        return httpx.request(method, self.url + path, json=body, headers=self.headers, timeout=10)


class TaskEvents:
    """A node's ``task`` events, read from its event stream on a thread until stopped."""

    def __init__(self, node: Node) -> None:
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(node,), daemon=True)
        self._thread.start()

    def _read(self, node: Node) -> None:
        params = {"kinds": "task"}
        with httpx.stream(
            "GET", node.url + "/events", headers=node.headers, params=params, timeout=None
        ) as stream:
            for line in stream.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("data:"):
                    self.events.append(json.loads(line[5:]))

    def stop(self) -> None:
        self._stop.set()  # the thread ends at the next line (a keep-alive comes every few s)


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAKE_NVML), before) if p)
    net = Devnet(
        DevnetOptions(
            workers=WORKERS,
            tasks=TASKS,
            max_new_tokens=128,
            data_dir=tmp_path_factory.mktemp("control-devnet"),
        )
    )
    try:
        net.start()
        yield net
    finally:
        net.stop()
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def nodes(net: Devnet) -> tuple[Node, list[Node]]:
    """The validator and the workers."""
    workers = [Node(net.root / f"worker-{i + 1}") for i in range(WORKERS)]
    return Node(net.root / "validator"), workers


def in_flight(node: Node, stage: str = "generating") -> list[dict[str, Any]]:
    return [t for t in node.get("/tasks", stage=stage)["tasks"]]


def test_pause_now_hands_the_lease_to_another_worker_then_finish_and_resume(
    devnet: Devnet,
) -> None:
    validator, workers = nodes(devnet)

    def generating() -> tuple[Node, dict[str, Any]] | None:
        for worker in workers:
            found = in_flight(worker)
            if found:
                return worker, found[0]
        return None

    watchers = [TaskEvents(w) for w in workers]  # every task event from here on
    one, lease = wait_for(generating, 240, "a worker generating")

    # Its output streams: while the lease is still generating its token count grows in the
    # event stream (a sample may end between two polls of /tasks; its events stay).
    def streamed() -> list[dict[str, Any]]:
        watcher = watchers[workers.index(one)]
        return [
            e
            for e in watcher.events
            if e["lease_id"] == lease["lease_id"] and e["stage"] == "generating" and e["tokens"]
        ]

    partial = wait_for(streamed, 60, "the output streaming")
    assert 0 < partial[0]["tokens"] <= 128, partial
    for watcher in watchers:
        watcher.stop()
    # Pause now, while a worker generates: its lease goes back with a signed release.
    one, lease = wait_for(generating, 240, "a worker generating")
    answer = one.send("POST", "/control/pause", {"mode": "now"})
    assert answer.status_code == 200 and answer.json()["effective"]["badge"] == "paused (manual)"
    released_at = time.time()
    task = wait_for(
        lambda: (t := one.get(f"/tasks/{lease['lease_id']}"))["stage"] == "released" and t,
        15,
        "the lease handed back",
    )
    assert "handed back (paused)" in task["note"], task["note"]
    assert one.get("/status")["state"]["badge"] == "paused (manual)"
    others = [w for w in workers if w is not one]
    sample = (lease["task_id"], lease["sample_index"])

    def taken() -> tuple[Node, dict[str, Any]] | None:
        for worker in others:
            for t in worker.get("/tasks")["tasks"]:
                if (t["task_id"], t["sample_index"]) == sample:
                    return worker, t
        return None

    # Another worker takes the same sample within seconds (a lapse would take 120 + 30 s).
    two, relet = wait_for(taken, 60, "another worker leasing the released sample", every=0.2)
    relet_s = relet["claimed_at"] - released_at
    print(f"released sample re-leased by another worker after {relet_s:.2f} s")
    assert relet_s < 30
    assert validator.get("/status")["publisher"]["leases_released"] >= 1
    # Paused: the first worker claims nothing.
    claimed = one.get("/status")["worker"]["leases"]
    time.sleep(3)
    assert one.get("/status")["worker"]["leases"] == claimed
    resumed = one.send("POST", "/control/resume", {}).json()
    # Running again (or for a moment "holding": the model process stopped mid-sample restarts).
    assert resumed["settings"]["mode"] == "running"
    assert resumed["effective"]["state"] in ("running", "holding"), resumed

    # Finish then pause, on the worker that took the sample while it works on it: the lease
    # ends with a verdict, then the worker pauses; nothing is handed back.
    finishing = two.send("POST", "/control/pause", {"mode": "finish"}).json()["effective"]
    assert finishing["state"] == "finishing" and not finishing["may_claim"]
    wait_for(lambda: two.get("/control")["effective"]["state"] == "paused", 300, "it paused")
    done = two.get(f"/tasks/{relet['lease_id']}")
    assert done["stage"] == "verdict" and done["accepted"], done
    assert two.send("POST", "/control/resume", {}).status_code == 200

    assert devnet.wait_done(400), "not every task was validated"
    # Nothing lost, nothing credited twice: one accepted credit per sample, and none for the
    # lease that was handed back.
    with LedgerStore(devnet.root / "validator" / LEDGER_FILE) as store:
        rows = store.connection.execute(
            "SELECT task_id, sample_index, lease_id, accepted FROM credits"
        ).fetchall()
    accepted = [(r[0], r[1]) for r in rows if r[3]]
    assert len(accepted) == len(set(accepted)) == TASKS
    assert bytes.fromhex(lease["lease_id"]) not in {bytes(r[2]) for r in rows}


def test_receipts_check_out_against_the_validators_chain(devnet: Devnet) -> None:
    assert devnet.wait_done(400)
    _, workers = nodes(devnet)
    time.sleep(2)  # the last credit entries reach the workers' replicas
    checked = 0
    for worker in workers:
        credited = worker.get("/credits")["summary"]["pending"]["count"]
        if not credited:
            continue  # an idle worker earned nothing, so holds no receipt
        checked += 1
        done = subprocess.run(
            [
                *flopnet_argv(),
                "credits",
                "--data-dir",
                str(worker.data_dir),
                "--verify",
                "--ledger",
                str(devnet.root / "validator" / LEDGER_FILE),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        out = json.loads(done.stdout)
        assert done.returncode == 0 and out["verified"], done.stdout + done.stderr
        assert len(out["receipts"]) == credited
        assert all(r["state"] == "pending" for r in out["receipts"])
    assert checked >= 1


def test_the_api_answers_documents_and_refuses_bad_requests_clearly(devnet: Devnet) -> None:
    validator, (one, *_) = nodes(devnet)
    assert httpx.get(one.url + "/status", timeout=5).status_code == 401
    bad = [
        (("GET", "/tasks?stage=dancing", None), (400, "stage")),
        (("GET", "/tasks?limit=0", None), (400, "limit")),
        (("GET", "/tasks?limit=ten", None), (400, "limit")),
        (("GET", "/logs?colour=red", None), (400, "colour")),
        (("POST", "/control/pause", {"mode": "later"}), (400, "mode")),
        (("POST", "/control/pause", {}), (400, "mode")),
        (("POST", "/control/pause", {"mode": "now", "x": 1}), (400, "x")),
        (("PUT", "/control/batch-size", {"batch_size": "2"}), (400, "batch_size")),
        (("PUT", "/control/batch-size", {"batch_size": 9}), (400, None)),
        (("PUT", "/control/schedule", {"schedule": "soon"}), (400, None)),
        (("PUT", "/control/gpus", {"gpus": [5]}), (400, None)),
        (("GET", "/tasks/nope", None), (404, "lease_id")),
        (("GET", "/nowhere", None), (404, None)),
        (("DELETE", "/status", None), (405, None)),
    ]
    for (method, path, body), (status, field) in bad:
        response = one.send(method, path, body)
        assert response.status_code == status, (path, response.text)
        error = response.json()
        assert error["error"] and error.get("field") == field, (path, error)
    assert "no GPU 5" in one.send("PUT", "/control/gpus", {"gpus": [5]}).json()["error"]
    not_json = one.send("POST", "/control/pause", content=b"{")
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    huge = one.send("POST", "/control/resume", content=b"{" + b" " * 20000 + b"}")
    assert huge.status_code == 413
    no_worker = validator.send("GET", "/control")
    assert no_worker.status_code == 409 and "no worker role" in no_worker.json()["error"]

    spec = one.get("/openapi.json")
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    for path in ("/status", "/tasks", "/credits", "/why", "/peers", "/events", "/metrics"):
        assert ("GET", path) in documented
    assert ("POST", "/control/pause") in documented and ("PUT", "/control/gpus") in documented

    status = one.get("/status")
    assert {"state", "control", "worker", "model_process"} <= set(status)
    peers = one.get("/peers")
    assert peers["peers"] and all(p["peer_id"] != status["peer_id"] for p in peers["peers"])
    # Pings go round every few seconds: at least one peer has a measured latency soon.
    wait_for(
        lambda: any(p["latency_ms"] is not None for p in one.get("/peers")["peers"]),
        30,
        "a peer's latency",
    )
    assert all(p["relayed"] is False for p in peers["peers"] if p["connected"])
    health = {c["check"]: c for c in one.get("/health")["checks"]}
    assert set(health) == {"identity", "manifest", "model", "gpus", "sandbox", "disk", "clock"}
    assert "2 GPU(s)" in health["gpus"]["summary"]  # the fake NVML's two H200s
    system = one.get("/system")
    assert system["source"] == "nvml" and len(system["last"]["gpus"]) == 2
    assert devnet.wait_done(400)
    _, workers = nodes(devnet)
    earner = wait_for(
        lambda: next((w for w in workers if w.get("/credits")["summary"]["pending"]["count"]), 0),
        30,
        "a worker's credit in its replica",
    )
    board = earner.get("/leaderboard", window="24h")
    assert isinstance(board, list) and [r["you"] for r in board].count(True) == 1
    assert one.get("/logs", level="INFO", q="listening")["lines"]
    view = validator.get("/validator")
    assert view["validator"] and view["audit_rates"] and "sandbox" in view
    metrics = httpx.get(one.url + "/metrics", headers=one.headers, timeout=10).text
    for family in ("flopnet_tokens_generated_total", "flopnet_tasks{", "flopnet_peers{"):
        assert family in metrics
    assert (
        "flopnet_verdicts_total"
        in httpx.get(validator.url + "/metrics", headers=validator.headers, timeout=10).text
    )


def test_a_state_change_reaches_the_event_stream(devnet: Devnet) -> None:
    _, (one, *_) = nodes(devnet)
    with httpx.stream(
        "GET", one.url + "/events", headers=one.headers, params={"kinds": "control"}, timeout=20
    ) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        sent = time.time()
        one.send("PUT", "/control/schedule", {"schedule": "00:00-24:00"})
        kind = data = None
        for line in lines:
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind == "control":
                data = json.loads(line[5:])
                break
        assert data is not None and data["settings"]["schedule"] == "00:00-24:00"
        assert data["at"] - sent < 5
    one.send("PUT", "/control/schedule", {"schedule": None})


def test_choosing_gpus_restarts_the_model_process_on_them(devnet: Devnet) -> None:
    assert devnet.wait_done(400)
    _, (one, *_) = nodes(devnet)
    before = one.get("/status")["model_process"]
    answer = one.send("PUT", "/control/gpus", {"gpus": [1]})
    assert answer.status_code == 200 and answer.json()["settings"]["gpus"] == [1]
    after = wait_for(
        lambda: (
            (m := one.get("/status")["model_process"])["restarts"] > before["restarts"]
            and m["alive"]
            and m
        ),
        180,
        "the model process restarted",
        every=0.5,
    )
    assert after["pid"] != before["pid"] and after["devices"] == [1]
    saved = json.loads((one.data_dir / "control.json").read_text())
    assert saved["gpus"] == [1]


def test_flopnet_status_exits_0_for_a_running_node_and_1_otherwise(
    devnet: Devnet, tmp_path: Path
) -> None:
    def status(directory: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*flopnet_argv(), "status", "--json", "--data-dir", str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    running = status(devnet.root)
    out = json.loads(running.stdout)
    assert running.returncode == 0 and out["ok"] and len(out["nodes"]) == 1 + WORKERS
    assert {n["state"]["badge"] for n in out["nodes"] if n["name"] == "validator"} == {
        "all validated"
    }
    nothing = status(tmp_path)
    assert nothing.returncode == 1 and "not running" in nothing.stdout
