"""The daily statistics export (BOINC style): every contributor and team, with the chain heads
the numbers were computed from, so a statistics site can check them against the ledger."""

from __future__ import annotations

import datetime
from typing import Any

from flopnet.ledger.chain import signer_name
from flopnet.ledger.leaderboard import flop_formulas, leaderboard, team_totals, to_json
from flopnet.ledger.store import LedgerStore

DUMP_FORMAT = "flopnet-stats/1"


def build_dump(
    store: LedgerStore,
    network_id: str,
    validators: set[bytes] | None,
    *,
    now: float,
    lock_window: float,
) -> dict[str, Any]:
    """The statistics export: every contributor and team, and the heads it was computed from."""
    rows = leaderboard(store, validators, limit=10**9, now=now, lock_window=lock_window)
    contributors = to_json(rows)
    heads = store.heads()
    chains = [
        {
            "peer_id": signer_name(signer),
            "public_key": signer.hex(),
            "head_seq": seq,
            "head_hash": h.hex(),
        }
        for signer, (seq, h) in sorted(heads.items())
        if validators is None or signer in validators
    ]
    return {
        "format": DUMP_FORMAT,
        "network_id": network_id,
        "as_of": now,
        "as_of_utc": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(),
        "lock_window_seconds": lock_window,
        "flop_formulas": flop_formulas(rows),
        "chains": chains,
        "equivocations": len(store.equivocations()),
        "contributors": contributors,
        "teams": team_totals(rows),
    }
