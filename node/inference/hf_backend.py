"""The embedded inference backend: Hugging Face transformers, batch 1, on any device.

The worker side (:meth:`HFBackend.generate`) decodes with a KV cache and captures, through a
forward hook on the final norm, the post-norm hidden state whose LM-head logits sampled each
token; those states feed the TOPLOC proofs. The validator side (:meth:`HFBackend.prefill`) runs one
forward pass over prompt + output and returns the same positions' states and logits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from node.inference.models import ModelSpec, build_model
from node.inference.tokenizer import Tokenizer
from proof.sampling import SamplingParams, sample_token
from protocol.errors import ConfigError

FinishReason = Literal["eos", "length"]

# Rows of logits computed per LM-head call in prefill; bounds the transient memory.
_LOGITS_CHUNK = 512


@dataclass
class Generation:
    """One generation. ``hidden`` row ``i`` is the state whose logits sampled ``token_ids[i]``."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    hidden: torch.Tensor  # bf16 [G, hidden_size]
    prefill_s: float
    decode_s: float

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput (tokens after the first, over decode time)."""
        n = len(self.token_ids) - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


@dataclass
class Prefill:
    """States and logits of the positions that produced ``output_ids``, from one forward pass."""

    hidden: torch.Tensor  # bf16 [G, hidden_size]
    logits: torch.Tensor  # float32 [G, vocab]
    elapsed_s: float


class _NormCapture:
    """Forward hook on the final norm keeping its latest output (post-norm, pre-LM-head)."""

    def __init__(self) -> None:
        self.out: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.out = output[0] if isinstance(output, tuple) else output

    def take(self) -> torch.Tensor:
        if self.out is None:
            raise RuntimeError("final-norm hook did not fire")
        out, self.out = self.out, None
        return out


def _final_norm(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", None)
    norm = getattr(inner, "norm", None)
    if not isinstance(norm, nn.Module):
        raise ConfigError(f"{type(model).__name__} has no model.norm to capture hidden states from")
    return norm


def _lm_head(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    if not isinstance(head, nn.Module):
        raise ConfigError(f"{type(model).__name__} has no output embeddings (LM head)")
    return head


class HFBackend:
    """A model built from a :class:`ModelSpec`, with seeded generation and validator prefill."""

    def __init__(
        self, spec: ModelSpec, *, device: str = "cpu", num_threads: int | None = None
    ) -> None:
        if num_threads is not None:
            if num_threads < 1:
                raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
            # Process-wide: this process exists to run the model.
            torch.set_num_threads(num_threads)
        self.spec = spec
        self.device = torch.device(device)
        model, tokenizer = build_model(spec)
        self.model: nn.Module = model.to(self.device)
        self.tokenizer: Tokenizer = tokenizer
        self._norm = _final_norm(self.model)
        self._head = _lm_head(self.model)
        cfg: Any = getattr(self.model, "config", None)
        self.hidden_size = int(cfg.hidden_size)
        self.vocab_size = int(cfg.vocab_size)
        self.eos_id = tokenizer.eos_id

    @contextmanager
    def _capture(self) -> Iterator[_NormCapture]:
        cap = _NormCapture()
        handle = self._norm.register_forward_hook(cap)
        try:
            yield cap
        finally:
            handle.remove()

    def _ids(self, ids: Sequence[int]) -> torch.Tensor:
        t = torch.tensor([int(i) for i in ids], dtype=torch.long, device=self.device)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.vocab_size):
            raise ConfigError(f"token ids must be in [0, {self.vocab_size})")
        return t.unsqueeze(0)

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        seed: int,
        params: SamplingParams,
        max_new_tokens: int,
    ) -> Generation:
        """Decode up to ``max_new_tokens`` tokens with the seeded sampler; stops after eos.

        Token ``i`` is sampled by ``sample_token(logits, seed, i, params)``. An eos token is kept in
        ``token_ids`` (it is a proven position) but left out of ``text``.
        """
        if not prompt_ids:
            raise ConfigError("prompt is empty")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        input_ids = self._ids(prompt_ids)
        dtype = next(self.model.parameters()).dtype
        hidden = torch.empty((max_new_tokens, self.hidden_size), dtype=dtype, device=self.device)
        tokens: list[int] = []
        finish: FinishReason = "length"
        with torch.inference_mode(), self._capture() as cap:
            t0 = time.perf_counter()
            out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
            t1 = time.perf_counter()
            past = out.past_key_values
            for i in range(max_new_tokens):
                hidden[i] = cap.take()[0, -1]
                tok = sample_token(out.logits[0, -1].float().cpu(), seed, i, params)
                tokens.append(tok)
                if tok == self.eos_id:
                    finish = "eos"
                    break
                if i + 1 == max_new_tokens:
                    break
                step = torch.tensor([[tok]], dtype=torch.long, device=self.device)
                out = self.model(input_ids=step, past_key_values=past, use_cache=True)
                past = out.past_key_values
            t2 = time.perf_counter()
        g = len(tokens)
        text_ids = tokens[:-1] if finish == "eos" else tokens
        return Generation(
            token_ids=tokens,
            text=self.tokenizer.decode(text_ids),
            finish_reason=finish,
            # copy=True: a compact tensor, not a view of the max_new_tokens buffer.
            hidden=hidden[:g].to(device="cpu", dtype=torch.bfloat16, copy=True),
            prefill_s=t1 - t0,
            decode_s=t2 - t1,
        )

    def prefill(self, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> Prefill:
        """One forward pass over prompt + output (no KV-cache decode), as a validator re-computes.

        Returns, for each output token, the post-norm state that predicted it and its logits. The
        last output token is never an input (nothing is predicted from it), so the pass covers
        ``len(prompt) + len(output) - 1`` positions.
        """
        if not prompt_ids:
            raise ConfigError("prompt is empty")
        p, g = len(prompt_ids), len(output_ids)
        if g == 0:
            return Prefill(
                hidden=torch.empty((0, self.hidden_size), dtype=torch.bfloat16),
                logits=torch.empty((0, self.vocab_size), dtype=torch.float32),
                elapsed_s=0.0,
            )
        input_ids = self._ids([*prompt_ids, *output_ids[:-1]])
        self._ids(output_ids[-1:])  # range check of the one id not fed in
        # Allocated outside inference mode so callers get ordinary tensors they may modify.
        logits = torch.empty((g, self.vocab_size), dtype=torch.float32)
        t0 = time.perf_counter()
        with torch.inference_mode(), self._capture() as cap:
            # logits_to_keep=1: logits are computed below only for the rows that need them.
            self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
            states = cap.take()[0, p - 1 : p - 1 + g]
            for lo in range(0, g, _LOGITS_CHUNK):
                hi = min(g, lo + _LOGITS_CHUNK)
                logits[lo:hi] = self._head(states[lo:hi]).float().cpu()
        return Prefill(
            hidden=states.to(device="cpu", dtype=torch.bfloat16, copy=True),
            logits=logits,
            elapsed_s=time.perf_counter() - t0,
        )
