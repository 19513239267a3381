"""The worker's task board: every lease it holds, the stage it is at, and how it ended.

Pure (callers pass ``now``); the API's ``/tasks`` and the TUI's Tasks screen read it, and each
change is handed to ``on_change`` (the daemon publishes it as a ``task`` event). Stages, in
order: ``claimed`` (a lease is held), ``generating`` (the model process decodes and builds the
proofs: on a GPU the proofs are built during decoding, on a CPU after it; the record keeps the
two times the model process measured), ``submitting``, ``submitted`` (the validator's receipt
came back), then one end: ``verdict`` (accepted or rejected), ``released`` (handed back
unfinished, e.g. paused) or ``failed`` (an error; the lease lapses).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

STAGES = (
    "claimed",
    "generating",
    "proving",
    "submitting",
    "submitted",
    "verdict",
    "released",
    "failed",
)
IN_FLIGHT = frozenset({"claimed", "generating", "proving", "submitting", "submitted"})
# Before "submitting" nothing has left the worker: such a lease may still be handed back.
RELEASABLE = frozenset({"claimed", "generating", "proving"})
KEEP_FINISHED = 200
MAX_TEXT_KEPT = 64 * 1024


@dataclass
class TaskEntry:
    """One lease on the board (ids as hex, peers as peer ids)."""

    lease_id: str
    task_id: str
    task_type: str
    sample_index: int
    publisher: str
    validator: str
    claimed_at: float
    expires_at: float
    prompt_ids: tuple[int, ...] = ()
    stage: str = "claimed"
    history: list[tuple[str, float]] = field(default_factory=list)
    output: str = ""
    tokens: int = 0
    proofs: int = 0
    finish_reason: str = ""
    decode_s: float = 0.0
    proof_s: float = 0.0
    submission_id: str = ""
    queue_position: int | None = None
    accepted: bool | None = None
    reasons: tuple[str, ...] = ()
    answer_score: float | None = None
    flops: int = 0
    ledger_seq: int | None = None
    note: str = ""

    def summary(self) -> dict[str, Any]:
        """The row of the Tasks table (no texts)."""
        return {
            "lease_id": self.lease_id,
            "task_id": self.task_id,
            "task_type": self.task_type,
            "sample_index": self.sample_index,
            "stage": self.stage,
            "since": self.history[-1][1] if self.history else self.claimed_at,
            "claimed_at": self.claimed_at,
            "expires_at": self.expires_at,
            "tokens": self.tokens,
            "accepted": self.accepted,
            "flops": self.flops,
            "validator": self.validator,
            "note": self.note,
        }

    def detail(self) -> dict[str, Any]:
        """Everything known of the lease (the prompt as token ids: the API decodes them)."""
        return {
            **self.summary(),
            "publisher": self.publisher,
            "history": [{"stage": s, "at": at} for s, at in self.history],
            "prompt_tokens": len(self.prompt_ids),
            "output": self.output,
            "proofs": self.proofs,
            "finish_reason": self.finish_reason,
            "decode_s": round(self.decode_s, 3),
            "proof_s": round(self.proof_s, 3),
            "submission_id": self.submission_id,
            "queue_position": self.queue_position,
            "reasons": list(self.reasons),
            "answer_score": self.answer_score,
            "ledger_seq": self.ledger_seq,
        }


class TaskBoard:
    """Leases in flight and the last finished ones, by lease id."""

    def __init__(
        self,
        on_change: Callable[[TaskEntry], None] | None = None,
        keep_finished: int = KEEP_FINISHED,
    ) -> None:
        self._entries: OrderedDict[str, TaskEntry] = OrderedDict()
        self._keep = keep_finished
        self.on_change = on_change
        self.counts: dict[str, int] = dict.fromkeys(STAGES, 0)  # stage entries, all time

    def claimed(self, entry: TaskEntry) -> TaskEntry:
        entry.stage = "claimed"
        entry.history = [("claimed", entry.claimed_at)]
        self._entries[entry.lease_id] = entry
        self.counts["claimed"] += 1
        self._changed(entry)
        return entry

    def get(self, lease_id: str) -> TaskEntry | None:
        return self._entries.get(lease_id)

    def move(self, lease_id: str, stage: str, now: float, **fields: Any) -> TaskEntry | None:
        """Put a lease at ``stage`` (with any fields learnt); an unknown lease is ignored."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        entry = self._entries.get(lease_id)
        if entry is None:
            return None
        for name, value in fields.items():
            if name == "output" and isinstance(value, str):
                value = value[:MAX_TEXT_KEPT]
            setattr(entry, name, value)
        entry.stage = stage
        entry.history.append((stage, now))
        self.counts[stage] += 1
        if stage not in IN_FLIGHT:
            self._entries.move_to_end(lease_id)
            self._trim()
        self._changed(entry)
        return entry

    def streamed(self, lease_id: str, tokens: int, text: str) -> TaskEntry | None:
        """A generating lease's output grew (the model process streams it): ``text`` is
        appended, ``tokens`` is the count so far. The stage stays; the change is published."""
        entry = self._entries.get(lease_id)
        if entry is None or entry.stage != "generating":
            return None  # a late delta after the sample was handed over, or a dropped lease
        room = MAX_TEXT_KEPT - len(entry.output)
        if room > 0:
            entry.output += text[:room]
        entry.tokens = tokens
        self._changed(entry)
        return entry

    def generated(
        self,
        lease_id: str,
        now: float,
        *,
        output: str,
        tokens: int,
        proofs: int,
        finish_reason: str,
        decode_s: float,
        proof_s: float,
    ) -> TaskEntry | None:
        """The model process finished a lease's sample: the proving time it measured is put in
        the history where it ended (``now``), and the lease moves on to ``submitting``."""
        entry = self._entries.get(lease_id)
        if entry is None:
            return None
        entry.history.append(("proving", now - proof_s))
        self.counts["proving"] += 1
        return self.move(
            lease_id,
            "submitting",
            now,
            output=output,
            tokens=tokens,
            proofs=proofs,
            finish_reason=finish_reason,
            decode_s=decode_s,
            proof_s=proof_s,
        )

    def _trim(self) -> None:
        finished = [k for k, e in self._entries.items() if e.stage not in IN_FLIGHT]
        for key in finished[: max(0, len(finished) - self._keep)]:
            del self._entries[key]

    def _changed(self, entry: TaskEntry) -> None:
        if self.on_change is not None:
            self.on_change(entry)

    def entries(self, stages: Iterable[str] | None = None) -> list[TaskEntry]:
        """Entries (at ``stages``), newest first."""
        wanted = None if stages is None else frozenset(stages)
        out = [e for e in self._entries.values() if wanted is None or e.stage in wanted]
        return sorted(out, key=lambda e: e.claimed_at, reverse=True)

    def in_flight(self) -> list[TaskEntry]:
        return self.entries(IN_FLIGHT)

    def releasable(self) -> list[TaskEntry]:
        return self.entries(RELEASABLE)

    def by_stage(self) -> dict[str, int]:
        """How many leases are at each stage now (finished ones as kept)."""
        out = dict.fromkeys(STAGES, 0)
        for entry in self._entries.values():
            out[entry.stage] += 1
        return out
