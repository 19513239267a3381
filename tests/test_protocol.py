"""Identities, canonical encoding, records and envelopes: round trips and hostile bytes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flopnet.protocol.codec import packb, unpackb
from flopnet.protocol.envelope import message_id, open_envelope, seal
from flopnet.protocol.errors import ConfigError, MalformedMessage
from flopnet.protocol.identity import Identity, load_or_create_identity, peer_id_from_public_key
from flopnet.protocol.messages import (
    MAX_ENVELOPE_BYTES,
    MESSAGE_TYPES,
    Claim,
    CreditBody,
    Lease,
    LedgerEntry,
    Refusal,
    Submission,
    TaskAnnouncement,
    TaskSpec,
    TaskSpecRequest,
    Verdict,
)

NET = "test-net"
ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(1, 33)))

u63 = st.integers(min_value=0, max_value=2**63 - 1)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
small_text = st.text(max_size=40)
token_ids = st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=80).map(tuple)
keys = st.binary(min_size=32, max_size=32)


def lease_strategy() -> st.SearchStrategy[Lease]:
    return st.builds(
        Lease,
        version=st.just(1),
        lease_id=st.binary(min_size=16, max_size=16),
        task_id=small_text,
        task_type=st.just("math"),
        sample_index=st.integers(0, 63),
        worker=keys,
        validator=keys,
        seed=u63,
        prompt_ids=token_ids,
        max_new_tokens=st.integers(1, 32768),
        temperature=st.floats(0, 10),
        top_p=st.floats(0, 1),
        issued_at=times,
        expires_at=times,
    )


messages = st.one_of(
    st.builds(
        TaskAnnouncement,
        version=st.just(1),
        seq=u63,
        task_id=small_text,
        task_type=st.just("math"),
        samples=st.integers(1, 64),
        max_new_tokens=st.integers(1, 32768),
        announced_at=times,
    ),
    st.builds(
        Claim,
        version=st.just(1),
        task_id=small_text,
        nonce=st.binary(min_size=16, max_size=16),
        claimed_at=times,
    ),
    lease_strategy(),
    st.builds(Refusal, version=st.just(1), code=small_text, reason=small_text),
    st.builds(
        Submission,
        version=st.just(1),
        lease=st.binary(max_size=300),
        token_ids=token_ids,
        text=st.text(max_size=200),
        finish_reason=st.sampled_from(["eos", "length"]),
        proofs=st.lists(st.binary(min_size=258, max_size=258), max_size=3).map(tuple),
        generation_seconds=st.floats(0, 1e6),
    ),
    st.builds(
        Verdict,
        version=st.just(1),
        submission_id=keys,
        lease_id=st.binary(min_size=16, max_size=16),
        accepted=st.booleans(),
        reasons=st.lists(small_text, max_size=4).map(tuple),
        answer_score=st.floats(0, 1),
        flops=u63,
        ledger_seq=st.integers(-1, 2**40),
    ),
    st.builds(
        LedgerEntry,
        version=st.just(1),
        seq=u63,
        prev_hash=keys,
        timestamp=times,
        kind=st.just("credit"),
        body=st.binary(max_size=200),
    ),
    st.builds(TaskSpecRequest, version=st.just(1), task_id=small_text),
    st.builds(
        TaskSpec,
        version=st.just(1),
        task_id=small_text,
        task_type=st.sampled_from(["math", "code"]),
        problem=st.text(max_size=200),
        answer=small_text,
        verifier=st.binary(max_size=200),
    ),
)


def test_identity_file_is_private_and_stable(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path)
    mode = stat.S_IMODE((tmp_path / "identity.key").stat().st_mode)
    assert mode == 0o600
    assert load_or_create_identity(tmp_path) == first


def test_identity_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    os.chmod(tmp_path / "identity.key", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_identity(tmp_path)


def test_peer_id_matches_libp2p() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    pair = create_new_key_pair(ALICE.seed)
    assert str(ID.from_pubkey(pair.public_key)) == ALICE.peer_id
    assert ALICE.peer_id.startswith("12D3KooW")
    assert peer_id_from_public_key(BOB.public_key) == BOB.peer_id


@given(messages)
@settings(max_examples=150, deadline=None)
def test_envelope_round_trip(message: object) -> None:
    data = seal(message, ALICE, NET)  # type: ignore[arg-type]
    opened = open_envelope(data, NET)
    assert opened.message == message
    assert opened.signer == ALICE.public_key
    assert opened.message_id == message_id(data)
    assert seal(opened.message, ALICE, NET) == data  # deterministic, canonical


@given(messages, st.data())
@settings(max_examples=200, deadline=None)
def test_mutated_envelopes_raise_only_malformed(message: object, data: st.DataObject) -> None:
    sealed = bytearray(seal(message, ALICE, NET))  # type: ignore[arg-type]
    position = data.draw(st.integers(0, len(sealed) - 1))
    sealed[position] ^= data.draw(st.integers(1, 255))
    try:
        opened = open_envelope(bytes(sealed), NET)
    except MalformedMessage:
        return
    # A flip can land in a spot that leaves a valid, signed envelope only if it hit nothing signed.
    assert opened.message == message


@given(st.binary(max_size=2048))
@settings(max_examples=300, deadline=None)
def test_random_bytes_raise_only_malformed(blob: bytes) -> None:
    with pytest.raises(MalformedMessage):
        open_envelope(blob, NET)


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=8)
        | st.binary(max_size=8)
        | st.floats(allow_nan=False, allow_infinity=False),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=4), children, max_size=4)
        ),
        max_leaves=20,
    )
)
@settings(max_examples=200, deadline=None)
def test_canonical_round_trip(value: object) -> None:
    assert unpackb(packb(value), max_bytes=1 << 20) == value


def test_non_canonical_encoding_is_refused() -> None:
    unsorted = msgpack.packb({"b": 1, "a": 2})
    with pytest.raises(MalformedMessage, match="non-canonical"):
        unpackb(unsorted, max_bytes=100)
    wide_int = b"\xcd\x00\x01"  # 1 as uint16: valid msgpack, not minimal
    with pytest.raises(MalformedMessage, match="non-canonical"):
        unpackb(wide_int, max_bytes=100)


def test_wrong_network_or_signer_is_refused() -> None:
    claim = Claim(version=1, task_id="t", nonce=bytes(16), claimed_at=1.0)
    data = seal(claim, ALICE, NET)
    with pytest.raises(MalformedMessage, match="bad signature"):
        open_envelope(data, "other-net")
    raw = msgpack.unpackb(data)
    raw["signer"] = BOB.public_key
    with pytest.raises(MalformedMessage, match="bad signature"):
        open_envelope(packb(raw), NET)


def test_unexpected_type_and_unknown_fields_are_refused() -> None:
    claim = Claim(version=1, task_id="t", nonce=bytes(16), claimed_at=1.0)
    with pytest.raises(MalformedMessage, match="expected lease"):
        open_envelope(seal(claim, ALICE, NET), NET, expected=Lease)
    body = dict(claim.to_wire(), extra=1)
    raw = msgpack.unpackb(seal(claim, ALICE, NET))
    raw["body"] = packb(body)
    raw["sig"] = ALICE.sign(b"flopnet/1\0" + NET.encode() + b"\0claim\0" + raw["body"])
    with pytest.raises(MalformedMessage, match="unknown fields"):
        open_envelope(packb(raw), NET)


def test_oversized_payloads_are_refused_before_parsing() -> None:
    big = bytes(MAX_ENVELOPE_BYTES[Claim.TYPE] + 1)
    with pytest.raises(MalformedMessage, match="exceeds"):
        open_envelope(big, NET, expected=Claim)
    huge_text = Submission(
        version=1,
        lease=b"",
        token_ids=(),
        text="x" * (300 * 1024),
        finish_reason="eos",
        proofs=(),
        generation_seconds=0.0,
    )
    with pytest.raises(MalformedMessage):
        open_envelope(seal(huge_text, ALICE, NET), NET)


def test_bounds_are_enforced() -> None:
    bad = Claim(version=1, task_id="t", nonce=bytes(15), claimed_at=1.0)  # nonce must be 16
    with pytest.raises(MalformedMessage, match="expected 16 bytes"):
        open_envelope(seal(bad, ALICE, NET), NET)
    negative = TaskAnnouncement(
        version=1,
        seq=-1,
        task_id="t",
        task_type="math",
        samples=1,
        max_new_tokens=1,
        announced_at=0.0,
    )
    with pytest.raises(MalformedMessage, match="outside"):
        open_envelope(seal(negative, ALICE, NET), NET)


def test_every_message_type_has_a_cap() -> None:
    assert set(MESSAGE_TYPES) == set(MAX_ENVELOPE_BYTES)
    assert CreditBody.TYPE == ""  # bodies travel inside ledger entries, never alone


@given(st.binary(max_size=2048))
@settings(max_examples=200, deadline=None)
def test_other_untrusted_decoders_raise_only_malformed(blob: bytes) -> None:
    from flopnet.protocol.codec import decode_record
    from flopnet.protocol.manifest import open_manifest
    from flopnet.protocol.messages import ReachabilityReply, ReachabilityRequest

    for decode in (
        lambda: open_manifest(blob),
        lambda: decode_record(ReachabilityRequest, blob, max_bytes=4096),
        lambda: decode_record(ReachabilityReply, blob, max_bytes=4096),
    ):
        with pytest.raises(MalformedMessage):
            decode()
