"""The ledger store's tables: their schema, its migrations, and the statements that fill them.

``entries`` holds the signed envelopes, the only source of truth; every other table is derived
from them (:mod:`flopnet.ledger.derived`) in the transaction that stores them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from flopnet.ledger.chain import EntryError, decode_body, read_entry_unverified
from flopnet.ledger.derived import Sums
from flopnet.protocol.errors import LedgerError
from flopnet.protocol.messages import CreditBody

SCHEMA_VERSION = 5

SCHEMA_V1 = """
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

# Schema 2: the other entry kinds' derived rows, and credit sums per contributor (all time, per
# UTC day, per quarter day, per hour) so that a leaderboard over a million entries reads
# thousands of rows, not a million. Like ``credits``, every row here is derived from the
# envelopes in the transaction that stores them, and ``verify_all`` recomputes them. FLOPs are
# summed as two 32-bit halves (``hi``, ``lo``): SQLite's 64-bit SUM overflows after a few
# thousand large credits.
SCHEMA_V2 = """
CREATE TABLE invalidations (
    signer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    contributor BLOB NOT NULL,
    severity TEXT NOT NULL,
    credit_signer BLOB NOT NULL,
    credit_seq INTEGER NOT NULL,
    submission_id BLOB NOT NULL,
    timestamp REAL NOT NULL,
    PRIMARY KEY (signer, seq)
);
CREATE INDEX invalidations_contributor ON invalidations (contributor, timestamp);
CREATE TABLE audits (
    signer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    contributor BLOB NOT NULL,
    submission_id BLOB NOT NULL,
    passed INTEGER NOT NULL,
    rate REAL NOT NULL,
    consecutive_valid INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    PRIMARY KEY (signer, seq)
);
CREATE TABLE profiles (
    signer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    contributor BLOB NOT NULL,
    display_name TEXT NOT NULL,
    team TEXT NOT NULL,
    updated_at REAL NOT NULL,
    profile_id BLOB NOT NULL,
    PRIMARY KEY (signer, seq)
);
CREATE INDEX profiles_contributor ON profiles (contributor, updated_at);
CREATE TABLE credit_totals (
    contributor BLOB NOT NULL,
    signer BLOB NOT NULL,
    flop_formula TEXT NOT NULL,
    hi INTEGER NOT NULL,
    lo INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (contributor, signer, flop_formula)
) WITHOUT ROWID;
CREATE TABLE signed_heads (
    signer BLOB PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    envelope BLOB NOT NULL
);
"""
# Credit sums per time bucket (days, quarter days, hours since the epoch, UTC).
BUCKET_TABLES = ("credit_days", "credit_quarters", "credit_hours")
_BUCKET_SCHEMA = """
CREATE TABLE {table} (
    bucket INTEGER NOT NULL,
    contributor BLOB NOT NULL,
    signer BLOB NOT NULL,
    hi INTEGER NOT NULL,
    lo INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (bucket, contributor, signer)
) WITHOUT ROWID;
CREATE INDEX {table}_contributor ON {table} (contributor, bucket);
"""
SCHEMA_V2 += "".join(_BUCKET_SCHEMA.format(table=table) for table in BUCKET_TABLES)

# Schema 3: the (contributor, timestamp) index also covers what the leaderboard sums, so that
# summing a contributor's credits over a time span (voided credit, the edge of a window) never
# reads the table itself: 4x faster on a million entries.
SCHEMA_V3 = """
DROP INDEX credits_contributor;
CREATE INDEX credits_contributor ON credits
    (contributor, timestamp, accepted, flops, generated_tokens, signer);
"""

# Schema 4: the sample a credit is for, so a validator credits each sample once (and every
# replica can see that it did). Backfilled from the envelopes.
SCHEMA_V4 = """
ALTER TABLE credits ADD COLUMN sample_index INTEGER NOT NULL DEFAULT 0;
CREATE INDEX credits_sample ON credits (signer, task_id, sample_index);
"""

# Schema 5: checkpoints. A validator keeps the state behind each of its checkpoint entries (and
# a node the states it adopted), and a chain joined at a checkpoint is anchored there: its
# entries start at the checkpoint entry, whose state holds the sums of what came before.
SCHEMA_V5 = """
CREATE TABLE checkpoints (
    signer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (signer, seq)
);
CREATE TABLE anchors (
    signer BLOB PRIMARY KEY,
    seq INTEGER NOT NULL,
    prev_hash BLOB NOT NULL
);
"""

INSERT = {
    "entries": "INSERT INTO entries (signer, seq, hash, prev_hash, timestamp, kind, envelope) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)",
    "credits": "INSERT INTO credits (signer, seq, contributor, flops, flop_formula, "
    "generated_tokens, prompt_tokens, task_id, submission_id, accepted, answer_score, "
    "timestamp, lease_id, sample_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "invalidations": "INSERT INTO invalidations (signer, seq, contributor, severity, "
    "credit_signer, credit_seq, submission_id, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "audits": "INSERT INTO audits (signer, seq, contributor, submission_id, passed, rate, "
    "consecutive_valid, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "profiles": "INSERT INTO profiles (signer, seq, contributor, display_name, team, updated_at, "
    "profile_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
}
_SUMS = "hi = hi + excluded.hi, lo = lo + excluded.lo, accepted = accepted + excluded.accepted, "
_SUMS += "rejected = rejected + excluded.rejected, tokens = tokens + excluded.tokens"
_ADD_TOTAL = (
    "INSERT INTO credit_totals (contributor, signer, flop_formula, hi, lo, accepted, rejected, "
    "tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    f"ON CONFLICT (contributor, signer, flop_formula) DO UPDATE SET {_SUMS}"
)
_ADD_BUCKET = (
    "INSERT INTO {table} (bucket, contributor, signer, hi, lo, accepted, rejected, tokens) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    f"ON CONFLICT (bucket, contributor, signer) DO UPDATE SET {_SUMS}"
)
_ADD_DAY = _ADD_BUCKET.format(table="credit_days")
_ADD_QUARTER = _ADD_BUCKET.format(table="credit_quarters")
_ADD_HOUR = _ADD_BUCKET.format(table="credit_hours")
# The derived tables of one entry each, and the entry kind their rows belong to.
DERIVED_TABLES = {
    "credits": "credit",
    "invalidations": "invalidation",
    "audits": "audit",
    "profiles": "profile",
}


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring a store to :data:`SCHEMA_VERSION` (inside the caller's write transaction)."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == 0:
        _script(conn, SCHEMA_V1)
        version = 1
    if version == 1:
        _script(conn, SCHEMA_V2)
        _backfill_sums(conn)  # schema 1 knew only credit entries
        version = 2
    if version == 2:
        _script(conn, SCHEMA_V3)
        version = 3
    if version == 3:
        _script(conn, SCHEMA_V4)
        _backfill_samples(conn)
        version = 4
    if version == 4:
        _script(conn, SCHEMA_V5)
        version = 5
    if version != SCHEMA_VERSION:
        raise LedgerError(
            f"{path} has ledger schema {version}; this version reads {SCHEMA_VERSION}"
        )
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _script(conn: sqlite3.Connection, schema: str) -> None:
    for statement in schema.split(";"):
        if statement.strip():
            conn.execute(statement)


def _backfill_sums(conn: sqlite3.Connection) -> None:
    by_signer: dict[bytes, Sums] = {}
    for row in conn.execute("SELECT * FROM credits ORDER BY signer, seq"):
        by_signer.setdefault(row[0], Sums()).add(tuple(row))
    for signer, sums in by_signer.items():
        write_sums(conn, signer, sums)


def _backfill_samples(conn: sqlite3.Connection) -> None:
    rows = conn.execute(
        "SELECT c.signer, c.seq, e.envelope FROM credits c JOIN entries e "
        "ON e.signer = c.signer AND e.seq = c.seq"
    ).fetchall()
    for signer, seq, envelope in rows:
        try:
            body = decode_body("credit", read_entry_unverified(envelope).entry.body)
        except EntryError:
            continue  # ``ledger verify`` reports the entry itself
        if isinstance(body, CreditBody):
            conn.execute(
                "UPDATE credits SET sample_index = ? WHERE signer = ? AND seq = ?",
                (body.sample_index, signer, seq),
            )


def write_sums(conn: sqlite3.Connection, signer: bytes, sums: Sums) -> None:
    """Add ``signer``'s credit sums to the sum tables (one upsert per key touched)."""
    executemany = conn.executemany
    executemany(_ADD_TOTAL, [(c, signer, f, *a) for (c, f), a in sums.totals.items()])
    for sql, buckets in (
        (_ADD_DAY, sums.days),
        (_ADD_QUARTER, sums.quarters),
        (_ADD_HOUR, sums.hours),
    ):
        executemany(sql, [(bucket, c, signer, *a) for (bucket, c), a in buckets.items()])
