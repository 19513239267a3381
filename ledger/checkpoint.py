"""Checkpoints: a validator's signed summary of its chain, so a new node joins without the whole
history.

A ``checkpoint`` entry in a validator's chain (at seq C) commits, by SHA-256, to a *state*: the
chain's credit sums per contributor and formula and its audit book, over entries 0..C-1. The
state names the head it covers (seq C-1 and its hash), and that hash is the checkpoint entry's
own ``prev_hash``, so the link that chains entry C to C-1 also binds the state to the history.
A new node verifies the checkpoint entry (signature, signer, body), the state against it
(hash, head, counts, order, bounds), and then only the entries after it; a node holding the
whole chain recomputes every checkpoint's state from the entries (``flopnet ledger verify``).

The state is strict fixed-width binary, one encoding per state (rows sorted, keys unique), so
its hash is a function of its content:

    header   b"FNCP" | version u8 (1) | signer 32 | covers_seq u64 | head_hash 32
             | formulas u8, each: length u8 + ASCII name (sorted, unique, non-empty, <= 64)
             | credit rows u32 | audit rows u32
    credit   contributor 32 | formula index u8 | flops u128 | accepted u64 | rejected u64
             | tokens u64                                   (73 bytes; sorted by key, index)
    audit    contributor 32 | consecutive_valid u32 | audits u32 | failures u32
                                                            (44 bytes; sorted by key)

All integers are unsigned big-endian. Pure: no I/O (the store builds and adopts them).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from flopnet.ledger.derived import Sums, add_amounts
from flopnet.ledger.kinds import KIND_CHECKPOINT, MAX_STATE_BYTES, MIN_STATE_BYTES, CheckpointBody
from flopnet.ledger.policy import AuditState
from flopnet.protocol.errors import LedgerError, MalformedMessage

__all__ = ["KIND_CHECKPOINT", "CheckpointBody", "CheckpointError", "CheckpointState"]

MAGIC = b"FNCP"
STATE_VERSION = 1
CREDIT_ROW = struct.Struct(">32sB16sQQQ")
AUDIT_ROW = struct.Struct(">32sIII")
_HEAD = struct.Struct(">4sB32sQ32s")
_COUNTS = struct.Struct(">II")
assert _HEAD.size + 1 + _COUNTS.size == MIN_STATE_BYTES
MAX_FORMULA_CHARS = 64
U64 = 2**64
U32 = 2**32


class CheckpointError(LedgerError):
    """A checkpoint or its state does not verify; the message says what and where."""


@dataclass(frozen=True, order=True)
class CreditRow:
    """A contributor's credit sums under one formula (what ``credit_totals`` holds)."""

    contributor: bytes
    formula: str
    flops: int
    accepted: int
    rejected: int
    tokens: int


@dataclass(frozen=True, order=True)
class AuditRow:
    """A contributor's audit record (``ledger.policy.AuditState``)."""

    contributor: bytes
    consecutive_valid: int
    audits: int
    failures: int

    def state(self) -> AuditState:
        return AuditState(self.consecutive_valid, self.audits, self.failures)


@dataclass(frozen=True)
class CheckpointState:
    """A validator chain's state over entries ``0..covers_seq``."""

    signer: bytes
    covers_seq: int
    head_hash: bytes
    credits: tuple[CreditRow, ...]
    audits: tuple[AuditRow, ...]

    def contributors(self) -> int:
        return len({r.contributor for r in self.credits} | {r.contributor for r in self.audits})

    def encode(self) -> bytes:
        """The canonical bytes (rows sorted); raises CheckpointError for values out of range."""
        formulas = sorted({r.formula for r in self.credits})
        index = {f: i for i, f in enumerate(formulas)}
        out = [_HEAD.pack(MAGIC, STATE_VERSION, self.signer, self.covers_seq, self.head_hash)]
        if len(formulas) > 255 or len(self.signer) != 32 or len(self.head_hash) != 32:
            raise CheckpointError("checkpoint state: bad signer, head hash or formula count")
        out.append(bytes([len(formulas)]))
        for f in formulas:
            raw = f.encode("ascii")
            out.append(bytes([len(raw)]) + raw)
        out.append(_COUNTS.pack(len(self.credits), len(self.audits)))
        try:
            for c in sorted(self.credits, key=lambda r: (r.contributor, index[r.formula])):
                out.append(
                    CREDIT_ROW.pack(
                        c.contributor,
                        index[c.formula],
                        c.flops.to_bytes(16, "big"),
                        c.accepted,
                        c.rejected,
                        c.tokens,
                    )
                )
            for a in sorted(self.audits):
                out.append(AUDIT_ROW.pack(a.contributor, a.consecutive_valid, a.audits, a.failures))
        except (struct.error, OverflowError) as exc:
            raise CheckpointError(f"checkpoint state: a value is out of range: {exc}") from None
        data = b"".join(out)
        if len(data) > MAX_STATE_BYTES:
            raise CheckpointError(
                f"checkpoint state of {len(data):,} bytes exceeds {MAX_STATE_BYTES:,}"
            )
        return data

    def body(self) -> CheckpointBody:
        data = self.encode()
        return CheckpointBody(
            covers_seq=self.covers_seq,
            state_sha256=hashlib.sha256(data).digest(),
            contributors=self.contributors(),
            state_bytes=len(data),
        )


def _take(data: bytes, at: int, n: int) -> bytes:
    if at + n > len(data):
        raise MalformedMessage(f"checkpoint state ends at byte {len(data)}, needs {at + n}")
    return data[at : at + n]


def decode_state(data: bytes) -> CheckpointState:
    """Decode a state strictly: exact length, known version, ASCII formulas in order, rows
    sorted with unique keys, integers within their widths. Raises only MalformedMessage."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage("checkpoint state must be bytes")
    data = bytes(data)
    if len(data) > MAX_STATE_BYTES:
        raise MalformedMessage(f"checkpoint state of {len(data):,} bytes is over the cap")
    magic, version, signer, covers_seq, head_hash = _HEAD.unpack(_take(data, 0, _HEAD.size))
    if magic != MAGIC or version != STATE_VERSION:
        raise MalformedMessage("not a version 1 checkpoint state")
    if covers_seq >= 2**63:
        raise MalformedMessage("covers_seq out of range")
    at = _HEAD.size
    (count,) = _take(data, at, 1)
    at += 1
    formulas: list[str] = []
    for _ in range(count):
        (length,) = _take(data, at, 1)
        raw = _take(data, at + 1, length)
        at += 1 + length
        if not 0 < length <= MAX_FORMULA_CHARS or not all(0x21 <= b < 0x7F for b in raw):
            raise MalformedMessage("a formula name must be 1-64 printable ASCII characters")
        name = raw.decode("ascii")
        if formulas and name <= formulas[-1]:
            raise MalformedMessage("formula names must be sorted and unique")
        formulas.append(name)
    n_credits, n_audits = _COUNTS.unpack(_take(data, at, _COUNTS.size))
    at += _COUNTS.size
    expected = at + n_credits * CREDIT_ROW.size + n_audits * AUDIT_ROW.size
    if len(data) != expected:
        raise MalformedMessage(
            f"checkpoint state holds {len(data)} bytes, its counts say {expected}"
        )
    credits: list[CreditRow] = []
    last: tuple[bytes, int] | None = None
    used: set[int] = set()
    for key, f, flops, accepted, rejected, tokens in CREDIT_ROW.iter_unpack(
        data[at : at + n_credits * CREDIT_ROW.size]
    ):
        if f >= len(formulas):
            raise MalformedMessage(f"credit row names formula {f} of {len(formulas)}")
        if last is not None and (key, f) <= last:
            raise MalformedMessage("credit rows must be sorted by contributor and formula, unique")
        last = (key, f)
        used.add(f)
        credits.append(
            CreditRow(key, formulas[f], int.from_bytes(flops, "big"), accepted, rejected, tokens)
        )
    if len(used) != len(formulas):
        raise MalformedMessage("a formula is listed that no credit row uses")
    at += n_credits * CREDIT_ROW.size
    audits: list[AuditRow] = []
    previous: bytes | None = None
    for key, consecutive, total, failures in AUDIT_ROW.iter_unpack(data[at:]):
        if previous is not None and key <= previous:
            raise MalformedMessage("audit rows must be sorted by contributor, unique")
        if consecutive + failures > total:
            raise MalformedMessage("an audit row counts more valid and failed audits than audits")
        previous = key
        audits.append(AuditRow(key, consecutive, total, failures))
    return CheckpointState(signer, covers_seq, head_hash, tuple(credits), tuple(audits))


def verify_state(
    body: CheckpointBody, state_bytes: bytes, *, signer: bytes, seq: int, prev_hash: bytes
) -> CheckpointState:
    """Check a state against the verified checkpoint entry (``signer``'s entry ``seq`` with
    ``body`` and ``prev_hash``): its hash, size, signer, the head it covers (the entry before,
    whose hash the entry links to) and its contributor count. Raises CheckpointError."""
    where = f"checkpoint at entry seq {seq}"
    if len(state_bytes) != body.state_bytes:
        raise CheckpointError(
            f"{where}: the state has {len(state_bytes)} bytes, the entry says {body.state_bytes}"
        )
    digest = hashlib.sha256(state_bytes).digest()
    if digest != body.state_sha256:
        raise CheckpointError(
            f"{where}: the state's SHA-256 {digest[:6].hex()} is not the signed "
            f"{body.state_sha256[:6].hex()}"
        )
    try:
        state = decode_state(state_bytes)
    except MalformedMessage as exc:
        raise CheckpointError(f"{where}: malformed state: {exc}") from None
    if state.signer != signer:
        raise CheckpointError(f"{where}: the state is of another validator's chain")
    if body.covers_seq != seq - 1 or state.covers_seq != body.covers_seq:
        raise CheckpointError(
            f"{where}: covers seq {state.covers_seq} (entry says {body.covers_seq}); a "
            f"checkpoint covers the entries before it, up to seq {seq - 1}"
        )
    if state.head_hash != prev_hash:
        raise CheckpointError(
            f"{where}: the state's head {state.head_hash[:6].hex()} is not the entry's "
            f"prev_hash {prev_hash[:6].hex()}: it does not cover this chain"
        )
    if state.contributors() != body.contributors:
        raise CheckpointError(
            f"{where}: {state.contributors()} contributors, entry says {body.contributors}"
        )
    return state


def baseline_sums(state: CheckpointState) -> Sums:
    """The all-time sums a state carries, as the store's sum tables hold them (FLOPs in two
    32-bit halves); it has no time buckets, so windowed sums start at the checkpoint."""
    sums = Sums()
    for c in state.credits:
        amounts = (c.flops >> 32, c.flops & 0xFFFFFFFF, c.accepted, c.rejected, c.tokens)
        add_amounts(sums.totals, (c.contributor, c.formula), amounts)
    return sums


def state_from_rows(
    signer: bytes,
    covers_seq: int,
    head_hash: bytes,
    credits: Iterable[tuple[bytes, str, int, int, int, int]],
    audits: dict[bytes, AuditState],
) -> CheckpointState:
    """A state from credit sums (contributor, formula, flops, accepted, rejected, tokens) and
    audit records."""
    return CheckpointState(
        signer,
        covers_seq,
        head_hash,
        tuple(sorted(CreditRow(*row) for row in credits)),
        tuple(
            sorted(
                AuditRow(c, s.consecutive_valid, s.audits, s.failures) for c, s in audits.items()
            )
        ),
    )


# A validator checkpoints its chain once a day (chain time) when entries came since the last
# one; a joiner asks for one at least JOIN_TAIL_S old, the longest window whose single credits
# it needs after the checkpoint (the 7-day leaderboard; the lock window is shorter).
CHECKPOINT_INTERVAL_S = 86400.0
JOIN_TAIL_S = 7 * 86400.0


def checkpoint_due(now: float, interval_s: float, since: float | None, entries_since: int) -> bool:
    """Whether a validator appends a checkpoint now: ``interval_s`` after ``since`` (its last
    checkpoint's time, or its first entry's), if entries came after the last one. A chain with
    no entry (``since`` None) or ``interval_s`` 0 (off) never is."""
    if since is None or interval_s <= 0 or entries_since < 1:
        return False
    return now - since >= interval_s
