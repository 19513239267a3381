"""NAT traversal on loopback: a Circuit Relay v2 reservation, relayed requests, a dial-back."""

from __future__ import annotations

import pytest
import trio

from flopnet.protocol.host import P2PHost, StreamLimits
from flopnet.protocol.identity import Identity

LIMITS = StreamLimits(max_request=1 << 16, max_response=1 << 16, timeout=10)


@pytest.mark.timeout(120)
def test_relayed_request_response_both_ways() -> None:
    async def main() -> None:
        relay = P2PHost(Identity(b"\x61" * 32), relay_hop=True)
        hidden = P2PHost(Identity(b"\x62" * 32))  # stands for a node behind NAT
        dialer = P2PHost(Identity(b"\x63" * 32))

        async def echo(peer: str, data: bytes) -> bytes:
            return b"echo:" + data + b" from " + peer.encode()[-6:]

        hidden.handle("/flopnet/test-echo/1", echo, LIMITS)
        dialer.handle("/flopnet/test-echo/1", echo, LIMITS)
        async with relay.running() as r, hidden.running() as h, dialer.running() as d:
            relayed = await h.reserve_relay(r.addrs()[0])
            assert relayed == f"{r.addrs()[0]}/p2p-circuit/p2p/{h.peer_id}"
            assert await d.connect(relayed) == h.peer_id
            reply = await d.request(h.peer_id, "/flopnet/test-echo/1", b"hello", LIMITS)
            assert reply == b"echo:hello from " + d.peer_id.encode()[-6:]
            back = await h.request(d.peer_id, "/flopnet/test-echo/1", b"back", LIMITS)
            assert back.startswith(b"echo:back")
            big = await d.request(h.peer_id, "/flopnet/test-echo/1", b"x" * 60_000, LIMITS)
            assert len(big) > 60_000

    trio.run(main)


@pytest.mark.timeout(120)
def test_reachability_dial_back() -> None:
    async def main() -> None:
        helper = P2PHost(Identity(b"\x64" * 32))
        node = P2PHost(Identity(b"\x65" * 32))
        async with helper.running() as hp, node.running() as n:
            await n.connect(hp.addrs()[0])
            listen = n.addrs()[0].split("/p2p/")[0]
            dead = "/ip4/127.0.0.1/tcp/1"  # nothing listens there
            reachable = await n.check_reachability(hp.peer_id, [listen, dead])
            assert reachable == [listen]
            # Addresses of other hosts are never dialed (no amplification through us).
            assert await n.check_reachability(hp.peer_id, ["/ip4/10.1.2.3/tcp/4001"]) == []

    trio.run(main)
