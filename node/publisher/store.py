"""The publisher's durable state: granted leases, their settlements, and the announcement log.

A signed lease is a promise: once granted it is stored (SQLite, WAL, synchronous=FULL) before it
is sent, so a publisher that crashes and restarts neither re-leases a sample whose submission is
already queued at a validator (which would credit the same sample twice), nor restarts its
announcement sequence numbers (which hearers would take for duplicates).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flopnet.node.sqlite_files import open_durable
from flopnet.protocol.errors import FlopnetError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    lease_id BLOB PRIMARY KEY,
    task_id TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    worker BLOB NOT NULL,
    expires_at REAL NOT NULL,
    issued_order INTEGER NOT NULL,
    outcome TEXT  -- NULL while open, then 'accepted', 'rejected' or 'released'
);
CREATE TABLE IF NOT EXISTS announcements (
    seq INTEGER PRIMARY KEY,
    envelope BLOB NOT NULL
);
"""


class PublisherStoreError(FlopnetError):
    """The publisher's database could not be opened or written."""


@dataclass(frozen=True)
class StoredLease:
    lease_id: bytes
    task_id: str
    sample_index: int
    worker: bytes
    expires_at: float
    outcome: str | None


class PublisherStore:
    """Leases and announcements in one SQLite file, used from the daemon's trio thread."""

    def __init__(self, path: Path) -> None:
        self._conn = open_durable(path, _SCHEMA, PublisherStoreError)

    def close(self) -> None:
        self._conn.close()

    def record_lease(
        self, lease_id: bytes, task_id: str, sample_index: int, worker: bytes, expires_at: float
    ) -> None:
        """Durably record a granted lease (before it is sent)."""
        self._conn.execute(
            "INSERT INTO leases (lease_id, task_id, sample_index, worker, expires_at, "
            "issued_order) VALUES (?, ?, ?, ?, ?, (SELECT COALESCE(MAX(issued_order), 0) + 1 "
            "FROM leases))",
            (lease_id, task_id, sample_index, worker, expires_at),
        )

    def record_outcome(self, lease_id: bytes, accepted: bool) -> None:
        """Durably record a validator's verdict on a lease."""
        self._conn.execute(
            "UPDATE leases SET outcome = ? WHERE lease_id = ?",
            ("accepted" if accepted else "rejected", lease_id),
        )

    def record_release(self, lease_id: bytes) -> None:
        """Durably record that a lease's worker handed it back (a restart must not restore it)."""
        self._conn.execute(
            "UPDATE leases SET outcome = 'released' WHERE lease_id = ? AND outcome IS NULL",
            (lease_id,),
        )

    def leases(self) -> list[StoredLease]:
        """Every lease in the order it was granted."""
        rows = self._conn.execute(
            "SELECT lease_id, task_id, sample_index, worker, expires_at, outcome FROM leases "
            "ORDER BY issued_order"
        )
        return [StoredLease(bytes(r[0]), r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

    def record_announcement(self, seq: int, envelope: bytes) -> None:
        """Durably log a sealed announcement (before it is gossiped)."""
        self._conn.execute(
            "INSERT INTO announcements (seq, envelope) VALUES (?, ?)", (seq, envelope)
        )

    def announcements(self, limit: int) -> list[tuple[int, bytes]]:
        """The last ``limit`` announcements, oldest first."""
        rows = self._conn.execute(
            "SELECT seq, envelope FROM announcements ORDER BY seq DESC LIMIT ?", (limit,)
        ).fetchall()
        return [(int(seq), bytes(env)) for seq, env in reversed(rows)]
