"""The site's file names: one place, used by the page builders and the server alike.

Every link is relative (``root`` is ``""`` or ``"../"``), so the site works from any folder of
any static host and under the daemon's ``/web/`` mount.
"""

from __future__ import annotations

CHUNK = 4096  # ledger entries per chain file
ASSETS = ("style.css", "verify.js", "noble-ed25519.js")
MANIFEST = "ledger/manifest.bin"
DUMPS = ("dumps/stats.json.gz", "dumps/contributors.csv.gz", "dumps/teams.csv.gz")


def board(window: str, page: int = 1) -> str:
    """A ranking page: ``index.html`` is all time's first."""
    if page == 1:
        return "index.html" if window == "all" else f"{window}.html"
    return f"{window}-{page}.html"


def contributor(peer_id: str, page: int = 1) -> str:
    return f"c/{peer_id}.html" if page == 1 else f"c/{peer_id}-{page}.html"


def chunk(signer_hex: str, index: int) -> str:
    """Entries ``index * CHUNK`` up to the next chunk of one chain."""
    return f"ledger/{signer_hex}/{index * CHUNK}.bin"


TEAMS = "teams.html"
