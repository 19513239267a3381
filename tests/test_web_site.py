"""The web leaderboard without a browser: numbers, escaping, files, dumps, caching, the mount.

The pages are built from ledgers made with the real chain code (``web_ledgers``); the browser
tests (``test_web_browser.py``) load the same pages in Chromium.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import struct
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient
from web_ledgers import IDLE, V1, XSS_NAME, XSS_TEAM, build_ledger

from flopnet.ledger.chain import verify_chain
from flopnet.ledger.leaderboard import leaderboard, to_json
from flopnet.ledger.store import LedgerStore
from flopnet.node.api import build_api
from flopnet.node.api_schema import Endpoint
from flopnet.node.cli.main import main
from flopnet.protocol.identity import Identity
from flopnet.web import paths, units
from flopnet.web.chart import bar_tenths
from flopnet.web.server import PAGE_MAX_AGE_S, make_app, web_mount
from flopnet.web.site import Ledger, key_from_peer_id, render, site_paths

NOW = 1_796_000_000.0


@pytest.fixture
def built(tmp_path: Path):  # type: ignore[no-untyped-def]
    return build_ledger(tmp_path / "net", now=NOW)


@pytest.fixture
def ledger(built) -> Ledger:  # type: ignore[no-untyped-def]
    return Ledger.load(built.ledger, built.root / "network.manifest")


def test_human_units_round_half_up_with_three_digits() -> None:
    cases = {
        0: "0 FLOP",
        999: "999 FLOP",
        1000: "1.00 kFLOP",
        1234: "1.23 kFLOP",
        1235: "1.24 kFLOP",
        9994: "9.99 kFLOP",
        9995: "10.0 kFLOP",
        99_950: "100 kFLOP",
        999_499: "999 kFLOP",
        999_500: "1.00 MFLOP",
        1_234_567_000_000_000: "1.23 PFLOP",
        2**63 - 1: "9.22 EFLOP",
        5 * 10**27: "5000 YFLOP",
    }
    assert {v: units.flops(v) for v in cases} == cases
    assert units.flops_per_day(12_345_000_000_000) == "12.3 TFLOP/day"
    assert units.count(1234567) == "1,234,567" and units.count(7) == "7"
    assert (units.percent(1, 3), units.percent(2, 3), units.percent(0, 0)) == (
        "33.3%",
        "66.7%",
        "-",
    )
    assert units.utc(1_796_000_000.9) == "2026-11-30 00:53:20 UTC"
    assert units.day(20_000) == "2024-10-04"
    assert bar_tenths(0, 10) == 0 and bar_tenths(10, 10) == 1400 and bar_tenths(1, 3) == 467


def test_peer_ids_map_back_to_keys() -> None:
    key = Identity(b"\x42" * 32).public_key
    assert key_from_peer_id(Identity(b"\x42" * 32).peer_id) == key
    assert key_from_peer_id("12D3KooWnotapeerid") is None
    assert key_from_peer_id("0OIl") is None


def test_pages_agree_with_the_leaderboard_and_escape_every_name(ledger: Ledger) -> None:
    with ledger.snapshot(NOW) as snap:
        index = render(snap, "index.html")
        assert index is not None
        html = index.decode()
        rows = to_json(
            leaderboard(snap.store, set(snap.signers), now=NOW, lock_window=snap.lock_window)
        )
        every = list(site_paths(snap))
        teams = render(snap, paths.TEAMS)
    # Every ranked contributor's exact FLOPs, in rank order.
    shown = re.findall(r'<tr data-c="([0-9a-f]{64})">.*?data-k="flops" data-v="(\d+)"', html)
    assert shown == [(r["contributor"], str(r["flops"])) for r in rows]
    # Hostile names are text, never markup, in content and in attributes.
    for page in (html, teams.decode() if teams else ""):
        assert XSS_NAME not in page and XSS_TEAM not in page
        assert "<script>pwned" not in page and "<svg onload" not in page
    assert "&lt;script&gt;pwned=1&lt;/script&gt;" in html
    assert 'data-team="&quot;&gt;&lt;svg onload=pwned=3&gt;"' in (teams or b"").decode()
    # No external resource: every src/href is relative, and the CSP says so.
    for page in (html, (teams or b"").decode()):
        assert "default-src 'none'" in page
        links = re.findall(r'(?:src|href)="([^"]*)"', page)
        assert links and not [u for u in links if "//" in u or u.startswith(("/", "data:"))]
    assert "index.html" in every and "all.html" not in every
    assert paths.chunk(V1.public_key.hex(), 0) in every
    assert not [p for p in every if IDLE.public_key.hex() in p]  # no chain, no file


def test_chain_files_hold_the_signed_entries_and_verify(ledger: Ledger, built) -> None:  # type: ignore[no-untyped-def]
    with ledger.snapshot(NOW) as snap:
        data = render(snap, paths.chunk(V1.public_key.hex(), 0))
        stored = snap.store.entries(V1.public_key, 0, paths.CHUNK)
        assert render(snap, paths.chunk(V1.public_key.hex(), 1)) is None  # past the head
        assert render(snap, "ledger/" + "00" * 32 + "/0.bin") is None
        assert render(snap, paths.MANIFEST) == ledger.manifest
    assert data is not None
    envelopes, offset = [], 0
    while offset < len(data):
        (n,) = struct.unpack(">I", data[offset : offset + 4])
        envelopes.append(data[offset + 4 : offset + 4 + n])
        offset += 4 + n
    assert envelopes == stored
    assert verify_chain(envelopes, built.net.network_id, V1.public_key) == []


def test_contributor_pages_list_every_credit_entry(ledger: Ledger, built) -> None:  # type: ignore[no-untyped-def]
    with ledger.snapshot(NOW) as snap:
        who = built.people[0]
        page = render(snap, paths.contributor(who.peer_id))
        (count,) = snap.store.connection.execute(
            "SELECT COUNT(*) FROM credits WHERE contributor = ?", (who.public_key,)
        ).fetchone()
        assert render(snap, paths.contributor(Identity(b"\x01" * 32).peer_id)) is None
        assert render(snap, "c/not-a-peer.html") is None
    assert page is not None
    text = page.decode()
    assert text.count('<tr data-sig="') - len(snap.chains) == count
    assert "person zero" in text and "<svg" in text and 'data-k="day"' in text
    states = set(re.findall(r'data-k="e.state" data-f="text">(\w+)<', text))
    assert states <= {"final", "pending", "void", "rejected"} and "final" in states


def test_dumps_are_gzipped_with_a_totals_header(ledger: Ledger) -> None:
    with ledger.snapshot(NOW) as snap:
        stats = json.loads(gzip.decompress(render(snap, "dumps/stats.json.gz") or b""))
        people = gzip.decompress(render(snap, "dumps/contributors.csv.gz") or b"").decode()
        teams = gzip.decompress(render(snap, "dumps/teams.csv.gz") or b"").decode()
    totals = stats["totals"]
    assert totals["contributors"] == len(stats["contributors"]) == 8
    assert totals["flops"] == sum(c["flops"] for c in stats["contributors"])
    assert totals["teams"] == len(stats["teams"]) == 3
    head = [line for line in people.splitlines() if line.startswith("#")]
    assert head[0] == "# flopnet-stats/1 contributors" and f"flops={totals['flops']}" in head[-1]
    table = list(csv.DictReader(io.StringIO("\n".join(people.splitlines()[len(head) :]))))
    assert [int(r["flops"]) for r in table] == [c["flops"] for c in stats["contributors"]]
    team_rows = list(csv.reader(io.StringIO(teams)))
    assert team_rows[len(head)][0] == "rank" and len(team_rows) == len(head) + 1 + 3
    # A team name that a spreadsheet would run as a formula is quoted as text.
    assert not [r for r in team_rows[len(head) + 1 :] if r[1][:1] in "=+-@"]


def test_server_caches_with_etags_and_rebuilds_when_a_chain_grows(ledger: Ledger, built) -> None:  # type: ignore[no-untyped-def]
    app = make_app(ledger)
    cache = app.state.web_cache
    client = TestClient(app)
    first = client.get("/")
    assert first.status_code == 200 and first.headers["content-encoding"] == "gzip"
    assert "default-src 'none'" in first.headers["content-security-policy"]
    tag = first.headers["etag"]
    again = client.get("/index.html", headers={"If-None-Match": tag})
    assert again.status_code == 304 and cache.builds == 1
    assert client.get("/nothing.html").status_code == 404
    assert client.get("/../network.manifest").status_code == 404
    chunk = client.get("/" + paths.chunk(V1.public_key.hex(), 0))
    assert chunk.headers["cache-control"] == "no-cache"  # the chain's last file still grows
    assert client.get("/assets/verify.js").headers["content-type"].startswith("text/javascript")

    before = cache.builds
    with LedgerStore(built.ledger) as store:  # a validator appends: the page is rebuilt
        from web_ledgers import credit

        store.append_local(V1, built.net.network_id, "credit", credit(built.people[2], 999, 10**15))
    grown = client.get("/index.html", headers={"If-None-Match": tag})
    assert grown.status_code == 200 and grown.headers["etag"] != tag
    assert cache.builds == before + 1
    assert client.get("/index.html").status_code == 200 and cache.builds == before + 1
    cache.entries["index.html"].built -= PAGE_MAX_AGE_S + 1  # credit turns final with time:
    assert client.get("/index.html").status_code == 200 and cache.builds == before + 2


def test_full_chain_files_are_immutable(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "CHUNK", 16)
    client = TestClient(make_app(ledger))
    first = client.get("/" + paths.chunk(V1.public_key.hex(), 0))
    assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
    page = client.get("/index.html").text
    assert 'data-chunk="16"' in page


def test_the_daemon_api_mounts_the_public_pages_beside_its_guarded_routes(
    ledger: Ledger, built
) -> None:  # type: ignore[no-untyped-def]
    token = "ab" * 16
    web = web_mount(built.ledger, None, built.root / "validator")  # manifest one level up
    assert web is not None
    app: Starlette = build_api(
        token, [Endpoint("GET", "/status", "status", lambda call: {"ok": True})], mounts=[web]
    )
    client = TestClient(app)
    assert client.get("/status").status_code == 401  # the API still wants its token
    assert client.get("/web", follow_redirects=False).headers["location"].endswith("/web/")
    page = client.get("/web/")
    assert page.status_code == 200 and 'data-page="board"' in page.text
    assert client.get("/web/teams.html").status_code == 200
    assert web_mount(built.ledger, None, built.root.parent / "elsewhere") is None


def test_leaderboard_build_writes_a_site_and_serve_refuses_without_a_manifest(
    built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "site"
    code = main(["leaderboard", "build", "--data-dir", str(built.root), "--out", str(out)])
    assert code == 0 and "8 contributors" in capsys.readouterr().out
    assert (out / "index.html").exists() and (out / "assets" / "verify.js").exists()
    assert len(list((out / "c").glob("*.html"))) == 8
    assert (out / "dumps" / "stats.json.gz").exists() and not list(out.rglob("*.tmp"))
    (built.root / "network.manifest").rename(tmp_path / "elsewhere.manifest")
    code = main(["leaderboard", "serve", "--data-dir", str(built.root), "--port", "0"])
    assert code == 2 and "give --manifest" in capsys.readouterr().err


def test_importing_the_web_command_stays_cheap() -> None:
    import subprocess
    import sys

    code = (
        "import sys, flopnet.node.cli.ledger, flopnet.node.cli.web; "
        "print(sorted(m for m in ('sqlite3', 'starlette', 'trio', 'flopnet.web.model') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_network_without_entries_has_a_site(tmp_path: Path) -> None:
    from web_ledgers import FOUNDER

    from flopnet.node.config import NetworkParams, create_network

    params = NetworkParams(network_id="x", validators=(V1.public_key.hex(),))
    create_network(FOUNDER, "empty", params, tmp_path / "network.manifest")
    (tmp_path / "v").mkdir()
    LedgerStore(tmp_path / "v" / "ledger.sqlite").close()
    ledger = Ledger.load(tmp_path / "v" / "ledger.sqlite", tmp_path / "network.manifest")
    with ledger.snapshot() as snap:
        every = list(site_paths(snap))
        index = (render(snap, "index.html") or b"").decode()
    assert "index.html" in every and [p for p in every if p.endswith(".bin")] == [paths.MANIFEST]
    assert 'data-k="n.flops" data-v="0"' in index and "None.</p>" in index
