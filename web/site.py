"""The site: every file it holds, rendered from a ledger snapshot by path.

The same function answers the server's requests and writes the static build, so both serve
identical bytes for one snapshot. Paths are those of :mod:`flopnet.web.paths`.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from flopnet.ledger.dump import build_dump, dump_csv
from flopnet.ledger.leaderboard import team_totals
from flopnet.ledger.store import LedgerStore
from flopnet.protocol.identity import PUBLIC_KEY_BYTES, peer_id_from_public_key
from flopnet.protocol.manifest import open_manifest
from flopnet.web import pages, paths
from flopnet.web.model import CREDIT_ROWS, RANK_ROWS, WINDOWS, Snapshot

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".bin": "application/octet-stream",
    ".gz": "application/gzip",
}
_BOARD = re.compile(r"^(?:(all|30d|7d|24h)(?:-([1-9][0-9]{0,6}))?\.html|index\.html)$")
_CONTRIBUTOR = re.compile(r"^c/([1-9A-HJ-NP-Za-km-z]{40,60})(?:-([1-9][0-9]{0,6}))?\.html$")
_CHUNK = re.compile(r"^ledger/([0-9a-f]{64})/(0|[1-9][0-9]{0,18})\.bin$")


@dataclass(frozen=True)
class Ledger:
    """A ledger file and the signed manifest of its network."""

    path: Path
    manifest: bytes

    @classmethod
    def load(cls, path: Path, manifest_path: Path) -> Ledger:
        data = manifest_path.read_bytes()
        open_manifest(data)  # refuse a manifest that does not verify, before serving anything
        return cls(Path(path), data)

    @contextmanager
    def snapshot(self, as_of: float | None = None) -> Iterator[Snapshot]:
        """The ledger as one read transaction at ``as_of`` (default: now)."""
        manifest = open_manifest(self.manifest)
        with LedgerStore(self.path) as store:
            snap = Snapshot.open(
                store,
                manifest.network_id,
                list(manifest.validators),
                manifest.lock_window_seconds,
                time.time() if as_of is None else as_of,
                self.manifest,
            )
            try:
                yield snap
            finally:
                snap.close()


def header(snap: Snapshot) -> pages.Header:
    return pages.Header(snap.network_id, snap.as_of, snap.lock_window, snap.chains, snap.formulas())


def asset(name: str) -> bytes:
    """One of the site's fixed files (stylesheet, checker, vendored Ed25519)."""
    folder = resources.files("flopnet.web") / "static"
    if name == "noble-ed25519.js":
        return (folder / "vendor" / "noble-ed25519.js").read_bytes()
    return (folder / name).read_bytes()


def key_from_peer_id(peer_id: str) -> bytes | None:
    """The Ed25519 key inside a peer id (the inverse of ``peer_id_from_public_key``)."""
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    number = 0
    for ch in peer_id:
        index = alphabet.find(ch)
        if index < 0:
            return None
        number = number * 58 + index
    raw = number.to_bytes(38, "big") if number < 1 << (8 * 38) else b""
    key = raw[6:]
    if len(key) != PUBLIC_KEY_BYTES or peer_id_from_public_key(key) != peer_id:
        return None
    return key


def chunk_bytes(envelopes: list[bytes]) -> bytes:
    """A chain file: each envelope after its 4-byte big-endian length."""
    return b"".join(struct.pack(">I", len(e)) + e for e in envelopes)


def render(snap: Snapshot, path: str) -> bytes | None:
    """The file at ``path`` of the site for this snapshot, or None if there is none."""
    if path.startswith("assets/"):
        name = path[len("assets/") :]
        return asset(name) if name in paths.ASSETS else None
    if path == paths.MANIFEST:
        return snap.manifest
    match = _BOARD.match(path)
    if match:
        window, page = match.group(1) or "all", int(match.group(2) or 1)
        if path == f"{window}.html" and window == "all":
            return None  # all time's first page is index.html
        board = snap.board(window, offset=(page - 1) * RANK_ROWS)
        if page > 1 and not board.rows:
            return None
        return pages.board_page(header(snap), board).encode()
    if path == paths.TEAMS:
        return pages.teams_page(header(snap), team_totals(snap.all_standings())).encode()
    match = _CONTRIBUTOR.match(path)
    if match:
        key = key_from_peer_id(match.group(1))
        page = int(match.group(2) or 1)
        if key is None:
            return None
        view = snap.contributor(key, page)
        if view.credit_count == 0 or (page > 1 and not view.credits):
            return None
        return pages.contributor_page(header(snap), view).encode()
    match = _CHUNK.match(path)
    if match:
        signer, start = bytes.fromhex(match.group(1)), int(match.group(2))
        head = next((c for c in snap.chains if c.signer == signer), None)
        if head is None or start % paths.CHUNK or start > head.seq:
            return None
        return chunk_bytes(snap.store.entries(signer, start, paths.CHUNK))
    if path in paths.DUMPS:
        return dump_file(snap, path)
    return None


def dump_file(snap: Snapshot, path: str) -> bytes:
    """One of the daily statistics files, gzipped (reproducibly: no time in the gzip header)."""
    dump = build_dump(
        snap.store, snap.network_id, set(snap.signers), now=snap.as_of, lock_window=snap.lock_window
    )
    if path.endswith(".json.gz"):
        text = json.dumps(dump, indent=1, sort_keys=True) + "\n"
    else:
        text = dump_csv(dump, "contributors" if "contributors" in path else "teams")
    return gzip.compress(text.encode(), mtime=0)


def content_type(path: str) -> str:
    return TYPES.get(Path(path).suffix, "application/octet-stream")


def site_paths(snap: Snapshot) -> Iterator[str]:
    """Every file of the site (the static build writes these)."""
    yield from (f"assets/{a}" for a in paths.ASSETS)
    yield paths.MANIFEST
    for chain in snap.chains:
        for index in range(chain.seq // paths.CHUNK + 1):
            yield paths.chunk(chain.signer.hex(), index)
    yield paths.TEAMS
    yield from paths.DUMPS
    for window in WINDOWS:
        ranked = len(snap.credited(snap.start(window)))
        for page in range(1, max(1, -(-ranked // RANK_ROWS)) + 1):
            yield paths.board(window, page)


def contributor_paths(snap: Snapshot) -> Iterator[tuple[bytes, int, str]]:
    """(contributor, page, path) of every contributor page."""
    conn = snap.store.connection
    counts = dict(
        conn.execute(
            "SELECT contributor, COUNT(*) FROM credits WHERE signer IN "
            f"({', '.join('?' * len(snap.signers))}) GROUP BY contributor",
            snap.signers,
        ).fetchall()
        if snap.chains
        else []
    )
    for contributor in snap.contributors():
        peer = peer_id_from_public_key(contributor)
        for page in range(1, -(-counts.get(contributor, 0) // CREDIT_ROWS) + 1):
            yield contributor, page, paths.contributor(peer, page)
