"""Math answer checking with math-verify.

math-verify bounds its work with ``signal.alarm`` (whole seconds, main thread only) and some
inputs run past the alarm, so :func:`check_math` is meant to run in the main thread of a
:class:`verifiers.pool.VerifierPool` child, never in a thread of the node. ``math_verify`` (and
sympy behind it) is imported lazily so that importing this module stays cheap.

Answer extraction is deliberately stricter than math-verify's own:

* only the text after the last ``</think>`` counts (a draft inside the think block never does);
* by default the answer must be in ``\\boxed{...}``; the last box (or the last run of boxes
  joined by commas/"and"/"or", which math-verify merges into a set) is the answer;
* an unfinished last ``\\boxed{`` (truncated output) is reported, never replaced by an earlier box;
* known math-verify mistakes (e-notation, ordinal suffixes, absolute tolerance on tiny numbers)
  are corrected by :mod:`verifiers.math_fixes`.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from flopnet.protocol.errors import VerifierError
from flopnet.verifiers.extract import THINK_CLOSE, THINK_OPEN, final_answer_region
from flopnet.verifiers.math_fixes import numeric_override, rewrite_answer
from flopnet.verifiers.result import Result

__all__ = ["THINK_CLOSE", "THINK_OPEN", "check_math", "final_answer_region", "normalize_gold"]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# What may separate boxes that together form one answer ("\boxed{1}, \boxed{2}").
_BOX_GAP_RE = re.compile(
    r"^(?:\s|\$|\\[()\[\]]|\\quad|\\qquad|,|;|\band\b|\bor\b|\\text\{\s*(?:and|or)\s*\})*$"
)
_PLAIN_NUMBER_RE = re.compile(r"^[+-]?\d{1,40}(?:\.\d{1,40})?$")
# An unescaped $ (escaped \$ is a currency sign inside a gold such as \$18.90).
_DOLLAR_RE = re.compile(r"(?<!\\)\$")
_MAX_SHOWN = 200

Gold = str | int | float | Sequence[str]


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _match_brace(text: str, open_pos: int) -> int:
    """Index just past the ``}`` closing the ``{`` at ``open_pos``, or -1 if it never closes."""
    depth = 0
    i = open_pos
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # \{ and \} are literal braces, not grouping
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def find_boxes(text: str) -> tuple[list[tuple[int, int, str]], bool]:
    """Top-level ``\\boxed{...}`` spans as (start, end, content), and whether one is unfinished.

    An unbalanced box runs to the end of the text, so it can only be the last one.
    """
    boxes: list[tuple[int, int, str]] = []
    pos = 0
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            return boxes, False
        end = _match_brace(text, m.end() - 1)
        if end < 0:
            return boxes, True
        boxes.append((m.start(), end, text[m.end() : end - 1]))
        pos = end


def _last_box_chain(text: str, boxes: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """The last box plus the boxes right before it that are only separated by , / and / or."""
    chain = [boxes[-1]]
    for prev in reversed(boxes[:-1]):
        if not _BOX_GAP_RE.match(text[prev[1] : chain[0][0]]):
            break
        chain.insert(0, prev)
    return chain


def normalize_gold(gold: str | int | float) -> str:
    """A gold answer as a boxed LaTeX string math-verify can parse.

    DeepScaleR golds come as floats (``27.0``), ``$...$``-wrapped LaTeX, or strings with trailing
    newlines; a bare gold such as ``\\sqrt{2}`` parses to nothing unless it is boxed.
    """
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise VerifierError(f"gold answer must be a string or number, got {type(gold).__name__}")
    if isinstance(gold, float) and not math.isfinite(gold):
        raise VerifierError(f"gold answer is not finite: {gold!r}")
    text = str(gold).strip()
    text = _DOLLAR_RE.sub("", text)
    text = text.strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right):
            text = text[len(left) : -len(right)].strip()
    if not text:
        raise VerifierError("empty gold answer")
    boxes, unfinished = find_boxes(text)
    if unfinished:
        raise VerifierError(f"gold answer has an unbalanced \\boxed: {_short(text)!r}")
    if boxes:
        return ", ".join(text[s:e] for s, e, _ in _last_box_chain(text, boxes))
    if _match_brace("{" + text + "}", 0) != len(text) + 2:
        raise VerifierError(f"gold answer has unbalanced braces: {_short(text)!r}")
    return "\\boxed{" + text + "}"


def _config() -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # boxed_match_priority=0: a \boxed{} wins over any other LaTeX/expression in the text.
    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


class _Timeout(Exception):
    """math-verify's own (SIGALRM) timeout fired."""


def _parse(text: str, timeout_s: int) -> list[Any]:
    from math_verify import parse
    from math_verify.errors import TimeoutException

    try:
        return list(
            parse(text, extraction_config=_config(), parsing_timeout=timeout_s, raise_on_error=True)
        )
    except TimeoutException:
        raise _Timeout("parse") from None
    except Exception:
        # Unparsable LaTeX is a wrong answer, not a verifier failure.
        return []


@functools.lru_cache(maxsize=4096)
def _parse_gold(boxed_gold: str, timeout_s: int) -> tuple[Any, ...]:
    # Validators check many samples of the same problem; sympy objects are immutable, so cache.
    try:
        parsed = _parse(boxed_gold, timeout_s)
    except _Timeout:
        raise VerifierError(f"gold answer parse timed out: {_short(boxed_gold)!r}") from None
    if not parsed:
        raise VerifierError(f"gold answer does not parse: {_short(boxed_gold)!r}")
    return tuple(parsed)


def _verify(gold: list[Any], answer: list[Any], timeout_s: int) -> bool:
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        return bool(verify(gold, answer, timeout_seconds=timeout_s, raise_on_error=True))
    except TimeoutException:
        raise _Timeout("verify") from None
    except Exception:
        # With raise_on_error=True one failing pair aborts the whole comparison; rerun leniently
        # so the remaining pairs (e.g. the string forms) still get compared.
        return bool(verify(gold, answer, timeout_seconds=timeout_s, raise_on_error=False))


def _shown(parsed: Sequence[Any]) -> str:
    # parse() returns [sympy_expr, extracted_string]; the string is what a human wants to read.
    for item in reversed(parsed):
        if isinstance(item, str):
            return _short(item)
    return _short(str(parsed[0])) if parsed else ""


def _plain_number(boxed: str) -> Decimal | None:
    """The value of ``\\boxed{27}``-like text that is one box holding only a decimal number."""
    boxes, unfinished = find_boxes(boxed)
    if unfinished or len(boxes) != 1 or boxed.strip() != boxed[boxes[0][0] : boxes[0][1]]:
        return None
    content = boxes[0][2].replace(" ", "")
    return Decimal(content) if _PLAIN_NUMBER_RE.match(content) else None


def _compare_plain_numbers(answer_text: str, golds: list[str]) -> Result | None:
    """A verdict without math-verify when the answer and golds are plain numbers, else None.

    math-verify's LaTeX parser costs milliseconds per new string; most answers (AIME, AMC, most
    of MATH) are integers. Equal values pass; unequal values fail only when every value is an
    integer (``27.0`` counts): a differing decimal may still be accepted by math-verify's rounding.
    """
    answer = _plain_number(answer_text)
    if answer is None:
        return None
    values = [_plain_number(g) for g in golds]
    for gold_text, value in zip(golds, values, strict=True):
        if value is not None and value == answer:
            return Result(1.0, True, (f"answer {_short(answer_text)!r} equals gold {gold_text!r}",))
    integers = [v for v in (answer, *values) if v is not None and v == v.to_integral_value()]
    if len(integers) == len(golds) + 1:
        shown = " | ".join(_short(g) for g in golds)
        return Result(
            0.0, False, (f"answer {_short(answer_text)!r} does not match gold {shown!r}",)
        )
    return None


def _gold_list(gold: Gold) -> list[str | int | float]:
    if isinstance(gold, (str, int, float)):
        return [gold]
    if isinstance(gold, Sequence) and gold:
        return list(gold)
    raise VerifierError("empty gold answer")


def check_math(
    response: str,
    gold: Gold,
    *,
    require_boxed: bool = True,
    timeout_s: int = 5,
) -> Result:
    """Judge ``response`` against ``gold``; score 1.0 when math-verify finds them equivalent.

    ``gold`` may be a string, a number (AMC's ``27.0``) or a list of acceptable alternatives
    (Minerva); any alternative that matches passes. ``timeout_s`` is math-verify's per-step
    SIGALRM budget (rounded up to whole seconds). Raises VerifierError for an unusable gold (empty,
    unparsable): that is the task's fault, not the answer's. A math-verify timeout on the answer
    gives a zero result with ``error`` set.
    """
    if threading.current_thread() is not threading.main_thread():
        # math-verify's SIGALRM timeouts would fail with ValueError, which its lenient mode turns
        # into "nothing parsed": a silent wrong verdict.
        raise VerifierError("check_math must run in a process's main thread (use VerifierPool)")
    if not isinstance(response, str):
        raise VerifierError(f"response must be a string, got {type(response).__name__}")
    secs = max(1, math.ceil(timeout_s))  # a float alarm silently disables math-verify's checks
    golds = [normalize_gold(g) for g in _gold_list(gold)]
    # An unusable gold is reported whatever the response; plain-number golds always parse.
    plain_golds = all(_plain_number(g) is not None for g in golds)
    parsed_golds = None if plain_golds else [_parse_gold(rewrite_answer(g), secs) for g in golds]

    region = final_answer_region(response)
    if region is None:
        return Result(0.0, False, ("unfinished <think> block: no final answer",))
    boxes, unfinished = find_boxes(region)
    if unfinished:
        return Result(0.0, False, ("unfinished last \\boxed (truncated answer)",))
    if boxes:
        answer_text = ", ".join(region[s:e] for s, e, _ in _last_box_chain(region, boxes))
    elif require_boxed:
        return Result(0.0, False, ("no \\boxed answer",))
    else:
        answer_text = region

    fast = _compare_plain_numbers(answer_text, golds)
    if fast is not None:
        return fast
    notes: list[str] = []
    try:
        if parsed_golds is None:
            parsed_golds = [_parse_gold(rewrite_answer(g), secs) for g in golds]
        answer = _parse(rewrite_answer(answer_text), secs)
        if not answer:
            return Result(0.0, False, (f"answer does not parse: {_short(answer_text)!r}",))
        for gold_text, parsed_gold in zip(golds, parsed_golds, strict=True):
            same = _verify(list(parsed_gold), answer, secs)
            same, note = numeric_override(parsed_gold[0], answer[0], same, secs)
            if note:
                notes.append(note)
            if same:
                shown = f"answer {_shown(answer)!r} matches gold {_short(gold_text)!r}"
                return Result(1.0, True, (shown, *notes))
    except _Timeout as exc:
        return Result.failure(f"timeout: math-verify {exc.args[0]} exceeded {secs} s")
    shown_golds = " | ".join(_short(g) for g in golds)
    shown = f"answer {_shown(answer)!r} does not match gold {shown_golds!r}"
    return Result(0.0, False, (shown, *notes))


def warm_up() -> None:
    """Import math-verify, sympy and the LaTeX parser and run one check (pool child warm-up)."""
    check_math("\\boxed{\\frac{1}{2}}", "0.5")
