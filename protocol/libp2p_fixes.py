"""Workarounds for defects measured in py-libp2p 0.8.1, applied by :mod:`protocol.host`.

Each one names the symptom it prevents; remove it when the library fixes the cause.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
import weakref
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


_OWN_RECORD_TTL = 10.0  # seconds a host's own signed peer record is reused before a re-check
_PEER_RECORD_TTL = 600.0  # seconds before an unchanged record from a peer is consumed again
_SEEN_RECORDS_CAP = 4096  # remembered peers per host before the memo is cleared


def cheapen_gossip_records() -> None:
    """Stop re-doing signed-peer-record work on every gossip RPC (process-wide, idempotent).

    Symptom: each RPC a node sends carries its signed peer record, and py-libp2p rebuilds its
    address list to check that record before every send (about 0.45 ms); each RPC received has
    the sender's record parsed, signature-checked and stored twice, once by ``Pubsub`` and once
    by ``GossipSub`` (about 0.3 ms each). At 100 announcements/s this was a third of a gossip
    node's CPU. Here a host's own record is re-checked at most every ``_OWN_RECORD_TTL`` seconds,
    and a peer's record is consumed again only when it changed or ``_PEER_RECORD_TTL`` passed
    (which also refreshes the addresses' time to live, as every RPC did before).
    """
    from libp2p.pubsub import floodsub, gossipsub, pubsub

    if getattr(pubsub, "_flopnet_cheap_records", False):
        return
    cached = reuse_own_record(pubsub.env_to_send_in_RPC)
    consume = consume_changed_records(pubsub.maybe_consume_signed_record)
    for module in (pubsub, gossipsub, floodsub):
        module.env_to_send_in_RPC = cached  # type: ignore[attr-defined]
        module.maybe_consume_signed_record = consume  # type: ignore[attr-defined]
    pubsub._flopnet_cheap_records = True  # type: ignore[attr-defined]


def skip_recent_message_replay() -> None:
    """Do not hand a newly subscribed peer the whole message cache of the topic (process-wide,
    idempotent).

    Symptom: py-libp2p 0.8 replays every message of a topic's cache window to each peer that
    subscribes (or reconnects and subscribes again), one write per message. Profiled on a
    30-process devnet of one 2-core machine, where starved peers' connections flapped, this
    replay was 18 % of every worker daemon's CPU (py-spy), and the daemons together took both
    cores. Nothing of ours needs it: announcements are fetched from the publisher's log by
    sequence number (a heartbeat carries its head), ledger entries by range from the chains'
    heads, and a heartbeat is only worth its latest value.
    """
    from libp2p.pubsub import pubsub

    if getattr(pubsub, "_flopnet_no_replay", False):
        return

    async def no_replay(self: Any, peer_id: Any, topic: str) -> None:
        return None

    pubsub.Pubsub._replay_recent_messages = no_replay  # type: ignore[method-assign]
    pubsub._flopnet_no_replay = True  # type: ignore[attr-defined]


def reuse_own_record(
    build: Callable[[Any], tuple[bytes, bool]], clock: Callable[[], float] = time.monotonic
) -> Callable[[Any], tuple[bytes, bool]]:
    """Wrap ``env_to_send_in_RPC(host)``: one result per host for ``_OWN_RECORD_TTL`` seconds."""
    own: weakref.WeakKeyDictionary[Any, tuple[float, bytes]] = weakref.WeakKeyDictionary()

    def cached_record(host: Any) -> tuple[bytes, bool]:
        now = clock()
        hit = own.get(host)
        if hit is not None and now - hit[0] < _OWN_RECORD_TTL:
            return hit[1], False
        record, fresh = build(host)
        own[host] = (now, record)
        return record, fresh

    return cached_record


def consume_changed_records(
    consume: Callable[[Any, Any, Any], bool], clock: Callable[[], float] = time.monotonic
) -> Callable[[Any, Any, Any], bool]:
    """Wrap ``maybe_consume_signed_record(rpc, host, peer)``: skip a record already accepted.

    A record byte-identical to the last one accepted from the same peer, within
    ``_PEER_RECORD_TTL`` seconds, is answered "valid" without parsing; anything else (a new
    record, a rejected one, an RPC without one) goes to ``consume`` as before.
    """
    accepted: weakref.WeakKeyDictionary[Any, dict[Any, tuple[bytes, float]]] = (
        weakref.WeakKeyDictionary()
    )

    def consume_once(rpc: Any, host: Any, peer_id: Any) -> bool:
        if not rpc.HasField("senderRecord"):
            return True
        record: bytes = rpc.senderRecord
        now = clock()
        seen = accepted.setdefault(host, {})
        last = seen.get(peer_id)
        if last is not None and last[0] == record and now - last[1] < _PEER_RECORD_TTL:
            return True
        ok = bool(consume(rpc, host, peer_id))
        if ok:
            if len(seen) >= _SEEN_RECORDS_CAP:
                seen.clear()
            seen[peer_id] = (record, now)
        return ok

    return consume_once


def batch_yamux_window_updates() -> None:
    """Credit a Yamux stream's window once half of it has been read, as go-yamux does.

    Symptom: py-libp2p 0.8.1 sends a WINDOW_UPDATE frame (one more encrypted write) after
    nearly every read, crediting the few hundred bytes just read, so a gossip node wrote about
    two control frames per message it received. Here an update is sent only when the bytes read
    since the last one reach half the target window (the window's auto-tuning is kept), which
    is go-yamux's ``sendWindowUpdate`` rule. A reader that has consumed half a window always
    sends one, so a blocked writer is always released.
    """
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    if getattr(YamuxStream, "_flopnet_batched_updates", False):
        return

    async def update_window(self: Any, *, bytes_read: int = 0) -> None:
        del bytes_read  # the credit is computed from the window itself
        async with self.window_lock:
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            if self.target_recv_window - (self.recv_window + buffered) < self._grow_threshold():
                return
            delta = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
        if delta > 0:
            await self.send_window_update(delta, skip_lock=True)

    YamuxStream._auto_tune_and_send_window_update = update_window  # type: ignore[method-assign]
    YamuxStream._flopnet_batched_updates = True  # type: ignore[attr-defined]
