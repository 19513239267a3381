"""The leaderboard: contributors ranked by credited FLOPs, from the store's precomputed sums.

Only entries that passed verification reach the store, so nothing is re-checked here. Rejected
submissions stay in the chain as credit entries with ``accepted=False`` and ``flops=0``: they are
counted, never credited. Credit voided by an invalidation (see :mod:`ledger.policy`) is taken out
again; what remains is split into pending (inside the lock window) and final.

Speed: a window ``[since, now]`` is summed from four parts of the store's sums: the raw credits
of the partial hour at its start, the hour buckets up to the next quarter day, the quarter-day
buckets up to the next UTC midnight, and the day buckets from there on (``since=None`` reads
the all-time sums). A top-100 over a million entries
thus reads thousands of rows. The sums are exact integers: FLOPs travel as 32-bit halves.
"""

from __future__ import annotations

import csv
import heapq
import io
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from flopnet.ledger.derived import DAY, HOUR, QUARTER
from flopnet.ledger.policy import DEFAULT_LOCK_WINDOW_S
from flopnet.ledger.store import LedgerStore
from flopnet.protocol.identity import peer_id_from_public_key

WINDOWS: dict[str, float | None] = {
    "24h": 86400.0,
    "7d": 7 * 86400.0,
    "30d": 30 * 86400.0,
    "all": None,
}
_DETAIL_FILTER_MAX = 500  # above this many contributors, sum the windows for everyone instead

# contributor -> [flops, accepted, rejected, tokens, voided credits, voided flops]
Sums = dict[bytes, list[int]]


@dataclass(frozen=True)
class Standing:
    """One contributor's row: credited FLOPs and task counts in the ranked window.

    ``flops`` = ``pending_flops`` + ``final_flops`` (voided credit excluded); ``generated_tokens``
    counts accepted samples only, like ``flops``; ``tasks_voided`` counts accepted credits an
    invalidation voided. ``flops_24h``/``flops_7d``/``flops_all`` are the same contributor's
    credited FLOPs over those windows. ``formulas`` lists the FLOP formula versions behind the
    contributor's credits.
    """

    contributor: bytes
    peer_id: str
    flops: int
    tasks_accepted: int
    tasks_rejected: int
    generated_tokens: int
    formulas: tuple[str, ...] = ()
    pending_flops: int = 0
    final_flops: int = 0
    tasks_voided: int = 0
    flops_24h: int = 0
    flops_7d: int = 0
    flops_all: int = 0
    display_name: str = ""
    team: str = ""

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted (and not voided) tasks over all judged tasks; None before the first one."""
        judged = self.tasks_accepted + self.tasks_rejected + self.tasks_voided
        return self.tasks_accepted / judged if judged else None


def _in(column: str, values: Sequence[bytes] | None) -> tuple[str, list[Any]]:
    if values is None:
        return "", []
    return f" AND {column} IN ({', '.join('?' * len(values))})", list(values)


def window_sums(
    store: LedgerStore,
    since: float | None,
    validators: Sequence[bytes] | None = None,
    contributors: Sequence[bytes] | None = None,
) -> dict[bytes, list[int]]:
    """Per contributor [hi, lo, accepted, rejected, tokens] of credits at or after ``since``
    (all time if None), before voiding; optionally only some signers and contributors."""
    if since is not None:
        (first,) = store.connection.execute("SELECT MIN(timestamp) FROM credits").fetchone()
        if first is None or since <= first:
            since = None  # the window holds every credit: the all-time sums are exact
    sig_sql, sig_params = _in("signer", validators)
    con_sql, con_params = _in("contributor", contributors)
    filters, params = sig_sql + con_sql, sig_params + con_params
    amounts = "SUM(hi), SUM(lo), SUM(accepted), SUM(rejected), SUM(tokens)"
    if since is None:
        sql = f"SELECT contributor, {amounts} FROM credit_totals WHERE 1{filters} GROUP BY 1"
        args: list[Any] = params
    else:
        # Whole buckets from the start of the window on: hours up to the next quarter day,
        # quarters up to the next UTC midnight, then days; the rest is raw credits.
        first_hour = -int(-since // HOUR)
        first_quarter = -int(-since // QUARTER)
        first_day = -int(-since // DAY)
        # The raw edge is at most an hour of credits; read them in time order (rows were
        # written in that order) unless only a few contributors are wanted. SQLite's statistics
        # otherwise favour a skip-scan of the contributor index, twice as slow here.
        raw_index = "credits_timestamp" if contributors is None else "credits_contributor"
        raw = (
            "SELECT contributor, "
            "CASE WHEN accepted THEN flops >> 32 ELSE 0 END AS hi, "
            "CASE WHEN accepted THEN flops & 4294967295 ELSE 0 END AS lo, "
            "accepted != 0 AS accepted, accepted = 0 AS rejected, "
            "CASE WHEN accepted THEN generated_tokens ELSE 0 END AS tokens "
            f"FROM credits INDEXED BY {raw_index} WHERE timestamp >= ? AND timestamp < ?{filters}"
        )
        buckets = "SELECT contributor, hi, lo, accepted, rejected, tokens FROM {} WHERE {}"
        hours = buckets.format("credit_hours", f"bucket >= ? AND bucket < ?{filters}")
        quarters = buckets.format("credit_quarters", f"bucket >= ? AND bucket < ?{filters}")
        days = buckets.format("credit_days", f"bucket >= ?{filters}")
        sql = (
            f"SELECT contributor, {amounts} FROM ({raw} UNION ALL {hours} UNION ALL {quarters} "
            f"UNION ALL {days}) GROUP BY contributor"
        )
        per_hour, per_quarter = QUARTER // HOUR, DAY // QUARTER
        args = [float(since), float(first_hour * HOUR), *params]
        args += [first_hour, first_quarter * per_hour, *params]
        args += [first_quarter, first_day * per_quarter, *params]
        args += [first_day, *params]
    return {row[0]: list(row[1:]) for row in store.connection.execute(sql, args)}


def void_spans(
    invalidations: Iterable[tuple[bytes, float]], lock_window: float
) -> dict[bytes, list[tuple[float, float]]]:
    """Per contributor, the disjoint time spans ``(lo, hi]`` in which hard invalidations at
    the given times void credit: the union of ``(T - lock_window, T]`` (see ``policy.voids``)."""
    times: dict[bytes, list[float]] = {}
    for contributor, at in invalidations:
        times.setdefault(contributor, []).append(at)
    spans: dict[bytes, list[tuple[float, float]]] = {}
    for contributor, ats in times.items():
        merged: list[tuple[float, float]] = []
        for at in sorted(ats):
            lo = at - lock_window
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], at)
            else:
                merged.append((lo, at))
        spans[contributor] = merged
    return spans


_SPANS_PER_QUERY = 3000
VoidSums = dict[bytes, tuple[int, int, int]]  # contributor -> (flops, credits, tokens) voided


class Voids:
    """The credit invalidations void (by the rule of :func:`ledger.policy.voids`), summed per
    contributor from any time on.

    Hard invalidations are merged into disjoint spans per contributor, so each voided credit
    is counted once and summed inside SQLite (a day of a big contributor's credit can be voided
    at once); soft ones name single credits and are few.
    """

    def __init__(
        self, store: LedgerStore, lock_window: float, validators: Sequence[bytes] | None = None
    ) -> None:
        self.store = store
        self.validators = validators
        inv_sql, inv_params = _in("signer", validators)
        conn = store.connection
        hard = conn.execute(
            f"SELECT contributor, timestamp FROM invalidations WHERE severity = 'hard'{inv_sql}",
            inv_params,
        ).fetchall()
        self.spans = void_spans(hard, lock_window)
        cred_sql, cred_params = _in("c.signer", validators)
        soft = conn.execute(
            "SELECT DISTINCT c.signer, c.seq, c.contributor, c.timestamp, c.flops, "
            "c.generated_tokens FROM invalidations i CROSS JOIN credits c "
            "ON c.signer = i.credit_signer AND c.seq = i.credit_seq "
            "AND c.contributor = i.contributor "
            "AND c.timestamp <= i.timestamp AND c.timestamp > i.timestamp - ? "
            f"WHERE i.severity = 'soft' AND c.accepted{_in('i.signer', validators)[0]}{cred_sql}",
            [lock_window, *inv_params, *cred_params],
        ).fetchall()
        # A soft invalidation's credit inside a hard span is already counted there.
        self.soft = [row[2:] for row in soft if not self._in_span(row[2], row[3])]

    def _in_span(self, contributor: bytes, timestamp: float) -> bool:
        spans = self.spans.get(contributor, [])
        i = bisect_left(spans, (timestamp,))  # the first span whose lo >= timestamp
        return i > 0 and spans[i - 1][0] < timestamp <= spans[i - 1][1]

    def sums(self, since: float | None, contributors: Sequence[bytes] | None = None) -> VoidSums:
        """Voided (flops, credits, tokens) per contributor among credits at or after ``since``,
        optionally only for some contributors."""
        wanted = None if contributors is None else set(contributors)
        spans = [
            (contributor, lo, hi)
            for contributor, merged in self.spans.items()
            if wanted is None or contributor in wanted
            for lo, hi in merged
            if since is None or hi >= since
        ]
        out: dict[bytes, list[int]] = {}
        cred_sql, cred_params = _in("c.signer", self.validators)
        start = float("-inf") if since is None else float(since)
        # CROSS JOIN keeps the spans as the outer loop, each a range of the (contributor,
        # timestamp) index. (After an ANALYZE, which nodes never run, SQLite may put a Bloom
        # filter on credits here instead: a full scan, ~100x slower.)
        for first in range(0, len(spans), _SPANS_PER_QUERY):
            chunk = spans[first : first + _SPANS_PER_QUERY]
            values = ", ".join("(?, ?, ?)" for _ in chunk)
            rows = self.store.connection.execute(
                f"WITH spans(contributor, lo, hi) AS (VALUES {values}) "
                "SELECT s.contributor, SUM(c.flops >> 32), SUM(c.flops & 4294967295), COUNT(*), "
                "SUM(c.generated_tokens) FROM spans s CROSS JOIN credits c "
                "ON c.contributor = s.contributor AND c.timestamp > s.lo AND c.timestamp <= s.hi "
                f"WHERE c.accepted AND c.timestamp >= ?{cred_sql} GROUP BY s.contributor",
                [*(v for span in chunk for v in span), start, *cred_params],
            )
            for contributor, hi, lo, count, tokens in rows:
                _add(out, contributor, ((hi << 32) + lo, count, tokens))
        for contributor, timestamp, flops, tokens in self.soft:
            if timestamp >= start and (wanted is None or contributor in wanted):
                _add(out, contributor, (flops, 1, tokens))
        return {c: (v[0], v[1], v[2]) for c, v in out.items()}

    def count(self, since: float | None = None) -> int:
        """How many credits are voided (from ``since`` on)."""
        return sum(n for _, n, _ in self.sums(since).values())


def _add(sums: dict[bytes, list[int]], key: bytes, amounts: tuple[int, int, int]) -> None:
    row = sums.setdefault(key, [0, 0, 0])
    for i, value in enumerate(amounts):
        row[i] += value


def credited(raw: dict[bytes, list[int]], voided: VoidSums) -> Sums:
    """Exact [flops, accepted, rejected, tokens, voided credits, voided flops] per contributor
    after voiding, from :func:`window_sums` and :meth:`Voids.sums` of the same window."""
    out: Sums = {
        c: [(hi << 32) + lo, acc, rej, tokens, 0, 0]
        for c, (hi, lo, acc, rej, tokens) in raw.items()
    }
    for contributor, (flops, count, tokens) in voided.items():
        row = out.get(contributor)
        if row is not None:
            row[0] -= flops
            row[1] -= count
            row[3] -= tokens
            row[4] += count
            row[5] += flops
    return out


def leaderboard(
    store: LedgerStore,
    validators: set[bytes] | None = None,
    since: float | None = None,
    limit: int = 100,
    *,
    now: float | None = None,
    lock_window: float = DEFAULT_LOCK_WINDOW_S,
    details: bool = True,
    sums: dict[float | None, Sums] | None = None,
    voids: Voids | None = None,
) -> list[Standing]:
    """Contributors ranked by credited FLOPs, then key (which orders like the peer id), from
    entries of ``validators`` (all stored signers if None) with timestamps at or after ``since``.

    With ``details`` each row also gets its pending/final split (by ``lock_window`` at ``now``),
    its 24 h / 7 d / all-time FLOPs and its latest signed profile. Callers that rank several
    windows of one unchanged store may share ``voids`` and ``sums`` (every contributor's
    :func:`credited` sums by window start, a window that holds every credit keyed None): they
    are read and filled here.
    """
    if validators is not None and not validators:
        return []
    now = time.time() if now is None else now
    signers = None if validators is None else sorted(validators)
    (first,) = store.connection.execute("SELECT MIN(timestamp) FROM credits").fetchone()

    def effective(start: float | None) -> float | None:
        # A window that starts before the first credit holds them all: the same as all time,
        # which is then summed (and cached below) once.
        return None if start is None or first is None or start <= first else start

    since = effective(since)
    shared: dict[float | None, Sums] = {} if sums is None else sums
    voids = Voids(store, lock_window, signers) if voids is None else voids
    ranked = shared.get(since)
    if ranked is None:
        ranked = credited(window_sums(store, since, signers), voids.sums(since))
        shared[since] = ranked
    top = heapq.nsmallest(max(0, int(limit)), ranked.items(), key=lambda kv: (-kv[1][0], kv[0]))
    contributors = [c for c, _ in top]
    formulas = _formulas(store, contributors, signers)
    rows = [
        Standing(
            contributor=c,
            peer_id=peer_id_from_public_key(c),
            flops=flops,
            tasks_accepted=accepted,
            tasks_rejected=rejected,
            generated_tokens=tokens,
            formulas=formulas.get(c, ()),
            final_flops=flops,
            tasks_voided=n_voided,
        )
        for c, (flops, accepted, rejected, tokens, n_voided, _) in top
    ]
    if not details or not rows:
        return rows
    subset = contributors if len(contributors) <= _DETAIL_FILTER_MAX else None
    # Windows that start where the ranked one does (24 h ranked with a 24 h lock window) are
    # already summed, for every contributor.
    known: dict[float | None, Sums] = dict(shared)  # and sums of the shown rows only

    def flops_since(start: float | None) -> dict[bytes, int]:
        start = effective(start)
        found = known.get(start)
        if found is None:
            raw = window_sums(store, start, signers, subset)
            found = credited(raw, voids.sums(start, subset))
            known[start] = found
            if subset is None:
                shared[start] = found
        return {c: v[0] for c, v in found.items()}

    pending_start = now - lock_window if since is None else max(since, now - lock_window)
    pending = flops_since(pending_start)
    last_day = flops_since(now - 86400.0)
    last_week = flops_since(now - 7 * 86400.0)
    ever = flops_since(None)
    profiles = latest_profiles(store, contributors, signers)
    out = []
    for s in rows:
        name, team = profiles.get(s.contributor, ("", ""))
        p = pending.get(s.contributor, 0)
        out.append(
            replace(
                s,
                pending_flops=p,
                final_flops=s.flops - p,
                flops_24h=last_day.get(s.contributor, 0),
                flops_7d=last_week.get(s.contributor, 0),
                flops_all=ever.get(s.contributor, 0),
                display_name=name,
                team=team,
            )
        )
    return out


def _rows_for(
    store: LedgerStore,
    select: str,
    contributors: Sequence[bytes],
    signers: Sequence[bytes] | None,
    order: str = "",
) -> list[Any]:
    """``select`` (ending in a WHERE clause) for some contributors and signers."""
    subset = contributors if len(contributors) <= _DETAIL_FILTER_MAX else None
    con_sql, con_params = _in("contributor", subset)
    sig_sql, sig_params = _in("signer", signers)
    sql = f"{select}{con_sql}{sig_sql}{order}"
    return store.connection.execute(sql, [*con_params, *sig_params]).fetchall()


def _formulas(
    store: LedgerStore, contributors: Sequence[bytes], signers: Sequence[bytes] | None
) -> dict[bytes, tuple[str, ...]]:
    select = "SELECT DISTINCT contributor, flop_formula FROM credit_totals WHERE accepted > 0"
    found: dict[bytes, set[str]] = {}
    for contributor, formula in _rows_for(store, select, contributors, signers):
        found.setdefault(contributor, set()).add(formula)
    return {c: tuple(sorted(f)) for c, f in found.items()}


def latest_profiles(
    store: LedgerStore, contributors: Sequence[bytes], signers: Sequence[bytes] | None = None
) -> dict[bytes, tuple[str, str]]:
    """(display name, team) of each contributor's newest signed profile recorded by one of
    ``signers``; newest by the profile's own ``updated_at``, ties broken by its message id."""
    select = "SELECT contributor, display_name, team FROM profiles WHERE 1"
    order = " ORDER BY contributor, updated_at, profile_id"
    rows = _rows_for(store, select, contributors, signers, order)
    return {contributor: (name, team) for contributor, name, team in rows}


def flop_formulas(standings: Iterable[Standing]) -> list[str]:
    """The FLOP formula versions behind a set of rows (shown with every leaderboard)."""
    return sorted({f for s in standings for f in s.formulas})


# ---------------------------------------------------------------------------------------------
# Output

_SI = ["", "k", "M", "G", "T", "P", "E", "Z", "Y"]


def format_flops(flops: int) -> str:
    """A short human form: ``1.23 PFLOP``."""
    value, unit = float(flops), 0
    while value >= 1000 and unit < len(_SI) - 1:
        value, unit = value / 1000, unit + 1
    return f"{flops} FLOP" if unit == 0 else f"{value:.2f} {_SI[unit]}FLOP"


def _rate(s: Standing) -> str:
    rate = s.acceptance_rate
    return "-" if rate is None else f"{100 * rate:.1f}%"


def format_table(standings: list[Standing], *, footer: Sequence[str] = ()) -> str:
    """A plain-text table for the terminal, with the FLOP formula versions in the footer."""
    header = (
        "#",
        "peer id",
        "name",
        "team",
        "FLOPs",
        "pending",
        "final",
        "24 h",
        "7 d",
        "tokens",
        "tasks",
        "rejected",
        "accepted",
    )
    rows = [
        (
            str(rank),
            s.peer_id,
            s.display_name,
            s.team,
            format_flops(s.flops),
            format_flops(s.pending_flops),
            format_flops(s.final_flops),
            format_flops(s.flops_24h),
            format_flops(s.flops_7d),
            str(s.generated_tokens),
            str(s.tasks_accepted),
            str(s.tasks_rejected),
            _rate(s),
        )
        for rank, s in enumerate(standings, start=1)
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = {1, 2, 3}  # names read better left-aligned; numbers right-aligned

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    if not rows:
        out.append("(no credited contributors)")
    formulas = flop_formulas(standings)
    if formulas:
        out.append(f"FLOP formula: {', '.join(formulas)}")
    out.extend(footer)
    return "\n".join(out)


def to_json(standings: list[Standing]) -> list[dict[str, Any]]:
    """Plain dicts for JSON; FLOP counts are exact ints (and ``flops`` also a string, for
    JavaScript readers whose numbers lose integers above 2**53)."""
    return [
        {
            "rank": rank,
            "contributor": s.contributor.hex(),
            "peer_id": s.peer_id,
            "display_name": s.display_name,
            "team": s.team,
            "flops": s.flops,
            "flops_str": str(s.flops),
            "pending_flops": s.pending_flops,
            "final_flops": s.final_flops,
            "flops_24h": s.flops_24h,
            "flops_7d": s.flops_7d,
            "flops_all": s.flops_all,
            "flop_formulas": list(s.formulas),
            "tasks_accepted": s.tasks_accepted,
            "tasks_rejected": s.tasks_rejected,
            "tasks_voided": s.tasks_voided,
            "acceptance_rate": s.acceptance_rate,
            "generated_tokens": s.generated_tokens,
        }
        for rank, s in enumerate(standings, start=1)
    ]


CSV_COLUMNS = (
    "rank",
    "peer_id",
    "contributor",
    "display_name",
    "team",
    "flops",
    "pending_flops",
    "final_flops",
    "flops_24h",
    "flops_7d",
    "flops_all",
    "generated_tokens",
    "tasks_accepted",
    "tasks_rejected",
    "tasks_voided",
    "acceptance_rate",
    "flop_formulas",
)


def to_csv(standings: list[Standing]) -> str:
    """CSV with a header row; FLOPs as exact integers, formulas joined by ``;``."""
    return to_csv_rows(to_json(standings))


def csv_safe(value: Any) -> Any:
    """A contributor-chosen string that no spreadsheet reads as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv_rows(rows: list[dict[str, Any]]) -> str:
    """:func:`to_json` rows as CSV (see :func:`to_csv`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for json_row in rows:
        row = dict(json_row)
        row["flop_formulas"] = ";".join(row["flop_formulas"])
        rate = row["acceptance_rate"]
        row["acceptance_rate"] = "" if rate is None else f"{rate:.6f}"
        for key in ("display_name", "team"):
            # Names are chosen by contributors: never let one be read as a spreadsheet formula.
            row[key] = csv_safe(row[key])
        writer.writerow([row[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


_TEAM_SUMS = (
    "flops",
    "pending_flops",
    "final_flops",
    "flops_24h",
    "flops_7d",
    "generated_tokens",
    "tasks_accepted",
    "tasks_rejected",
    "tasks_voided",
)


def team_totals(rows: list[Standing]) -> list[dict[str, Any]]:
    """Per team (from the members' signed profiles): members and summed credit, ranked."""
    teams: dict[str, dict[str, Any]] = {}
    for s in rows:
        if not s.team:
            continue
        team = teams.setdefault(
            s.team, {"team": s.team, "members": 0, **dict.fromkeys(_TEAM_SUMS, 0)}
        )
        team["members"] += 1
        for key in _TEAM_SUMS:
            team[key] += getattr(s, key)
    ranked = sorted(teams.values(), key=lambda t: (-t["flops"], t["team"]))
    return [{"rank": i, **t} for i, t in enumerate(ranked, start=1)]
