"""Ledger replication: the pure sync planner, and real py-libp2p hosts on 127.0.0.1 (two and three
nodes, a node that joins late, a validator that equivocates, range serving and profiles)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from conftest import wait_for
from test_ledger import ALICE, BOB, NET, T0, credit

from flopnet.ledger.chain import GENESIS_PREV, make_entry
from flopnet.ledger.store import LedgerStore
from flopnet.ledger.sync import Fetch, SyncPlanner
from flopnet.node.ledger_sync import LedgerSync
from flopnet.protocol.catalog import (
    LEDGER_CHECKPOINT,
    LEDGER_RANGE,
    PROFILE,
    ledger_topic,
)
from flopnet.protocol.envelope import message_id, open_envelope, seal
from flopnet.protocol.errors import MalformedMessage
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import (
    ContributorProfile,
    LedgerEntry,
    LedgerHead,
    LedgerRange,
    LedgerRangeRequest,
    Refusal,
)

V1 = Identity(b"\x41" * 32)
V2 = Identity(b"\x42" * 32)
REPLICA = Identity(b"\x43" * 32)
LATE = Identity(b"\x44" * 32)
VALIDATORS = {V1.public_key, V2.public_key}


class Outcome:
    """Whether the parts of a trio test body ran to their end.

    ``P2PHost.running()`` swallows exceptions raised in its body (one of py-libp2p's background
    services does), so ``trio.run`` would return normally after a failed assertion. Each body
    inside a running host is entered with ``async with ..., outcome.guard(name):`` and
    :func:`run_checked` re-raises what a guard caught, or fails if a guard was left early.
    """

    def __init__(self) -> None:
        self.entered: set[str] = set()
        self.completed: set[str] = set()
        self.error: BaseException | None = None

    @asynccontextmanager
    async def guard(self, name: str = "body") -> AsyncIterator[None]:
        self.entered.add(name)
        try:
            yield
        except BaseException as exc:
            self.error = self.error or exc
            raise
        self.completed.add(name)


def run_checked(main: Callable[[Outcome], Awaitable[None]]) -> None:
    """``trio.run(main)``, failing if a guarded body raised or did not reach its end."""
    outcome = Outcome()
    trio.run(main, outcome)
    if outcome.error is not None:
        raise outcome.error
    assert outcome.entered, "no guarded body ran"
    assert outcome.completed == outcome.entered, (
        f"left early: {outcome.entered - outcome.completed}"
    )


# ---------------------------------------------------------------------------------------------
# The planner (pure)

K1, K2 = V1.public_key, V2.public_key


def test_planner_fetches_from_the_peer_that_has_more() -> None:
    planner = SyncPlanner([K1, K2], batch=100, probe_interval=30.0)
    planner.heard(K1, 250, "p-validator")
    first = planner.plan({K1: 9}, ["p-other", "p-validator"], now=0.0)
    assert Fetch(K1, "p-validator", 10, 100) in first
    # One fetch per chain in flight: nothing new for K1 until it is done.
    assert all(f.signer != K1 for f in planner.plan({K1: 9}, ["p-validator"], now=0.1))
    planner.done(Fetch(K1, "p-validator", 10, 100), 0.2, peer_head=250, ok=True)
    assert Fetch(K1, "p-validator", 110, 100) in planner.plan({K1: 109}, ["p-validator"], 0.3)


def test_planner_probes_peers_for_chains_nobody_announced() -> None:
    planner = SyncPlanner(
        [K1], batch=50, probe_interval=30.0, catch_up_interval=1.0, join_from_checkpoint=False
    )
    (probe,) = planner.plan({}, ["b", "a"], now=0.0)
    assert probe == Fetch(K1, "a", 0, 50)  # never asked: probe, lowest id first
    planner.done(probe, 0.1, peer_head=-1, ok=True)
    (second,) = planner.plan({}, ["b", "a"], now=0.2)
    assert second.peer == "b"
    planner.done(second, 0.3, peer_head=-1, ok=True)
    assert planner.plan({}, ["a", "b"], now=5.0) == []  # both asked lately, nothing heard
    assert planner.plan({}, ["a", "b"], now=31.0)[0].peer == "a"  # anti-entropy round


def test_planner_catches_up_through_a_relay_when_the_validator_is_not_connected() -> None:
    planner = SyncPlanner(
        [K1], batch=10, catch_up_interval=1.0, probe_interval=60.0, join_from_checkpoint=False
    )
    planner.heard(K1, 40, "validator")  # gossip relayed to us; the author is not connected
    (probe,) = planner.plan({K1: -1}, ["relay"], now=0.0)
    assert probe == Fetch(K1, "relay", 0, 10)
    planner.done(probe, 0.1, peer_head=-1, ok=True)  # the relay has nothing yet
    assert planner.plan({K1: -1}, ["relay"], now=0.5) == []
    (again,) = planner.plan({K1: -1}, ["relay"], now=1.2)  # behind: asked again soon
    assert again.peer == "relay"
    assert planner.behind({K1: -1}) == {K1: (-1, 40)}


def test_planner_backs_off_failing_peers_and_forgets_them() -> None:
    planner = SyncPlanner([K1], batch=10, retry_after=1.0, max_backoff=4.0)
    planner.heard(K1, 100, "bad")
    (f,) = planner.plan({K1: 0}, ["bad"], now=0.0)
    planner.done(f, 0.0, peer_head=None, ok=False)
    assert planner.plan({K1: 0}, ["bad"], now=0.5) == []
    (f,) = planner.plan({K1: 0}, ["bad"], now=1.0)
    planner.done(f, 1.0, peer_head=None, ok=False)
    assert planner.plan({K1: 0}, ["bad"], now=2.5) == []  # doubled: 2 s
    assert planner.plan({K1: 0}, ["bad", "good"], now=2.5)[0].peer == "good"
    planner.forget_peer("bad")
    assert planner.in_flight()[0].peer == "good"


def test_planner_fetches_the_entry_a_conflicting_head_names() -> None:
    planner = SyncPlanner([K1, K2], own=K2, batch=10)
    planner.conflicting_head(K1, 7, "v1")
    assert planner.plan({K1: 20}, ["v1"], now=0.0) == [Fetch(K1, "v1", 7, 1)]
    planner.heard(K2, 50, "someone")  # our own chain is never fetched
    assert all(f.signer != K2 for f in planner.plan({K2: 0}, ["someone"], now=100.0))


# ---------------------------------------------------------------------------------------------
# Real hosts


def append(store: LedgerStore, validator: Identity, count: int, start: int = 0) -> list[bytes]:
    out = []
    for i in range(start, start + count):
        who = ALICE if i % 3 else BOB
        _, _, data = store.append_local(validator, NET, "credit", credit(who, i), now=T0 + i)
        out.append(data)
    return out


class Node:
    """One host with a store and a LedgerSync, as the daemon wires them."""

    def __init__(self, identity: Identity, path: Path, **kwargs: object) -> None:
        self.identity = identity
        self.host = P2PHost(identity, network_id=NET)
        self.store = LedgerStore(path)
        self.stored: list[bytes] = []
        kwargs.setdefault("checkpoint_interval", 0.0)  # checkpoints only where a test asks
        self.sync = LedgerSync(
            self.host,
            self.store,
            identity,
            NET,
            VALIDATORS,
            on_entry=lambda v: self.stored.append(v.hash),
            **kwargs,  # type: ignore[arg-type]
        )
        self.host.serve(LEDGER_RANGE, self.sync.handle_range)
        self.host.serve(LEDGER_CHECKPOINT, self.sync.handle_checkpoint)
        self.host.serve(PROFILE, self.sync.handle_profile)

    async def start(self, nursery: trio.Nursery) -> None:
        await self.host.subscribe(ledger_topic(NET), self.sync.on_ledger_gossip)
        nursery.start_soon(self.sync.run)

    def same_chains(self, other: Node) -> bool:
        return all(
            self.store.entries(v, 0, 10_000) == other.store.entries(v, 0, 10_000)
            for v in VALIDATORS
        )


@pytest.mark.timeout(120)
def test_two_nodes_replicate_backlog_and_live_entries(tmp_path: Path) -> None:
    async def main(outcome: Outcome) -> None:
        v1 = Node(V1, tmp_path / "v1.db", head_interval=0.5, batch=100)
        replica = Node(REPLICA, tmp_path / "r.db", batch=100)
        backlog = append(v1.store, V1, 350)  # written before the replica exists
        async with (
            v1.host.running(),
            replica.host.running(),
            trio.open_nursery() as nursery,
            outcome.guard(),
        ):
            await replica.host.connect(v1.host.addrs()[0])
            await v1.start(nursery)
            await replica.start(nursery)
            await wait_for(lambda: replica.store.head(K1) == v1.store.head(K1))
            assert replica.sync.stats.fetched == 350
            assert replica.stored[:350] == [message_id(d) for d in backlog]

            # Live entries travel by gossip (and by range when gossip drops them).
            await wait_for(lambda: replica.host.topic_peers(ledger_topic(NET)) > 0)
            for i in range(350, 380):
                _, _, data = v1.store.append_local(V1, NET, "credit", credit(ALICE, i), now=T0 + i)
                await v1.sync.publish_entry(data)
            await wait_for(lambda: replica.store.head(K1) == v1.store.head(K1))
            assert replica.same_chains(v1)
            assert replica.store.verify_all(NET) == []
            # Heads are heard (the validator gossips its own every head_interval) and kept.
            await wait_for(lambda: replica.store.signed_head(K1) is not None)
            snapshot = replica.sync.snapshot()
            assert snapshot["behind"] == {} and snapshot["equivocation_evidence"] == 0

            # A validator that signs a second entry for a seq it already used: equivocation,
            # kept by the replica as evidence; the stored chain is unchanged.
            prev = v1.store.entries(K1, 99, 1)[0]
            fork = make_entry(V1, NET, 100, message_id(prev), "credit", credit(BOB, 999), T0)
            await v1.host.publish(ledger_topic(NET), fork)
            await wait_for(lambda: len(replica.store.equivocations()) == 1)
            (evidence,) = replica.store.equivocations()
            assert evidence.seq == 100 and evidence.envelope == fork
            assert replica.same_chains(v1)
            assert [p.code for p in replica.store.verify_all(NET)] == ["equivocation"]
            nursery.cancel_scope.cancel()

    run_checked(main)


@pytest.mark.timeout(120)
def test_three_nodes_in_a_line_and_a_late_joiner(tmp_path: Path) -> None:
    # v1 -- v2 -- replica; the replica never talks to v1, and a late joiner talks to the
    # replica only: every chain reaches everyone through the nodes in between.
    async def main(outcome: Outcome) -> None:
        v1 = Node(V1, tmp_path / "v1.db", head_interval=0.5, batch=64)
        v2 = Node(V2, tmp_path / "v2.db", head_interval=0.5, batch=64)
        replica = Node(REPLICA, tmp_path / "r.db", batch=64)
        append(v1.store, V1, 200)
        append(v2.store, V2, 120)
        async with (
            v1.host.running(),
            v2.host.running(),
            replica.host.running(),
            trio.open_nursery() as nursery,
            outcome.guard(),
        ):
            await v2.host.connect(v1.host.addrs()[0])
            await replica.host.connect(v2.host.addrs()[0])
            for node in (v1, v2, replica):
                await node.start(nursery)
            await wait_for(lambda: replica.same_chains(v1) and v2.same_chains(v1), 60)
            assert replica.same_chains(v2)

            # More entries while everyone is up: v1's reach the replica through v2.
            for i in range(200, 230):
                _, _, data = v1.store.append_local(V1, NET, "credit", credit(ALICE, i), now=T0 + i)
                await v1.sync.publish_entry(data)
            await wait_for(lambda: replica.store.head(K1) == v1.store.head(K1), 60)

            late = Node(LATE, tmp_path / "late.db", batch=64)
            async with late.host.running(), outcome.guard("late joiner"):
                await late.host.connect(replica.host.addrs()[0])
                await late.start(nursery)
                await wait_for(lambda: late.same_chains(v1) and late.same_chains(v2), 60)
                assert late.store.verify_all(NET) == []
                assert replica.sync.stats.entries_served >= 350
            nursery.cancel_scope.cancel()

    run_checked(main)


@pytest.mark.timeout(60)
def test_range_serving_and_profiles(tmp_path: Path) -> None:
    async def main(outcome: Outcome) -> None:
        v1 = Node(V1, tmp_path / "v1.db")
        client = Node(ALICE, tmp_path / "c.db")
        append(v1.store, V1, 30)
        # Big bodies: a range is cut to its envelope cap, never refused.
        big = credit(ALICE, 99)
        big = type(big)(**{**vars(big), "reasons": tuple("r" * 1000 for _ in range(60))})
        for i in range(80):
            v1.store.append_local(V1, NET, "credit", big, now=T0 + 100 + i)
        async with v1.host.running(), client.host.running(), outcome.guard():
            await client.host.connect(v1.host.addrs()[0])

            async def ask(signer: bytes, from_seq: int, limit: int) -> LedgerRange:
                request = seal(LedgerRangeRequest(1, signer, from_seq, limit), ALICE, NET)
                reply = await client.host.request(
                    v1.host.peer_id, LEDGER_RANGE.protocol_id, request, LEDGER_RANGE.limits
                )
                return open_envelope(reply, NET, expected=LedgerRange).expect(LedgerRange)

            window = await ask(K1, 10, 5)
            assert [open_envelope(e, NET).expect(LedgerEntry).seq for e in window.entries] == [
                10,
                11,
                12,
                13,
                14,
            ]
            assert window.head_seq == 109
            cut = await ask(K1, 30, 2048)
            assert 0 < len(cut.entries) < 80  # ~62 KiB each: cut to fit 4 MiB
            assert (await ask(K2, 0, 10)).head_seq == -1  # a chain it does not hold
            assert (await ask(ALICE.public_key, 0, 10)).entries == ()  # not a validator

            async def send_profile(who: Identity, name: str, at: float) -> object:
                data = seal(ContributorProfile(1, name, "team-a", at), who, NET)
                reply = await client.host.request(
                    v1.host.peer_id, PROFILE.protocol_id, data, PROFILE.limits
                )
                return open_envelope(reply, NET).message

            entry = await send_profile(ALICE, "alice", 10.0)
            assert isinstance(entry, LedgerEntry) and entry.kind == "profile"
            refusal = await send_profile(ALICE, "alice2", 20.0)
            assert isinstance(refusal, Refusal) and refusal.code == "too_frequent"
            stale = await send_profile(ALICE, "older", 5.0)
            assert isinstance(stale, Refusal) and stale.code == "stale_profile"
            assert v1.store.verify_all(NET) == []

    run_checked(main)


def test_gossip_from_a_non_validator_is_charged(tmp_path: Path) -> None:
    async def main() -> None:
        node = Node(REPLICA, tmp_path / "r.db")
        forged = make_entry(ALICE, NET, 0, GENESIS_PREV, "credit", credit(ALICE, 0), T0)
        with pytest.raises(MalformedMessage, match="not a validator"):
            await node.sync.on_ledger_gossip("x", forged)
        wrong_type = seal(ContributorProfile(1, "a", "", 1.0), V1, NET)
        with pytest.raises(MalformedMessage, match="unexpected"):
            await node.sync.on_ledger_gossip("x", wrong_type)
        head = seal(LedgerHead(1, 5, bytes(32), T0), V1, NET)
        await node.sync.on_ledger_gossip("v1", head)
        assert node.store.signed_head(K1) == (5, bytes(32))
        assert node.sync.planner.behind(node.sync.local_heads()) == {K1: (-1, 5)}

        # A validator never takes entries of its own chain from others: only it appends.
        v1 = Node(V1, tmp_path / "v1.db")
        theirs = make_entry(V1, NET, 0, GENESIS_PREV, "credit", credit(BOB, 1), T0)
        await v1.sync.on_ledger_gossip("elsewhere", theirs)
        assert v1.store.head(K1) is None
        await node.sync.on_ledger_gossip("v1", theirs)  # any other node does
        assert node.store.head(K1) == (0, message_id(theirs))

    trio.run(main)


@pytest.mark.timeout(60)
def test_sync_survives_peers_that_do_not_serve_ranges(tmp_path: Path) -> None:
    # A relay, a worker or a broken peer: every range request to it fails. The sync loop must
    # back off and keep running, never take the node down.
    async def main(outcome: Outcome) -> None:
        node = Node(REPLICA, tmp_path / "r.db")
        bare = P2PHost(LATE)  # serves no flopnet protocol at all
        async with (
            node.host.running(),
            bare.running(),
            trio.open_nursery() as nursery,
            outcome.guard(),
        ):
            await node.host.connect(bare.addrs()[0])
            await node.start(nursery)
            node.sync.planner.heard(K1, 10, bare.peer_id)  # pretend it announced a head
            await wait_for(lambda: node.sync.stats.fetch_failures >= 2, 20)
            await trio.sleep(0.5)
            # A peer that lacks a protocol is still a peer: never disconnected, never charged
            # (it used to be cut off at every failed request, and again at every probe).
            assert bare.peer_id in node.host.connected_peers()
            assert node.host.peer_id in bare.connected_peers()
            assert node.host.guard.snapshot(time.time()) == []
            # Still up: it serves a range, and its sync loop still plans fetches.
            append(node.store, V2, 3)  # (a replica holding V2's chain, stored directly)
            request = seal(LedgerRangeRequest(1, K2, 0, 10), LATE, NET)
            reply = await bare.request(
                node.host.peer_id, LEDGER_RANGE.protocol_id, request, LEDGER_RANGE.limits
            )
            assert len(open_envelope(reply, NET).expect(LedgerRange).entries) == 3
            failures = node.sync.stats.fetch_failures
            node.sync.planner.forget_peer(bare.peer_id)  # its backoff forgotten: asked again
            node.sync.planner.heard(K1, 10, bare.peer_id)
            await wait_for(lambda: node.sync.stats.fetch_failures > failures, 20)
            nursery.cancel_scope.cancel()

    run_checked(main)
