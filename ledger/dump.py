"""The daily statistics export (BOINC style): every contributor and team, with the chain heads
the numbers were computed from, so a statistics site can check them against the ledger."""

from __future__ import annotations

import csv
import datetime
import io
from typing import Any

from flopnet.ledger.chain import signer_name
from flopnet.ledger.leaderboard import (
    Standing,
    csv_safe,
    flop_formulas,
    leaderboard,
    team_totals,
    to_csv_rows,
    to_json,
)
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
    teams = team_totals(rows)
    return {
        "format": DUMP_FORMAT,
        "network_id": network_id,
        "as_of": now,
        "as_of_utc": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(),
        "lock_window_seconds": lock_window,
        "flop_formulas": flop_formulas(rows),
        "chains": chains,
        "equivocations": len(store.equivocations()),
        "totals": dump_totals(rows, teams),
        "contributors": contributors,
        "teams": teams,
    }


_TOTALS = (
    "flops",
    "pending_flops",
    "final_flops",
    "generated_tokens",
    "tasks_accepted",
    "tasks_rejected",
    "tasks_voided",
)


def dump_totals(rows: list[Standing], teams: list[dict[str, Any]]) -> dict[str, int]:
    """The totals header of a dump: how many rows it holds and what they add up to (a
    statistics site checks a download against it)."""
    out = {"contributors": len(rows), "teams": len(teams)}
    for key in _TOTALS:
        out[key] = sum(getattr(s, key) for s in rows)
    return out


TEAM_COLUMNS = ("rank", "team", "members", *_TOTALS, "flops_24h", "flops_7d")


def dump_csv(dump: dict[str, Any], what: str) -> str:
    """The dump's ``contributors`` or ``teams`` as CSV after ``#`` lines with its header
    (format, network, time, chain heads, totals), as BOINC's statistics files carry."""
    head = [
        f"# {dump['format']} {what}",
        f"# network_id: {dump['network_id']}",
        f"# as_of: {dump['as_of']} ({dump['as_of_utc']})",
        *(
            f"# chain: {c['public_key']} head_seq {c['head_seq']} {c['head_hash']}"
            for c in dump["chains"]
        ),
        "# totals: " + " ".join(f"{k}={v}" for k, v in dump["totals"].items()),
    ]
    if what == "contributors":
        body = to_csv_rows(dump["contributors"])
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(TEAM_COLUMNS)
        for team in dump["teams"]:
            writer.writerow([csv_safe(team[c]) for c in TEAM_COLUMNS])
        body = buffer.getvalue()
    return "\n".join(head) + "\n" + body
