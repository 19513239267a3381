"""Ledger benchmarks of issue #7: verified ingest, the leaderboard over a million entries, and a
100,000-entry sync between two nodes over libp2p.

    /tmp/venv/bin/python benchmarks/ledger_bench.py [--quick] [--out benchmarks/results/ledger.json]

1. ingest: a signed chain of 20,000 credit entries (``--quick``: 3,000) is stored into a fresh
   store through ``LedgerStore.ingest_range`` in ranges of 512, the replication path: envelope,
   signature, body and chain link of every entry are checked before it is stored (WAL,
   synchronous=FULL, one commit per range). Reported per wall second and per CPU second of the
   one thread doing it; also the gossip path (one entry per commit, so one fsync per entry).
2. leaderboard: 1,000,000 real signed entries (``--quick``: 100,000) of 4 validators: credits for
   5,000 contributors with Zipf-like activity over 60 days, 0.1% hard invalidations (of
   contributors drawn uniformly) and 0.05% profile entries. Top 100 with all details
   (pending/final, 24 h/7 d/all, names) for each window; median of 5 after one warm-up. Then
   again with every entry inside the last 36 hours (two thirds of them inside the 24 h window
   and pending, and each invalidation voiding up to a day of its contributor's credit). The
   store is
   filled by 2 processes that sign entries with ``make_entry`` and insert them through the
   store's own derivation (``_insert``) without re-verifying their own signatures, since
   signing a million entries is the slow part.
3. sync: a replica process (``flopnet ledger replicate``) holds a 100,000-entry chain
   (``--quick``: 10,000); a fresh node in this process connects and syncs it with ``LedgerSync``
   (ranges of 512 and of 2048); the time from connect to the last entry stored is reported, then
   the copy is compared entry by entry.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))

from flopnet.ledger.chain import GENESIS_PREV, VerifiedEntry, make_entry, verify_entry  # noqa: E402
from flopnet.ledger.flops import FLOP_FORMULA, skeleton_flops  # noqa: E402
from flopnet.ledger.kinds import HARD, InvalidationBody, ProfileBody  # noqa: E402
from flopnet.ledger.store import LedgerStore  # noqa: E402
from flopnet.protocol.envelope import message_id, seal  # noqa: E402
from flopnet.protocol.identity import Identity  # noqa: E402
from flopnet.protocol.messages import ContributorProfile, CreditBody  # noqa: E402

WINDOW_NAMES = ("24h", "7d", "all")
GOALS = {"ingest_per_s": 5000.0, "leaderboard_ms": 200.0, "sync_100k_s": 60.0}
N_PARAMS = 7_000_000_000
DAY = 86400.0


class _FastIdentity(Identity):
    """An Identity that decodes its key once (``Identity`` re-derives it on every signature)."""

    @functools.cached_property
    def _key(self) -> Any:  # type: ignore[override]
        return Identity._key.fget(self)  # type: ignore[attr-defined]

    @functools.cached_property
    def public_key(self) -> bytes:  # type: ignore[override]
        return Identity.public_key.fget(self)  # type: ignore[attr-defined]


def validators(n: int) -> list[_FastIdentity]:
    return [_FastIdentity(bytes([0x70 + i]) * 32) for i in range(n)]


def contributors(n: int) -> list[_FastIdentity]:
    rng = random.Random(7)
    return [_FastIdentity(rng.randbytes(32)) for _ in range(n)]


def credit_body(who: bytes, n: int, rng: random.Random) -> CreditBody:
    accepted = rng.random() < 0.95
    prompt, generated = rng.randrange(50, 400), rng.randrange(100, 4000)
    return CreditBody(
        contributor=who,
        lease_id=n.to_bytes(16, "big"),
        submission_id=n.to_bytes(32, "big"),
        task_id=f"deepscaler-{n % 40000}",
        sample_index=n % 4,
        prompt_tokens=prompt,
        generated_tokens=generated,
        flops=skeleton_flops(N_PARAMS, prompt, generated) if accepted else 0,
        flop_formula=FLOP_FORMULA,
        accepted=accepted,
        answer_score=1.0 if accepted else 0.0,
        reasons=() if accepted else ("proof: 61 exponent mismatches > 38",),
    )


def build_chain(
    validator: Identity,
    network_id: str,
    count: int,
    start: float,
    span: float,
    people: list[_FastIdentity],
    seed: int,
    extras: bool = True,
) -> list[VerifiedEntry]:
    """``count`` signed entries of one chain, timestamps evenly over [start, start + span),
    with the fields the store needs (built here, so known without re-verifying them)."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** 0.8 for i in range(len(people))]
    who = rng.choices(range(len(people)), weights, k=count)
    out: list[VerifiedEntry] = []
    prev = GENESIS_PREV
    for seq in range(count):
        ts = start + span * seq / count
        person = people[who[seq]]
        kind: str
        body: Any
        roll = rng.random()
        if extras and roll < 0.001:
            # A cheater caught by an audit: any contributor, not weighted by activity.
            cheater = people[rng.randrange(len(people))].public_key
            kind = "invalidation"
            body = InvalidationBody(
                cheater, HARD, validator.public_key, max(0, seq - 1), bytes(32), "audit failed"
            )
        elif extras and roll < 0.0015:
            kind = "profile"
            profile = ContributorProfile(1, f"user{who[seq]}", f"team{who[seq] % 50}", ts)
            body = ProfileBody(seal(profile, person, network_id))
        else:
            kind, body = "credit", credit_body(person.public_key, seed * 10_000_000 + seq, rng)
        data = make_entry(validator, network_id, seq, prev, kind, body, ts)
        h = message_id(data)
        out.append(VerifiedEntry(validator.public_key, seq, prev, h, ts, kind, body, data))
        prev = h
    return out


def _fill(args: tuple[str, str, int, int, float, float, int, bool]) -> str:
    """Worker: build one validator's chain and store it (derived rows and sums included)."""
    path, network_id, index, count, start, span, n_people, extras = args
    store_path = Path(path)
    validator = validators(index + 1)[index]
    chain = build_chain(
        validator, network_id, count, start, span, contributors(n_people), index, extras
    )
    with LedgerStore(store_path) as store:
        store.connection.execute("BEGIN")
        for entry in chain:
            # Built and signed just above: stored through the store's own derivation of rows
            # and sums, without verifying our own signatures a second time.
            store._insert(entry, network_id)
        store.connection.execute("COMMIT")
    return path


def fill_store(
    path: Path, network_id: str, total: int, span: float, now: float, n_people: int
) -> float:
    """A store of ``total`` entries over 4 validators, built by 2 processes; returns seconds."""
    started = time.perf_counter()
    parts = [
        (
            str(path.with_name(f"{path.stem}.part{i}.db")),
            network_id,
            i,
            total // 4,
            now - span,
            span,
            n_people,
            True,
        )
        for i in range(4)
    ]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        files = pool.map(_fill, parts)
    with LedgerStore(path) as store:
        conn = store.connection
        tables = [
            "entries",
            "credits",
            "invalidations",
            "audits",
            "profiles",
            "credit_totals",
            "credit_days",
            "credit_quarters",
            "credit_hours",
        ]
        for i, part in enumerate(files):
            conn.execute(f"ATTACH DATABASE ? AS p{i}", (part,))
            conn.execute("BEGIN")
            for table in tables:
                conn.execute(f"INSERT INTO {table} SELECT * FROM p{i}.{table}")  # disjoint signers
            conn.execute("COMMIT")
            conn.execute(f"DETACH DATABASE p{i}")
            for suffix in ("", "-wal", "-shm"):
                Path(part + suffix).unlink(missing_ok=True)
        # No ANALYZE: nodes never run it, and its statistics make SQLite answer the voided-credit
        # join with a Bloom filter that scans every credit (measured: 120 ms instead of 1 ms).
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------


def bench_ingest(tmp: Path, network_id: str, count: int) -> dict[str, Any]:
    v = validators(1)[0]
    built = build_chain(v, network_id, count, time.time() - DAY, DAY, contributors(500), 1)
    chain = [entry.raw for entry in built]
    runs = []
    for trial in range(3):
        path = tmp / f"ingest{trial}.db"
        with LedgerStore(path) as store:
            wall, cpu = time.perf_counter(), time.process_time()
            for start in range(0, count, 512):
                result = store.ingest_range(chain[start : start + 512], network_id, {v.public_key})
                assert result.error is None, result.error
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert store.head(v.public_key) == (count - 1, message_id(chain[-1]))
        runs.append({"wall_s": wall, "cpu_s": cpu})
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    best = max(runs, key=lambda r: count / r["wall_s"])
    verify_cpu = time.process_time()
    for data in chain:
        verify_entry(data, network_id)
    verify_cpu = time.process_time() - verify_cpu
    gossip_n = min(1000, count)
    with LedgerStore(tmp / "gossip.db") as store:
        wall = time.perf_counter()
        for data in chain[:gossip_n]:
            store.ingest(data, network_id, {v.public_key})
        gossip_wall = time.perf_counter() - wall
    return {
        "entries": count,
        "range_size": 512,
        "runs": runs,
        "per_wall_s": round(count / best["wall_s"]),
        "per_cpu_s": round(count / best["cpu_s"]),
        "median_per_wall_s": round(statistics.median(count / r["wall_s"] for r in runs)),
        "verify_only_per_cpu_s": round(count / verify_cpu),
        "gossip_path_one_commit_per_entry_per_s": round(gossip_n / gossip_wall),
    }


def bench_leaderboard(tmp: Path, network_id: str, total: int, dense: bool) -> dict[str, Any]:
    from flopnet.ledger.leaderboard import WINDOWS, Voids, leaderboard

    now = time.time()
    span = 1.5 * DAY if dense else 60 * DAY
    path = tmp / ("dense.db" if dense else "board.db")
    build_s = fill_store(path, network_id, total, span, now, 5000)
    out: dict[str, Any] = {
        "entries": total,
        "span_days": round(span / DAY, 2),
        "build_s": round(build_s, 1),
    }
    with LedgerStore(path) as store:
        out["entries_stored"] = store.connection.execute("SELECT COUNT(*) FROM entries").fetchone()[
            0
        ]
        out["contributors"] = store.connection.execute(
            "SELECT COUNT(DISTINCT contributor) FROM credit_totals"
        ).fetchone()[0]
        out["voided_credits"] = Voids(store, DAY).count()
        for window, width in WINDOWS.items():
            since = None if width is None else now - width
            times = []
            for _ in range(6):
                started = time.perf_counter()
                rows = leaderboard(store, since=since, limit=100, now=now, lock_window=DAY)
                times.append(time.perf_counter() - started)
            assert len(rows) == 100
            out[window] = {
                "first_ms": round(times[0] * 1000, 1),
                "median_ms": round(statistics.median(times[1:]) * 1000, 1),
                "max_ms": round(max(times[1:]) * 1000, 1),
            }
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return out


def bench_sync(tmp: Path, count: int, batch: int) -> dict[str, Any]:
    import trio

    from flopnet.node.config import NetworkParams, create_network
    from flopnet.node.ledger_sync import LedgerSync
    from flopnet.node.replica import replica_command
    from flopnet.protocol.catalog import LEDGER_RANGE
    from flopnet.protocol.host import P2PHost

    v = validators(1)[0]
    net = create_network(
        _FastIdentity(b"\x7f" * 32),
        "ledgerbench",
        NetworkParams(network_id="assigned", validators=(v.public_key.hex(),)),
        tmp / "network.manifest",
    )
    server_dir = tmp / f"server{batch}"
    server_dir.mkdir()
    _fill(
        (
            str(server_dir / "ledger.sqlite"),
            net.network_id,
            0,
            count,
            time.time() - DAY,
            DAY,
            500,
            False,
        )
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        replica_command(server_dir, tmp / "network.manifest"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    addr = json.loads(server.stdout.readline())["addrs"][0]
    client_path = tmp / f"client{batch}.db"
    result: dict[str, Any] = {"entries": count, "range_size": batch}

    async def main() -> None:
        me = _FastIdentity(b"\x7e" * 32)
        host = P2PHost(me, network_id=net.network_id)
        with LedgerStore(client_path) as store:
            sync = LedgerSync(host, store, me, net.network_id, net.validator_keys, batch=batch)
            host.serve(LEDGER_RANGE, sync.handle_range)
            async with host.running(), trio.open_nursery() as nursery:
                started, cpu = time.perf_counter(), time.process_time()
                await host.connect(addr)
                nursery.start_soon(sync.run)
                with trio.fail_after(600):
                    while (store.head(v.public_key) or (-1,))[0] < count - 1:
                        await trio.sleep(0.01)
                result["seconds"] = round(time.perf_counter() - started, 2)
                result["client_cpu_s"] = round(time.process_time() - cpu, 2)
                result["entries_per_s"] = round(count / result["seconds"])
                result["done"] = True
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert result.get("done"), "the sync did not finish (see the replica's output)"
    with LedgerStore(client_path) as copy, LedgerStore(server_dir / "ledger.sqlite") as original:
        same = all(
            copy.entries(v.public_key, start, 10_000)
            == original.entries(v.public_key, start, 10_000)
            for start in range(0, count, 10_000)
        )
        result["identical"] = same
    return result


def machine() -> dict[str, Any]:
    from run import machine as common  # benchmarks/run.py, beside this file

    return {**common(), "note": "2-core VM shared with other developers (noisy)"}


def stamp() -> dict[str, Any]:
    """When a part ran, and how busy the shared machine was as it started."""
    return {"measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ledger.json")
    parser.add_argument(
        "--only", help="comma-separated parts (ingest,sync,board,dense), merged into --out"
    )
    args = parser.parse_args()
    sizes = (
        {"ingest": 3000, "board": 100_000, "sync": 10_000}
        if args.quick
        else {"ingest": 20_000, "board": 1_000_000, "sync": 100_000}
    )
    previous: dict[str, Any] = {}
    if args.only and args.out.exists():
        previous = json.loads(args.out.read_text())  # a partial run updates the parts it ran
    report: dict[str, Any] = {
        **previous,
        "benchmark": "ledger (issue 7)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "quick": args.quick,
        "goals": GOALS,
        "load_average_start": os.getloadavg(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="flopnet-ledger-bench-"))
    parts = set(args.only.split(",")) if args.only else {"ingest", "sync", "board", "dense"}
    try:
        network_id = "ledgerbench-0000000000000000"
        if "ingest" in parts:
            report["ingest"] = {**stamp(), **bench_ingest(tmp, network_id, sizes["ingest"])}
            print(json.dumps({"ingest": report["ingest"]}), flush=True)
        if "sync" in parts:
            report["sync"] = [
                {**stamp(), **bench_sync(tmp, sizes["sync"], batch)} for batch in (512, 2048)
            ]
            print(json.dumps({"sync": report["sync"]}), flush=True)
        if "board" in parts:
            report["leaderboard"] = {
                **stamp(),
                **bench_leaderboard(tmp, network_id, sizes["board"], dense=False),
            }
            print(json.dumps({"leaderboard": report["leaderboard"]}), flush=True)
        if "dense" in parts:
            report["leaderboard_all_in_36h"] = {
                **stamp(),
                **bench_leaderboard(tmp, network_id, sizes["board"], dense=True),
            }
            print(
                json.dumps({"leaderboard_all_in_36h": report["leaderboard_all_in_36h"]}),
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["load_average_end"] = os.getloadavg()
    boards = [report[k] for k in ("leaderboard", "leaderboard_all_in_36h") if k in report]
    report["summary"] = {
        "ingest_per_cpu_s": report.get("ingest", {}).get("per_cpu_s"),
        "ingest_per_wall_s": report.get("ingest", {}).get("per_wall_s"),
        "leaderboard_median_ms": {
            f"{b['span_days']}d span, {w}": b[w]["median_ms"] for b in boards for w in WINDOW_NAMES
        },
        "sync_seconds": {s["range_size"]: s["seconds"] for s in report.get("sync", [])},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"]))
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
