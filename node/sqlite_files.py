"""Opening the node's own SQLite files the one durable way (WAL, synchronous=FULL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from protocol.errors import FlopnetError


def open_durable(path: Path, schema: str, error: type[FlopnetError]) -> sqlite3.Connection:
    """A connection in autocommit mode whose every committed write survives a crash."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(schema)
    except sqlite3.Error as exc:
        raise error(f"cannot open {path}: {exc}") from None
    return conn
