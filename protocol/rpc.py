"""How one request/response stream protocol is declared: its id, records, caps and deadline.

Every stream of the network is one :class:`Rpc` (listed in :mod:`flopnet.protocol.catalog`), and
:meth:`flopnet.protocol.host.P2PHost.call` / :meth:`~flopnet.protocol.host.P2PHost.serve` are the
one path that seals a request, opens the answer as one of the declared records and checks who
signed it; nothing else in the node hand-repeats that.
"""

from __future__ import annotations

from dataclasses import dataclass

from flopnet.protocol.codec import Record
from flopnet.protocol.messages import MAX_ENVELOPE_BYTES, Refusal


@dataclass(frozen=True)
class StreamLimits:
    """Size caps and the deadline of one request/response protocol."""

    max_request: int
    max_response: int
    timeout: float = 10.0
    # Requests one peer may open per second on this protocol, and its burst (None: the guard's
    # stream budget). Over it the peer is told to slow down, unread, and charged.
    budget: RequestBudget | None = None


@dataclass(frozen=True)
class RequestBudget:
    """What one peer may ask of a stream protocol: a sustained rate and a burst (requests)."""

    rate_per_s: float
    burst: float


@dataclass(frozen=True)
class GossipBudget:
    """What one author may publish on a gossip topic: a sustained rate and a burst (messages)."""

    rate_per_s: float
    burst: float


# The default for a topic without its own: generous, for publishers' bursts of announcements.
DEFAULT_GOSSIP_BUDGET = GossipBudget(rate_per_s=500.0, burst=2000.0)


@dataclass(frozen=True)
class Rpc:
    """One stream protocol: a signed ``request`` record answered by one of ``responses``.

    The size caps are the envelope caps of the records (checked before anything is parsed) and
    ``timeout`` bounds the whole exchange, so a frozen peer cannot hold a stream open.
    """

    protocol_id: str
    request: type[Record]
    responses: tuple[type[Record], ...]
    timeout: float
    budget: RequestBudget | None = None  # None: the guard's stream budget

    @property
    def limits(self) -> StreamLimits:
        return StreamLimits(
            max_request=MAX_ENVELOPE_BYTES[self.request.TYPE],
            max_response=max(MAX_ENVELOPE_BYTES[r.TYPE] for r in self.responses),
            timeout=self.timeout,
            budget=self.budget,
        )

    @property
    def may_refuse(self) -> bool:
        """Whether a :class:`~flopnet.protocol.messages.Refusal` is one of the answers."""
        return Refusal in self.responses


def refusal(code: str, reason: str) -> Refusal:
    """A signed-to-be refusal with its machine-readable code and a human reason."""
    return Refusal(version=1, code=code, reason=reason[:512])
