"""Checkpoints in a store: a validator writes them, any node serves them, a new node adopts one
and then fetches only the entries after it, and a node with the whole chain re-derives each.

* :func:`append_checkpoint` - a validator's next entry commits to its chain's state so far;
* :func:`latest_checkpoint` - (entry envelope, state bytes) of the latest one kept;
* :func:`checkpoint_for_joiner` - the latest one old enough for a joining node;
* :func:`keep_checkpoint_state` - a replica derives a replicated checkpoint's state, checks it
  and keeps it (so any node holding the chain serves checkpoints);
* :func:`adopt_checkpoint` - verify a checkpoint entry and its state (signature, signer, the
  head it covers, the SHA-256, the counts) and anchor an empty chain at it;
* :func:`state_at` - a chain's state over its entries up to a seq, from the store's rows (for an
  anchored chain: the adopted state plus the rows after it);
* :func:`checkpoint_problems` - every checkpoint entry of a chain held from genesis, checked
  against the state its entries give (``flopnet ledger verify``).
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import TYPE_CHECKING

from flopnet.ledger.chain import (
    ChainProblem,
    EntryError,
    VerifiedEntry,
    entry_name,
    signer_name,
    verify_entry,
)
from flopnet.ledger.checkpoint import (
    CheckpointError,
    CheckpointState,
    decode_state,
    state_from_rows,
    verify_state,
)
from flopnet.ledger.kinds import KIND_CHECKPOINT, CheckpointBody
from flopnet.ledger.policy import AuditState, after_audit, audit_states
from flopnet.protocol.errors import LedgerError, MalformedMessage
from flopnet.protocol.identity import Identity

if TYPE_CHECKING:
    from flopnet.ledger.store import LedgerStore


def anchor(store: LedgerStore, signer: bytes) -> tuple[int, bytes] | None:
    """(seq, prev_hash) where a chain joined at a checkpoint starts, or None (from genesis)."""
    row = store.connection.execute(
        "SELECT seq, prev_hash FROM anchors WHERE signer = ?", (signer,)
    ).fetchone()
    return None if row is None else (int(row[0]), bytes(row[1]))


def anchored_audit_book(store: LedgerStore, signer: bytes) -> dict[bytes, AuditState]:
    """The audit records a chain joined at a checkpoint starts from (empty from genesis)."""
    base = anchor(store, signer)
    kept = None if base is None else stored_state(store, signer, base[0])
    if kept is None:
        return {}
    return {a.contributor: a.state() for a in decode_state(kept).audits}


def stored_state(store: LedgerStore, signer: bytes, seq: int) -> bytes | None:
    """The state bytes kept for ``signer``'s checkpoint entry ``seq``."""
    row = store.connection.execute(
        "SELECT state FROM checkpoints WHERE signer = ? AND seq = ?", (signer, seq)
    ).fetchone()
    return None if row is None else bytes(row[0])


def state_at(
    store: LedgerStore, signer: bytes, covers_seq: int, *, from_kept: bool = False
) -> CheckpointState:
    """The chain's state over entries ``0..covers_seq`` from the store's derived rows.

    It starts from the anchor's adopted state (or genesis); with ``from_kept``, from the latest
    state kept for an earlier checkpoint instead (each was checked against the entries when it
    was kept), so a validator's next checkpoint costs only the entries since its last one.
    ``flopnet ledger verify`` leaves it off: it re-derives every state from the entries."""
    conn = store.connection
    head = store.entry_hash(signer, covers_seq)
    if head is None:
        raise LedgerError(f"no stored entry seq {covers_seq} of {signer_name(signer)}")
    sums: dict[tuple[bytes, str], list[int]] = {}
    audits: dict[bytes, AuditState] = {}
    start = 0
    base = anchor(store, signer)
    if base is not None and covers_seq < base[0]:
        raise LedgerError(f"{signer_name(signer)}'s chain is held from seq {base[0]} only")
    if from_kept:
        # A checkpoint entry at seq K covers 0..K-1: any K <= covers_seq + 1 is a start.
        kept = conn.execute(
            "SELECT seq FROM checkpoints WHERE signer = ? AND seq <= ? ORDER BY seq DESC LIMIT 1",
            (signer, covers_seq + 1),
        ).fetchone()
        if kept is not None and (base is None or int(kept[0]) >= base[0]):
            base = (int(kept[0]), b"")
    if base is not None:
        adopted = stored_state(store, signer, base[0])
        assert adopted is not None
        state = decode_state(adopted)
        for c in state.credits:
            sums[(c.contributor, c.formula)] = [c.flops, c.accepted, c.rejected, c.tokens]
        audits = {a.contributor: a.state() for a in state.audits}
        start = base[0]
    rows = conn.execute(
        "SELECT contributor, flop_formula, flops, accepted, generated_tokens FROM credits "
        "WHERE signer = ? AND seq >= ? AND seq <= ? ORDER BY seq",
        (signer, start, covers_seq),
    )
    for contributor, formula, flops, accepted, tokens in rows:
        row = sums.setdefault((bytes(contributor), str(formula)), [0, 0, 0, 0])
        if accepted:
            row[0] += int(flops)
            row[1] += 1
            row[3] += int(tokens)
        else:
            row[2] += 1
    results = [
        (bytes(c), bool(ok))
        for c, ok in conn.execute(
            "SELECT contributor, passed FROM audits WHERE signer = ? AND seq >= ? AND seq <= ? "
            "ORDER BY seq",
            (signer, start, covers_seq),
        )
    ]
    if audits:
        for contributor, passed in results:
            audits[contributor] = after_audit(audits.get(contributor), passed)
    else:
        audits = audit_states(results)
    credits = [(c, f, v[0], v[1], v[2], v[3]) for (c, f), v in sums.items()]
    return state_from_rows(signer, covers_seq, head, credits, audits)


def append_checkpoint(
    store: LedgerStore, identity: Identity, network_id: str, *, now: float | None = None
) -> tuple[int, bytes]:
    """Append a checkpoint of ``identity``'s own chain (over every entry so far) and keep its
    state; returns (seq, state bytes)."""
    signer = identity.public_key
    head = store.head(signer)
    if head is None:
        raise LedgerError("a checkpoint needs at least one entry before it")
    state = state_at(store, signer, head[0], from_kept=True)
    data = state.encode()
    seq, _, _ = store.append_local(identity, network_id, KIND_CHECKPOINT, state.body(), now=now)
    with store.connection:
        store.connection.execute(
            "INSERT OR REPLACE INTO checkpoints (signer, seq, state) VALUES (?, ?, ?)",
            (signer, seq, data),
        )
    return seq, data


def checkpoint_progress(store: LedgerStore, signer: bytes) -> tuple[float | None, int]:
    """(the time of the last checkpoint kept of ``signer``'s chain, or of its first entry;
    entries after it)."""
    conn = store.connection
    last = conn.execute(
        "SELECT e.seq, e.timestamp FROM entries e JOIN checkpoints c "
        "ON e.signer = c.signer AND e.seq = c.seq WHERE c.signer = ? ORDER BY c.seq DESC LIMIT 1",
        (signer,),
    ).fetchone()
    head = store.head(signer)
    if head is None:
        return None, 0
    if last is not None:
        return float(last[1]), head[0] - int(last[0])
    first = conn.execute(
        "SELECT seq, timestamp FROM entries WHERE signer = ? ORDER BY seq LIMIT 1", (signer,)
    ).fetchone()
    return float(first[1]), head[0] - int(first[0]) + 1


def latest_checkpoint(store: LedgerStore, signer: bytes) -> tuple[bytes, bytes] | None:
    """(entry envelope, state bytes) of the latest checkpoint kept for ``signer``'s chain."""
    return checkpoint_for_joiner(store, signer, 0.0)


def checkpoint_for_joiner(
    store: LedgerStore, signer: bytes, min_age_s: float
) -> tuple[bytes, bytes] | None:
    """(entry envelope, state bytes) of the latest kept checkpoint of ``signer``'s chain made at
    least ``min_age_s`` (chain time) before the chain's head, or None.

    A joiner holds no entries before its checkpoint, so it asks for one old enough that every
    window it needs the single credits of (the lock window, the 7-day leaderboard) lies after it.
    """
    head = store.connection.execute(
        "SELECT timestamp FROM entries WHERE signer = ? ORDER BY seq DESC LIMIT 1", (signer,)
    ).fetchone()
    if head is None:
        return None
    row = store.connection.execute(
        "SELECT c.state, e.envelope FROM checkpoints c JOIN entries e "
        "ON e.signer = c.signer AND e.seq = c.seq WHERE c.signer = ? AND e.timestamp <= ? "
        "ORDER BY c.seq DESC LIMIT 1",
        (signer, float(head[0]) - min_age_s),
    ).fetchone()
    return None if row is None else (bytes(row[1]), bytes(row[0]))


def keep_checkpoint_state(store: LedgerStore, entry: VerifiedEntry) -> None:
    """A replicated checkpoint entry was stored: derive its state from the entries held, check it
    against the entry's SHA-256 and keep it, so this node serves it to joiners too.

    Raises :class:`CheckpointError` when the state the entries give is not the one signed (a
    validator signing a false summary of its own chain: ``ledger verify`` reports it too)."""
    body = entry.body
    if not isinstance(body, CheckpointBody):
        raise CheckpointError(f"{entry_name(entry.seq, entry.hash)} is not a checkpoint")
    data = state_at(store, entry.signer, body.covers_seq, from_kept=True).encode()
    if hashlib.sha256(data).digest() != body.state_sha256:
        raise CheckpointError(
            f"{entry_name(entry.seq, entry.hash)} of {signer_name(entry.signer)}: the entries "
            "held give another state than the one it signs"
        )
    verify_state(body, data, signer=entry.signer, seq=entry.seq, prev_hash=entry.prev_hash)
    with store.connection:
        store.connection.execute(
            "INSERT OR REPLACE INTO checkpoints (signer, seq, state) VALUES (?, ?, ?)",
            (entry.signer, entry.seq, data),
        )


def verify_checkpoint(
    entry_bytes: bytes, state_bytes: bytes, network_id: str, allowed_signers: set[bytes] | None
) -> tuple[int, bytes, CheckpointState]:
    """Verify a checkpoint entry and its state; returns (seq, entry hash, state). Raises
    :class:`CheckpointError` (or :class:`EntryError`) saying what is wrong."""
    entry = verify_entry(entry_bytes, network_id)
    name = entry_name(entry.seq, entry.hash)
    if allowed_signers is not None and entry.signer not in allowed_signers:
        raise CheckpointError(f"{name}: signed by {signer_name(entry.signer)}, not a validator")
    if entry.kind != KIND_CHECKPOINT or not isinstance(entry.body, CheckpointBody):
        raise CheckpointError(f"{name}: a {entry.kind!r} entry, not a checkpoint")
    state = verify_state(
        entry.body, state_bytes, signer=entry.signer, seq=entry.seq, prev_hash=entry.prev_hash
    )
    return entry.seq, entry.hash, state


def adopt_checkpoint(
    store: LedgerStore,
    entry_bytes: bytes,
    state_bytes: bytes,
    network_id: str,
    allowed_signers: set[bytes] | None = None,
) -> tuple[bytes, int]:
    """Verify a checkpoint and start ``signer``'s (empty) chain at it: the entry is stored at its
    seq, the state's sums become the chain's sums, and later entries ingest as usual. Returns
    (signer, seq)."""
    seq, _, state = verify_checkpoint(entry_bytes, state_bytes, network_id, allowed_signers)
    entry = verify_entry(entry_bytes, network_id)
    signer = entry.signer
    if store.head(signer) is not None:
        raise CheckpointError(
            f"{signer_name(signer)}'s chain is already stored here; a checkpoint starts an "
            "empty chain"
        )
    try:
        store.adopt(entry, state, state_bytes, network_id)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot store the checkpoint: {exc}") from exc
    return signer, seq


def checkpoint_problems(store: LedgerStore, signer: bytes, network_id: str) -> list[ChainProblem]:
    """Each checkpoint entry of ``signer``'s chain whose state differs from the state its
    entries give (checked where the chain is held from before the checkpoint's range)."""
    problems = []
    base = anchor(store, signer)
    rows = store.connection.execute(
        "SELECT seq, hash, envelope FROM entries WHERE signer = ? AND kind = ? ORDER BY seq",
        (signer, KIND_CHECKPOINT),
    ).fetchall()
    for seq, h, envelope in rows:
        if base is not None and seq <= base[0]:
            continue  # the adopted checkpoint itself: nothing before it to re-derive from
        name = entry_name(seq, bytes(h))
        try:
            entry = verify_entry(bytes(envelope), network_id)
            body = entry.body
            assert isinstance(body, CheckpointBody)
            data = state_at(store, signer, body.covers_seq).encode()
            digest = hashlib.sha256(data).digest()
            if digest != body.state_sha256:
                raise CheckpointError(
                    f"{name}: the chain's entries 0..{body.covers_seq} give a state with SHA-256 "
                    f"{digest[:6].hex()} ({len(data)} bytes); the checkpoint signed "
                    f"{body.state_sha256[:6].hex()} ({body.state_bytes} bytes)"
                )
            kept = stored_state(store, signer, seq)
            verify_state(body, data, signer=signer, seq=seq, prev_hash=entry.prev_hash)
            if kept is not None and kept != data:
                raise CheckpointError(f"{name}: the kept state differs from the chain's")
        except (CheckpointError, LedgerError, MalformedMessage, EntryError) as exc:
            problems.append(ChainProblem(signer, seq, bytes(h), "checkpoint", str(exc)))
    return problems
