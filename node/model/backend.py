"""What the node needs from an inference backend; :class:`HFBackend` and :class:`VLLMBackend` fit.

Both sample token ``i`` of a request as ``proof.sampling.sample_token(logits, seed, i, params)``
and return, per generated token, the bf16 post-norm hidden state whose logits sampled it, so
proofs built on one backend verify against the other's (or the same backend's) prefill.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from flopnet.node.model.hf_backend import Generation, GenerationRequest, Prefill
from flopnet.node.model.tokenizer import Tokenizer
from flopnet.proof.sampling import SamplingParams


@runtime_checkable
class InferenceBackend(Protocol):
    """Seeded generation with captured states (worker) and prefill (validator)."""

    tokenizer: Tokenizer
    eos_id: int
    vocab_size: int
    hidden_size: int

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        seed: int,
        params: SamplingParams,
        max_new_tokens: int,
    ) -> Generation: ...

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[Generation]: ...

    def prefill(self, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> Prefill: ...
