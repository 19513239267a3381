"""Opening the node's own SQLite files the one durable way (WAL, synchronous=FULL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from flopnet.protocol.errors import FlopnetError


def open_durable(
    path: Path,
    schema: str,
    error: type[FlopnetError],
    *,
    check_same_thread: bool = True,
    busy_timeout_s: float = 5.0,
) -> sqlite3.Connection:
    """A connection in autocommit mode whose every committed write survives a crash.

    ``check_same_thread=False`` lets one owner hand the connection to a worker thread (the
    owner guarantees one user at a time); ``busy_timeout_s`` is how long a write waits for
    another connection's write lock on the same file.
    """
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=check_same_thread, timeout=busy_timeout_s
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(schema)
    except sqlite3.Error as exc:
        raise error(f"cannot open {path}: {exc}") from None
    return conn
