"""The validator's durable inbox: submissions are stored before they are acknowledged.

A worker's submission is written (SQLite, WAL, synchronous=FULL) before the signed receipt goes
back, so a validator killed at any moment loses no acknowledged submission: on restart the
queued rows are validated in arrival order. Verdicts are stored beside their submission, so a
worker that asks again (after a crash on either side) gets the same signed verdict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from node.sqlite_files import open_durable
from protocol.errors import FlopnetError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    submission_id BLOB PRIMARY KEY,
    lease_id BLOB NOT NULL,
    peer TEXT NOT NULL,
    envelope BLOB NOT NULL,
    received_at REAL NOT NULL,
    verdict BLOB
);
CREATE INDEX IF NOT EXISTS inbox_queue ON inbox (verdict, received_at);
"""


class InboxError(FlopnetError):
    """The inbox database could not be opened or written."""


@dataclass(frozen=True)
class Queued:
    """A stored submission awaiting its verdict."""

    submission_id: bytes
    peer: str
    envelope: bytes
    received_at: float


class Inbox:
    """Submissions and verdicts in one SQLite file, used from the daemon's trio thread only."""

    def __init__(self, path: Path) -> None:
        self._conn = open_durable(path, _SCHEMA, InboxError)

    def close(self) -> None:
        self._conn.close()

    def add(self, submission_id: bytes, lease_id: bytes, peer: str, envelope: bytes) -> bool:
        """Store a submission durably; False if it was already stored (a resend)."""
        cursor = self._conn.execute(
            "INSERT OR IGNORE INTO inbox (submission_id, lease_id, peer, envelope, received_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (submission_id, lease_id, peer, envelope, time.time()),
        )
        return cursor.rowcount == 1

    def received_at(self, submission_id: bytes) -> float | None:
        row = self._conn.execute(
            "SELECT received_at FROM inbox WHERE submission_id = ?", (submission_id,)
        ).fetchone()
        return None if row is None else float(row[0])

    def queue_length(self) -> int:
        """Submissions still waiting for a verdict."""
        return int(
            self._conn.execute("SELECT COUNT(*) FROM inbox WHERE verdict IS NULL").fetchone()[0]
        )

    def position(self, submission_id: bytes) -> int:
        """How many queued submissions arrived before this one."""
        at = self.received_at(submission_id)
        if at is None:
            return 0
        row = self._conn.execute(
            "SELECT COUNT(*) FROM inbox WHERE verdict IS NULL AND received_at < ?", (at,)
        ).fetchone()
        return int(row[0])

    def next_queued(self) -> Queued | None:
        """The oldest submission without a verdict."""
        row = self._conn.execute(
            "SELECT submission_id, peer, envelope, received_at FROM inbox "
            "WHERE verdict IS NULL ORDER BY received_at LIMIT 1"
        ).fetchone()
        return None if row is None else Queued(bytes(row[0]), row[1], bytes(row[2]), row[3])

    def set_verdict(self, submission_id: bytes, verdict: bytes) -> None:
        """Store the sealed verdict (durably) for later requests."""
        self._conn.execute(
            "UPDATE inbox SET verdict = ? WHERE submission_id = ?", (verdict, submission_id)
        )

    def verdict(self, submission_id: bytes) -> bytes | None:
        row = self._conn.execute(
            "SELECT verdict FROM inbox WHERE submission_id = ?", (submission_id,)
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])
