"""What a node shows of its setup and health, and a validator's view of its work.

* :func:`health` - identity, manifest, model and weights hash, GPUs, sandbox, disk and clock,
  each a check with a verdict (``ok``, ``warn``, ``error``) and a sentence;
* :func:`configuration` - the node's settings and the network's parameters;
* :func:`validator_view` - the validator's queue, audit rate per contributor, recent
  rejections with reasons, and the health of its sandbox and model process.

Reads only; runs on the daemon's trio thread.
"""

from __future__ import annotations

import shutil
import stat
import statistics
import time
from typing import TYPE_CHECKING, Any

from flopnet.ledger.chain import decode_body, read_entry_unverified
from flopnet.node.explain import explain_verdict
from flopnet.protocol.identity import peer_id_from_public_key
from flopnet.protocol.messages import CreditBody

if TYPE_CHECKING:
    from flopnet.node.view import NodeParts

DISK_WARN_BYTES = 2 * 1024**3
CLOCK_WARN_S = 5.0


def _check(check: str, level: str, summary: str, **details: Any) -> dict[str, Any]:
    return {"check": check, "level": level, "summary": summary, "details": details}


def health(p: NodeParts, model_process: dict[str, Any] | None) -> dict[str, Any]:
    """Setup and health checks, worst first within each check's own order."""
    net = p.config.network
    checks = []
    key_file = p.config.data_dir / "identity.key"
    try:
        private = not stat.S_IMODE(key_file.stat().st_mode) & 0o077
    except OSError:
        private = False
    checks.append(
        _check(
            "identity",
            "ok" if private else "error",
            p.identity.peer_id if private else "identity.key is readable by others: chmod 600",
            peer_id=p.identity.peer_id,
            public_key=p.identity.public_key.hex(),
            key_file=str(key_file),
        )
    )
    checks.append(
        _check(
            "manifest",
            "ok",
            f"{net.network_id}: {net.model} ({net.dtype}), "
            f"{len(net.validators)} validator(s), {len(net.publishers)} publisher(s)",
            network_id=net.network_id,
            founder=net.founder,
            model=net.model,
            model_revision=net.model_revision,
            dtype=net.dtype,
            weights_sha256=net.weights_sha256 or None,
            lock_window_s=net.lock_window_seconds,
            audit_rate_floor=net.audit_rate_floor,
            max_new_tokens=net.max_new_tokens,
        )
    )
    checks.append(_model_check(p, model_process))
    checks.append(_gpu_check(p))
    checks.append(_sandbox_check(p))
    usage = shutil.disk_usage(p.config.data_dir)
    checks.append(
        _check(
            "disk",
            "ok" if usage.free >= DISK_WARN_BYTES else "warn",
            f"{usage.free / 1024**3:.1f} GiB free of {usage.total / 1024**3:.1f} GiB "
            f"in {p.config.data_dir}",
            free=usage.free,
            total=usage.total,
            data_dir=str(p.config.data_dir),
        )
    )
    checks.append(_clock_check(p))
    return {"checks": checks, "worst": _worst(c["level"] for c in checks)}


def _worst(levels: Any) -> str:
    order = ("ok", "warn", "error")
    return max(levels, key=order.index, default="ok")


def _model_check(p: NodeParts, process: dict[str, Any] | None) -> dict[str, Any]:
    model = p.model
    if model is None or model.info is None:
        return _check("model", "ok", "no model: this node's roles need none")
    info = model.info
    pinned = p.config.network.weights_sha256
    matches = not pinned or pinned == info.weights_sha256
    alive = bool(process and process["alive"])
    level = "ok" if matches and alive else "error"
    summary = f"{info.name} on {info.backend}, weights {info.weights_sha256[:16]}..."
    if not matches:
        summary = f"weights hash {info.weights_sha256[:16]}... differs from the pin {pinned[:16]}"
    elif not alive:
        summary = "the model process is not running (it restarts before the next call)"
    return _check(
        "model",
        level,
        summary,
        name=info.name,
        backend=info.backend,
        weights_sha256=info.weights_sha256,
        pinned=pinned or None,
        parameters=info.n_params,
        load_seconds=info.load_seconds,
        plan=info.plan,
        process=process,
    )


def _gpu_check(p: NodeParts) -> dict[str, Any]:
    monitor = p.monitor.snapshot()
    last = monitor["last"] or {}
    gpus = last.get("gpus", [])
    chosen = p.control.settings.gpus if p.control else None
    if monitor["source"] != "nvml":
        why = monitor["nvml_error"] or "nvidia-ml-py is not installed"
        return _check("gpus", "ok", f"no GPU seen through NVML ({why}); CPU only", gpus=[])
    names = ", ".join(f"{g['index']}: {g['name']}" for g in gpus)
    using = "all" if chosen is None else ",".join(str(i) for i in chosen)
    return _check(
        "gpus",
        "ok",
        f"{len(gpus)} GPU(s) ({names}); using {using}",
        gpus=gpus,
        driver=monitor["driver"],
        chosen=list(chosen) if chosen is not None else None,
    )


def _sandbox_check(p: NodeParts) -> dict[str, Any]:
    if p.pool is None:
        return _check("sandbox", "ok", "no answer verifiers: this node is not a validator")
    bwrap = shutil.which("bwrap")
    stats = p.pool.stats()
    errors = p.pool.warm_errors()
    level = "ok" if bwrap and not errors else "warn"
    summary = f"bubblewrap at {bwrap}" if bwrap else "bubblewrap not found: code tasks fail"
    if errors:
        summary += f"; warm-up errors: {errors[0]}"
    return _check(
        "sandbox", level, summary, bwrap=bwrap, pool_size=p.pool.size, pool=stats, errors=errors
    )


def _clock_check(p: NodeParts) -> dict[str, Any]:
    """Our clock against the peers': the median of (heard - sent) over their last heartbeats
    (gossip delay included, so a few hundred ms is normal)."""
    offsets = []
    for peer in p.liveness.table.records():
        if peer.heartbeat is not None:
            offsets.append(peer.last_heard - peer.heartbeat.sent_at)
    local = time.localtime()
    details: dict[str, Any] = {
        "local_time": time.strftime("%Y-%m-%d %H:%M:%S", local),
        "utc_offset_s": local.tm_gmtoff,
        "peers_compared": len(offsets),
    }
    if not offsets:
        return _check("clock", "ok", "no peer heartbeat to compare with yet", **details)
    median = statistics.median(offsets)
    details["median_offset_s"] = round(median, 3)
    level = "ok" if abs(median) < CLOCK_WARN_S else "warn"
    summary = f"{median:+.2f} s from the peers' clocks (median of {len(offsets)} heartbeats)"
    if level == "warn":
        summary += ": leases and claims need clocks within two minutes; sync with NTP"
    return _check("clock", level, summary, **details)


def configuration(p: NodeParts) -> dict[str, Any]:
    """The node's settings and the network's parameters (no secrets)."""
    c = p.config
    return {
        "roles": sorted(p.roles),
        "data_dir": str(c.data_dir),
        "listen": {"ip": c.listen_ip, "port": c.listen_port, "addrs": p.host.addrs()},
        "bootstrap": list(c.bootstrap),
        "relays": list(c.relays),
        "backend": c.backend,
        "batch_size": p.worker.batch_size if p.worker else c.batch_size,
        "audit_batch": c.audit_batch,
        "verifier_workers": c.verifier_workers,
        "max_leases_per_worker": c.max_leases_per_worker,
        "judge_url": c.judge.url,
        "control": p.control.snapshot() if p.control else None,
        "network": c.network.as_json(),
    }


def validator_view(p: NodeParts, model_process: dict[str, Any] | None) -> dict[str, Any]:
    """The validator's queue, audit rate per contributor, rejections, sandbox and model."""
    v = p.validator
    if v is None:
        return {"validator": False}
    now = time.time()
    queue = [
        {
            "submission_id": row.submission_id.hex(),
            "peer_id": row.peer,
            "waiting_s": round(now - (v.inbox.received_at(row.submission_id) or now), 1),
        }
        for row in v.inbox.next_queued_many(50)
    ]
    policy = v.audits.policy
    # Contributors who failed audits first, then the most audited (the newest).
    ordered = sorted(
        v.audits.states.items(), key=lambda kv: (-kv[1].failures, -policy.rate(kv[1]), kv[0])
    )
    rates = [
        {
            "contributor": key.hex(),
            "peer_id": peer_id_from_public_key(key),
            "audit_rate": round(policy.rate(state), 4),
            "consecutive_valid": state.consecutive_valid,
            "audits": state.audits,
            "failures": state.failures,
        }
        for key, state in ordered
    ]
    return {
        "validator": True,
        "queued": v.inbox.queue_length(),
        "queue": queue,
        "audit_floor": policy.floor,
        "audit_rates": rates,
        "rejections": rejections(p, 50),
        "verdicts_by_reason": dict(v.stats.verdicts_by_reason),
        "counters": v.snapshot(),
        "sandbox": _sandbox_check(p),
        "model": _model_check(p, model_process),
    }


def rejections(p: NodeParts, limit: int) -> list[dict[str, Any]]:
    """The validator's last rejected credits, with reasons and the plain-words category."""
    rows = p.store.connection.execute(
        "SELECT c.seq, e.timestamp, e.envelope FROM credits c JOIN entries e "
        "ON e.signer = c.signer AND e.seq = c.seq WHERE c.signer = ? AND c.accepted = 0 "
        "ORDER BY c.seq DESC LIMIT ?",
        (p.identity.public_key, limit),
    ).fetchall()
    out = []
    for seq, timestamp, envelope in rows:
        body = decode_body("credit", read_entry_unverified(envelope).entry.body)
        assert isinstance(body, CreditBody)
        explanation = explain_verdict(False, body.reasons)
        out.append(
            {
                "seq": seq,
                "timestamp": timestamp,
                "peer_id": peer_id_from_public_key(body.contributor),
                "task_id": body.task_id,
                "sample_index": body.sample_index,
                "category": explanation.category,
                "headline": explanation.headline,
                "reasons": list(body.reasons),
            }
        )
    return out
