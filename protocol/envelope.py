"""Signed envelopes: the one untrusted decode path for everything that arrives from the network.

Envelope = canonical msgpack map {v, type, body, signer, sig}. The signature covers a
domain-separated string ``b"flopnet/1\\0" + network_id + b"\\0" + type + b"\\0" + body`` so a
signature made for one network or one message type cannot be replayed as another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, TypeVar

from flopnet.protocol.codec import Record, packb, record_from_wire, unpackb
from flopnet.protocol.errors import MalformedMessage
from flopnet.protocol.identity import SIGNATURE_BYTES, Identity, verify_signature
from flopnet.protocol.messages import MAX_ENVELOPE_BYTES, MESSAGE_TYPES, PROTOCOL_VERSION

ENVELOPE_OVERHEAD = 256
R = TypeVar("R", bound=Record)


def _signed_bytes(network_id: str, type_name: str, body: bytes) -> bytes:
    return b"flopnet/1\0" + network_id.encode() + b"\0" + type_name.encode() + b"\0" + body


@dataclass(frozen=True)
class Opened:
    """A verified envelope: its message, who signed it, and its id."""

    message: Record
    signer: bytes
    message_id: bytes
    raw: bytes

    def expect(self, cls: type[R]) -> R:
        """The message as ``cls``, or MalformedMessage if it is another type."""
        if not isinstance(self.message, cls):
            raise MalformedMessage(f"expected {cls.TYPE}, got {type(self.message).__name__}")
        return self.message


def seal(message: Record, identity: Identity, network_id: str) -> bytes:
    """Sign ``message`` with ``identity`` for ``network_id`` and return the envelope bytes."""
    type_name = type(message).TYPE
    if type_name not in MESSAGE_TYPES:
        raise ValueError(f"{type(message).__name__} is not a top-level message type")
    body = message.encode()
    sig = identity.sign(_signed_bytes(network_id, type_name, body))
    envelope = {
        "v": PROTOCOL_VERSION,
        "type": type_name,
        "body": body,
        "signer": identity.public_key,
        "sig": sig,
    }
    data = packb(envelope)
    if len(data) > MAX_ENVELOPE_BYTES[type_name]:
        raise MalformedMessage(
            f"{type_name} of {len(data)} bytes exceeds its cap of {MAX_ENVELOPE_BYTES[type_name]}"
        )
    return data


def peek_signer(data: bytes) -> bytes:
    """The signer an envelope claims, WITHOUT verifying its signature: a cheap look before the
    expensive check (raises MalformedMessage for anything that is not an envelope)."""
    raw: Any = unpackb(data, max_bytes=max(MAX_ENVELOPE_BYTES.values()))
    if not isinstance(raw, dict) or set(raw) != {"v", "type", "body", "signer", "sig"}:
        raise MalformedMessage("not an envelope")
    signer = raw["signer"]
    if not isinstance(signer, bytes) or len(signer) != 32:
        raise MalformedMessage("bad signer")
    return signer


def message_id(envelope_bytes: bytes) -> bytes:
    """SHA-256 of an envelope's canonical bytes."""
    return hashlib.sha256(envelope_bytes).digest()


def open_envelope(data: bytes, network_id: str, *, expected: type[R] | None = None) -> Opened:
    """Decode and verify an envelope from an untrusted source.

    Raises only :class:`MalformedMessage`: on size caps, non-canonical or malformed bytes, unknown
    or unexpected types, bad field values, or a signature that does not verify.
    """
    cap = MAX_ENVELOPE_BYTES[expected.TYPE] if expected else max(MAX_ENVELOPE_BYTES.values())
    raw: Any = unpackb(data, max_bytes=cap)
    if not isinstance(raw, dict) or set(raw) != {"v", "type", "body", "signer", "sig"}:
        raise MalformedMessage("not an envelope")
    if raw["v"] != PROTOCOL_VERSION:
        raise MalformedMessage(f"unsupported protocol version {raw['v']!r}")
    type_name, body, signer, sig = raw["type"], raw["body"], raw["signer"], raw["sig"]
    if not isinstance(type_name, str) or type_name not in MESSAGE_TYPES:
        raise MalformedMessage(f"unknown message type {type_name!r}")
    if expected is not None and type_name != expected.TYPE:
        raise MalformedMessage(f"expected {expected.TYPE}, got {type_name}")
    if len(data) > MAX_ENVELOPE_BYTES[type_name]:
        raise MalformedMessage(f"{type_name} exceeds its cap of {MAX_ENVELOPE_BYTES[type_name]}")
    if not isinstance(body, bytes) or not isinstance(signer, bytes) or not isinstance(sig, bytes):
        raise MalformedMessage("envelope fields have wrong types")
    if len(signer) != 32 or len(sig) != SIGNATURE_BYTES:
        raise MalformedMessage("bad signer or signature length")
    if not verify_signature(signer, sig, _signed_bytes(network_id, type_name, body)):
        raise MalformedMessage(f"bad signature on {type_name}")
    message = record_from_wire(MESSAGE_TYPES[type_name], unpackb(body, max_bytes=len(body)))
    return Opened(
        message=message, signer=signer, message_id=message_id(bytes(data)), raw=bytes(data)
    )
