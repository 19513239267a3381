"""SQLite store of ledger chains: the validator's own chain and verified replicas of others.

Durability: WAL journal with ``synchronous=FULL`` fsyncs the log on every commit, and every
method that writes commits before returning, so an entry that was acknowledged survives a SIGKILL
(or a power cut) at any moment; nothing acknowledged is buffered in memory. The ``entries`` table
holds the envelopes, the only source of truth; the other tables (:mod:`flopnet.ledger.schema`)
are derived from them (:mod:`flopnet.ledger.derived`) in the same transaction, so the
leaderboard is a few indexed queries; :mod:`flopnet.ledger.recheck` re-derives them all. Each
store object owns one connection, used from one thread.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from flopnet.ledger.chain import (
    GENESIS_PREV,
    ChainProblem,
    EntryError,
    VerifiedEntry,
    entry_name,
    make_entry,
    next_timestamp,
    signer_name,
    verify_entry,
)
from flopnet.ledger.checkpoint import CheckpointState, baseline_sums
from flopnet.ledger.derived import DAY, HOUR, QUARTER, Sums, derive
from flopnet.ledger.policy import AuditRecord, Credit, Invalidation
from flopnet.ledger.schema import INSERT, migrate, write_sums
from flopnet.protocol.codec import Record
from flopnet.protocol.envelope import open_envelope
from flopnet.protocol.errors import LedgerError
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import LedgerHead

__all__ = ["DAY", "HOUR", "QUARTER", "Equivocation", "EquivocationError", "LedgerStore"]

MAX_RANGE = 10_000  # most entries one ``entries`` call returns


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


@dataclass
class RangeResult:
    """What :meth:`LedgerStore.ingest_range` did: entries newly stored (in seq order), entries
    already held, the first problem (nothing after it was stored) and the signer's head after."""

    stored: list[VerifiedEntry] = field(default_factory=list)
    duplicates: int = 0
    error: LedgerError | None = None
    head: tuple[int, bytes] | None = None


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
            with self._write():
                migrate(self._conn, self.path)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger store {self.path}: {exc}") from exc
        if created:
            _fsync_dir(self.path.parent)  # make the new file's directory entry durable too

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

    def _insert(self, v: VerifiedEntry, network_id: str) -> None:
        self._insert_all([v], network_id)

    def _insert_all(self, entries: Sequence[VerifiedEntry], network_id: str) -> None:
        """Insert verified entries of one signer with their derived rows, and add their credits
        to the sums (one upsert per bucket touched, not per credit: ingest speed)."""
        rows: dict[str, list[tuple[object, ...]]] = {"entries": []}
        sums = Sums()
        for v in entries:
            rows["entries"].append(
                (v.signer, v.seq, v.hash, v.prev_hash, v.timestamp, v.kind, v.raw)
            )
            for table, row in derive(v.signer, v.seq, v.timestamp, v.body, network_id).rows.items():
                rows.setdefault(table, []).append(row)
                if table == "credits":
                    sums.add(row)
        executemany = self._conn.executemany
        for table, batch in rows.items():
            executemany(INSERT[table], batch)
        if sums.totals:
            signer = entries[0].signer
            assert all(v.signer == signer for v in entries)
            write_sums(self._conn, signer, sums)

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
        return self.append_local_batch(identity, network_id, [(kind, body_record)], now=now)[0]

    def append_local_batch(
        self,
        identity: Identity,
        network_id: str,
        items: Sequence[tuple[str, Record]],
        *,
        now: float | None = None,
    ) -> list[tuple[int, bytes, bytes]]:
        """Append several entries (kind, body) to ``identity``'s chain in one durable commit:
        all or none of them (an audit result, its credit and an invalidation belong together).
        """
        clock = time.time() if now is None else now
        out: list[tuple[int, bytes, bytes]] = []
        written: list[VerifiedEntry] = []
        try:
            with self._write():
                head = self._head_row(identity.public_key)
                seq, prev = (0, GENESIS_PREV) if head is None else (head[0] + 1, head[1])
                last_ts = None if head is None else head[2]
                for kind, body_record in items:
                    timestamp = next_timestamp(clock, last_ts)
                    data = make_entry(identity, network_id, seq, prev, kind, body_record, timestamp)
                    # Re-verify what we sign: a bug here would otherwise poison our chain for good.
                    verified = verify_entry(
                        data,
                        network_id,
                        expected_signer=identity.public_key,
                        expected_seq=seq,
                        expected_prev=prev,
                    )
                    written.append(verified)
                    out.append((seq, verified.hash, data))
                    seq, prev, last_ts = seq + 1, verified.hash, timestamp
                self._insert_all(written, network_id)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot append to the ledger in {self.path}: {exc}") from exc
        return out

    def ingest(
        self, envelope_bytes: bytes, network_id: str, allowed_signers: set[bytes] | None = None
    ) -> bool:
        """Verify and store the next entry of another validator's chain.

        Returns True if stored, False if the same entry was already stored. Raises
        :class:`LedgerError` if the entry is invalid, from a signer not allowed, or not the next
        one after the stored head (fetch the missing range first), and :class:`EquivocationError`
        after storing the evidence when it conflicts with the stored chain.
        """
        result = self.ingest_range([envelope_bytes], network_id, allowed_signers)
        if result.error is not None:
            raise result.error
        return bool(result.stored)

    def ingest_range(
        self,
        envelopes: Iterable[bytes],
        network_id: str,
        allowed_signers: set[bytes] | None = None,
    ) -> RangeResult:
        """Verify consecutive entries of one signer's chain and store them in one commit.

        Every entry is verified (signature, body, signer allowed, link to the stored chain)
        before anything is stored; the first failure ends the range, the valid entries before
        it are stored, and the failure is returned in ``error`` (an :class:`EquivocationError`
        after its evidence is stored). Entries already held are counted as duplicates.
        """
        result = RangeResult()
        verified: list[VerifiedEntry] = []
        for data in envelopes:
            try:
                v = verify_entry(data, network_id)
            except EntryError as exc:
                result.error = exc
                break
            if allowed_signers is not None and v.signer not in allowed_signers:
                result.error = LedgerError(
                    f"{entry_name(v.seq, v.hash)}: signer {signer_name(v.signer)} is not an "
                    "allowed validator"
                )
                break
            if verified and v.signer != verified[0].signer:
                result.error = LedgerError(
                    f"{entry_name(v.seq, v.hash)}: a range holds entries of one signer only"
                )
                break
            verified.append(v)
        if not verified:
            return result
        signer = verified[0].signer
        evidence: Equivocation | None = None
        try:
            with self._write():
                head = self._head_row(signer)
                expected = 0 if head is None else head[0] + 1
                prev = None if head is None else head[1]
                batch: dict[
                    int, bytes
                ] = {}  # seq -> hash of entries of this range, not yet written
                for v in verified:
                    if v.seq < expected:
                        stored_hash = batch.get(v.seq) or self.entry_hash(signer, v.seq)
                        if stored_hash is None:
                            # Below the checkpoint this chain was joined at: not held here.
                            result.duplicates += 1
                            continue
                        if stored_hash == v.hash:
                            result.duplicates += 1
                            continue
                        evidence = self._record_equivocation(v, stored_hash, "same_seq")
                        break
                    if v.seq > expected:
                        have = "nothing" if expected == 0 else f"up to seq {expected - 1}"
                        result.error = LedgerError(
                            f"{entry_name(v.seq, v.hash)} from {signer_name(signer)} is out of "
                            f"order: the store holds {have}, so the next entry must be seq "
                            f"{expected}"
                        )
                        break
                    if prev is not None and v.prev_hash != prev:
                        evidence = self._record_equivocation(v, prev, "prev_mismatch")
                        break
                    # A timestamp going backwards is not refused here: the entry is signed,
                    # refusing it would stall replication for good; verify_all reports it.
                    result.stored.append(v)
                    batch[v.seq] = v.hash
                    expected, prev = v.seq + 1, v.hash
                self._insert_all(result.stored, network_id)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot store entries of {signer_name(signer)}: {exc}") from exc
        if evidence is not None:
            result.error = _equivocation_error(evidence)
        result.head = None if prev is None else (expected - 1, prev)
        return result

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

    def adopt(
        self, entry: VerifiedEntry, state: CheckpointState, state_bytes: bytes, network_id: str
    ) -> None:
        """Start ``entry.signer``'s empty chain at a verified checkpoint entry: the entry, the
        anchor, the kept state and its sums, in one commit (see ``ledger.joining``)."""
        with self._write():
            if self._head_row(entry.signer) is not None:
                raise LedgerError(f"{signer_name(entry.signer)}'s chain is already stored")
            self._insert_all([entry], network_id)
            self._conn.execute(
                "INSERT INTO anchors (signer, seq, prev_hash) VALUES (?, ?, ?)",
                (entry.signer, entry.seq, entry.prev_hash),
            )
            self._conn.execute(
                "INSERT INTO checkpoints (signer, seq, state) VALUES (?, ?, ?)",
                (entry.signer, entry.seq, state_bytes),
            )
            write_sums(self._conn, entry.signer, baseline_sums(state))

    # -- reading ----------------------------------------------------------------------------

    def head(self, signer: bytes) -> tuple[int, bytes] | None:
        """(seq, hash) of ``signer``'s last stored entry, or None."""
        row = self._head_row(signer)
        return None if row is None else (row[0], row[1])

    def heads(self) -> dict[bytes, tuple[int, bytes]]:
        """(seq, hash) of every stored chain's head, by signer."""
        return {signer: head for signer in self.signers() if (head := self.head(signer))}

    def entry_hash(self, signer: bytes, seq: int) -> bytes | None:
        """The hash of ``signer``'s stored entry ``seq``, or None."""
        row = self._conn.execute(
            "SELECT hash FROM entries WHERE signer = ? AND seq = ?", (signer, seq)
        ).fetchone()
        return None if row is None else bytes(row[0])

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

    def audit_results(self, signer: bytes) -> list[tuple[bytes, bool]]:
        """(contributor, passed) of every audit result in ``signer``'s chain, in seq order: what
        :func:`ledger.policy.audit_states` rebuilds the audit policy's state from."""
        return [(r.contributor, r.passed) for r in self.audit_records(signer)]

    def audit_records(self, signer: bytes) -> list[AuditRecord]:
        """Every audit entry of ``signer``'s chain, in seq order."""
        rows = self._conn.execute(
            "SELECT seq, contributor, submission_id, passed, rate, consecutive_valid FROM audits "
            "WHERE signer = ? ORDER BY seq",
            (signer,),
        )
        return [
            AuditRecord(int(seq), bytes(who), bytes(sub), bool(ok), float(rate), int(n))
            for seq, who, sub, ok, rate, n in rows
        ]

    def audit_context(self, signer: bytes) -> tuple[dict[bytes, bool], set[bytes]]:
        """What :func:`ledger.policy.audit_problems` checks audits against: ``signer``'s credits
        (submission id -> accepted) and the submission ids its hard invalidations name."""
        credits = {
            bytes(sub): bool(ok)
            for sub, ok in self._conn.execute(
                "SELECT submission_id, accepted FROM credits WHERE signer = ?", (signer,)
            )
        }
        hard = {
            bytes(sub)
            for (sub,) in self._conn.execute(
                "SELECT submission_id FROM invalidations WHERE signer = ? AND severity = 'hard'",
                (signer,),
            )
        }
        return credits, hard

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

    def record_head(self, envelope_bytes: bytes, network_id: str) -> bool:
        """Keep a validator's signed ``ledger_head`` if it is the highest seen of its chain.

        The kept head is what ``verify_all`` checks the stored chain against: a chain that ends
        before it is missing entries (not yet synced, or deleted). Returns True if kept; raises
        MalformedMessage for an envelope that does not verify.
        """
        opened = open_envelope(envelope_bytes, network_id, expected=LedgerHead)
        head = opened.expect(LedgerHead)
        with self._write():
            cursor = self._conn.execute(
                "INSERT INTO signed_heads (signer, seq, hash, envelope) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (signer) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                "envelope = excluded.envelope WHERE excluded.seq > signed_heads.seq",
                (opened.signer, head.seq, head.hash, opened.raw),
            )
        return cursor.rowcount > 0

    def signed_head(self, signer: bytes) -> tuple[int, bytes] | None:
        """(seq, hash) of the highest signed head kept for ``signer``'s chain, or None."""
        row = self._conn.execute(
            "SELECT seq, hash FROM signed_heads WHERE signer = ?", (signer,)
        ).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def credit_entry(self, signer: bytes, submission_id: bytes) -> tuple[int, bytes] | None:
        """(seq, envelope) of ``signer``'s credit entry for a submission, or None."""
        row = self._conn.execute(
            "SELECT e.seq, e.envelope FROM credits c JOIN entries e "
            "ON e.signer = c.signer AND e.seq = c.seq WHERE c.signer = ? AND c.submission_id = ?",
            (signer, submission_id),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def has_credit(self, signer: bytes, submission_id: bytes) -> bool:
        """Whether ``signer``'s chain holds a credit entry for a submission."""
        row = self._conn.execute(
            "SELECT 1 FROM credits WHERE signer = ? AND submission_id = ? LIMIT 1",
            (signer, submission_id),
        ).fetchone()
        return row is not None

    def credited_samples(self, signer: bytes) -> set[tuple[str, int]]:
        """(task id, sample index) of every sample ``signer``'s chain credited as accepted."""
        rows = self._conn.execute(
            "SELECT task_id, sample_index FROM credits WHERE signer = ? AND accepted = 1",
            (signer,),
        )
        return {(str(task), int(index)) for task, index in rows}

    def policy_records(
        self, signers: Sequence[bytes] | None = None
    ) -> tuple[list[Credit], list[Invalidation]]:
        """Every credit and invalidation (of ``signers``' chains, or all) as the credit policy
        sees them (``ledger.policy.credit_states``)."""
        where, params = "", tuple(signers or ())
        if signers is not None:
            where = f" WHERE signer IN ({', '.join('?' for _ in params)})"
        credits = [
            Credit(bytes(s), int(q), bytes(c), float(ts), int(f), bool(a))
            for s, q, c, ts, f, a in self._conn.execute(
                "SELECT signer, seq, contributor, timestamp, flops, accepted FROM credits" + where,
                params,
            )
        ]
        invalidations = [
            Invalidation(bytes(c), float(ts), str(sev), bytes(cs), int(cq))
            for c, ts, sev, cs, cq in self._conn.execute(
                "SELECT contributor, timestamp, severity, credit_signer, credit_seq "
                "FROM invalidations" + where,
                params,
            )
        ]
        return credits, invalidations

    def has_credited(self, signer: bytes, contributor: bytes) -> bool:
        """Whether ``signer``'s chain holds any credit entry (accepted or not) of a contributor."""
        row = self._conn.execute(
            "SELECT 1 FROM credits WHERE contributor = ? AND signer = ? LIMIT 1",
            (contributor, signer),
        ).fetchone()
        return row is not None

    def last_profile(self, signer: bytes, contributor: bytes) -> tuple[float, float] | None:
        """(the profile's updated_at, the entry's timestamp) of the last profile ``signer``
        recorded for a contributor, or None."""
        row = self._conn.execute(
            "SELECT p.updated_at, e.timestamp FROM profiles p JOIN entries e "
            "ON e.signer = p.signer AND e.seq = p.seq WHERE p.signer = ? AND p.contributor = ? "
            "ORDER BY p.seq DESC LIMIT 1",
            (signer, contributor),
        ).fetchone()
        return None if row is None else (float(row[0]), float(row[1]))

    def verify_all(self, network_id: str) -> list[ChainProblem]:
        """Re-verify everything in the store (see :func:`flopnet.ledger.recheck.verify_store`)."""
        from flopnet.ledger.recheck import verify_store

        return verify_store(self, network_id)


def peek_head(path: Path, signer: bytes) -> int:
    """The highest seq of ``signer``'s chain in a ledger file another process may be writing,
    read-only and without migrating it; -1 when there is none yet (or it cannot be read now)."""
    if not path.exists():
        return -1
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0) as conn:
            row = conn.execute("SELECT max(seq) FROM entries WHERE signer = ?", (signer,))
            value = row.fetchone()[0]
    except sqlite3.Error:
        return -1
    return -1 if value is None else int(value)


def _equivocation_error(evidence: Equivocation) -> EquivocationError:
    other = evidence.conflicts_with[:6].hex()
    what = (
        f"a different entry with the same seq ({other}) is stored"
        if evidence.reason == "same_seq"
        else f"its prev_hash does not match the stored seq {evidence.seq - 1} ({other})"
    )
    return EquivocationError(
        f"equivocation by {signer_name(evidence.signer)}: "
        f"{entry_name(evidence.seq, evidence.hash)} conflicts with the stored chain ({what}); "
        "kept as evidence",
        evidence,
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
