"""Prompt formatting for DeepSeek-R1 style reasoning traces (the SYNTHETIC-1 workflow)."""

from __future__ import annotations

from flopnet.node.model.tokenizer import ASSISTANT, THINK_OPEN, USER, Tokenizer
from flopnet.protocol.errors import ConfigError

# The instruction texts per task type and language live with the tasks
# (``flopnet.node.tasks.prompts``): a task decides its user message, the template wraps it.

# The prompt ends inside the reasoning block, so a response is judged as if it began with this.
RESPONSE_PREFIX = f"{THINK_OPEN}\n"


def uses_chat_template(model: str) -> bool:
    """Whether ``model``'s prompts are its own chat template (the trained chat models), rather
    than R1's prompt format (the seeded models and R1-family Hub models)."""
    from flopnet.node.model.trained import TRAINED_MODELS

    entry = TRAINED_MODELS.get(model)
    return entry is not None and entry.chat


def response_for_verifier(generated_text: str, model: str = "") -> str:
    """The full assistant response: the ``<think>`` opened by the prompt, then the generation.

    Without it a response that never closes its reasoning would be read as a final answer. A chat
    model's prompt opens no reasoning block (unless its registry entry says it does): its
    response is the generation alone.
    """
    from flopnet.node.model.trained import TRAINED_MODELS

    entry = TRAINED_MODELS.get(model)
    if entry is not None and not entry.reasoning:
        return generated_text
    return RESPONSE_PREFIX + generated_text


def user_message(problem: str, directive: str) -> str:
    """The user's turn: the problem, then the task type's instruction."""
    return f"{problem}\n{directive}" if directive else problem


def encode_prompt(
    tokenizer: Tokenizer, model: str, problem: str, *, directive: str | None = None
) -> list[int]:
    """The prompt token ids of one task for the network's ``model``: the model's chat template
    around the user message for chat models, R1's format (with BOS) otherwise (``directive``:
    the math instruction unless given)."""
    directive = math_directive() if directive is None else directive
    if uses_chat_template(model):
        chat = getattr(tokenizer, "chat_prompt_ids", None)
        if chat is None:
            raise ConfigError(f"the tokenizer of {model!r} cannot apply a chat template")
        ids: list[int] = chat(user_message(problem, directive))
        return ids
    return tokenizer.encode(format_r1_prompt(problem, directive=directive), add_bos=True)


def math_directive() -> str:
    """The default instruction (imported here: the GPU check loads this module without the
    task package, whose wire codec needs msgpack)."""
    from flopnet.node.tasks.prompts import MATH_DIRECTIVE

    return MATH_DIRECTIVE


def format_r1_prompt(problem: str, *, directive: str | None = None) -> str:
    """One-turn R1 chat prompt, as R1's chat template renders it with ``add_generation_prompt``.

    The template's leading ``{{bos_token}}`` is left to the tokenizer
    (``encode(..., add_bos=True)``) so that the string carries no tokenizer-specific BOS text.
    The ``<think>\\n`` suffix is what the updated R1 template appends to force the reasoning
    block to open.
    """
    directive = math_directive() if directive is None else directive
    return f"{USER}{user_message(problem, directive)}{ASSISTANT}{RESPONSE_PREFIX}"
