"""How long a new node takes to join a validator's chain of 10^6 entries: verifying every entry
from the first one, against verifying a checkpoint and then only the entries after it.

    .venv/bin/python benchmarks/join_bench.py [--entries 1000000] [--tail-days 7]
    .venv/bin/python benchmarks/join_bench.py --network --tail-days 7.5

The chain spans 60 days with 5,000 contributors; the validator appends a checkpoint ``tail-days``
before its head (what a joining node needs after it: the lock window's pending credit and the
7-day leaderboard). Both joins run the real store (``ingest_range`` in ranges of 2,048, the sync
default; ``adopt_checkpoint``), reading the served entries from the validator's store. Writes
``benchmarks/results/join.json`` with wall and CPU seconds and bytes fetched.

``--network`` joins over libp2p instead: a replica process (``flopnet ledger replicate``) holds
the chain and serves it on 127.0.0.1, and a new replica process joins it, once as a default node
does (a checkpoint at least a week old over ``/flopnet/ledger-checkpoint/1.0.0``, then ranges)
and once with ``--full-history``; timed from its start to its last entry stored, with its CPU
seconds from /proc. A validator checkpointing daily leaves its newest week-old checkpoint 7 to 8
days back: ``--tail-days 7.5`` is the average case. Writes ``join_network.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from ledger_bench import DAY, build_chain, contributors, machine, stamp, validators  # noqa: E402

from flopnet.ledger.joining import adopt_checkpoint, append_checkpoint, latest_checkpoint  # noqa: E402
from flopnet.ledger.store import LedgerStore, peek_head  # noqa: E402

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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def join_over_network(
    tmp: Path, server_dir: Path, manifest: Path, signer: bytes, head: int, full: bool, network: str
) -> dict[str, Any]:
    """A replica process joining the chain served by the replica in ``server_dir``."""
    from flopnet.node.replica import replica_command

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        replica_command(server_dir, manifest), cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    joiner = None
    try:
        assert server.stdout is not None
        addr = json.loads(server.stdout.readline())["addrs"][0]
        name = "full" if full else "checkpoint"
        db = tmp / name / "ledger.sqlite"
        command = replica_command(tmp / name, manifest, (addr,), full_history=full)
        started = time.perf_counter()
        joiner = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        while peek_head(db, signer) < head:
            if joiner.poll() is not None:
                raise RuntimeError(f"the joining replica exited with {joiner.returncode}")
            if time.perf_counter() - started > 3600:
                raise RuntimeError("the join did not finish within an hour")
            time.sleep(0.2)
        wall = time.perf_counter() - started
        cpu = _cpu_seconds(joiner.pid)
    finally:
        for proc in (joiner, server):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    with LedgerStore(db) as copy:
        from flopnet.ledger.joining import anchor

        entries, size = copy.connection.execute(
            "SELECT count(*), sum(length(envelope)) FROM entries WHERE signer = ?", (signer,)
        ).fetchone()
        state = copy.connection.execute(
            "SELECT coalesce(sum(length(state)), 0) FROM checkpoints c JOIN anchors a "
            "ON a.signer = c.signer AND a.seq = c.seq"
        ).fetchone()[0]
        problems = copy.verify_all(network)
        joined_at = anchor(copy, signer)
        totals = copy.connection.execute(TOTALS).fetchall()
    return {
        "entries": int(entries),
        "bytes": int(size) + int(state),
        "joined_at_seq": None if joined_at is None else joined_at[0],
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "verify_problems": len(problems),
        "_totals": totals,
    }


TOTALS = "SELECT contributor, hi * 4294967296 + lo, accepted FROM credit_totals ORDER BY 1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--tail-days", type=float, default=7.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--network", action="store_true", help="join over libp2p (processes)")
    args = parser.parse_args()
    results = ROOT / "benchmarks" / "results"
    args.out = args.out or results / ("join_network.json" if args.network else "join.json")
    v = validators(1)[0]
    signer = v.public_key
    started = stamp()
    with tempfile.TemporaryDirectory(prefix="flopnet-join-") as tmp_dir:
        tmp = Path(tmp_dir)
        network = NETWORK
        if args.network:
            from flopnet.node.config import NetworkParams, create_network

            net = create_network(
                validators(2)[1],
                "joinbench",
                NetworkParams(network_id="assigned", validators=(signer.hex(),)),
                tmp / "network.manifest",
            )
            network = net.network_id
        (tmp / "server").mkdir()
        now = time.time()
        start = now - SPAN_DAYS * DAY
        cut = round(args.entries * (1 - args.tail_days / SPAN_DAYS))
        built, build_wall, _ = _timed(
            lambda: build_chain(
                v, network, cut, start, SPAN_DAYS * DAY * cut / args.entries, contributors(5000), 1
            )
        )
        source = LedgerStore(tmp / "server" / "ledger.sqlite")
        for i in range(0, len(built), 10_000):
            source._insert_all(built[i : i + 10_000], network)
        del built
        (seq, state), cp_wall, _ = _timed(
            lambda: append_checkpoint(
                source, v, network, now=start + SPAN_DAYS * DAY * cut / args.entries
            )
        )
        # The entries after the checkpoint: the same chain, continued.
        tail_count = args.entries - cut - 1
        head = source.head(signer)
        assert head is not None
        cut_ts = start + SPAN_DAYS * DAY * cut / args.entries
        rest = build_chain(v, network, tail_count, cut_ts, now - cut_ts, contributors(5000), 2)
        # build_chain starts at genesis; re-link the continuation after the checkpoint entry.
        from flopnet.ledger.chain import make_entry, verify_entry
        from flopnet.protocol.envelope import message_id

        prev = head[1]
        linked = []
        for e in rest:
            data = make_entry(v, network, head[0] + 1 + e.seq, prev, e.kind, e.body, e.timestamp)
            linked.append(verify_entry(data, network))
            prev = message_id(data)
        for i in range(0, len(linked), 10_000):
            source._insert_all(linked[i : i + 10_000], network)
        total = source.head(signer)
        assert total is not None
        entry_bytes, state_bytes = latest_checkpoint(source, signer) or (b"", b"")

        if args.network:
            source.close()
            runs = {
                name: join_over_network(
                    tmp, tmp / "server", tmp / "network.manifest", signer, total[0], full, network
                )
                for name, full in (("checkpoint", False), ("full", True))
            }
            totals = [run.pop("_totals") for run in runs.values()]
            result = {
                **_header("join_network", started, total[0] + 1, args.tail_days),
                "checkpoint_seq": seq,
                "checkpoint_state_bytes": len(state),
                **runs,
                "same_sums": totals[0] == totals[1],
            }
            _write(args.out, result)
            return
        allowed = {signer}
        full = LedgerStore(tmp / "full.db")
        (n_full, bytes_full), full_wall, full_cpu = _timed(
            lambda: _ingest(full, source, signer, 0, allowed)
        )
        assert full.head(signer) == total
        joined = LedgerStore(tmp / "joined.db")

        def join() -> tuple[int, int]:
            adopt_checkpoint(joined, entry_bytes, state_bytes, network, allowed)
            n, size = _ingest(joined, source, signer, seq + 1, allowed)
            return n + 1, size + len(entry_bytes) + len(state_bytes)

        (n_cp, bytes_cp), cp_join_wall, cp_join_cpu = _timed(join)
        assert joined.head(signer) == total
        same = (
            full.connection.execute(TOTALS).fetchall()
            == joined.connection.execute(TOTALS).fetchall()
        )
    result = {
        **_header("join", started, total[0] + 1, args.tail_days),
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
    _write(args.out, result)


def _header(name: str, started: dict[str, Any], entries: int, tail_days: float) -> dict[str, Any]:
    """What both kinds of run record first: the benchmark, the machine, the chain."""
    return {
        "benchmark": name,
        "machine": machine(),
        "started": started,
        "finished": stamp(),
        "entries": entries,
        "contributors": 5000,
        "span_days": SPAN_DAYS,
        "tail_days": tail_days,
    }


def _write(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
