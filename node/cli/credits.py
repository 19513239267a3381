"""``flopnet credits [--data-dir DIR] [--json] [--verify] [--ledger FILE]``: the receipts a worker
kept for its credited results, and (``--verify``) their check against a replica of the
validators' signed chains, offline.

Each receipt is the validator's signed credit entry; ``--verify`` checks its signature, that
its fields are the signed ones, that its validator is in the network's manifest, that the
replica (the node's own ``ledger.sqlite`` unless ``--ledger`` names another) holds that very
entry, that the chain verifies up to it, and says whether the credit is pending, final or void.
Exit status 0 when every receipt checks out (or without ``--verify``), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``credits`` subcommand."""
    p = sub.add_parser(
        "credits",
        help="your receipts for credited work; --verify checks them against a ledger replica",
    )
    p.add_argument("--data-dir", type=Path, help="the worker's data dir (default: $FLOPNET_HOME)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verify", action="store_true", help="check each receipt against the ledger")
    p.add_argument(
        "--ledger", type=Path, help="the replica to check against (default: the node's own)"
    )
    p.add_argument("--lock-window", type=float, help="seconds (default: the manifest's)")
    return {"credits": _run}


def _run(args: argparse.Namespace) -> int:
    from flopnet.ledger.receipts import read_receipts, verify_receipts
    from flopnet.ledger.store import LedgerStore
    from flopnet.node.local import LEDGER_FILE, RECEIPTS_FILE, find_manifest
    from flopnet.protocol.errors import ConfigError
    from flopnet.protocol.manifest import load_manifest

    data_dir: Path | None = args.data_dir
    if data_dir is None or not (data_dir / "identity.key").exists():
        raise ConfigError(f"{data_dir} is not a node's data dir (give one worker's --data-dir)")
    receipts, problems = read_receipts(data_dir / RECEIPTS_FILE)
    out: dict[str, Any] = {
        "data_dir": str(data_dir),
        "receipts": [r.to_json() for r in receipts],
        "flops": sum(r.flops for r in receipts),
        "file_problems": problems,
        "verified": None,
    }
    for row in out["receipts"]:
        row.pop("envelope")
    if args.verify:
        manifest_path = find_manifest(data_dir)
        validators = None
        lock_window = args.lock_window
        if manifest_path is not None:
            manifest = load_manifest(manifest_path)
            validators = frozenset(manifest.validators)
            lock_window = lock_window if lock_window is not None else manifest.lock_window_seconds
        ledger = args.ledger or data_dir / LEDGER_FILE
        if not ledger.exists():
            raise ConfigError(f"no ledger at {ledger}; name a replica with --ledger")
        with LedgerStore(ledger) as store:
            checks = verify_receipts(
                receipts, store, validators=validators, lock_window=lock_window or 86400.0
            )
        out["receipts"] = [c.to_json() for c in checks]
        out["manifest"] = str(manifest_path) if manifest_path else None
        out["ledger"] = str(ledger)
        out["verified"] = all(c.ok for c in checks) and not problems
        out["by_state"] = _by_state(out["receipts"])
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(_describe(out))
    return 0 if out["verified"] in (None, True) else 1


def _by_state(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    states: dict[str, dict[str, int]] = {}
    for row in rows:
        entry = states.setdefault(row["state"], {"count": 0, "flops": 0})
        entry["count"] += 1
        entry["flops"] += row["flops"]
    return states


def _describe(out: dict[str, Any]) -> str:
    from flopnet.ledger.leaderboard import format_flops

    lines = []
    for r in out["receipts"]:
        mark = "" if "ok" not in r else ("ok    " if r["ok"] else "FAILED ")
        state = f" {r['state']}" if "state" in r else ""
        lines.append(
            f"{mark}{r['task_id']}#{r['sample_index']}  {r['generated_tokens']} tokens  "
            f"{format_flops(r['flops'])} ({r['flop_formula']})  validator "
            f"{r['validator'][:12]}… seq {r['seq']} entry {r['entry_hash'][:12]}…{state}"
        )
        for problem in r.get("problems", []):
            lines.append(f"    {problem}")
    lines += [f"warning: {p}" for p in out["file_problems"]]
    total = f"{len(out['receipts'])} receipt(s), {format_flops(out['flops'])} credited"
    if out["verified"] is not None:
        total += "; all verified" if out["verified"] else "; SOME FAILED verification"
        for state, entry in sorted(out["by_state"].items()):
            total += f"; {state} {entry['count']}"
    lines.append(total)
    return "\n".join(lines)
