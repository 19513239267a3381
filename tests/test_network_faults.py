"""Real py-libp2p hosts on 127.0.0.1: bad input gets a clear error and the node keeps serving."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
import trio

from flopnet.node.config import NetworkParams, NodeConfig
from flopnet.node.model.tokenizer import ByteTokenizer
from flopnet.node.publisher.publisher import Publisher
from flopnet.node.tasks import builtin_tasks
from flopnet.protocol.catalog import CLAIM
from flopnet.protocol.envelope import Opened, open_envelope, seal
from flopnet.protocol.errors import MalformedMessage, PeerError, ProtocolTimeout
from flopnet.protocol.guard import PeerGuard
from flopnet.protocol.host import P2PHost, StreamLimits, encode_frame
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import Claim, Lease, Refusal

PUBLISHER = Identity(b"\x11" * 32)
WORKER = Identity(b"\x22" * 32)
MALLORY = Identity(b"\x33" * 32)


def make_publisher(host: P2PHost, tmp_path: Path) -> Publisher:
    net = NetworkParams(
        network_id="faults",
        publishers=(PUBLISHER.public_key.hex(),),
        validators=(PUBLISHER.public_key.hex(),),
    )
    config = NodeConfig(roles=("publisher",), data_dir=tmp_path, network=net, tasks=3)
    return Publisher(config, PUBLISHER, host, ByteTokenizer(), builtin_tasks(3))


def claim_bytes(identity: Identity, task_id: str, claimed_at: float | None = None) -> bytes:
    record = Claim(
        version=1,
        task_id=task_id,
        nonce=b"\0" * 16,
        claimed_at=time.time() if claimed_at is None else claimed_at,
    )
    return seal(record, identity, "faults")


def claim(identity: Identity, task_id: str) -> Opened:
    """A claim as the host hands it to the publisher: opened, signed by the stream's peer."""
    return open_envelope(claim_bytes(identity, task_id), "faults", expected=Claim)


@pytest.mark.timeout(120)
def test_publisher_survives_hostile_claims(tmp_path: Path) -> None:
    async def main() -> None:
        server = P2PHost(PUBLISHER, network_id="faults")
        publisher = make_publisher(server, tmp_path)
        server.serve(CLAIM, publisher.handle_claim)
        client = P2PHost(WORKER)
        async with server.running() as srv, client.running() as cli:
            await cli.connect(srv.addrs()[0])
            task_id = next(iter(publisher.tasks))

            # Garbage bytes: the publisher answers with a refusal that says why.
            reply = await cli.request(srv.peer_id, CLAIM.protocol_id, b"\xc1garbage", CLAIM.limits)
            refusal = open_envelope(reply, "faults").expect(Refusal)
            assert refusal.code == "malformed" and "msgpack" in refusal.reason

            # A claim signed by someone other than the stream's peer.
            forged = claim_bytes(MALLORY, task_id)
            reply = await cli.request(srv.peer_id, CLAIM.protocol_id, forged, CLAIM.limits)
            assert open_envelope(reply, "faults").expect(Refusal).code == "wrong_signer"

            # A replayed, stale claim.
            stale = claim_bytes(WORKER, task_id, claimed_at=1.0)
            reply = await cli.request(srv.peer_id, CLAIM.protocol_id, stale, CLAIM.limits)
            assert open_envelope(reply, "faults").expect(Refusal).code == "stale_claim"

            # An oversized frame: the server resets the stream rather than buffering it.
            big = StreamLimits(max_request=1 << 20, max_response=1 << 16, timeout=10)
            with pytest.raises(PeerError):
                await cli.request(srv.peer_id, CLAIM.protocol_id, b"x" * 100_000, big)

            # A peer that sends half a frame and goes silent hits the server's deadline, and
            # a client deadline turns a silent server into ProtocolTimeout.
            async def silent(peer: str, data: bytes) -> bytes:
                await trio.sleep(60)
                return b""

            server.handle("/flopnet/test-silent/1", silent, StreamLimits(100, 100, timeout=30))
            with pytest.raises(ProtocolTimeout):
                await cli.request(
                    srv.peer_id, "/flopnet/test-silent/1", b"hi", StreamLimits(100, 100, 0.5)
                )

            # After all that, an honest claim still gets a lease.
            reply = await cli.request(
                srv.peer_id, CLAIM.protocol_id, claim_bytes(WORKER, task_id), CLAIM.limits
            )
            lease = open_envelope(reply, "faults").expect(Lease)
            assert lease.worker == WORKER.public_key and lease.task_id == task_id
            assert lease.prompt_ids[0] == ByteTokenizer().bos_id
            assert publisher.stats.leases_issued == 1

    trio.run(main)


def test_frame_encoding_and_caps() -> None:
    assert encode_frame(b"") == b"\x00"
    assert encode_frame(b"a" * 300)[:2] == b"\xac\x02"
    with pytest.raises(MalformedMessage):
        open_envelope(encode_frame(b"junk"), "faults")


@pytest.mark.timeout(120)
def test_abusive_peer_is_banned_and_others_still_served(tmp_path: Path) -> None:
    async def main() -> None:
        guard = PeerGuard(ban_threshold=-60.0, ban_seconds=60.0)
        server = P2PHost(PUBLISHER, network_id="faults", guard=guard)
        publisher = make_publisher(server, tmp_path)
        server.serve(CLAIM, publisher.handle_claim)
        hostile, honest = P2PHost(MALLORY), P2PHost(WORKER)
        async with server.running() as srv, hostile.running() as bad, honest.running() as good:
            await bad.connect(srv.addrs()[0])
            await good.connect(srv.addrs()[0])
            task_id = next(iter(publisher.tasks))
            for _ in range(4):  # -20 each; the score decays back a little between them
                with contextlib.suppress(PeerError):  # the banning request is cut off
                    await bad.request(srv.peer_id, CLAIM.protocol_id, b"\xc1junk", CLAIM.limits)
                if guard.is_banned(bad.peer_id, time.time()):
                    break
            assert guard.is_banned(bad.peer_id, time.time())
            await trio.sleep(0.5)
            assert bad.peer_id not in srv.connected_peers()  # disconnected on the ban
            with pytest.raises((PeerError, ProtocolTimeout)):
                await bad.connect(srv.addrs()[0], timeout=3)
                await bad.request(srv.peer_id, CLAIM.protocol_id, b"again", CLAIM.limits)
            reply = await good.request(
                srv.peer_id, CLAIM.protocol_id, claim_bytes(WORKER, task_id), CLAIM.limits
            )
            assert open_envelope(reply, "faults").expect(Lease).worker == WORKER.public_key
            assert server.guard.snapshot(time.time())[0]["violations"]["malformed"] >= 3

    trio.run(main)


@pytest.mark.timeout(60)
def test_publisher_state_survives_a_restart(tmp_path: Path) -> None:
    from flopnet.node.publisher.store import PublisherStore

    async def main() -> None:
        host = P2PHost(PUBLISHER, network_id="faults")
        store = PublisherStore(tmp_path / "publisher.sqlite")
        first = make_publisher(host, tmp_path)
        first.store = store
        tasks = list(first.tasks.values())
        for task in tasks:
            await first.announce(task)
        granted = [
            await first.handle_claim(WORKER.peer_id, claim(WORKER, t.task_id)) for t in tasks[:1]
        ]
        lease = granted[0]
        assert isinstance(lease, Lease)
        first.settle(lease.lease_id, accepted=True)
        store.close()

        # A new process: the same task set, the state read back from disk.
        reopened = PublisherStore(tmp_path / "publisher.sqlite")
        config = NodeConfig(roles=("publisher",), data_dir=tmp_path, network=first.net, tasks=3)
        second = Publisher(config, PUBLISHER, host, ByteTokenizer(), builtin_tasks(3), reopened)
        assert second.book.counts() == {"open": 2, "leased": 0, "done": 1}
        assert second.log.head == 3 and second.log.next_seq() == 4
        again = await second.handle_claim(WORKER.peer_id, claim(WORKER, lease.task_id))
        assert isinstance(again, Refusal) and again.code == "task_done"
        reopened.close()

    trio.run(main)


@pytest.mark.timeout(60)
def test_malformed_gossip_frame_does_not_kill_the_node() -> None:
    """One undecodable pubsub RPC used to end the whole host; ours resets that stream."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    async def main() -> None:
        victim, attacker, bystander = P2PHost(PUBLISHER), P2PHost(MALLORY), P2PHost(WORKER)
        got: list[bytes] = []

        async def collect(sender: str, data: bytes) -> None:
            got.append(data)

        async with victim.running() as v, attacker.running() as a, bystander.running() as b:
            await a.connect(v.addrs()[0])
            await b.connect(v.addrs()[0])
            await v.subscribe("t", collect)
            await b.subscribe("t", collect)
            raw = await a._host.new_stream(ID.from_base58(v.peer_id), [TProtocol("/meshsub/1.1.0")])
            await raw.write(encode_frame(b"\xff\xff\xff\xff garbage"))
            await trio.sleep(1.0)
            # Still alive and serving: gossip from the bystander (an envelope it signed, as every
            # flopnet topic carries) arrives.
            still_here = seal(Refusal(version=1, code="ok", reason="still here"), WORKER, "t")
            for _ in range(50):
                await b.publish("t", still_here)
                await trio.sleep(0.1)
                if still_here in got:
                    break
            assert still_here in got
            violations = v.guard.snapshot(time.time())
            assert any(p["peer_id"] == a.peer_id for p in violations)

    trio.run(main)


@pytest.mark.timeout(60)
def test_an_error_inside_a_running_host_reaches_the_caller() -> None:
    """py-libp2p's services once turned a failure in the body into a clean exit (exit code 0)."""

    class Boom(Exception):
        pass

    async def main() -> None:
        async with P2PHost(Identity(b"\x77" * 32)).running():
            await trio.sleep(0.1)
            raise Boom("from the body")

    with pytest.raises(Boom):
        trio.run(main)

    async def cancelled_from_outside() -> bool:
        with trio.move_on_after(0.3) as scope:
            async with P2PHost(Identity(b"\x78" * 32)).running():
                await trio.sleep(30)
        return scope.cancelled_caught

    assert trio.run(cancelled_from_outside)
