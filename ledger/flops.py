"""FLOP formulas: how much computation a checked sample is credited with.

Every number is computed by the validator from the model and the token counts it checked itself,
never taken from the worker, with exact integers; the formula's version name travels with every
number (``CreditBody.flop_formula``) so credits from different formulas are never silently mixed.
"""

from __future__ import annotations

from collections.abc import Callable

from protocol.errors import LedgerError

# The skeleton's approximation: 2 FLOPs per parameter per token processed (prompt and output).
# A per-architecture formula (attention term, MoE active parameters) replaces it in a later issue.
FLOP_FORMULA = "2NT-v0"


def _count(name: str, value: int) -> int:
    # bool is an int subclass; True tokens is a bug, not a count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise LedgerError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise LedgerError(f"{name} must be non-negative, got {value}")
    return value


def skeleton_flops(n_params: int, prompt_tokens: int, generated_tokens: int) -> int:
    """FLOPs by ``2NT-v0``: 2 × n_params × (prompt_tokens + generated_tokens), exactly."""
    n = _count("n_params", n_params)
    p = _count("prompt_tokens", prompt_tokens)
    g = _count("generated_tokens", generated_tokens)
    return 2 * n * (p + g)


FORMULAS: dict[str, Callable[[int, int, int], int]] = {FLOP_FORMULA: skeleton_flops}


def flops_for(formula: str, n_params: int, prompt_tokens: int, generated_tokens: int) -> int:
    """FLOPs by the named formula version (for re-checking a credit entry)."""
    fn = FORMULAS.get(formula)
    if fn is None:
        raise LedgerError(f"unknown FLOP formula {formula!r}; known: {sorted(FORMULAS)}")
    return fn(n_params, prompt_tokens, generated_tokens)
