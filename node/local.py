"""A node's data directory as local tools see it: its files, its ledgers, its local API.

The daemon writes here; the command line, the devnet harness and the TUI read here. A devnet's
directory holds one node directory per process, so every lookup accepts either. Cheap to
import: no torch, no libp2p, no SQLite (the caller opens the files it is handed).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flopnet.protocol.errors import ConfigError
from flopnet.protocol.manifest import MANIFEST_FILE

NODE_INFO_FILE = "node.json"
TOKEN_FILE = "api.token"
LEDGER_FILE = "ledger.sqlite"
INBOX_FILE = "inbox.sqlite"
PUBLISHER_FILE = "publisher.sqlite"
LOG_FILE = "node.log"
CONTROL_FILE = "control.json"  # the contributor's pause, schedule, batch size and GPU choices
RECEIPTS_FILE = "receipts.jsonl"  # a worker's receipts for its credited results


def write_node_info(data_dir: Path, info: dict[str, Any]) -> None:
    """Publish a running node's ``node.json`` (peer id, addresses, API URL, pid) atomically."""
    tmp = data_dir / (NODE_INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, data_dir / NODE_INFO_FILE)


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``data`` as JSON, readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_json_file(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_node_info(data_dir: Path) -> dict[str, Any] | None:
    """A running node's ``node.json`` and API token, or None while it is starting."""
    try:
        info = json.loads((data_dir / NODE_INFO_FILE).read_text())
        info["token"] = (data_dir / TOKEN_FILE).read_text().strip()
    except (OSError, json.JSONDecodeError):
        return None
    return dict(info)


def node_dirs(data_dir: Path) -> list[Path]:
    """The node in ``data_dir``, or the nodes one level below it (a devnet's directory)."""
    if (data_dir / NODE_INFO_FILE).exists():
        return [data_dir]
    return sorted(p.parent for p in data_dir.glob(f"*/{NODE_INFO_FILE}"))


def api_get(info: dict[str, Any], path: str, timeout: float = 5.0) -> Any:
    """GET a JSON document from a node's local API (``info`` from :func:`read_node_info`)."""
    import httpx

    response = httpx.get(
        info["api_url"] + path,
        headers={"Authorization": f"Bearer {info['token']}"},
        timeout=timeout,
    )
    response.raise_for_status()
    return response.json()


def api_send(
    info: dict[str, Any], method: str, path: str, body: Any = None, timeout: float = 10.0
) -> Any:
    """Send a command (POST or PUT with a JSON body) to a node's local API; returns the JSON
    answer (raises httpx.HTTPStatusError with the API's reason on a 4xx or 5xx)."""
    import httpx

    response = httpx.request(
        method,
        info["api_url"] + path,
        json=body,
        headers={"Authorization": f"Bearer {info['token']}"},
        timeout=timeout,
    )
    response.raise_for_status()
    return response.json()


def find_ledgers(data_dir: Path) -> list[Path]:
    """Ledger files in a node's data dir or in a devnet's (one level down)."""
    direct = data_dir / LEDGER_FILE
    if direct.exists():
        return [direct]
    return sorted(data_dir.glob(f"*/{LEDGER_FILE}"))


def ledgers_in(data_dir: Path | None) -> list[Path]:
    """:func:`find_ledgers`, or a ConfigError that says what to give."""
    if data_dir is None:
        raise ConfigError("give --data-dir (or set FLOPNET_HOME)")
    ledgers = find_ledgers(data_dir)
    if not ledgers:
        raise ConfigError(f"no ledger found under {data_dir}")
    return ledgers


def best_ledger(ledgers: list[Path], coverage: Callable[[Path], int]) -> Path:
    """The ledger holding the most of the validators' chains (``coverage`` counts a file's
    entries): with replication every node's copy converges, and summing several copies would
    count each credit more than once. Ties go to the first."""
    return max(ledgers, key=lambda path: (coverage(path), -ledgers.index(path)))


def find_manifest(data_dir: Path | None) -> Path | None:
    """The network manifest beside a node's data (its own, or its devnet's), if any."""
    if data_dir is None:
        return None
    for candidate in (data_dir / MANIFEST_FILE, data_dir.parent / MANIFEST_FILE):
        if candidate.exists():
            return candidate
    return None


def flopnet_argv() -> list[str]:
    """The ``flopnet`` command as this interpreter runs it (``python -m flopnet``), for the
    processes a tool starts: derived from the package, so no rename can leave it stale."""
    import flopnet

    return [sys.executable, "-m", flopnet.__name__]
