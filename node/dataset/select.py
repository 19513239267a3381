"""Which traces enter which dataset, as pure functions of the traces and their credit states.

The network's point is the dataset: raw traces (every checked one, marked with where its credit
stands), SFT rows (SYNTHETIC-1's score thresholds and the AM-DeepSeek-R1 paper's rule filters)
and preference pairs (one response at or above the threshold, one below 0.6, same prompt).

Only trustworthy traces enter SFT and preference sets: most results are not audited (a 5 % floor
on a real network), so a trace qualifies once its credit is final and was never voided; a caught
cheater's unaudited outputs are voided by its failed audit and never reach them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flopnet.ledger.policy import CreditState
from flopnet.node.validator.traces import Trace
from flopnet.verifiers.extract import THINK_CLOSE, THINK_OPEN

# SYNTHETIC-1's thresholds: the score a response needs to count as correct, per task type.
SFT_THRESHOLDS: Mapping[str, float] = {
    "math": 1.0,
    "code": 0.9,  # of the tests passed
    "llm_judge": 0.9,  # the judge's 0-100 score, scaled
    "code_output_prediction": 1.0,
}
REJECTED_BELOW = 0.6  # a preference pair's rejected response scores under this
# The AM-DeepSeek-R1 paper's rule filters, as the answer verifier names them.
RULES = ("format", "repetition", "truncation")


@dataclass(frozen=True)
class Marked:
    """A trace and where its credit stands (pending, final, void) on the ledger."""

    trace: Trace
    state: CreditState

    @classmethod
    def of(cls, trace: Trace, states: Mapping[tuple[bytes, int], CreditState]) -> Marked:
        """``trace`` with the state of its credit (keyed by validator and ledger seq); a credit
        the ledger does not hold (yet) is not trustworthy: pending."""
        key = (bytes.fromhex(trace.validator), trace.ledger_seq)
        return cls(trace, states.get(key, CreditState.PENDING))

    @property
    def trustworthy(self) -> bool:
        """Credited, final, and never voided."""
        return self.trace.accepted and self.state is CreditState.FINAL


def split_reasoning(response: str) -> tuple[str, str]:
    """(reasoning, answer) of a response: the text inside ``<think>...</think>`` and what
    follows the last ``</think>``; no closing tag means no answer."""
    body = response.removeprefix(THINK_OPEN).lstrip("\n")
    if THINK_CLOSE not in body:
        return body.strip(), ""
    reasoning, _, answer = body.rpartition(THINK_CLOSE)
    return reasoning.strip(), answer.strip()


def threshold(task_type: str) -> float:
    """The score a response of ``task_type`` needs to count as correct."""
    return SFT_THRESHOLDS.get(task_type, 1.0)


def passes_rules(trace: Trace) -> bool:
    """Every rule filter ran and passed (format, repetition, truncation)."""
    flags = trace.rule_flags()
    return all(flags.get(rule) is True for rule in RULES)


def raw_rows(marked: Iterable[Marked]) -> list[dict[str, object]]:
    """Every trace with its state, audit mark and the reasoning and answer split out."""
    rows = []
    for m in marked:
        reasoning, answer = split_reasoning(m.trace.response)
        row = m.trace.as_json()
        row.update(state=m.state.value, reasoning=reasoning, answer=answer)
        rows.append(row)
    return rows


def _message_row(m: Marked) -> dict[str, object]:
    t = m.trace
    reasoning, answer = split_reasoning(t.response)
    return {
        "task_id": t.task_id,
        "task_set": t.task_set,
        "task_type": t.task_type,
        "language": t.language,
        "sample_index": t.sample_index,
        "prompt": t.prompt,
        "reasoning": reasoning,
        "answer": answer,
        "score": t.answer_score,
        "model": t.model,
        "messages": [
            {"role": "user", "content": t.prompt},
            {"role": "assistant", "content": f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n{answer}"},
        ],
        "submission_id": t.submission_id,
        "contributor": t.contributor,
        "validator": t.validator,
        "ledger_seq": t.ledger_seq,
    }


def sft_rows(marked: Iterable[Marked]) -> list[dict[str, object]]:
    """Trustworthy traces at or above their type's threshold that pass every rule filter, one per
    exact prompt (the best score, then the earliest checked)."""
    best: dict[str, Marked] = {}
    for m in marked:
        t = m.trace
        if not (m.trustworthy and t.answer_score >= threshold(t.task_type) and passes_rules(t)):
            continue
        kept = best.get(t.prompt)
        if kept is None or t.answer_score > kept.trace.answer_score:
            best[t.prompt] = m
    return [_message_row(m) for m in best.values()]


def preference_pairs(marked: Iterable[Marked]) -> list[dict[str, object]]:
    """Per prompt, one pair of trustworthy responses: the best at or above the threshold (and
    passing the rules) as chosen, the worst below ``REJECTED_BELOW`` as rejected."""
    by_prompt: dict[str, list[Marked]] = {}
    for m in marked:
        if m.trustworthy:
            by_prompt.setdefault(m.trace.prompt, []).append(m)
    pairs = []
    for prompt, group in by_prompt.items():
        chosen = [
            m
            for m in group
            if m.trace.answer_score >= threshold(m.trace.task_type) and passes_rules(m.trace)
        ]
        rejected = [m for m in group if m.trace.answer_score < REJECTED_BELOW]
        if not chosen or not rejected:
            continue
        win = max(chosen, key=lambda m: m.trace.answer_score)
        lose = min(rejected, key=lambda m: m.trace.answer_score)
        w, lo = _message_row(win), _message_row(lose)
        pairs.append(
            {
                "task_id": win.trace.task_id,
                "task_type": win.trace.task_type,
                "prompt": prompt,
                "chosen": w["messages"],
                "rejected": lo["messages"],
                "chosen_score": win.trace.answer_score,
                "rejected_score": lose.trace.answer_score,
                "chosen_submission": win.trace.submission_id,
                "rejected_submission": lose.trace.submission_id,
            }
        )
    return pairs
