"""A thin adapter over a py-libp2p host: gossip topics and request/response streams with deadlines.

Settings follow what was measured on py-libp2p 0.8.1 (see ``docs/architecture.md``):

* TCP + Noise only (the library's default would also accept plaintext and SECIO) + Yamux.
* ``max_connections_per_peer=1`` removes a fixed 250 ms happy-eyeballs wait on every connect.
* GossipSub restricted to ``/meshsub/1.1.0`` (v1.2's IDONTWANT path stalls under load), with the
  library's per-topic spam limit (10 msg/s, applied to our own publishes too) lifted; our own
  decoders and rate limits guard the topics instead.
* Every stream operation runs under a deadline: a frozen peer otherwise hangs a stream forever.
* :mod:`protocol.libp2p_fixes` mends measured library defects (a node killed by one bad gossip
  frame, inbound slots never released, per-message peer-record and Yamux window-update work
  that cost most of a gossip node's CPU).

Library errors are mapped to :class:`PeerError` and :class:`ProtocolTimeout` here, at the boundary.
Request/response framing: an unsigned LEB128 varint length, then that many payload bytes; one
request and one response per stream.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from flopnet.protocol.codec import Record, decode_record
from flopnet.protocol.envelope import Opened, message_id, open_envelope, peek_signer, seal
from flopnet.protocol.errors import (
    ConfigError,
    MalformedMessage,
    PeerError,
    ProtocolNotSupported,
    ProtocolTimeout,
)
from flopnet.protocol.guard import PeerGuard, Violation
from flopnet.protocol.identity import Identity, peer_id_from_public_key
from flopnet.protocol.libp2p_fixes import (
    batch_yamux_window_updates,
    cheapen_gossip_records,
    guard_pubsub_reads,
    release_closed_inbound_connections,
    skip_recent_message_replay,
)
from flopnet.protocol.messages import (
    MAX_ENVELOPE_BYTES,
    ReachabilityReply,
    ReachabilityRequest,
    Refusal,
)
from flopnet.protocol.rpc import (
    DEFAULT_GOSSIP_BUDGET,
    GossipBudget,
    RequestBudget,
    Rpc,
    StreamLimits,
    refusal,
)

__all__ = ["HealthSettings", "P2PHost", "RpcHandler", "StreamLimits", "encode_frame"]

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[bytes]]
"""A raw request handler: (remote peer id, request payload) -> response payload."""
RpcHandler = Callable[[str, Opened], Awaitable[Record]]
"""An RPC handler: (remote peer id, the opened request, signed by that peer) -> answer record."""

GOSSIP_PROTOCOLS = ("/meshsub/1.1.0", "/meshsub/1.0.0")
# One-way notices: a node tells a peer why it is about to be cut off (a ban is never silent).
NOTICE_PROTOCOL = "/flopnet/notice/1.0.0"
NOTICE_TIMEOUT_S = 2.0
# New inbound connections one IP address may open (per second, and a burst) before the
# handshake is skipped and the connection closed unread.
INBOUND_PER_ADDRESS = RequestBudget(rate_per_s=10.0, burst=64.0)
# A refused connection is held this long before it is closed (at most TARPIT_MAX at a time).
TARPIT_S = 5.0
TARPIT_MAX = 256
# Identical gossip bytes from one author are handled once; more than this many repeats of
# recent messages within the memory are a replay flood.
GOSSIP_MEMORY = 4096
GOSSIP_REPEATS_ALLOWED = 20
# A transport-level service: bare records (the Noise session already authenticates the peer).
DIALBACK_PROTOCOL = "/flopnet/dialback/1.0.0"
MAX_VARINT_BYTES = 10


# libp2p's ping protocol (every host serves it): 32 random bytes echoed back.
PING_PROTOCOL = "/ipfs/ping/1.0.0"
PING_BYTES = 32


def multiaddr_parse(text: str) -> Any:
    """Parse a multiaddr (imported lazily: the CLI must start without libp2p)."""
    import multiaddr

    return multiaddr.Multiaddr(text)


@dataclass(frozen=True)
class HealthSettings:
    """Connection health monitoring: a frozen peer's connection is aborted after a failed ping."""

    # 2 s pings dropped busy but alive peers under load (measured at load average 8-12 on 2
    # cores); these still drop a frozen peer within ~10 s.
    check_interval: float = 3.0
    ping_timeout: float = 5.0


DIALBACK_LIMITS = StreamLimits(max_request=4096, max_response=4096, timeout=30.0)


@dataclass(frozen=True)
class Notice:
    """A signed notice a peer sent us (e.g. that it banned us, and why)."""

    peer: str
    code: str
    reason: str
    received_at: float


def encode_frame(payload: bytes) -> bytes:
    """A varint length prefix followed by the payload."""
    n = len(payload)
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            break
    return bytes(out) + payload


class _Reader:
    """Buffered reads of exact byte counts from a libp2p stream."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def _fill(self, want: int) -> None:
        while len(self._buffer) < want:
            chunk = await self._stream.read(max(want - len(self._buffer), 65536))
            if not chunk:
                raise PeerError("stream closed before the frame was complete")
            self._buffer += chunk

    async def read_exact(self, n: int) -> bytes:
        await self._fill(n)
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def read_frame(self, max_bytes: int) -> bytes:
        length = 0
        for i in range(MAX_VARINT_BYTES):
            byte = (await self.read_exact(1))[0]
            length |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                break
        else:
            raise MalformedMessage("frame length varint too long")
        if length > max_bytes:
            raise MalformedMessage(f"frame of {length} bytes exceeds the cap of {max_bytes}")
        return await self.read_exact(length)


def _not_supported(exc: BaseException) -> bool:
    """Whether a failed stream open means "protocol not supported" (py-libp2p wraps it)."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ == "ProtocolNotSupportedError":
            return True
        if "protocol not supported" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _AlreadyCharged(MalformedMessage):
    """A bad request whose violation was already charged: reset the stream, charge no more."""


def _remote_peer_id(stream: Any) -> str:
    return str(stream.muxed_conn.peer_id)


def _remote_address(raw_connection: Any) -> str | None:
    """The IP address an inbound raw connection comes from (None if the transport cannot say)."""
    get = getattr(raw_connection, "get_remote_address", None)
    try:
        remote = get() if get is not None else None
    except Exception:
        return None
    return str(remote[0]) if remote else None


class P2PHost:
    """One node's libp2p host, pubsub and protocol handlers.

    Use as ``async with P2PHost(identity).running(port) as host:`` inside trio.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        network_id: str = "",
        listen_ip: str = "127.0.0.1",
        guard: PeerGuard | None = None,
        health: HealthSettings | None = None,
        relay_hop: bool = False,
        mdns: bool = False,
    ) -> None:
        self.identity = identity
        self.network_id = network_id  # what RPC envelopes are sealed and opened for
        self.listen_ip = listen_ip
        self.guard = guard or PeerGuard()
        self.health = health or HealthSettings()
        self.relay_hop = relay_hop  # serve as a Circuit Relay v2 relay for others
        self.mdns = mdns  # LAN discovery; off by default (it uses every interface)
        self._circuit: Any = None
        self._host: Any = None
        self._pubsub: Any = None
        self._handlers: dict[str, tuple[Handler, StreamLimits]] = {}
        # Per protocol: the signed answer to a request over the peer's rate (RPCs with refusals).
        self._slow_down: dict[str, bytes] = {}
        self.notices: collections.deque[Notice] = collections.deque(maxlen=100)
        self.on_notice: list[Callable[[Notice], None]] = []
        self._gossip_seen: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self._gossip_repeats: dict[str, int] = {}
        self._dht: Any = None
        self._nursery: trio.Nursery | None = None
        self.inbound_refused = 0  # connections closed unread: their address was over its budget
        self._tarpitted = 0  # of those, held open now (see _gate_inbound_by_address)

    # -- lifecycle -----------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self, port: int = 0) -> AsyncIterator[P2PHost]:
        """Start listening on ``listen_ip:port`` with gossip running; stop on exit."""
        import multiaddr
        from libp2p.crypto.ed25519 import create_new_key_pair
        from libp2p.custom_types import TProtocol
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
        from libp2p.pubsub.gossipsub import GossipSub
        from libp2p.pubsub.pubsub import Pubsub
        from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
        from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
        from libp2p.relay.circuit_v2.resources import RelayLimits
        from libp2p.relay.circuit_v2.transport import CircuitV2Transport
        from libp2p.tools.anyio_service import background_trio_service

        cheapen_gossip_records()
        skip_recent_message_replay()
        batch_yamux_window_updates()
        key_pair = create_new_key_pair(self.identity.seed)
        host = _new_libp2p_host(key_pair, self.health, mdns=self.mdns)
        self._install_ban_gate(host)
        if str(host.get_id()) != self.identity.peer_id:
            raise PeerError("libp2p derived a different peer id from our key")  # a library change
        gossipsub = GossipSub(
            protocols=[TProtocol(p) for p in GOSSIP_PROTOCOLS],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=1,
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,  # every peer is on 127.0.0.1 in a devnet
        )
        pubsub = Pubsub(host, gossipsub, strict_signing=True)

        async def bad_gossip_stream(peer: str) -> None:
            await self.penalize(peer, Violation.MALFORMED)

        guard_pubsub_reads(pubsub, bad_gossip_stream)
        release_closed_inbound_connections(host.get_network())
        self._gate_inbound_by_address(host.get_network())
        limits = RelayLimits(
            duration=3600, data=64 * 1024 * 1024, max_circuit_conns=64, max_reservations=64
        )
        circuit = CircuitV2Protocol(host, limits=limits, allow_hop=self.relay_hop)
        circuit_transport = CircuitV2Transport(
            host, circuit, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT, limits=limits)
        )
        listen = multiaddr.Multiaddr(f"/ip4/{self.listen_ip}/tcp/{port}")
        body_error: BaseException | None = None
        try:
            async with host.run(listen_addrs=[listen]), trio.open_nursery() as nursery:
                self._host, self._pubsub, self._nursery = host, pubsub, nursery
                self._circuit = circuit_transport
                for protocol_id in self._handlers:
                    self._register(protocol_id)
                self._register_dialback()
                self._register_notices()
                # The library's auto-connector redials every peer it ever saw, banned or frozen
                # ones included; we re-dial only the peers we choose (node.liveness).
                auto_connector = getattr(host.get_network(), "auto_connector", None)
                if auto_connector is not None:
                    await auto_connector.stop()
                dht = KadDHT(host, DHTMode.SERVER)
                try:
                    async with (
                        background_trio_service(pubsub),
                        background_trio_service(gossipsub),
                        background_trio_service(dht),
                        background_trio_service(circuit),
                        background_trio_service(circuit_transport.discovery),
                    ):
                        self._dht = dht
                        await pubsub.wait_until_ready()
                        try:
                            yield self
                        except BaseException as exc:
                            body_error = exc
                            raise
                finally:
                    # Cancelled only after the services have stopped: cancelling first made
                    # their shutdown raise Cancelled, which replaced (and so swallowed) an
                    # exception raised in the body.
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _unwrap(group, body_error) from None
        finally:
            self._host = self._pubsub = self._nursery = self._dht = self._circuit = None
        if body_error is not None and not isinstance(body_error, trio.Cancelled):
            raise body_error  # a library layer swallowed it; a failed body must never look clean

    @property
    def peer_id(self) -> str:
        """This node's libp2p peer id."""
        return self.identity.peer_id

    def addrs(self) -> list[str]:
        """Full multiaddrs (with ``/p2p/<id>``) other nodes can dial."""
        assert self._host is not None, "host not running"
        out = []
        for addr in self._host.get_addrs():
            text = str(addr)
            if "/p2p/" not in text:
                text += f"/p2p/{self.peer_id}"
            out.append(text)
        return out

    async def connect(self, multiaddr_text: str, *, timeout: float = 10.0) -> str:
        """Dial a peer by full multiaddr (a ``/p2p-circuit`` one goes through its relay)."""
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        assert self._host is not None, "host not running"
        if "/p2p-circuit/" in multiaddr_text:
            return await self._connect_relayed(multiaddr_text, timeout)
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(multiaddr_text))
        except Exception as exc:
            raise PeerError(f"bad multiaddr {multiaddr_text!r}: {exc}") from None
        await self._dial(info, timeout, multiaddr_text)
        return str(info.peer_id)

    # -- NAT: relays and reachability --------------------------------------------------------

    async def _connect_relayed(self, multiaddr_text: str, timeout: float) -> str:
        import multiaddr

        peer_id = multiaddr_text.rsplit("/p2p/", 1)[-1]
        try:
            with trio.fail_after(timeout):
                # host.connect skips circuit addresses; the circuit transport dials them.
                await self._circuit.dial(multiaddr.Multiaddr(multiaddr_text))
        except trio.TooSlowError:
            raise ProtocolTimeout(f"relayed dial to {peer_id} took over {timeout}s") from None
        except Exception as exc:
            raise PeerError(f"cannot reach {peer_id} through its relay: {exc}") from None
        return peer_id

    async def reserve_relay(self, relay_addr: str, *, timeout: float = 10.0) -> str:
        """Take a Circuit Relay v2 reservation on a relay; return our relayed multiaddr.

        Peers that cannot dial us directly dial this address; the relay splices the streams.
        """
        from libp2p.peer.id import ID

        relay_id = await self.connect(relay_addr, timeout=timeout)
        with trio.move_on_after(timeout):
            await trio.sleep(0.2)  # identify must finish so the relay's hop protocol is known
            await self._circuit.discovery.discover_relays()
            info = self._circuit.discovery.get_relay_info(ID.from_base58(relay_id))
            if info is None or not info.has_reservation:
                await self._circuit.discovery.make_reservation(ID.from_base58(relay_id))
                info = self._circuit.discovery.get_relay_info(ID.from_base58(relay_id))
            if info is not None and info.has_reservation:
                base = relay_addr if "/p2p/" in relay_addr else f"{relay_addr}/p2p/{relay_id}"
                return f"{base}/p2p-circuit/p2p/{self.peer_id}"
        raise PeerError(f"the relay {relay_id} granted no reservation")

    def _register_dialback(self) -> None:
        from libp2p.custom_types import TProtocol

        async def on_stream(stream: Any) -> None:
            peer = _remote_peer_id(stream)
            try:
                with trio.fail_after(DIALBACK_LIMITS.timeout):
                    raw = await _Reader(stream).read_frame(DIALBACK_LIMITS.max_request)
                    request = decode_record(ReachabilityRequest, raw, max_bytes=len(raw))
                    reachable = await self._dial_back(peer, request.addrs, stream)
                    reply = ReachabilityReply(version=1, reachable=tuple(reachable))
                    await stream.write(encode_frame(reply.encode()))
                    await stream.close()
            except MalformedMessage:
                await _reset(stream)
                await self.penalize(peer, Violation.MALFORMED)
            except Exception as exc:
                log.info("dial-back for %s: %s", peer, exc)
                await _reset(stream)

        assert self._host is not None
        self._host.set_stream_handler(TProtocol(DIALBACK_PROTOCOL), on_stream)

    async def _dial_back(self, peer: str, addrs: tuple[str, ...], stream: Any) -> list[str]:
        """Dial each claimed address from a throwaway host (the requester's existing connection
        would otherwise be reused and prove nothing); only the requester's own IP is dialed, so
        nobody can aim us at a third party."""
        from libp2p.crypto.ed25519 import create_new_key_pair
        from libp2p.peer.peerinfo import info_from_p2p_addr

        observed = stream.get_remote_address()
        observed_ip = observed[0] if observed else None
        reachable = []
        probe = _new_libp2p_host(create_new_key_pair(), self.health)
        async with probe.run(listen_addrs=[]):
            for addr in addrs[:8]:
                if observed_ip is None or f"/ip4/{observed_ip}/" not in addr:
                    continue
                full = addr if "/p2p/" in addr else f"{addr}/p2p/{peer}"
                try:
                    info = info_from_p2p_addr(multiaddr_parse(full))
                    if str(info.peer_id) != peer:
                        continue
                    network = probe.get_network()
                    with trio.fail_after(3.0):
                        # This exact address: host.connect would reuse a connection made to an
                        # earlier address, or try every address the peerstore knows.
                        await network.dial_addr(info.addrs[0], info.peer_id)  # Noise: peer id
                    reachable.append(addr)
                    await network.close_peer(info.peer_id)
                except Exception as exc:
                    log.debug("dial-back to %s failed: %s", addr, exc)
        return reachable

    async def check_reachability(
        self, helper_peer: str, addrs: list[str] | None = None
    ) -> list[str]:
        """Ask a connected peer which of our listen addresses it can dial back."""
        request = ReachabilityRequest(version=1, addrs=tuple((addrs or self.addrs())[:8]))
        raw = await self.request(helper_peer, DIALBACK_PROTOCOL, request.encode(), DIALBACK_LIMITS)
        return list(decode_record(ReachabilityReply, raw, max_bytes=len(raw)).reachable)

    # -- discovery (Kademlia) ------------------------------------------------------------------

    async def join_dht(self, peer_id: str, *, timeout: float = 10.0) -> int:
        """Seed the routing table with a connected peer and look ourselves up through it.

        Connecting alone does not fill the routing table. Returns the table's size.
        """
        from libp2p.peer.id import ID

        assert self._dht is not None, "host not running"
        with trio.move_on_after(timeout):
            try:
                await self._dht.add_peer(ID.from_base58(peer_id))
                await self._dht.refresh_routing_table()
            except Exception as exc:
                log.info("DHT join via %s: %s", peer_id, exc)
        return int(self._dht.get_routing_table_size())

    async def advertise(self, key: str, *, timeout: float = 10.0) -> bool:
        """Announce on the DHT that this node provides ``key`` (re-announce periodically)."""
        assert self._dht is not None, "host not running"
        with trio.move_on_after(timeout):
            try:
                return bool(await self._dht.provide(key))
            except Exception as exc:
                log.info("DHT provide %s: %s", key, exc)
        return False

    async def find_providers(self, key: str, *, timeout: float = 10.0) -> dict[str, list[str]]:
        """Providers of ``key`` on the DHT: peer id -> multiaddrs (de-duplicated)."""
        assert self._dht is not None, "host not running"
        found: dict[str, list[str]] = {}
        with trio.move_on_after(timeout):
            try:
                for info in await self._dht.find_providers(key):
                    addrs = found.setdefault(str(info.peer_id), [])
                    addrs.extend(str(a) for a in info.addrs if str(a) not in addrs)
            except Exception as exc:
                log.info("DHT find_providers %s: %s", key, exc)
        return found

    async def connect_peer(self, peer_id: str, addrs: list[str], *, timeout: float = 10.0) -> None:
        """Dial a peer by id and transport addresses (as found on the DHT)."""
        import multiaddr
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        assert self._host is not None, "host not running"
        info = PeerInfo(ID.from_base58(peer_id), [multiaddr.Multiaddr(a) for a in addrs])
        await self._dial(info, timeout, peer_id)

    async def _dial(self, info: Any, timeout: float, what: str) -> None:
        """Connect to a PeerInfo under a deadline, mapping library errors at this boundary."""
        assert self._host is not None, "host not running"
        self._forget_failed_dials(info.peer_id)
        try:
            with trio.fail_after(timeout):
                await self._drop_dead_connections(info.peer_id)
                await self._host.connect(info)
        except trio.TooSlowError:
            raise ProtocolTimeout(f"connecting to {what} took over {timeout}s") from None
        except Exception as exc:
            raise PeerError(f"cannot connect to {what}: {exc}") from None

    async def _drop_dead_connections(self, peer_id: Any) -> None:
        # py-libp2p's connect() returns at once while the swarm still lists a connection to the
        # peer, even a closed one (seen after a health-check abort), and every new stream then
        # fails with "no valid connections": drop such leftovers so the dial really happens.
        connections = self._host.get_network().connections.get(peer_id) or []
        if connections and all(_is_closed(conn) for conn in connections):
            await self._host.disconnect(peer_id)

    def _forget_failed_dials(self, peer_id: Any) -> None:
        # The swarm refuses to dial a peer that failed recently ("negative cache") with its own
        # growing backoff; callers here pace their own retries, and the two compounded into
        # minute-long waits for a peer that was already up.
        unblock = getattr(self._host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(peer_id)

    def connected_peers(self) -> list[str]:
        """Peer ids with an open connection (closed leftovers in the swarm do not count)."""
        if self._host is None:
            return []
        connections = self._host.get_network().connections
        return [
            str(peer)
            for peer, conns in list(connections.items())
            if any(not _is_closed(conn) for conn in conns)
        ]

    def peer_links(self) -> dict[str, dict[str, Any]]:
        """Each connected peer's transport addresses, and whether the link goes through a relay
        (a ``/p2p-circuit`` address) or is direct."""
        if self._host is None:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for peer, conns in list(self._host.get_network().connections.items()):
            addrs: list[str] = []
            for conn in conns:
                if _is_closed(conn):
                    continue
                try:
                    addrs += [str(a) for a in conn.get_transport_addresses()]
                except Exception:  # a connection without addresses is still a connection
                    continue
            out[str(peer)] = {"addrs": addrs, "relayed": any("/p2p-circuit" in a for a in addrs)}
        return out

    async def ping(self, peer_id: str, *, timeout: float = 5.0) -> float:
        """Round-trip time to a peer over libp2p's ping protocol, in seconds (PeerError or
        ProtocolTimeout when it does not answer)."""
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        assert self._host is not None, "host not running"
        payload = secrets.token_bytes(PING_BYTES)
        stream = None
        try:
            with trio.fail_after(timeout):
                stream = await self._host.new_stream(
                    ID.from_base58(peer_id), [TProtocol(PING_PROTOCOL)]
                )
                started = time.perf_counter()
                await stream.write(payload)
                reply = await _Reader(stream).read_exact(PING_BYTES)
                rtt = time.perf_counter() - started
                await stream.close()
        except trio.TooSlowError:
            if stream is not None:
                await _reset(stream)
            raise ProtocolTimeout(f"ping to {peer_id} took over {timeout}s") from None
        except Exception as exc:
            if stream is not None:
                await _reset(stream)
            raise PeerError(f"ping to {peer_id}: {type(exc).__name__}: {exc}") from None
        if reply != payload:
            raise MalformedMessage(f"{peer_id} answered a ping with other bytes")
        return rtt

    # -- RPCs: sealed records over request/response streams -----------------------------------

    def _network(self) -> str:
        if not self.network_id:
            raise ConfigError("this host was made without a network id: it cannot seal RPCs")
        return self.network_id

    def serve(self, rpc: Rpc, handler: RpcHandler) -> None:
        """Serve ``rpc``: the request is opened as ``rpc.request`` and must be signed by the
        stream's own peer before ``handler`` sees it; its answer is sealed by this node.

        A request that does not decode as ``rpc.request`` is charged to the peer (MALFORMED), one
        signed by another key than the peer's too (WRONG_SIGNER); each is answered with a
        refusal that says why, or the stream is reset where the protocol has no refusal. A
        handler raising MalformedMessage resets the stream and charges the peer.
        """
        network_id = self._network()

        async def on_request(peer: str, data: bytes) -> bytes:
            try:
                opened = open_envelope(data, network_id, expected=rpc.request)
            except MalformedMessage as exc:
                if not rpc.may_refuse:
                    raise
                await self.penalize(peer, Violation.MALFORMED)
                return seal(refusal("malformed", str(exc)), self.identity, network_id)
            if peer_id_from_public_key(opened.signer) != peer:
                await self.penalize(peer, Violation.WRONG_SIGNER)
                if not rpc.may_refuse:
                    raise _AlreadyCharged("the request is not signed by the stream's peer")
                answer: Record = refusal("wrong_signer", "not signed by the stream's peer")
            else:
                answer = await handler(peer, opened)
            if not isinstance(answer, rpc.responses):
                raise TypeError(f"{rpc.protocol_id} may not answer {type(answer).__name__}")
            return seal(answer, self.identity, network_id)

        self.handle(rpc.protocol_id, on_request, rpc.limits)
        if rpc.may_refuse:
            # Sealed once: a peer over its rate is told to slow down without costing a signature.
            rate = rpc.budget.rate_per_s if rpc.budget is not None else self.guard.rate_per_s
            slow = refusal("rate_limited", f"over {rate:g} requests/s: slow down")
            self._slow_down[rpc.protocol_id] = seal(slow, self.identity, network_id)

    async def call(self, peer_id: str, rpc: Rpc, message: Record | bytes) -> Opened:
        """Send one request of ``rpc`` to ``peer_id`` and return its opened answer.

        ``message`` is a record to seal, or an envelope this node already sealed (a caller that
        needs the request's id). The answer must be one of ``rpc.responses`` and signed by the
        peer that was asked; anything else raises MalformedMessage (the caller decides whether
        to charge the peer). Network failures raise PeerError or ProtocolTimeout.
        """
        network_id = self._network()
        sealed = message if isinstance(message, bytes) else seal(message, self.identity, network_id)
        reply = await self.request(peer_id, rpc.protocol_id, sealed, rpc.limits)
        opened = open_envelope(reply, network_id)
        if not isinstance(opened.message, rpc.responses):
            raise MalformedMessage(
                f"{rpc.protocol_id} answered with {type(opened.message).__name__}"
            )
        if peer_id_from_public_key(opened.signer) != peer_id:
            raise MalformedMessage(f"the {rpc.protocol_id} answer is not signed by {peer_id}")
        return opened

    # -- raw request/response -------------------------------------------------------------------

    def handle(self, protocol_id: str, handler: Handler, limits: StreamLimits) -> None:
        """Serve ``protocol_id``: each stream carries one framed request and one framed response."""
        self._handlers[protocol_id] = (handler, limits)
        if self._host is not None:
            self._register(protocol_id)

    def _register(self, protocol_id: str) -> None:
        from libp2p.custom_types import TProtocol

        handler, limits = self._handlers[protocol_id]

        async def on_stream(stream: Any) -> None:
            peer = _remote_peer_id(stream)
            now = time.time()
            if self.guard.is_banned(peer, now):
                await _reset(stream)
                return
            budget = limits.budget
            if not self.guard.allow(
                peer,
                protocol_id,
                now,
                rate=None if budget is None else budget.rate_per_s,
                burst=None if budget is None else budget.burst,
            ):
                # Told, not silently dropped: an honest peer backs off; a flood is charged.
                await self._answer_without_reading(stream, self._slow_down.get(protocol_id))
                await self.penalize(peer, Violation.RATE_LIMIT)
                return
            try:
                with trio.fail_after(limits.timeout):
                    request = await _Reader(stream).read_frame(limits.max_request)
                    response = await handler(peer, request)
                    await stream.write(encode_frame(response))
                    await stream.close()
            except trio.TooSlowError:
                log.warning("%s from %s: deadline of %ss passed", protocol_id, peer, limits.timeout)
                await _reset(stream)
                await self.penalize(peer, Violation.TIMEOUT)
            except _AlreadyCharged as exc:
                log.warning("%s from %s: %s", protocol_id, peer, exc)
                await _reset(stream)
            except MalformedMessage as exc:
                log.warning("%s from %s: malformed request: %s", protocol_id, peer, exc)
                await _reset(stream)
                await self.penalize(peer, Violation.MALFORMED)
            except Exception as exc:  # a broken peer must never take the node down
                log.warning("%s from %s: %s: %s", protocol_id, peer, type(exc).__name__, exc)
                await _reset(stream)

        self._host.set_stream_handler(TProtocol(protocol_id), on_stream)

    async def request(
        self, peer_id: str, protocol_id: str, payload: bytes, limits: StreamLimits
    ) -> bytes:
        """Open a stream to ``peer_id``, send one request, return the response payload.

        Raises ProtocolTimeout past ``limits.timeout``, MalformedMessage for an oversized
        response, PeerError for everything else that goes wrong with the peer.
        """
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        assert self._host is not None, "host not running"
        if len(payload) > limits.max_request:
            raise MalformedMessage(f"request of {len(payload)} bytes exceeds {limits.max_request}")
        stream = None
        try:
            with trio.fail_after(limits.timeout):
                stream = await self._host.new_stream(
                    ID.from_base58(peer_id), [TProtocol(protocol_id)]
                )
                await stream.write(encode_frame(payload))
                response = await _Reader(stream).read_frame(limits.max_response)
                await stream.close()
                return response
        except trio.TooSlowError:
            if stream is not None:
                await _reset(stream)
            raise ProtocolTimeout(
                f"{protocol_id} to {peer_id} did not finish within {limits.timeout}s"
            ) from None
        except (MalformedMessage, PeerError):
            if stream is not None:
                await _reset(stream)
            raise
        except Exception as exc:
            if stream is not None:
                await _reset(stream)
            if stream is None and _not_supported(exc):
                # A live peer that does not speak this protocol (a light client, another
                # libp2p program, an older flopnet) stays a peer.
                raise ProtocolNotSupported(f"{peer_id} does not serve {protocol_id}") from None
            if stream is None:
                # The swarm may still list a connection that health monitoring aborted; a later
                # connect() would then return early without dialing. Forget it.
                await self.disconnect(peer_id)
            raise PeerError(f"{protocol_id} to {peer_id}: {type(exc).__name__}: {exc}") from None

    # -- abuse ---------------------------------------------------------------------------------

    def _gate_inbound_by_address(self, swarm: Any) -> None:
        """Close an inbound connection before its handshake when its address opens more than
        :data:`INBOUND_PER_ADDRESS` allows.

        A peer id is known only after the Noise handshake, which costs the listener as much as
        the dialer: a banned or throwaway identity that reconnects in a loop would make us pay
        a handshake per attempt. Honest nodes keep their connections; a burst covers a devnet's
        nodes sharing 127.0.0.1 at start. A refused connection is held for :data:`TARPIT_S`
        (a socket and a sleeping task each, at most :data:`TARPIT_MAX`) before it is closed.
        """
        handle = swarm._handle_inbound_connection
        guard = self.guard

        async def gated(read_write_closer: Any, maddr: Any) -> None:
            address = _remote_address(read_write_closer)
            if address is not None and not guard.allow(
                "address:" + address,
                "inbound-connection",
                time.time(),
                rate=INBOUND_PER_ADDRESS.rate_per_s,
                burst=INBOUND_PER_ADDRESS.burst,
            ):
                self.inbound_refused += 1
                if self._tarpitted < TARPIT_MAX:
                    # Held unread before it is closed: a dialer retrying in a loop waits on
                    # each attempt instead of costing us an accept and a close a millisecond.
                    self._tarpitted += 1
                    try:
                        await trio.sleep(TARPIT_S)
                    finally:
                        self._tarpitted -= 1
                with contextlib.suppress(Exception):
                    await read_write_closer.close()
                return
            await handle(read_write_closer, maddr)

        swarm._handle_inbound_connection = gated

    def _install_ban_gate(self, host: Any) -> None:
        """Refuse connections to and from banned peers.

        py-libp2p has no peer-id connection gater (its deny list is by IP, useless on shared
        addresses), but every connection, inbound after the Noise handshake and outbound, asks the
        resource manager; answering None denies it.
        """
        manager = getattr(host.get_network(), "_resource_manager", None)
        if manager is None:
            log.warning("no resource manager: bans will only reset streams and drop gossip")
            return
        original = manager.open_connection
        guard = self.guard

        def gated(peer_id: Any = None, endpoint_ip: Any = None, direction: str = "inbound") -> Any:
            if peer_id is not None and guard.is_banned(str(peer_id), time.time()):
                return None
            return original(peer_id, endpoint_ip=endpoint_ip, direction=direction)

        manager.open_connection = gated

    async def penalize(self, peer_id: str, violation: Violation) -> None:
        """Charge a violation to a peer. A newly banned peer is told why (a signed notice), then
        disconnected: a ban is never silent."""
        if self.guard.penalize(peer_id, violation, time.time()):
            log.warning(
                "banning %s for %ss after %s", peer_id, self.guard.ban_seconds, violation.value
            )
            reason = (
                f"banned for {self.guard.ban_seconds:g} s after repeated {violation.value} "
                f"(score {self.guard.score(peer_id, time.time()):.0f})"
            )
            await self.send_notice(peer_id, "banned", reason)
            await self.disconnect(peer_id)

    async def send_notice(self, peer_id: str, code: str, reason: str) -> bool:
        """Tell a peer something it should know (one signed refusal on the notice stream);
        best effort, bounded in time. Returns whether it was delivered."""
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        if self._host is None or not self.network_id:
            return False
        data = encode_frame(seal(refusal(code, reason), self.identity, self.network_id))
        with trio.move_on_after(NOTICE_TIMEOUT_S):
            try:
                stream = await self._host.new_stream(
                    ID.from_base58(peer_id), [TProtocol(NOTICE_PROTOCOL)]
                )
                await stream.write(data)
                await stream.close()
                return True
            except Exception as exc:
                log.info("notice to %s not delivered: %s", peer_id, exc)
        return False

    def _register_notices(self) -> None:
        from libp2p.custom_types import TProtocol

        async def on_stream(stream: Any) -> None:
            peer = _remote_peer_id(stream)
            now = time.time()
            if self.guard.is_banned(peer, now) or not self.guard.allow(
                peer, NOTICE_PROTOCOL, now, rate=0.2, burst=5.0
            ):
                await _reset(stream)
                return
            try:
                with trio.fail_after(NOTICE_TIMEOUT_S * 2):
                    raw = await _Reader(stream).read_frame(MAX_ENVELOPE_BYTES[Refusal.TYPE])
                opened = open_envelope(raw, self._network(), expected=Refusal)
                if peer_id_from_public_key(opened.signer) != peer:
                    raise MalformedMessage("a notice not signed by the stream's peer")
            except (MalformedMessage, ConfigError, PeerError, trio.TooSlowError) as exc:
                log.info("notice from %s ignored: %s", peer, exc)
                await _reset(stream)
                return
            message = opened.expect(Refusal)
            notice = Notice(peer, message.code, message.reason, time.time())
            self.notices.append(notice)
            log.warning("peer %s says: %s: %s", peer, notice.code, notice.reason)
            for callback in self.on_notice:
                callback(notice)
            await stream.close()

        assert self._host is not None
        self._host.set_stream_handler(TProtocol(NOTICE_PROTOCOL), on_stream)

    async def _answer_without_reading(self, stream: Any, answer: bytes | None) -> None:
        """Write a prepared answer (or reset) without reading the request: cheap under a flood."""
        if answer is None:
            await _reset(stream)
            return
        with trio.move_on_after(1.0):
            try:
                await stream.write(encode_frame(answer))
                await stream.close()
                return
            except Exception:
                pass
        await _reset(stream)

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection to ``peer_id`` (best effort, bounded in time)."""
        from libp2p.peer.id import ID

        if self._host is None:
            return
        with trio.move_on_after(2.0):
            try:
                await self._host.disconnect(ID.from_base58(peer_id))
            except Exception as exc:
                log.debug("disconnect %s: %s", peer_id, exc)

    # -- gossip --------------------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish on a GossipSub topic (best effort; receivers must tolerate gaps)."""
        assert self._pubsub is not None, "host not running"
        await self._pubsub.publish(topic, data)

    async def subscribe(
        self,
        topic: str,
        on_message: Callable[[str, bytes], Awaitable[None]],
        budget: GossipBudget = DEFAULT_GOSSIP_BUDGET,
    ) -> None:
        """Subscribe and call ``on_message(author peer id, data)`` for each message.

        The subscription queue holds only 32 messages, so it is drained in a dedicated task and
        handlers run one at a time; a handler error is logged, never propagated. Before a handler
        pays for a signature check, the cheap checks run: banned authors are not heard, each
        author has ``budget`` on the topic (over it is charged), the envelope must be signed by
        its gossip author (honest nodes only publish their own messages, so a relayed copy sent
        as one's own is a replay, charged), and bytes already handled are not handled again
        (too many repeats are charged). A handler that raises MalformedMessage charges the
        author.
        """
        from libp2p.peer.id import ID

        assert self._pubsub is not None and self._nursery is not None, "host not running"
        subscription = await self._pubsub.subscribe(topic)

        async def drain() -> None:
            while True:
                message = await subscription.get()
                sender = ""
                try:
                    sender = str(ID(message.from_id))
                    data = bytes(message.data)
                    handle, charge = self._gossip_check(topic, sender, data, budget)
                    if charge is not None:
                        await self.penalize(sender, charge)
                    if handle:
                        await on_message(sender, data)
                except MalformedMessage as exc:
                    log.warning("gossip on %s from %s: %s", topic, sender, exc)
                    if sender:
                        await self.penalize(sender, Violation.MALFORMED)
                except Exception as exc:
                    log.warning("gossip on %s: %s: %s", topic, type(exc).__name__, exc)

        self._nursery.start_soon(drain)

    def _gossip_check(
        self, topic: str, author: str, data: bytes, budget: GossipBudget
    ) -> tuple[bool, Violation | None]:
        """The cheap checks of one gossip message (see :meth:`subscribe`): whether to hand it to
        the topic's handler, and what to charge its author."""
        now = time.time()
        if self.guard.is_banned(author, now):
            return False, None
        if not self.guard.allow(author, topic, now, rate=budget.rate_per_s, burst=budget.burst):
            return False, Violation.RATE_LIMIT
        if peer_id_from_public_key(peek_signer(data)) != author:
            return False, Violation.WRONG_SIGNER
        key = message_id(data)
        if key in self._gossip_seen:
            self._gossip_seen.move_to_end(key)
            repeats = self._gossip_repeats.get(author, 0) + 1
            self._gossip_repeats[author] = repeats
            return False, Violation.REPLAY if repeats > GOSSIP_REPEATS_ALLOWED else None
        self._gossip_seen[key] = author
        while len(self._gossip_seen) > GOSSIP_MEMORY:
            _, old_author = self._gossip_seen.popitem(last=False)
            # Repeats are counted over what is remembered: forgetting a message forgives one.
            left = self._gossip_repeats.get(old_author, 0) - 1
            if left > 0:
                self._gossip_repeats[old_author] = left
            else:
                self._gossip_repeats.pop(old_author, None)
        return True, None

    def topic_peers(self, topic: str) -> int:
        """How many peers we know to be subscribed to ``topic``."""
        if self._pubsub is None:
            return 0
        return len(self._pubsub.peer_topics.get(topic, ()))


def _new_libp2p_host(key_pair: Any, health: HealthSettings, *, mdns: bool = False) -> Any:
    """A py-libp2p host with our settings: TCP + Noise only + Yamux, one connection per peer."""
    from libp2p import new_host
    from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_pair
    from libp2p.network.config import ConnectionConfig
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as NoiseTransport

    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_pair().private_key)
    # A frozen (SIGSTOPped) peer keeps its TCP connection open and hangs every read; health
    # monitoring pings it and aborts the connection (measured: ~1.6 s at 1 s intervals).
    connection_config = ConnectionConfig(
        max_connections_per_peer=1,
        enable_health_monitoring=True,
        health_initial_delay=health.check_interval,
        health_warmup_window=health.check_interval / 2,
        health_check_interval=health.check_interval,
        ping_timeout=health.ping_timeout,
        abort_connection_on_ping_failure=True,
    )
    return new_host(
        key_pair=key_pair,
        sec_opt={NOISE_ID: noise},
        muxer_preference="YAMUX",
        connection_config=connection_config,
        enable_mDNS=mdns,
    )


async def _reset(stream: Any) -> None:
    with trio.move_on_after(1.0):
        try:
            await stream.reset()
        except Exception:
            log.debug("stream reset failed", exc_info=True)


def _is_closed(conn: Any) -> bool:
    """A swarm connection that is closed, or whose muxer is."""
    if getattr(conn, "is_closed", False):
        return True
    muxed = getattr(conn, "muxed_conn", None)
    return bool(getattr(muxed, "is_closed", False))


def _unwrap(group: BaseExceptionGroup, body_error: BaseException | None) -> BaseException:
    """The one real error inside the nurseries' exception groups, else the group itself.

    Callers of :meth:`P2PHost.running` see what their body raised, not the library's nesting.
    """
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)

    collect(group)
    if body_error is not None and body_error in leaves:
        return body_error
    if len(leaves) == 1:
        return leaves[0]
    return group
