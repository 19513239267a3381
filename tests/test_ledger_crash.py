"""Crash safety with real processes: SIGKILL during batched appends, and during a range sync."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from test_ledger import ALICE, NET, VALIDATOR, credit
from test_ledger_sync import Outcome, run_checked

from flopnet.ledger.store import LedgerStore
from flopnet.node.config import NetworkParams, create_network
from flopnet.node.ledger_sync import LedgerSync
from flopnet.node.replica import replica_command
from flopnet.protocol.catalog import LEDGER_RANGE, ledger_topic
from flopnet.protocol.envelope import Opened, message_id
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import LedgerRange, LedgerRangeRequest

REPO = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def kill_after_lines(args: list[str], wanted: int, rng: random.Random) -> list[str]:
    """Run a Python child (``python -c *args``), SIGKILL it soon after it has printed ``wanted``
    lines (an acknowledgement each), and return every line it printed, a last one cut short by
    the kill included (it has no newline)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", *args],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    try:
        while len(lines) < wanted:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"child exited early: {proc.wait()} {proc.stderr.read()}")
            lines.append(line)
        time.sleep(rng.uniform(0, 0.02))  # land the kill anywhere in a commit
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    lines += proc.stdout.read().splitlines(keepends=True)  # acks written before the kill
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return lines


# ---------------------------------------------------------------------------------------------
# A validator killed during heavy batched appends (audit + credit + invalidation per commit)

BATCH_CHILD = """
import sys
from pathlib import Path
from flopnet.ledger.kinds import AuditBody, InvalidationBody
from flopnet.ledger.store import LedgerStore
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import CreditBody

store = LedgerStore(Path(sys.argv[1]))
validator = Identity(bytes.fromhex(sys.argv[2]))
who = bytes(range(32))
i = 0
while True:
    sid = i.to_bytes(32, "big")
    credit = CreditBody(
        contributor=who, lease_id=i.to_bytes(16, "big"), submission_id=sid, task_id="t",
        sample_index=0, prompt_tokens=5, generated_tokens=7, flops=i, flop_formula="2NT-v0",
        accepted=False, answer_score=0.0, reasons=("proof failed",),
    )
    audit = AuditBody(who, sid, False, 1.0, 0, ("proof failed",))
    void = InvalidationBody(who, "hard", validator.public_key, 0, sid, "audit failed")
    out = store.append_local_batch(
        validator, sys.argv[3], [("audit", audit), ("credit", credit), ("invalidation", void)]
    )
    # Printed only once append_local_batch returned: the three entries are durable.
    print(" ".join(f"{seq}:{h.hex()}" for seq, h, _ in out), flush=True)
    i += 1
"""


def test_sigkill_during_batched_appends_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    rng = random.Random(7)
    acked: dict[int, bytes] = {}
    for wanted in (5, 40, 80):
        args = [BATCH_CHILD, str(path), VALIDATOR.seed.hex(), NET]
        for line in kill_after_lines(args, wanted, rng):
            for item in line.split():
                seq, h = item.split(":")
                acked[int(seq)] = bytes.fromhex(h)
        with LedgerStore(path) as store:
            stored = {message_id(e) for e in store.entries(VALIDATOR.public_key, 0, 10_000)}
            missing = [seq for seq, h in acked.items() if h not in stored]
            assert missing == [], f"acknowledged entries lost: {missing}"
            head = store.head(VALIDATOR.public_key)
            assert head is not None and (head[0] + 1) % 3 == 0  # batches are all or nothing
            assert store.verify_all(NET) == []


# ---------------------------------------------------------------------------------------------
# A replica killed with SIGKILL in the middle of a sync, then restarted

TOTAL = 2400


def _progress(path: Path, signer: bytes) -> int:
    """How many entries the child has stored (read-only; the child keeps writing)."""
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return int(
                conn.execute("SELECT COUNT(*) FROM entries WHERE signer = ?", (signer,)).fetchone()[
                    0
                ]
            )
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0  # schema not created yet


@pytest.mark.timeout(180)
def test_replica_killed_during_sync_resumes_to_an_identical_chain(tmp_path: Path) -> None:
    validator = Identity(b"\x51" * 32)
    founder = Identity(b"\x52" * 32)
    net = create_network(
        founder,
        "synckill",
        NetworkParams(network_id="assigned", validators=(validator.public_key.hex(),)),
        tmp_path / "network.manifest",
    )
    server_db = tmp_path / "validator.db"
    with LedgerStore(server_db) as store:
        batch = [("credit", credit(ALICE, i)) for i in range(TOTAL)]
        for start in range(0, TOTAL, 400):
            store.append_local_batch(validator, net.network_id, batch[start : start + 400])
    replica_dir = tmp_path / "replica"
    replica_db = replica_dir / "ledger.sqlite"
    requests: list[int] = []

    async def main(outcome: Outcome) -> None:
        host = P2PHost(validator, network_id=net.network_id)
        with LedgerStore(server_db) as store:
            sync = LedgerSync(
                host, store, validator, net.network_id, net.validator_keys, head_interval=0.5
            )

            async def slow_range(peer: str, opened: Opened) -> LedgerRange:
                requests.append(opened.expect(LedgerRangeRequest).from_seq)
                await trio.sleep(0.03)  # so that the kill lands mid-sync
                return await sync.handle_range(peer, opened)

            host.serve(LEDGER_RANGE, slow_range)
            async with host.running(), trio.open_nursery() as nursery, outcome.guard():
                await host.subscribe(ledger_topic(net.network_id), sync.on_ledger_gossip)
                nursery.start_soon(sync.run)
                manifest = tmp_path / "network.manifest"
                command = replica_command(replica_dir, manifest, (host.addrs()[0],), batch=40)

                # First run: killed once part of the chain is stored.
                first = await trio.lowlevel.open_process(
                    command, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL
                )
                with trio.fail_after(60):
                    while _progress(replica_db, validator.public_key) < 400:
                        await trio.sleep(0.02)
                first.send_signal(signal.SIGKILL)
                await first.wait()
                killed_at = _progress(replica_db, validator.public_key)
                assert 400 <= killed_at < TOTAL, killed_at
                with LedgerStore(replica_db) as partial:
                    # What was stored verifies; the only complaint is the entries still missing
                    # below the validator's signed head, which the replica kept.
                    # (if a signed head was heard before the kill).
                    problems = partial.verify_all(net.network_id)
                    assert [(p.code, p.seq) for p in problems] in ([], [("truncated", TOTAL - 1)])
                    assert all(f"ends at seq {killed_at - 1}" in p.message for p in problems)
                requests.clear()

                # Second run: resumes from the stored head, not from the start.
                second = await trio.lowlevel.open_process(
                    command, cwd=REPO, env=child_env(), stdout=subprocess.PIPE
                )
                assert second.stdout is not None
                ready = await second.stdout.receive_some(4096)
                assert json.loads(ready.splitlines()[0])["peer_id"].startswith("12D3KooW")
                with trio.fail_after(90):
                    while _progress(replica_db, validator.public_key) < TOTAL:
                        await trio.sleep(0.05)
                second.send_signal(signal.SIGTERM)
                with trio.fail_after(20):
                    await second.wait()
                assert requests and min(requests) >= killed_at
                nursery.cancel_scope.cancel()

    run_checked(main)
    with LedgerStore(server_db) as original, LedgerStore(replica_db) as copy:
        assert copy.verify_all(net.network_id) == []
        key = validator.public_key
        assert copy.entries(key, 0, 10_000) == original.entries(key, 0, 10_000)
