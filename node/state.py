"""The state badge every TUI screen shows, with the reason behind it (pure).

From what the node knows now (roles, peers, the contributor's control, the roles' phases) to
one short badge ("paused (schedule)", "offline: no bootstrap peer reachable", "waiting for
tasks", "all validated") and a sentence that says why, in the order a contributor needs them:
connectivity first, then their own choices, then what the roles are doing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CONNECT_GRACE_S = 10.0  # a node this young without peers is connecting, not offline


@dataclass(frozen=True)
class Badge:
    text: str
    why: str
    level: str  # ok, busy, idle, warn, error

    def to_json(self) -> dict[str, str]:
        return {"badge": self.text, "why": self.why, "level": self.level}


def node_badge(status: dict[str, Any]) -> Badge:
    """The badge of a node from its ``/status`` document (the fields it already has)."""
    roles = set(status.get("roles") or ())
    peers = len(status.get("peers") or ())
    uptime = float(status.get("uptime_s") or 0.0)
    bootstrap = int(status.get("bootstrap_peers") or 0)
    control = (status.get("control") or {}).get("effective") or {}
    worker = status.get("worker") or {}
    publisher = status.get("publisher") or {}
    validator = status.get("validator") or {}
    if peers == 0 and roles != {"relay"}:
        if uptime < CONNECT_GRACE_S:
            return Badge("connecting", "dialing the bootstrap peers", "busy")
        if bootstrap:
            why = f"none of the {bootstrap} bootstrap peer(s) answers; check the address and "
            why += "this machine's connection (the node keeps re-dialing)"
            return Badge("offline: no bootstrap peer reachable", why, "error")
        if "worker" in roles:
            return Badge("offline: no peers", "no bootstrap peer was given (--bootstrap)", "error")
    if publisher.get("all_done"):
        tasks = publisher.get("tasks", 0)
        return Badge("all validated", f"every sample of the {tasks} task(s) is validated", "ok")
    if "worker" in roles and control:
        state = control.get("state")
        if state in ("paused", "finishing", "holding"):
            level = "warn" if state == "paused" else "busy"
            text = control.get("badge", state)
            if state == "finishing":
                text = "finishing, then pausing"
            return Badge(str(text), str(control.get("why", "")), level)
    if "worker" in roles and worker:
        return _worker_badge(worker)
    if "validator" in roles and validator:
        queued = int(validator.get("queued") or 0)
        if queued:
            return Badge("validating", f"{queued} submission(s) queued", "busy")
    if "publisher" in roles and publisher:
        s = publisher.get("samples") or {}
        why = f"{s.get('open', 0)} open, {s.get('leased', 0)} leased, {s.get('done', 0)} done"
        return Badge("publishing", why, "busy")
    if "validator" in roles:
        return Badge("idle", "no submission queued", "idle")
    return Badge("running", f"{peers} peer(s) connected", "ok")


def _worker_badge(worker: dict[str, Any]) -> Badge:
    phase = worker.get("phase", "idle")
    in_flight = int(worker.get("in_flight") or 0)
    if phase == "generating":
        return Badge("working", f"generating {in_flight} lease(s)", "busy")
    if phase in ("submitting", "awaiting_verdict"):
        return Badge("awaiting verdict", f"{in_flight} result(s) with the validator", "busy")
    if not worker.get("known_tasks"):
        return Badge(
            "waiting for tasks", "no open task announced by the network's publishers", "idle"
        )
    refusals = worker.get("refusals") or {}
    if refusals:
        code = max(refusals, key=lambda c: refusals[c])
        return Badge("waiting for a lease", f"claims refused, mostly: {code}", "idle")
    return Badge("waiting for a lease", "claiming an announced task", "idle")
