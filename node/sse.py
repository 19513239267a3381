"""Server-sent events from the daemon's :class:`~flopnet.node.events.EventBus`.

One subscription per client; events go out as they are published (no polling). A client that
reconnects sends ``Last-Event-ID`` and first gets what it missed, or a ``resync`` event when
some of it is no longer kept (or it fell behind): it then re-reads the documents it shows. A
comment line every ``KEEPALIVE_S`` keeps idle connections (and SSH tunnels) open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio
from starlette.responses import StreamingResponse

from flopnet.node.events import EventBus

KEEPALIVE_S = 15.0
RETRY_MS = 1000


async def _events(
    bus: EventBus, after: int | None, kinds: frozenset[str] | None
) -> AsyncIterator[bytes]:
    sub = bus.subscribe(after)
    try:
        yield f"retry: {RETRY_MS}\n: flopnet events from {bus.seq}\n\n".encode()
        while True:
            idle = True
            with trio.move_on_after(KEEPALIVE_S):
                await sub.wakeup.wait()
                idle = False
            events, lagged = sub.take()
            if lagged:
                yield f"id: {bus.seq}\nevent: resync\ndata: {{}}\n\n".encode()
            chunk = b"".join(e.sse() for e in events if kinds is None or e.kind in kinds)
            if chunk:
                yield chunk
            elif idle:  # only a quiet stream needs a sign of life
                yield b": keepalive\n\n"
    finally:
        bus.unsubscribe(sub)


def event_stream(
    bus: EventBus, last_event_id: str | None, kinds: frozenset[str] | None = None
) -> StreamingResponse:
    """The streaming response of ``/events`` (``kinds`` None: every kind)."""
    after = None
    if last_event_id and last_event_id.isdigit() and len(last_event_id) < 20:
        after = int(last_event_id)
    return StreamingResponse(
        _events(bus, after, kinds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
