"""A validator's hash chain of signed ledger entries: pure logic, no I/O.

Entry ``seq`` is a :class:`~protocol.messages.LedgerEntry` sealed by the validator; its hash is
the SHA-256 of the envelope bytes and entry ``seq + 1`` names it in ``prev_hash``; entry 0 names
:data:`GENESIS_PREV`. The entry's ``body`` holds the canonical bytes of the record registered for
its ``kind`` in :data:`ENTRY_KINDS`.

:func:`verify_entry` checks one entry and raises :class:`EntryError`; :func:`verify_chain` checks
a sequence of entries and reports every problem it finds instead of stopping at the first one,
because an auditor wants the whole picture of a broken chain.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from flopnet.ledger.kinds import BODY_CHECKS, ENTRY_BODIES
from flopnet.protocol.codec import Record, decode_record, unpackb
from flopnet.protocol.envelope import _signed_bytes, message_id, seal
from flopnet.protocol.errors import LedgerError, MalformedMessage
from flopnet.protocol.identity import SIGNATURE_BYTES, Identity, peer_id_from_public_key
from flopnet.protocol.messages import MAX_ENVELOPE_BYTES, PROTOCOL_VERSION, LedgerEntry

GENESIS_PREV = bytes(32)

# How far an entry's timestamp may lie before an earlier entry's without being reported. The store
# never writes backwards timestamps itself; this allows for chains written by other implementations
# whose clocks were stepped back a little by NTP.
TIMESTAMP_TOLERANCE_S = 60.0

# kind -> record class of the body (see ledger.kinds); later kinds register here.
ENTRY_KINDS: dict[str, type[Record]] = dict(ENTRY_BODIES)


def register_kind(kind: str, body_class: type[Record]) -> None:
    """Register the body record class of a ledger entry kind (idempotent for the same class)."""
    existing = ENTRY_KINDS.get(kind)
    if existing is not None and existing is not body_class:
        raise ValueError(f"ledger entry kind {kind!r} is already bound to {existing.__name__}")
    ENTRY_KINDS[kind] = body_class


class EntryError(LedgerError):
    """One ledger entry failed verification; ``code`` says how, ``seq``/``hash`` name it."""

    def __init__(self, code: str, message: str, *, seq: int | None, hash: bytes) -> None:
        super().__init__(message)
        self.code = code
        self.seq = seq
        self.hash = hash


@dataclass(frozen=True)
class VerifiedEntry:
    """A ledger entry whose signature, link fields and body have been checked."""

    signer: bytes
    seq: int
    prev_hash: bytes
    hash: bytes
    timestamp: float
    kind: str
    body: Record
    raw: bytes


@dataclass(frozen=True)
class ChainProblem:
    """One problem found in a chain; ``message`` names the entry by seq and hash prefix."""

    signer: bytes
    seq: int | None
    hash: bytes | None
    code: str
    message: str

    def __str__(self) -> str:
        return self.message


def entry_name(seq: int | None, entry_hash: bytes | None) -> str:
    """A short human name for an entry: ``entry seq 12 (3fa2c81b09de)``."""
    prefix = entry_hash[:6].hex() if entry_hash is not None else "?"
    return f"entry seq {seq} ({prefix})" if seq is not None else f"entry ({prefix})"


def signer_name(signer: bytes) -> str:
    """The peer id of a signer key, or its hex if it is not a valid key length."""
    try:
        return peer_id_from_public_key(signer)
    except ValueError:
        return signer.hex()


def next_timestamp(now: float, previous: float | None) -> float:
    """The timestamp for a new entry: ``now``, but never before the previous entry's.

    Clamping keeps a validator's own chain monotone even when its clock is stepped back.
    """
    return now if previous is None else max(now, previous)


# ---------------------------------------------------------------------------------------------
# Building


def make_entry(
    identity: Identity,
    network_id: str,
    seq: int,
    prev_hash: bytes,
    kind: str,
    body_record: Record,
    timestamp: float,
) -> bytes:
    """Seal entry ``seq`` of ``identity``'s chain and return its envelope bytes."""
    body_class = ENTRY_KINDS.get(kind)
    if body_class is None:
        raise LedgerError(f"unknown ledger entry kind {kind!r}")
    if type(body_record) is not body_class:
        raise LedgerError(
            f"a {kind!r} entry needs a {body_class.__name__} body, got {type(body_record).__name__}"
        )
    if seq < 0 or len(prev_hash) != 32:
        raise LedgerError(f"bad link fields: seq {seq}, prev_hash of {len(prev_hash)} bytes")
    if seq == 0 and prev_hash != GENESIS_PREV:
        raise LedgerError("entry seq 0 must have the genesis prev_hash (32 zero bytes)")
    try:
        entry = LedgerEntry(
            version=PROTOCOL_VERSION,
            seq=seq,
            prev_hash=prev_hash,
            timestamp=float(timestamp),
            kind=kind,
            body=body_record.encode(),
        )
        return seal(entry, identity, network_id)
    except MalformedMessage as exc:
        raise LedgerError(f"cannot build ledger entry seq {seq}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Verifying one entry


@dataclass(frozen=True)
class UnverifiedEntry:
    """An entry decoded without checking its signature: for naming and bookkeeping only."""

    entry: LedgerEntry
    signer: bytes
    hash: bytes
    envelope_body: bytes = b""  # the signed bytes (the entry record), kept to check ``sig``
    sig: bytes = b""


def read_entry_unverified(data: bytes) -> UnverifiedEntry:
    """Decode an envelope's ledger entry with the structural checks of ``open_envelope`` but no
    signature check. Never trust the result; it lets a verifier name a badly signed entry.
    """
    entry_hash = message_id(bytes(data))
    try:
        raw: Any = unpackb(data, max_bytes=MAX_ENVELOPE_BYTES[LedgerEntry.TYPE])
        if not isinstance(raw, dict) or set(raw) != {"v", "type", "body", "signer", "sig"}:
            raise MalformedMessage("not an envelope")
        if raw["v"] != PROTOCOL_VERSION:
            raise MalformedMessage(f"unsupported protocol version {raw['v']!r}")
        if raw["type"] != LedgerEntry.TYPE:
            raise MalformedMessage(f"expected {LedgerEntry.TYPE}, got {raw['type']!r}")
        body, signer, sig = raw["body"], raw["signer"], raw["sig"]
        if not all(isinstance(x, bytes) for x in (body, signer, sig)):
            raise MalformedMessage("envelope fields have wrong types")
        if len(signer) != 32 or len(sig) != SIGNATURE_BYTES:
            raise MalformedMessage("bad signer or signature length")
        entry = decode_record(LedgerEntry, body, max_bytes=len(body))
    except MalformedMessage as exc:
        message = f"{entry_name(None, entry_hash)}: malformed: {exc}"
        raise EntryError("malformed", message, seq=None, hash=entry_hash) from None
    return UnverifiedEntry(entry=entry, signer=signer, hash=entry_hash, envelope_body=body, sig=sig)


@functools.lru_cache(maxsize=1024)
def _public_key(signer: bytes) -> Ed25519PublicKey | None:
    # Decoding a key (point decompression) costs a third of a verification; a replica sees few
    # signers and many entries from each, so keep the decoded keys.
    try:
        return Ed25519PublicKey.from_public_bytes(signer)
    except ValueError:
        return None


def _check_signature(network_id: str, peek: UnverifiedEntry) -> None:
    """The envelope's signature over this network id; the same check as ``open_envelope``
    makes, without decoding the envelope a second time (ingest speed depends on it)."""
    key = _public_key(peek.signer)
    try:
        if key is None:
            raise InvalidSignature
        key.verify(peek.sig, _signed_bytes(network_id, LedgerEntry.TYPE, peek.envelope_body))
    except InvalidSignature:
        name = entry_name(peek.entry.seq, peek.hash)
        raise EntryError(
            "bad_signature",
            f"{name}: bad signature on {LedgerEntry.TYPE}",
            seq=peek.entry.seq,
            hash=peek.hash,
        ) from None


def decode_body(kind: str, body: bytes) -> Record:
    """Decode an entry body as its kind's registered record; raises MalformedMessage."""
    body_class = ENTRY_KINDS.get(kind)
    if body_class is None:
        raise MalformedMessage(f"unknown entry kind {kind!r}")
    return decode_record(body_class, body, max_bytes=len(body))


def _decode_body(peek: UnverifiedEntry, network_id: str) -> Record:
    kind = peek.entry.kind
    try:
        body = decode_body(kind, peek.entry.body)
        check = BODY_CHECKS.get(kind)
        if check is not None:
            check(body, network_id)
        return body
    except MalformedMessage as exc:
        name = entry_name(peek.entry.seq, peek.hash)
        raise EntryError(
            "body",
            f"{name}: malformed {kind!r} body: {exc}",
            seq=peek.entry.seq,
            hash=peek.hash,
        ) from None


def verify_entry(
    envelope_bytes: bytes,
    network_id: str,
    *,
    expected_signer: bytes | None = None,
    expected_seq: int | None = None,
    expected_prev: bytes | None = None,
) -> VerifiedEntry:
    """Verify one entry: envelope, signature, genesis rule, expectations given, and body.

    Raises :class:`EntryError` (a :class:`LedgerError`) with a message naming the entry.
    """
    data = bytes(envelope_bytes)
    peek = read_entry_unverified(data)
    _check_signature(network_id, peek)
    entry, h = peek.entry, peek.hash
    name = entry_name(entry.seq, h)
    if expected_signer is not None and peek.signer != expected_signer:
        raise EntryError(
            "wrong_signer",
            f"{name}: signed by {signer_name(peek.signer)}, "
            f"expected {signer_name(expected_signer)}",
            seq=entry.seq,
            hash=h,
        )
    if expected_seq is not None and entry.seq != expected_seq:
        raise EntryError(
            "seq", f"{name}: expected seq {expected_seq}, got {entry.seq}", seq=entry.seq, hash=h
        )
    if entry.seq == 0 and entry.prev_hash != GENESIS_PREV:
        raise EntryError(
            "prev_hash", f"{name}: seq 0 must have the genesis prev_hash", seq=entry.seq, hash=h
        )
    if expected_prev is not None and entry.prev_hash != expected_prev:
        raise EntryError(
            "prev_hash",
            f"{name}: prev_hash {entry.prev_hash[:6].hex()} does not match the previous entry's "
            f"hash {expected_prev[:6].hex()}",
            seq=entry.seq,
            hash=h,
        )
    body = _decode_body(peek, network_id)
    return VerifiedEntry(
        signer=peek.signer,
        seq=entry.seq,
        prev_hash=entry.prev_hash,
        hash=h,
        timestamp=entry.timestamp,
        kind=entry.kind,
        body=body,
        raw=data,
    )


# ---------------------------------------------------------------------------------------------
# Verifying a chain


@dataclass
class _Seen:
    hash: bytes
    authentic: bool  # validly signed by the chain's signer


def verify_chain(
    envelopes: Iterable[bytes],
    network_id: str,
    signer: bytes,
    *,
    expected_head: tuple[int, bytes] | None = None,
    start_seq: int = 0,
    start_prev: bytes = GENESIS_PREV,
    timestamp_tolerance: float = TIMESTAMP_TOLERANCE_S,
) -> list[ChainProblem]:
    """Every problem in ``signer``'s chain given in the order it was stored or received.

    Checks signatures, signer, seq order and gaps, duplicate seqs (equivocation when both entries
    are authentic), prev-hash links, bodies and timestamps. ``start_seq``/``start_prev`` verify a
    range that does not begin at genesis; ``expected_head`` (seq, hash) detects truncation. Keeps
    one hash per seq in memory, so links are checked even when entries arrive reordered.
    """
    problems: list[ChainProblem] = []

    def report(seq: int | None, h: bytes | None, code: str, message: str) -> None:
        problems.append(ChainProblem(signer, seq, h, code, message))

    seen: dict[int, _Seen] = {}
    links: list[tuple[int, bytes, bytes]] = []  # (seq, prev_hash, hash) of first entry per seq
    highest = start_seq - 1
    latest_ts: tuple[float, int] | None = None  # (largest authentic timestamp so far, its seq)

    for position, data in enumerate(envelopes):
        try:
            peek = read_entry_unverified(data)
        except EntryError as exc:
            report(None, exc.hash, exc.code, f"at position {position}: {exc}")
            continue
        entry, h = peek.entry, peek.hash
        seq, name = entry.seq, entry_name(entry.seq, peek.hash)
        authentic = True
        try:
            _check_signature(network_id, peek)
        except EntryError as exc:
            report(seq, h, exc.code, str(exc))
            authentic = False
        if authentic and peek.signer != signer:
            report(
                seq,
                h,
                "wrong_signer",
                f"{name}: signed by {signer_name(peek.signer)}, not by the chain's signer "
                f"{signer_name(signer)}",
            )
            authentic = False
        try:
            _decode_body(peek, network_id)
        except EntryError as exc:
            report(seq, h, exc.code, str(exc))

        first = seen.get(seq)
        if first is not None:
            if first.hash == h:
                report(seq, h, "duplicate", f"{name}: the same entry appears twice")
            elif first.authentic and authentic:
                report(
                    seq,
                    h,
                    "equivocation",
                    f"{name}: equivocation: a second, different entry signed for seq {seq} "
                    f"(the first is {first.hash[:6].hex()})",
                )
            else:
                report(seq, h, "duplicate_seq", f"{name}: another entry already holds seq {seq}")
            continue
        if seq < start_seq:
            report(seq, h, "seq_order", f"{name}: seq precedes the range start {start_seq}")
            continue
        if seq < highest:
            report(seq, h, "seq_order", f"{name}: out of order, it comes after seq {highest}")
        seen[seq] = _Seen(h, authentic)
        links.append((seq, entry.prev_hash, h))
        highest = max(highest, seq)

        if authentic:
            if latest_ts is not None and entry.timestamp < latest_ts[0] - timestamp_tolerance:
                report(
                    seq,
                    h,
                    "timestamp",
                    f"{name}: timestamp {entry.timestamp:.3f} is "
                    f"{latest_ts[0] - entry.timestamp:.1f} s before that of seq {latest_ts[1]}",
                )
            if latest_ts is None or entry.timestamp > latest_ts[0]:
                latest_ts = (entry.timestamp, seq)

    for seq, prev, h in links:
        name = entry_name(seq, h)
        if seq == start_seq:
            if prev != start_prev:
                what = "the genesis prev_hash" if start_seq == 0 else f"{start_prev[:6].hex()}"
                report(seq, h, "prev_hash", f"{name}: prev_hash {prev[:6].hex()} is not {what}")
        elif seq - 1 in seen and seen[seq - 1].hash != prev:
            report(
                seq,
                h,
                "prev_hash",
                f"{name}: prev_hash {prev[:6].hex()} does not match the hash of seq {seq - 1} "
                f"({seen[seq - 1].hash[:6].hex()})",
            )

    # Gaps: runs of missing seqs below the highest one seen, named by the entry after the gap.
    expected = start_seq
    for seq in sorted(seen):
        if seq > expected:
            missing = f"seq {expected}" if seq == expected + 1 else f"seqs {expected}..{seq - 1}"
            report(
                seq,
                seen[seq].hash,
                "seq_gap",
                f"{entry_name(seq, seen[seq].hash)}: {missing} missing before it",
            )
        expected = seq + 1

    if expected_head is not None:
        head_seq, head_hash = expected_head
        if head_seq > highest:
            ends = f"ends at seq {highest}" if highest >= start_seq else "is empty"
            report(
                head_seq,
                head_hash,
                "truncated",
                f"chain {ends} but its head is {entry_name(head_seq, head_hash)}: truncated",
            )
        elif head_seq in seen and seen[head_seq].hash != head_hash:
            report(
                head_seq,
                seen[head_seq].hash,
                "head_mismatch",
                f"{entry_name(head_seq, seen[head_seq].hash)}: differs from the expected head "
                f"{head_hash[:6].hex()}",
            )

    problems.sort(key=lambda p: -1 if p.seq is None else p.seq)
    return problems
