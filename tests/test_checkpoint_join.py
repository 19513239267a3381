"""Joining at a checkpoint over the network: the planner's joining phase (pure), validators that
checkpoint on their own, replicas that derive and keep each checkpoint's state and serve it, real
py-libp2p hosts on 127.0.0.1 joining in-process, a peer serving a forged state, and replica
processes joining with and without the history."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from conftest import wait_for, wait_until
from test_ledger import ALICE, BOB, NET, T0, credit
from test_ledger_sync import LATE, REPLICA, V1, V2, Node, Outcome, run_checked

from flopnet.ledger.checkpoint import JOIN_TAIL_S, CheckpointError, checkpoint_due
from flopnet.ledger.joining import (
    anchor,
    append_checkpoint,
    checkpoint_for_joiner,
    keep_checkpoint_state,
    state_at,
)
from flopnet.ledger.kinds import AuditBody, CheckpointBody
from flopnet.ledger.leaderboard import leaderboard
from flopnet.ledger.store import LedgerStore, peek_head
from flopnet.ledger.sync import Fetch, SyncPlanner
from flopnet.node.config import NetworkParams, create_network
from flopnet.node.replica import replica_command
from flopnet.protocol.catalog import LEDGER_CHECKPOINT
from flopnet.protocol.envelope import Opened
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import LedgerCheckpoint

REPO = Path(__file__).resolve().parent.parent
K1, K2 = V1.public_key, V2.public_key
HOUR = 3600.0
TOTALS = (
    "SELECT contributor, flop_formula, hi * 4294967296 + lo, accepted, rejected, tokens "
    "FROM credit_totals WHERE signer = ? ORDER BY 1, 2"
)


# ---------------------------------------------------------------------------------------------
# Pure decisions


def test_planner_joins_at_a_checkpoint_from_the_peer_that_holds_the_most() -> None:
    planner = SyncPlanner([K1], batch=10)
    planner.heard(K1, 500, "validator")
    (first,) = planner.plan({}, ["a-worker", "validator"], now=0.0)
    assert first == Fetch(K1, "validator", 0, 1, checkpoint=True)
    planner.done(first, 0.1, peer_head=500, ok=True, adopted=True)
    # Adopted at seq 400: ranges from 401 on, never from 0.
    assert planner.plan({K1: 400}, ["a-worker", "validator"], now=0.2) == [
        Fetch(K1, "validator", 401, 10)
    ]


def test_planner_falls_back_to_the_history_only_when_a_holder_has_no_checkpoint() -> None:
    planner = SyncPlanner([K1], batch=10, probe_interval=30.0)
    (ask,) = planner.plan({}, ["a", "b"], now=0.0)
    assert ask.checkpoint and ask.peer == "b"  # ties by id, highest first
    planner.done(ask, 0.1, peer_head=-1, ok=True)  # b holds nothing of the chain: no verdict
    (ask,) = planner.plan({}, ["a", "b"], now=0.2)
    assert ask == Fetch(K1, "a", 0, 1, checkpoint=True)
    planner.done(ask, 0.3, peer_head=-1, ok=True)
    assert planner.plan({}, ["a", "b"], now=1.0) == []  # nobody holds it yet: wait
    # b is asked again later, now holds the chain but no checkpoint old enough: its history.
    (again,) = planner.plan({}, ["a", "b"], now=31.0)
    assert again.checkpoint and again.peer == "b"
    planner.done(again, 31.1, peer_head=40, ok=True)
    (last,) = planner.plan({}, ["a", "b"], now=31.2)  # every peer is asked before giving up
    assert last == Fetch(K1, "a", 0, 1, checkpoint=True)
    planner.done(last, 31.3, peer_head=-1, ok=True)
    (history,) = planner.plan({}, ["a", "b"], now=31.4)
    assert history == Fetch(K1, "b", 0, 10)


def test_planner_ignores_a_peer_serving_bad_checkpoints_and_can_be_told_to_skip_them() -> None:
    planner = SyncPlanner([K1], batch=10, retry_after=1.0)
    (ask,) = planner.plan({}, ["liar", "honest"], now=0.0)
    assert ask.peer == "liar"
    planner.done(ask, 0.1, peer_head=None, ok=False, bad=True)
    (ask,) = planner.plan({}, ["liar", "honest"], now=0.2)
    assert ask == Fetch(K1, "honest", 0, 1, checkpoint=True)  # the liar does not end joining
    planner.done(ask, 0.3, peer_head=90, ok=True, adopted=True)
    assert planner.plan({K1: 50}, ["liar", "honest"], now=5.0)[0].from_seq == 51
    # A node that wants the whole history never asks for checkpoints.
    full = SyncPlanner([K1], batch=10, join_from_checkpoint=False)
    assert full.plan({}, ["honest"], now=0.0) == [Fetch(K1, "honest", 0, 10)]
    # A peer that does not serve checkpoints at all (a failed request) means the history.
    old = SyncPlanner([K1], batch=10)
    (ask,) = old.plan({}, ["old"], now=0.0)
    old.done(ask, 0.1, peer_head=None, ok=False)
    assert old.plan({}, ["old"], now=5.0) == [Fetch(K1, "old", 0, 10)]


def test_checkpoint_due() -> None:
    day = 86400.0
    assert checkpoint_due(T0 + day, day, T0, 5)
    assert not checkpoint_due(T0 + day - 1, day, T0, 5)  # not a day yet
    assert not checkpoint_due(T0 + 9 * day, day, T0, 0)  # nothing since the last one
    assert not checkpoint_due(T0 + 9 * day, 0.0, T0, 5)  # off
    assert not checkpoint_due(T0 + 9 * day, day, None, 0)  # an empty chain


# ---------------------------------------------------------------------------------------------
# A validator's chain over ten days, checkpointed by the validator itself


def grow(store: LedgerStore, validator: Identity, start: int, count: int) -> None:
    """Credits (and an audit every 20th) at one an hour from ``T0 + start`` hours."""
    for i in range(start, start + count):
        at = T0 + i * HOUR
        store.append_local(validator, NET, "credit", credit(ALICE if i % 3 else BOB, i), now=at)
        if i % 20 == 0:
            audit = AuditBody(ALICE.public_key, bytes(32), True, 1.0, 0, ("ok",))
            store.append_local(validator, NET, "audit", audit, now=at)


async def ten_days(node: Node) -> tuple[int, int]:
    """Fill ``node``'s own chain: two days, a checkpoint, eight more days, a second checkpoint
    (too young for a joiner); returns both checkpoints' seqs."""
    grow(node.store, node.identity, 0, 48)
    first = await node.sync.maybe_checkpoint(now=T0 + 48 * HOUR)
    assert first is not None and await node.sync.maybe_checkpoint(now=T0 + 49 * HOUR) is None
    grow(node.store, node.identity, 49, 200)
    second = await node.sync.maybe_checkpoint(now=T0 + 250 * HOUR)
    assert second is not None and node.sync.stats.checkpoints_made == 2
    return first, second


def test_state_from_kept_checkpoints_is_the_state_from_the_entries(tmp_path: Path) -> None:
    async def main() -> None:
        v1 = Node(V1, tmp_path / "v1.db", checkpoint_interval=86400.0)
        first, second = await ten_days(v1)
        for seq in (first - 1, first, second - 5, second):
            assert state_at(v1.store, K1, seq, from_kept=True) == state_at(v1.store, K1, seq)
        assert v1.store.verify_all(NET) == []
        # A joiner needing a week after its checkpoint gets the first one, not the fresh one.
        entry, _ = checkpoint_for_joiner(v1.store, K1, JOIN_TAIL_S) or (b"", b"")
        assert entry == v1.store.entries(K1, first, 1)[0]
        assert checkpoint_for_joiner(v1.store, K1, 0.0) is not None
        assert checkpoint_for_joiner(v1.store, K1, 30 * 86400.0) is None
        v1.store.close()

    trio.run(main)


def test_a_replica_keeps_true_checkpoints_and_flags_a_false_one(tmp_path: Path) -> None:
    with LedgerStore(tmp_path / "v.db") as validator, LedgerStore(tmp_path / "r.db") as replica:
        grow(validator, V1, 0, 30)
        seq, state = append_checkpoint(validator, V1, NET, now=T0 + 30 * HOUR)
        result = replica.ingest_range(validator.entries(K1, 0, 100), NET, {K1})
        assert result.error is None
        (entry,) = [e for e in result.stored if e.seq == seq]
        keep_checkpoint_state(replica, entry)
        assert checkpoint_for_joiner(replica, K1, 0.0) == (validator.entries(K1, seq, 1)[0], state)
        # The validator signs a state its own entries contradict (Alice's sums inflated).
        head = validator.head(K1)
        assert head is not None
        honest = state_at(validator, K1, head[0])
        rows = tuple(
            replace(r, flops=r.flops * 10) if r.contributor == ALICE.public_key else r
            for r in honest.credits
        )
        body: CheckpointBody = replace(honest, credits=rows).body()
        lie, _, _ = validator.append_local(V1, NET, "checkpoint", body, now=T0 + 31 * HOUR)
        result = replica.ingest_range(validator.entries(K1, lie, 1), NET, {K1})
        (stored,) = result.stored
        with pytest.raises(CheckpointError, match="another state than the one it signs"):
            keep_checkpoint_state(replica, stored)
        assert [p.code for p in replica.verify_all(NET)] == ["checkpoint"]


# ---------------------------------------------------------------------------------------------
# Real hosts


@pytest.mark.timeout(120)
def test_nodes_join_at_a_checkpoint_served_by_the_validator_and_by_replicas(
    tmp_path: Path,
) -> None:
    async def main(outcome: Outcome) -> None:
        v1 = Node(V1, tmp_path / "v1.db", checkpoint_interval=86400.0, head_interval=0.5)
        first, _ = await ten_days(v1)
        head = v1.store.head(K1)
        assert head is not None
        joiner = Node(REPLICA, tmp_path / "joiner.db")
        full = Node(LATE, tmp_path / "full.db", join_from_checkpoint=False)
        async with (
            v1.host.running(),
            joiner.host.running(),
            full.host.running(),
            trio.open_nursery() as nursery,
            outcome.guard(),
        ):
            for node in (joiner, full):
                await node.host.connect(v1.host.addrs()[0])
            for node in (v1, joiner, full):
                await node.start(nursery)
            await wait_for(lambda: joiner.store.head(K1) == head and full.store.head(K1) == head)

            # The joiner verified the week-old checkpoint and fetched only what follows it.
            assert joiner.sync.stats.checkpoints_adopted == 1
            assert anchor(joiner.store, K1) is not None
            assert anchor(joiner.store, K1)[0] == first  # type: ignore[index]
            assert joiner.sync.stats.fetched == head[0] - first
            assert full.sync.stats.fetched == head[0] + 1
            assert full.sync.stats.checkpoints_adopted == 0
            for node in (joiner, full):
                ours = node.store.connection.execute(TOTALS, (K1,)).fetchall()
                assert ours == v1.store.connection.execute(TOTALS, (K1,)).fetchall()
                assert [(r.contributor, r.flops) for r in leaderboard(node.store, now=T0)] == [
                    (r.contributor, r.flops) for r in leaderboard(v1.store, now=T0)
                ]
                assert node.store.verify_all(NET) == []
            # Both derived the state of each checkpoint they replicated, and keep it.
            assert joiner.sync.stats.checkpoints_kept == 1  # the second; the first was adopted
            assert full.sync.stats.checkpoints_kept == 2
            assert joiner.sync.stats.false_checkpoints == full.sync.stats.false_checkpoints == 0

            # A node that reaches only the joiner joins the same way: any node serves them.
            late = Node(Identity(b"\x45" * 32), tmp_path / "late.db")
            async with late.host.running(), outcome.guard("late"):
                await late.host.connect(joiner.host.addrs()[0])
                await late.start(nursery)
                await wait_for(lambda: late.store.head(K1) == head)
                assert late.sync.stats.checkpoints_adopted == 1
                assert joiner.sync.stats.checkpoints_served >= 1
                assert late.store.verify_all(NET) == []
            # V2 wrote nothing: nobody holds its chain, so nobody joins it (and nothing stalls).
            assert joiner.store.head(K2) is None
            nursery.cancel_scope.cancel()

    run_checked(main)


@pytest.mark.timeout(120)
def test_a_peer_serving_a_forged_state_is_charged_and_the_join_goes_on(tmp_path: Path) -> None:
    async def main(outcome: Outcome) -> None:
        v1 = Node(V1, tmp_path / "v1.db", checkpoint_interval=86400.0)
        await ten_days(v1)
        head = v1.store.head(K1)
        liar = Node(Identity(b"\x46" * 32), tmp_path / "liar.db")
        liar.store.ingest_range(v1.store.entries(K1, 0, 10_000), NET, {K1})

        async def forged(peer: str, opened: Opened) -> LedgerCheckpoint:
            honest = await v1.sync.handle_checkpoint(peer, opened)
            state = bytearray(honest.state)
            state[-1] ^= 1  # one audit counter changed: the signed SHA-256 no longer matches
            return LedgerCheckpoint(1, honest.signer, honest.entry, bytes(state), honest.head_seq)

        liar.host.serve(LEDGER_CHECKPOINT, forged)
        joiner = Node(REPLICA, tmp_path / "joiner.db")
        async with (
            v1.host.running(),
            liar.host.running(),
            joiner.host.running(),
            trio.open_nursery() as nursery,
            outcome.guard(),
        ):
            await joiner.host.connect(liar.host.addrs()[0])
            await joiner.start(nursery)
            await wait_for(lambda: joiner.host.guard.score(liar.host.peer_id, time.time()) < 0)
            assert joiner.store.head(K1) is None  # nothing adopted, no history fetched from it
            await joiner.host.connect(v1.host.addrs()[0])
            await wait_for(lambda: joiner.store.head(K1) == head)
            assert joiner.sync.stats.checkpoints_adopted == 1
            assert joiner.store.verify_all(NET) == []
            nursery.cancel_scope.cancel()

    run_checked(main)


# ---------------------------------------------------------------------------------------------
# Replica processes


@pytest.mark.timeout(180)
def test_replica_processes_join_with_and_without_the_history(tmp_path: Path) -> None:
    validator = Identity(b"\x61" * 32)
    founder = Identity(b"\x62" * 32)
    net = create_network(
        founder,
        "joinproc",
        NetworkParams(network_id="assigned", validators=(validator.public_key.hex(),)),
        tmp_path / "network.manifest",
    )
    key = validator.public_key
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    with LedgerStore(server_dir / "ledger.sqlite") as store:
        items = [("credit", credit(ALICE if i % 2 else BOB, i)) for i in range(600)]
        store.append_local_batch(validator, net.network_id, items[:300], now=T0)
        cut, _ = append_checkpoint(store, validator, net.network_id, now=T0 + 60.0)
        store.append_local_batch(validator, net.network_id, items[300:], now=T0 + 8 * 86400.0)
        total = store.head(key)
    assert total is not None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    manifest = tmp_path / "network.manifest"
    procs = []
    try:
        server = subprocess.Popen(
            replica_command(server_dir, manifest),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(server)
        assert server.stdout is not None
        addr = json.loads(server.stdout.readline())["addrs"][0]
        for name, full in (("joined", False), ("full", True)):
            command = replica_command(tmp_path / name, manifest, (addr,), full_history=full)
            procs.append(
                subprocess.Popen(
                    command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
            )
        assert wait_until(
            lambda: all(
                peek_head(tmp_path / n / "ledger.sqlite", key) == total[0]
                for n in ("joined", "full")
            ),
            120,
        ), [p.poll() for p in procs]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    with (
        LedgerStore(tmp_path / "joined" / "ledger.sqlite") as joined,
        LedgerStore(tmp_path / "full" / "ledger.sqlite") as full_copy,
        LedgerStore(server_dir / "ledger.sqlite") as original,
    ):
        assert anchor(joined, key) is not None and anchor(full_copy, key) is None
        assert len(joined.entries(key, 0, 10_000)) == total[0] - cut + 1
        assert full_copy.entries(key, 0, 10_000) == original.entries(key, 0, 10_000)
        for copy in (joined, full_copy):
            assert copy.verify_all(net.network_id) == []
            assert (
                copy.connection.execute(TOTALS, (key,)).fetchall()
                == original.connection.execute(TOTALS, (key,)).fetchall()
            )
