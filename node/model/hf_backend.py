"""The embedded inference backend: Hugging Face transformers, batch 1 or batched, on any device.

The worker side (:meth:`HFBackend.generate`) decodes with a KV cache and captures, through a
forward hook on the final norm, the post-norm hidden state whose LM-head logits sampled each
token; those states feed the TOPLOC proofs. The validator side (:meth:`HFBackend.prefill`) runs one
forward pass over prompt + output and returns the same positions' states and logits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from flopnet.node.model.models import ModelSpec, build_model
from flopnet.node.model.tokenizer import Tokenizer
from flopnet.proof.params import CHUNK
from flopnet.proof.sampling import SamplingParams, sample_token
from flopnet.protocol.errors import ConfigError

FinishReason = Literal["eos", "length"]

# Rows of logits computed per LM-head call in prefill; bounds the transient memory.
_LOGITS_CHUNK = 512
# Rows per TOPLOC proof: ``on_chunk`` hands over each full chunk of states as soon as it exists.
PROOF_CHUNK = CHUNK

# (row of the batch, chunk index, bf16 states [PROOF_CHUNK, hidden]) -> None
ChunkCallback = Callable[[int, int, torch.Tensor], None]
# (row of the batch, the token just sampled) -> None
TokenCallback = Callable[[int, int], None]


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


@dataclass(frozen=True)
class GenerationRequest:
    """One row of :meth:`HFBackend.generate_batch`: what :meth:`HFBackend.generate` takes."""

    prompt_ids: Sequence[int]
    seed: int
    params: SamplingParams
    max_new_tokens: int


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


def _chunk_states(hidden: torch.Tensor, last: int) -> torch.Tensor:
    """The bf16 CPU copy of the chunk of states that ends at row ``last``."""
    return hidden[last + 1 - PROOF_CHUNK : last + 1].to(
        device="cpu", dtype=torch.bfloat16, copy=True
    )


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

    # Its generate calls take ``on_token`` (the vLLM backend hands over whole samples only).
    streams_tokens = True

    def __init__(
        self,
        spec: ModelSpec,
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        attn_implementation: str | None = None,
        experts_implementation: str | None = None,
    ) -> None:
        if num_threads is not None:
            if num_threads < 1:
                raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
            # Process-wide: this process exists to run the model.
            torch.set_num_threads(num_threads)
        model, tokenizer = build_model(
            spec,
            attn_implementation=attn_implementation,
            experts_implementation=experts_implementation,
        )
        self._attach(spec, model, tokenizer, device)

    @classmethod
    def from_model(
        cls, spec: ModelSpec, model: nn.Module, tokenizer: Tokenizer, *, device: str = "cpu"
    ) -> HFBackend:
        """A backend around a model built elsewhere (benchmarks/gpu_check.py builds large shapes
        on the GPU and hands the validator an exact CPU copy)."""
        backend = cls.__new__(cls)
        backend._attach(spec, model.eval().requires_grad_(False), tokenizer, device)
        return backend

    def _attach(self, spec: ModelSpec, model: nn.Module, tokenizer: Tokenizer, device: str) -> None:
        self.spec = spec
        self.device = torch.device(device)
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
        on_chunk: ChunkCallback | None = None,
        on_token: TokenCallback | None = None,
    ) -> Generation:
        """Decode up to ``max_new_tokens`` tokens with the seeded sampler; stops after eos.

        Token ``i`` is sampled by ``sample_token(logits, seed, i, params)``. An eos token is kept in
        ``token_ids`` (it is a proven position) but left out of ``text``. ``on_chunk`` receives
        each full chunk of :data:`PROOF_CHUNK` states while decoding continues (proofs can be
        built meanwhile, off the decoding thread); the last, partial chunk is left to the caller.
        ``on_token(0, token)`` sees each token as it is sampled (the output streams to the TUI).
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
                if on_chunk is not None and (i + 1) % PROOF_CHUNK == 0:
                    on_chunk(0, i // PROOF_CHUNK, _chunk_states(hidden, i))
                tok = sample_token(out.logits[0, -1].float().cpu(), seed, i, params)
                tokens.append(tok)
                if on_token is not None:
                    on_token(0, tok)
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

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_chunk: ChunkCallback | None = None,
        on_token: TokenCallback | None = None,
    ) -> list[Generation]:
        """Decode several requests together, each as :meth:`generate` would on its own.

        Prompts are left-padded under an attention mask, with each row's own position ids, so
        row ``b``'s token ``i`` is ``sample_token(logits, seed_b, i, params_b)`` as in
        :meth:`generate`. Batching changes the arithmetic (bf16 kernels reduce in other orders),
        so states and, at near-ties, tokens may differ slightly from batch 1: the proof check
        must tolerate that. Finished rows keep running (masked) until the last row stops; timings
        are the batch's.
        """
        if not requests:
            return []
        for req in requests:
            if not req.prompt_ids:
                raise ConfigError("prompt is empty")
            if req.max_new_tokens < 1:
                raise ConfigError(f"max_new_tokens must be >= 1, got {req.max_new_tokens}")
        rows = [self._ids(req.prompt_ids)[0] for req in requests]
        b, width = len(rows), max(len(r) for r in rows)
        # Any valid id serves as padding: padded positions are masked out of every attention.
        input_ids = torch.zeros((b, width), dtype=torch.long, device=self.device)
        mask = torch.zeros((b, width), dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            input_ids[i, width - len(r) :] = r
            mask[i, width - len(r) :] = 1
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long, device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        limit = max(req.max_new_tokens for req in requests)
        dtype = next(self.model.parameters()).dtype
        hidden = torch.empty((b, limit, self.hidden_size), dtype=dtype, device=self.device)
        tokens: list[list[int]] = [[] for _ in requests]
        finish: list[FinishReason] = ["length"] * b
        active = [True] * b
        with torch.inference_mode(), self._capture() as cap:
            t0 = time.perf_counter()
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
            )
            t1 = time.perf_counter()
            for i in range(limit):
                states = cap.take()[:, -1]
                logits = out.logits[:, -1].float().cpu()
                step = torch.zeros((b, 1), dtype=torch.long, device=self.device)
                for row, req in enumerate(requests):
                    if not active[row]:
                        continue
                    hidden[row, i] = states[row]
                    if on_chunk is not None and (i + 1) % PROOF_CHUNK == 0:
                        on_chunk(row, i // PROOF_CHUNK, _chunk_states(hidden[row], i))
                    tok = sample_token(logits[row], req.seed, i, req.params)
                    tokens[row].append(tok)
                    if on_token is not None:
                        on_token(row, tok)
                    step[row, 0] = tok
                    if tok == self.eos_id:
                        finish[row] = "eos"
                        active[row] = False
                    elif i + 1 == req.max_new_tokens:
                        active[row] = False
                if not any(active):
                    break
                keep = torch.tensor(active, dtype=torch.long, device=self.device)[:, None]
                mask = torch.cat([mask, keep], dim=1)
                out = self.model(
                    input_ids=step,
                    attention_mask=mask,
                    position_ids=(lengths + i)[:, None],
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )
            t2 = time.perf_counter()
        results = []
        for row, toks in enumerate(tokens):
            text_ids = toks[:-1] if finish[row] == "eos" else toks
            results.append(
                Generation(
                    token_ids=toks,
                    text=self.tokenizer.decode(text_ids),
                    finish_reason=finish[row],
                    hidden=hidden[row, : len(toks)].to(
                        device="cpu", dtype=torch.bfloat16, copy=True
                    ),
                    prefill_s=t1 - t0,
                    decode_s=t2 - t1,
                )
            )
        return results

    @contextmanager
    def at_precision(self, precision: str) -> Iterator[None]:
        """Run the block with every lower-precision weight and buffer upcast to ``precision``
        ("float32"), then put each back in its own dtype. bf16 and fp16 values are exact in
        fp32, so the round trip changes no weight: later checks are what they were."""
        target = getattr(torch, precision, None)
        if not isinstance(target, torch.dtype) or not target.is_floating_point:
            raise ConfigError(f"unknown precision {precision!r}")
        tensors = [*self.model.parameters(), *self.model.buffers()]
        was = [t.dtype for t in tensors]
        try:
            for t in tensors:
                if t.is_floating_point() and t.element_size() < target.itemsize:
                    t.data = t.data.to(target)
            yield
        finally:
            for t, dtype in zip(tensors, was, strict=True):
                if t.dtype != dtype:
                    t.data = t.data.to(dtype)

    def prefill(
        self,
        prompt_ids: Sequence[int],
        output_ids: Sequence[int],
        *,
        on_logits: Callable[[int, torch.Tensor], None] | None = None,
    ) -> Prefill:
        """One forward pass over prompt + output (no KV-cache decode), as a validator re-computes.

        Returns, for each output token, the post-norm state that predicted it and its logits. The
        last output token is never an input (nothing is predicted from it), so the pass covers
        ``len(prompt) + len(output) - 1`` positions. With ``on_logits`` the logits are handed over
        in chunks of rows, ``on_logits(first_row, float32 logits)``, and not kept
        (``Prefill.logits`` is empty): a 32k-token output never holds 32k x vocabulary floats.
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
        logits = torch.empty((0 if on_logits else g, self.vocab_size), dtype=torch.float32)
        t0 = time.perf_counter()
        with torch.inference_mode(), self._capture() as cap:
            # logits_to_keep=1: logits are computed below only for the rows that need them.
            self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
            states = cap.take()[0, p - 1 : p - 1 + g]
            for lo in range(0, g, _LOGITS_CHUNK):
                hi = min(g, lo + _LOGITS_CHUNK)
                rows = self._head(states[lo:hi]).float().cpu()
                if on_logits is not None:
                    on_logits(lo, rows)
                else:
                    logits[lo:hi] = rows
        return Prefill(
            hidden=states.to(device="cpu", dtype=torch.bfloat16, copy=True),
            logits=logits,
            elapsed_s=time.perf_counter() - t0,
        )

    def prefill_batch(
        self,
        pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
        *,
        on_logits: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> list[Prefill]:
        """:meth:`prefill` of several (prompt, output) pairs in one forward pass.

        Rows are right-padded under an attention mask, so each keeps its own positions and, being
        causal, never sees the padding after it. As with batched generation the arithmetic may
        differ slightly from one row alone, within what the proof check tolerates. ``elapsed_s``
        of each result is the whole batch's time. ``on_logits(pair, first_row, logits)`` works as
        in :meth:`prefill`: logits are handed over in chunks and not kept.
        """
        if not pairs:
            return []
        inputs: list[torch.Tensor] = []
        for prompt_ids, output_ids in pairs:
            if not prompt_ids:
                raise ConfigError("prompt is empty")
            if not output_ids:
                raise ConfigError("prefill_batch needs at least one output token per pair")
            self._ids(output_ids[-1:])  # range check of the one id not fed in
            inputs.append(self._ids([*prompt_ids, *output_ids[:-1]])[0])
        b, width = len(inputs), max(len(r) for r in inputs)
        input_ids = torch.zeros((b, width), dtype=torch.long, device=self.device)
        mask = torch.zeros((b, width), dtype=torch.long, device=self.device)
        for i, row in enumerate(inputs):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        # Allocated outside inference mode so callers get ordinary tensors they may modify.
        all_logits = [
            torch.empty((0 if on_logits else len(out), self.vocab_size), dtype=torch.float32)
            for _, out in pairs
        ]
        hidden: list[torch.Tensor] = []
        t0 = time.perf_counter()
        with torch.inference_mode(), self._capture() as cap:
            self.model(input_ids=input_ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
            states_all = cap.take()
            for i, (prompt_ids, output_ids) in enumerate(pairs):
                p, g = len(prompt_ids), len(output_ids)
                states = states_all[i, p - 1 : p - 1 + g]
                for lo in range(0, g, _LOGITS_CHUNK):
                    hi = min(g, lo + _LOGITS_CHUNK)
                    rows = self._head(states[lo:hi]).float().cpu()
                    if on_logits is not None:
                        on_logits(i, lo, rows)
                    else:
                        all_logits[i][lo:hi] = rows
                hidden.append(states.to(device="cpu", dtype=torch.bfloat16, copy=True))
        elapsed = time.perf_counter() - t0
        return [
            Prefill(hidden=h, logits=lg, elapsed_s=elapsed)
            for h, lg in zip(hidden, all_logits, strict=True)
        ]
