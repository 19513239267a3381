"""Tokenizers: a deterministic byte-level one for the embedded model, and a Hugging Face adapter.

The byte tokenizer needs no files and no network, so a seeded random-weight model can run
anywhere with bit-identical token ids. Ids 0..255 are raw bytes; the special tokens follow. The
special names are DeepSeek-R1's, so prompts built by :mod:`node.inference.prompt` mean the same to
the embedded model and to a real R1 tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from flopnet.protocol.errors import ConfigError

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Order is part of the embedded model's definition: changing it changes every token id >= 256.
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, USER, ASSISTANT, THINK_OPEN, THINK_CLOSE)

_REPLACEMENT = "\ufffd"


@runtime_checkable
class Tokenizer(Protocol):
    """What the inference backends need from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """Bytes 0..255 plus :data:`SPECIAL_TOKENS`; special strings in text become single ids."""

    def __init__(self) -> None:
        self._special_ids = {tok: 256 + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self._special_by_id = {i: tok for tok, i in self._special_ids.items()}
        # Longest first, so one special that is a prefix of another can never split it.
        ordered = sorted(SPECIAL_TOKENS, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in ordered) + ")")

    @property
    def vocab_size(self) -> int:
        return 256 + len(SPECIAL_TOKENS)

    @property
    def eos_id(self) -> int:
        return self._special_ids[EOS]

    @property
    def bos_id(self) -> int:
        return self._special_ids[BOS]

    @property
    def pad_id(self) -> int:
        return self._special_ids[PAD]

    def special_id(self, token: str) -> int:
        """The id of one special token string."""
        try:
            return self._special_ids[token]
        except KeyError:
            raise ConfigError(f"not a special token: {token!r}") from None

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """UTF-8 bytes of ``text``, with special-token strings mapped to their single ids."""
        ids: list[int] = [self.bos_id] if add_bos else []
        for part in self._split.split(text):
            if not part:
                continue
            special = self._special_ids.get(part)
            if special is not None:
                ids.append(special)
            else:
                # errors="replace" only matters for lone surrogates; never raise on user text.
                ids.extend(part.encode("utf-8", errors="replace"))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Inverse of :meth:`encode`; bad UTF-8 and unknown ids become U+FFFD, never an error."""
        out: list[str] = []
        run = bytearray()
        for raw in ids:
            i = int(raw)
            if 0 <= i < 256:
                run.append(i)
                continue
            if run:
                out.append(run.decode("utf-8", errors="replace"))
                run.clear()
            out.append(self._special_by_id.get(i, _REPLACEMENT))
        if run:
            out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


class HFTokenizer:
    """Adapter giving a Hugging Face ``AutoTokenizer`` the :class:`Tokenizer` interface.

    Only used with real models; loading may read the local cache or the Hub (unless
    ``local_files_only``). Remote code is refused unless explicitly allowed.
    """

    def __init__(
        self,
        name_or_path: str,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
    ) -> None:
        # Imported here so that the byte tokenizer never pulls in transformers.
        from transformers import AutoTokenizer

        if not name_or_path:
            raise ConfigError("tokenizer id or path is empty")
        try:
            self._tok: Any = AutoTokenizer.from_pretrained(
                name_or_path,
                revision=revision,
                trust_remote_code=trust_remote_code,
                local_files_only=local_files_only,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot load tokenizer {name_or_path!r}: {exc}") from exc
        if self._tok.eos_token_id is None:
            raise ConfigError(f"tokenizer {name_or_path!r} has no eos token")

    @property
    def vocab_size(self) -> int:
        # len() counts added tokens; .vocab_size does not.
        return len(self._tok)

    @property
    def eos_id(self) -> int:
        return int(self._tok.eos_token_id)

    @property
    def bos_id(self) -> int | None:
        bos = self._tok.bos_token_id
        return None if bos is None else int(bos)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of ``text``; special-token strings in it are parsed as specials."""
        ids = [int(i) for i in self._tok.encode(text, add_special_tokens=False)]
        if add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens kept."""
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=False))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._tok, "chat_template", None))

    def chat_prompt_ids(self, user_message: str) -> list[int]:
        """Token ids of a one-turn chat (the model's own template, its default system prompt
        included) ending with the assistant's generation prompt."""
        if not self.has_chat_template:
            raise ConfigError("this tokenizer has no chat template")
        out: Any = self._tok.apply_chat_template(
            [{"role": "user", "content": user_message}], add_generation_prompt=True, tokenize=True
        )
        ids = out["input_ids"] if not isinstance(out, list) else out
        return [int(i) for i in ids]


# Names of the seeded random-weight models (node.model.models.SEEDED_MODELS, which imports torch;
# a test keeps the two equal); they use the byte tokenizer.
EMBEDDED_MODELS = frozenset(
    {
        "tiny",
        "small",
        "deepseek-v3-tiny",
        "deepseek-v3-small",
        "qwen2.5-1.5b-shape",
        "qwen2.5-7b-shape",
        "llama3-8b-shape",
        "deepseek-v3-16b-shape",
    }
)


def tokenizer_for_model(model: str) -> Tokenizer:
    """The tokenizer of a network's model: the byte tokenizer for embedded models, the saved one
    of a trained model (node.model.trained), else the Hub's.

    No model is loaded: a publisher-only node tokenises prompts with this alone.
    """
    from flopnet.node.model.trained import TRAINED_MODELS, ensure_tokenizer

    if model in EMBEDDED_MODELS:
        return ByteTokenizer()
    if model in TRAINED_MODELS:
        return HFTokenizer(str(ensure_tokenizer(model)), local_files_only=True)
    return HFTokenizer(model)
