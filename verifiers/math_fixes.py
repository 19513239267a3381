"""Corrections for math-verify 0.9.0 mistakes that change verdicts.

* ``8.7e8`` is parsed as 8.7·e·8: numbers in e-notation are rewritten to ``8.7\\times10^{8}``
  before parsing.
* ``12^{\\text{th}}`` does not equal 12: ordinal suffixes are dropped.
* Numbers are compared with an absolute tolerance, so ``1/2004!`` "equals" ``1/2006!`` and
  ``10^{-20}`` equals ``2\\cdot10^{-20}``; and ``8.7\\times10^{8}`` does not equal ``870000000``
  (an unevaluated product). When both sides are plain numbers, a relative comparison at 30 digits
  overrides math-verify in both directions, beyond tolerances that keep its decimal rounding
  (``0.333333`` for ``1/3``) intact.

sympy is imported lazily: this runs in verifier pool children only.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator
from typing import Any

# A decimal in e-notation that is not part of a word, a macro name or a longer number.
_ENOTATION_RE = re.compile(r"(?<![\w\\.])(\d+(?:\.\d+)?)[eE]([+-]?\d{1,4})(?![\w.])")
_ORDINAL_RE = re.compile(r"\^\s*\{?\s*\\(?:text|mathrm|textrm)\s*\{\s*(?:st|nd|rd|th)\s*\}\s*\}?")

#: math-verify's acceptance is overruled when the values differ by more than this (relative).
FALSE_ACCEPT_REL = 1e-3
#: math-verify's rejection is overruled when the values agree within this (relative).
FALSE_REJECT_REL = 1e-12


def rewrite_answer(text: str) -> str:
    """The answer text with e-notation spelled as a power of ten and ordinal suffixes removed."""
    text = _ENOTATION_RE.sub(lambda m: f"{m[1]}\\times10^{{{int(m[2])}}}", text)
    return _ORDINAL_RE.sub("", text)


class NumericTimeout(Exception):
    """Numeric evaluation ran past its alarm."""


@contextlib.contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise NumericTimeout

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def relative_difference(gold: Any, answer: Any, timeout_s: int) -> float | None:
    """|gold − answer| / max(|gold|, |answer|) at 30 digits, or None when not two plain nonzero
    numbers (sets, intervals, relations, symbols, strings, zero) or evaluation fails."""
    import sympy

    if not all(isinstance(x, sympy.Expr) and x.is_number for x in (gold, answer)):
        return None
    try:
        with _alarm(timeout_s):
            a = sympy.N(gold, 30)
            b = sympy.N(answer, 30)
            scale = sympy.Max(sympy.Abs(a), sympy.Abs(b))
            if not scale.is_finite or not scale.is_positive or a.has(sympy.zoo, sympy.nan):
                return None
            return float(sympy.N(sympy.Abs(a - b) / scale, 15))
    except (NumericTimeout, TypeError, ValueError, ArithmeticError, RecursionError):
        return None
    except Exception:  # sympy raises many types on odd inputs; a failed check changes nothing
        return None


def numeric_override(
    gold: Any, answer: Any, accepted: bool, timeout_s: int
) -> tuple[bool, str | None]:
    """math-verify's verdict, corrected when both sides are plain numbers; and why, if changed."""
    rel = relative_difference(gold, answer, timeout_s)
    if rel is None:
        return accepted, None
    if accepted and rel > FALSE_ACCEPT_REL:
        return False, f"values differ by {rel:.3g} (relative); math-verify's tolerance overruled"
    if not accepted and rel <= FALSE_REJECT_REL:
        return True, "numerically equal (math-verify's symbolic check missed it)"
    return accepted, None
