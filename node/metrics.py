"""Prometheus ``/metrics``: the node's counters, read from its parts at each scrape.

A custom collector (``prometheus_client``) turns the roles' snapshots into metric families, so
nothing is counted twice and no role imports the client: tokens generated and checked, tasks
by stage, verdicts by reason, queue depths, audit rates, peers, model-process restarts, and
the generation, proof and audit timings as histograms. Served on the API (with the token) and,
if the operator asks (``--metrics-port``), on a token-free listener of its own, bound to
127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flopnet.node.counters import Timings

if TYPE_CHECKING:
    from flopnet.node.view import NodeView

PREFIX = "flopnet"


class NodeCollector:
    """Reads a :class:`~flopnet.node.view.NodeView` at scrape time."""

    def __init__(self, view: NodeView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        p = self.view.p
        yield _gauge("up_seconds", "seconds since the node started", time.time() - p.started)
        peers = GaugeMetricFamily(f"{PREFIX}_peers", "peers by liveness state", labels=["state"])
        states: dict[str, int] = {}
        for record in p.liveness.table.records():
            states[record.state.value] = states.get(record.state.value, 0) + 1
        for state in ("healthy", "unhealthy", "gone"):
            peers.add_metric([state], states.get(state, 0))
        yield peers
        yield _gauge(
            "peers_connected", "peers with an open connection", len(p.host.connected_peers())
        )
        if p.worker is not None:
            yield from self._worker(p.worker)
        if p.validator is not None:
            yield from self._validator(p.validator)
        if p.publisher is not None:
            samples = GaugeMetricFamily(
                f"{PREFIX}_publisher_samples", "task samples by state", labels=["state"]
            )
            for state, count in p.publisher.book.counts().items():
                samples.add_metric([state], count)
            yield samples
            yield _counter(
                "publisher_leases_released",
                "leases handed back by their workers",
                p.publisher.stats.leases_released,
            )
        if p.model is not None:
            yield _counter("model_restarts", "model-process restarts", p.model.restarts)
            yield _gauge("model_alive", "1 while the model process runs", int(p.model.alive))
        if p.control is not None:
            effective = p.control.effective()
            paused = GaugeMetricFamily(
                f"{PREFIX}_paused", "1 while the worker is paused", labels=["reason"]
            )
            paused.add_metric([effective.reason or "none"], int(effective.state == "paused"))
            yield paused
        yield _counter("events_published", "events on the API's stream", p.bus.published)

    def _worker(self, worker: Any) -> Iterator[Metric]:
        s = worker.stats
        yield _counter("tokens_generated", "tokens this worker generated", s.tokens_generated)
        yield _counter("worker_leases_released", "leases handed back unfinished", s.released)
        stages = GaugeMetricFamily(
            f"{PREFIX}_tasks",
            "the worker's leases by stage (finished ones as kept)",
            labels=["stage"],
        )
        for stage, count in worker.board.by_stage().items():
            stages.add_metric([stage], count)
        yield stages
        verdicts = CounterMetricFamily(
            f"{PREFIX}_worker_verdicts", "verdicts on this worker's results", labels=["accepted"]
        )
        verdicts.add_metric(["true"], s.accepted)
        verdicts.add_metric(["false"], s.rejected)
        yield verdicts
        yield _counter("worker_flops_credited", "FLOPs the validators credited", s.flops_credited)
        yield from _histograms(worker.timings, "worker")

    def _validator(self, validator: Any) -> Iterator[Metric]:
        s = validator.stats
        yield _counter("tokens_checked", "tokens this validator checked", s.tokens_checked)
        yield _gauge("validator_queue", "submissions queued", validator.inbox.queue_length())
        by_reason = CounterMetricFamily(
            f"{PREFIX}_verdicts", "verdicts given, by reason", labels=["reason"]
        )
        for reason, count in sorted(s.verdicts_by_reason.items()):
            by_reason.add_metric([reason], count)
        yield by_reason
        audits = CounterMetricFamily(f"{PREFIX}_audits", "audits made", labels=["passed"])
        audits.add_metric(["true"], s.audits - s.audits_failed)
        audits.add_metric(["false"], s.audits_failed)
        yield audits
        yield _counter("unaudited", "submissions credited without an audit", s.unaudited)
        rate = GaugeMetricFamily(
            f"{PREFIX}_audit_rate", "the audit probability per contributor", labels=["contributor"]
        )
        policy = validator.audits.policy
        for key, state in sorted(validator.audits.states.items()):
            rate.add_metric([key.hex()[:16]], policy.rate(state))
        yield rate
        yield _counter(
            "validator_model_restarts", "model restarts the validator asked for", s.model_restarts
        )
        yield from _histograms(validator.timings, "validator")


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _histograms(timings: Timings, role: str) -> Iterator[Metric]:
    for name, histogram in sorted(timings.histograms.items()):
        yield HistogramMetricFamily(
            f"{PREFIX}_{role}_{name}_seconds",
            f"{name.replace('_', ' ')} time (seconds)",
            buckets=histogram.cumulative(),
            sum_value=histogram.total,
        )


def registry_for(view: NodeView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(view))  # type: ignore[arg-type]
    return registry


def metrics_response(registry: CollectorRegistry) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def metrics_app(registry: CollectorRegistry) -> Starlette:
    """The token-free listener's app: ``/metrics`` and nothing else."""

    async def endpoint(request: Request) -> Response:
        return metrics_response(registry)

    return Starlette(routes=[Route("/metrics", endpoint)])


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` without a token on host:port (the operator's choice)."""
    from flopnet.node.api import serve_api

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve_api, metrics_app(registry), port, host=host))
        task_status.started(bound)
