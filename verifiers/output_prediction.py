"""Code output prediction: the predicted output in the final answer must equal the gold output.

The prediction is the ``output`` field (the task may name another) of the last JSON object in the
final answer, as SYNTHETIC-1 asked for it; a draft inside the think block never counts. The match
is exact up to line endings and trailing whitespace at the very end (printed output usually ends
with a newline the JSON string leaves out). A missing field scores 0 with a reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from flopnet.protocol.errors import VerifierError
from flopnet.verifiers.extract import predicted_field
from flopnet.verifiers.result import Result

_SHOWN = 120


def _normal(text: str) -> str:
    return text.replace("\r\n", "\n").rstrip()


def _short(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "...")


def gold_output(task: Mapping[str, object]) -> str:
    """The task's expected output as text; VerifierError when it has none."""
    for key in ("gold", "output", "answer"):
        if key in task and task[key] is not None:
            value = task[key]
            return value if isinstance(value, str) else json.dumps(value)
    raise VerifierError("code output prediction task has no 'gold' output")


def check_output_prediction(
    task: Mapping[str, object], response: str, *, field: str = "output"
) -> Result:
    """Score 1 when the predicted output equals the task's gold output, else 0."""
    if not isinstance(response, str):
        raise VerifierError(f"response must be a string, got {type(response).__name__}")
    gold = gold_output(task)
    predicted, why = predicted_field(response, field)
    if predicted is None:
        return Result(0.0, False, (why,))
    if predicted == gold:
        return Result(1.0, True, (why, "exact match"))
    if _normal(predicted) == _normal(gold):
        return Result(1.0, True, (why, "match up to trailing whitespace"))
    return Result(0.0, False, (why, f"predicted {_short(predicted)}, expected {_short(gold)}"))
