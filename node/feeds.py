"""The daemon's background feeds into its event stream and view.

* peers: the connected set and liveness states, published as a ``peers`` event when they
  change, and each connected peer's round-trip time (libp2p ping) every few seconds;
* logs: new log lines, batched every quarter second as ``log`` events;
* system: a machine sample (GPUs or CPU/RAM) every second as a ``system`` event;
* status: the state badge, as a ``status`` event when it changes (and every few seconds).

Everything else that changes (control, tasks, verdicts, credits) is published where it happens.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import trio

from flopnet.protocol.errors import FlopnetError

if TYPE_CHECKING:
    from flopnet.node.view import NodeView

log = logging.getLogger(__name__)
PEERS_S = 1.0
PING_S = 5.0
LOGS_S = 0.25
SYSTEM_S = 1.0
STATUS_S = 1.0
STATUS_REPEAT_S = 5.0


async def run_feeds(view: NodeView) -> None:
    """Run every feed until cancelled."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_peers, view)
        nursery.start_soon(_pings, view)
        nursery.start_soon(_logs, view)
        nursery.start_soon(_system, view)
        nursery.start_soon(_status, view)


async def _peers(view: NodeView) -> None:
    p = view.p
    last: tuple[object, ...] = ()
    while True:
        connected = tuple(sorted(p.host.connected_peers()))
        states = tuple(sorted((r.peer_id, r.state.value) for r in p.liveness.table.records()))
        if (connected, states) != last:
            last = (connected, states)
            p.bus.publish("peers", {"connected": len(connected), "states": dict(states)})
        await trio.sleep(PEERS_S)


async def _pings(view: NodeView) -> None:
    p = view.p
    while True:
        for peer in p.host.connected_peers():
            try:
                p.latency[peer] = await p.host.ping(peer, timeout=2.0)
            except FlopnetError as exc:
                log.debug("ping %s: %s", peer, exc)
                p.latency.pop(peer, None)
        for peer in set(p.latency) - set(p.host.connected_peers()):
            p.latency.pop(peer, None)
        await trio.sleep(PING_S)


async def _logs(view: NodeView) -> None:
    p = view.p
    seen = 0
    while True:
        lines = p.logbook.since(seen)
        if lines:
            seen = lines[-1].seq
            p.bus.publish("log", {"lines": [line.to_json() for line in lines[-200:]]})
        await trio.sleep(LOGS_S)


async def _system(view: NodeView) -> None:
    p = view.p
    while True:
        sample = await trio.to_thread.run_sync(p.monitor.sample)
        p.bus.publish("system", asdict(sample))
        await trio.sleep(SYSTEM_S)


async def _status(view: NodeView) -> None:
    p = view.p
    last: dict[str, object] = {}
    sent = 0.0
    while True:
        state = view.status()["state"]
        now = time.monotonic()
        if state != last or now - sent >= STATUS_REPEAT_S:
            last, sent = state, now
            p.bus.publish("status", state)
        await trio.sleep(STATUS_S)
