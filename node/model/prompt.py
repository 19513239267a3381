"""Prompt formatting for DeepSeek-R1 style reasoning traces (the SYNTHETIC-1 workflow)."""

from __future__ import annotations

from flopnet.node.model.tokenizer import ASSISTANT, THINK_OPEN, USER
from flopnet.node.tasks.prompts import MATH_DIRECTIVE

# The instruction texts per task type and language live with the tasks
# (``flopnet.node.tasks.prompts``): a task decides its user message, the template wraps it.

# The prompt ends inside the reasoning block, so a response is judged as if it began with this.
RESPONSE_PREFIX = f"{THINK_OPEN}\n"


def response_for_verifier(generated_text: str) -> str:
    """The full assistant response: the ``<think>`` opened by the prompt, then the generation.

    Without it a response that never closes its reasoning would be read as a final answer.
    """
    return RESPONSE_PREFIX + generated_text


def format_r1_prompt(problem: str, *, directive: str = MATH_DIRECTIVE) -> str:
    """One-turn R1 chat prompt, as R1's chat template renders it with ``add_generation_prompt``.

    The template's leading ``{{bos_token}}`` is left to the tokenizer
    (``encode(..., add_bos=True)``) so that the string carries no tokenizer-specific BOS text.
    The ``<think>\\n`` suffix is what the updated R1 template appends to force the reasoning
    block to open.
    """
    user = f"{problem}\n{directive}" if directive else problem
    return f"{USER}{user}{ASSISTANT}{RESPONSE_PREFIX}"
