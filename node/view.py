"""What a running node shows: the documents its local API serves, assembled from its parts.

:class:`NodeParts` holds the daemon's pieces (roles, host, ledger, control, monitor, ...);
:class:`NodeView` reads them into plain JSON documents: status with its state badge, the
worker's tasks with their stages, verdicts with every measured value beside its threshold,
the contributor's credits (pending, final, voided and why), peers, leaderboard, logs and the
machine. The validator's and the setup screen's documents are in
:mod:`flopnet.node.view_health`. Everything runs on the daemon's trio thread, where the ledger's
SQLite connection lives; nothing here writes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from flopnet.ledger.credits import STATES, contributor_credits
from flopnet.node.api import StateError
from flopnet.node.api_schema import ApiError
from flopnet.node.explain import explain_credit, explain_verdict, measures, why_no_credit
from flopnet.node.logbook import select
from flopnet.node.state import node_badge
from flopnet.node.worker.board import TaskBoard

if TYPE_CHECKING:
    from flopnet.ledger.store import LedgerStore
    from flopnet.node.config import NodeConfig
    from flopnet.node.controller import Controller
    from flopnet.node.events import EventBus
    from flopnet.node.ledger_sync import LedgerSync
    from flopnet.node.liveness import Liveness
    from flopnet.node.logbook import LogBook
    from flopnet.node.model.service import ModelService
    from flopnet.node.monitor import Monitor
    from flopnet.node.publisher.publisher import Publisher
    from flopnet.node.validator.validator import Validator
    from flopnet.node.worker.worker import Worker
    from flopnet.protocol.host import P2PHost
    from flopnet.protocol.identity import Identity
    from flopnet.verifiers.pool import VerifierPool


@dataclass
class NodeParts:
    """The running daemon's pieces that the view reads."""

    config: NodeConfig
    identity: Identity
    roles: frozenset[str]
    started: float
    host: P2PHost
    liveness: Liveness
    store: LedgerStore
    ledger_sync: LedgerSync
    bus: EventBus
    logbook: LogBook
    monitor: Monitor
    control: Controller | None = None
    model: ModelService | None = None
    publisher: Publisher | None = None
    validator: Validator | None = None
    worker: Worker | None = None
    pool: VerifierPool | None = None
    network_state: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)  # peer id -> ping RTT (s)


class NodeView:
    """The node's documents (see the module's docstring)."""

    def __init__(self, parts: NodeParts) -> None:
        self.p = parts
        self._tokenizer: Any = None

    @property
    def board(self) -> TaskBoard | None:
        return self.p.worker.board if self.p.worker is not None else None

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The one-document summary (``/status``), with the state badge and why."""
        p, now = self.p, time.time()
        net = p.config.network
        model = p.model
        doc: dict[str, Any] = {
            "peer_id": p.identity.peer_id,
            "public_key": p.identity.public_key.hex(),
            "roles": sorted(p.roles),
            "network_id": net.network_id,
            "uptime_s": round(now - p.started, 1),
            "peers": p.host.connected_peers(),
            "bootstrap_peers": len({*p.config.bootstrap, *net.bootstrap}),
            "peer_table": p.liveness.table.snapshot(now),
            "reachable": p.network_state.get("reachable"),
            "relayed_addrs": p.network_state.get("relayed_addrs", []),
            "penalties": p.host.guard.snapshot(now),
            "model": None if model is None or model.info is None else asdict(model.info),
            "model_process": self.model_process(),
            "publisher": p.publisher.snapshot() if p.publisher else None,
            "validator": p.validator.snapshot() if p.validator else None,
            "worker": p.worker.snapshot() if p.worker else None,
            "ledger": p.ledger_sync.snapshot(),
            "control": p.control.snapshot() if p.control else None,
            "events": {"seq": p.bus.seq, "subscribers": p.bus.subscribers},
        }
        doc["state"] = node_badge(doc).to_json()
        return doc

    def model_process(self) -> dict[str, Any] | None:
        model = self.p.model
        if model is None:
            return None
        restarts = model.restarts
        return {
            "alive": model.alive,
            "pid": model.pid,
            "busy": model.busy,
            "restarts": restarts,
            "devices": list(model.devices) if model.devices is not None else None,
        }

    # -- the worker's tasks --------------------------------------------------------------------

    def tasks(self, stage: str | None, limit: int) -> dict[str, Any]:
        board = self.board
        if board is None:
            return {"tasks": [], "by_stage": {}, "worker": False}
        if stage == "in_flight":
            entries = board.in_flight()
        else:
            entries = board.entries(None if stage is None else [stage])
        return {
            "tasks": [e.summary() for e in entries[:limit]],
            "by_stage": board.by_stage(),
            "worker": True,
        }

    def task(self, lease_id: str) -> dict[str, Any]:
        board = self.board
        entry = board.get(lease_id) if board is not None else None
        if entry is None:
            raise ApiError(404, f"no task with lease id {lease_id!r} on this node", "lease_id")
        out = entry.detail()
        out["prompt"] = self._decode(entry.prompt_ids)
        out["measures"] = [asdict(m) for m in measures(entry.reasons)]
        if entry.accepted is not None:
            out["explanation"] = explain_verdict(
                entry.accepted, entry.reasons, entry.flops
            ).to_json()
        return out

    def _decode(self, ids: tuple[int, ...]) -> str:
        if self._tokenizer is None:
            from flopnet.node.model.tokenizer import tokenizer_for_model

            try:
                self._tokenizer = tokenizer_for_model(self.p.config.network.model)
            except Exception:  # a tokenizer that cannot load here: show the ids' count only
                self._tokenizer = False
        if not self._tokenizer:
            return f"({len(ids)} prompt tokens)"
        return str(self._tokenizer.decode(list(ids)))

    def verdicts(self, limit: int) -> dict[str, Any]:
        """The worker's verdicts, newest first, each with its measures and explanation."""
        board = self.board
        rows = []
        for e in board.entries(["verdict"]) if board is not None else []:
            rows.append(
                {
                    **e.summary(),
                    "reasons": list(e.reasons),
                    "answer_score": e.answer_score,
                    "ledger_seq": e.ledger_seq,
                    "measures": [asdict(m) for m in measures(e.reasons)],
                    "explanation": explain_verdict(bool(e.accepted), e.reasons, e.flops).to_json(),
                }
            )
        return {"verdicts": rows[:limit]}

    # -- credits -------------------------------------------------------------------------------

    def _credits(self, limit: int) -> list[dict[str, Any]]:
        net = self.p.config.network
        records = contributor_credits(
            self.p.store,
            self.p.identity.public_key,
            validators=sorted(net.validator_keys) or None,
            lock_window=net.lock_window_seconds,
            limit=limit,
        )
        return [r.to_json() for r in records]

    def credits(self, state: str | None, limit: int) -> dict[str, Any]:
        """This node's own credits (as a contributor), newest first, with explanations."""
        rows = self._credits(10_000)
        summary = _summary(rows)
        shown = [
            {**c, "explanation": explain_credit(c).to_json()}
            for c in rows
            if state is None or c["state"] == state
        ]
        return {
            "contributor": self.p.identity.public_key.hex(),
            "lock_window_s": self.p.config.network.lock_window_seconds,
            "summary": summary,
            "flops_per_day": per_day(rows, time.time()),
            "credits": shown[:limit],
        }

    def why(self, limit: int) -> dict[str, Any]:
        """Every rejected or voided result, in plain words, with evidence and advice."""
        rows = why_no_credit(self._credits(10_000))
        return {"count": len(rows), "items": rows[:limit]}

    # -- network -------------------------------------------------------------------------------

    def peers(self) -> dict[str, Any]:
        p, now = self.p, time.time()
        links = p.host.peer_links()
        table = {r["peer_id"]: r for r in p.liveness.table.snapshot(now)}
        rows = []
        # Our own heartbeats come back to us on the topic: we are not our own peer.
        for peer_id in sorted((set(table) | set(links)) - {p.identity.peer_id}):
            record = table.get(peer_id, {})
            link = links.get(peer_id)
            rtt = p.latency.get(peer_id)
            rows.append(
                {
                    "peer_id": peer_id,
                    "roles": record.get("roles", []),
                    "state": record.get("state", "connected" if link else "unknown"),
                    "connected": link is not None,
                    "relayed": bool(link and link["relayed"]),
                    "addrs": link["addrs"] if link else [],
                    "latency_ms": round(rtt * 1000, 2) if rtt is not None else None,
                    "silent_s": record.get("silent_s"),
                    "software": record.get("software", ""),
                    "gpus": record.get("gpus", 0),
                    "load": record.get("load", 0.0),
                }
            )
        return {
            "self": {
                "peer_id": p.identity.peer_id,
                "addrs": p.host.addrs(),
                "reachable": p.network_state.get("reachable"),
                "relayed_addrs": p.network_state.get("relayed_addrs", []),
            },
            "peers": rows,
            "penalties": p.host.guard.snapshot(now),
        }

    def leaderboard(self, window: str, limit: int) -> list[dict[str, Any]]:
        """Ranked contributors in a window (24h, 7d, all); this node's own row is marked
        ``you`` and always included (after the top ``limit`` when it ranks lower)."""
        from flopnet.ledger.leaderboard import WINDOWS, leaderboard, to_json

        net = self.p.config.network
        span = WINDOWS[window]
        since = None if span is None else time.time() - span
        rows = to_json(
            leaderboard(
                self.p.store,
                net.validator_keys or None,
                since,
                limit=10_000,
                lock_window=net.lock_window_seconds,
            )
        )
        me = self.p.identity.public_key.hex()
        for row in rows:
            row["you"] = row["contributor"] == me
        shown = rows[:limit]
        shown += [r for r in rows[limit:] if r["you"]]
        return shown

    # -- logs, configuration, machine ----------------------------------------------------------

    def logs(self, level: str, text: str, limit: int) -> dict[str, Any]:
        lines = select(self.p.logbook.lines(), level=level, text=text, limit=limit)
        return {"lines": [line.to_json() for line in lines]}

    def system(self) -> dict[str, Any]:
        return self.p.monitor.snapshot()

    def control(self) -> dict[str, Any]:
        if self.p.control is None:
            raise StateError("this node has no worker role: there is nothing to pause")
        return self.p.control.snapshot()


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """FLOPs and counts by credit state (the JSON rows of ``ledger.credits``)."""
    out: dict[str, Any] = {state: {"count": 0, "flops": 0} for state in STATES}
    for row in rows:
        out[row["state"]]["count"] += 1
        out[row["state"]]["flops"] += row["flops"]
    return out


def per_day(rows: list[dict[str, Any]], now: float, days: int = 14) -> list[dict[str, Any]]:
    """Credited FLOPs (pending and final, not voided) per UTC day, the last ``days`` days."""
    today = int(now // 86400)
    sums = dict.fromkeys(range(today - days + 1, today + 1), 0)
    for row in rows:
        day = int(row["timestamp"] // 86400)
        if day in sums and row["state"] in ("pending", "final"):
            sums[day] += row["flops"]
    return [
        {"day": time.strftime("%Y-%m-%d", time.gmtime(d * 86400)), "flops": f}
        for d, f in sums.items()
    ]
