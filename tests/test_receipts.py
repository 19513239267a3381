"""Receipts and a contributor's credits: made from a validator's signed chain, kept in a file,
and checked offline against a replica (forged, edited, missing, equivocated, voided)."""

from __future__ import annotations

import json
from pathlib import Path

from flopnet.ledger.chain import GENESIS_PREV, make_entry
from flopnet.ledger.credits import contributor_credits
from flopnet.ledger.kinds import HARD, KIND_CREDIT, KIND_INVALIDATION, InvalidationBody
from flopnet.ledger.receipts import (
    Receipt,
    append_receipt,
    read_receipts,
    receipt_from_entry,
    receipts_from_store,
    verify_receipts,
)
from flopnet.ledger.store import LedgerStore
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import CreditBody

NET = "receipts"
VALIDATOR = Identity(b"\x41" * 32)
OTHER = Identity(b"\x42" * 32)
ME = Identity(b"\x43" * 32)
T0 = 1_700_000_000.0
DAY = 86400.0


def credit(n: int, accepted: bool = True, who: Identity = ME) -> CreditBody:
    return CreditBody(
        contributor=who.public_key,
        lease_id=n.to_bytes(16, "big"),
        submission_id=n.to_bytes(32, "big"),
        task_id=f"task-{n}",
        sample_index=0,
        prompt_tokens=20,
        generated_tokens=30,
        flops=1000 + n if accepted else 0,
        flop_formula="matmul-v1",
        accepted=accepted,
        answer_score=1.0 if accepted else 0.0,
        reasons=("toploc: fine",) if accepted else ("toploc chunk 0: exp_mismatches 99 > 10",),
    )


def ledger(tmp_path: Path, name: str = "ledger.sqlite") -> LedgerStore:
    store = LedgerStore(tmp_path / name)
    for n, (accepted, when) in enumerate([(True, T0), (False, T0 + 1), (True, T0 + 2 * DAY)]):
        store.append_local(VALIDATOR, NET, KIND_CREDIT, credit(n, accepted), now=when)
    return store


def test_credits_have_states_and_receipts_check_out(tmp_path: Path) -> None:
    store = ledger(tmp_path)
    now = T0 + 2 * DAY + 10
    rows = contributor_credits(store, ME.public_key, lock_window=DAY, now=now)
    assert [r.state for r in rows] == ["pending", "rejected", "final"]
    receipts = receipts_from_store(store, ME.public_key, NET, lock_window=DAY)
    assert len(receipts) == 2 and {r.task_id for r in receipts} == {"task-0", "task-2"}
    checks = verify_receipts(
        receipts, store, validators=frozenset({VALIDATOR.public_key}), lock_window=DAY, now=now
    )
    assert all(c.ok for c in checks), [c.problems for c in checks]
    assert sorted(c.state for c in checks) == ["final", "pending"]
    receipt = receipts[0]
    assert receipt.signature and receipt.entry_hash and receipt.flop_formula == "matmul-v1"


def test_edited_forged_and_foreign_receipts_fail(tmp_path: Path) -> None:
    store = ledger(tmp_path)
    good = receipts_from_store(store, ME.public_key, NET, lock_window=DAY)[0]
    inflated = Receipt.from_json({**good.to_json(), "flops": good.flops * 1000})
    forged_data = make_entry(OTHER, NET, good.seq, GENESIS_PREV, KIND_CREDIT, credit(9), T0)
    forged = receipt_from_entry(forged_data, NET)
    elsewhere = Receipt.from_json({**good.to_json(), "network_id": "another"})
    checks = verify_receipts(
        [inflated, forged, elsewhere],
        store,
        validators=frozenset({VALIDATOR.public_key}),
        lock_window=DAY,
    )
    assert not any(c.ok for c in checks)
    assert "fields differ" in checks[0].problems[0] and "flops" in checks[0].problems[0]
    assert any("not one of the network's validators" in p for p in checks[1].problems)
    assert "signed entry is invalid" in checks[2].problems[0]


def test_a_replica_that_lacks_the_entry_or_holds_another_says_so(tmp_path: Path) -> None:
    store = ledger(tmp_path)
    receipts = receipts_from_store(store, ME.public_key, NET, lock_window=DAY)
    empty = LedgerStore(tmp_path / "empty.sqlite")
    missing = verify_receipts(receipts, empty, validators=None, lock_window=DAY)
    assert all(not c.ok and c.state == "unknown" for c in missing)
    assert "holds no entry" in missing[0].problems[0]
    # A replica holding another entry the validator signed at that seq: equivocation.
    forked = LedgerStore(tmp_path / "forked.sqlite")
    for n in range(3):
        forked.append_local(VALIDATOR, NET, KIND_CREDIT, credit(n + 10), now=T0 + n)
    checks = verify_receipts(receipts, forked, validators=None, lock_window=DAY)
    assert any("equivocation" in p for c in checks for p in c.problems)


def test_a_failed_audit_voids_pending_credit_and_its_receipt_says_so(tmp_path: Path) -> None:
    store = ledger(tmp_path)
    receipts = receipts_from_store(store, ME.public_key, NET, lock_window=DAY)
    head = store.head(VALIDATOR.public_key)
    assert head is not None
    invalidation = InvalidationBody(
        contributor=ME.public_key,
        severity=HARD,
        credit_signer=VALIDATOR.public_key,
        credit_seq=head[0],
        submission_id=b"\0" * 32,
        reason="audit failed: toploc chunk 0: exp_mismatches 99 > 10",
    )
    store.append_local(VALIDATOR, NET, KIND_INVALIDATION, invalidation, now=T0 + 2 * DAY + 5)
    now = T0 + 2 * DAY + 10
    rows = contributor_credits(store, ME.public_key, lock_window=DAY, now=now)
    voided = [r for r in rows if r.state == "void"]
    assert len(voided) == 1 and voided[0].voided_by is not None
    assert voided[0].voided_by.reason.startswith("audit failed")
    checks = verify_receipts(receipts, store, validators=None, lock_window=DAY, now=now)
    states = {c.receipt.task_id: (c.state, c.ok) for c in checks}
    assert states == {"task-2": ("void", False), "task-0": ("final", True)}


def test_the_receipts_file_is_private_and_survives_a_cut_line(tmp_path: Path) -> None:
    store = ledger(tmp_path)
    path = tmp_path / "receipts.jsonl"
    for receipt in receipts_from_store(store, ME.public_key, NET, lock_window=DAY):
        append_receipt(path, receipt)
        append_receipt(path, receipt)  # kept twice: read once
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with path.open("a") as handle:
        handle.write(json.dumps({"task_id": "x"}) + "\n" + '{"network_id": "rec')
    receipts, problems = read_receipts(path)
    assert len(receipts) == 2 and len(problems) == 2
    assert read_receipts(tmp_path / "none.jsonl") == ([], [])
