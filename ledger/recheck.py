"""The whole-store check behind ``flopnet ledger verify``: every chain, column, derived row and
sum re-derived from the signed envelopes, which are the only truth in the store."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flopnet.ledger.chain import (
    GENESIS_PREV,
    ChainProblem,
    EntryError,
    decode_body,
    entry_name,
    read_entry_unverified,
    signer_name,
    verify_chain,
)
from flopnet.ledger.checkpoint import baseline_sums, decode_state
from flopnet.ledger.derived import Sums, derive
from flopnet.ledger.joining import anchor, checkpoint_problems, stored_state
from flopnet.ledger.schema import DERIVED_TABLES
from flopnet.protocol.envelope import open_envelope
from flopnet.protocol.errors import MalformedMessage
from flopnet.protocol.messages import LedgerHead

if TYPE_CHECKING:
    from flopnet.ledger.store import LedgerStore


def verify_store(store: LedgerStore, network_id: str) -> list[ChainProblem]:
    """Re-verify every stored chain, the stored columns and every derived row and sum
    against the envelopes, and report stored equivocation evidence."""
    conn = store.connection
    problems: list[ChainProblem] = []
    conn.execute("BEGIN")  # one consistent snapshot, even while another process writes
    try:
        signed = _verified_signed_heads(conn, network_id, problems)
        for signer in sorted(set(store.signers()) | set(signed)):
            sums = Sums()
            start = anchor(store, signer)
            if start is not None:
                # Joined at a checkpoint: the chain starts there, the sums at its state's.
                kept = stored_state(store, signer, start[0])
                if kept is not None:
                    try:
                        sums = baseline_sums(decode_state(kept))
                    except MalformedMessage as exc:
                        message = f"the adopted checkpoint state is malformed: {exc}"
                        problems.append(ChainProblem(signer, start[0], None, "checkpoint", message))
            envelopes = _audited_envelopes(conn, signer, network_id, problems, sums)
            problems.extend(
                verify_chain(
                    envelopes,
                    network_id,
                    signer,
                    expected_head=signed.get(signer),
                    start_seq=0 if start is None else start[0],
                    start_prev=GENESIS_PREV if start is None else start[1],
                )
            )
            problems.extend(_check_sums(conn, signer, sums))
            problems.extend(checkpoint_problems(store, signer, network_id))
        for table, kind in DERIVED_TABLES.items():
            orphans = conn.execute(
                f"SELECT d.signer, d.seq FROM {table} d LEFT JOIN entries e "
                "ON e.signer = d.signer AND e.seq = d.seq "
                "WHERE e.signer IS NULL OR e.kind != ?",
                (kind,),
            ).fetchall()
            for signer, seq in orphans:
                message = f"entry seq {seq}: a {table} row without a {kind} entry"
                problems.append(ChainProblem(signer, seq, None, "store_mismatch", message))
        orphan_sums = conn.execute(
            "SELECT DISTINCT t.signer FROM credit_totals t LEFT JOIN entries e "
            "ON e.signer = t.signer WHERE e.signer IS NULL"
        ).fetchall()
        for (signer,) in orphan_sums:
            message = f"credit sums of {signer_name(signer)}, who has no stored entries"
            problems.append(ChainProblem(signer, None, None, "store_mismatch", message))
        for ev in store.equivocations():
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
        conn.execute("COMMIT")
    return problems


def _verified_signed_heads(
    conn: sqlite3.Connection, network_id: str, problems: list[ChainProblem]
) -> dict[bytes, tuple[int, bytes]]:
    out = {}
    for signer, seq, h, envelope in conn.execute(
        "SELECT signer, seq, hash, envelope FROM signed_heads ORDER BY signer"
    ).fetchall():
        try:
            opened = open_envelope(envelope, network_id, expected=LedgerHead)
            head = opened.expect(LedgerHead)
            if (opened.signer, head.seq, head.hash) != (signer, seq, h):
                raise MalformedMessage("its columns disagree with the signed head")
        except MalformedMessage as exc:
            message = f"the kept signed head of {signer_name(signer)} is invalid: {exc}"
            problems.append(ChainProblem(signer, seq, h, "store_mismatch", message))
            continue
        out[signer] = (seq, bytes(h))
    return out


def _audited_envelopes(
    conn: sqlite3.Connection,
    signer: bytes,
    network_id: str,
    problems: list[ChainProblem],
    sums: Sums,
) -> Iterator[bytes]:
    """Yield ``signer``'s envelopes in seq order, reporting rows whose columns or derived
    rows disagree with the envelope (the envelope is the truth), and summing the credits
    the envelopes say into ``sums``."""
    columns = {
        table: [
            row[1]
            for row in conn.execute(f"PRAGMA table_info({table})").fetchall()
            if row[1] not in ("signer", "seq")
        ]
        for table in DERIVED_TABLES
    }
    joined = ", ".join(f"{t[0]}.{c}" for t in DERIVED_TABLES for c in ("seq", *columns[t]))
    joins = " ".join(
        f"LEFT JOIN {t} {t[0]} ON {t[0]}.signer = e.signer AND {t[0]}.seq = e.seq"
        for t in DERIVED_TABLES
    )
    cursor = conn.execute(
        f"SELECT e.seq, e.hash, e.prev_hash, e.timestamp, e.kind, e.envelope, {joined} "
        f"FROM entries e {joins} WHERE e.signer = ? ORDER BY e.seq",
        (signer,),
    )
    for row in cursor:
        seq, h, prev, ts, kind, envelope = row[:6]
        stored_rows: dict[str, tuple[object, ...]] = {}
        offset = 6
        for table in DERIVED_TABLES:
            width = 1 + len(columns[table])
            part = row[offset : offset + width]
            offset += width
            if part[0] is not None:
                stored_rows[table] = (signer, *part)
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
            body = decode_body(e.kind, e.body)
            derived = derive(signer, e.seq, e.timestamp, body, network_id).rows
        except MalformedMessage:
            derived = {}  # verify_chain reports the malformed body
        credit = derived.get("credits")
        if credit is not None:
            sums.add(credit)
        for table in DERIVED_TABLES:
            if derived.get(table) != stored_rows.get(table):
                problems.append(
                    ChainProblem(
                        signer,
                        seq,
                        h,
                        "store_mismatch",
                        f"{name}: derived {table} row disagrees with the entry",
                    )
                )


def _check_sums(conn: sqlite3.Connection, signer: bytes, sums: Sums) -> list[ChainProblem]:
    """Compare the stored credit sums of ``signer`` with those recomputed from envelopes."""
    problems = []
    tables: list[tuple[str, str, dict[Any, list[int]]]] = [
        ("credit_totals", "contributor, flop_formula", sums.totals),
        ("credit_days", "bucket, contributor", sums.days),
        ("credit_quarters", "bucket, contributor", sums.quarters),
        ("credit_hours", "bucket, contributor", sums.hours),
    ]
    for table, key_columns, expected in tables:
        rows = conn.execute(
            f"SELECT {key_columns}, hi, lo, accepted, rejected, tokens FROM {table} "
            "WHERE signer = ?",
            (signer,),
        ).fetchall()
        stored = {(row[0], row[1]): list(row[2:]) for row in rows}
        for key in sorted(set(stored) | set(expected), key=repr):
            if stored.get(key) == expected.get(key):
                continue
            if table == "credit_totals":
                contributor, what = key[0], f"formula {key[1]}"
            else:
                unit = table.removeprefix("credit_").removesuffix("s")
                contributor, what = key[1], f"{unit} bucket {key[0]}"
            problems.append(
                ChainProblem(
                    signer,
                    None,
                    None,
                    "store_mismatch",
                    f"{table} ({what}) of contributor {signer_name(contributor)} disagree "
                    f"with the credit entries of {signer_name(signer)}",
                )
            )
    return problems
