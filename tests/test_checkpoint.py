"""Checkpoints: the state's strict decoder (hypothesis), a validator's checkpoint entry, a new
node joining at it and fetching only what follows, forged or inconsistent checkpoints refused
with the reason, and ``ledger verify`` re-deriving every checkpoint from the first entry."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ledger import ALICE, BOB, MALLORY, NET, OTHER_VALIDATOR, T0, VALIDATOR, credit

from flopnet.ledger.chain import EntryError
from flopnet.ledger.checkpoint import (
    AuditRow,
    CheckpointError,
    CheckpointState,
    CreditRow,
    decode_state,
)
from flopnet.ledger.joining import (
    adopt_checkpoint,
    append_checkpoint,
    latest_checkpoint,
    state_at,
    verify_checkpoint,
)
from flopnet.ledger.kinds import HARD, KIND_CHECKPOINT, AuditBody, InvalidationBody
from flopnet.ledger.leaderboard import leaderboard
from flopnet.ledger.store import LedgerStore
from flopnet.protocol.errors import MalformedMessage
from flopnet.protocol.identity import Identity

V1 = VALIDATOR.public_key
VALIDATORS = {V1, OTHER_VALIDATOR.public_key}

keys = st.binary(min_size=32, max_size=32)
credit_rows = st.builds(
    CreditRow,
    keys,
    st.sampled_from(["matmul-v1", "2NT-v0"]),
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)
audit_rows = st.builds(
    lambda k, v, f, extra: AuditRow(k, v, v + f + extra, f),
    keys,
    st.integers(0, 2**30),
    st.integers(0, 2**30),
    st.integers(0, 2**30),
)
states = st.builds(
    lambda signer, seq, head, credits, audits: CheckpointState(
        signer,
        seq,
        head,
        tuple({(c.contributor, c.formula): c for c in credits}.values()),
        tuple({a.contributor: a for a in audits}.values()),
    ),
    keys,
    st.integers(0, 2**63 - 1),
    keys,
    st.lists(credit_rows, max_size=6),
    st.lists(audit_rows, max_size=6),
)


@settings(max_examples=200, deadline=None)
@given(states)
def test_a_state_round_trips_and_has_one_encoding(state: CheckpointState) -> None:
    data = state.encode()
    decoded = decode_state(data)
    assert decoded.encode() == data
    assert sorted(decoded.credits) == sorted(state.credits)
    assert sorted(decoded.audits) == sorted(state.audits)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_are_refused_with_one_error(data: bytes) -> None:
    try:
        state = decode_state(data)
    except MalformedMessage:
        return
    assert state.encode() == data  # whatever decodes is canonical


@settings(max_examples=300, deadline=None)
@given(states, st.data())
def test_a_changed_byte_is_refused_or_decodes_canonically(state: CheckpointState, data) -> None:  # type: ignore[no-untyped-def]
    raw = bytearray(state.encode())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from([len(raw), len(raw) - 1, len(raw) + 1]))
    mutated = bytes(raw[:cut]) + (b"\x00" if cut > len(raw) else b"")
    try:
        decoded = decode_state(mutated)
    except MalformedMessage:
        return
    assert decoded.encode() == mutated


def test_the_decoder_names_what_is_wrong() -> None:
    good = CheckpointState(
        V1, 3, b"h" * 32, (CreditRow(b"a" * 32, "matmul-v1", 10, 1, 0, 5),), ()
    ).encode()
    with pytest.raises(MalformedMessage, match="not a version 1"):
        decode_state(b"XXXX" + good[4:])
    with pytest.raises(MalformedMessage, match="its counts say"):
        decode_state(good + b"\x00")
    unsorted = CheckpointState(
        V1,
        3,
        b"h" * 32,
        (),
        (AuditRow(b"b" * 32, 1, 1, 0), AuditRow(b"a" * 32, 1, 1, 0)),
    )
    swapped = unsorted.encode()  # encode sorts; swap the two rows back by hand
    row = 44
    body = swapped[-2 * row :]
    with pytest.raises(MalformedMessage, match="sorted"):
        decode_state(swapped[: -2 * row] + body[row:] + body[:row])


def _validator_chain(path: Path) -> LedgerStore:
    """A validator's chain: credits, audits, a failed audit with its invalidation."""
    store = LedgerStore(path)
    for i in range(6):
        store.append_local(VALIDATOR, NET, "credit", credit(ALICE, i), now=T0 + i)
    store.append_local(VALIDATOR, NET, "credit", credit(BOB, 6, accepted=False), now=T0 + 6)
    items = [
        ("audit", AuditBody(ALICE.public_key, bytes(32), True, 1.0, 0, ("ok",))),
        ("audit", AuditBody(BOB.public_key, bytes(32), False, 1.0, 0, ("proof failed",))),
        ("invalidation", InvalidationBody(BOB.public_key, HARD, V1, 6, bytes(32), "audit")),
    ]
    store.append_local_batch(VALIDATOR, NET, items, now=T0 + 7)
    return store


def test_a_new_node_joins_at_a_checkpoint_and_fetches_only_what_follows(tmp_path: Path) -> None:
    full = _validator_chain(tmp_path / "validator.db")
    seq, state_bytes = append_checkpoint(full, VALIDATOR, NET, now=T0 + 8)
    for i in range(10, 13):
        full.append_local(VALIDATOR, NET, "credit", credit(BOB, i), now=T0 + i)
    assert full.verify_all(NET) == []  # every checkpoint re-derived from the first entry
    entry, kept = latest_checkpoint(full, V1) or (b"", b"")
    assert kept == state_bytes

    with LedgerStore(tmp_path / "joiner.db") as joiner:
        adopt_checkpoint(joiner, entry, kept, NET, VALIDATORS)
        after = full.entries(V1, seq + 1, 100)
        result = joiner.ingest_range(after, NET, VALIDATORS)
        assert result.error is None and len(result.stored) == len(after) == 3
        assert joiner.head(V1) == full.head(V1)
        # Only the checkpoint and what follows it are held; the sums are the full node's.
        assert len(joiner.entries(V1, 0, 100)) == 1 + len(after)
        total = "SELECT contributor, flop_formula, hi * 4294967296 + lo, accepted, rejected, "
        total += "tokens FROM credit_totals ORDER BY 1, 2"
        assert (
            joiner.connection.execute(total).fetchall() == full.connection.execute(total).fetchall()
        )
        assert [(s.contributor, s.flops) for s in leaderboard(joiner, now=T0 + 10**6)] == [
            (s.contributor, s.flops) for s in leaderboard(full, now=T0 + 10**6)
        ]
        # Entries from before the checkpoint, served again, are not held and change nothing.
        again = joiner.ingest_range(full.entries(V1, 0, 100), NET, VALIDATORS)
        assert again.error is None and not again.stored
        assert joiner.verify_all(NET) == []
        # The audit book carries over: a validator restarting from it keeps every record.
        assert state_at(joiner, V1, seq).audits == state_at(full, V1, seq).audits
    full.close()


def test_forged_or_inconsistent_checkpoints_are_refused(tmp_path: Path) -> None:
    full = _validator_chain(tmp_path / "validator.db")
    seq, state_bytes = append_checkpoint(full, VALIDATOR, NET, now=T0 + 8)
    entry = full.entries(V1, seq, 1)[0]
    state = decode_state(state_bytes)
    richer = CheckpointState(
        state.signer,
        state.covers_seq,
        state.head_hash,
        tuple(
            CreditRow(c.contributor, c.formula, c.flops * 10, c.accepted, c.rejected, c.tokens)
            for c in state.credits
        ),
        state.audits,
    ).encode()
    with pytest.raises(CheckpointError, match=r"SHA-256 .* is not the signed"):
        verify_checkpoint(entry, richer, NET, VALIDATORS)
    with pytest.raises(CheckpointError, match="bytes, the entry says"):
        verify_checkpoint(entry, state_bytes + b"\x00", NET, VALIDATORS)
    with pytest.raises(CheckpointError, match="not a validator"):
        verify_checkpoint(entry, state_bytes, NET, {OTHER_VALIDATOR.public_key})
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        verify_checkpoint(full.entries(V1, 0, 1)[0], state_bytes, NET, VALIDATORS)
    with pytest.raises(EntryError, match="bad signature"):
        verify_checkpoint(entry, state_bytes, "othernet", VALIDATORS)
    # A checkpoint signed by someone else over the same state does not verify as the chain's.
    with LedgerStore(tmp_path / "mallory.db") as other:
        for i in range(9):
            other.append_local(MALLORY, NET, "credit", credit(ALICE, i), now=T0 + i)
        _, mallory_state = append_checkpoint(other, MALLORY, NET, now=T0 + 9)
        forged = other.entries(MALLORY.public_key, 9, 1)[0]
        with pytest.raises(CheckpointError, match="not a validator"):
            verify_checkpoint(forged, mallory_state, NET, VALIDATORS)
    # A state of another head (the chain before the last entry) is refused by the link.
    earlier = state_at(full, V1, seq - 2)
    moved = CheckpointState(V1, seq - 1, earlier.head_hash, earlier.credits, earlier.audits)
    with pytest.raises(CheckpointError):
        verify_checkpoint(entry, moved.encode(), NET, VALIDATORS)
    # Adopting onto a chain already held is refused: a checkpoint starts an empty chain.
    with pytest.raises(CheckpointError, match="already stored"):
        adopt_checkpoint(full, entry, state_bytes, NET, VALIDATORS)
    full.close()


def test_ledger_verify_catches_a_checkpoint_that_misstates_the_chain(tmp_path: Path) -> None:
    """A validator that signs a checkpoint over sums its chain does not give is caught by anyone
    who verifies from the first entry (a joining node could not tell, and trusted the signer)."""
    with _validator_chain(tmp_path / "validator.db") as store:
        head = store.head(V1)
        assert head is not None
        honest = state_at(store, V1, head[0])
        inflated = CheckpointState(
            V1,
            honest.covers_seq,
            honest.head_hash,
            (*honest.credits, CreditRow(MALLORY.public_key, "matmul-v1", 10**18, 1, 0, 1)),
            honest.audits,
        )
        store.append_local(VALIDATOR, NET, KIND_CHECKPOINT, inflated.body(), now=T0 + 9)
        problems = store.verify_all(NET)
        assert [p.code for p in problems] == ["checkpoint"]
        assert "give a state with SHA-256" in problems[0].message
        assert hashlib.sha256(inflated.encode()).digest() == inflated.body().state_sha256


def test_flopnet_ledger_checkpoint_and_verify_of_a_joined_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A validator appends a checkpoint from the command line; a copy joined at it passes
    `flopnet ledger verify`, audit entries included (their records start from the state's)."""
    from flopnet.node.cli.main import main
    from flopnet.node.config import NetworkParams, create_network
    from flopnet.protocol.identity import KEY_FILE

    founder = Identity(b"\x63" * 32)
    params = NetworkParams(network_id="assigned", validators=(V1.hex(),), audit_rate_floor=0.05)
    net = create_network(founder, "cptest", params, tmp_path / "network.manifest")
    node = tmp_path / "validator"
    node.mkdir()
    (node / KEY_FILE).write_bytes(VALIDATOR.seed)
    (node / KEY_FILE).chmod(0o600)
    nid = net.network_id
    with LedgerStore(node / "ledger.sqlite") as store:
        for i in range(4):
            body = credit(ALICE, i)
            audit = AuditBody(ALICE.public_key, body.submission_id, True, 1.0, i, ("ok",))
            store.append_local_batch(
                VALIDATOR, nid, [("credit", body), ("audit", audit)], now=T0 + i
            )
    assert (
        main(
            [
                "ledger",
                "checkpoint",
                "--data-dir",
                str(node),
                "--manifest",
                str(tmp_path / "network.manifest"),
            ]
        )
        == 0
    )
    assert "checkpoint appended at seq 8" in capsys.readouterr().out
    with LedgerStore(node / "ledger.sqlite") as store:
        body = credit(ALICE, 9)
        audit = AuditBody(ALICE.public_key, body.submission_id, True, 1.0, 4, ("ok",))
        store.append_local_batch(VALIDATOR, nid, [("credit", body), ("audit", audit)], now=T0 + 9)
        entry, state = latest_checkpoint(store, V1) or (b"", b"")
        after = store.entries(V1, 9, 100)
    joined = tmp_path / "joined"
    joined.mkdir()
    with LedgerStore(joined / "ledger.sqlite") as copy:
        adopt_checkpoint(copy, entry, state, nid, {V1})
        assert copy.ingest_range(after, nid, {V1}).error is None
    manifest = str(tmp_path / "network.manifest")
    for where in (node, joined):
        code = main(["ledger", "verify", "--data-dir", str(where), "--manifest", manifest])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "OK" in out
