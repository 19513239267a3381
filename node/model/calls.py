"""The model process's boundary: the requests it serves, what it answers, and how it fails.

The daemon (which never imports torch) talks to the model in a child process
(:mod:`flopnet.node.model.service`), or to :class:`~flopnet.node.model.fake.FakeModel` in tests;
both satisfy :class:`ModelClient`. Requests and answers are frozen records of plain values, so
they cross the pipe without torch; the child only *measures* (TOPLOC chunk comparisons, sampling
shortfalls, how the output ends), and the decision that applies the network's limits to those
numbers is taken in the daemon (:func:`flopnet.node.validator.judgement.proof_outcome`), outside
the process that handles untrusted tensors.

Failure kinds are exception classes: :class:`ModelUnavailable` (the process died, hung or is not
running: restart it and ask again), :class:`ModelInternalError` (our model failed on a request
that may be fine: not the submitter's fault) and :class:`ModelInputError` (the request's data
cannot be evaluated: token ids outside the vocabulary, a malformed proof; the submitter's fault).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from flopnet.node.model.streaming import OutputCallback
from flopnet.proof.completion import CompletionCheck
from flopnet.proof.measures import ChunkCheck
from flopnet.protocol.errors import FlopnetError
from flopnet.protocol.messages import Lease


class ModelError(FlopnetError):
    """The model process could not answer a request."""


class ModelUnavailable(ModelError):
    """The model process died, hung or is not running; nothing is known about the request."""


class ModelInternalError(ModelError):
    """Our model failed on this request (out of memory, a bug): not the submitter's fault."""


class ModelInputError(ModelError):
    """The request's data cannot be evaluated (bad token ids, malformed proofs)."""


@dataclass(frozen=True)
class LoadSpec:
    """What the child loads: the network's model, and how to run it on this machine."""

    model: str
    seed: int
    dtype: str
    threads: int = 0
    max_seq_tokens: int = 0  # > 0: check first that the model and one such sequence fit here
    backend: str = "hf"  # "hf", "vllm", or "auto" (the hardware plan's choice)
    revision: str = ""
    devices: tuple[int, ...] | None = None  # the GPUs the child may use (None: all)


@dataclass(frozen=True)
class ModelInfo:
    """What the child reports once its model is loaded."""

    name: str
    seed: int
    dtype: str
    weights_sha256: str
    n_params: int
    n_params_no_embeddings: int
    vocab_size: int
    load_seconds: float
    eos_id: int = -1
    gpu_names: tuple[str, ...] = ()
    config: dict[str, Any] | None = None  # the HF config, for the validator's FLOP formula
    plan: dict[str, Any] | None = None  # node.model.hardware.Plan, when one was made
    backend: str = "hf"


@dataclass(frozen=True)
class GenerateRequest:
    """One sample to generate: a lease's prompt, seed and sampling parameters."""

    prompt_ids: tuple[int, ...]
    seed: int
    temperature: float
    top_p: float
    max_new_tokens: int

    @classmethod
    def of_lease(cls, lease: Lease) -> GenerateRequest:
        """What a lease asks to be generated: its prompt, seed and sampling parameters."""
        return cls(
            tuple(lease.prompt_ids),
            lease.seed,
            lease.temperature,
            lease.top_p,
            lease.max_new_tokens,
        )


@dataclass(frozen=True)
class Generated:
    """A generated sample with its TOPLOC proofs (one per 32 tokens) and timings."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: str
    proofs: tuple[bytes, ...]
    prefill_s: float
    decode_s: float
    proof_s: float


@dataclass(frozen=True)
class AuditRequest:
    """A submission to audit: ``sample`` is what the lease asked for, ``token_ids`` and
    ``proofs`` what the worker says it generated. One prefill over prompt + output, then the
    proofs and the sampling replay are measured."""

    sample: GenerateRequest
    token_ids: tuple[int, ...]
    proofs: tuple[bytes, ...]
    # "" runs the prefill in the dtype the model was loaded in; "float32" upcasts the weights
    # for this one prefill (the second opinion before a contributor is punished).
    precision: str = ""


@dataclass(frozen=True)
class AuditMeasures:
    """What an audit measured; the network's limits are applied by the caller.

    ``shortfalls`` holds, per generated token, how far its score fell below the seeded sampler's
    best choice (0 for the sampler's own choice, inf for a token no tolerance can excuse).
    """

    checks: tuple[ChunkCheck, ...]
    shortfalls: tuple[float, ...]
    completion: CompletionCheck
    text: str
    prefill_s: float
    verify_s: float


@dataclass(frozen=True)
class InspectRequest:
    """An unaudited submission: decode the tokens and see how the output ends (no prefill)."""

    token_ids: tuple[int, ...]
    max_new_tokens: int


@dataclass(frozen=True)
class Inspection:
    """The decoded text and the completion check of an unaudited submission."""

    completion: CompletionCheck
    text: str


class ModelClient(Protocol):
    """What the roles need from a model: the child process, or the fake one in tests."""

    @property
    def info(self) -> ModelInfo | None: ...

    async def start(self) -> ModelInfo: ...

    async def restart(self) -> ModelInfo: ...

    async def generate(
        self, request: GenerateRequest, on_output: OutputCallback | None = None
    ) -> Generated: ...

    async def generate_batch(
        self, requests: Sequence[GenerateRequest], on_output: OutputCallback | None = None
    ) -> list[Generated]: ...

    async def audit(self, request: AuditRequest) -> AuditMeasures: ...

    async def audit_batch(
        self, requests: Sequence[AuditRequest]
    ) -> list[AuditMeasures | ModelError]: ...

    async def inspect(self, request: InspectRequest) -> Inspection: ...

    def interrupt(self) -> bool:
        """Stop a generation in progress at once (True if one was stopped; the model must then
        be restarted before the next call)."""
        ...

    def close(self) -> None: ...
