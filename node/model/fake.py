"""A model without torch, for the roles' decision, retry and batching tests (milliseconds each).

:class:`FakeModel` satisfies :class:`~flopnet.node.model.calls.ModelClient` in-process. Its
"weights" are a seed: token ``i`` of a sample is a hash of (weights, lease seed, prompt, i), and
a chunk's 258-byte "proof" a hash of (weights, lease seed, prompt, the chunk's tokens). An audit
recomputes both with its own weights, so a fake with other weights, a changed token or a proof of
something else measures as it would on the real model (every point of the chunk mismatched, an
infinite sampling shortfall), while an honest one measures zero. The real model process is the
second tier of tests (``tests/test_validator_audit.py``'s real-model cases, the devnet tests).

Faults are queued per operation (:meth:`FakeModel.fail`), e.g. a ``ModelUnavailable`` to act a
model process that died mid-check; ``calls`` records every operation made, in order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flopnet.node.model.calls import (
    AuditMeasures,
    AuditRequest,
    Generated,
    GenerateRequest,
    Inspection,
    InspectRequest,
    ModelError,
    ModelInfo,
    ModelInputError,
)
from flopnet.node.model.streaming import OutputCallback, OutputDelta
from flopnet.proof.completion import check_completion
from flopnet.proof.measures import NO_MATCH_ERROR, ChunkCheck
from flopnet.proof.params import CHUNK, PROOF_BYTES, TOPK

# A Llama-shaped config for the FLOP formula (``ledger.flops.inference_flops``).
FAKE_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 256,
}
EOS_ID = 0
_HONEST = ChunkCheck(exp_mismatches=0, mant_err_mean=0.0, mant_err_median=0.0, sign_mismatches=0)
_FORGED = ChunkCheck(TOPK, NO_MATCH_ERROR, NO_MATCH_ERROR, 0)
_NOISY = ChunkCheck(TOPK // 2, 3.0, 2.5, 0)  # over the limits, but nothing like a forgery


def _digest(*parts: object) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\0")
    return h.digest()


@dataclass
class FakeModel:
    """A deterministic stand-in for the model process (see the module's docstring).

    ``length`` caps every generation below ``max_new_tokens`` (the sample then ends with eos),
    so tests can exercise both ways an honest output ends.
    """

    weights_seed: int = 0
    vocab_size: int = 256
    length: int | None = None
    calls: list[str] = field(default_factory=list)
    restarts: int = 0
    # The next this many audits in the loaded dtype measure one honest chunk out of limits, as
    # a kernel's noise would; a float32 audit (the second opinion) measures truly.
    noisy_audits: int = 0
    _faults: dict[str, list[ModelError]] = field(default_factory=dict)
    _info: ModelInfo | None = None

    @property
    def info(self) -> ModelInfo | None:
        return self._info

    def fail(self, op: str, *errors: ModelError) -> None:
        """Make the next calls of ``op`` raise ``errors``, one per call."""
        self._faults.setdefault(op, []).extend(errors)

    def _enter(self, op: str) -> None:
        self.calls.append(op)
        queued = self._faults.get(op)
        if queued:
            raise queued.pop(0)

    async def start(self) -> ModelInfo:
        self._info = ModelInfo(
            name="fake",
            seed=self.weights_seed,
            dtype="bfloat16",
            weights_sha256=_digest("fake-weights", self.weights_seed).hex(),
            n_params=1,
            n_params_no_embeddings=1,
            vocab_size=self.vocab_size,
            load_seconds=0.0,
            eos_id=EOS_ID,
            config=dict(FAKE_CONFIG, vocab_size=self.vocab_size),
            backend="fake",
        )
        return self._info

    async def restart(self) -> ModelInfo:
        self.restarts += 1
        return await self.start()

    def close(self) -> None:
        self._info = None

    def interrupt(self) -> bool:
        return False  # its generations are instant: there is never one to stop

    # -- what the weights compute --------------------------------------------------------------

    def token(self, request: GenerateRequest, position: int) -> int:
        """The token these weights sample at ``position`` (never eos)."""
        digest = _digest(
            "fake-token", self.weights_seed, request.seed, request.prompt_ids, position
        )
        return 1 + int.from_bytes(digest[:8], "big") % (self.vocab_size - 1)

    def proof(self, request: GenerateRequest, chunk: Sequence[int]) -> bytes:
        """The 258-byte proof these weights make for one chunk of output tokens."""
        seed = _digest("fake-proof", self.weights_seed, request.seed, request.prompt_ids)
        return hashlib.shake_256(seed + bytes(_digest(tuple(chunk)))).digest(PROOF_BYTES)

    def _sample(self, request: GenerateRequest) -> Generated:
        n = (
            request.max_new_tokens
            if self.length is None
            else min(self.length, request.max_new_tokens)
        )
        tokens = [self.token(request, i) for i in range(n)]
        if n < request.max_new_tokens:
            tokens[-1] = EOS_ID
        proofs = tuple(self.proof(request, tokens[i : i + CHUNK]) for i in range(0, n, CHUNK))
        return Generated(
            token_ids=tuple(tokens),
            text=self.decode(tokens),
            finish_reason="stop" if n < request.max_new_tokens else "length",
            proofs=proofs,
            prefill_s=0.0,
            decode_s=0.0,
            proof_s=0.0,
        )

    @staticmethod
    def decode(tokens: Sequence[int]) -> str:
        return " ".join(f"t{t}" for t in tokens if t != EOS_ID)

    # -- ModelClient ---------------------------------------------------------------------------

    async def generate(
        self, request: GenerateRequest, on_output: OutputCallback | None = None
    ) -> Generated:
        self._enter("generate")
        return self._stream([self._sample(request)], on_output)[0]

    async def generate_batch(
        self, requests: Sequence[GenerateRequest], on_output: OutputCallback | None = None
    ) -> list[Generated]:
        self._enter("generate_batch")
        return self._stream([self._sample(r) for r in requests], on_output)

    def _stream(self, gens: list[Generated], on_output: OutputCallback | None) -> list[Generated]:
        """Hand the samples' texts over a chunk of tokens at a time, as the model process
        does while it decodes (the pieces join to each sample's text)."""
        if on_output is None:
            return gens
        longest = max((len(g.token_ids) for g in gens), default=0)
        for start in range(0, longest, CHUNK):
            deltas = []
            for row, gen in enumerate(gens):
                piece = self.decode(gen.token_ids[start : start + CHUNK])
                if start < len(gen.token_ids):
                    text = (" " if start and piece else "") + piece
                    deltas.append(OutputDelta(row, min(start + CHUNK, len(gen.token_ids)), text))
            on_output(deltas)
        return gens

    def _measure(self, request: AuditRequest) -> AuditMeasures:
        sample, tokens = request.sample, request.token_ids
        if not sample.prompt_ids or not tokens:
            raise ModelInputError("empty prompt or output")
        if any(not 0 <= t < self.vocab_size for t in (*sample.prompt_ids, *tokens)):
            raise ModelInputError(f"token ids must be in [0, {self.vocab_size})")
        chunks = [tokens[i : i + CHUNK] for i in range(0, len(tokens), CHUNK)]
        if len(request.proofs) != len(chunks):
            raise ModelInputError(f"{len(request.proofs)} proofs for {len(chunks)} chunks")
        checks = tuple(
            _HONEST if proof == self.proof(sample, chunk) else _FORGED
            for proof, chunk in zip(request.proofs, chunks, strict=True)
        )
        shortfalls = tuple(
            0.0 if t == self.token(sample, i) or t == EOS_ID else float("inf")
            for i, t in enumerate(tokens)
        )
        if self.noisy_audits > 0 and not request.precision:
            self.noisy_audits -= 1
            checks = (_NOISY, *checks[1:])
        completion = check_completion(tokens, eos_id=EOS_ID, max_new_tokens=sample.max_new_tokens)
        return AuditMeasures(checks, shortfalls, completion, self.decode(tokens), 0.0, 0.0)

    async def audit(self, request: AuditRequest) -> AuditMeasures:
        self._enter("audit")
        return self._measure(request)

    async def audit_batch(
        self, requests: Sequence[AuditRequest]
    ) -> list[AuditMeasures | ModelError]:
        self._enter("audit_batch")
        out: list[AuditMeasures | ModelError] = []
        for request in requests:
            try:
                out.append(self._measure(request))
            except ModelError as exc:
                out.append(exc)
        return out

    async def inspect(self, request: InspectRequest) -> Inspection:
        self._enter("inspect")
        if any(not 0 <= t < self.vocab_size for t in request.token_ids):
            raise ModelInputError(f"token ids must be in [0, {self.vocab_size})")
        completion = check_completion(
            request.token_ids, eos_id=EOS_ID, max_new_tokens=request.max_new_tokens
        )
        return Inspection(completion, self.decode(request.token_ids))
