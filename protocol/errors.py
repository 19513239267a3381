"""flopnet's one small exception hierarchy.

Every room raises subclasses of :class:`FlopnetError`; library errors (libp2p, torch, math-verify,
SQLite) are mapped to these at the boundary that calls the library. This module imports only the
standard library so that every room may use it.
"""

from __future__ import annotations


class FlopnetError(Exception):
    """Base class of every error flopnet raises on purpose."""


class MalformedMessage(FlopnetError):
    """Bytes from the network failed strict decoding, a size cap, or a signature check."""


class ProtocolTimeout(FlopnetError):
    """A stream operation with a remote peer did not finish within its deadline."""


class PeerError(FlopnetError):
    """A remote peer could not be reached or broke a request/response exchange."""


class ProtocolNotSupported(PeerError):
    """A reachable peer does not serve a stream protocol (a light client, another program,
    an older version): the peer is still a peer, only that request cannot be made."""


class ProofError(FlopnetError):
    """A TOPLOC proof or hidden-state tensor is unusable (wrong length, modulus, dtype or shape)."""


class VerifierError(FlopnetError):
    """An answer verifier crashed, timed out, or was given a task it cannot judge."""


class LedgerError(FlopnetError):
    """A ledger entry or chain failed verification, or the store is inconsistent."""


class ConfigError(FlopnetError):
    """Configuration, manifest or command-line values are invalid."""
