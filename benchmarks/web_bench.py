"""Web leaderboard benchmarks of issue #17: page build time and size over a million ledger
entries, and the browser's verification time.

    .venv/bin/python benchmarks/web_bench.py [--quick] [--out benchmarks/results/web.json]
        [--store PATH --network-id ID --as-of T]   # reuse a store built before

1. pages: a store of 1,000,000 real signed entries (``--quick``: 100,000) from 4 validators,
   credits of 10,000 contributors with Zipf-like activity over 60 days, 0.1% hard
   invalidations, 0.05% profiles (``ledger_bench.fill_store``, the ledger benchmark's
   generator). Each ranking page (all, 30 d, 7 d, 24 h), the team page and two contributor
   pages (the biggest contributor and a median one) are built from a fresh snapshot, as the
   server does on a cache miss: 1 cold run, then 5 timed; wall and CPU seconds (the machine is
   shared, so CPU time is the steadier figure), bytes and gzipped bytes.
2. browser: a 10,000-entry ledger (4 validators, 200 contributors, with a signed manifest) is
   built as a static site and served by a plain file server; headless Chromium (Debian's)
   loads the main page and its own check runs: fetch, strict decoding, SHA-256 and Ed25519 of
   every entry, and every claim recomputed. The check's own clock (``performance.now()``)
   is reported for 3 page loads; also the same with the vendored @noble/ed25519.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(1, str(ROOT / "tests"))

import ledger_bench  # noqa: E402

from flopnet.ledger.leaderboard import team_totals  # noqa: E402
from flopnet.ledger.store import LedgerStore  # noqa: E402
from flopnet.node.config import NetworkParams, create_network  # noqa: E402
from flopnet.protocol.identity import Identity  # noqa: E402
from flopnet.web import pages  # noqa: E402
from flopnet.web.model import WINDOWS, Snapshot  # noqa: E402
from flopnet.web.site import Ledger, header  # noqa: E402
from flopnet.web.static_site import build_site  # noqa: E402

DAY = 86400.0
GOALS = {"page_build_s": 1.0}
FOUNDER = Identity(b"\x5e" * 32)


def network(tmp: Path, name: str) -> NetworkParams:
    """A signed manifest naming ledger_bench's 4 validators."""
    keys = tuple(v.public_key.hex() for v in ledger_bench.validators(4))
    params = NetworkParams(network_id="assigned", validators=keys, lock_window_seconds=DAY)
    return create_network(FOUNDER, name, params, tmp / "network.manifest")


def timed(build: Any, runs: int = 5) -> dict[str, Any]:
    """One cold build, then ``runs`` timed ones: wall and CPU seconds, and the output size."""
    wall, cpu = [], []
    body = build()
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        body = build()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {
        "wall_s_median": round(statistics.median(wall), 3),
        "wall_s_min": round(min(wall), 3),
        "cpu_s_median": round(statistics.median(cpu), 3),
        "cpu_s_min": round(min(cpu), 3),
        "bytes": len(body),
        "gzip_bytes": len(gzip.compress(body, 6)),
    }


def bench_pages(store_path: Path, network_id: str, as_of: float) -> dict[str, Any]:
    validators = [v.public_key for v in ledger_bench.validators(4)]
    out: dict[str, Any] = {}
    with LedgerStore(store_path) as store:
        conn = store.connection
        out["entries"] = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        out["contributors"] = conn.execute(
            "SELECT COUNT(DISTINCT contributor) FROM credit_totals"
        ).fetchone()[0]
        biggest, median = _people(conn)

        def page(kind: str, arg: Any = None) -> bytes:
            # A fresh snapshot each time: what the server does when the chains have grown.
            snap = Snapshot.open(store, network_id, validators, DAY, as_of, b"")
            try:
                head = header(snap)
                if kind == "board":
                    return pages.board_page(head, snap.board(arg)).encode()
                if kind == "teams":
                    return pages.teams_page(head, team_totals(snap.all_standings())).encode()
                return pages.contributor_page(head, snap.contributor(arg)).encode()
            finally:
                snap.close()

        for window in WINDOWS:
            out[f"board_{window}"] = {
                **ledger_bench.stamp(),
                **timed(lambda w=window: page("board", w)),
            }
            print(json.dumps({window: out[f"board_{window}"]}), flush=True)
        out["teams"] = {**ledger_bench.stamp(), **timed(lambda: page("teams"), runs=3)}
        out["contributor_biggest"] = {
            **ledger_bench.stamp(),
            "credits": biggest[1],
            **timed(lambda: page("contributor", biggest[0])),
        }
        out["contributor_median"] = {
            **ledger_bench.stamp(),
            "credits": median[1],
            **timed(lambda: page("contributor", median[0])),
        }
    return out


def _people(conn: Any) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
    rows = conn.execute(
        "SELECT contributor, SUM(accepted + rejected) n FROM credit_totals GROUP BY 1 ORDER BY 2"
    ).fetchall()
    return (bytes(rows[-1][0]), rows[-1][1]), (
        bytes(rows[len(rows) // 2][0]),
        rows[len(rows) // 2][1],
    )


def build_store(tmp: Path, total: int, people: int, span: float, now: float) -> tuple[Path, str]:
    net = network(tmp, "webbench")
    path = tmp / "ledger.sqlite"
    seconds = ledger_bench.fill_store(path, net.network_id, total, span, now, people)
    print(json.dumps({"store_built_s": round(seconds, 1), "entries": total}), flush=True)
    return path, net.network_id


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of a process and its living descendants, from /proc: the
    browser's own work, whatever else the shared machine runs."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo += [child for child, parent in parents.items() if parent == pid]
    return total


def bench_browser(tmp: Path, total: int, people: int) -> dict[str, Any]:
    from browser import check_page, start_chromium, static_host

    now = time.time()
    folder = tmp / f"net{total}"
    folder.mkdir()
    net = network(folder, "webbrowser")
    path = folder / "ledger.sqlite"
    ledger_bench.fill_store(path, net.network_id, total, 30 * DAY, now, people)
    site = folder / "site"
    report = build_site(Ledger.load(path, folder / "network.manifest"), site, now)
    out: dict[str, Any] = {
        "entries": report.entries,
        "contributors": report.contributors,
        "site_files": report.files,
        "site_bytes": report.bytes,
        "static_build_s": round(report.seconds, 2),
    }
    driver = start_chromium()
    try:
        version = driver.capabilities.get("browserVersion", "")
        root = driver.service.process.pid
        with static_host(site) as url:
            runs = []
            for _ in range(3):
                cpu = tree_cpu(root)
                runs.append(check_page(driver, url + "index.html", timeout=900))
                runs[-1]["browser_cpu_s"] = round(tree_cpu(root) - cpu, 2)
            hide = (
                "const o = SubtleCrypto.prototype.importKey; SubtleCrypto.prototype.importKey = "
                "function (f, k, a, ...r) { if ((a && a.name) === 'Ed25519') return "
                "Promise.reject(new DOMException('no', 'NotSupportedError')); "
                "return o.call(this, f, k, a, ...r); };"
            )
            driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": hide})
            cpu = tree_cpu(root)
            noble = check_page(driver, url + "index.html", timeout=1800)
            noble["browser_cpu_s"] = round(tree_cpu(root) - cpu, 2)
    finally:
        driver.quit()
    assert all(r["state"] == "verified" for r in runs), runs
    assert noble["state"] == "verified" and noble["ed25519"] == "noble", noble
    out.update(
        {
            "chromium": version,
            "webcrypto_ms": [r["ms"] for r in runs],
            "webcrypto_ms_median": statistics.median(r["ms"] for r in runs),
            "webcrypto_chains_ms": [r["chains_ms"] for r in runs],
            "webcrypto_claims_ms": [r["claims_ms"] for r in runs],
            "claims_checked": runs[0]["claims"],
            "webcrypto_browser_cpu_s": [r["browser_cpu_s"] for r in runs],
            "noble_ms": noble["ms"],
            "noble_browser_cpu_s": noble["browser_cpu_s"],
        }
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "web.json")
    parser.add_argument("--store", type=Path, help="reuse a store built by fill_store")
    parser.add_argument("--network-id", help="the network id the reused store was signed for")
    parser.add_argument("--as-of", type=float, help="the time the reused store was built at")
    parser.add_argument("--only", help="pages or browser")
    args = parser.parse_args()
    total = 100_000 if args.quick else 1_000_000
    browser_total = 2_000 if args.quick else 10_000
    report: dict[str, Any] = (
        json.loads(args.out.read_text()) if args.only and args.out.exists() else {}
    )
    report.update(
        {
            "benchmark": "web leaderboard (issue 17)",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": ledger_bench.machine(),
            "quick": args.quick,
            "goals": GOALS,
            "load_average_start": os.getloadavg(),
        }
    )
    tmp = Path(tempfile.mkdtemp(prefix="flopnet-web-bench-"))
    try:
        if args.only in (None, "pages"):
            if args.store:
                store, network_id, as_of = args.store, args.network_id, args.as_of
                report["pages_store"] = f"reused {args.store} (ledger_bench.fill_store)"
            else:
                as_of = time.time()
                store, network_id = build_store(tmp, total, 10_000, 60 * DAY, as_of)
            report["pages"] = bench_pages(store, network_id, as_of)
        if args.only in (None, "browser"):
            report["browser"] = {**ledger_bench.stamp(), **bench_browser(tmp, browser_total, 200)}
            print(json.dumps({"browser": report["browser"]}), flush=True)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    report["load_average_end"] = os.getloadavg()
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
