"""SQLite store of ledger chains: the validator's own chain and verified replicas of others.

Durability: WAL journal with ``synchronous=FULL`` fsyncs the log on every commit, and every
method that writes commits before returning, so an entry that was acknowledged survives a SIGKILL
(or a power cut) at any moment; nothing acknowledged is buffered in memory. The ``entries`` table
holds the envelopes, the only source of truth; ``credits`` is derived from them in the same
transaction so the leaderboard is one indexed query. Each store object owns one connection, used
from one thread.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ledger.chain import (
    GENESIS_PREV,
    ChainProblem,
    EntryError,
    VerifiedEntry,
    decode_body,
    entry_name,
    make_entry,
    next_timestamp,
    read_entry_unverified,
    signer_name,
    verify_chain,
    verify_entry,
)
from protocol.codec import Record
from protocol.errors import LedgerError, MalformedMessage
from protocol.identity import Identity
from protocol.messages import CreditBody

SCHEMA_VERSION = 1
MAX_RANGE = 10_000  # most entries one ``entries`` call returns

_SCHEMA = """
CREATE TABLE entries (
    signer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    timestamp REAL NOT NULL,
    kind TEXT NOT NULL,
    envelope BLOB NOT NULL,
    PRIMARY KEY (signer, seq)
);
CREATE TABLE credits (
    signer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    contributor BLOB NOT NULL,
    flops INTEGER NOT NULL,
    flop_formula TEXT NOT NULL,
    generated_tokens INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    submission_id BLOB NOT NULL,
    accepted INTEGER NOT NULL,
    answer_score REAL NOT NULL,
    timestamp REAL NOT NULL,
    lease_id BLOB NOT NULL,
    PRIMARY KEY (signer, seq)
);
CREATE INDEX credits_lease ON credits (signer, lease_id);
CREATE INDEX credits_contributor ON credits (contributor, timestamp);
CREATE INDEX credits_timestamp ON credits (timestamp);
CREATE INDEX credits_submission ON credits (submission_id);
CREATE TABLE equivocations (
    signer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    envelope BLOB NOT NULL,
    conflicts_with BLOB NOT NULL,
    reason TEXT NOT NULL,
    detected_at REAL NOT NULL,
    PRIMARY KEY (signer, seq, hash)
);
"""


class EquivocationError(LedgerError):
    """A validly signed entry conflicts with the stored chain; the evidence has been stored."""

    def __init__(self, message: str, evidence: Equivocation) -> None:
        super().__init__(message)
        self.evidence = evidence


@dataclass(frozen=True)
class Equivocation:
    """Evidence that a validator signed two conflicting entries.

    ``reason`` is ``same_seq`` (two entries for ``seq``) or ``prev_mismatch`` (entry ``seq`` does
    not link to the stored entry ``seq - 1``); ``conflicts_with`` is the stored entry's hash.
    """

    signer: bytes
    seq: int
    hash: bytes
    envelope: bytes
    conflicts_with: bytes
    reason: str
    detected_at: float


def _credit_row(
    signer: bytes, seq: int, timestamp: float, body: Record
) -> tuple[object, ...] | None:
    """The derived ``credits`` row of an entry, or None for kinds without one."""
    if not isinstance(body, CreditBody):
        return None
    return (
        signer,
        seq,
        body.contributor,
        body.flops,
        body.flop_formula,
        body.generated_tokens,
        body.prompt_tokens,
        body.task_id,
        body.submission_id,
        int(body.accepted),
        body.answer_score,
        timestamp,
        body.lease_id,
    )


class LedgerStore:
    """Ledger chains in one SQLite file (WAL, synchronous=FULL)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        created = not self.path.exists()
        if created:
            # The ledger is public, but only this node should be able to write it. SQLite creates
            # its -wal and -shm files with the database file's permissions.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so nothing is left pending.
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._init_schema()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger store {self.path}: {exc}") from exc
        if created:
            _fsync_dir(self.path.parent)  # make the new file's directory entry durable too

    def _init_schema(self) -> None:
        with self._write():
            (version,) = self._conn.execute("PRAGMA user_version").fetchone()
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path} has ledger schema {version}; this version reads {SCHEMA_VERSION}"
                )

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def connection(self) -> sqlite3.Connection:
        """The store's connection, for read-only queries by other ledger modules."""
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; IMMEDIATE takes the write lock up front so that reading the head
        and appending after it cannot interleave with another writer."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself fails (busy, disk full): SQLite may keep the transaction
            # open, and the next BEGIN on this connection would then fail.
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection (a checkpoint folds the WAL back into the file)."""
        self._conn.close()

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _head_row(self, signer: bytes) -> tuple[int, bytes, float] | None:
        row = self._conn.execute(
            "SELECT seq, hash, timestamp FROM entries WHERE signer = ? ORDER BY seq DESC LIMIT 1",
            (signer,),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def _insert(self, v: VerifiedEntry) -> None:
        self._conn.execute(
            "INSERT INTO entries (signer, seq, hash, prev_hash, timestamp, kind, envelope) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (v.signer, v.seq, v.hash, v.prev_hash, v.timestamp, v.kind, v.raw),
        )
        credit = _credit_row(v.signer, v.seq, v.timestamp, v.body)
        if credit is not None:
            self._conn.execute(
                "INSERT INTO credits (signer, seq, contributor, flops, flop_formula, "
                "generated_tokens, prompt_tokens, task_id, submission_id, accepted, answer_score, "
                "timestamp, lease_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                credit,
            )

    # -- writing ----------------------------------------------------------------------------

    def append_local(
        self,
        identity: Identity,
        network_id: str,
        kind: str,
        body_record: Record,
        *,
        now: float | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Append the next entry of ``identity``'s own chain; returns (seq, hash, envelope) only
        once the commit is durable. ``now`` overrides the clock (tests, replays)."""
        clock = time.time() if now is None else now
        try:
            with self._write():
                head = self._head_row(identity.public_key)
                seq, prev = (0, GENESIS_PREV) if head is None else (head[0] + 1, head[1])
                timestamp = next_timestamp(clock, None if head is None else head[2])
                data = make_entry(identity, network_id, seq, prev, kind, body_record, timestamp)
                # Re-verify what we sign: a bug here would otherwise poison our chain for good.
                verified = verify_entry(
                    data,
                    network_id,
                    expected_signer=identity.public_key,
                    expected_seq=seq,
                    expected_prev=prev,
                )
                self._insert(verified)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot append to the ledger in {self.path}: {exc}") from exc
        return seq, verified.hash, data

    def ingest(
        self, envelope_bytes: bytes, network_id: str, allowed_signers: set[bytes] | None = None
    ) -> bool:
        """Verify and store the next entry of another validator's chain.

        Returns True if stored, False if the same entry was already stored. Raises
        :class:`LedgerError` if the entry is invalid, from a signer not allowed, or not the next
        one after the stored head (fetch the missing range first), and :class:`EquivocationError`
        after storing the evidence when it conflicts with the stored chain.
        """
        v = verify_entry(envelope_bytes, network_id)
        name = entry_name(v.seq, v.hash)
        if allowed_signers is not None and v.signer not in allowed_signers:
            raise LedgerError(f"{name}: signer {signer_name(v.signer)} is not an allowed validator")
        evidence: Equivocation | None = None
        try:
            with self._write():
                row = self._conn.execute(
                    "SELECT hash FROM entries WHERE signer = ? AND seq = ?", (v.signer, v.seq)
                ).fetchone()
                if row is not None:
                    if row[0] == v.hash:
                        return False
                    evidence = self._record_equivocation(v, row[0], "same_seq")
                else:
                    head = self._head_row(v.signer)
                    expected = 0 if head is None else head[0] + 1
                    if v.seq != expected:
                        have = "nothing" if head is None else f"up to seq {head[0]}"
                        raise LedgerError(
                            f"{name} from {signer_name(v.signer)} is out of order: the store "
                            f"holds {have}, so the next entry must be seq {expected}"
                        )
                    if head is not None and v.prev_hash != head[1]:
                        evidence = self._record_equivocation(v, head[1], "prev_mismatch")
                    else:
                        # A timestamp going backwards is not refused here: the entry is signed,
                        # refusing it would stall replication for good; verify_all reports it.
                        self._insert(v)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot store {name} in {self.path}: {exc}") from exc
        if evidence is not None:
            other = evidence.conflicts_with[:6].hex()
            what = (
                f"a different entry with the same seq ({other}) is stored"
                if evidence.reason == "same_seq"
                else f"its prev_hash does not match the stored seq {v.seq - 1} ({other})"
            )
            raise EquivocationError(
                f"equivocation by {signer_name(v.signer)}: {name} conflicts with the stored "
                f"chain ({what}); kept as evidence",
                evidence,
            )
        return True

    def _record_equivocation(
        self, v: VerifiedEntry, conflicts_with: bytes, reason: str
    ) -> Equivocation:
        evidence = Equivocation(v.signer, v.seq, v.hash, v.raw, conflicts_with, reason, time.time())
        self._conn.execute(
            "INSERT OR IGNORE INTO equivocations (signer, seq, hash, envelope, conflicts_with, "
            "reason, detected_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (v.signer, v.seq, v.hash, v.raw, conflicts_with, reason, evidence.detected_at),
        )
        return evidence

    # -- reading ----------------------------------------------------------------------------

    def head(self, signer: bytes) -> tuple[int, bytes] | None:
        """(seq, hash) of ``signer``'s last stored entry, or None."""
        row = self._head_row(signer)
        return None if row is None else (row[0], row[1])

    def entries(self, signer: bytes, from_seq: int = 0, limit: int = 1000) -> list[bytes]:
        """Envelopes of ``signer``'s entries from ``from_seq`` on, in seq order (at most
        ``min(limit, MAX_RANGE)``)."""
        limit = max(0, min(limit, MAX_RANGE))
        rows = self._conn.execute(
            "SELECT envelope FROM entries WHERE signer = ? AND seq >= ? ORDER BY seq LIMIT ?",
            (signer, from_seq, limit),
        ).fetchall()
        return [row[0] for row in rows]

    def credited_leases(self, signer: bytes) -> set[bytes]:
        """Lease ids that ``signer``'s chain already holds a credit entry for (duplicate check)."""
        rows = self._conn.execute("SELECT lease_id FROM credits WHERE signer = ?", (signer,))
        return {bytes(lease_id) for (lease_id,) in rows}

    def signers(self) -> list[bytes]:
        """Every signer with at least one stored entry, sorted."""
        rows = self._conn.execute("SELECT DISTINCT signer FROM entries ORDER BY signer").fetchall()
        return [row[0] for row in rows]

    def equivocations(self, signer: bytes | None = None) -> list[Equivocation]:
        """Stored equivocation evidence, optionally of one signer."""
        sql = (
            "SELECT signer, seq, hash, envelope, conflicts_with, reason, detected_at "
            "FROM equivocations"
        )
        params: tuple[object, ...] = ()
        if signer is not None:
            sql += " WHERE signer = ?"
            params = (signer,)
        rows = self._conn.execute(sql + " ORDER BY signer, seq, hash", params).fetchall()
        return [Equivocation(*row) for row in rows]

    def verify_all(self, network_id: str) -> list[ChainProblem]:
        """Re-verify every stored chain, the stored columns and derived credits against the
        envelopes, and report stored equivocation evidence."""
        problems: list[ChainProblem] = []
        self._conn.execute("BEGIN")  # one consistent snapshot, even while another process writes
        try:
            for signer in self.signers():
                problems.extend(
                    verify_chain(self._audited_envelopes(signer, problems), network_id, signer)
                )
            orphans = self._conn.execute(
                "SELECT c.signer, c.seq FROM credits c LEFT JOIN entries e "
                "ON e.signer = c.signer AND e.seq = c.seq "
                "WHERE e.signer IS NULL OR e.kind != 'credit'"
            ).fetchall()
            for signer, seq in orphans:
                problems.append(
                    ChainProblem(
                        signer,
                        seq,
                        None,
                        "store_mismatch",
                        f"entry seq {seq}: a credits row without a credit entry",
                    )
                )
            for ev in self.equivocations():
                problems.append(
                    ChainProblem(
                        ev.signer,
                        ev.seq,
                        ev.hash,
                        "equivocation",
                        f"{entry_name(ev.seq, ev.hash)}: equivocation evidence ({ev.reason}) "
                        f"against {signer_name(ev.signer)}",
                    )
                )
        finally:
            self._conn.execute("COMMIT")
        return problems

    def _audited_envelopes(self, signer: bytes, problems: list[ChainProblem]) -> Iterator[bytes]:
        """Yield ``signer``'s envelopes in seq order, reporting rows whose columns or derived
        credits row disagree with the envelope (the envelope is the truth)."""
        cursor = self._conn.execute(
            "SELECT e.seq, e.hash, e.prev_hash, e.timestamp, e.kind, e.envelope, "
            "c.contributor, c.flops, c.flop_formula, c.generated_tokens, c.prompt_tokens, "
            "c.task_id, c.submission_id, c.accepted, c.answer_score, c.timestamp, c.lease_id "
            "FROM entries e LEFT JOIN credits c ON c.signer = e.signer AND c.seq = e.seq "
            "WHERE e.signer = ? ORDER BY e.seq",
            (signer,),
        )
        for row in cursor:
            seq, h, prev, ts, kind, envelope = row[:6]
            credit = row[6:]
            yield envelope
            try:
                peek = read_entry_unverified(envelope)
            except EntryError:
                continue  # verify_chain reports it
            e = peek.entry
            stored = (seq, h, prev, ts, kind)
            actual = (e.seq, peek.hash, e.prev_hash, e.timestamp, e.kind)
            name = entry_name(seq, h)
            if stored != actual or peek.signer != signer:
                problems.append(
                    ChainProblem(
                        signer,
                        seq,
                        h,
                        "store_mismatch",
                        f"{name}: stored columns disagree with the entry's envelope",
                    )
                )
                continue
            try:
                derived = _credit_row(signer, e.seq, e.timestamp, decode_body(e.kind, e.body))
            except MalformedMessage:
                derived = None  # verify_chain reports the malformed body
            derived_cols = None if derived is None else derived[2:]
            stored_cols = None if credit[0] is None else tuple(credit)
            if derived_cols != stored_cols:
                problems.append(
                    ChainProblem(
                        signer,
                        seq,
                        h,
                        "store_mismatch",
                        f"{name}: derived credits row disagrees with the entry",
                    )
                )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
