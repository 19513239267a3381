"""Pure text helpers: the final answer after the think block, code blocks, predicted outputs.

Only the text after the last ``</think>`` is an answer: a draft inside the reasoning never counts.
Everything here is linear-time string work with no regular expression that can backtrack badly,
so it is safe to run on untrusted responses in the node's own process.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from flopnet.protocol.errors import VerifierError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

#: Fence tags per language (lower case); an untagged fence matches any language.
LANGUAGE_TAGS: dict[str, tuple[str, ...]] = {
    "python": ("python", "py", "python3"),
    "javascript": ("javascript", "js", "node", "nodejs"),
    "cpp": ("cpp", "c++", "cc", "cxx"),
    "rust": ("rust", "rs"),
}
_TAG_TO_LANGUAGE = {tag: lang for lang, tags in LANGUAGE_TAGS.items() for tag in tags}

# A fence opens at the start of a line with ``` (or more) and an optional info string.
_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\n`]*)$", re.MULTILINE)


def final_answer_region(response: str) -> str | None:
    """Text after the last ``</think>``; None when a ``<think>`` block never closes."""
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        return response[close + len(THINK_CLOSE) :]
    if THINK_OPEN in response:
        return None
    return response


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block: its language (None when untagged or unknown) and its text."""

    language: str | None
    tag: str
    code: str


def code_blocks(text: str) -> tuple[list[CodeBlock], bool]:
    """Fenced blocks in order, and whether the last fence was left open (a truncated answer)."""
    blocks: list[CodeBlock] = []
    fences = list(_FENCE_RE.finditer(text))
    i = 0
    while i < len(fences):
        opening = fences[i]
        marker = opening.group(1)
        # The closing fence uses the same character, at least as long, with no info string.
        j = i + 1
        while j < len(fences):
            cand = fences[j]
            same = cand.group(1)[0] == marker[0] and len(cand.group(1)) >= len(marker)
            if same and not cand.group(2).strip():
                break
            j += 1
        if j >= len(fences):
            return blocks, True
        tag = opening.group(2).strip().split()[0].lower() if opening.group(2).strip() else ""
        body = text[opening.end() + 1 : fences[j].start()]
        blocks.append(CodeBlock(_TAG_TO_LANGUAGE.get(tag), tag, body))
        i = j + 1
    return blocks, False


def extract_code(
    response: str, language: str | None = None, *, require_fence: bool = True
) -> tuple[CodeBlock | None, str]:
    """The answer's code: the last fenced block (of ``language`` when given) after the think block.

    Returns (block, reason); block is None when there is no usable code, and reason says why.
    Untagged blocks count as any language, but only when no tagged block fits.
    ``require_fence=False`` takes a fence-less final answer as code in ``language`` (default
    python).
    """
    region = final_answer_region(response)
    if region is None:
        return None, "unfinished <think> block: no final answer"
    blocks, unclosed = code_blocks(region)
    if unclosed:
        return None, "unclosed code block in the final answer (truncated output)"
    # A tagged block of the right language wins over an untagged one, which is often sample
    # output shown after the solution.
    tagged = [b for b in blocks if b.language and (language is None or b.language == language)]
    untagged = [b for b in blocks if not b.tag]
    if tagged or untagged:
        block = tagged[-1] if tagged else untagged[-1]
        if block.language is None:
            block = CodeBlock(language or "python", block.tag, block.code)
        return block, f"code: last {block.language} block of {len(blocks)} in the final answer"
    if blocks:
        tags = ", ".join(sorted({b.tag or "untagged" for b in blocks}))
        want = language or "a supported language"
        return None, f"no code block in {want} in the final answer (found: {tags})"
    if not require_fence and region.strip():
        return CodeBlock(language or "python", "", region), "code: the whole final answer"
    return None, "no code block in the final answer"


def _json_objects(text: str) -> list[dict[str, object]]:
    """Every JSON object embedded in ``text`` (outermost ones), in order."""
    decoder = json.JSONDecoder()
    found: list[dict[str, object]] = []
    pos = text.find("{")
    while pos >= 0:
        try:
            value, end = decoder.raw_decode(text, pos)
        except ValueError:
            pos = text.find("{", pos + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        pos = text.find("{", end)
    return found


def predicted_field(response: str, field: str = "output") -> tuple[str | None, str]:
    """The ``field`` of the last JSON object in the final answer that has it, as a string.

    Returns (value, reason); value None means missing. Non-string values are turned back into
    JSON text (a prediction of ``[1, 2]`` compares as the text ``[1, 2]``).
    """
    if not isinstance(field, str) or not field:
        raise VerifierError("output field name must be a non-empty string")
    region = final_answer_region(response)
    if region is None:
        return None, "unfinished <think> block: no final answer"
    objects = [o for o in _json_objects(region) if field in o]
    if not objects:
        return None, f"no JSON object with an {field!r} field in the final answer"
    value = objects[-1][field]
    if isinstance(value, str):
        return value, f"prediction from the last JSON object's {field!r} field"
    return json.dumps(value), f"prediction from the last JSON object's {field!r} field (non-string)"
