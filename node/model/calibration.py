"""Honest generation under the variations a network must tolerate, measured by a validator.

The driver behind ``flopnet proof calibrate`` and ``benchmarks/proof_detection.py``: workers
generate with the real backend (:class:`~node.inference.hf_backend.HFBackend`, at batch 1, 4 or 16,
with SDPA or eager attention), build TOPLOC proofs from their captured states, and a validator
checks each submission with one prefill, :func:`~proof.toploc.verify_proofs`, the sampling replay
and the completion check, under the thread count it runs with. The statistics that turn these
measurements into thresholds are in :mod:`proof.calibrate`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flopnet.node.model.tokenizer import Tokenizer

if TYPE_CHECKING:  # torch stays out of the CLI's import path
    import torch

    from flopnet.node.model.hf_backend import Generation, HFBackend, Prefill
    from flopnet.proof.completion import CompletionCheck
    from flopnet.proof.policy import ProofDecision, ProofPolicy
    from flopnet.proof.sampling import ReplayCheck, SamplingParams
    from flopnet.proof.toploc import ChunkCheck


@dataclass(frozen=True)
class Variation:
    """One honest way of running a worker and a validator that the thresholds must accept."""

    name: str
    batch_size: int = 1
    worker_attn: str = "sdpa"
    validator_threads: int | None = None  # None: the worker's thread count (WORKER_THREADS)
    # MoE models: how the worker runs its experts (None: the library's default, grouped_mm).
    worker_experts: str | None = None
    # The validator audits this many submissions in one padded prefill (``prefill_batch``).
    audit_batch: int = 1

    @property
    def worker_key(self) -> tuple[str, str | None]:
        """Workers with equal keys run the same model build."""
        return (self.worker_attn, self.worker_experts)


# Workers decode with one thread: at batch 1 a small model gains little from a second one, and on
# a shared machine an OpenMP team that must wait for a busy core makes decoding up to 100x
# slower (measured: 64 tokens of the tiny model in 0.2-0.9 s on one thread, 19-35 s on two).
WORKER_THREADS = 1


HONEST_VARIATIONS: tuple[Variation, ...] = (
    Variation("batch 1"),
    Variation("batch 4", batch_size=4),
    Variation("batch 16", batch_size=16),
    Variation("eager attention (worker)", worker_attn="eager"),
    Variation("validator on 2 threads", validator_threads=2),
)
# Also for the larger and the MoE models: a padded batched audit, batch 8, and the expert kernels.
EXTRA_VARIATIONS: tuple[Variation, ...] = (
    Variation("batch 8", batch_size=8),
    Variation("padded audit of 8 (validator)", batch_size=16, audit_batch=8),
)
MOE_VARIATIONS: tuple[Variation, ...] = (
    Variation("eager experts (worker)", batch_size=4, worker_experts="eager"),
    Variation("batched_mm experts (worker)", batch_size=4, worker_experts="batched_mm"),
)


def variations_for(model: str) -> tuple[Variation, ...]:
    """The honest variations a model's thresholds are calibrated and tested on."""
    from flopnet.node.model.hardware import model_config

    moe = model_config(model).get("model_type") == "deepseek_v3"
    return HONEST_VARIATIONS + EXTRA_VARIATIONS + (MOE_VARIATIONS if moe else ())


_PROBLEMS = (
    "What is {a} * {b}?",
    "Compute {a} + {b} - {c}.",
    "A train travels {a} km in {b} hours. What is its average speed in km/h?",
    "Find the remainder when {a}{b} is divided by {c}.",
    "How many positive divisors does {a} have?",
    "Solve for x: {a}x + {b} = {c}.",
    "Simplify the fraction {a}/{b} and give the numerator plus the denominator.",
    "The sum of {c} consecutive integers is {a}{b}. What is the largest of them?",
)


def calibration_prompts(
    tokenizer: Tokenizer, count: int, *, offset: int = 0, model: str = "tiny"
) -> list[list[int]]:
    """``count`` deterministic math prompts of varied lengths, as the publisher encodes them for
    ``model`` (R1's format with BOS, or a chat model's template).

    ``offset`` selects a disjoint set, so thresholds calibrated on one set can be evaluated on
    another.
    """
    from flopnet.node.model.prompt import encode_prompt

    prompts = []
    for i in range(offset, offset + count):
        digest = hashlib.sha256(f"flopnet/calibration-prompt/{i}".encode()).digest()
        a, b, c = (int.from_bytes(digest[j : j + 2], "big") % 997 + 3 for j in (0, 2, 4))
        text = _PROBLEMS[i % len(_PROBLEMS)].format(a=a, b=b, c=c)
        prompts.append(encode_prompt(tokenizer, model, text))
    return prompts


def lease_seed(index: int, *, offset: int = 0) -> int:
    """The sampling seed of sample ``index`` (a publisher draws these at random)."""
    digest = hashlib.sha256(f"flopnet/calibration-seed/{offset + index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass(frozen=True)
class Sample:
    """What a worker submits, plus the lease terms the validator holds."""

    prompt_ids: list[int]  # the lease's prompt (the validator prefills this)
    token_ids: list[int]
    proofs: list[bytes]
    seed: int
    params: SamplingParams  # the lease's sampling parameters
    max_new_tokens: int


@dataclass(frozen=True)
class Measured:
    """A validator's measurements of one sample and its decision under one policy."""

    checks: tuple[ChunkCheck, ...]
    shortfalls: tuple[float, ...]  # per token, see proof.sampling.replay_shortfalls
    replay: ReplayCheck  # at the policy's tolerance
    unbounded: ReplayCheck  # with a tolerance that never binds: what calibration reads
    completion: CompletionCheck
    decision: ProofDecision


def generate(
    worker: HFBackend,
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int],
    params: SamplingParams,
    max_new_tokens: int,
    batch_size: int = 1,
) -> list[Generation]:
    """Honest generation of every prompt, ``batch_size`` rows at a time."""
    from flopnet.node.model.hf_backend import GenerationRequest

    if batch_size == 1:
        return [
            worker.generate(p, seed=s, params=params, max_new_tokens=max_new_tokens)
            for p, s in zip(prompts, seeds, strict=True)
        ]
    out: list[Generation] = []
    for lo in range(0, len(prompts), batch_size):
        reqs = [
            GenerationRequest(list(p), s, params, max_new_tokens)
            for p, s in zip(prompts[lo : lo + batch_size], seeds[lo : lo + batch_size], strict=True)
        ]
        out.extend(worker.generate_batch(reqs))
    return out


def measure(
    validator: HFBackend,
    sample: Sample,
    policy: ProofPolicy,
    *,
    threads: int | None = None,
) -> Measured:
    """Validate one sample as a validator does: one prefill, TOPLOC, replay, completion."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        pre = validator.prefill(sample.prompt_ids, sample.token_ids)
    finally:
        torch.set_num_threads(before)
    return _measured(validator, sample, policy, pre)


def measure_batch(
    validator: HFBackend, samples: Sequence[Sample], policy: ProofPolicy, *, audit_batch: int
) -> list[Measured]:
    """:func:`measure` with ``audit_batch`` samples at a time in one padded prefill, as a
    validator's ``check_batch`` audits several contributors (empty outputs alone)."""
    out: list[Measured] = []
    for lo in range(0, len(samples), audit_batch):
        group = list(samples[lo : lo + audit_batch])
        filled = [s for s in group if s.token_ids]
        pres = iter(validator.prefill_batch([(s.prompt_ids, s.token_ids) for s in filled]))
        for s in group:
            pre = next(pres) if s.token_ids else None
            out.append(_measured(validator, s, policy, pre))
    return out


def _measured(
    validator: HFBackend, sample: Sample, policy: ProofPolicy, pre: Prefill | None
) -> Measured:
    from flopnet.proof.calibrate import UNBOUNDED_TOLERANCE
    from flopnet.proof.completion import check_completion
    from flopnet.proof.policy import decide
    from flopnet.proof.sampling import replay_check, replay_shortfalls
    from flopnet.proof.toploc import verify_proofs

    if pre is None:
        pre = validator.prefill(sample.prompt_ids, sample.token_ids)
    checks = tuple(verify_proofs(pre.hidden, sample.proofs))
    shortfalls = replay_shortfalls(pre.logits, sample.token_ids, sample.seed, sample.params)
    shortfall_list = [float(s) for s in shortfalls.tolist()]
    replay = replay_check(shortfall_list, policy.replay_tolerance)
    completion = check_completion(
        sample.token_ids, eos_id=validator.eos_id, max_new_tokens=sample.max_new_tokens
    )
    return Measured(
        checks=checks,
        shortfalls=tuple(shortfall_list),
        replay=replay,
        unbounded=replay_check(shortfall_list, UNBOUNDED_TOLERANCE),
        completion=completion,
        decision=decide(checks, replay, policy, completion),
    )


def proofs_of(hidden: torch.Tensor) -> list[bytes]:
    """A worker's proofs for its captured states (none for an empty output)."""
    from flopnet.proof.toploc import build_proofs

    return build_proofs(hidden) if hidden.shape[0] else []


def honest_samples(
    worker: HFBackend,
    variation: Variation,
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int],
    params: SamplingParams,
    max_new_tokens: int,
) -> list[Sample]:
    """Generate and prove every prompt as an honest worker under ``variation``."""
    gens = generate(worker, prompts, seeds, params, max_new_tokens, variation.batch_size)
    return [
        Sample(list(p), g.token_ids, proofs_of(g.hidden), s, params, max_new_tokens)
        for p, s, g in zip(prompts, seeds, gens, strict=True)
    ]


@dataclass(frozen=True)
class HonestRun:
    """Every honest sample of one variation, measured."""

    variation: Variation
    measured: list[Measured]


def run_honest(
    model: str,
    dtype: str,
    *,
    samples: int,
    max_new_tokens: int,
    policy: ProofPolicy,
    variations: Sequence[Variation] | None = None,
    model_seed: int = 0,
    offset: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[HonestRun]:
    """Run each honest variation on ``samples`` prompts and measure every sample.

    ``variations`` defaults to :func:`variations_for` the model. Variations that differ only on
    the validator's side reuse the generations of the same worker. Workers run with torch's
    process-wide thread count at :data:`WORKER_THREADS` (restored after).
    """
    import torch

    from flopnet.node.model.hf_backend import HFBackend
    from flopnet.node.model.models import resolve_spec
    from flopnet.proof.sampling import SamplingParams

    before = torch.get_num_threads()
    torch.set_num_threads(WORKER_THREADS)
    try:
        spec = resolve_spec(model, seed=model_seed, dtype=dtype, progress=progress)
        validator = HFBackend(spec)
        workers: dict[tuple[str, str | None], HFBackend] = {("sdpa", None): validator}
        made: dict[tuple[tuple[str, str | None], int], list[Sample]] = {}
        prompts = calibration_prompts(validator.tokenizer, samples, offset=offset, model=model)
        seeds = [lease_seed(i, offset=offset) for i in range(samples)]
        params = SamplingParams()
        runs = []
        for variation in variations if variations is not None else variations_for(model):
            key = variation.worker_key
            if key not in workers:
                workers[key] = HFBackend(
                    spec, attn_implementation=key[0], experts_implementation=key[1]
                )
            if (key, variation.batch_size) not in made:
                made[key, variation.batch_size] = honest_samples(
                    workers[key], variation, prompts, seeds, params, max_new_tokens
                )
            batch = made[key, variation.batch_size]
            if variation.audit_batch > 1:
                measured = measure_batch(
                    validator, batch, policy, audit_batch=variation.audit_batch
                )
            else:
                measured = [
                    measure(validator, s, policy, threads=variation.validator_threads)
                    for s in batch
                ]
            runs.append(HonestRun(variation, measured))
            if progress is not None:
                chunks = sum(len(m.checks) for m in measured)
                progress(f"{variation.name}: {len(measured)} samples, {chunks} chunks")
        return runs
    finally:
        torch.set_num_threads(before)
