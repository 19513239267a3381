"""The worker's durable outbox: finished work survives a crash of the worker.

A lease is written here when it is granted, its sealed submission as soon as the model has
produced it (before it is sent), and its verdict when it comes. A worker killed at any moment
finds on restart the submissions it finished and not yet had judged: it sends them again while
their lease holds (a validator answers a resend with the same receipt and verdict), and the
leases it held without finishing are handed back (or, failing that, lapse).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from flopnet.node.sqlite_files import open_durable
from flopnet.protocol.errors import FlopnetError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    lease_id BLOB PRIMARY KEY,
    lease BLOB NOT NULL,
    expires_at REAL NOT NULL,
    submission BLOB,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state);
"""
CLAIMED, FINISHED, JUDGED = "claimed", "finished", "judged"


class OutboxError(FlopnetError):
    """The worker's outbox could not be opened or written."""


@dataclass(frozen=True)
class Pending:
    """A lease the worker held when it stopped, with its sealed submission once finished."""

    lease_id: bytes
    lease: bytes
    expires_at: float
    submission: bytes | None


class Outbox:
    """Leases, finished submissions and their outcome, one durable row per lease."""

    def __init__(self, path: Path) -> None:
        self._conn = open_durable(path, _SCHEMA, OutboxError)

    def close(self) -> None:
        self._conn.close()

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        try:
            return self._conn.execute(sql, args).rowcount
        except sqlite3.Error as exc:  # a full disk, say: the worker must not carry on blind
            raise OutboxError(f"cannot write the worker's outbox: {exc}") from None

    def claimed(self, lease_id: bytes, lease: bytes, expires_at: float) -> None:
        """A lease was granted to us."""
        self._write(
            "INSERT OR IGNORE INTO outbox (lease_id, lease, expires_at, state, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (lease_id, lease, expires_at, CLAIMED, time.time()),
        )

    def finished(self, lease_id: bytes, submission: bytes) -> None:
        """The sealed submission exists: durable before it is sent."""
        self._write(
            "UPDATE outbox SET submission = ?, state = ?, updated_at = ? WHERE lease_id = ?",
            (submission, FINISHED, time.time(), lease_id),
        )

    def judged(self, lease_id: bytes) -> None:
        """The verdict came back (or the lease is given up): nothing is owed any more."""
        self._write(
            "UPDATE outbox SET state = ?, updated_at = ? WHERE lease_id = ?",
            (JUDGED, time.time(), lease_id),
        )

    def abandon(self, lease_id: bytes) -> None:
        """A lease we will not finish (our model failed on it): nothing is owed for it."""
        self._write(
            "UPDATE outbox SET state = ?, updated_at = ? WHERE lease_id = ? AND state = ?",
            (JUDGED, time.time(), lease_id, CLAIMED),
        )

    def pending(self) -> list[Pending]:
        """Every lease not judged yet, oldest first."""
        rows = self._conn.execute(
            "SELECT lease_id, lease, expires_at, submission FROM outbox WHERE state != ? "
            "ORDER BY updated_at",
            (JUDGED,),
        ).fetchall()
        return [Pending(bytes(r[0]), bytes(r[1]), float(r[2]), r[3] and bytes(r[3])) for r in rows]

    def prune(self, before: float) -> int:
        """Forget judged rows older than ``before``; how many went."""
        return self._write(
            "DELETE FROM outbox WHERE state = ? AND updated_at < ?", (JUDGED, before)
        )
