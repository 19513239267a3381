"""LLM judge: an OpenAI-compatible chat endpoint scores the answer 0–100 against the reference.

The judge sees the question, the reference answer and only the response's final answer (not its
reasoning), and must reply with a JSON object ``{"score": N}``; a bare number after the word
"score" is accepted too. The score is divided by 100; ``passed`` means at least ``threshold``.
Endpoint failures (refused connection, HTTP error, no score in the reply) give a zero result with
``error`` set: the answer was not judged. Runs in a pool child like every verifier, over a
synchronous httpx client.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from flopnet.protocol.errors import VerifierError
from flopnet.verifiers.extract import final_answer_region
from flopnet.verifiers.result import Result

SYSTEM_PROMPT = (
    "You are a strict grader. Compare the RESPONSE with the REFERENCE ANSWER to the QUESTION. "
    "Judge only whether the response's final answer is correct and complete with respect to the "
    "reference; ignore style. Reply with a JSON object and nothing else: "
    '{"score": <integer from 0 to 100>} where 100 means fully equivalent to the reference and 0 '
    "means wrong or missing."
)
MAX_FIELD_CHARS = 20_000
_SCORE_RE = re.compile(r"score\W{0,5}(\d{1,3}(?:\.\d+)?)", re.IGNORECASE)


def _field(task: Mapping[str, object], keys: tuple[str, ...], what: str) -> str:
    for key in keys:
        value = task.get(key)
        if isinstance(value, str) and value.strip():
            return value
    raise VerifierError(f"judge task has no {what} (one of: {', '.join(keys)})")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + "\n[...cut]"


def build_messages(question: str, reference: str, answer: str) -> list[dict[str, str]]:
    """The chat messages sent to the judge."""
    user = (
        f"QUESTION:\n{_clip(question)}\n\nREFERENCE ANSWER:\n{_clip(reference)}\n\n"
        f"RESPONSE:\n{_clip(answer)}"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_score(reply: str) -> float | None:
    """The 0–100 score in a judge reply (after any think block), or None."""
    text = final_answer_region(reply) or reply
    decoder = json.JSONDecoder()
    pos = text.find("{")
    while pos >= 0:
        try:
            value, _ = decoder.raw_decode(text, pos)
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("score"), (int, float)):
            score = float(value["score"])
            return score if 0.0 <= score <= 100.0 else None
        pos = text.find("{", pos + 1)
    found = _SCORE_RE.findall(text)
    if found:
        score = float(found[-1])
        return score if 0.0 <= score <= 100.0 else None
    return None


def check_judge(
    task: Mapping[str, object],
    response: str,
    *,
    url: str,
    model: str,
    api_key: str | None = None,
    threshold: float = 0.5,
    timeout_s: float = 60.0,
) -> Result:
    """Ask the judge at ``url`` (an OpenAI-compatible base URL, e.g. ``http://host:8000/v1``)."""
    import httpx

    question = _field(task, ("question", "problem", "prompt"), "question")
    reference = _field(task, ("gold", "reference", "answer"), "reference answer")
    answer = final_answer_region(response)
    if answer is None:
        return Result(0.0, False, ("unfinished <think> block: no final answer",))
    if not answer.strip():
        return Result(0.0, False, ("empty final answer",))
    body: dict[str, Any] = {
        "model": model,
        "messages": build_messages(question, reference, answer),
        "temperature": 0.0,
        "max_tokens": 1024,
    }
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    endpoint = url.rstrip("/") + "/chat/completions"
    try:
        with httpx.Client(timeout=timeout_s) as client:
            reply = client.post(endpoint, json=body, headers=headers)
        reply.raise_for_status()
        content = reply.json()["choices"][0]["message"]["content"]
    except httpx.HTTPStatusError as exc:
        return Result.failure(f"judge: HTTP {exc.response.status_code} from {endpoint}")
    except httpx.HTTPError as exc:
        return Result.failure(f"judge: {type(exc).__name__} talking to {endpoint}: {exc}")
    except (ValueError, KeyError, IndexError, TypeError):
        return Result.failure(f"judge: malformed reply from {endpoint}")
    if not isinstance(content, str):
        return Result.failure("judge: reply content is not text")
    raw = parse_score(content)
    if raw is None:
        return Result.failure(f"judge: no 0-100 score in the reply {content[:120]!r}")
    score = raw / 100.0
    passed = score >= threshold
    return Result(score, passed, (f"judge {model} scored {raw:g}/100 (pass at {threshold:g})",))
