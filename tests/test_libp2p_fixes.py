"""The py-libp2p mends in ``protocol.libp2p_fixes``: the work they remove is gone, nothing else is.

Real hosts on 127.0.0.1; the library's own functions are counted, not replaced.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from flopnet.protocol.envelope import open_envelope, seal
from flopnet.protocol.host import P2PHost, StreamLimits
from flopnet.protocol.identity import Identity
from flopnet.protocol.libp2p_fixes import consume_changed_records, reuse_own_record
from flopnet.protocol.messages import Refusal

SENDER = Identity(b"\x41" * 32)
RECEIVER = Identity(b"\x42" * 32)
TOPIC = "fixes-test"
MESSAGES = 120


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rpc:
    """The two members of a pubsub RPC that the record wrapper reads."""

    def __init__(self, record: bytes | None) -> None:
        self.senderRecord = record or b""
        self._has = record is not None

    def HasField(self, name: str) -> bool:  # protobuf's spelling
        return name == "senderRecord" and self._has


class Host:
    """Stands for a libp2p host: only its identity (as a weak dictionary key) is used."""


def test_only_new_changed_or_stale_records_are_consumed() -> None:
    calls: list[bytes] = []
    verdicts = {b"good-1": True, b"good-2": True, b"forged": False}

    def consume(rpc: Any, _host: Any, _peer: Any) -> bool:
        calls.append(rpc.senderRecord)
        return verdicts[rpc.senderRecord]

    clock = Clock()
    once = consume_changed_records(consume, clock)
    host, other_host = Host(), Host()
    assert once(Rpc(None), host, "a") and calls == []  # nothing to consume
    assert once(Rpc(b"good-1"), host, "a") and once(Rpc(b"good-1"), host, "a")
    assert calls == [b"good-1"]  # the repeat is answered from memory
    assert once(Rpc(b"good-1"), host, "b") and once(Rpc(b"good-1"), other_host, "a")
    assert calls == [b"good-1"] * 3  # another peer, another host: consumed
    assert once(Rpc(b"good-2"), host, "a") and calls[-1] == b"good-2"  # a changed record
    assert not once(Rpc(b"forged"), host, "a") and not once(Rpc(b"forged"), host, "a")
    assert calls[-2:] == [b"forged", b"forged"]  # a rejected record is never remembered
    before = len(calls)
    assert once(Rpc(b"good-2"), host, "a") and len(calls) == before
    clock.now += 601  # past the peer-record TTL: consumed again, refreshing address TTLs
    assert once(Rpc(b"good-2"), host, "a") and len(calls) == before + 1


def test_own_record_is_rebuilt_only_after_its_ttl() -> None:
    builds: list[object] = []

    def build(host: Any) -> tuple[bytes, bool]:
        builds.append(host)
        return f"record-{len(builds)}".encode(), True

    clock = Clock()
    cached = reuse_own_record(build, clock)
    host = Host()
    assert cached(host) == (b"record-1", True)
    assert cached(host) == (b"record-1", False) and len(builds) == 1
    clock.now += 11
    assert cached(host) == (b"record-2", True)


async def _publish_to(receiver: P2PHost, sender: P2PHost, got: list[bytes]) -> None:
    async def collect(_peer: str, data: bytes) -> None:
        got.append(data)

    async def ignore(_peer: str, _data: bytes) -> None:
        pass  # the sender hears its own messages too

    await receiver.subscribe(TOPIC, collect)
    await sender.subscribe(TOPIC, ignore)
    await sender.connect(receiver.addrs()[0])
    with trio.fail_after(20):
        while receiver.topic_peers(TOPIC) < 1 or sender.topic_peers(TOPIC) < 1:
            await trio.sleep(0.05)
    await trio.sleep(1.5)  # a heartbeat grafts the mesh
    for k in range(MESSAGES):
        # Every flopnet topic carries envelopes signed by their author; the host checks that.
        await sender.publish(
            TOPIC, seal(Refusal(version=1, code=f"m{k}", reason=""), sender.identity, TOPIC)
        )
        await trio.sleep(0.002)
    with trio.fail_after(20):
        while len(got) < MESSAGES:
            await trio.sleep(0.05)


@pytest.mark.timeout(120)
def test_gossip_sends_and_receives_without_per_message_record_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """120 messages: the receiver parses the sender's record a few times, not 240 times."""
    from libp2p.pubsub import utils

    parsed: list[int] = []
    consume_envelope = utils.consume_envelope

    def counted(*args: Any, **kwargs: Any) -> Any:
        parsed.append(1)
        return consume_envelope(*args, **kwargs)

    monkeypatch.setattr(utils, "consume_envelope", counted)

    async def main() -> None:
        got: list[bytes] = []
        async with P2PHost(RECEIVER).running() as receiver, P2PHost(SENDER).running() as sender:
            address_lookups: list[int] = []
            libp2p_host = sender._host
            get_addrs = libp2p_host.get_addrs

            def counted_addrs() -> Any:
                address_lookups.append(1)
                return get_addrs()

            libp2p_host.get_addrs = counted_addrs
            await _publish_to(receiver, sender, got)
            # Every message arrived, each RPC carried the sender's record, and the record
            # reached the receiver's peerstore; yet it was parsed a handful of times.
            codes = [open_envelope(g, TOPIC).expect(Refusal).code for g in got]
            assert sorted(codes) == sorted(f"m{k}" for k in range(MESSAGES))
            from libp2p.peer.id import ID

            store = receiver._host.get_peerstore()
            assert store.get_peer_record(ID.from_base58(sender.peer_id)) is not None
            assert 1 <= len(parsed) <= 6, len(parsed)
            assert len(address_lookups) <= 6, len(address_lookups)

    trio.run(main)


@pytest.mark.timeout(120)
def test_yamux_credits_windows_in_batches_and_big_payloads_still_flow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    updates: list[int] = []
    send_window_update = YamuxStream.send_window_update

    async def counted(self: Any, increment: int, skip_lock: bool = False) -> None:
        updates.append(increment)
        await send_window_update(self, increment, skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counted)
    big = StreamLimits(max_request=4 * 2**20, max_response=64, timeout=30.0)

    async def echo_size(_peer: str, data: bytes) -> bytes:
        return str(len(data)).encode()

    async def main() -> None:
        got: list[bytes] = []
        receiver_host = P2PHost(RECEIVER)
        receiver_host.handle("/fixes-test/big/1.0.0", echo_size, big)
        async with receiver_host.running() as receiver, P2PHost(SENDER).running() as sender:
            await _publish_to(receiver, sender, got)
            # 120 small gossip RPCs on one stream used to draw ~120 window updates.
            assert len(updates) <= 10, len(updates)
            # A payload 12 times the initial 256 KiB window: the writer must be credited
            # several times on the way, or it would wait out its 5-s window deadline.
            updates.clear()
            payload = bytes(range(256)) * (3 * 2**20 // 256)
            with trio.fail_after(20):
                reply = await sender.request(
                    receiver.peer_id, "/fixes-test/big/1.0.0", payload, big
                )
            assert reply == str(len(payload)).encode()
            assert len(updates) >= 2 and sum(updates) >= len(payload) - 256 * 1024

    trio.run(main)


@pytest.mark.timeout(60)
def test_connect_replaces_a_closed_connection_the_swarm_still_lists() -> None:
    """py-libp2p's connect() is a no-op while any connection is listed, even a closed one."""
    limits = StreamLimits(max_request=64, max_response=64, timeout=5.0)

    async def pong(_peer: str, _data: bytes) -> bytes:
        return b"pong"

    async def main() -> None:
        server_host = P2PHost(RECEIVER)
        server_host.handle("/fixes-test/ping/1.0.0", pong, limits)
        async with server_host.running() as server, P2PHost(SENDER).running() as client:
            await client.connect(server.addrs()[0])
            assert server.peer_id in client.connected_peers()
            from libp2p.peer.id import ID

            # A connection that is closed but still registered, as a health-check abort
            # leaves it: its muxer is closed and the swarm has not removed it yet.
            network = client._host.get_network()
            (stale,) = network.connections[ID.from_base58(server.peer_id)]
            await stale.muxed_conn.close()
            await trio.sleep(0.3)  # the swarm's own clean-up runs first
            network.connections[ID.from_base58(server.peer_id)] = [stale]
            assert server.peer_id not in client.connected_peers()
            await client.connect(server.addrs()[0])
            reply = await client.request(server.peer_id, "/fixes-test/ping/1.0.0", b"ping", limits)
            assert reply == b"pong" and server.peer_id in client.connected_peers()

    trio.run(main)
