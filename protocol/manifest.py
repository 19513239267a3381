"""The network manifest: one founder-signed record that every node of a network checks at start.

The network id is ``<name>-<first 16 hex digits of SHA-256(founder key)>``: a node given a network
id can check any manifest offered for it, and a manifest re-signed by another key cannot claim the
id. The file on disk (``network.manifest``) is the sealed envelope, byte for byte.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from flopnet.protocol.codec import record_from_wire, unpackb
from flopnet.protocol.envelope import open_envelope, seal
from flopnet.protocol.errors import ConfigError, MalformedMessage
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import MANIFEST_VERSION, MAX_ENVELOPE_BYTES, NetworkManifest

MANIFEST_FILE = "network.manifest"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


def founder_fingerprint(founder_key: bytes) -> str:
    """The 16 hex digits of SHA-256(founder key) that end every network id it founds."""
    return hashlib.sha256(founder_key).hexdigest()[:16]


def network_id_for(name: str, founder_key: bytes) -> str:
    """``name-fingerprint``; names are lowercase letters, digits and dashes, at most 31 long."""
    if not _NAME.match(name):
        raise ConfigError(f"network name {name!r}: use 1-31 lowercase letters, digits and dashes")
    return f"{name}-{founder_fingerprint(founder_key)}"


def create_manifest(founder: Identity, name: str, **fields: Any) -> bytes:
    """Build and seal a new network's manifest; ``fields`` are NetworkManifest's other fields."""
    manifest = NetworkManifest(
        version=MANIFEST_VERSION,
        network_id=network_id_for(name, founder.public_key),
        founder=founder.public_key,
        **fields,
    )
    return seal(manifest, founder, manifest.network_id)


def open_manifest(data: bytes, expected_network_id: str | None = None) -> NetworkManifest:
    """Verify a sealed manifest: its signature, signer and network id. Raises MalformedMessage."""
    # The signature is domain-separated by the network id, which is inside the body: read it
    # untrusted first, then verify everything against it.
    raw = unpackb(data, max_bytes=MAX_ENVELOPE_BYTES[NetworkManifest.TYPE])
    if not isinstance(raw, dict) or not isinstance(raw.get("body"), bytes):
        raise MalformedMessage("not a manifest envelope")
    body = unpackb(raw["body"], max_bytes=len(raw["body"]))
    if isinstance(body, dict) and body.get("version") != MANIFEST_VERSION:
        raise MalformedMessage(
            f"manifest version {str(body.get('version'))[:16]}; this node reads version "
            f"{MANIFEST_VERSION} (found the network again with `flopnet network init`)"
        )
    peek = record_from_wire(NetworkManifest, body)
    opened = open_envelope(data, peek.network_id, expected=NetworkManifest)
    manifest = opened.expect(NetworkManifest)
    if opened.signer != manifest.founder:
        raise MalformedMessage("the manifest is not signed by its founder key")
    if not manifest.network_id.endswith("-" + founder_fingerprint(manifest.founder)):
        raise MalformedMessage("the network id does not match the founder key's fingerprint")
    if expected_network_id is not None and manifest.network_id != expected_network_id:
        raise MalformedMessage(
            f"manifest is for {manifest.network_id}, expected {expected_network_id}"
        )
    return manifest


def load_manifest(path: Path, expected_network_id: str | None = None) -> NetworkManifest:
    """Read and verify a manifest file; refuse it with a clear ConfigError otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read manifest {path}: {exc}") from None
    try:
        return open_manifest(data, expected_network_id)
    except MalformedMessage as exc:
        raise ConfigError(f"refusing manifest {path}: {exc}") from None
