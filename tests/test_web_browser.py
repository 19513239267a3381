"""The web leaderboard in headless Chromium: the page checks itself, and a changed copy fails.

Debian's chromium and chromium-driver, driven by Selenium (installed when missing; skipped with
the reason when that cannot be done). Ledgers are a real devnet's and ones built with the real
chain code (``web_ledgers``). Screenshots are written under pytest's tmp dir and their paths
printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import check_page, ranking_rows, start_chromium, static_host
from web_ledgers import V1, XSS_NAME, build_ledger

from flopnet.node.local import flopnet_argv
from flopnet.web import paths
from flopnet.web.site import Ledger
from flopnet.web.static_site import build_site

FLOPNET = tuple(flopnet_argv())


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def cli_json(data_dir: Path, window: str = "all") -> list[dict[str, Any]]:
    """What ``flopnet leaderboard --json`` says for the same ledger."""
    out = subprocess.run(
        [*FLOPNET, "leaderboard", "--data-dir", str(data_dir), "--json", "--window", window],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def assert_ranking_matches(shown: list[dict[str, str]], cli: list[dict[str, Any]]) -> None:
    """Ranks, keys, names and every number of the page's table against the CLI's JSON."""
    assert len(shown) == len(cli) > 0
    for row, want in zip(shown, cli, strict=True):
        assert row["contributor"] == want["contributor"]
        assert int(row["rank"]) == want["rank"]
        assert row["name"] == (want["display_name"] or want["peer_id"])
        assert row["team"] == want["team"]
        for key, field in (
            ("flops", "flops"),
            ("pending", "pending_flops"),
            ("final", "final_flops"),
            ("accepted", "tasks_accepted"),
            ("rejected", "tasks_rejected"),
        ):
            assert int(row[key]) == want[field], (key, row, want)


def flip_in_entry(chunk: Path, index: int, marker: bytes) -> None:
    """Change one byte of entry ``index`` of a chain file: the second byte after ``marker``
    (past a string's one-byte header: its first letter, so the bytes still decode)."""
    data = bytearray(chunk.read_bytes())
    offset = 0
    for _ in range(index):
        offset += 4 + struct.unpack(">I", data[offset : offset + 4])[0]
    (size,) = struct.unpack(">I", data[offset : offset + 4])
    at = data.index(marker, offset + 4, offset + 4 + size) + len(marker) + 1
    data[at] ^= 0x01
    chunk.write_bytes(bytes(data))


def tampered_copy(site: Path, tmp: Path, name: str) -> Path:
    copy = tmp / name
    shutil.copytree(site, copy)
    return copy


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_devnet_ledger_verifies_in_chromium_and_matches_the_cli(
    chromium: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "devnet"
    devnet = ["devnet", "--headless", "--workers", "2", "--tasks", "4", "--json"]
    ran = subprocess.run(
        [*FLOPNET, *devnet, "--max-new-tokens", "32", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    server = subprocess.Popen(
        [*FLOPNET, "leaderboard", "serve", "--data-dir", str(data_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        url = re.search(r"(http://\S+/)$", line.strip())
        assert url, line + (server.stderr.read() if server.poll() is not None else "")
        base = url.group(1)
        page = check_page(chromium, base)
        assert page["state"] == "verified", page
        assert page["ed25519"] == "webcrypto" and page["entries"] > 0
        assert_ranking_matches(ranking_rows(chromium), cli_json(data_dir))
        shot = tmp_path / "leaderboard-devnet.png"
        chromium.save_screenshot(str(shot))
        print(f"\nscreenshot of the devnet's leaderboard: {shot}")
        first = chromium.execute_script(
            "return document.querySelector('td[data-k=\"name\"] a').getAttribute('href')"
        )
        for rel in (first, "24h.html", "teams.html"):
            assert check_page(chromium, base + rel)["state"] == "verified", rel
        check_page(chromium, base + "24h.html")
        assert_ranking_matches(ranking_rows(chromium), cli_json(data_dir, "24h"))
    finally:
        server.terminate()
        server.wait(timeout=30)

    # The same ledger as a static site, then one byte changed in one entry.
    site = tmp_path / "site"
    built = subprocess.run(
        [*FLOPNET, "leaderboard", "build", "--data-dir", str(data_dir), "--out", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    chunk = next((site / "ledger").glob("*/0.bin"))
    bad = tampered_copy(site, tmp_path, "one-byte")
    flip_in_entry(bad / "ledger" / chunk.parent.name / "0.bin", 1, b"\xa4kind")
    with static_host(site) as good_url, static_host(bad) as bad_url:
        assert check_page(chromium, good_url)["state"] == "verified"
        page = check_page(chromium, bad_url)
    assert page["state"] == "tampered", page
    assert "entry seq 1 (" in page["text"] and "bad signature" in page["text"]
    shot = tmp_path / "leaderboard-tampered.png"
    chromium.save_screenshot(str(shot))
    print(f"screenshot of the tampered copy: {shot}")


@pytest.fixture(scope="module")
def static_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A ledger with voids, rejections and hostile names, built as a static site."""
    tmp = tmp_path_factory.mktemp("web")
    built = build_ledger(tmp / "net", now=time.time())
    site = tmp / "site"
    build_site(Ledger.load(built.ledger, built.root / "network.manifest"), site)
    return built.root, site


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_page_of_a_static_build_checks_itself_from_plain_files(
    chromium: Any, static_site: tuple[Path, Path], tmp_path: Path
) -> None:
    data_dir, site = static_site
    pages = ["index.html", "30d.html", "7d.html", "24h.html", "teams.html"]
    pages += [f"c/{p.name}" for p in sorted((site / "c").glob("*.html"))]
    with static_host(site) as url:
        for rel in pages:
            page = check_page(chromium, url + rel)
            assert page["state"] == "verified", (rel, page)
            assert chromium.execute_script("return typeof window.pwned") == "undefined"
            if rel.endswith(("index.html", "d.html", "h.html")) and "/" not in rel:
                window = {"index.html": "all"}.get(rel, rel[:-5])
                assert_ranking_matches(ranking_rows(chromium), cli_json(data_dir, window))
        check_page(chromium, url + "index.html")
        cells = "document.querySelectorAll('td[data-k=\"name\"]')"
        names = chromium.execute_script(f"return Array.from({cells}, e => e.textContent)")
        assert XSS_NAME in names  # shown as text, and never run (window.pwned above)
        voids = chromium.execute_script(
            "return document.querySelectorAll('table[data-list=\"voidings\"] tbody tr').length"
        )
        assert voids == 2
        shot = tmp_path / "leaderboard-static.png"
        chromium.save_screenshot(str(shot))
        print(f"\nscreenshot of the static build: {shot}")
    # Opened as a file, the page says it cannot check itself; it never claims "verified".
    page = check_page(chromium, (site / "index.html").as_uri())
    assert page["state"] == "unchecked" and "http" in page["text"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_changed_copies_of_a_static_build_show_as_tampered(
    chromium: Any, static_site: tuple[Path, Path], tmp_path: Path
) -> None:
    _, site = static_site
    signer = V1.public_key.hex()
    cases: dict[str, tuple[str, str]] = {}

    one_byte = tampered_copy(site, tmp_path, "byte")
    flip_in_entry(one_byte / paths.chunk(signer, 0), 7, b"\xa4kind")
    cases["byte"] = ("index.html", "bad signature")

    number = tampered_copy(site, tmp_path, "number")
    html = (number / "index.html").read_text()
    match = re.search(r'data-k="flops" data-v="(\d+)" data-f="flop">([^<]*)<', html)
    assert match
    more = str(int(match.group(1)) * 2)
    html = html.replace(match.group(0), match.group(0).replace(match.group(1), more), 1)
    (number / "index.html").write_text(html)
    cases["number"] = ("index.html", "the page says")

    text = tampered_copy(site, tmp_path, "text")
    teams = (text / "teams.html").read_text()
    teams = re.sub(
        r'(data-k="t.flops" data-v="\d+" data-f="flop">)[^<]*', r"\g<1>9.99 EFLOP", teams
    )
    (text / "teams.html").write_text(teams)
    cases["text"] = ("teams.html", "as written")

    dropped = tampered_copy(site, tmp_path, "dropped")
    board = (dropped / "index.html").read_text()
    board = re.sub(r'<tr data-sig="' + signer + r'">.*?</tr>', "", board, count=1)
    (dropped / "index.html").write_text(board)
    cases["dropped"] = ("index.html", "leaves out the chain")

    manifest = tampered_copy(site, tmp_path, "manifest")
    data = bytearray((manifest / paths.MANIFEST).read_bytes())
    data[-70] ^= 0x01  # inside the founder's signature
    (manifest / paths.MANIFEST).write_bytes(bytes(data))
    cases["manifest"] = ("index.html", "manifest")

    for name, (rel, words) in cases.items():
        with static_host(tmp_path / name) as url:
            page = check_page(chromium, url + rel)
        assert page["state"] == "tampered", (name, page)
        assert words in page["text"], (name, page["text"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_without_webcrypto_ed25519_the_vendored_library_checks_the_page(
    chromium: Any, static_site: tuple[Path, Path]
) -> None:
    _, site = static_site
    hide = """
      const original = SubtleCrypto.prototype.importKey;
      SubtleCrypto.prototype.importKey = function (format, key, algorithm, ...rest) {
        const name = typeof algorithm === 'string' ? algorithm : algorithm && algorithm.name;
        if (name === 'Ed25519') return Promise.reject(new DOMException('no', 'NotSupportedError'));
        return original.call(this, format, key, algorithm, ...rest);
      };
    """
    added = chromium.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": hide})
    try:
        with static_host(site) as url:
            page = check_page(chromium, url + "index.html")
    finally:
        chromium.execute_cdp_cmd(
            "Page.removeScriptToEvaluateOnNewDocument", {"identifier": added["identifier"]}
        )
    assert page["state"] == "verified", page
    assert page["ed25519"] == "noble" and "@noble/ed25519" in page["text"]


def test_the_checker_is_plain_es2020_with_no_external_loads() -> None:
    source = (Path(__file__).resolve().parents[1] / "web" / "static" / "verify.js").read_text()
    code = source.split("*/", 1)[1]  # after the header comment
    assert "innerHTML" not in code and "eval(" not in code and "document.write" not in code
    assert not re.search(r"https?://", code)
