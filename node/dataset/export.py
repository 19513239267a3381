"""``flopnet export``: a node's (or a devnet's) checked traces as a dataset on disk.

Reads the traces every validator kept (its inbox database), marks each with where its credit
stands on the most complete ledger found (pending, final, void; the manifest's lock window and
validators), selects a kind (:mod:`flopnet.node.dataset.select`) and writes it as Parquet (with
pyarrow; ``datasets.load_dataset("parquet", data_dir=DIR)`` loads it) or JSON Lines, with a
dataset card (``README.md``: counts per task type, the thresholds, the model, the network and
its ledger heads). Files are written whole and renamed into place. Read-only on the node's
files, so it runs beside a live node.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from flopnet.ledger.chain import signer_name
from flopnet.ledger.policy import DEFAULT_LOCK_WINDOW_S, CreditState, credit_states
from flopnet.ledger.store import LedgerStore
from flopnet.node.dataset.select import (
    REJECTED_BELOW,
    RULES,
    SFT_THRESHOLDS,
    Marked,
    preference_pairs,
    raw_rows,
    sft_rows,
)
from flopnet.node.dataset.shards import default_jobs, remove_stale, write_raw_shards
from flopnet.node.local import INBOX_FILE, best_ledger, find_ledgers, find_manifest
from flopnet.node.validator.traces import Trace, count_traces, read_traces
from flopnet.protocol.errors import ConfigError

KINDS = ("raw", "sft", "preference")
FORMATS = ("parquet", "jsonl")


@dataclass(frozen=True)
class Provenance:
    """Where the traces' credit states were read, as the dataset card tells it."""

    states: dict[tuple[bytes, int], CreditState]  # (validator, ledger seq) -> state
    network_id: str
    model: str
    heads: dict[str, dict[str, object]]
    lock_window: float


@dataclass(frozen=True)
class Collected:
    """Traces marked with their states, and where from."""

    marked: list[Marked]
    provenance: Provenance


def find_trace_files(data_dir: Path) -> list[Path]:
    """Validators' inbox databases in a node's data dir or a devnet's (one level down)."""
    direct = data_dir / INBOX_FILE
    if direct.exists():
        return [direct]
    return sorted(data_dir.glob(f"*/{INBOX_FILE}"))


def collect(data_dir: Path, *, now: float | None = None) -> Collected:
    """Every trace under ``data_dir`` with its credit state (see the module docstring)."""
    trace_files = _trace_files(data_dir)
    traces: dict[str, Trace] = {}
    for path in trace_files:
        for trace in read_traces(path):
            traces[trace.submission_id] = trace
    prov = provenance(data_dir, now=now, first=next(iter(traces.values()), None))
    marked = [Marked.of(trace, prov.states) for trace in traces.values()]
    marked.sort(key=lambda m: m.trace.checked_at)
    return Collected(marked, prov)


def _trace_files(data_dir: Path) -> list[Path]:
    trace_files = find_trace_files(data_dir)
    if not trace_files:
        raise ConfigError(f"no validator's traces under {data_dir} (an inbox.sqlite)")
    return trace_files


def provenance(data_dir: Path, *, now: float | None, first: Trace | None) -> Provenance:
    """The credit state of every credit on the most complete ledger under ``data_dir``, and
    the network, model and heads it was read from (``first``: a trace to name the network and
    model by when no manifest is found)."""
    manifest = find_manifest(data_dir)
    validators: list[bytes] | None = None
    lock_window = DEFAULT_LOCK_WINDOW_S
    network_id = model = ""
    if manifest is not None:
        from flopnet.node.config import NetworkParams

        net = NetworkParams.load(manifest)
        validators = sorted(net.validator_keys) or None
        lock_window, network_id, model = net.lock_window_seconds, net.network_id, net.model
    ledgers = find_ledgers(data_dir)
    if not ledgers:
        raise ConfigError(f"no ledger under {data_dir}: credit states cannot be known")

    def coverage(path: Path) -> int:
        with LedgerStore(path) as store:
            return sum(
                seq + 1
                for s, (seq, _) in store.heads().items()
                if validators is None or s in validators
            )

    with LedgerStore(best_ledger(ledgers, coverage)) as store:
        credits, invalidations = store.policy_records(validators)
        heads = {
            signer.hex(): {"peer_id": signer_name(signer), "seq": seq, "hash": h.hex()}
            for signer, (seq, h) in store.heads().items()
            if validators is None or signer in validators
        }
    states = credit_states(credits, invalidations, time.time() if now is None else now, lock_window)
    return Provenance(
        states,
        network_id or (first.network_id if first is not None else ""),
        model or (first.model if first is not None else ""),
        heads,
        lock_window,
    )


def rows_of(kind: str, marked: Sequence[Marked]) -> list[dict[str, Any]]:
    """The rows of one dataset kind."""
    if kind == "raw":
        return raw_rows(marked)
    if kind == "sft":
        return sft_rows(marked)
    if kind == "preference":
        return preference_pairs(marked)
    raise ConfigError(f"--kind must be one of {', '.join(KINDS)}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_rows(kind: str, rows: list[dict[str, Any]], fmt: str, out: Path) -> Path:
    """Write the rows under ``out/data/``: one Parquet file or one JSON Lines file."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path = data / "train.jsonl"
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        _write_atomic(path, text.encode())
        return path
    if fmt != "parquet":
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
    import pyarrow.parquet as pq

    path = data / "train-00000-of-00001.parquet"
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(_table(kind, rows), tmp, compression="zstd")
    os.replace(tmp, path)
    return path


def _table(kind: str, rows: list[dict[str, Any]]) -> Any:
    """The rows as an Arrow table with the kind's schema (so an empty set still has columns)."""
    import pyarrow as pa

    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    text, number, whole, flag = pa.string(), pa.float64(), pa.int64(), pa.bool_()
    # Trace's annotations are strings (postponed evaluation): its column types by name.
    kinds = {"bool": flag, "int": whole, "float": number, "str": text}
    if kind == "raw":
        columns = [
            (f.name, kinds[str(f.type)])
            for f in fields(Trace)
            if f.name not in ("proof_reasons", "answer_reasons", "rules")
        ]
        columns += [
            ("proof_reasons", pa.list_(text)),
            ("answer_reasons", pa.list_(text)),
            ("rules", pa.struct([(rule, flag) for rule in RULES])),
            ("state", text),
            ("reasoning", text),
            ("answer", text),
        ]
    elif kind == "sft":
        columns = [
            *((name, text) for name in ("task_id", "task_set", "task_type", "language")),
            ("sample_index", whole),
            *((name, text) for name in ("prompt", "reasoning", "answer")),
            ("score", number),
            ("model", text),
            ("messages", message),
            *((name, text) for name in ("submission_id", "contributor", "validator")),
            ("ledger_seq", whole),
        ]
    else:
        columns = [
            *((name, text) for name in ("task_id", "task_type", "prompt")),
            ("chosen", message),
            ("rejected", message),
            ("chosen_score", number),
            ("rejected_score", number),
            ("chosen_submission", text),
            ("rejected_submission", text),
        ]
    # Column by column: several times faster than pa.Table.from_pylist over dicts.
    return pa.table(
        {name: pa.array([row[name] for row in rows], type=kind) for name, kind in columns},
        schema=pa.schema(columns),
    )


def card(
    kind: str,
    fmt: str,
    counts: Counter[str],
    states: Counter[str],
    prov: Provenance,
) -> str:
    """The dataset card: what is in it (rows per task type; the states of the traces it was
    selected from), how it was selected, and where it came from."""
    n_rows, n_traces = sum(counts.values()), sum(states.values())
    pattern = "data/*.parquet" if fmt == "parquet" else "data/*.jsonl"
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {pattern}",
        "---",
        f"# flopnet {kind} dataset",
        "",
        f"Reasoning traces generated and checked on the flopnet network `{prov.network_id}`",
        f"with the model `{prov.model}`: {n_rows} rows, selected from "
        f"{n_traces} checked traces "
        f"({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}).",
        "",
        "| task type | rows |",
        "|---|---|",
        *(f"| {task_type or '(none)'} | {n} |" for task_type, n in sorted(counts.items())),
        "",
        "## Selection",
        "",
    ]
    if kind == "raw":
        lines.append(
            "Every checked trace, marked with `state` (pending, final, void) and `audited`."
        )
    else:
        thresholds = ", ".join(f"{t} {v:g}" for t, v in SFT_THRESHOLDS.items())
        lines += [
            "Only traces whose credit is final and was never voided (a caught cheater's",
            "unaudited outputs are voided by its failed audit). Score thresholds (SYNTHETIC-1):",
            f"{thresholds}.",
            f"Rule filters (AM-DeepSeek-R1): {', '.join(RULES)} must pass.",
        ]
        if kind == "sft":
            lines.append("Exact-duplicate prompts are removed (the best response is kept).")
        else:
            lines.append(
                f"A pair per prompt: the best response at or above the threshold is chosen, the "
                f"worst below {REJECTED_BELOW} rejected."
            )
    if not n_rows:
        lines += [
            "",
            "No row qualified (the datasets loader cannot read an empty file; pyarrow can).",
        ]
    lines += [
        "",
        f"Credit becomes final {prov.lock_window:g} s after it is written, unless voided.",
        "",
        "## Ledger heads the states were read from",
        "",
        "| validator | seq | hash |",
        "|---|---|---|",
        *(f"| {h['peer_id']} | {h['seq']} | `{h['hash']}` |" for h in prov.heads.values()),
        "",
    ]
    return "\n".join(lines)


def export(
    data_dir: Path,
    kind: str,
    fmt: str,
    out: Path,
    *,
    now: float | None = None,
    jobs: int | None = None,
) -> dict[str, Any]:
    """Write one dataset kind of ``data_dir``'s traces to ``out``; a summary of what was written.

    A raw Parquet export of many traces is split between ``jobs`` processes (default: one per
    CPU from 20,000 traces on: :func:`shards.default_jobs`), a file each."""
    if kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}")
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
    if jobs is not None and not 1 <= jobs <= 256:
        raise ConfigError("--jobs must be in 1..256")
    if kind == "raw" and fmt == "parquet":
        paths = _trace_files(data_dir)
        total = sum(count_traces(p) for p in paths)
        if jobs is None:
            jobs = default_jobs(paths, total)
        if jobs > 1 and total > 1:
            return _export_sharded(data_dir, paths, out, now=now, jobs=jobs)
    collected = collect(data_dir, now=now)
    rows = rows_of(kind, collected.marked)
    counts = Counter(str(r.get("task_type", "")) for r in rows)
    states = Counter(m.state.value for m in collected.marked)
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = write_rows(kind, rows, fmt, out)
        remove_stale(out / "data", keep={path})
        text = card(kind, fmt, counts, states, collected.provenance)
        _write_atomic(out / "README.md", text.encode())
    except OSError as exc:
        raise ConfigError(f"cannot write the dataset to {out}: {exc.strerror or exc}") from None
    return {
        "kind": kind,
        "format": fmt,
        "rows": len(rows),
        "traces": len(collected.marked),
        "path": str(path),
        "by_task_type": dict(counts),
    }


def _export_sharded(
    data_dir: Path, paths: list[Path], out: Path, *, now: float | None, jobs: int
) -> dict[str, Any]:
    """The raw Parquet export in ``jobs`` processes (:mod:`flopnet.node.dataset.shards`)."""
    first = next(read_traces(paths[0]), None)
    prov = provenance(data_dir, now=now, first=first)
    try:
        data = out / "data"
        data.mkdir(parents=True, exist_ok=True)
        results = write_raw_shards(paths, prov.states, data, jobs)
        counts: Counter[str] = Counter()
        states: Counter[str] = Counter()
        for r in results:
            counts.update(r.by_task_type)
            states.update(r.states)
        _write_atomic(out / "README.md", card("raw", "parquet", counts, states, prov).encode())
    except OSError as exc:
        raise ConfigError(f"cannot write the dataset to {out}: {exc.strerror or exc}") from None
    return {
        "kind": "raw",
        "format": "parquet",
        "rows": sum(r.rows for r in results),
        "traces": sum(states.values()),
        "path": str(results[0].path),
        "paths": [str(r.path) for r in results],
        "by_task_type": dict(counts),
    }
