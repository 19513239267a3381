"""Costs on the sender: a claimer over the publisher's claim budget is told to slow down (unread)
and charged, an honest worker's pacer never goes over it, and an address that opens connections
faster than its budget is closed before the handshake it would make us pay for."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_network_faults import PUBLISHER, WORKER, claim_bytes, make_publisher

from flopnet.node.worker.pacing import ClaimPacer
from flopnet.protocol import host as host_module
from flopnet.protocol.catalog import CLAIM, CLAIM_BUDGET
from flopnet.protocol.envelope import open_envelope
from flopnet.protocol.guard import PeerGuard
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import Lease, Refusal
from flopnet.protocol.rpc import RequestBudget

MALLORY = Identity(b"\x44" * 32)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 3.0), min_size=1, max_size=300))
def test_a_paced_worker_never_meets_the_publishers_claim_budget(idles: list[float]) -> None:
    """Whatever the rhythm of its claim rounds, a worker that waits as its pacer says is never
    over the budget the publisher's guard enforces (the same token bucket, with headroom)."""
    pacer, guard = ClaimPacer(), PeerGuard()
    now = 1000.0
    for idle in idles:  # idle: the worker's own pause before it wants to claim again
        now += idle
        now += pacer.wait("publisher", now)
        pacer.sent("publisher", now)
        assert guard.allow(
            "worker",
            CLAIM.protocol_id,
            now,
            rate=CLAIM_BUDGET.rate_per_s,
            burst=CLAIM_BUDGET.burst,
        )


def test_the_pacer_allows_a_batch_at_once_then_the_budgets_rate() -> None:
    pacer = ClaimPacer(interval=0.0)
    now, sent = 0.0, []
    while now < 10.0:
        now += pacer.wait("p", now)
        pacer.sent("p", now)
        sent.append(now)
    burst = int(CLAIM_BUDGET.burst * pacer.headroom)
    assert sent[burst - 1] == 0.0  # a whole batch of claims goes at once
    rate = CLAIM_BUDGET.rate_per_s * pacer.headroom
    assert len(sent) <= burst + rate * 10 + 1  # then no faster than the rate, with headroom


@pytest.mark.timeout(120)
def test_a_claimer_over_the_budget_is_told_to_slow_down_then_banned(tmp_path: Path) -> None:
    async def main() -> None:
        guard = PeerGuard(ban_threshold=-20.0)
        server = P2PHost(PUBLISHER, network_id="faults", guard=guard)
        publisher = make_publisher(server, tmp_path)
        server.serve(CLAIM, publisher.handle_claim)
        hostile, honest = P2PHost(MALLORY), P2PHost(WORKER)
        async with server.running() as srv, hostile.running() as bad, honest.running() as good:
            await bad.connect(srv.addrs()[0])
            await good.connect(srv.addrs()[0])
            task_id = next(iter(publisher.tasks))
            codes: list[str] = []
            # Until banned: how many claims that takes depends on how fast they go out (the
            # bucket refills at 8/s meanwhile), so a busy machine only makes it take longer.
            for _ in range(int(CLAIM_BUDGET.burst) + 400):
                if guard.is_banned(bad.peer_id, time.time()):
                    break
                try:
                    reply = await bad.request(
                        srv.peer_id, CLAIM.protocol_id, claim_bytes(MALLORY, task_id), CLAIM.limits
                    )
                except Exception:
                    codes.append("cut off")
                    break
                opened = open_envelope(reply, "faults")
                codes.append(
                    opened.message.code if isinstance(opened.message, Refusal) else "lease"
                )
            # The burst is served (one lease, then the quota's refusals), then "slow down".
            assert codes.count("rate_limited") >= 1, codes
            assert codes.index("rate_limited") >= int(CLAIM_BUDGET.burst) - 1, codes
            assert guard.is_banned(bad.peer_id, time.time()), codes  # charged 2 points each
            # The honest worker on the same publisher is served throughout.
            other = list(publisher.tasks)[1]  # Mallory holds the first one's lease
            reply = await good.request(
                srv.peer_id, CLAIM.protocol_id, claim_bytes(WORKER, other), CLAIM.limits
            )
            assert open_envelope(reply, "faults").expect(Lease).worker == WORKER.public_key

    trio.run(main)


@pytest.mark.timeout(120)
def test_connections_over_an_addresss_budget_are_held_then_closed_before_the_handshake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ten raw connections at once from one address with a budget of four: the four get the
    listener's handshake; the others hear nothing (no handshake to make us pay for) and are
    closed once their tarpit time is up. Then a real peer from that address is served."""
    monkeypatch.setattr(host_module, "INBOUND_PER_ADDRESS", RequestBudget(2.0, 4.0))
    monkeypatch.setattr(host_module, "TARPIT_S", 1.5)

    async def main() -> None:
        server = P2PHost(PUBLISHER, network_id="faults")
        async with server.running() as srv:
            port = int(srv.addrs()[0].split("/tcp/")[1].split("/")[0])

            def flood() -> list[tuple[bytes, float]]:
                """What each connection's first read returns, and after how long."""
                sockets = [socket.create_connection(("127.0.0.1", port), 5) for _ in range(10)]
                started = time.monotonic()
                out = []
                for sock in sockets:
                    sock.settimeout(10.0)
                    try:
                        out.append((sock.recv(64), time.monotonic() - started))
                    except ConnectionResetError:
                        out.append((b"", time.monotonic() - started))
                    sock.close()
                return out

            reads = await trio.to_thread.run_sync(flood)
            answered = [r for r, _ in reads if r]
            held = [t for r, t in reads if not r]
            # The budget's burst gets the listener's multistream header; the rest nothing.
            assert len(answered) <= 5 and all(r.startswith(b"\x13/multistream") for r in answered)
            assert len(held) >= 5 and srv.inbound_refused >= 5, (reads, srv.inbound_refused)
            assert min(held) >= 1.0, held  # closed only after the tarpit time
            # The budget refills: a real peer from the same address connects and is served.
            await trio.sleep(2.0)
            client = P2PHost(WORKER)
            async with client.running() as good:
                await good.connect(srv.addrs()[0])
                assert srv.peer_id in good.connected_peers()

    trio.run(main)
