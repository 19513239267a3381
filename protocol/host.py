"""A thin adapter over a py-libp2p host: gossip topics and request/response streams with deadlines.

Settings follow what was measured on py-libp2p 0.8.1 (see ``docs/architecture.md``):

* TCP + Noise only (the library's default would also accept plaintext and SECIO) + Yamux.
* ``max_connections_per_peer=1`` removes a fixed 250 ms happy-eyeballs wait on every connect.
* GossipSub restricted to ``/meshsub/1.1.0`` (v1.2's IDONTWANT path stalls under load), with the
  library's per-topic spam limit (10 msg/s, applied to our own publishes too) lifted; our own
  decoders and rate limits guard the topics instead.
* Every stream operation runs under a deadline: a frozen peer otherwise hangs a stream forever.

Library errors are mapped to :class:`PeerError` and :class:`ProtocolTimeout` here, at the boundary.
Request/response framing: an unsigned LEB128 varint length, then that many payload bytes; one
request and one response per stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from protocol.errors import MalformedMessage, PeerError, ProtocolTimeout
from protocol.guard import PeerGuard, Violation
from protocol.identity import Identity

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[bytes]]
"""A request handler: (remote peer id, request payload) -> response payload."""

GOSSIP_PROTOCOLS = ("/meshsub/1.1.0", "/meshsub/1.0.0")
MAX_VARINT_BYTES = 10


@dataclass(frozen=True)
class HealthSettings:
    """Connection health monitoring: a frozen peer's connection is aborted after a failed ping."""

    check_interval: float = 2.0
    ping_timeout: float = 2.0


@dataclass(frozen=True)
class StreamLimits:
    """Size caps and the deadline of one request/response protocol."""

    max_request: int
    max_response: int
    timeout: float = 10.0


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


def _remote_peer_id(stream: Any) -> str:
    return str(stream.muxed_conn.peer_id)


class P2PHost:
    """One node's libp2p host, pubsub and protocol handlers.

    Use as ``async with P2PHost(identity).running(port) as host:`` inside trio.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        listen_ip: str = "127.0.0.1",
        guard: PeerGuard | None = None,
        health: HealthSettings | None = None,
    ) -> None:
        self.identity = identity
        self.listen_ip = listen_ip
        self.guard = guard or PeerGuard()
        self.health = health or HealthSettings()
        self._host: Any = None
        self._pubsub: Any = None
        self._handlers: dict[str, tuple[Handler, StreamLimits]] = {}
        self._dht: Any = None
        self._nursery: trio.Nursery | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self, port: int = 0) -> AsyncIterator[P2PHost]:
        """Start listening on ``listen_ip:port`` with gossip running; stop on exit."""
        import multiaddr
        from libp2p import new_host
        from libp2p.crypto.ed25519 import create_new_key_pair
        from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_pair
        from libp2p.custom_types import TProtocol
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
        from libp2p.network.config import ConnectionConfig
        from libp2p.pubsub.gossipsub import GossipSub
        from libp2p.pubsub.pubsub import Pubsub
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
        from libp2p.security.noise.transport import Transport as NoiseTransport
        from libp2p.tools.anyio_service import background_trio_service

        key_pair = create_new_key_pair(self.identity.seed)
        noise = NoiseTransport(key_pair, noise_privkey=create_x25519_pair().private_key)
        # A frozen (SIGSTOPped) peer keeps its TCP connection open and hangs every read; health
        # monitoring pings it and aborts the connection (measured: ~1.6 s at 1 s intervals).
        connection_config = ConnectionConfig(
            max_connections_per_peer=1,
            enable_health_monitoring=True,
            health_initial_delay=self.health.check_interval,
            health_warmup_window=self.health.check_interval / 2,
            health_check_interval=self.health.check_interval,
            ping_timeout=self.health.ping_timeout,
            abort_connection_on_ping_failure=True,
        )
        host = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_ID: noise},
            muxer_preference="YAMUX",
            connection_config=connection_config,
            enable_mDNS=False,
        )
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
        listen = multiaddr.Multiaddr(f"/ip4/{self.listen_ip}/tcp/{port}")
        async with host.run(listen_addrs=[listen]), trio.open_nursery() as nursery:
            self._host, self._pubsub, self._nursery = host, pubsub, nursery
            for protocol_id in self._handlers:
                self._register(protocol_id)
            # The library's auto-connector redials every peer it ever saw, banned or frozen ones
            # included; we re-dial only the peers we choose (node.liveness).
            auto_connector = getattr(host.get_network(), "auto_connector", None)
            if auto_connector is not None:
                await auto_connector.stop()
            dht = KadDHT(host, DHTMode.SERVER)
            async with (
                background_trio_service(pubsub),
                background_trio_service(gossipsub),
                background_trio_service(dht),
            ):
                self._dht = dht
                await pubsub.wait_until_ready()
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()
        self._host = self._pubsub = self._nursery = self._dht = None

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
        """Dial a peer by full multiaddr; return its peer id."""
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        assert self._host is not None, "host not running"
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(multiaddr_text))
        except Exception as exc:
            raise PeerError(f"bad multiaddr {multiaddr_text!r}: {exc}") from None
        try:
            with trio.fail_after(timeout):
                await self._host.connect(info)
        except trio.TooSlowError:
            raise ProtocolTimeout(f"connecting to {multiaddr_text} took over {timeout}s") from None
        except Exception as exc:
            raise PeerError(f"cannot connect to {multiaddr_text}: {exc}") from None
        return str(info.peer_id)

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
        try:
            with trio.fail_after(timeout):
                await self._host.connect(info)
        except trio.TooSlowError:
            raise ProtocolTimeout(f"connecting to {peer_id} took over {timeout}s") from None
        except Exception as exc:
            raise PeerError(f"cannot connect to {peer_id}: {exc}") from None

    def connected_peers(self) -> list[str]:
        """Peer ids with an open connection."""
        if self._host is None:
            return []
        return [str(p) for p in self._host.get_connected_peers()]

    # -- request/response ----------------------------------------------------------------------

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
            if self.guard.is_banned(peer, now) or not self.guard.allow(peer, protocol_id, now):
                await _reset(stream)
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
            raise PeerError(f"{protocol_id} to {peer_id}: {type(exc).__name__}: {exc}") from None

    # -- abuse ---------------------------------------------------------------------------------

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
        """Charge a violation to a peer; a newly banned peer is disconnected at once."""
        if self.guard.penalize(peer_id, violation, time.time()):
            log.warning("banning %s for %ss after %s", peer_id, self.guard.ban_seconds, violation)
            await self.disconnect(peer_id)

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
        self, topic: str, on_message: Callable[[str, bytes], Awaitable[None]]
    ) -> None:
        """Subscribe and call ``on_message(sender peer id, data)`` for each message.

        The subscription queue holds only 32 messages, so it is drained in a dedicated task and
        handlers run one at a time; a handler error is logged, never propagated. A handler that
        raises MalformedMessage charges the message's author; banned authors are not heard.
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
                    if self.guard.is_banned(sender, time.time()):
                        continue
                    await on_message(sender, bytes(message.data))
                except MalformedMessage as exc:
                    log.warning("gossip on %s from %s: %s", topic, sender, exc)
                    if sender:
                        await self.penalize(sender, Violation.MALFORMED)
                except Exception as exc:
                    log.warning("gossip on %s: %s: %s", topic, type(exc).__name__, exc)

        self._nursery.start_soon(drain)

    def topic_peers(self, topic: str) -> int:
        """How many peers we know to be subscribed to ``topic``."""
        if self._pubsub is None:
            return 0
        return len(self._pubsub.peer_topics.get(topic, ()))


async def _reset(stream: Any) -> None:
    with trio.move_on_after(1.0):
        try:
            await stream.reset()
        except Exception:
            log.debug("stream reset failed", exc_info=True)
