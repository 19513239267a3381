"""``flopnet leaderboard build``: the whole site as files, for any static host.

One snapshot for everything, so every page and chain file agrees; files are written beside
their final names and renamed into place, so a host serving the folder never shows half a file.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from flopnet.web import pages
from flopnet.web.site import Ledger, contributor_paths, header, render, site_paths


@dataclass(frozen=True)
class BuildReport:
    """What a build wrote."""

    files: int
    bytes: int
    contributors: int
    entries: int
    seconds: float


def _write(out: Path, rel: str, data: bytes) -> None:
    target = out / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def build_site(ledger: Ledger, out: Path, as_of: float | None = None) -> BuildReport:
    """Write every file of the site for the ledger as of ``as_of`` (default: now) into ``out``."""
    started = time.perf_counter()
    files = size = people = 0
    with ledger.snapshot(as_of) as snap:
        for rel in site_paths(snap):
            data = render(snap, rel)
            assert data is not None, rel
            _write(out, rel, data)
            files, size = files + 1, size + len(data)
        head = header(snap)
        seen: set[bytes] = set()
        for contributor, page, rel in contributor_paths(snap):
            view = snap.contributor(contributor, page, subset=False)
            data = pages.contributor_page(head, view).encode()
            _write(out, rel, data)
            files, size = files + 1, size + len(data)
            seen.add(contributor)
        people = len(seen)
        entries = sum(c.seq + 1 for c in snap.chains)
    return BuildReport(files, size, people, entries, time.perf_counter() - started)
