"""The record every verifier returns: a score in [0, 1], a pass flag, reasons, an optional error,
and the outcome of the rule checks (format, repetition, truncation) reported with every verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flopnet.protocol.errors import VerifierError


@dataclass(frozen=True)
class Result:
    """Outcome of one verification.

    ``error`` is set when the verifier could not judge the answer (timeout, crashed child); such a
    result always has ``score == 0`` and ``passed is False`` so that callers that only look at the
    score never credit it.
    """

    score: float
    passed: bool
    reasons: tuple[str, ...] = ()
    error: str | None = None
    #: (rule name, ok) pairs from :mod:`verifiers.rules`; informational unless a policy gates.
    rules: tuple[tuple[str, bool], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.score, (int, float)) or isinstance(self.score, bool):
            raise VerifierError(f"score must be a number, got {type(self.score).__name__}")
        if math.isnan(self.score) or not 0.0 <= self.score <= 1.0:
            raise VerifierError(f"score must lie in [0, 1], got {self.score!r}")
        if not isinstance(self.passed, bool):
            raise VerifierError("passed must be a bool")
        # Accept a list for convenience but store a tuple so the record stays hashable.
        object.__setattr__(self, "reasons", tuple(str(r) for r in self.reasons))
        object.__setattr__(self, "score", float(self.score))
        rules = tuple((str(name), bool(ok)) for name, ok in self.rules)
        object.__setattr__(self, "rules", rules)

    @classmethod
    def failure(cls, error: str, *reasons: str) -> Result:
        """A zero-score result for an answer that could not be judged."""
        return cls(score=0.0, passed=False, reasons=reasons or (error,), error=error)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (msgpack/JSON friendly)."""
        return {
            "score": self.score,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "error": self.error,
            "rules": dict(self.rules),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """Inverse of :meth:`to_dict`; raises VerifierError on a malformed dict."""
        if not isinstance(data, dict):
            raise VerifierError("result must be a dict")
        try:
            reasons = data.get("reasons", ())
            error = data.get("error")
            if not isinstance(reasons, (list, tuple)) or not all(
                isinstance(r, str) for r in reasons
            ):
                raise VerifierError("reasons must be a list of strings")
            if error is not None and not isinstance(error, str):
                raise VerifierError("error must be a string or None")
            rules = data.get("rules", {})
            if not isinstance(rules, dict) or not all(
                isinstance(k, str) and isinstance(v, bool) for k, v in rules.items()
            ):
                raise VerifierError("rules must map names to booleans")
            return cls(
                score=data["score"],
                passed=data["passed"],
                reasons=tuple(reasons),
                error=error,
                rules=tuple(rules.items()),
            )
        except KeyError as exc:
            raise VerifierError(f"result dict lacks {exc.args[0]!r}") from None
