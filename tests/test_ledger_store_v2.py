"""The store's second schema: entry kinds, batch appends, range ingest, signed heads, migration,
and tampering with derived rows and sums (each detected, naming the entry or the sums)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgpack
import pytest
from test_ledger import (
    ALICE,
    BOB,
    MALLORY,
    NET,
    OTHER_VALIDATOR,
    T0,
    VALIDATOR,
    build_chain,
    codes,
    credit,
    tamper_body,
)

from flopnet.ledger.chain import make_entry, read_entry_unverified, verify_entry
from flopnet.ledger.kinds import HARD, AuditBody, InvalidationBody, ProfileBody
from flopnet.ledger.leaderboard import leaderboard
from flopnet.ledger.store import EquivocationError, LedgerStore
from flopnet.protocol.codec import packb
from flopnet.protocol.envelope import message_id, seal
from flopnet.protocol.errors import LedgerError
from flopnet.protocol.messages import ContributorProfile, LedgerHead

V1 = VALIDATOR.public_key


def profile(name: str, team: str = "", at: float = 1.0) -> ProfileBody:
    return ProfileBody(seal(ContributorProfile(1, name, team, at), ALICE, NET))


def test_batch_append_is_one_chain_step_per_item(tmp_path: Path) -> None:
    with LedgerStore(tmp_path / "l.db") as store:
        store.append_local(VALIDATOR, NET, "credit", credit(ALICE, 0), now=T0)
        items = [
            ("audit", AuditBody(ALICE.public_key, bytes(32), False, 1.0, 0, ("proof failed",))),
            ("credit", credit(ALICE, 1, accepted=False)),
            ("invalidation", InvalidationBody(ALICE.public_key, HARD, V1, 0, bytes(32), "audit")),
        ]
        out = store.append_local_batch(VALIDATOR, NET, items, now=T0 + 5)
        assert [seq for seq, _, _ in out] == [1, 2, 3]
        prev = store.entries(V1, 0, 1)[0]
        for seq, h, data in out:
            v = verify_entry(data, NET, expected_seq=seq, expected_prev=message_id(prev))
            assert v.hash == h
            prev = data
        assert store.audit_results(V1) == [(ALICE.public_key, False)]
        assert store.verify_all(NET) == []
        # The hard invalidation voids the pending credit of seq 0.
        (alice,) = leaderboard(store, now=T0 + 10)
        assert alice.flops == 0 and alice.tasks_voided == 1 and alice.tasks_rejected == 1


def test_batch_append_is_all_or_nothing(tmp_path: Path) -> None:
    with LedgerStore(tmp_path / "l.db") as store:
        with pytest.raises(LedgerError):
            store.append_local_batch(
                VALIDATOR, NET, [("credit", credit(ALICE, 0)), ("nope", credit(ALICE, 1))]
            )
        assert store.head(V1) is None


def test_profile_entries_need_the_contributors_signature(tmp_path: Path) -> None:
    good = profile("alice", "red")
    entry = make_entry(VALIDATOR, NET, 0, bytes(32), "profile", good, T0)
    assert verify_entry(entry, NET).kind == "profile"
    # Another network's profile, or a profile whose bytes were changed, does not verify.
    foreign = ProfileBody(seal(ContributorProfile(1, "alice", "", 1.0), ALICE, "othernet"))
    with pytest.raises(LedgerError, match=r"entry seq 0 .*malformed 'profile' body.*signature"):
        verify_entry(make_entry(VALIDATOR, NET, 0, bytes(32), "profile", foreign, T0), NET)
    control = ProfileBody(seal(ContributorProfile(1, "\x1b[2Jx", "", 1.0), ALICE, NET))
    with pytest.raises(LedgerError, match="control characters"):
        verify_entry(make_entry(VALIDATOR, NET, 0, bytes(32), "profile", control, T0), NET)
    with LedgerStore(tmp_path / "l.db") as store:
        store.append_local(VALIDATOR, NET, "profile", good, now=T0)
        row = store.connection.execute("SELECT contributor, display_name, team FROM profiles")
        assert row.fetchall() == [(ALICE.public_key, "alice", "red")]


def test_ingest_range_stores_the_valid_prefix_and_names_the_bad_entry(tmp_path: Path) -> None:
    chain = build_chain(VALIDATOR, 10)
    bad = tamper_body(chain[6], flops=10**15)
    with LedgerStore(tmp_path / "l.db") as store:
        result = store.ingest_range([*chain[:6], bad, *chain[7:]], NET, {V1})
        assert [v.seq for v in result.stored] == [0, 1, 2, 3, 4, 5]
        assert result.error is not None and "entry seq 6" in str(result.error)
        assert "bad signature" in str(result.error)
        assert store.head(V1) == (5, message_id(chain[5]))
        again = store.ingest_range(chain, NET, {V1})  # overlap: duplicates, then the rest
        assert again.duplicates == 6 and len(again.stored) == 4 and again.error is None
        assert again.head == (9, message_id(chain[9]))
        repeated = build_chain(VALIDATOR, 12)
        within = store.ingest_range([repeated[10], repeated[11], repeated[10]], NET)
        assert (len(within.stored), within.duplicates, within.error) == (2, 1, None)
        gap = store.ingest_range(build_chain(VALIDATOR, 14)[13:], NET)
        assert gap.stored == [] and "out of order" in str(gap.error)
        mixed = store.ingest_range([build_chain(OTHER_VALIDATOR, 1)[0], chain[0]], NET)
        assert "one signer only" in str(mixed.error) and len(mixed.stored) == 1
        assert store.verify_all(NET) == []


def test_ingest_range_keeps_fork_evidence(tmp_path: Path) -> None:
    chain = build_chain(VALIDATOR, 5)
    prev = read_entry_unverified(chain[3]).entry.prev_hash
    fork = make_entry(VALIDATOR, NET, 3, prev, "credit", credit(BOB, 42), T0 + 3)
    with LedgerStore(tmp_path / "l.db") as store:
        store.ingest_range(chain, NET)
        result = store.ingest_range([chain[2], fork, chain[4]], NET)
        assert result.duplicates == 1 and isinstance(result.error, EquivocationError)
        (ev,) = store.equivocations()
        assert (ev.seq, ev.hash) == (3, message_id(fork))
        assert codes(store.verify_all(NET)) == [("equivocation", 3)]


def test_signed_head_reveals_a_truncated_replica(tmp_path: Path) -> None:
    chain = build_chain(VALIDATOR, 10)
    head = seal(LedgerHead(1, 9, message_id(chain[9]), T0 + 9), VALIDATOR, NET)
    with LedgerStore(tmp_path / "l.db") as store:
        store.ingest_range(chain, NET)
        assert store.record_head(head, NET) is True
        older = seal(LedgerHead(1, 4, message_id(chain[4]), T0 + 4), VALIDATOR, NET)
        assert store.record_head(older, NET) is False  # the highest head is kept
        assert store.signed_head(V1) == (9, message_id(chain[9]))
        assert store.verify_all(NET) == []
        conn = store.connection
        for table in ("entries", "credits"):
            conn.execute(f"DELETE FROM {table} WHERE seq >= 7")
        problems = store.verify_all(NET)
        truncated = [p for p in problems if p.code == "truncated"]
        assert len(truncated) == 1 and "ends at seq 6" in truncated[0].message
        assert f"entry seq 9 ({message_id(chain[9])[:6].hex()})" in truncated[0].message
        # The deleted credits are still in the sums: that is reported too.
        assert any(p.code == "store_mismatch" and p.seq is None for p in problems)
        with pytest.raises(Exception, match="signature"):
            store.record_head(head, "othernet")


def test_tampered_derived_rows_and_sums_are_named(tmp_path: Path) -> None:
    with LedgerStore(tmp_path / "l.db") as store:
        for i in range(4):
            store.append_local(VALIDATOR, NET, "credit", credit(ALICE, i), now=T0 + i)
        store.append_local(
            VALIDATOR,
            NET,
            "invalidation",
            InvalidationBody(ALICE.public_key, "soft", V1, 1, bytes(32), "x"),
            now=T0 + 9,
        )
        store.append_local(VALIDATOR, NET, "profile", profile("alice"), now=T0 + 10)
        conn = store.connection
        conn.execute("UPDATE invalidations SET severity = 'hard'")  # void everything instead
        conn.execute("UPDATE profiles SET display_name = 'mallory'")
        conn.execute("UPDATE credit_totals SET hi = hi + 1000")  # inflate the leaderboard
        conn.execute("UPDATE credit_hours SET tokens = 0")
        problems = store.verify_all(NET)
        found = {(p.code, p.seq) for p in problems}
        assert ("store_mismatch", 4) in found and ("store_mismatch", 5) in found
        messages = " ".join(p.message for p in problems)
        assert "derived invalidations row" in messages and "derived profiles row" in messages
        assert "credit_totals" in messages and "credit_hours" in messages
        assert ALICE.peer_id in messages  # the sums name the contributor whose sums are wrong


V1_SCHEMA_ROW = (
    "INSERT INTO credits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
)


def test_schema_1_files_are_migrated(tmp_path: Path) -> None:
    # A ledger written by the previous version: only entries, credits and equivocations.
    path = tmp_path / "old.db"
    with LedgerStore(tmp_path / "donor.db") as donor:
        for i in range(5):
            donor.append_local(
                VALIDATOR, NET, "credit", credit(ALICE if i % 2 else BOB, i), now=T0 + i
            )
        entries = donor.connection.execute("SELECT * FROM entries").fetchall()
        # The columns schema 1 had (later schemas added sample_index).
        credits = donor.connection.execute(
            "SELECT signer, seq, contributor, flops, flop_formula, generated_tokens, "
            "prompt_tokens, task_id, submission_id, accepted, answer_score, timestamp, lease_id "
            "FROM credits"
        ).fetchall()
        expected = leaderboard(donor, now=T0)
    from flopnet.ledger.schema import SCHEMA_V1 as _SCHEMA_V1
    from flopnet.ledger.schema import SCHEMA_VERSION

    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA_V1)
    conn.executemany(V1_SCHEMA_ROW[1], entries)
    conn.executemany(V1_SCHEMA_ROW[0], credits)
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    with LedgerStore(path) as store:
        assert store.connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.verify_all(NET) == []  # the derived rows, sample_index included, agree
        assert store.credited_samples(VALIDATOR.public_key) == {
            (c.task_id, c.sample_index)
            for c in (credit(ALICE if i % 2 else BOB, i) for i in range(5))
            if c.accepted
        }
        assert leaderboard(store, now=T0) == expected
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=7")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="schema 7"):
        LedgerStore(path)


def test_entries_from_a_key_outside_the_manifest_are_refused(tmp_path: Path) -> None:
    forged = build_chain(MALLORY, 2)
    with LedgerStore(tmp_path / "l.db") as store:
        result = store.ingest_range(forged, NET, {V1})
        assert result.stored == [] and "not an allowed validator" in str(result.error)
        assert MALLORY.peer_id in str(result.error)


def test_unknown_kind_in_a_signed_entry_is_named(tmp_path: Path) -> None:
    from flopnet.protocol.messages import LedgerEntry

    entry = LedgerEntry(1, 0, bytes(32), T0, "bonus", packb({"x": 1}))
    data = seal(entry, VALIDATOR, NET)
    with pytest.raises(LedgerError, match=r"entry seq 0 .*unknown entry kind 'bonus'"):
        verify_entry(data, NET)
    assert msgpack.unpackb(data)["type"] == "ledger_entry"
