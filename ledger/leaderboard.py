"""The leaderboard: contributors ranked by credited FLOPs, one SQL query over verified entries.

Only entries that passed verification reach the store's ``credits`` table, so the query needs no
re-checking. Rejected submissions stay in the chain as credit entries with ``accepted=False`` and
``flops=0``: they are counted, never credited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.store import LedgerStore
from protocol.identity import peer_id_from_public_key

_LOW32 = 0xFFFFFFFF

# FLOPs are summed as two 32-bit halves: a plain SUM of 64-bit integers overflows (SQLite raises
# "integer overflow") after a few thousand long samples of a large model, and TOTAL() would round.
# The ORDER BY compares (high part after carry, low 32 bits), which orders the exact totals. Ties
# are broken by contributor key, which orders like the peer id: every Ed25519 peer id is 52 base58
# characters over the same 6-byte prefix, and the base58 alphabet is in ASCII order.
_QUERY = """
SELECT contributor,
       SUM(CASE WHEN accepted THEN flops >> 32 ELSE 0 END) AS hi,
       SUM(CASE WHEN accepted THEN flops & {low} ELSE 0 END) AS lo,
       SUM(accepted != 0) AS n_accepted,
       SUM(accepted = 0) AS n_rejected,
       SUM(CASE WHEN accepted THEN generated_tokens ELSE 0 END) AS tokens,
       GROUP_CONCAT(DISTINCT CASE WHEN accepted THEN flop_formula END) AS formulas
FROM credits
{where}
GROUP BY contributor
ORDER BY hi + (lo >> 32) DESC, lo & {low} DESC, contributor ASC
LIMIT ?
"""


@dataclass(frozen=True)
class Standing:
    """One contributor's row: credited FLOPs and accepted/rejected counts.

    ``generated_tokens`` counts accepted samples only, like ``flops``; ``formulas`` lists the FLOP
    formula versions behind ``flops``.
    """

    contributor: bytes
    peer_id: str
    flops: int
    tasks_accepted: int
    tasks_rejected: int
    generated_tokens: int
    formulas: tuple[str, ...] = ()


def leaderboard(
    store: LedgerStore,
    validators: set[bytes] | None = None,
    since: float | None = None,
    limit: int = 100,
) -> list[Standing]:
    """Contributors ranked by accepted FLOPs, then peer id, from entries of ``validators`` (all
    stored signers if None) with timestamps at or after ``since``."""
    if validators is not None and not validators:
        return []
    clauses: list[str] = []
    params: list[Any] = []
    if validators is not None:
        ordered = sorted(validators)
        clauses.append(f"signer IN ({', '.join('?' * len(ordered))})")
        params.extend(ordered)
    if since is not None:
        clauses.append("timestamp >= ?")
        params.append(float(since))
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(max(0, int(limit)))
    rows = store.connection.execute(_QUERY.format(where=where, low=_LOW32), params).fetchall()
    return [
        Standing(
            contributor=contributor,
            peer_id=peer_id_from_public_key(contributor),
            flops=(hi << 32) + lo,
            tasks_accepted=n_accepted,
            tasks_rejected=n_rejected,
            generated_tokens=tokens,
            formulas=tuple(sorted(formulas.split(","))) if formulas else (),
        )
        for contributor, hi, lo, n_accepted, n_rejected, tokens, formulas in rows
    ]


_SI = ["", "k", "M", "G", "T", "P", "E", "Z", "Y"]


def format_flops(flops: int) -> str:
    """A short human form: ``1.23 PFLOP``."""
    value, unit = float(flops), 0
    while value >= 1000 and unit < len(_SI) - 1:
        value, unit = value / 1000, unit + 1
    return f"{flops} FLOP" if unit == 0 else f"{value:.2f} {_SI[unit]}FLOP"


def format_table(standings: list[Standing]) -> str:
    """A plain-text table for the terminal, with the FLOP formula versions in the footer."""
    header = ("#", "peer id", "FLOPs", "accepted", "rejected", "tokens")
    rows = [
        (
            str(rank),
            s.peer_id,
            format_flops(s.flops),
            str(s.tasks_accepted),
            str(s.tasks_rejected),
            str(s.generated_tokens),
        )
        for rank, s in enumerate(standings, start=1)
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = {1}  # the peer id column reads better left-aligned; numbers right-aligned

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    if not rows:
        out.append("(no credited contributors)")
    formulas = sorted({f for s in standings for f in s.formulas})
    if formulas:
        out.append(f"FLOP formula: {', '.join(formulas)}")
    return "\n".join(out)


def to_json(standings: list[Standing]) -> list[dict[str, Any]]:
    """Plain dicts for JSON; ``flops`` is an exact int (and also a string, for JavaScript
    readers whose numbers lose integers above 2**53)."""
    return [
        {
            "rank": rank,
            "contributor": s.contributor.hex(),
            "peer_id": s.peer_id,
            "flops": s.flops,
            "flops_str": str(s.flops),
            "flop_formulas": list(s.formulas),
            "tasks_accepted": s.tasks_accepted,
            "tasks_rejected": s.tasks_rejected,
            "generated_tokens": s.generated_tokens,
        }
        for rank, s in enumerate(standings, start=1)
    ]
