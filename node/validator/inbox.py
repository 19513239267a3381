"""The validator's durable inbox: submissions are stored before they are acknowledged.

A worker's submission is written (SQLite, WAL, synchronous=FULL) before the signed receipt goes
back, so a validator killed at any moment loses no acknowledged submission: on restart the
queued rows are validated in arrival order. Verdicts are stored beside their submission, so a
worker that asks again (after a crash on either side) gets the same signed verdict.

Group commit (``add_durable``): submissions that arrive while a commit is being made (plus an
optional ``commit_window``) are written together in the next transaction, so one fsync serves
many receipts. Each caller returns only once the transaction holding its row has committed; a
crash before that commit loses only rows nobody was told about. The whole transaction (BEGIN,
inserts, COMMIT) runs in a worker thread on a second connection of its own, so the trio thread
keeps serving streams during the fsync, and the write lock is never held across a checkpoint of
the loop (a verdict written on the trio thread meanwhile only waits for the commit in flight).
No background task is needed: the first caller to find no commit in progress leads (makes one
commit, then hands the lead to the oldest caller still waiting, or ends it if none).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from flopnet.node.sqlite_files import open_durable, transaction
from flopnet.node.validator.traces import INSERT as TRACE_INSERT
from flopnet.node.validator.traces import SCHEMA as TRACE_SCHEMA
from flopnet.node.validator.traces import Trace, row_of
from flopnet.protocol.errors import FlopnetError

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS inbox (
    submission_id BLOB PRIMARY KEY,
    lease_id BLOB NOT NULL,
    peer TEXT NOT NULL,
    envelope BLOB NOT NULL,
    received_at REAL NOT NULL,
    verdict BLOB
);
CREATE INDEX IF NOT EXISTS inbox_queue ON inbox (verdict, received_at);
CREATE INDEX IF NOT EXISTS inbox_lease ON inbox (lease_id);
CREATE INDEX IF NOT EXISTS inbox_peer ON inbox (peer, verdict);
CREATE TABLE IF NOT EXISTS replay_tally (
    submission_id BLOB PRIMARY KEY,
    contributor BLOB NOT NULL,
    tokens INTEGER NOT NULL,
    mismatches INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS replay_tally_contributor ON replay_tally (contributor);
"""
    + TRACE_SCHEMA
)
_INSERT = (
    "INSERT OR IGNORE INTO inbox (submission_id, lease_id, peer, envelope, received_at) "
    "VALUES (?, ?, ?, ?, ?)"
)
_Row = tuple[bytes, bytes, str, bytes, float]


class InboxError(FlopnetError):
    """The inbox database could not be opened or written."""


@dataclass(frozen=True)
class TallyUpdate:
    """What an audit does to its contributor's replay tally (``proof.tally``): a passed audit
    adds its counts (the window keeps the last ``window``), a failed one clears the window."""

    contributor: bytes
    tokens: int
    mismatches: int
    passed: bool
    window: int


@dataclass(frozen=True)
class Queued:
    """A stored submission awaiting its verdict."""

    submission_id: bytes
    peer: str
    envelope: bytes
    received_at: float


@dataclass(eq=False)
class _Pending:
    """One ``add_durable`` call waiting for the commit that holds its row."""

    row: _Row
    ready: trio.Event = field(default_factory=trio.Event)
    lead: bool = False  # woken to lead the next commit, not because its row is stored
    abandoned: bool = False  # the caller was cancelled; the row is still committed
    added: bool | None = None
    error: Exception | None = None

    def result(self) -> bool:
        if self.error is not None:
            raise self.error
        assert self.added is not None
        return self.added


class Inbox:
    """Submissions and verdicts in one SQLite file, used from the daemon's trio thread only.

    Two connections to the file: the trio thread's (reads, verdicts, the synchronous ``add``)
    and the group committer's, used by one worker thread at a time. WAL lets the trio thread
    read while a commit is in flight; a write on either waits (busy timeout) for the other's.
    """

    def __init__(self, path: Path, *, commit_window: float = 0.0) -> None:
        self._conn = open_durable(path, _SCHEMA, InboxError)
        self._writer = open_durable(path, _SCHEMA, InboxError, check_same_thread=False)
        self.commit_window = commit_window  # extra seconds a leader waits for company
        self._queue: list[_Pending] = []
        self._leading = False
        self.commits = 0  # transactions made by add_durable
        self.rows_committed = 0  # rows those transactions carried (resends included)

    def close(self) -> None:
        self._conn.close()
        self._writer.close()

    def add(self, submission_id: bytes, lease_id: bytes, peer: str, envelope: bytes) -> bool:
        """Store a submission durably (one commit of its own); False if already stored."""
        cursor = self._conn.execute(_INSERT, (submission_id, lease_id, peer, envelope, time.time()))
        return cursor.rowcount == 1

    async def add_durable(
        self, submission_id: bytes, lease_id: bytes, peer: str, envelope: bytes
    ) -> bool:
        """Like ``add``, sharing the commit with concurrent callers; returns once it is durable.

        False if the submission was already stored (a resend), as ``add``. Raises
        ``InboxError`` if the commit holding the row failed (then nothing of it was stored).
        """
        entry = _Pending((submission_id, lease_id, peer, envelope, time.time()))
        self._queue.append(entry)
        if self._leading:
            try:
                await entry.ready.wait()
            except BaseException:
                entry.abandoned = True  # never handed the lead; its row still goes in
                raise
            if not entry.lead:
                return entry.result()
        self._leading = True
        # Shielded: a leader that gave up halfway would strand everyone queued behind it.
        with trio.CancelScope(shield=True):
            await self._lead()
        return entry.result()

    async def _lead(self) -> None:
        """Commit what is queued (the leader's own row included), then pass the lead on."""
        while True:
            if self.commit_window > 0:
                await trio.sleep(self.commit_window)
            batch, self._queue = self._queue, []
            try:
                added = await trio.to_thread.run_sync(self._commit, [e.row for e in batch])
            except Exception as exc:
                for e in batch:
                    e.error = exc
            else:
                self.commits += 1
                self.rows_committed += len(batch)
                for e, ok in zip(batch, added, strict=True):
                    e.added = ok
            for e in batch:
                e.ready.set()
            successor = next((e for e in self._queue if not e.abandoned), None)
            if successor is not None:
                successor.lead = True
                successor.ready.set()
                return
            if not self._queue:
                self._leading = False
                return
            # Only abandoned rows are left: commit them here rather than strand them.

    def _commit(self, rows: list[_Row]) -> list[bool]:
        """One transaction for ``rows`` on the committer's connection (in a worker thread)."""
        with transaction(self._writer, InboxError, f"inbox commit of {len(rows)} rows") as conn:
            return [conn.execute(_INSERT, row).rowcount == 1 for row in rows]

    def received_at(self, submission_id: bytes) -> float | None:
        row = self._conn.execute(
            "SELECT received_at FROM inbox WHERE submission_id = ?", (submission_id,)
        ).fetchone()
        return None if row is None else float(row[0])

    def has_lease(self, lease_id: bytes) -> bool:
        """Whether a submission for ``lease_id`` is stored (queued or judged)."""
        row = self._conn.execute(
            "SELECT 1 FROM inbox WHERE lease_id = ? LIMIT 1", (lease_id,)
        ).fetchone()
        return row is not None

    def queued_from(self, peer: str) -> int:
        """How many of ``peer``'s submissions wait for a verdict."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM inbox WHERE peer = ? AND verdict IS NULL", (peer,)
        ).fetchone()
        return int(row[0])

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

    def next_queued_many(self, limit: int) -> list[Queued]:
        """The ``limit`` oldest submissions without a verdict, oldest first."""
        rows = self._conn.execute(
            "SELECT submission_id, peer, envelope, received_at FROM inbox "
            "WHERE verdict IS NULL ORDER BY received_at LIMIT ?",
            (limit,),
        ).fetchall()
        return [Queued(bytes(r[0]), r[1], bytes(r[2]), r[3]) for r in rows]

    def set_verdict(
        self,
        submission_id: bytes,
        verdict: bytes,
        trace: Trace | None = None,
        tally: TallyUpdate | None = None,
    ) -> None:
        """Store the sealed verdict (durably) for later requests, and the checked trace and the
        audit's replay tally update with it in the same transaction."""
        conn = self._conn
        with transaction(conn, InboxError, "storing the verdict"):
            if trace is not None:
                conn.execute(TRACE_INSERT, row_of(trace))
            if tally is not None:
                _update_tally(conn, submission_id, tally)
            conn.execute(
                "UPDATE inbox SET verdict = ? WHERE submission_id = ?", (verdict, submission_id)
            )

    def replay_windows(self) -> dict[bytes, list[tuple[int, int]]]:
        """Every contributor's kept audits as (tokens, mismatches), oldest first."""
        windows: dict[bytes, list[tuple[int, int]]] = {}
        rows = self._conn.execute(
            "SELECT contributor, tokens, mismatches FROM replay_tally ORDER BY rowid"
        )
        for who, tokens, mismatches in rows:
            windows.setdefault(bytes(who), []).append((int(tokens), int(mismatches)))
        return windows

    def has_trace(self, submission_id: bytes) -> bool:
        """Whether the trace of a submission is stored."""
        row = self._conn.execute(
            "SELECT 1 FROM traces WHERE submission_id = ?", (submission_id.hex(),)
        ).fetchone()
        return row is not None

    def verdict(self, submission_id: bytes) -> bytes | None:
        row = self._conn.execute(
            "SELECT verdict FROM inbox WHERE submission_id = ?", (submission_id,)
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])


def _update_tally(conn: sqlite3.Connection, submission_id: bytes, tally: TallyUpdate) -> None:
    if not tally.passed:
        conn.execute("DELETE FROM replay_tally WHERE contributor = ?", (tally.contributor,))
        return
    conn.execute(
        "INSERT OR IGNORE INTO replay_tally (submission_id, contributor, tokens, mismatches) "
        "VALUES (?, ?, ?, ?)",
        (submission_id, tally.contributor, tally.tokens, tally.mismatches),
    )
    # Keep the newest ``window`` rows of the contributor (rowids grow with every insert).
    conn.execute(
        "DELETE FROM replay_tally WHERE contributor = ? AND rowid NOT IN (SELECT rowid FROM "
        "replay_tally WHERE contributor = ? ORDER BY rowid DESC LIMIT ?)",
        (tally.contributor, tally.contributor, tally.window),
    )
