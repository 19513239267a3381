"""Workarounds for defects measured in py-libp2p 0.8.1, applied by :mod:`protocol.host`.

Each one names the symptom it prevents; remove it when the library fixes the cause.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


def guard_pubsub_reads(pubsub: Any, on_bad_stream: Callable[[str], Awaitable[None]]) -> None:
    """Reset a gossip stream that sends an undecodable RPC instead of dying with it.

    Symptom: an exception in ``Pubsub.continuously_read_stream`` (for example protobuf's
    DecodeError on one malformed frame) escapes the connection's nursery, stops the swarm and ends
    the host: one bad frame from any peer took the whole node down.
    """
    read = pubsub.continuously_read_stream

    async def guarded(stream: Any) -> None:
        try:
            await read(stream)
        except Exception as exc:
            peer = ""
            with contextlib.suppress(Exception):
                peer = str(stream.muxed_conn.peer_id)
            log.warning("gossip stream from %s failed: %s: %s", peer, type(exc).__name__, exc)
            with contextlib.suppress(Exception):
                await stream.reset()
            if peer:
                await on_bad_stream(peer)

    pubsub.continuously_read_stream = guarded


class _InboundClosed(Exception):
    """Ends the library's inbound-connection handler once its connection has closed."""


_IN_INBOUND_HANDLER: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "flopnet_in_inbound_handler", default=False
)


def release_closed_inbound_connections(swarm: Any) -> None:
    """Give back the inbound slot (and task) of every connection once it closes.

    Symptom: ``Swarm._do_handle_inbound_connection`` parks each accepted connection's task until
    the swarm shuts down while holding one of its 250 inbound slots, so after 250 inbound
    connections in a process's life every new one was refused (and each leaked ~11 KB). Here the
    upgrade, when called from that handler, waits for its connection to close and then raises,
    so the handler returns and its ``finally`` releases the slot.
    """
    handle = swarm._handle_inbound_connection
    upgrade = swarm.upgrade_inbound_raw_conn

    async def handle_marked(read_write_closer: Any, maddr: Any) -> None:
        _IN_INBOUND_HANDLER.set(True)  # trio gives each task its own copy of the context
        await handle(read_write_closer, maddr)

    async def upgrade_then_wait(raw_conn: Any, maddr: Any) -> Any:
        muxed = await upgrade(raw_conn, maddr)
        closed = getattr(muxed, "event_closed", None)
        if not _IN_INBOUND_HANDLER.get() or closed is None:
            return muxed  # other callers (hole punching) need the connection back
        await closed.wait()
        raise _InboundClosed("inbound connection closed")

    swarm._handle_inbound_connection = handle_marked
    swarm.upgrade_inbound_raw_conn = upgrade_then_wait
