"""Receipts: what a contributor keeps of each credited result, and their offline check.

A receipt is the validator's signed ``credit`` ledger entry itself (its envelope) with the
fields a person reads pulled out beside it: task, sample, tokens, FLOPs and formula, validator,
ledger sequence number, entry hash and signature. Because the envelope is kept, a receipt can
be checked by anyone, offline, against a replica of the validator's chain: the envelope's
signature, that the fields beside it are the signed ones, that the validator is one of the
network's, that the replica holds this very entry at that sequence number (another entry there
is equivocation), that the chain verifies from its first entry up to it, and whether the
credit is pending, final or voided now. :func:`check_receipt` decides from those facts (pure);
:func:`verify_receipts` gathers them from a store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flopnet.ledger.chain import read_entry_unverified, verify_chain, verify_entry
from flopnet.ledger.credits import contributor_credits
from flopnet.ledger.kinds import KIND_CREDIT
from flopnet.ledger.store import LedgerStore
from flopnet.protocol.errors import LedgerError
from flopnet.protocol.messages import CreditBody

MAX_RECEIPT_LINE = 256 * 1024
_HEX_FIELDS = ("validator", "contributor", "entry_hash", "lease_id", "submission_id", "envelope")


@dataclass(frozen=True)
class Receipt:
    """A credited result, as its contributor keeps it (ids and bytes as hex)."""

    network_id: str
    validator: str
    seq: int
    entry_hash: str
    timestamp: float
    contributor: str
    task_id: str
    sample_index: int
    lease_id: str
    submission_id: str
    prompt_tokens: int
    generated_tokens: int
    flops: int
    flop_formula: str
    signature: str
    envelope: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Receipt:
        """A receipt from untrusted JSON; LedgerError says what is wrong."""
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise LedgerError("not a receipt: the fields differ")
        kinds: dict[str, type | tuple[type, ...]] = {"int": int, "float": (int, float), "str": str}
        for name, f in cls.__dataclass_fields__.items():
            want = kinds[str(f.type)]
            value = data[name]
            if not isinstance(value, want) or isinstance(value, bool):
                raise LedgerError(f"receipt field {name} has the wrong type")
        for name in _HEX_FIELDS:
            try:
                bytes.fromhex(data[name])
            except ValueError:
                raise LedgerError(f"receipt field {name} is not hex") from None
        return cls(**{**data, "timestamp": float(data["timestamp"])})


def receipt_from_entry(envelope: bytes, network_id: str) -> Receipt:
    """The receipt of a verified credit entry (raises LedgerError if it is not one)."""
    entry = verify_entry(envelope, network_id)
    body = entry.body
    if entry.kind != KIND_CREDIT or not isinstance(body, CreditBody):
        raise LedgerError(f"entry seq {entry.seq} is not a credit")
    return Receipt(
        network_id=network_id,
        validator=entry.signer.hex(),
        seq=entry.seq,
        entry_hash=entry.hash.hex(),
        timestamp=entry.timestamp,
        contributor=body.contributor.hex(),
        task_id=body.task_id,
        sample_index=body.sample_index,
        lease_id=body.lease_id.hex(),
        submission_id=body.submission_id.hex(),
        prompt_tokens=body.prompt_tokens,
        generated_tokens=body.generated_tokens,
        flops=body.flops,
        flop_formula=body.flop_formula,
        signature=read_entry_unverified(envelope).sig.hex(),
        envelope=envelope.hex(),
    )


# -- keeping them -----------------------------------------------------------------------------


def append_receipt(path: Path, receipt: Receipt) -> None:
    """Append one receipt to a private JSON-lines file, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(json.dumps(receipt.to_json(), separators=(",", ":")) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_receipts(path: Path) -> tuple[list[Receipt], list[str]]:
    """The receipts of a file (one per entry hash), and a problem per line that is not one (a
    last line cut by a crash, an edited file)."""
    receipts: dict[str, Receipt] = {}
    problems = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            if len(line) > MAX_RECEIPT_LINE:
                raise LedgerError("line too long")
            receipt = Receipt.from_json(json.loads(line))
        except (ValueError, LedgerError) as exc:
            problems.append(f"{path.name} line {number}: {exc}")
            continue
        receipts.setdefault(receipt.entry_hash, receipt)
    return list(receipts.values()), problems


def receipts_from_store(
    store: LedgerStore,
    contributor: bytes,
    network_id: str,
    *,
    validators: Sequence[bytes] | None = None,
    lock_window: float,
) -> list[Receipt]:
    """Receipts of every accepted credit of the contributor that a store holds."""
    out = []
    for record in contributor_credits(
        store, contributor, validators=validators, lock_window=lock_window, limit=1_000_000
    ):
        if record.body.accepted:
            (envelope,) = store.entries(record.signer, record.seq, 1)
            out.append(receipt_from_entry(bytes(envelope), network_id))
    return out


# -- checking them ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiptCheck:
    """The verdict on one receipt: ``ok`` when every check passed; ``state`` is the credit's
    (pending, final, void) when the replica holds it, else ``unknown``."""

    receipt: Receipt
    ok: bool
    state: str
    problems: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        r = self.receipt
        return {
            "ok": self.ok,
            "state": self.state,
            "problems": list(self.problems),
            **{k: v for k, v in r.to_json().items() if k != "envelope"},
        }


def check_receipt(
    receipt: Receipt,
    *,
    validators: frozenset[bytes] | None,
    held_hash: bytes | None,
    chain_problems: Sequence[str],
    state: str,
) -> ReceiptCheck:
    """Decide on a receipt from what was found (pure): the envelope's own verification,
    ``held_hash`` (the replica's entry at the receipt's seq, None if it holds none),
    ``chain_problems`` (the validator's chain up to that seq) and the credit's state."""
    problems: list[str] = []
    try:
        signed = receipt_from_entry(bytes.fromhex(receipt.envelope), receipt.network_id)
    except LedgerError as exc:
        return ReceiptCheck(receipt, False, "unknown", (f"the signed entry is invalid: {exc}",))
    if signed != receipt:
        changed = [k for k, v in signed.to_json().items() if receipt.to_json()[k] != v]
        problems.append("fields differ from the signed entry: " + ", ".join(changed))
    if validators is not None and bytes.fromhex(receipt.validator) not in validators:
        problems.append("signed by a key that is not one of the network's validators")
    if held_hash is None:
        problems.append(f"the ledger replica holds no entry {receipt.seq} of this validator")
    elif held_hash.hex() != receipt.entry_hash:
        problems.append(
            f"the replica holds another entry at seq {receipt.seq} ({held_hash[:6].hex()}): "
            "the validator signed two entries there (equivocation)"
        )
    problems.extend(chain_problems)
    if state == "void":
        problems.append("the credit was voided by an invalidation")
    return ReceiptCheck(receipt, not problems, state if held_hash else "unknown", tuple(problems))


def verify_receipts(
    receipts: Iterable[Receipt],
    store: LedgerStore,
    *,
    validators: frozenset[bytes] | None,
    lock_window: float,
    now: float | None = None,
) -> list[ReceiptCheck]:
    """Check receipts against a replica: each validator's chain is verified once, from its
    first entry up to the highest receipt."""
    receipts = list(receipts)
    chains: dict[tuple[bytes, str], list[str]] = {}
    for receipt in receipts:
        key = (bytes.fromhex(receipt.validator), receipt.network_id)
        if key not in chains:
            top = max(r.seq for r in receipts if r.validator == receipt.validator)
            chains[key] = _chain_problems(store, key[0], key[1], top)
    states: dict[bytes, str] = {}
    for contributor in {r.contributor for r in receipts}:
        for record in contributor_credits(
            store, bytes.fromhex(contributor), lock_window=lock_window, now=now, limit=1_000_000
        ):
            states[record.entry_hash] = record.state
    out = []
    for receipt in receipts:
        signer = bytes.fromhex(receipt.validator)
        out.append(
            check_receipt(
                receipt,
                validators=validators,
                held_hash=store.entry_hash(signer, receipt.seq),
                chain_problems=chains[(signer, receipt.network_id)],
                state=states.get(bytes.fromhex(receipt.entry_hash), "unknown"),
            )
        )
    return out


def _chain_problems(store: LedgerStore, signer: bytes, network_id: str, upto: int) -> list[str]:
    """Problems of ``signer``'s stored chain from seq 0 to ``upto`` (paged, verified in order)."""
    envelopes: list[bytes] = []
    seq = 0
    while seq <= upto:
        page = store.entries(signer, seq, min(10_000, upto - seq + 1))
        if not page:
            break
        envelopes.extend(bytes(e) for e in page)
        seq += len(page)
    # A chain that ends before ``upto`` is reported by the held-hash check of that receipt.
    return [f"chain: {p}" for p in verify_chain(envelopes, network_id, signer)]
