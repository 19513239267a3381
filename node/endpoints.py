"""The daemon's API endpoints: which document each path serves, and the commands.

Declared once (:class:`~flopnet.node.api_schema.Endpoint`): the API checks every request
against these declarations and builds ``/openapi.json`` from them; ``docs/api.md`` lists them
(a test keeps it true).
Reads come from :class:`~flopnet.node.view.NodeView`; commands go to the
:class:`~flopnet.node.controller.Controller` (a node without the worker role has nothing to
pause: 409).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flopnet.node.api import StateError
from flopnet.node.api_schema import Call, Endpoint, Param
from flopnet.node.logbook import LEVELS
from flopnet.node.metrics import metrics_response
from flopnet.node.sse import event_stream
from flopnet.node.view_health import configuration, health, validator_view
from flopnet.node.worker.board import STAGES

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from flopnet.node.controller import Controller
    from flopnet.node.view import NodeView

EVENT_KINDS = ("control", "task", "verdict", "credit", "peers", "log", "system", "status")


def _limit(default: int, most: int) -> Param:
    return Param("limit", "int", "rows at most", default=default, minimum=1, maximum=most)


def endpoints(view: NodeView, registry: CollectorRegistry) -> list[Endpoint]:
    """Every endpoint of a node's local API."""
    p = view.p

    def control() -> Controller:
        if p.control is None:
            raise StateError("this node has no worker role: there is nothing to pause or resume")
        return p.control

    def pause(call: Call) -> dict[str, Any]:
        if call.body["mode"] == "now":
            return control().pause_now()
        return control().finish_then_pause()

    def events(call: Call) -> Any:
        kinds = call.query["kinds"]
        wanted = None
        if kinds:
            wanted = frozenset(k for k in kinds.split(",") if k)
            unknown = sorted(wanted - set(EVENT_KINDS))
            if unknown:
                from flopnet.node.api_schema import ApiError

                raise ApiError(400, f"unknown event kind {unknown[0]!r}", "kinds")
        return event_stream(p.bus, call.headers.get("last-event-id"), wanted)

    stage = Param("stage", "enum", "only leases at this stage", choices=(*STAGES, "in_flight"))
    window = Param("window", "enum", "time window", default="all", choices=("24h", "7d", "all"))
    credit_state = Param(
        "state",
        "enum",
        "only credits in this state",
        choices=("pending", "final", "void", "rejected"),
    )
    return [
        Endpoint(
            "GET",
            "/status",
            "the node in one document, with its state badge and why",
            lambda c: view.status(),
        ),
        Endpoint(
            "GET",
            "/tasks",
            "the worker's leases with their stages, newest first",
            lambda c: view.tasks(c.query["stage"], c.query["limit"]),
            query=(stage, _limit(100, 500)),
            tag="worker",
        ),
        Endpoint(
            "GET",
            "/tasks/{lease_id}",
            "one lease: prompt, output, proofs, verdict values beside thresholds",
            lambda c: view.task(c.path["lease_id"]),
            tag="worker",
        ),
        Endpoint(
            "GET",
            "/verdicts",
            "the worker's verdicts with every measure and its threshold",
            lambda c: view.verdicts(c.query["limit"]),
            query=(_limit(50, 200),),
            tag="worker",
        ),
        Endpoint(
            "GET",
            "/credits",
            "this node's credits as a contributor: pending, final, voided and why",
            lambda c: view.credits(c.query["state"], c.query["limit"]),
            query=(credit_state, _limit(100, 1000)),
            tag="credits",
        ),
        Endpoint(
            "GET",
            "/why",
            "every rejected or voided result in plain words, with advice",
            lambda c: view.why(c.query["limit"]),
            query=(_limit(50, 500),),
            tag="credits",
        ),
        Endpoint(
            "GET",
            "/peers",
            "peers: roles, state, latency, direct or relayed",
            lambda c: view.peers(),
            tag="network",
        ),
        Endpoint(
            "GET",
            "/leaderboard",
            "contributors ranked by credited FLOPs, yours pinned",
            lambda c: view.leaderboard(c.query["window"], c.query["limit"]),
            query=(window, _limit(100, 1000)),
            tag="network",
        ),
        Endpoint(
            "GET",
            "/logs",
            "the node's recent log lines",
            lambda c: view.logs(c.query["level"], c.query["q"], c.query["limit"]),
            query=(
                Param("level", "enum", "this level and above", default="INFO", choices=LEVELS),
                Param("q", "str", "text the line holds", default="", max_len=200),
                _limit(200, 2000),
            ),
            tag="node",
        ),
        Endpoint(
            "GET",
            "/config",
            "the node's settings and the network's parameters",
            lambda c: configuration(p),
        ),
        Endpoint(
            "GET",
            "/health",
            "setup and health: identity, manifest, model, GPUs, sandbox, disk, clock",
            lambda c: health(p, view.model_process()),
        ),
        Endpoint(
            "GET",
            "/validator",
            "a validator's queue, audit rates, rejections, sandbox and model health",
            lambda c: validator_view(p, view.model_process()),
            tag="validator",
        ),
        Endpoint(
            "GET",
            "/system",
            "GPU (NVML) or CPU and RAM use, with recent history",
            lambda c: view.system(),
        ),
        Endpoint(
            "GET",
            "/events",
            "server-sent events as the node's state changes",
            events,
            query=(Param("kinds", "str", "comma-separated kinds", default=""),),
            stream=True,
        ),
        Endpoint(
            "GET", "/metrics", "Prometheus metrics", lambda c: metrics_response(registry), text=True
        ),
        Endpoint(
            "GET",
            "/control",
            "the contributor's settings and the node's working state",
            lambda c: control().snapshot(),
            tag="control",
        ),
        Endpoint(
            "POST",
            "/control/pause",
            "pause: now (hand the leases back at once) or finish (the work in hand) first",
            pause,
            body=(
                Param("mode", "enum", "now or finish", required=True, choices=("now", "finish")),
            ),
            tag="control",
        ),
        Endpoint(
            "POST",
            "/control/resume",
            "end a manual pause",
            lambda c: control().resume(),
            body=(),
            tag="control",
        ),
        Endpoint(
            "PUT",
            "/control/schedule",
            "work only in these local hours (null: always)",
            lambda c: control().set_schedule(c.body["schedule"]),
            body=(
                Param(
                    "schedule",
                    "str",
                    "like 22:00-08:00 (comma-separated windows)",
                    required=True,
                    nullable=True,
                    max_len=120,
                ),
            ),
            tag="control",
        ),
        Endpoint(
            "PUT",
            "/control/gpus",
            "run the model on these GPUs (null: all); the model process restarts",
            lambda c: control().set_gpus(c.body["gpus"]),
            body=(
                Param(
                    "gpus",
                    "int_list",
                    "GPU indices as NVML numbers them",
                    required=True,
                    nullable=True,
                    minimum=0,
                    maximum=1023,
                ),
            ),
            tag="control",
        ),
        Endpoint(
            "PUT",
            "/control/batch-size",
            "leases generated together, from the next batch",
            lambda c: control().set_batch_size(c.body["batch_size"]),
            body=(
                Param(
                    "batch_size",
                    "int",
                    "1..the publisher's lease limit",
                    required=True,
                    minimum=1,
                    maximum=256,
                ),
            ),
            tag="control",
        ),
    ]
