"""The node's own files: private to their owner, and SQLite opened the one durable way (WAL,
synchronous=FULL)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from flopnet.protocol.errors import ConfigError, FlopnetError


def private_file(path: Path) -> Path:
    """Make sure ``path`` exists and only its owner can read it (created 0600; an existing file
    is tightened). A node's databases and log hold submissions, keys' work and peers: not for
    other local users. SQLite creates its -wal and -shm files with the database's mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    return path


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
    private_file(path)
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
