"""Heartbeats, the peer table, and re-dialing lost bootstrap peers with backoff.

Every node gossips a signed heartbeat (roles, software version, GPUs, load, free slots, and for a
publisher its announcement head) every ``interval`` seconds. Hearing one marks its author
healthy; silence makes a peer unhealthy, then gone. A frozen (SIGSTOPped) peer keeps its TCP
connection, so silence is what reveals it; the host's health monitoring then drops the connection.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import trio

from flopnet.protocol.catalog import heartbeat_topic
from flopnet.protocol.envelope import open_envelope, seal
from flopnet.protocol.errors import FlopnetError, MalformedMessage
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import Identity, peer_id_from_public_key
from flopnet.protocol.messages import Heartbeat
from flopnet.protocol.peers import Backoff, PeerState, PeerTable

log = logging.getLogger(__name__)
SOFTWARE = "flopnet/0.1.0"


class Liveness:
    """Owns the heartbeat loop, the peer table and the reconnect loop of one node."""

    def __init__(
        self,
        host: P2PHost,
        identity: Identity,
        network_id: str,
        roles: tuple[str, ...],
        *,
        interval: float = 2.0,
        capacity: Callable[[], tuple[float, int, int]] = lambda: (0.0, 0, 0),
        gpus: tuple[str, ...] = (),
        on_publisher_head: Callable[[str, int], None] | None = None,
    ) -> None:
        self.host = host
        self.identity = identity
        self.network_id = network_id
        self.roles = roles
        self.interval = interval
        self.capacity = capacity  # () -> (load, free slots, announcement head)
        self.gpus = gpus
        self.on_publisher_head = on_publisher_head
        self.table = PeerTable(heartbeat_interval=interval)
        self.publishers: set[bytes] = set()

    async def on_heartbeat(self, sender: str, data: bytes) -> None:
        """Gossip handler; raises MalformedMessage (charged to the sender) for bad heartbeats."""
        opened = open_envelope(data, self.network_id, expected=Heartbeat)
        author = peer_id_from_public_key(opened.signer)
        if author != sender:
            raise MalformedMessage("heartbeat signed by another key than its gossip author")
        heartbeat = opened.expect(Heartbeat)
        self.table.heard(author, time.time(), heartbeat)
        if (
            self.on_publisher_head is not None
            and opened.signer in self.publishers
            and heartbeat.announce_seq
        ):
            self.on_publisher_head(author, heartbeat.announce_seq)

    async def heartbeat_loop(self) -> None:
        """Publish our heartbeat and age the peer table, every interval."""
        topic = heartbeat_topic(self.network_id)
        while True:
            load, free, head = self.capacity()
            beat = Heartbeat(
                version=1,
                roles=self.roles,
                software=SOFTWARE,
                gpus=len(self.gpus),
                gpu_names=self.gpus,
                load=float(load),
                free_slots=free,
                announce_seq=head,
                sent_at=time.time(),
            )
            try:
                await self.host.publish(topic, seal(beat, self.identity, self.network_id))
            except Exception as exc:  # best effort; the next beat follows
                log.debug("heartbeat publish failed: %s", exc)
            now = time.time()
            for peer in self.host.connected_peers():
                self.table.connected(peer, now)
            for peer, old, new in self.table.tick(now):
                log.info("peer %s: %s -> %s", peer, old.value, new.value)
                if new is PeerState.GONE:
                    self.table.disconnected(peer, now)
            await trio.sleep(self.interval)

    async def keep_connected(self, addr: str) -> None:
        """Dial ``addr`` and re-dial it with exponential backoff whenever the connection drops."""
        await keep_connected(self.host, addr, self.interval)


async def keep_connected(host: P2PHost, addr: str, interval: float = 1.0) -> None:
    """Dial ``addr`` and re-dial it with exponential backoff whenever the connection drops
    (checked every ``interval`` seconds)."""
    backoff = Backoff(cap=10.0)
    rng = random.Random()
    peer_id = addr.rsplit("/p2p/", 1)[-1]
    while True:
        if peer_id in host.connected_peers():
            backoff.reset()
            await trio.sleep(interval)
            continue
        try:
            await host.connect(addr)
            log.info("connected to %s", addr)
            backoff.reset()
        except FlopnetError as exc:
            delay = backoff.next_delay(rng)
            log.info("dialing %s: %s; next try in %.1fs", addr, exc, delay)
            await trio.sleep(delay)
