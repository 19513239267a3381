"""``flopnet status``: does the local node answer? A one-shot summary for scripts and health checks.

It reads ``<data dir>/node.json`` (written by a node once it is up) and ``api.token``, asks the
node's local API for ``/status`` and prints a short summary, or the document with ``--json``.
Exit 0 when the node answers, 1 when there is no node or it does not answer (a container's
health check relies on that). The full status view is the TUI's; this stays small and cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# A health check runs this every few seconds: keep the wait short.
DEFAULT_TIMEOUT_S = 5.0


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``status`` subcommand."""
    p = sub.add_parser("status", help="ask the local node how it is (exit 0 if it answers)")
    p.add_argument(
        "--data-dir", type=Path, help="the node's data dir (default: $FLOPNET_HOME or ~/.flopnet)"
    )
    p.add_argument("--json", action="store_true", help="print the node's /status document")
    p.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for an answer"
    )
    return {"status": run_status}


def summarize(status: dict[str, Any]) -> list[str]:
    """The lines of the short summary of a node's ``/status`` document (pure)."""
    lines = [
        f"node {status.get('peer_id', '?')}  roles {','.join(status.get('roles') or []) or '-'}  "
        f"up {status.get('uptime_s', 0):.0f}s  peers {len(status.get('peers') or [])}",
        f"network {status.get('network_id', '?')}",
    ]
    publisher = status.get("publisher")
    if publisher:
        samples = publisher.get("samples") or {}
        counts = "  ".join(f"{k} {v}" for k, v in sorted(samples.items()))
        done = "all done" if publisher.get("all_done") else "open"
        lines.append(
            f"publisher: {publisher.get('tasks', 0)} tasks ({done}), "
            f"{publisher.get('leases_issued', 0)} leases issued{'  ' + counts if counts else ''}"
        )
    validator = status.get("validator")
    if validator:
        lines.append(
            f"validator: {validator.get('accepted', 0)} accepted, "
            f"{validator.get('rejected', 0)} rejected, {validator.get('queued', 0)} queued, "
            f"{validator.get('flops_credited', 0):,} FLOPs credited"
        )
    worker = status.get("worker")
    if worker:
        lines.append(
            f"worker: {worker.get('phase', '?')}, {worker.get('accepted', 0)} accepted, "
            f"{worker.get('rejected', 0)} rejected, {worker.get('tokens_generated', 0)} tokens, "
            f"{worker.get('flops_credited', 0):,} FLOPs credited"
        )
    model = status.get("model")
    if model:
        lines.append(f"model: {model.get('name', '?')} on {model.get('backend', '?')}")
    return lines


def _fail(message: str) -> int:
    print(f"flopnet: error: {message}", file=sys.stderr)
    return 1


def run_status(args: argparse.Namespace) -> int:
    """Print the local node's status; 0 if it answers, 1 otherwise."""
    import httpx

    from flopnet.node.local import NODE_INFO_FILE, TOKEN_FILE, api_get, read_node_info

    data_dir: Path = args.data_dir
    info = read_node_info(data_dir)
    if info is None:
        if not (data_dir / NODE_INFO_FILE).exists():
            return _fail(f"no node is running with data dir {data_dir} (no {NODE_INFO_FILE} there)")
        return _fail(f"cannot read {data_dir / NODE_INFO_FILE} or {data_dir / TOKEN_FILE}")
    try:
        status = api_get(info, "/status", timeout=args.timeout)
    except httpx.HTTPStatusError as exc:
        return _fail(f"the node at {info.get('api_url')} refused: HTTP {exc.response.status_code}")
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        return _fail(f"the node at {info.get('api_url')} does not answer ({reason})")
    if not isinstance(status, dict):
        return _fail(f"the node at {info.get('api_url')} sent a status that is not an object")
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print("\n".join(summarize(status)))
    return 0
