"""Ed25519 identities: one key signs our messages and is the node's libp2p identity.

The private key is a 32-byte Ed25519 seed stored raw in ``<data dir>/identity.key`` with mode 0600.
The libp2p peer id is derived from the same public key (identity multihash of the protobuf-encoded
key), so a node can check that the peer on the other end of a stream is the party that signed a
message. The derivation is done here without importing libp2p, which keeps the CLI fast.
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from flopnet.protocol.errors import ConfigError

KEY_FILE = "identity.key"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(data: bytes) -> str:
    """Base58btc encoding (Bitcoin alphabet), as used for libp2p peer ids."""
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, rem = divmod(number, 58)
        out.append(_B58_ALPHABET[rem])
    leading_zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading_zeros + "".join(reversed(out))


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id (base58) of an Ed25519 public key.

    libp2p inlines small keys: multihash(identity, protobuf{Type: Ed25519=1, Data: key}).
    """
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError("an Ed25519 public key is 32 bytes")
    protobuf_key = b"\x08\x01\x12\x20" + public_key
    return b58encode(b"\x00" + bytes([len(protobuf_key)]) + protobuf_key)


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# Parsed keys, by seed: a node signs every receipt and verdict with the same few keys. Kept out of
# the (picklable) Identity itself.
@functools.lru_cache(maxsize=64)
def _private_key(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed)


@functools.lru_cache(maxsize=64)
def _public_key(seed: bytes) -> bytes:
    return _private_key(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Identity:
    """A node's signing key, its public key and its libp2p peer id."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise ConfigError("an Ed25519 seed is 32 bytes")

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity."""
        return cls(os.urandom(32))

    @property
    def _key(self) -> Ed25519PrivateKey:
        return _private_key(self.seed)

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return _public_key(self.seed)

    @property
    def peer_id(self) -> str:
        """The libp2p peer id (base58) derived from this key."""
        return peer_id_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature of ``message``."""
        return self._key.sign(message)

    def __repr__(self) -> str:  # never print the seed
        return f"Identity(peer_id={self.peer_id!r})"


def load_or_create_identity(data_dir: Path) -> Identity:
    """Load ``identity.key`` from ``data_dir``, creating it (mode 0600) on first use.

    A key file readable by group or others is refused: it would let another local user
    impersonate the node and steal its credit.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create the data directory {data_dir}: {exc.strerror}") from None
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{path} has mode {mode:o}; it must be readable by its owner only (chmod 600)"
            ) from None
        seed = path.read_bytes()
        if len(seed) != 32:
            raise ConfigError(f"{path} is corrupt: expected 32 bytes, found {len(seed)}") from None
        return Identity(seed)
    identity = Identity.generate()
    with os.fdopen(fd, "wb") as handle:
        handle.write(identity.seed)
        handle.flush()
        os.fsync(handle.fileno())
    return identity
