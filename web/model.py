"""What the web pages show, read from one consistent snapshot of a verified ledger store.

Everything here is a query over entries that passed verification when they were stored (the
store holds nothing else) and over the store's per-contributor sums; the rules are those of
:mod:`flopnet.ledger.leaderboard` and :mod:`flopnet.ledger.policy`, and the browser's checker
(``static/verify.js``) applies the same rules to the raw entries. The ranking rows are
:func:`~flopnet.ledger.leaderboard.leaderboard`'s own, so the page and ``flopnet leaderboard
--json`` agree by construction.

A :class:`Snapshot` holds a read transaction open: every query of one page (or of a whole static
build) sees the same chains, even while a daemon keeps appending to the file.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

from flopnet.ledger.chain import decode_body, read_entry_unverified, signer_name
from flopnet.ledger.derived import DAY
from flopnet.ledger.kinds import HARD, InvalidationBody
from flopnet.ledger.leaderboard import (
    Standing,
    Sums,
    Voids,
    credited,
    latest_profiles,
    leaderboard,
    window_sums,
)
from flopnet.ledger.store import LedgerStore
from flopnet.protocol.messages import CreditBody

# Windows a ranking can be over, and their widths in seconds (None: all time).
WINDOWS: dict[str, float | None] = {
    "all": None,
    "30d": 30 * DAY,
    "7d": 7 * DAY,
    "24h": DAY,
}
RAC_HALF_LIFE_S = 7 * DAY  # BOINC's recent average credit: a 7-day half-life
ACTIVE_DAYS = (7, 50)  # Folding@home counts contributors active over 7 and 50 days
RANK_ROWS = 100  # contributors per ranking page
CREDIT_ROWS = 500  # credit entries per contributor page
VOIDINGS_SHOWN = 50  # most recent invalidations on the main page
NETWORK_CHART_DAYS = 30  # days of the network's credit chart (its sums read every contributor)
CHART_DAYS = 90  # days of a contributor's credit chart

Credited = Sums  # contributor -> [flops, accepted, rejected, tokens, voided, voided flops]


@dataclass(frozen=True)
class ChainHead:
    """One validator's chain as the snapshot holds it."""

    signer: bytes
    seq: int
    hash: bytes
    timestamp: float
    signed_seq: int | None  # the highest signed ledger_head gossiped for it, if any

    @property
    def peer_id(self) -> str:
        return signer_name(self.signer)


@dataclass(frozen=True)
class Totals:
    """Network totals over a window (credited = accepted and not voided)."""

    flops: int = 0
    pending_flops: int = 0
    voided_flops: int = 0
    tokens: int = 0
    accepted: int = 0
    rejected: int = 0
    voided: int = 0
    contributors: int = 0

    @property
    def final_flops(self) -> int:
        return self.flops - self.pending_flops


@dataclass(frozen=True)
class Voiding:
    """An invalidation entry and what it says."""

    signer: bytes
    seq: int
    timestamp: float
    contributor: bytes
    severity: str
    credit_signer: bytes
    credit_seq: int
    reason: str


@dataclass(frozen=True)
class CreditRow:
    """One credit entry of a contributor, with its state at the snapshot's time."""

    signer: bytes
    seq: int
    hash: bytes
    timestamp: float
    task_id: str
    sample_index: int
    flops: int
    tokens: int
    accepted: bool
    state: str  # final, pending, void or rejected
    note: str  # the invalidation that voided it, or the validator's reasons for a rejection


@dataclass(frozen=True)
class Board:
    """A ranking page: one window, rows ``offset`` to ``offset + len(rows)``."""

    window: str
    offset: int
    rows: list[Standing]
    voided_flops: dict[bytes, int]
    flops_30d: dict[bytes, int]
    rac: dict[bytes, int]
    ranked: int  # contributors with any credit entry in the window
    totals: Totals
    active: dict[int, int]  # days -> contributors with credited work in them
    flops_24h: int
    flops_7d: int
    daily: list[tuple[int, int]]  # (UTC day, credited FLOPs) of the network
    voidings: list[Voiding]


@dataclass(frozen=True)
class Contributor:
    """A contributor's page: totals, chart and one page of credit entries."""

    contributor: bytes
    display_name: str
    team: str
    windows: dict[str, list[int]]  # window -> credited sums (see Credited)
    pending_flops: int
    rac: int
    daily: list[tuple[int, int]]
    credits: list[CreditRow]
    credit_count: int
    page: int

    @property
    def peer_id(self) -> str:
        return signer_name(self.contributor)


@dataclass
class Snapshot:
    """One store, its network and a time, read in one transaction (see :meth:`open`)."""

    store: LedgerStore
    network_id: str
    validators: list[bytes]
    lock_window: float
    as_of: float
    manifest: bytes
    chains: list[ChainHead] = field(default_factory=list)
    _voids: Voids | None = None
    _credited: dict[float | None, Credited] = field(default_factory=dict)
    _first: float | None = None
    _voided_rows: list[tuple[bytes, int, bytes, float, int, int]] | None = None
    _latest: dict[bytes, float | None] | None = None

    @classmethod
    def open(
        cls,
        store: LedgerStore,
        network_id: str,
        validators: Sequence[bytes],
        lock_window: float,
        as_of: float,
        manifest: bytes,
    ) -> Snapshot:
        """Begin a read transaction on ``store`` (end it with :meth:`close`) and read heads."""
        conn = store.connection
        _ensure_exp(conn)
        conn.execute("BEGIN")
        snap = cls(store, network_id, sorted(validators), lock_window, as_of, manifest)
        signed = dict(conn.execute("SELECT signer, seq FROM signed_heads").fetchall())
        for signer in snap.validators:
            row = conn.execute(
                "SELECT seq, hash, timestamp FROM entries WHERE signer = ? "
                "ORDER BY seq DESC LIMIT 1",
                (signer,),
            ).fetchone()
            if row is not None:
                snap.chains.append(
                    ChainHead(signer, row[0], bytes(row[1]), row[2], signed.get(signer))
                )
        (snap._first,) = conn.execute("SELECT MIN(timestamp) FROM credits").fetchone()
        return snap

    def close(self) -> None:
        """End the read transaction."""
        if self.store.connection.in_transaction:
            self.store.connection.execute("ROLLBACK")

    # -- sums ----------------------------------------------------------------------------------

    @property
    def signers(self) -> list[bytes]:
        return [c.signer for c in self.chains]

    @property
    def voids(self) -> Voids:
        if self._voids is None:
            self._voids = Voids(self.store, self.lock_window, self.signers)
        return self._voids

    def start(self, window: str) -> float | None:
        """The first credit time a window holds (None: all time)."""
        width = WINDOWS[window]
        return None if width is None else self.as_of - width

    def _effective(self, since: float | None) -> float | None:
        # A window that starts before the first credit is all time (one cached sum).
        return None if since is None or self._first is None or since <= self._first else since

    def credited(
        self, since: float | None, contributors: Sequence[bytes] | None = None
    ) -> Credited:
        """Per contributor [flops, accepted, rejected, tokens, voided, voided flops] of credits
        at or after ``since``, voided credit taken out; all contributors are cached."""
        since = self._effective(since)
        if contributors is None and since in self._credited:
            return self._credited[since]
        if not self.chains:
            return {}
        raw = window_sums(self.store, since, self.signers, contributors)
        out = credited(raw, self.voids.sums(since, contributors))
        if contributors is None:
            self._credited[since] = out
        return out

    def totals(self, since: float | None) -> Totals:
        """Network totals of credits at or after ``since``."""
        rows = self.credited(since).values()
        pending_from = self.as_of - self.lock_window
        pending = self.credited(pending_from if since is None else max(since, pending_from))
        return Totals(
            flops=sum(r[0] for r in rows),
            pending_flops=sum(r[0] for r in pending.values()),
            voided_flops=sum(r[5] for r in rows),
            tokens=sum(r[3] for r in rows),
            accepted=sum(r[1] for r in rows),
            rejected=sum(r[2] for r in rows),
            voided=sum(r[4] for r in rows),
            contributors=len(rows),
        )

    def active(self, days: int) -> int:
        """Contributors with credited (accepted, not voided) work in the last ``days`` days.

        From each contributor's latest accepted credit (one index seek each), not from window
        sums, which would read every day of the window; only contributors with voided credit
        are looked at further."""
        start = self.as_of - days * DAY
        voided = {(r[0], r[1]) for r in self.voided_rows()}
        suspects = {r[2] for r in self.voided_rows()}
        n = 0
        for contributor, latest in self._latest_accepted().items():
            if latest is None or latest < start:
                continue
            if contributor not in suspects or self._credited_since(contributor, start, voided):
                n += 1
        return n

    def _latest_accepted(self) -> dict[bytes, float | None]:
        if self._latest is None:
            sig = _marks(len(self.signers))
            rows = self.store.connection.execute(
                "SELECT t.contributor, (SELECT c.timestamp FROM credits c INDEXED BY "
                "credits_contributor WHERE c.contributor = t.contributor AND c.accepted AND "
                f"c.signer IN ({sig}) ORDER BY c.timestamp DESC LIMIT 1) FROM (SELECT DISTINCT "
                f"contributor FROM credit_totals WHERE signer IN ({sig})) t",
                [*self.signers, *self.signers],
            )
            self._latest = {bytes(c): t for c, t in rows} if self.chains else {}
        return self._latest

    def _credited_since(
        self, contributor: bytes, start: float, voided: set[tuple[bytes, int]]
    ) -> bool:
        rows = self.store.connection.execute(
            "SELECT signer, seq FROM credits INDEXED BY credits_contributor WHERE contributor = ? "
            f"AND accepted AND timestamp >= ? AND signer IN ({_marks(len(self.signers))}) "
            "ORDER BY timestamp DESC",
            [contributor, start, *self.signers],
        )
        return any((bytes(s), q) not in voided for s, q in rows)

    # -- voided credits ------------------------------------------------------------------------

    def voided_rows(self) -> list[tuple[bytes, int, bytes, float, int, int]]:
        """(signer, seq, contributor, timestamp, flops, tokens) of every voided credit."""
        if self._voided_rows is not None:
            return self._voided_rows
        conn, sig = self.store.connection, _marks(len(self.signers))
        out: dict[tuple[bytes, int], tuple[bytes, int, bytes, float, int, int]] = {}
        for contributor, spans in self.voids.spans.items():
            for lo, hi in spans:
                for row in conn.execute(
                    "SELECT signer, seq, contributor, timestamp, flops, generated_tokens "
                    "FROM credits INDEXED BY credits_contributor WHERE contributor = ? "
                    f"AND timestamp > ? AND timestamp <= ? AND accepted AND signer IN ({sig})",
                    [contributor, lo, hi, *self.signers],
                ):
                    out[(row[0], row[1])] = tuple(row)  # type: ignore[assignment]
        for row in conn.execute(
            "SELECT c.signer, c.seq, c.contributor, c.timestamp, c.flops, c.generated_tokens "
            "FROM invalidations i CROSS JOIN credits c ON c.signer = i.credit_signer "
            "AND c.seq = i.credit_seq AND c.contributor = i.contributor "
            "AND c.timestamp <= i.timestamp AND c.timestamp > i.timestamp - ? "
            f"WHERE i.severity = 'soft' AND c.accepted AND i.signer IN ({sig}) "
            f"AND c.signer IN ({sig})",
            [self.lock_window, *self.signers, *self.signers],
        ):
            out[(row[0], row[1])] = tuple(row)  # type: ignore[assignment]
        self._voided_rows = sorted(out.values(), key=lambda r: (r[0], r[1]))
        return self._voided_rows

    def rac(self, contributors: Sequence[bytes]) -> dict[bytes, int]:
        """Recent average credit (FLOPs per day, 7-day half-life) of each contributor: every
        credited FLOP weighs ``2 ** -(age / half-life)``, times ln 2 / half-life in days, so a
        steady rate of R per day reads R. Rounded to whole FLOPs per day."""
        if not contributors or not self.chains:
            return {}
        k = math.log(2) / RAC_HALF_LIFE_S
        scale = math.log(2) / (RAC_HALF_LIFE_S / DAY)
        sums: dict[bytes, float] = {}
        for first in range(0, len(contributors), 500):
            part = list(contributors[first : first + 500])
            rows = self.store.connection.execute(
                "SELECT contributor, SUM(flops * exp((timestamp - ?) * ?)) FROM credits "
                f"INDEXED BY credits_contributor WHERE contributor IN ({_marks(len(part))}) "
                f"AND accepted AND signer IN ({_marks(len(self.signers))}) GROUP BY contributor",
                [self.as_of, k, *part, *self.signers],
            )
            sums.update((bytes(c), float(s)) for c, s in rows)
        wanted = set(contributors)
        for _signer, _seq, c, t, flops, _tokens in self.voided_rows():
            if c in wanted:
                sums[c] = sums.get(c, 0.0) - flops * math.exp((t - self.as_of) * k)
        return {c: max(0, math.floor(sums.get(c, 0.0) * scale + 0.5)) for c in contributors}

    def daily(
        self, contributor: bytes | None = None, days: int = CHART_DAYS
    ) -> list[tuple[int, int]]:
        """Credited FLOPs per UTC day for the last ``days`` days up to the snapshot's day, of
        the network or of one contributor (voided credit taken out)."""
        today = int(self.as_of // DAY)
        first = today - days + 1
        if not self.chains:
            return [(d, 0) for d in range(first, today + 1)]
        who = "" if contributor is None else " AND contributor = ?"
        rows = self.store.connection.execute(
            "SELECT bucket, SUM(hi), SUM(lo) FROM credit_days WHERE bucket >= ? AND bucket <= ?"
            f" AND signer IN ({_marks(len(self.signers))}){who} GROUP BY bucket",
            [first, today, *self.signers, *([] if contributor is None else [contributor])],
        )
        per_day = {int(b): (hi << 32) + lo for b, hi, lo in rows}
        for _signer, _seq, c, t, flops, _tokens in self.voided_rows():
            d = int(t // DAY)
            if first <= d <= today and (contributor is None or c == contributor):
                per_day[d] = per_day.get(d, 0) - flops
        return [(d, per_day.get(d, 0)) for d in range(first, today + 1)]

    # -- invalidations -------------------------------------------------------------------------

    def voidings(
        self, contributor: bytes | None = None, limit: int | None = VOIDINGS_SHOWN
    ) -> list[Voiding]:
        """Invalidation entries, newest first (then by signer and seq), with their reasons."""
        if not self.chains:
            return []
        who = "" if contributor is None else " AND i.contributor = ?"
        rows = self.store.connection.execute(
            "SELECT i.signer, i.seq, i.timestamp, e.envelope FROM invalidations i "
            "CROSS JOIN entries e "
            f"ON e.signer = i.signer AND e.seq = i.seq WHERE i.signer IN "
            f"({_marks(len(self.signers))}){who} ORDER BY i.timestamp DESC, i.signer, i.seq DESC"
            + ("" if limit is None else f" LIMIT {int(limit)}"),
            [*self.signers, *([] if contributor is None else [contributor])],
        ).fetchall()
        out = []
        for signer, seq, timestamp, envelope in rows:
            body = decode_body("invalidation", read_entry_unverified(envelope).entry.body)
            assert isinstance(body, InvalidationBody)
            out.append(
                Voiding(
                    bytes(signer),
                    seq,
                    timestamp,
                    body.contributor,
                    body.severity,
                    body.credit_signer,
                    body.credit_seq,
                    body.reason,
                )
            )
        return out

    # -- pages ---------------------------------------------------------------------------------

    def board(self, window: str, offset: int = 0, limit: int = RANK_ROWS) -> Board:
        """A ranking page of ``window`` (see :data:`WINDOWS`)."""
        since = self.start(window)
        rows = (
            leaderboard(
                self.store,
                set(self.signers),
                since=since,
                limit=offset + limit,
                now=self.as_of,
                lock_window=self.lock_window,
                sums=self._credited,
                voids=self.voids,
            )[offset:]
            if self.chains
            else []
        )
        shown = [s.contributor for s in rows]
        window_sums_ = self.credited(since, shown if len(shown) < 500 else None)
        month = self.credited(self.start("30d"), shown if len(shown) < 500 else None)
        return Board(
            window=window,
            offset=offset,
            rows=rows,
            voided_flops={c: window_sums_.get(c, [0] * 6)[5] for c in shown},
            flops_30d={c: month.get(c, [0] * 6)[0] for c in shown},
            rac=self.rac(shown),
            ranked=len(self.credited(since)),
            totals=self.totals(since),
            active={d: self.active(d) for d in ACTIVE_DAYS},
            flops_24h=self.totals(self.start("24h")).flops,
            flops_7d=self.totals(self.start("7d")).flops,
            daily=self.daily(days=NETWORK_CHART_DAYS),
            voidings=self.voidings(),
        )

    def contributors(self) -> list[bytes]:
        """Every contributor with a credit entry on the validators' chains, by key."""
        if not self.chains:
            return []
        rows = self.store.connection.execute(
            "SELECT DISTINCT contributor FROM credit_totals WHERE signer IN "
            f"({_marks(len(self.signers))}) ORDER BY contributor",
            self.signers,
        )
        return [bytes(c) for (c,) in rows]

    def contributor(self, who: bytes, page: int = 1, *, subset: bool = True) -> Contributor:
        """A contributor's page (``page`` counts from 1); ``subset=False`` reuses the sums of
        every contributor, faster when building all pages."""
        only = [who] if subset else None
        windows = {w: self.credited(self.start(w), only).get(who, [0] * 6) for w in WINDOWS}
        pending_from = self.as_of - self.lock_window
        pending = self.credited(pending_from, only).get(who, [0] * 6)[0]
        name, team = latest_profiles(self.store, [who], self.signers).get(who, ("", ""))
        count, credits = self._credit_rows(who, page)
        return Contributor(
            contributor=who,
            display_name=name,
            team=team,
            windows=windows,
            pending_flops=pending,
            rac=self.rac([who])[who],
            daily=self.daily(who),
            credits=credits,
            credit_count=count,
            page=page,
        )

    def _credit_rows(self, who: bytes, page: int) -> tuple[int, list[CreditRow]]:
        conn, sig = self.store.connection, _marks(len(self.signers))
        if not self.chains:
            return 0, []
        (count,) = conn.execute(
            f"SELECT COUNT(*) FROM credits WHERE contributor = ? AND signer IN ({sig})",
            [who, *self.signers],
        ).fetchone()
        rows = conn.execute(
            "SELECT c.signer, c.seq, e.hash, c.timestamp, c.task_id, c.sample_index, c.flops, "
            "c.generated_tokens, c.accepted, e.envelope FROM credits c JOIN entries e "
            f"ON e.signer = c.signer AND e.seq = c.seq WHERE c.contributor = ? AND c.signer IN "
            f"({sig}) ORDER BY c.timestamp DESC, c.signer, c.seq DESC LIMIT ? OFFSET ?",
            [who, *self.signers, CREDIT_ROWS, (page - 1) * CREDIT_ROWS],
        ).fetchall()
        voided = {(r[0], r[1]) for r in self.voided_rows() if r[2] == who}
        voidings = sorted(self.voidings(who, None), key=lambda v: (v.timestamp, v.signer, v.seq))
        out = []
        for signer, seq, h, t, task, sample, flops, tokens, accepted, envelope in rows:
            key = (bytes(signer), seq)
            if not accepted:
                body = decode_body("credit", read_entry_unverified(envelope).entry.body)
                assert isinstance(body, CreditBody)
                state, note = "rejected", "; ".join(body.reasons)
            elif key in voided:
                state, note = "void", _void_note(key, t, voidings, self.lock_window)
            elif t >= self.as_of - self.lock_window:
                state, note = "pending", ""
            else:
                state, note = "final", ""
            out.append(
                CreditRow(
                    key[0],
                    seq,
                    bytes(h),
                    t,
                    task,
                    sample,
                    flops,
                    tokens,
                    bool(accepted),
                    state,
                    note,
                )
            )
        return int(count), out

    def formulas(self) -> list[str]:
        """The FLOP formula versions of the credited entries (every contributor)."""
        if not self.chains:
            return []
        rows = self.store.connection.execute(
            "SELECT DISTINCT flop_formula FROM credit_totals WHERE accepted > 0 AND signer IN "
            f"({_marks(len(self.signers))}) ORDER BY 1",
            self.signers,
        )
        return [f for (f,) in rows]

    def all_standings(self) -> list[Standing]:
        """Every contributor's all-time standing (the team table and the dumps)."""
        if not self.chains:
            return []
        return leaderboard(
            self.store,
            set(self.signers),
            limit=10**9,
            now=self.as_of,
            lock_window=self.lock_window,
        )


def _void_note(
    key: tuple[bytes, int], t: float, voidings: list[Voiding], lock_window: float
) -> str:
    """The first invalidation (by time) that voids a credit, named with its reason."""
    for v in voidings:
        if not v.timestamp - lock_window < t <= v.timestamp:
            continue
        if v.severity == HARD or (v.credit_signer, v.credit_seq) == key:
            return f"voided by {signer_name(v.signer)} seq {v.seq}: {v.reason}"
    return "voided"


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _ensure_exp(conn: sqlite3.Connection) -> None:
    """SQLite's ``exp`` (its math functions are a build option): Python's where it is missing."""
    try:
        conn.execute("SELECT exp(0)").fetchone()
    except sqlite3.OperationalError:
        conn.create_function("exp", 1, math.exp, deterministic=True)
