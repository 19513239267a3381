"""Rule checks reported with every verdict: think/answer format, n-gram repetition, truncation.

They label the trace (SFT filters use them); they change a verdict only under the ``rules_gate``
policy. Pure, linear-time string work (no backtracking regular expressions): they run in the
verifier's pool child after the check, and in the caller when the job could not finish, so even
a verdict that timed out carries them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from flopnet.verifiers.extract import THINK_CLOSE, THINK_OPEN, code_blocks, final_answer_region
from flopnet.verifiers.math_verifier import find_boxes
from flopnet.verifiers.result import Result

#: Word n-gram length for the repetition check.
NGRAM = 10
#: Share of repeated n-grams over the whole response, and over its last TAIL_WORDS words,
#: above which the response counts as degenerate repetition (a looping model).
MAX_REPEATED = 0.3
MAX_REPEATED_TAIL = 0.5
TAIL_WORDS = 1000


@dataclass(frozen=True)
class RuleCheck:
    """One rule's outcome with a short detail for humans."""

    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name} {'ok' if self.ok else 'FAILED'} ({self.detail})"


def check_format(response: str) -> RuleCheck:
    """One reasoning block closed by ``</think>`` (its opening tag may be in the prompt), then a
    non-empty final answer."""
    closes = response.count(THINK_CLOSE)
    opens = response.count(THINK_OPEN)
    if closes == 0:
        return RuleCheck("format", False, "no </think>: the reasoning never ends")
    if closes > 1 or opens > 1:
        return RuleCheck("format", False, f"{opens} <think> and {closes} </think> tags")
    if opens == 1 and response.find(THINK_OPEN) > response.find(THINK_CLOSE):
        return RuleCheck("format", False, "<think> after </think>")
    region = final_answer_region(response) or ""
    if not region.strip():
        return RuleCheck("format", False, "empty final answer after </think>")
    return RuleCheck("format", True, "think block then answer")


def repeated_share(words: list[str], n: int = NGRAM) -> float:
    """Share of the word n-grams of ``words`` that already occurred earlier (0 = no repeats)."""
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    # zip over shifted lists builds the n-grams in C (shorter lists end it: strict=False).
    unique = len(set(zip(*(words[i:] for i in range(n)), strict=False)))
    return (total - unique) / total


def check_repetition(response: str) -> RuleCheck:
    """Degenerate repetition: many repeated word 10-grams overall or in the tail."""
    words = response.split()
    whole = repeated_share(words)
    tail = repeated_share(words[-TAIL_WORDS:])
    ok = whole <= MAX_REPEATED and tail <= MAX_REPEATED_TAIL
    return RuleCheck("repetition", ok, f"{NGRAM}-gram repeats {whole:.0%}, tail {tail:.0%}")


def check_truncation(
    response: str, response_tokens: int | None = None, max_tokens: int | None = None
) -> RuleCheck:
    """Truncated at max tokens when the counts say so; otherwise from the text's loose ends."""
    if response_tokens is not None and max_tokens is not None and response_tokens >= max_tokens:
        return RuleCheck("truncation", False, f"{response_tokens} tokens hit max {max_tokens}")
    region = final_answer_region(response)
    if region is None:
        return RuleCheck("truncation", False, "the think block never closes")
    if code_blocks(region)[1]:
        return RuleCheck("truncation", False, "an unclosed code block at the end")
    if find_boxes(region)[1]:
        return RuleCheck("truncation", False, "an unfinished \\boxed at the end")
    counted = f"{response_tokens} of {max_tokens} tokens" if max_tokens else "no loose ends"
    return RuleCheck("truncation", True, counted)


def run_rules(
    response: str, *, response_tokens: int | None = None, max_tokens: int | None = None
) -> tuple[RuleCheck, ...]:
    """Every rule check of one response."""
    if not isinstance(response, str):
        response = ""
    return (
        check_format(response),
        check_repetition(response),
        check_truncation(response, response_tokens, max_tokens),
    )


def attach_rules(result: Result, checks: tuple[RuleCheck, ...], *, gate: bool = False) -> Result:
    """``result`` with the rule outcomes attached; with ``gate`` a failed rule fails the answer."""
    summary = "rules: " + "; ".join(str(c) for c in checks)
    result = replace(
        result, reasons=(*result.reasons, summary), rules=tuple((c.name, c.ok) for c in checks)
    )
    failed = [c.name for c in checks if not c.ok]
    if gate and failed and result.passed:
        reason = f"rejected by the rules gate: {', '.join(failed)}"
        result = replace(result, score=0.0, passed=False, reasons=(*result.reasons, reason))
    return result
