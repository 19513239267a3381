"""Finding the network's publishers and validators from any one bootstrap peer (Kademlia DHT).

Publishers and validators advertise themselves under ``flopnet/<network>/publishers`` and
``…/validators``; every node joins the DHT through its bootstrap peers, looks those keys up and
connects to the providers that the manifest lists (a provider record from anyone else is ignored:
the DHT is open, the manifest is the authority). Lookups repeat quickly until every listed member
is connected, then slowly, and advertisements are renewed because provider records expire.
"""

from __future__ import annotations

import logging

import trio

from flopnet.protocol.errors import FlopnetError
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import peer_id_from_public_key

log = logging.getLogger(__name__)
FAST_S = 2.0
SLOW_S = 30.0
READVERTISE_S = 600.0


def role_key(network_id: str, role: str) -> str:
    """The DHT key under which the members of a role advertise."""
    return f"flopnet/{network_id}/{role}s"


class Discovery:
    """Advertise our roles and keep connections to the manifest's publishers and validators."""

    def __init__(
        self,
        host: P2PHost,
        network_id: str,
        roles: set[str],
        publishers: set[bytes],
        validators: set[bytes],
    ) -> None:
        self.host = host
        self.network_id = network_id
        self.advertised_roles = sorted(roles & {"publisher", "validator"})
        self.members = {
            "publisher": {peer_id_from_public_key(k) for k in publishers},
            "validator": {peer_id_from_public_key(k) for k in validators},
        }
        self.members["publisher"].discard(host.peer_id)
        self.members["validator"].discard(host.peer_id)
        self.found: dict[str, list[str]] = {}
        self.joined = False

    def missing(self) -> set[str]:
        """Listed members we are not connected to."""
        connected = set(self.host.connected_peers())
        return (self.members["publisher"] | self.members["validator"]) - connected

    async def _join(self) -> None:
        for peer in self.host.connected_peers():
            if await self.host.join_dht(peer) > 0:
                self.joined = True
                log.info("joined the DHT through %s", peer)
                return

    async def run(self) -> None:
        """Forever: join, advertise, look up, connect."""
        last_advertised = -READVERTISE_S
        while True:
            if not self.joined:
                await self._join()
            if self.joined and trio.current_time() - last_advertised >= READVERTISE_S:
                for role in self.advertised_roles:
                    ok = await self.host.advertise(role_key(self.network_id, role))
                    log.info("advertised as %s on the DHT: %s", role, ok)
                last_advertised = trio.current_time()
            if self.joined and self.missing():
                await self._look_up()
            await trio.sleep(FAST_S if self.missing() or not self.joined else SLOW_S)

    async def _look_up(self) -> None:
        for role, members in self.members.items():
            providers = await self.host.find_providers(role_key(self.network_id, role))
            for peer_id, addrs in providers.items():
                if peer_id not in members:
                    continue  # only the manifest decides who publishes and validates
                self.found[peer_id] = addrs
                if peer_id in self.host.connected_peers() or not addrs:
                    continue
                try:
                    await self.host.connect_peer(peer_id, addrs)
                    log.info("discovered %s %s on the DHT and connected", role, peer_id)
                except FlopnetError as exc:
                    log.info("discovered %s %s but cannot connect: %s", role, peer_id, exc)
