"""The raw export split between processes: each writes one Parquet file of a slice of the traces.

A raw export is one row per trace, so it parallelises without any exchange between the parts
(SFT rows and preference pairs do not: exact-duplicate prompts and pairs span the whole set).
The parent reads the credit states from the ledger once and only the (rowid, submission id)
column of each inbox; it cuts the rows into contiguous slices of equal count, drops all but the
last copy of a submission kept by two inboxes (what the one-process export keeps), and each
process reads its slice by rowid, marks it, builds the Arrow columns and compresses its file.
Files are written under temporary names and renamed into place once every part has succeeded.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flopnet.ledger.policy import CreditState
from flopnet.node.dataset.select import Marked, raw_rows
from flopnet.node.validator.traces import COLUMNS, Trace, trace_of
from flopnet.protocol.errors import ConfigError

# Below this many traces one process is as fast as several (starting one costs about 0.4 s).
# Measured: 100,000 traces of 400 tokens, 1.5x faster on two processes; 10,000 R1-length traces
# (20 kB each, 223 MB of inbox) no faster (docs/benchmarks.md), so the count decides, not bytes.
PARALLEL_MIN_TRACES = 20_000
States = Mapping[tuple[bytes, int], CreditState]


@dataclass(frozen=True)
class Part:
    """Rows ``lo``..``hi`` (rowids, inclusive) of one inbox, but those in ``skip``."""

    path: Path
    lo: int
    hi: int
    skip: frozenset[int] = frozenset()


@dataclass(frozen=True)
class ShardResult:
    """What one process wrote: its rows by task type and the states of its traces."""

    path: Path
    rows: int
    by_task_type: Counter[str]
    states: Counter[str]


def _rowids(path: Path) -> list[tuple[int, str]]:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT rowid, submission_id FROM traces ORDER BY rowid").fetchall()
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read traces from {path}: {exc}") from None


def plan(paths: Sequence[Path], jobs: int) -> list[list[Part]]:
    """The inboxes' rows cut into ``jobs`` slices of (nearly) equal count, in file then rowid
    order; a submission kept by two inboxes is read from the later one only."""
    rows = [(path, rowid, sid) for path in paths for rowid, sid in _rowids(path)]
    last = {sid: (path, rowid) for path, rowid, sid in rows}
    skip = {(path, rowid) for path, rowid, sid in rows if last[sid] != (path, rowid)}
    slices: list[list[Part]] = []
    size = max(1, -(-len(rows) // max(1, jobs)))  # no rows: no slices (range needs a step)
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        parts = []
        for path in dict.fromkeys(p for p, _, _ in chunk):
            ids = [rowid for p, rowid, _ in chunk if p == path]
            dropped = frozenset(r for r in ids if (path, r) in skip)
            parts.append(Part(path, ids[0], ids[-1], dropped))
        slices.append(parts)
    return slices


def _read(part: Part) -> list[Trace]:
    columns = ", ".join(COLUMNS)
    out = []
    try:
        with sqlite3.connect(f"file:{part.path}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                f"SELECT rowid, {columns} FROM traces WHERE rowid BETWEEN ? AND ? ORDER BY rowid",
                (part.lo, part.hi),
            )
            for rowid, *values in rows:
                if rowid not in part.skip:
                    out.append(trace_of(values))
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read traces from {part.path}: {exc}") from None
    return out


def write_shard(parts: list[Part], states: States, target: Path) -> ShardResult:
    """Read, mark and write one slice as a Parquet file at ``target`` (in a child process)."""
    import pyarrow.parquet as pq

    from flopnet.node.dataset.export import _table

    traces = [t for part in parts for t in _read(part)]
    traces.sort(key=lambda t: t.checked_at)
    marked = [Marked.of(t, states) for t in traces]
    rows = raw_rows(marked)
    pq.write_table(_table("raw", rows), target, compression="zstd")
    return ShardResult(
        target,
        len(rows),
        Counter(str(r.get("task_type", "")) for r in rows),
        Counter(m.state.value for m in marked),
    )


def write_raw_shards(
    paths: Sequence[Path], states: States, data: Path, jobs: int
) -> list[ShardResult]:
    """The raw export of ``paths`` as ``jobs`` Parquet files under ``data`` (written whole,
    then renamed into place; older ``train-*`` files there are removed)."""
    slices = plan(paths, jobs)
    n = len(slices)
    names = [data / f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    temps = [p.with_name(p.name + ".tmp") for p in names]
    # Spawned, not forked: pyarrow's thread pools do not survive a fork.
    with multiprocessing.get_context("spawn").Pool(min(n, jobs)) as pool:
        results = pool.starmap(
            write_shard, [(parts, states, tmp) for parts, tmp in zip(slices, temps, strict=True)]
        )
    remove_stale(data, keep=set(names))
    for tmp, name in zip(temps, names, strict=True):
        os.replace(tmp, name)
    return [
        ShardResult(name, r.rows, r.by_task_type, r.states)
        for r, name in zip(results, names, strict=True)
    ]


def remove_stale(data: Path, keep: set[Path]) -> None:
    """Remove ``train-*`` files of an earlier export that this one does not write."""
    for old in data.glob("train-*"):
        if old not in keep and not old.name.endswith(".tmp"):
            old.unlink()


def default_jobs(paths: Sequence[Path], traces: int) -> int:
    """Processes for a raw export: one per CPU for a large export, else one."""
    return (os.cpu_count() or 1) if traces >= PARALLEL_MIN_TRACES else 1
