"""``flopnet status [--data-dir DIR] [--json]``: a one-shot summary of a running node (or of
every node of a devnet's directory), for people, scripts and container health checks.

Exit status 0 when every node found answers its local API, 1 when one does not (or none is
running there); ``--json`` prints one object, ``{"ok", "nodes": [...]}``, each node with its
state badge and its ``/status`` document.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

# A container's health check runs this every few seconds: keep the wait short.
TIMEOUT_S = 3.0


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``status`` subcommand."""
    p = sub.add_parser(
        "status",
        help="one-shot summary of a running node (exit 0 when it answers)",
        description="Asks the node's local API (127.0.0.1, its token) for its status.",
    )
    p.add_argument("--data-dir", type=Path, help="a node's or a devnet's data dir")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--timeout", type=float, default=TIMEOUT_S, help="seconds to wait for each node's answer"
    )
    return {"status": _run}


def collect(data_dir: Path, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """Every node under ``data_dir`` and its status (or why it did not answer)."""
    import httpx

    from flopnet.node.local import api_get, node_dirs, read_node_info

    nodes = []
    for directory in node_dirs(data_dir) or [data_dir]:
        row: dict[str, Any] = {"name": directory.name, "data_dir": str(directory), "ok": False}
        info = read_node_info(directory)
        if info is None:
            row["error"] = "not running (no node.json, or its api.token is not readable)"
        else:
            try:
                status = api_get(info, "/status", timeout=timeout)
                row.update(ok=True, state=status.get("state"), status=status)
            except httpx.HTTPStatusError as exc:
                code = exc.response.status_code
                row["error"] = f"the API at {info.get('api_url')} refused: HTTP {code}"
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                reason = str(exc) or type(exc).__name__
                row["error"] = f"the API at {info.get('api_url')} does not answer ({reason})"
        nodes.append(row)
    return {"ok": bool(nodes) and all(n["ok"] for n in nodes), "nodes": nodes}


def describe(node: dict[str, Any]) -> str:
    """A few lines about one node (pure)."""
    if not node["ok"]:
        return f"{node['name']}: {node['error']}"
    s = node["status"]
    state = s.get("state") or {}
    lines = [
        f"{node['name']}: {state.get('badge', '?')} - {state.get('why', '')}",
        f"  {', '.join(s['roles'])}  {s['peer_id']}  {len(s.get('peers') or [])} peers  "
        f"up {s['uptime_s']:.0f}s  network {s['network_id']}",
    ]
    worker = s.get("worker")
    if worker:
        lines.append(
            f"  worker: {worker.get('phase')}, {worker.get('accepted', 0)} accepted, "
            f"{worker.get('rejected', 0)} rejected, {worker.get('released', 0)} handed back, "
            f"{worker.get('tokens_per_s', 0.0):.1f} tokens/s, batch {worker.get('batch_size', 1)}"
        )
    validator = s.get("validator")
    if validator:
        lines.append(
            f"  validator: {validator.get('queued', 0)} queued, {validator.get('accepted', 0)} "
            f"accepted, {validator.get('rejected', 0)} rejected"
        )
    publisher = s.get("publisher")
    if publisher:
        samples = publisher.get("samples") or {}
        lines.append(
            f"  publisher: {publisher.get('tasks', 0)} tasks, {samples.get('done', 0)} done, "
            f"{samples.get('leased', 0)} leased, {samples.get('open', 0)} open"
        )
        sets = publisher.get("task_sets") or {}
        if len(sets) > 1:  # one set says no more than the line above
            for name, counts in sorted(sets.items()):
                total = sum(counts.values())
                lines.append(f"    {name}: {counts.get('done', 0)}/{total} samples done")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from flopnet.protocol.errors import ConfigError

    if args.data_dir is None:
        raise ConfigError("give --data-dir (or set FLOPNET_HOME)")
    result = collect(args.data_dir, args.timeout)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(describe(node) for node in result["nodes"]))
    return 0 if result["ok"] else 1
