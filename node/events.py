"""The daemon's event stream: what changed, as it changes, for the API's server-sent events.

Every event has a sequence number, a kind (``control``, ``task``, ``verdict``, ``credit``,
``peers``, ``log``, ``system``, ``status``) and a JSON body. Publishing never blocks and never
fails: each subscriber has a bounded backlog, and one that falls behind is told to ``resync``
(re-read the documents it shows) instead of holding the daemon up. The last events are kept, so
a client that reconnects with ``Last-Event-ID`` misses nothing that is still kept. Used from the
daemon's trio thread only.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import trio

KEEP = 512  # events kept for clients that reconnect
BACKLOG = 256  # events one subscriber may have unread before it is told to resync


@dataclass(frozen=True)
class Event:
    """One change: its sequence number, kind, body and when it was published."""

    seq: int
    kind: str
    data: dict[str, Any]
    at: float

    def sse(self) -> bytes:
        """The event in the server-sent events format."""
        body = json.dumps({"at": self.at, **self.data}, separators=(",", ":"), default=str)
        return f"id: {self.seq}\nevent: {self.kind}\ndata: {body}\n\n".encode()


@dataclass(eq=False)
class Subscription:
    """One listener's unread events; ``lagged`` once it fell more than BACKLOG behind."""

    pending: deque[Event] = field(default_factory=deque)
    lagged: bool = False
    wakeup: trio.Event = field(default_factory=trio.Event)

    def take(self) -> tuple[list[Event], bool]:
        """The unread events and whether some were dropped; both are cleared."""
        events, lagged = list(self.pending), self.lagged
        self.pending.clear()
        self.lagged = False
        self.wakeup = trio.Event()
        return events, lagged


class EventBus:
    """Publish events; subscribers read them at their own pace."""

    def __init__(self, keep: int = KEEP, backlog: int = BACKLOG) -> None:
        self.seq = 0
        self._recent: deque[Event] = deque(maxlen=keep)
        self._subs: set[Subscription] = set()
        self._backlog = backlog
        self.published = 0
        self.dropped = 0

    def publish(self, kind: str, data: dict[str, Any] | None = None) -> Event:
        """Record an event and hand it to every subscriber (never blocks)."""
        self.seq += 1
        event = Event(self.seq, kind, dict(data or {}), round(time.time(), 3))
        self._recent.append(event)
        self.published += 1
        for sub in self._subs:
            if len(sub.pending) >= self._backlog:
                # It fell behind: drop its backlog (it re-reads what it shows) and go on.
                self.dropped += len(sub.pending)
                sub.pending.clear()
                sub.lagged = True
            sub.pending.append(event)
            sub.wakeup.set()
        return event

    def subscribe(self, after: int | None = None) -> Subscription:
        """A new subscription; with ``after`` (a Last-Event-ID) it starts with the kept events
        after that one, or lagged when some of them are no longer kept."""
        sub = Subscription()
        if after is not None and after < self.seq:
            kept = [e for e in self._recent if e.seq > after]
            if not kept or kept[0].seq != after + 1:
                sub.lagged = True
            sub.pending.extend(kept[-self._backlog :])
            sub.wakeup.set()
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def recent(self, kinds: frozenset[str] | None = None, limit: int = 100) -> list[Event]:
        """The last kept events (of ``kinds``), oldest first."""
        out = [e for e in self._recent if kinds is None or e.kind in kinds]
        return out[-limit:]
