"""A run's results as one JSON document: what the simulation counted, scaled back to the real
network, and the figures derived from those counts (bandwidth, validators needed, join cost)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from typing import TYPE_CHECKING, Any

from flopnet.ledger.kinds import KIND_AUDIT, KIND_CREDIT, KIND_INVALIDATION
from flopnet.sim.config import DAY, HOUR
from flopnet.sim.inputs import (
    GOSSIP_CPU_S_PER_MESSAGE,
    GOSSIP_MESH_DEGREE,
    GPU_CLASSES,
    HEARTBEAT_INTERVAL_S,
    LEDGER_INGEST_PER_CPU_S,
)
from flopnet.sim.sizes import measured
from flopnet.sim.workload import task_mix

if TYPE_CHECKING:
    from flopnet.sim.engine import Simulation

MONTH = 30 * DAY
# A contributor in a checkpoint state: a credit row (73 bytes) and an audit row (44 bytes).
CHECKPOINT_ROW_BYTES = 117


def percentiles(values: list[float], qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, float]:
    """Nearest-rank percentiles (and the mean); zeros for no values."""
    if not values:
        return {**{f"p{round(q * 100)}": 0.0 for q in qs}, "mean": 0.0, "n": 0}
    ordered = sorted(values)
    out = {f"p{round(q * 100)}": ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in qs}
    return {
        **{k: round(v, 3) for k, v in out.items()},
        "mean": round(sum(values) / len(values), 3),
        "n": len(values),
    }


def report(sim: Simulation) -> dict[str, Any]:
    """Everything one run measured, and what follows from it."""
    cfg, scale = sim.cfg, sim.scale
    days = cfg.days
    workers = [w for w in sim.workers if not w.sybil]
    samples = sum(w.samples for w in workers)
    online_s = sum(w.online_s for w in workers)
    entries: Counter[str] = Counter()
    for v in sim.validators:
        entries.update(v.entries)
    sizes = measured()
    # The validators count real entries (a simulated sample's credits are its weight).
    real_entries_per_day = {k: n / days for k, n in entries.items()}
    entry_bytes = {
        KIND_CREDIT: sizes.credit,
        KIND_AUDIT: sizes.audit,
        KIND_INVALIDATION: sizes.invalidation,
    }
    ledger_bytes_per_day = sum(real_entries_per_day.get(k, 0) * b for k, b in entry_bytes.items())
    entries_per_day = sum(real_entries_per_day.values())
    online_mean = online_s / cfg.duration_s
    return {
        "config": {**dataclasses.asdict(cfg), "sample_scale": scale},
        "run": {
            "wall_seconds": round(sim.wall_s, 2),
            "cpu_seconds": round(sim.cpu_s, 2),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "simulated_samples": samples,
            "real_samples_represented": samples * scale,
            "simulated_samples_per_wall_second": round(samples / max(sim.wall_s, 1e-9)),
        },
        "network": {
            "workers": cfg.workers,
            "online_mean": round(online_mean, 1),
            "gpu_classes_refused_by_hardware_plan": sim.refused_classes,
            "real_samples_per_day": round(samples * scale / days),
            "real_samples_per_online_worker_hour": round(
                samples * scale / max(online_s / HOUR, 1e-9), 1
            ),
        },
        "leases": _leases(sim),
        "validators": _validators(sim, online_mean),
        "credit": _credit(sim),
        "false_positives": _false_positives(sim),
        "ledger": {
            "entries_per_day": round(entries_per_day),
            "entries_per_day_by_kind": {k: round(v) for k, v in real_entries_per_day.items()},
            "entry_bytes": entry_bytes,
            "bytes_per_day": round(ledger_bytes_per_day),
        },
        "bandwidth_per_node": _bandwidth(sim, online_mean, entries_per_day, ledger_bytes_per_day),
        "join": _join(sim, entries_per_day, ledger_bytes_per_day),
        "timeline": sim.hourly if "timeline" in cfg.keep else [],
    }


def _leases(sim: Simulation) -> dict[str, Any]:
    waits = [w for _, w, _ in sim.lease_waits]
    newcomer = [w for _, w, n in sim.lease_waits if n]
    veteran = [w for _, w, n in sim.lease_waits if not n]
    sybils = [w for w in sim.workers if w.sybil]
    return {
        "wait_seconds": percentiles(waits),
        "wait_seconds_newcomers": percentiles(newcomer),
        "wait_seconds_with_a_record": percentiles(veteran),
        "refusals": dict(sorted(sim.refusals.items())),
        "leases_granted": sum(w.leases for w in sim.workers),
        "late_submissions": sim.late,
        "sybil_leases": sum(w.leases for w in sybils),
        "sybil_credit_flops": sum(
            w.account.final_flops + w.account.pending_flops() for w in sybils
        ),
    }


def _validators(sim: Simulation, online_mean: float) -> dict[str, Any]:
    cfg = sim.cfg
    busy = [v.busy_s / cfg.duration_s for v in sim.validators]
    waits = [x for v in sim.validators for x in v.waits]
    audited = sum(v.audited for v in sim.validators)
    checked = sum(v.real_credits for v in sim.validators)
    load = sum(busy)  # validator machines' worth of prefill kept busy
    per_1000 = load / max(online_mean, 1e-9) * 1000
    verify_s = sum(t.verify_cpu_s * share for t, share in task_mix(cfg))
    samples_per_s = checked / cfg.duration_s
    return {
        "count": cfg.validator_count,
        "gpu": cfg.validator_gpu,
        "prefill_flops_per_s": sim.validators[0].flops_per_s,
        "utilisation": {"mean": round(sum(busy) / len(busy), 4), "max": round(max(busy), 4)},
        "queue_wait_seconds": percentiles(waits),
        "max_queue": max(v.max_queue for v in sim.validators),
        "audited_share": round(audited / max(checked, 1), 4),
        "validator_machines_per_1000_online_workers": round(per_1000, 3),
        "answer_check_cores_per_1000_online_workers": round(
            samples_per_s * verify_s / max(online_mean, 1e-9) * 1000, 1
        ),
    }


def _credit(sim: Simulation) -> dict[str, Any]:
    """Final credit per GPU-second by kind, against the honest workers'."""
    by_kind: dict[str, dict[str, float]] = {}
    for w in sim.workers:
        row = by_kind.setdefault(
            w.kind,
            {
                "workers": 0,
                "samples": 0,
                "cheated": 0,
                "gpu_seconds": 0.0,
                "final": 0,
                "voided": 0,
                "pending": 0,
                "failed_audits": 0,
                "audits": 0,
            },
        )
        row["workers"] += 1
        row["samples"] += w.samples
        row["cheated"] += w.cheated
        row["gpu_seconds"] += w.gpu_seconds
        row["final"] += w.account.final_flops
        row["voided"] += w.account.void_flops
        row["pending"] += w.account.pending_flops()
        row["failed_audits"] += w.failed_audits
        row["audits"] += w.audits
    honest = by_kind.get("honest", {})
    base = honest.get("final", 0) / honest["gpu_seconds"] if honest.get("gpu_seconds") else 0.0
    out = {}
    for kind, row in sorted(by_kind.items()):
        rate = row["final"] / row["gpu_seconds"] if row["gpu_seconds"] else 0.0
        out[kind] = {
            **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()},
            "final_flops_per_gpu_second": rate,
            "against_honest": round(rate / base, 4) if base else None,
        }
    return out


def _false_positives(sim: Simulation) -> dict[str, Any]:
    honest = [w for w in sim.workers if w.kind == "honest"]
    months = sum(w.online_s for w in honest) / MONTH
    failed = sum(w.failed_audits for w in honest)
    audits = sum(w.audits for w in honest)
    stored = sim.table.row("honest")
    n = len(stored.verdicts)
    measured_failures = sum(not a for a, _ in stored.verdicts)
    # One-sided 95% upper bound of the per-audit rate from the stored honest samples.
    upper = 1 - 0.05 ** (1 / n) if measured_failures == 0 else None
    per_month_audits = audits / months if months else 0.0
    # The second opinion (float32) must fail too before an honest worker is punished; with the
    # two checks' noise independent, the per-audit loss is bounded by the product of the bounds.
    second = sim.table.second_opinions
    second_fails = sum(not ok for ok in second)
    second_upper = 1 - 0.05 ** (1 / len(second)) if second and second_fails == 0 else None
    loss_bound = upper * second_upper if upper is not None and second_upper is not None else None
    return {
        "honest_worker_months": round(months, 2),
        "honest_failed_audits": failed,
        "losses_per_worker_month": round(failed / months, 5) if months else None,
        "audits_per_worker_month": round(per_month_audits),
        "measured_honest_samples": n,
        "measured_honest_failures": measured_failures,
        "per_audit_rate_95pct_upper_bound": round(upper, 5) if upper is not None else None,
        "monthly_loss_probability_at_that_bound": (
            round(1 - (1 - upper) ** per_month_audits, 4) if upper is not None else None
        ),
        "second_opinion_samples": len(second),
        "second_opinion_overturned": sum(second),
        "second_opinion_fail_95pct_upper_bound": (
            round(second_upper, 5) if second_upper is not None else None
        ),
        "per_audit_loss_bound_with_second_opinion": (
            round(loss_bound, 5) if loss_bound is not None else None
        ),
        "monthly_loss_probability_with_second_opinion": (
            round(1 - (1 - loss_bound) ** per_month_audits, 4) if loss_bound is not None else None
        ),
    }


def _bandwidth(
    sim: Simulation, online_mean: float, entries_per_day: float, ledger_bytes_per_day: float
) -> dict[str, Any]:
    """Per online node: every ledger entry and head, heartbeat and announcement is gossiped to
    everyone (received from up to D mesh peers); submissions go worker -> validator."""
    cfg, sizes = sim.cfg, measured()
    nodes = online_mean + cfg.validator_count + cfg.publishers
    heads_per_s = cfg.validator_count / 5.0  # a head every 5 s per validator (node/ledger_sync.py)
    heartbeats_per_s = nodes / HEARTBEAT_INTERVAL_S
    announcements_per_s = sum(p.announcements for p in sim.publishers) * sim.scale / cfg.duration_s
    entries_per_s = entries_per_day / DAY
    messages = {
        "ledger_entries": entries_per_s,
        "ledger_heads": heads_per_s,
        "heartbeats": heartbeats_per_s,
        "task_announcements": announcements_per_s,
    }
    bytes_per_s = {
        "ledger_entries": ledger_bytes_per_day / DAY,
        "ledger_heads": heads_per_s * sizes.ledger_head,
        "heartbeats": heartbeats_per_s * sizes.heartbeat,
        "task_announcements": announcements_per_s * sizes.announcement,
    }
    once = sum(bytes_per_s.values())
    delivered = sum(messages.values())
    workers = [w for w in sim.workers if not w.sybil and w.online_s > 0]
    tokens = sum(w.samples for w in workers) * sim.scale
    per_worker_s = sum(w.online_s for w in workers) or 1.0
    mean_g = sum(t.mean_generated * s for t, s in task_mix(cfg))
    upload = tokens / per_worker_s * sizes.submission(round(mean_g))
    return {
        "gossip_messages_per_s": {k: round(v, 2) for k, v in messages.items()},
        "gossip_bytes_per_s_once": {k: round(v) for k, v in bytes_per_s.items()},
        "gossip_in_bytes_per_s": {
            "each_message_once": round(once),
            f"from_all_{GOSSIP_MESH_DEGREE}_mesh_peers": round(once * GOSSIP_MESH_DEGREE),
        },
        "gossip_cpu_cores_per_node": round(delivered * GOSSIP_CPU_S_PER_MESSAGE, 3),
        "worker_submission_upload_bytes_per_s": round(upload),
        "validator_submission_download_bytes_per_s": round(
            upload * max(online_mean, 1) / cfg.validator_count
        ),
    }


def _join(sim: Simulation, entries_per_day: float, ledger_bytes_per_day: float) -> dict[str, Any]:
    """What a new node fetches and verifies to join after 30 days and after a year: the whole
    history, or a checkpoint per validator (a row per contributor) plus the entries after it."""
    cfg = sim.cfg
    contributors = sum(1 for w in sim.workers if w.samples or w.leases)
    tail_days = max(cfg.lock_window_s / DAY, 7.0)  # pending credit and the 7-day leaderboard
    out: dict[str, Any] = {"assumes_ingest_entries_per_cpu_second": LEDGER_INGEST_PER_CPU_S}
    bytes_per_entry = ledger_bytes_per_day / entries_per_day if entries_per_day else 0.0
    for label, age in (("after_30_days", 30.0), ("after_a_year", 365.0)):
        entries = entries_per_day * age
        # Churn brings new identities: contributors grow with the network's age.
        seen = contributors * (1 + (1 - cfg.return_share) * age / max(cfg.days, 1))
        tail = entries_per_day * min(age, tail_days)
        checkpoint_bytes = cfg.validator_count * seen * CHECKPOINT_ROW_BYTES
        out[label] = {
            "full_entries": round(entries),
            "full_bytes": round(entries * bytes_per_entry),
            "full_cpu_seconds": round(entries / LEDGER_INGEST_PER_CPU_S),
            "checkpoint_contributors": round(seen),
            "checkpoint_bytes": round(checkpoint_bytes),
            "checkpoint_tail_entries": round(tail),
            "checkpoint_total_bytes": round(checkpoint_bytes + tail * bytes_per_entry),
            "checkpoint_cpu_seconds": round(tail / LEDGER_INGEST_PER_CPU_S, 1),
        }
    return out


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """A short human-readable report."""
    run, net, val = doc["run"], doc["network"], doc["validators"]
    lines = [
        f"{doc['config']['workers']:,} workers x {doc['config']['days']} days: "
        f"{run['simulated_samples']:,} simulated samples (scale {doc['config']['sample_scale']}: "
        f"{run['real_samples_represented']:,} real) in {run['wall_seconds']} s "
        f"({run['cpu_seconds']} s of CPU)",
        f"online on average: {net['online_mean']}; "
        f"real samples/day {net['real_samples_per_day']:,}",
        f"lease wait p50/p99: {doc['leases']['wait_seconds']['p50']} / "
        f"{doc['leases']['wait_seconds']['p99']} s; refusals {doc['leases']['refusals']}",
        f"validators: utilisation {val['utilisation']}, audited {val['audited_share']:.1%}, "
        f"{val['validator_machines_per_1000_online_workers']} machines per 1,000 online workers",
    ]
    for kind, row in doc["credit"].items():
        lines.append(
            f"  {kind:<16} workers {row['workers']:>6}  final credit per GPU-second vs honest: "
            f"{row['against_honest']}"
        )
    return lines


def gpu_names() -> list[str]:
    return sorted(GPU_CLASSES)


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{math.floor(n)} B"
