"""HTML pages from the page model: pure functions, every contributor-chosen string escaped.

Each number a page shows is a *claim*: an element with ``data-k`` (what it is), ``data-v`` (the
exact value) and ``data-f`` (how it is written), inside rows that say whose it is (``data-c``,
``data-sig``/``data-seq``, ``data-team``). The browser's checker recomputes every claim from the
signed entries and reports the page as tampered when one differs, or when its text is not the
value written by the same rules (:mod:`flopnet.web.units`). Pages load no external resource; the
Content-Security-Policy says so to the browser too.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flopnet.ledger.chain import signer_name
from flopnet.ledger.flops import FORMULA_TEXT
from flopnet.web import paths, units
from flopnet.web.chart import daily_chart
from flopnet.web.model import (
    ACTIVE_DAYS,
    CREDIT_ROWS,
    RAC_HALF_LIFE_S,
    RANK_ROWS,
    WINDOWS,
    Board,
    ChainHead,
    Contributor,
    Voiding,
)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)
WINDOW_LABELS = {"all": "all time", "30d": "30 days", "7d": "7 days", "24h": "24 hours"}


@dataclass(frozen=True)
class Header:
    """What every page states about the ledger it was built from."""

    network_id: str
    as_of: float
    lock_window: float
    chains: list[ChainHead]
    formulas: list[str]


NUMERIC_HEADS = {"#", "entries", "head seq", "FLOPs", "pending", "final", "voided", "tasks"}
NUMERIC_HEADS |= {"rejected", "RAC", "members", "24 h", "7 d", "tokens", "voided tasks"}


def thead(*labels: str) -> str:
    """A table head; numeric columns are marked for right alignment."""
    cells = "".join(
        f'<th class="n">{esc(label)}</th>' if label in NUMERIC_HEADS else f"<th>{esc(label)}</th>"
        for label in labels
    )
    return f"<thead><tr>{cells}</tr></thead>"


def esc(text: object) -> str:
    """Text for HTML content or a quoted attribute."""
    return html.escape(str(text), quote=True)


def claim(tag: str, key: str, value: Any, fmt: str, attrs: str = "") -> str:
    """An element showing ``value`` written as ``fmt``, marked for the browser's checker."""
    text = units.FORMATS[fmt](value)
    return f'<{tag} data-k="{key}" data-v="{esc(value)}" data-f="{fmt}"{attrs}>{esc(text)}</{tag}>'


def text_claim(tag: str, key: str, text: str, inner: str | None = None) -> str:
    """An element whose text is the claim (a name, a team, a reason)."""
    body = esc(text) if inner is None else inner
    return f'<{tag} data-k="{key}" data-f="text">{body}</{tag}>'


def hash_claim(key: str, digest: bytes) -> str:
    return f'<td data-k="{key}" data-v="{digest.hex()}" data-f="hash">{digest[:6].hex()}</td>'


def shell(
    header: Header, title: str, root: str, kind: str, main: str, attrs: dict[str, str]
) -> str:
    """The page around ``main``: head, navigation, the checker's status line, the ledger."""
    data = "".join(f' data-{k}="{esc(v)}"' for k, v in attrs.items())
    nav = " ".join(f'<a href="{root}{paths.board(w)}">{WINDOW_LABELS[w]}</a>' for w in WINDOWS)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{esc(title)} · flopnet</title>"
        f'<link rel="stylesheet" href="{root}assets/style.css">'
        f'<script defer src="{root}assets/verify.js"></script>'
        "</head>"
        f'<body data-page="{kind}" data-network="{esc(header.network_id)}" '
        f'data-as-of="{header.as_of!r}" data-lock="{header.lock_window!r}" '
        f'data-chunk="{paths.CHUNK}" data-root="{root}"{data}>'
        f'<header><p class="brand"><a href="{root}index.html">flopnet</a> · '
        f"<code>{esc(header.network_id)}</code></p>"
        f'<nav>Ranking: {nav} · <a href="{root}{paths.TEAMS}">teams</a></nav>'
        '<p id="verify" class="verify unchecked" role="status">Not checked: this page checks '
        "every signature, hash link and number itself in your browser, with JavaScript on.</p>"
        "</header>"
        f"<main><h1>{esc(title)}</h1>"
        f'<p class="asof">As of {esc(units.utc(header.as_of))}. Credit is pending for '
        f"{esc(_duration(header.lock_window))} after it is granted, then final.</p>"
        f"{main}</main>"
        f"<footer>{ledger_section(header, root)}</footer>"
        "</body></html>\n"
    )


def _duration(seconds: float) -> str:
    if seconds % 86400 == 0 and seconds >= 86400:
        return f"{int(seconds // 86400)} d"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    return f"{seconds:g} s"


def ledger_section(header: Header, root: str) -> str:
    """Each validator's chain head, the manifest, the dumps, and what "verified" means."""
    rows = "".join(
        f'<tr data-sig="{c.signer.hex()}">'
        + text_claim("td", "h.peer", c.peer_id)
        + claim("td", "h.entries", c.seq + 1, "int")
        + claim("td", "h.seq", c.seq, "int")
        + hash_claim("h.hash", c.hash)
        + claim("td", "h.time", c.timestamp, "time")
        + "</tr>"
        for c in header.chains
    )
    behind = "".join(
        f'<p class="warn">{esc(c.peer_id)} has signed a head at seq {c.signed_seq}: this copy '
        f"of its chain ends at seq {c.seq} and lacks the entries after it.</p>"
        for c in header.chains
        if c.signed_seq is not None and c.signed_seq > c.seq
    )
    dumps = " · ".join(f'<a href="{root}{d}">{esc(d.split("/")[1])}</a>' for d in paths.DUMPS)
    return (
        '<section id="ledger"><h2>The ledger behind these numbers</h2>'
        '<table data-list="chains">'
        + thead("validator", "entries", "head seq", "head hash", "head time")
        + f"<tbody>{rows}</tbody></table>{behind}"
        f'<p>Network manifest (signed by the founder): <a href="{root}{paths.MANIFEST}">'
        f"manifest.bin</a>. Raw signed entries: <code>ledger/&lt;validator key&gt;/&lt;first "
        f"seq&gt;.bin</code>, {paths.CHUNK} per file, each a 4-byte big-endian length and the "
        f"entry's envelope. Daily statistics: {dumps}.</p>"
        '<p class="fine">"Verified" means: the manifest is signed by the key the network id '
        "names, every entry up to the heads above is signed by a validator the manifest lists "
        "and names the hash of the entry before it, and every number on the page is what those "
        "entries give. Check that the network id is the one you mean; a copy can still be "
        "older than the network (compare the heads with another node).</p></section>"
    )


# ---------------------------------------------------------------------------------------------
# Ranking pages


def _name_cell(contributor: bytes, name: str, root: str) -> str:
    peer = signer_name(contributor)
    shown = name or peer
    link = f'<a href="{root}{paths.contributor(peer)}">{esc(shown)}</a>'
    return text_claim("td", "name", shown, link)


def board_page(header: Header, board: Board) -> str:
    """A ranking page: totals, the network's chart, the ranking, recent voided credit."""
    root = ""
    window, t = board.window, board.totals
    label = WINDOW_LABELS[window]
    cards = [
        ("credited FLOPs", claim("dd", "n.flops", t.flops, "flop")),
        ("pending", claim("dd", "n.pending", t.pending_flops, "flop")),
        ("final", claim("dd", "n.final", t.final_flops, "flop")),
        ("voided", claim("dd", "n.voided_flops", t.voided_flops, "flop")),
        ("generated tokens", claim("dd", "n.tokens", t.tokens, "int")),
        ("tasks credited", claim("dd", "n.accepted", t.accepted, "int")),
        ("tasks rejected", claim("dd", "n.rejected", t.rejected, "int")),
        ("credits voided", claim("dd", "n.voided", t.voided, "int")),
        ("contributors", claim("dd", "n.contributors", t.contributors, "int")),
    ]
    network = [
        *(
            (f"active over {d} days", claim("dd", f"n.active{d}", board.active[d], "int"))
            for d in ACTIVE_DAYS
        ),
        ("FLOPs in the last 24 h", claim("dd", "n.flops24h", board.flops_24h, "flop")),
        ("FLOPs per day (7-day mean)", claim("dd", "n.perday7", board.flops_7d // 7, "rate")),
    ]
    rows = []
    for i, s in enumerate(board.rows, start=board.offset + 1):
        c = s.contributor
        rows.append(
            f'<tr data-c="{c.hex()}">'
            + claim("td", "rank", i, "int")
            + _name_cell(c, s.display_name, root)
            + text_claim("td", "team", s.team)
            + claim("td", "flops", s.flops, "flop")
            + claim("td", "pending", s.pending_flops, "flop")
            + claim("td", "final", s.final_flops, "flop")
            + claim("td", "voided_flops", board.voided_flops.get(c, 0), "flop")
            + claim("td", "accepted", s.tasks_accepted, "int")
            + claim("td", "rejected", s.tasks_rejected, "int")
            + claim("td", "rac", board.rac.get(c, 0), "rate")
            + "</tr>"
        )
    page = board.offset // RANK_ROWS + 1
    pager = _pager(page, board.ranked, RANK_ROWS, lambda n: paths.board(window, n), root)
    main = (
        f'<section><h2>Network, {esc(label)}</h2><dl class="cards">'
        + "".join(f"<div><dt>{k}</dt>{v}</div>" for k, v in cards)
        + '</dl><dl class="cards">'
        + "".join(f"<div><dt>{k}</dt>{v}</div>" for k, v in network)
        + "</dl>"
        + daily_chart(board.daily, "credited FLOPs per day, network")
        + "</section>"
        f"<section><h2>Contributors by credited FLOPs, {esc(label)}</h2>"
        f'<table data-list="ranking" data-offset="{board.offset}" data-limit="{RANK_ROWS}" '
        f'data-total="{board.ranked}">'
        + thead(
            "#",
            "contributor",
            "team",
            "FLOPs",
            "pending",
            "final",
            "voided",
            "tasks",
            "rejected",
            "RAC",
        )
        + "<tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + pager
        + "</section>"
        + voidings_section(board.voidings, root)
        + formula_section(header)
    )
    title = f"Leaderboard, {label}"
    attrs = {"window": window, "offset": str(board.offset)}
    return shell(header, title, root, "board", main, attrs)


def _pager(page: int, total: int, per_page: int, path: Any, root: str) -> str:
    pages = max(1, -(-total // per_page))
    if pages == 1:
        return ""
    links = []
    if page > 1:
        links.append(f'<a href="{root}{path(page - 1)}">previous</a>')
    links.append(f"page {page} of {pages}")
    if page < pages:
        links.append(f'<a href="{root}{path(page + 1)}">next</a>')
    return f'<p class="pager">{" · ".join(links)}</p>'


def _peer_link(key: str, contributor: bytes, root: str) -> str:
    peer = signer_name(contributor)
    return text_claim("td", key, peer, f'<a href="{root}{paths.contributor(peer)}">{esc(peer)}</a>')


def voidings_section(voidings: Iterable[Voiding], root: str) -> str:
    rows = "".join(
        f'<tr data-sig="{v.signer.hex()}" data-seq="{v.seq}">'
        + claim("td", "v.time", v.timestamp, "time")
        + _peer_link("v.contributor", v.contributor, root)
        + text_claim("td", "v.severity", v.severity)
        + text_claim("td", "v.reason", v.reason)
        + text_claim("td", "v.entry", f"{signer_name(v.signer)} seq {v.seq}")
        + "</tr>"
        for v in voidings
    )
    return (
        "<section><h2>Voided credit</h2><p>A failed audit voids the contributor's pending "
        "credit (<em>hard</em>) or one credit (<em>soft</em>); final credit is never voided.</p>"
        '<table data-list="voidings">'
        + thead("time", "contributor", "severity", "reason", "entry")
        + f"<tbody>{rows}</tbody></table>"
        + ("" if rows else '<p class="fine">None.</p>')
        + "</section>"
    )


def formula_section(header: Header) -> str:
    formulas = "".join(
        f"<dt><code>{esc(f)}</code></dt><dd>{esc(FORMULA_TEXT.get(f, 'not described here'))}</dd>"
        for f in header.formulas
    )
    half_life = int(RAC_HALF_LIFE_S // 86400)
    return (
        '<section id="formula"><h2>How credit is computed</h2>'
        "<p>Each credit is the FLOPs the validator computed itself from the model and the token "
        "counts it checked, by the formula version named in the entry:</p>"
        f'<dl class="formulas">{formulas or "<dd>no credit yet</dd>"}</dl>'
        f"<p><strong>RAC</strong> (recent average credit, BOINC's measure) is in FLOPs per day: "
        f"each credited FLOP counts with weight 2<sup>-age / {half_life} d</sup>, times "
        f"ln 2 / {half_life}, so a steady R FLOPs a day reads R. <strong>Active</strong> "
        "contributors have credited work in the window (Folding@home's 7 and 50 days). Rejected "
        "work is recorded with 0 FLOPs.</p></section>"
    )


# ---------------------------------------------------------------------------------------------
# Contributor pages


def contributor_page(header: Header, c: Contributor) -> str:
    """A contributor's totals, credit chart and credit entries."""
    root = "../"
    peer = c.peer_id
    rows = []
    for w in WINDOWS:
        s = c.windows[w]
        rows.append(
            f'<tr data-w="{w}"><th>{WINDOW_LABELS[w]}</th>'
            + claim("td", "c.flops", s[0], "flop")
            + claim("td", "c.voided_flops", s[5], "flop")
            + claim("td", "c.accepted", s[1], "int")
            + claim("td", "c.rejected", s[2], "int")
            + claim("td", "c.voided", s[4], "int")
            + claim("td", "c.tokens", s[3], "int")
            + "</tr>"
        )
    credits = "".join(
        f'<tr data-sig="{r.signer.hex()}" data-seq="{r.seq}" class="{r.state}">'
        + claim("td", "e.time", r.timestamp, "time")
        + text_claim("td", "e.entry", f"{signer_name(r.signer)} seq {r.seq}")
        + hash_claim("e.hash", r.hash)
        + text_claim("td", "e.task", f"{r.task_id} #{r.sample_index}")
        + claim("td", "e.flops", r.flops, "flop")
        + claim("td", "e.tokens", r.tokens, "int")
        + text_claim("td", "e.state", r.state)
        + text_claim("td", "e.note", r.note)
        + "</tr>"
        for r in c.credits
    )
    pager = _pager(
        c.page, c.credit_count, CREDIT_ROWS, lambda n: paths.contributor(peer, n)[2:], ""
    )
    all_time = c.windows["all"]
    main = (
        '<section><dl class="cards">'
        f'<div><dt>peer id</dt><dd class="mono">{esc(peer)}</dd></div>'
        f"<div><dt>name</dt>{text_claim('dd', 'c.name', c.display_name)}</div>"
        f"<div><dt>team</dt>{text_claim('dd', 'c.team', c.team)}</div>"
        f"<div><dt>credited FLOPs</dt>{claim('dd', 'c.total', all_time[0], 'flop')}</div>"
        f"<div><dt>pending</dt>{claim('dd', 'c.pending', c.pending_flops, 'flop')}</div>"
        f"<div><dt>final</dt>{claim('dd', 'c.final', all_time[0] - c.pending_flops, 'flop')}"
        "</div>"
        f"<div><dt>RAC</dt>{claim('dd', 'c.rac', c.rac, 'rate')}</div>"
        f"<div><dt>credit entries</dt>{claim('dd', 'c.credits', c.credit_count, 'int')}</div>"
        "</dl>"
        + daily_chart(c.daily, "credited FLOPs per day")
        + "</section><section><h2>By window</h2>"
        '<table data-list="windows">'
        + thead("window", "FLOPs", "voided", "tasks", "rejected", "voided tasks", "tokens")
        + ""
        f"<tbody>{''.join(rows)}</tbody></table></section>"
        "<section><h2>Every credit entry</h2><p>Newest first; each names the validator's "
        "chain, its sequence number and the hash of the signed entry.</p>"
        f'<table data-list="credits" data-offset="{(c.page - 1) * CREDIT_ROWS}" '
        f'data-limit="{CREDIT_ROWS}" data-total="{c.credit_count}">'
        + thead("time", "entry", "hash", "task", "FLOPs", "tokens", "state", "note")
        + f"<tbody>{credits}</tbody></table>{pager}</section>"
    )
    title = c.display_name or peer
    attrs = {"c": c.contributor.hex(), "credit-page": str(c.page)}
    return shell(header, f"Contributor {title}", root, "contributor", main, attrs)


# ---------------------------------------------------------------------------------------------
# Teams


def teams_page(header: Header, teams: list[dict[str, Any]]) -> str:
    """Teams (from their members' signed profiles) ranked by credited FLOPs."""
    rows = "".join(
        f'<tr data-team="{esc(t["team"])}">'
        + claim("td", "t.rank", t["rank"], "int")
        + text_claim("td", "t.team", t["team"])
        + claim("td", "t.members", t["members"], "int")
        + claim("td", "t.flops", t["flops"], "flop")
        + claim("td", "t.pending", t["pending_flops"], "flop")
        + claim("td", "t.final", t["final_flops"], "flop")
        + claim("td", "t.flops24h", t["flops_24h"], "flop")
        + claim("td", "t.flops7d", t["flops_7d"], "flop")
        + claim("td", "t.accepted", t["tasks_accepted"], "int")
        + claim("td", "t.tokens", t["generated_tokens"], "int")
        + "</tr>"
        for t in teams
    )
    main = (
        "<section><p>A contributor's team is the one named in their latest signed profile.</p>"
        '<table data-list="teams">'
        + thead(
            "#", "team", "members", "FLOPs", "pending", "final", "24 h", "7 d", "tasks", "tokens"
        )
        + f"<tbody>{rows}</tbody></table></section>"
    )
    return shell(header, "Teams", "", "teams", main, {})
