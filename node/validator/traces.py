"""Every checked trace, kept by the validator that checked it: the dataset's raw material.

A trace is one sample as the validator saw it: the task and its set, the sample index, the model
and sampling parameters, the prompt and the output (decoded by the validator itself, never the
worker's text), token counts, FLOPs, the proof's verdict and the answer verifier's score with
every reason and rule flag, who contributed and who validated, the ledger entry that credits it,
and timings. It is written in the validator's inbox database in the same transaction as the
verdict (``Inbox.set_verdict``), so a verdict never exists without its trace. Whether its credit
is pending, final or void is not stored: it is read from the ledger when a dataset is exported.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

from flopnet.node.config import NetworkParams
from flopnet.node.model.prompt import response_for_verifier
from flopnet.node.tasks import Task, task_set_of, user_message
from flopnet.node.validator.judgement import ProofOutcome
from flopnet.protocol.errors import ConfigError
from flopnet.protocol.messages import CreditBody, Lease, Submission
from flopnet.verifiers.result import Result


@dataclass(frozen=True)
class Trace:
    """One checked sample (see the module docstring); JSON-able lists are stored as JSON."""

    submission_id: str  # hex
    task_set: str
    task_id: str
    task_type: str
    sample_index: int
    language: str
    problem: str
    prompt: str  # the user message: problem and instruction
    gold: str
    response: str  # as the validator decoded it, the reasoning block's opening included
    finish_reason: str
    prompt_tokens: int
    output_tokens: int
    model: str
    model_revision: str
    dtype: str
    temperature: float
    top_p: float
    seed: int
    max_new_tokens: int
    flops: int
    flop_formula: str
    audited: bool
    proof_passed: bool
    accepted: bool
    proof_reasons: str  # JSON list
    answer_score: float
    answer_passed: bool
    answer_reasons: str  # JSON list
    rules: str  # JSON object: rule name -> ok
    contributor: str  # hex public key
    validator: str  # hex public key
    network_id: str
    ledger_seq: int
    ledger_hash: str  # hex
    received_at: float
    checked_at: float
    generation_s: float  # the worker's own figure (not verified)
    prefill_s: float
    verify_s: float

    def rule_flags(self) -> dict[str, bool]:
        """The answer verifier's rule checks (format, repetition, truncation)."""
        flags: dict[str, bool] = json.loads(self.rules)
        return flags

    def as_json(self) -> dict[str, Any]:
        """Plain JSON values, the JSON-encoded lists decoded."""
        out = dict(self.__dict__)  # every field (a plain dataclass: no slots)
        for name in ("proof_reasons", "answer_reasons", "rules"):
            out[name] = json.loads(out[name])
        return out


COLUMNS = tuple(f.name for f in fields(Trace))
_BOOL_COLUMNS = tuple(i for i, f in enumerate(fields(Trace)) if f.type == "bool")


# Field annotations are strings here (postponed evaluation): their SQLite column types.
_TYPES = {"int": "INTEGER", "float": "REAL", "str": "TEXT", "bool": "INTEGER"}
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS traces ("
    + ", ".join(
        f"{f.name} {_TYPES[str(f.type)]} NOT NULL"
        + (" PRIMARY KEY" if f.name == "submission_id" else "")
        for f in fields(Trace)
    )
    + ");\nCREATE INDEX IF NOT EXISTS traces_task ON traces (task_id, sample_index);\n"
)
INSERT = (
    f"INSERT OR REPLACE INTO traces ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)})"
)


def row_of(trace: Trace) -> tuple[object, ...]:
    """The trace as a row of the ``traces`` table."""
    return astuple(trace)


def trace_of(row: Sequence[Any]) -> Trace:
    """A row of the ``traces`` table (its :data:`COLUMNS`, in order) as a trace."""
    values = list(row)
    for i in _BOOL_COLUMNS:  # SQLite keeps them as integers
        values[i] = bool(values[i])
    return Trace(*values)


def count_traces(path: Path) -> int:
    """How many traces a validator's inbox database holds (read-only; 0 without the table)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            has_table = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'traces'"
            ).fetchone()
            return (
                0
                if has_table is None
                else int(conn.execute("SELECT count(*) FROM traces").fetchone()[0])
            )
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read traces from {path}: {exc}") from None


def read_traces(path: Path) -> Iterator[Trace]:
    """Every trace in a validator's inbox database, in the order they were checked (read-only:
    an export never writes a node's files, and works while the node runs)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open {path}: {exc}") from None
    try:
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'traces'"
        ).fetchone()
        if has_table is None:
            return
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM traces ORDER BY checked_at")
        for row in rows:
            yield trace_of(row)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read traces from {path}: {exc}") from None
    finally:
        conn.close()


def build_trace(
    *,
    submission_id: bytes,
    task: Task,
    lease: Lease,
    submission: Submission,
    proof: ProofOutcome,
    answer: Result | None,
    credit: CreditBody,
    audited: bool,
    ledger_seq: int,
    ledger_hash: bytes,
    net: NetworkParams,
    validator: bytes,
    received_at: float,
    checked_at: float,
    prefill_s: float = 0.0,
    verify_s: float = 0.0,
) -> Trace:
    """The trace of one judged submission (pure)."""
    rules = {name: ok for name, ok in answer.rules} if answer is not None else {}
    return Trace(
        submission_id=submission_id.hex(),
        task_set=task_set_of(task.task_id),
        task_id=task.task_id,
        task_type=task.task_type,
        sample_index=lease.sample_index,
        language=str(task.verifier.get("language", "")),
        problem=task.problem,
        prompt=user_message(task),
        gold=task.answer,
        response=response_for_verifier(proof.text, net.model),
        finish_reason=submission.finish_reason,
        prompt_tokens=len(lease.prompt_ids),
        output_tokens=len(submission.token_ids),
        model=net.model,
        model_revision=net.model_revision,
        dtype=net.dtype,
        temperature=lease.temperature,
        top_p=lease.top_p,
        seed=lease.seed,
        max_new_tokens=lease.max_new_tokens,
        flops=credit.flops,
        flop_formula=credit.flop_formula,
        audited=audited,
        proof_passed=proof.passed,
        accepted=credit.accepted,
        proof_reasons=json.dumps(list(proof.reasons)),
        answer_score=float(answer.score) if answer is not None else 0.0,
        answer_passed=bool(answer.passed) if answer is not None else False,
        answer_reasons=json.dumps(list(answer.reasons) if answer is not None else []),
        rules=json.dumps(rules),
        contributor=credit.contributor.hex(),
        validator=validator.hex(),
        network_id=net.network_id,
        ledger_seq=ledger_seq,
        ledger_hash=ledger_hash.hex(),
        received_at=received_at,
        checked_at=checked_at,
        generation_s=float(submission.generation_seconds),
        prefill_s=prefill_s,
        verify_s=verify_s,
    )
