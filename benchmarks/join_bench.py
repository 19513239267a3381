"""How long a new node takes to join a validator's chain of 10^6 entries: verifying every entry
from the first one, against verifying a checkpoint and then only the entries after it.

    .venv/bin/python benchmarks/join_bench.py [--entries 1000000] [--tail-days 7]

The chain spans 60 days with 5,000 contributors; the validator appends a checkpoint ``tail-days``
before its head (what a joining node needs after it: the lock window's pending credit and the
7-day leaderboard). Both joins run the real store (``ingest_range`` in ranges of 2,048, the sync
default; ``adopt_checkpoint``), reading the served entries from the validator's store. Writes
``benchmarks/results/join.json`` with wall and CPU seconds and bytes fetched.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from ledger_bench import DAY, build_chain, contributors, machine, stamp, validators  # noqa: E402

from flopnet.ledger.joining import adopt_checkpoint, append_checkpoint, latest_checkpoint  # noqa: E402
from flopnet.ledger.store import LedgerStore  # noqa: E402

NETWORK = "joinbench-0123456789abcdef"
RANGE = 2048
SPAN_DAYS = 60.0


def _ingest(
    store: LedgerStore, source: LedgerStore, signer: bytes, start: int, allowed: set[bytes]
) -> tuple[int, int]:
    """Fetch (from ``source``) and ingest ``signer``'s entries from ``start``; (entries, bytes)."""
    n = size = 0
    seq = start
    while True:
        batch = source.entries(signer, seq, RANGE)
        if not batch:
            return n, size
        result = store.ingest_range(batch, NETWORK, allowed)
        assert result.error is None, result.error
        n += len(batch)
        size += sum(len(b) for b in batch)
        seq += len(batch)


def _timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--tail-days", type=float, default=7.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "join.json")
    args = parser.parse_args()
    v = validators(1)[0]
    signer = v.public_key
    allowed = {signer}
    started = stamp()
    with tempfile.TemporaryDirectory(prefix="flopnet-join-") as tmp_dir:
        tmp = Path(tmp_dir)
        now = time.time()
        start = now - SPAN_DAYS * DAY
        cut = round(args.entries * (1 - args.tail_days / SPAN_DAYS))
        built, build_wall, _ = _timed(
            lambda: build_chain(
                v, NETWORK, cut, start, SPAN_DAYS * DAY * cut / args.entries, contributors(5000), 1
            )
        )
        source = LedgerStore(tmp / "validator.db")
        for i in range(0, len(built), 10_000):
            source._insert_all(built[i : i + 10_000], NETWORK)
        del built
        (seq, state), cp_wall, _ = _timed(
            lambda: append_checkpoint(
                source, v, NETWORK, now=start + SPAN_DAYS * DAY * cut / args.entries
            )
        )
        # The entries after the checkpoint: the same chain, continued.
        tail_count = args.entries - cut - 1
        head = source.head(signer)
        assert head is not None
        cut_ts = start + SPAN_DAYS * DAY * cut / args.entries
        rest = build_chain(v, NETWORK, tail_count, cut_ts, now - cut_ts, contributors(5000), 2)
        # build_chain starts at genesis; re-link the continuation after the checkpoint entry.
        from flopnet.ledger.chain import make_entry, verify_entry
        from flopnet.protocol.envelope import message_id

        prev = head[1]
        linked = []
        for e in rest:
            data = make_entry(v, NETWORK, head[0] + 1 + e.seq, prev, e.kind, e.body, e.timestamp)
            linked.append(verify_entry(data, NETWORK))
            prev = message_id(data)
        for i in range(0, len(linked), 10_000):
            source._insert_all(linked[i : i + 10_000], NETWORK)
        total = source.head(signer)
        assert total is not None
        entry_bytes, state_bytes = latest_checkpoint(source, signer) or (b"", b"")

        full = LedgerStore(tmp / "full.db")
        (n_full, bytes_full), full_wall, full_cpu = _timed(
            lambda: _ingest(full, source, signer, 0, allowed)
        )
        assert full.head(signer) == total
        joined = LedgerStore(tmp / "joined.db")

        def join() -> tuple[int, int]:
            adopt_checkpoint(joined, entry_bytes, state_bytes, NETWORK, allowed)
            n, size = _ingest(joined, source, signer, seq + 1, allowed)
            return n + 1, size + len(entry_bytes) + len(state_bytes)

        (n_cp, bytes_cp), cp_join_wall, cp_join_cpu = _timed(join)
        assert joined.head(signer) == total
        totals = "SELECT contributor, hi * 4294967296 + lo, accepted FROM credit_totals ORDER BY 1"
        same = (
            full.connection.execute(totals).fetchall()
            == joined.connection.execute(totals).fetchall()
        )
    result = {
        "benchmark": "join",
        "machine": machine(),
        "started": started,
        "finished": stamp(),
        "entries": total[0] + 1,
        "contributors": 5000,
        "span_days": SPAN_DAYS,
        "tail_days": args.tail_days,
        "build_seconds": round(build_wall, 1),
        "checkpoint_append_seconds": round(cp_wall, 2),
        "checkpoint_state_bytes": len(state),
        "full": {
            "entries": n_full,
            "bytes": bytes_full,
            "wall_s": round(full_wall, 1),
            "cpu_s": round(full_cpu, 1),
        },
        "checkpoint": {
            "entries": n_cp,
            "bytes": bytes_cp,
            "wall_s": round(cp_join_wall, 1),
            "cpu_s": round(cp_join_cpu, 1),
        },
        "same_sums": same,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
