"""The TOPLOC detection table: honest variations must pass, cheats must be caught.

    python benchmarks/proof_detection.py [--quick] [--out benchmarks/results/proof_detection.json]

The TOPLOC paper's experiment, redone on the seeded random-weight models that run here (``tiny``:
6.5M-parameter Llama shape; ``small``: 97M-parameter Qwen2 shape), generation by the real backend
(``HFBackend.generate`` / ``generate_batch``), validation by the real prefill. Every sample is
checked three ways (TOPLOC, sampling replay, completion) and every row is scored under two
policies: ``default`` (the paper-era TOPLOC thresholds and the replay defaults) and
``recommended`` (``proof.policy.recommended_policy``, from ``flopnet proof calibrate``). The prompts
and seeds are disjoint from the ones calibration used (``offset``), so the honest rows are a
held-out test of the recommended thresholds.

Per-sample measurements are kept in the JSON, so other policies can be scored without
regenerating (``evaluate``). Nothing here is asserted: the numbers are the result.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proof_speed import machine_info

from flopnet.node.model.calibration import (
    HONEST_VARIATIONS,
    WORKER_THREADS,
    Measured,
    Sample,
    Variation,
    calibration_prompts,
    generate,
    honest_samples,
    lease_seed,
    measure,
    measure_batch,
    proofs_of,
    variations_for,
)
from flopnet.node.model.hf_backend import HFBackend
from flopnet.node.model.models import resolve_spec
from flopnet.node.model.routing import routers, routing_differences, trace_routing
from flopnet.proof.aggregate import audits_for_confidence, audits_to_separate
from flopnet.proof.calibrate import calibrate, suggest_threshold
from flopnet.proof.policy import ProofPolicy, decide, recommended_policy
from flopnet.proof.sampling import SamplingParams, replay_check
from flopnet.proof.tally import (
    TALLY_WINDOW,
    audits_to_flag,
    first_punishments,
    honest_rate_ceiling,
)
from flopnet.proof.toploc import ChunkCheck, ToplocThresholds, failing_chunks

MODEL_SEED = 0
PROMPT_OFFSET = 1000  # calibration used offset 0
LEASE = SamplingParams(temperature=0.6, top_p=0.95)
INJECTED = " The answer is 4"  # 16 bytes = 16 tokens of the byte tokenizer


@dataclass
class Ctx:
    """One model at one manifest dtype: the validator, the lease terms, the prompts."""

    model: str
    dtype: str
    validator: HFBackend
    prompts: list[list[int]]
    seeds: list[int]
    max_new_tokens: int
    batch: int = 1  # cheating workers generate this many rows together (their speed, not ours)

    def backend(self, **kw: Any) -> HFBackend:
        """A worker's model: the network's unless ``seed``/``dtype``/``attn``/``experts`` say
        otherwise."""
        spec = resolve_spec(
            self.model, seed=kw.get("seed", MODEL_SEED), dtype=kw.get("dtype", self.dtype)
        )
        return HFBackend(
            spec, attn_implementation=kw.get("attn"), experts_implementation=kw.get("experts")
        )

    @property
    def moe(self) -> bool:
        return bool(routers(self.validator.model))


@dataclass
class Row:
    model: str
    manifest_dtype: str
    name: str
    kind: str  # "honest" or "cheat"
    how: str
    measured: list[Measured] = field(default_factory=list)
    seconds: float = 0.0
    routing: dict[str, Any] | None = None  # MoE, batch 1: decode vs prefill expert choices


# --------------------------------------------------------------------------------------------------
# Worker-side cheats: each returns what a cheating worker would submit for the lease's prompts.


def _honest(ctx: Ctx, worker: HFBackend, params: SamplingParams = LEASE) -> list[Sample]:
    gens = generate(worker, ctx.prompts, ctx.seeds, params, ctx.max_new_tokens, ctx.batch)
    return [
        Sample(p, g.token_ids, proofs_of(g.hidden), s, LEASE, ctx.max_new_tokens)
        for p, s, g in zip(ctx.prompts, ctx.seeds, gens, strict=True)
    ]


def _decoder_matrices(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every weight matrix inside the decoder layers: linear layers and stacked experts
    ([experts, out, in]), but not a MoE router (a cheat gains nothing from changing it)."""
    return [
        (name, p)
        for name, p in model.named_parameters()
        if name.startswith("model.layers.") and p.dim() >= 2 and not name.endswith("gate.weight")
    ]


def _perturb_linear(
    model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], only: str | None = None
) -> None:
    """Apply ``fn`` (in float32) to every decoder weight matrix (each expert's on its own);
    ``only`` restricts it to parameters whose name contains it."""
    with torch.no_grad():
        for name, w in _decoder_matrices(model):
            if only is not None and only not in name:
                continue
            if w.dim() == 3:
                for e in range(w.shape[0]):
                    w[e].copy_(fn(w[e].detach().float()).to(w.dtype))
            else:
                w.copy_(fn(w.detach().float()).to(w.dtype))


def fake_quantize(bits: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Symmetric per-output-channel absmax quantisation to ``bits``, dequantised back."""
    q = 2 ** (bits - 1) - 1

    def apply(w: torch.Tensor) -> torch.Tensor:
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / q
        return (w / scale).round().clamp(-q, q) * scale

    return apply


def add_noise(fraction: float, seed: int = 7) -> Callable[[torch.Tensor], torch.Tensor]:
    """Gaussian noise with std ``fraction`` times the weight matrix's own std."""
    gen = torch.Generator().manual_seed(seed)

    def apply(w: torch.Tensor) -> torch.Tensor:
        return w + fraction * w.std() * torch.randn(w.shape, generator=gen)

    return apply


def cheat_weights(ctx: Ctx, fn: Callable[[torch.Tensor], torch.Tensor]) -> list[Sample]:
    worker = ctx.backend()
    _perturb_linear(worker.model, fn)
    return _honest(ctx, worker)


def _digit_ids(ctx: Ctx) -> dict[int, str]:
    """Token ids that decode to exactly one ASCII digit (bytes 48-57 for the byte tokenizer)."""
    tok = ctx.validator.tokenizer
    out = {}
    for d in "0123456789":
        ids = tok.encode(d)
        if len(ids) == 1:
            out[ids[0]] = d
    return out


def cheat_prompt_token(ctx: Ctx) -> list[Sample]:
    """Generate for a prompt with one token changed (the first digit of the problem)."""
    digits = _digit_ids(ctx)
    by_digit = {d: i for i, d in digits.items()}
    altered = []
    for p in ctx.prompts:
        where = next(i for i, t in enumerate(p) if t in digits)
        other = by_digit[str((int(digits[p[where]]) + 1) % 10)]
        altered.append([*p[:where], other, *p[where + 1 :]])
    gens = generate(ctx.validator, altered, ctx.seeds, LEASE, ctx.max_new_tokens, ctx.batch)
    return [
        Sample(p, g.token_ids, proofs_of(g.hidden), s, LEASE, ctx.max_new_tokens)
        for p, s, g in zip(ctx.prompts, ctx.seeds, gens, strict=True)
    ]


def cheat_injected(ctx: Ctx, count: int) -> list[Sample]:
    """Overwrite ``count`` generated tokens with chosen ones; prove the edited output honestly.

    The worker runs its own prefill over the edited tokens, so every proof matches: the model
    did run over these tokens. Only the replay can tell they were not sampled.
    """
    tok = ctx.validator.tokenizer
    seven, three = tok.encode("7")[0], tok.encode("3")[0]
    injected = tok.encode(INJECTED)
    out = []
    for s in _honest(ctx, ctx.validator):
        tokens = list(s.token_ids)
        if count == 1:
            where = len(tokens) // 2
            tokens[where] = seven if tokens[where] != seven else three
        else:
            start = min(16, max(0, len(tokens) - count))
            for i, t in enumerate(injected[:count]):
                if start + i < len(tokens):
                    tokens[start + i] = t
        pre = ctx.validator.prefill(s.prompt_ids, tokens)
        out.append(
            Sample(s.prompt_ids, tokens, proofs_of(pre.hidden), s.seed, LEASE, s.max_new_tokens)
        )
    return out


def cheat_other_weights(ctx: Ctx) -> list[Sample]:
    """Seeded models: another seed. A trained model: each decoder matrix's rows shuffled (other
    weights with the same statistics; there is no second set of trained weights here)."""
    from flopnet.node.model.models import SEEDED_MODELS

    if ctx.model in SEEDED_MODELS:
        return _honest(ctx, ctx.backend(seed=1))
    gen = torch.Generator().manual_seed(11)
    return cheat_weights(ctx, lambda w: w[torch.randperm(w.shape[0], generator=gen)])


# MoE-only cheats: skip work the network pays for.


def cheat_fewer_experts(ctx: Ctx) -> list[Sample]:
    """Route each token to top_k - 1 experts (less expert compute per token)."""
    worker = ctx.backend()
    for _name, router in routers(worker.model):
        router.top_k = int(router.top_k) - 1  # type: ignore[operator]
    return _honest(ctx, worker)


def cheat_no_shared_expert(ctx: Ctx) -> list[Sample]:
    """Skip the shared expert of every MoE layer."""
    worker = ctx.backend()
    for name, module in worker.model.named_modules():
        if name.endswith("mlp.shared_experts"):
            module.forward = lambda x: torch.zeros_like(x)  # type: ignore[method-assign]
    return _honest(ctx, worker)


def cheat_one_expert_int4(ctx: Ctx) -> list[Sample]:
    """Expert 0 of every MoE layer fake-quantised to int4 (a cheap expert kept in memory)."""
    worker = ctx.backend()
    q = fake_quantize(4)
    with torch.no_grad():
        for name, w in _decoder_matrices(worker.model):
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                w[0].copy_(q(w[0].detach().float()).to(w.dtype))
    return _honest(ctx, worker)


def cheat_cut(ctx: Ctx, fake_eos: bool) -> list[Sample]:
    """Stop at 3/4 of the output; optionally append eos there (its state is the honest one)."""
    out = []
    gens = generate(ctx.validator, ctx.prompts, ctx.seeds, LEASE, ctx.max_new_tokens, ctx.batch)
    eos = ctx.validator.eos_id
    for p, seed, g in zip(ctx.prompts, ctx.seeds, gens, strict=True):
        cut = max(1, (3 * len(g.token_ids)) // 4)
        tokens = list(g.token_ids[:cut])
        rows = cut
        if fake_eos:
            tokens[-1] = eos  # the state at this position sampled the dropped token, not eos
        elif tokens[-1] == eos:
            tokens = tokens[:-1] or tokens
            rows = len(tokens)
        out.append(Sample(p, tokens, proofs_of(g.hidden[:rows]), seed, LEASE, ctx.max_new_tokens))
    return out


def cheat_rows(ctx: Ctx) -> list[tuple[str, str, Callable[[], list[Sample]]]]:
    """(name, how, make) for every cheat of the issue, plus variants that probe the limits."""
    v = ctx.validator

    def sampled_with(temperature: float, top_p: float) -> Callable[[], list[Sample]]:
        return lambda: _honest(ctx, v, SamplingParams(temperature, top_p))

    return [
        ("other weights", "seeded: model seed 1 instead of 0; trained: decoder rows shuffled",
         lambda: cheat_other_weights(ctx)),
        ("weights + 1% noise", "decoder matrices + N(0, (1% of their std)^2)",
         lambda: cheat_weights(ctx, add_noise(0.01))),
        ("int8 weights", "per-channel absmax fake-quant of decoder linears",
         lambda: cheat_weights(ctx, fake_quantize(8))),
        ("int4 weights", "per-channel absmax fake-quant of decoder linears",
         lambda: cheat_weights(ctx, fake_quantize(4))),
        ("fp32 generation, bf16 check", "worker runs the fp32 model; manifest bf16",
         lambda: _honest(ctx, ctx.backend(dtype="float32"))),
        ("one prompt token changed", "first digit of the problem +1",
         lambda: cheat_prompt_token(ctx)),
        ("16 output tokens injected", "tokens 16-31 overwritten, proved by the worker's prefill",
         lambda: cheat_injected(ctx, 16)),
        ("1 output token injected", "the middle token overwritten (an answer digit)",
         lambda: cheat_injected(ctx, 1)),
        ("temperature 1.0 (lease 0.6)", "worker samples with T=1.0", sampled_with(1.0, 0.95)),
        ("top-p 1.0 (lease 0.95)", "worker samples from the whole vocabulary",
         sampled_with(0.6, 1.0)),
        ("top-p 0.8 (lease 0.95)", "worker samples from a smaller nucleus",
         sampled_with(0.6, 0.8)),
        ("output cut short", "3/4 of the output, no eos",
         lambda: cheat_cut(ctx, fake_eos=False)),
        ("output cut short + fake eos", "3/4 of the output, last token replaced by eos",
         lambda: cheat_cut(ctx, fake_eos=True)),
    ] + ([
        ("MoE: top-k - 1 experts", "every router picks one expert fewer per token",
         lambda: cheat_fewer_experts(ctx)),
        ("MoE: shared expert skipped", "the shared expert of every MoE layer returns 0",
         lambda: cheat_no_shared_expert(ctx)),
        ("MoE: one expert int4", "expert 0 of every MoE layer fake-quantised to int4",
         lambda: cheat_one_expert_int4(ctx)),
    ] if ctx.moe else [])  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Scoring (pure: from stored measurements)


def evaluate(row: Row, policy: ProofPolicy) -> dict[str, Any]:
    """Detection (cheats) or false-positive (honest) rates of one row under one policy."""
    n = len(row.measured)
    chunks = [c for m in row.measured for c in m.checks]
    toploc_samples = replay_samples = completion_samples = decided = 0
    failing_chunk_count = 0
    for m in row.measured:
        failing = failing_chunks(m.checks, policy.toploc)
        failing_chunk_count += len(failing)
        replay = replay_check(list(m.shortfalls), policy.replay_tolerance)
        fraction = replay.mismatches / replay.checked if replay.checked else 0.0
        toploc_samples += bool(failing)
        replay_samples += fraction > policy.max_replay_mismatch_fraction
        completion_samples += not m.completion.complete
        decided += not decide(m.checks, replay, policy, m.completion).passed
    return {
        "toploc_chunk_rate": _rate(failing_chunk_count, len(chunks)),
        "toploc_sample_rate": _rate(toploc_samples, n),
        "replay_sample_rate": _rate(replay_samples, n),
        "completion_sample_rate": _rate(completion_samples, n),
        "decision_rate": _rate(decided, n),
    }


def _rate(k: int, n: int) -> float:
    return round(k / n, 4) if n else 0.0


def chunk_stats(checks: Sequence[ChunkCheck]) -> dict[str, Any]:
    """Per-chunk TOPLOC statistics; mantissa errors of chunks with no exponent match excluded."""
    finite = [c for c in checks if c.mant_err_mean < 2**63]
    exp = [c.exp_mismatches for c in checks]
    mean = [c.mant_err_mean for c in finite]
    median = [c.mant_err_median for c in finite]
    return {
        "exp_mismatches": _spread(exp),
        "mant_err_mean": _spread(mean),
        "mant_err_median": _spread(median),
        "sign_mismatches_max": max((c.sign_mismatches for c in checks), default=0),
        "no_exponent_match_chunks": len(checks) - len(finite),
    }


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": round(min(values), 3),
        "mean": round(statistics.fmean(values), 3),
        "max": round(max(values), 3),
    }


def policies_for(model: str, dtype: str) -> dict[str, ProofPolicy]:
    return {
        "default": ProofPolicy(ToplocThresholds()),
        "recommended": recommended_policy(model, dtype),
    }


def row_summary(row: Row) -> dict[str, Any]:
    checks = [c for m in row.measured for c in m.checks]
    replay_rates = [
        replay_check(
            list(m.shortfalls),
            policies_for(row.model, row.manifest_dtype)["recommended"].replay_tolerance,
        ).mismatches
        / max(1, len(m.shortfalls))
        for m in row.measured
    ]
    return {
        "model": row.model,
        "manifest_dtype": row.manifest_dtype,
        "name": row.name,
        "kind": row.kind,
        "how": row.how,
        "samples": len(row.measured),
        "chunks": len(checks),
        "tokens": sum(len(m.shortfalls) for m in row.measured),
        "seconds": round(row.seconds, 1),
        "toploc": chunk_stats(checks),
        "replay_mismatch_fraction": _spread(replay_rates),
        "rates": {
            name: evaluate(row, policy)
            for name, policy in policies_for(row.model, row.manifest_dtype).items()
        },
        "routing": row.routing,
        "measurements": [_measurement(m) for m in row.measured],
    }


def _measurement(m: Measured) -> dict[str, Any]:
    return {
        "checks": [
            [c.exp_mismatches, round(c.mant_err_mean, 4), c.mant_err_median, c.sign_mismatches]
            for c in m.checks
        ],
        # Sparse: most sampled tokens are exactly the sampler's choice (shortfall 0).
        "tokens": len(m.shortfalls),
        "shortfalls": {
            str(i): (round(s, 5) if math.isfinite(s) else "inf")
            for i, s in enumerate(m.shortfalls)
            if s != 0.0
        },
        "completion": list(m.completion.reasons),
    }


# --------------------------------------------------------------------------------------------------
# Running


def routed_honest(
    ctx: Ctx, policy: ProofPolicy
) -> tuple[list[Sample], list[Measured], dict[str, Any]]:
    """Batch-1 honest samples of a MoE model with every router traced in the worker's decode
    and the validator's prefill: how often routing differs, and what that does to the chunks."""
    samples: list[Sample] = []
    measured: list[Measured] = []
    pairs = differing = 0
    flipped_exp: list[int] = []
    clean_exp: list[int] = []
    for p, seed in zip(ctx.prompts, ctx.seeds, strict=True):
        with trace_routing(ctx.validator.model) as dec:
            g = ctx.validator.generate(
                p, seed=seed, params=LEASE, max_new_tokens=ctx.max_new_tokens
            )
        sample = Sample(p, g.token_ids, proofs_of(g.hidden), seed, LEASE, ctx.max_new_tokens)
        samples.append(sample)  # the validator-side variations reuse these generations
        with trace_routing(ctx.validator.model) as pre:
            m = measure(ctx.validator, sample, policy)
        measured.append(m)
        diff = routing_differences(dec, pre, len(p), len(g.token_ids))
        pairs += diff.pairs
        differing += diff.differing
        flips = set(diff.positions_differing)
        for i, check in enumerate(m.checks):
            chunk = range(i * 32, (i + 1) * 32)
            (flipped_exp if flips.intersection(chunk) else clean_exp).append(check.exp_mismatches)
    routing = {
        "token_layer_pairs": pairs,
        "pairs_routed_differently": differing,
        "rate": round(differing / pairs, 5) if pairs else 0.0,
        "chunks_with_a_flip": len(flipped_exp),
        "chunks_without": len(clean_exp),
        "exp_mismatches_with_flip": _spread(flipped_exp),
        "exp_mismatches_without": _spread(clean_exp),
    }
    return samples, measured, routing


def run_rows(
    ctx: Ctx,
    honest: Sequence[Variation],
    cheats: bool,
    log: Callable[[str], None],
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    policy = recommended_policy(ctx.model, ctx.dtype)
    rows: list[Row] = []
    workers: dict[tuple[str, str | None], HFBackend] = {("sdpa", None): ctx.validator}
    made: dict[tuple[tuple[str, str | None], int], list[Sample]] = {}

    def done(row: Row, t0: float) -> None:
        row.seconds = time.perf_counter() - t0
        rows.append(row)
        r = evaluate(row, policy)
        log(
            f"{ctx.model} {ctx.dtype} {row.kind:6} {row.name:32} {len(row.measured):3} samples "
            f"{sum(len(m.checks) for m in row.measured):5} chunks, "
            f"decision {r['decision_rate']:.2f} ({row.seconds:.0f} s)"
            + (f", routing differs {row.routing['rate']:.4f}" if row.routing else "")
        )
        if on_row is not None:
            on_row(row)

    for v in honest:
        t0 = time.perf_counter()
        how = (
            f"batch {v.batch_size}, worker {v.worker_attn}"
            + (f"/{v.worker_experts} experts" if v.worker_experts else "")
            + f", validator threads {v.validator_threads or 'same'}"
            + (f", padded audit of {v.audit_batch}" if v.audit_batch > 1 else "")
        )
        row = Row(ctx.model, ctx.dtype, v.name, "honest", how)
        plain = v == Variation("batch 1")
        if plain and ctx.moe:
            made[v.worker_key, 1], row.measured, row.routing = routed_honest(ctx, policy)
            done(row, t0)
            continue
        key = v.worker_key
        if key not in workers:
            workers[key] = ctx.backend(attn=key[0], experts=key[1])
        if (key, v.batch_size) not in made:
            made[key, v.batch_size] = honest_samples(
                workers[key], v, ctx.prompts, ctx.seeds, LEASE, ctx.max_new_tokens
            )
        batch = made[key, v.batch_size]
        if v.audit_batch > 1:
            row.measured = measure_batch(ctx.validator, batch, policy, audit_batch=v.audit_batch)
        else:
            row.measured = [
                measure(ctx.validator, s, policy, threads=v.validator_threads) for s in batch
            ]
        done(row, t0)
    if cheats:
        for name, how, make in cheat_rows(ctx):
            t0 = time.perf_counter()
            row = Row(ctx.model, ctx.dtype, name, "cheat", how)
            row.measured = [measure(ctx.validator, s, policy) for s in make()]
            done(row, t0)
    return rows


def make_ctx(model: str, dtype: str, samples: int, max_new_tokens: int, batch: int = 1) -> Ctx:
    validator = HFBackend(resolve_spec(model, seed=MODEL_SEED, dtype=dtype))
    prompts = calibration_prompts(validator.tokenizer, samples, offset=PROMPT_OFFSET, model=model)
    seeds = [lease_seed(i, offset=PROMPT_OFFSET) for i in range(samples)]
    return Ctx(model, dtype, validator, prompts, seeds, max_new_tokens, batch)


def bf16_checked_as_fp32(
    model: str,
    samples: int,
    max_new_tokens: int,
    log: Callable[[str], None],
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """The manifest says fp32; one worker runs bf16. Also the fp32 honest rows it is judged by."""
    ctx = make_ctx(model, "float32", samples, max_new_tokens)
    honest = [HONEST_VARIATIONS[0], HONEST_VARIATIONS[1], HONEST_VARIATIONS[4]]
    rows = run_rows(ctx, honest, cheats=False, log=log, on_row=on_row)
    t0 = time.perf_counter()
    cheat = Row(
        model,
        "float32",
        "bf16 generation, fp32 check",
        "cheat",
        "worker runs the bf16 model; manifest fp32",
    )
    made = _honest(ctx, ctx.backend(dtype="bfloat16"))
    cheat.measured = [measure(ctx.validator, s, recommended_policy(model, "float32")) for s in made]
    cheat.seconds = time.perf_counter() - t0
    log(
        f"{model} float32 cheat  bf16 generation, fp32 check: {len(made)} samples "
        f"({cheat.seconds:.0f} s)"
    )
    if on_row is not None:
        on_row(cheat)
    return [*rows, cheat]


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | manifest | row | samples | chunks | exp mism. min/mean/max | mant mean max | "
        "TOPLOC (default) | TOPLOC (rec.) | replay (rec.) | completion | decision (default) | "
        "decision (rec.) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        t = r["toploc"]
        e = t["exp_mismatches"] or {"min": 0, "mean": 0, "max": 0}
        mm = t["mant_err_mean"]["max"] if t["mant_err_mean"] else "-"
        d, rec = r["rates"]["default"], r["rates"]["recommended"]
        lines.append(
            f"| {r['model']} | {r['manifest_dtype']} | {r['kind']}: {r['name']} | {r['samples']} | "
            f"{r['chunks']} | {e['min']:g}/{e['mean']:g}/{e['max']:g} | {mm} | "
            f"{d['toploc_sample_rate']:.0%} | {rec['toploc_sample_rate']:.0%} | "
            f"{rec['replay_sample_rate']:.0%} | {rec['completion_sample_rate']:.0%} | "
            f"{d['decision_rate']:.0%} | {rec['decision_rate']:.0%} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Plan:
    """How much of each row one model gets: (samples, max new tokens) for the honest rows (the
    variations at batch 8 and up get ``bulk`` samples: batched decoding is the cheap way to many
    honest chunks), the cheats and the fp32 rows; cheating workers decode ``cheat_batch`` rows
    together."""

    honest: tuple[int, int]
    cheats: tuple[int, int]
    fp32: tuple[int, int] | None
    bulk: int = 0
    cheat_batch: int = 1
    quick: tuple[int, int] = (3, 48)


# Sized for 2 shared cores (docs/proof.md): the tiny MoE carries the bulk of the honest chunks.
PLANS: dict[str, Plan] = {
    "tiny": Plan(honest=(32, 128), cheats=(24, 96), fp32=(12, 96)),
    "small": Plan(honest=(12, 64), cheats=(10, 64), fp32=(6, 64), quick=(2, 40)),
    "deepseek-v3-tiny": Plan(
        honest=(16, 256), cheats=(16, 128), fp32=(8, 128), bulk=160, cheat_batch=8
    ),
    "deepseek-v3-small": Plan(honest=(8, 96), cheats=(8, 64), fp32=None, bulk=16, cheat_batch=8),
    "smollm2-135m": Plan(honest=(8, 160), cheats=(8, 96), fp32=None, bulk=32, cheat_batch=8),
}


def result_path(out_dir: Path, model: str, tag: str = "") -> Path:
    """Per-model results (the tiny/small run of 2026-11-22 is proof_detection.json); a run of
    the cheats alone is tagged ``cheats``."""
    return out_dir / f"proof_detection_{model}{'_' + tag if tag else ''}.json"


def write_doc(path: Path, rows: list[Row], started: float, quick: bool) -> dict[str, Any]:
    """The results so far (rewritten after every row, so a long run can be read as it goes)."""
    summaries = [row_summary(r) for r in rows]
    honest = [r for r in rows if r.kind == "honest"]
    suggested = {}
    for model, dtype in sorted({(r.model, r.manifest_dtype) for r in honest}):
        measured = [
            m for r in honest if (r.model, r.manifest_dtype) == (model, dtype) for m in r.measured
        ]
        if not any(m.checks for m in measured):
            continue
        cal = calibrate(
            [m.checks for m in measured],
            [m.unbounded for m in measured],
            current=recommended_policy(model, dtype),
        )
        suggested[f"{model}/{dtype}"] = [s.__dict__ for s in cal.suggestions]
    doc = {
        "benchmark": "proof-detection",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine_info(),
        "quick": quick,
        "lease": {"temperature": LEASE.temperature, "top_p": LEASE.top_p},
        "policies": {
            f"{m}/{d}": {k: asdict(v) for k, v in policies_for(m, d).items()}
            for m, d in sorted({(r.model, r.manifest_dtype) for r in rows})
        },
        "totals": totals(summaries, time.perf_counter() - started),
        "suggested_from_these_honest_rows": suggested,
        "rows": summaries,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # One line: the per-sample measurements make an indented file several times larger.
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return doc


def totals(summaries: Sequence[dict[str, Any]], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "honest_chunks": sum(s["chunks"] for s in summaries if s["kind"] == "honest"),
        "honest_samples": sum(s["samples"] for s in summaries if s["kind"] == "honest"),
        "seconds": round(seconds, 1),
    }
    for name in ("default", "recommended"):
        out[f"{name}_false_positive_chunks"] = sum(
            round(s["rates"][name]["toploc_chunk_rate"] * s["chunks"])
            for s in summaries
            if s["kind"] == "honest"
        )
        out[f"{name}_false_positive_samples"] = sum(
            round(s["rates"][name]["decision_rate"] * s["samples"])
            for s in summaries
            if s["kind"] == "honest"
        )
    return out


def run_model(
    model: str,
    quick: bool,
    out: Path,
    log: Callable[[str], None],
    cheats_only: tuple[int, int] | None = None,
    bulk_only: bool = False,
    bulk_samples: int | None = None,
) -> None:
    """Every row of one model, its results file rewritten after each row; ``cheats_only``
    (samples, tokens) runs just the cheat rows at that size, ``bulk_only`` just the large
    honest batches (the bulk of the honest chunks)."""
    plan = PLANS[model]
    if cheats_only is not None:
        plan = Plan(honest=cheats_only, cheats=cheats_only, fp32=None, cheat_batch=cheats_only[0])
    started = time.perf_counter()
    rows: list[Row] = []

    def keep(row: Row) -> None:
        rows.append(row)
        write_doc(out, rows, started, quick)

    h = plan.quick if quick else plan.honest
    c = plan.quick if quick else plan.cheats
    variations = variations_for(model)
    base = [v for v in variations if v.batch_size < 8]
    bulk = [v for v in variations if v.batch_size >= 8]
    if bulk_only:
        n = h[0] if quick else max(h[0], bulk_samples or plan.bulk)
        run_rows(make_ctx(model, "bfloat16", n, h[1]), bulk, cheats=False, log=log, on_row=keep)
        return
    # The bulk of the honest chunks comes last: on a busy machine a run cut short still has
    # every cheat and every kind of variation.
    if cheats_only is None:
        ctx = make_ctx(model, "bfloat16", h[0], h[1])
        run_rows(ctx, base, cheats=False, log=log, on_row=keep)
    ctx = make_ctx(model, "bfloat16", c[0], c[1], batch=plan.cheat_batch)
    run_rows(ctx, (), cheats=True, log=log, on_row=keep)
    if plan.fp32 is not None:
        f = plan.quick if quick else plan.fp32
        bf16_checked_as_fp32(model, f[0], f[1], log, on_row=keep)
    if bulk and cheats_only is None:
        n = h[0] if quick else max(h[0], plan.bulk)
        run_rows(make_ctx(model, "bfloat16", n, h[1]), bulk, cheats=False, log=log, on_row=keep)


def sample_statistic(m: Measured) -> float:
    """A sample's average chunk ``mant_err_mean`` (chunks with no exponent match left out): the
    measure a cheat that shifts every state a little moves, averaged per contributor."""
    values = [c.mant_err_mean for c in m.checks if c.mant_err_mean < 2**63]
    return sum(values) / len(values) if values else 0.0


def replay_fraction(m: Measured, tolerance: float) -> float:
    """The share of a sample's tokens that fail the replay at ``tolerance``."""
    replay = replay_check(list(m.shortfalls), tolerance)
    return replay.mismatches / replay.checked if replay.checked else 0.0


def validator_runs(samples: Sequence[Measured], policy: ProofPolicy) -> list[int | None]:
    """The validator's whole decision (each audit's own checks, then the replay tally) over
    simulated runs of one contributor's audits drawn from ``samples``: the audit at which each
    run is first punished, or None (``proof.tally.first_punishments``)."""
    prepared = []
    for m in samples:
        replay = replay_check(list(m.shortfalls), policy.replay_tolerance)
        passes = decide(m.checks, replay, policy, m.completion).passed
        prepared.append((passes, replay.checked, replay.mismatches))
    return first_punishments(prepared, policy.honest_replay_rate)


def tolerance_sweep(
    rows: Sequence[Row], model: str, tolerances: Sequence[float]
) -> list[dict[str, Any]]:
    """What a tighter replay tolerance would give once the tally absorbs honest near-ties: for
    each tolerance, the per-audit allowance (the calibration rule on the honest rows' worst
    fraction) and the tally's rate (``honest_rate_ceiling`` of the worst honest row and the
    largest), then the validator's whole decision over simulated runs of 32 audits, honest and
    cheating. In-sample for the honest rows (they also set the limits): an analysis of the
    trade-off, not a calibration."""
    base = recommended_policy(model, "bfloat16")
    of_model = [r for r in rows if r.model == model and r.manifest_dtype == "bfloat16"]
    honest = [r for r in of_model if r.kind == "honest" and r.measured]
    cheats = {r.name: r.measured for r in of_model if r.kind == "cheat" and r.measured}
    out = []
    for tolerance in tolerances:
        fractions, counts = [], []
        for r in honest:
            replays = [replay_check(list(m.shortfalls), tolerance) for m in r.measured]
            fractions += [x.mismatches / x.checked for x in replays if x.checked]
            counts.append((sum(x.mismatches for x in replays), sum(x.checked for x in replays)))
        worst = max(counts, key=lambda c: c[0] / max(1, c[1]))
        rate = honest_rate_ceiling([worst, max(counts, key=lambda c: c[1])])
        allowance = suggest_threshold("max_replay_mismatch_fraction", max(fractions))
        policy = replace(
            base,
            replay_tolerance=tolerance,
            max_replay_mismatch_fraction=allowance,
            honest_replay_rate=rate,
        )
        punished = max(
            sum(f is not None for f in validator_runs(r.measured, policy)) for r in honest
        )
        out.append({
            "model": model, "replay_tolerance": tolerance,
            "max_replay_mismatch_fraction": allowance, "honest_replay_rate": round(rate, 6),
            "honest_runs_punished_worst_row": punished,
            "audits_for_99pct": {
                name: audits_to_flag(validator_runs(samples, policy))
                for name, samples in cheats.items()
            },
        })  # fmt: skip
    return out


def tally_honest(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Honest contributors under the validator's whole decision (per audit and replay tally):
    the share of simulated runs of 32 audits that punish them, per honest row and pooled."""
    out = []
    for model, dtype in sorted({(r.model, r.manifest_dtype) for r in rows}):
        policy = recommended_policy(model, dtype)
        honest = [
            r for r in rows if r.kind == "honest" and (r.model, r.manifest_dtype) == (model, dtype)
        ]
        groups = [(r.name, r.measured) for r in honest if r.measured]
        groups.append(("all honest rows", [m for _, ms in groups for m in ms]))
        for name, samples in groups:
            if not samples:
                continue
            runs = validator_runs(samples, policy)
            out.append({
                "model": model, "manifest_dtype": dtype, "honest": name,
                "samples": len(samples), "runs": len(runs),
                "runs_punished": sum(f is not None for f in runs),
                "honest_replay_rate": policy.honest_replay_rate,
            })  # fmt: skip
    return out


def aggregation(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """For every cheat that one audit does not always catch: how many audits of one
    contributor reach 99 % (any failed audit; and the average statistic over its audits against
    the honest samples of the same model and dtype, every honest draw passing)."""
    out = []
    for row in rows:
        if row.kind != "cheat" or not row.measured:
            continue
        policy = recommended_policy(row.model, row.manifest_dtype)
        rate = evaluate(row, policy)["decision_rate"]
        if rate >= 1.0:
            continue
        entry: dict[str, Any] = {
            "model": row.model,
            "manifest_dtype": row.manifest_dtype,
            "cheat": row.name,
            "samples": len(row.measured),
            "caught_per_audit": rate,
            "audits_for_99pct_any_failure": audits_for_confidence(rate),
        }
        key = (row.model, row.manifest_dtype)
        honest_rows = [r for r in rows if r.kind == "honest" and (r.model, r.manifest_dtype) == key]
        statistics_ = {
            "mant_err": sample_statistic,
            "replay": lambda m, t=policy.replay_tolerance: replay_fraction(m, t),
        }
        for stat, fn in statistics_.items():
            honest = [fn(m) for r in honest_rows for m in r.measured if m.checks]
            cheat = [fn(m) for m in row.measured if m.checks]
            if honest and cheat:
                sep = audits_to_separate(honest, cheat, max_audits=64, trials=1000)
                entry[f"audits_for_99pct_average_{stat}"] = sep.audits
                entry[f"average_{stat}_limit"] = round(sep.limit, 4)
                entry[f"average_{stat}_detection"] = round(sep.detection, 4)
        runs = validator_runs(row.measured, policy)
        entry["audits_for_99pct_validator_with_tally"] = audits_to_flag(runs)
        entry[f"caught_within_{TALLY_WINDOW}_audits_validator_with_tally"] = round(
            sum(f is not None for f in runs) / len(runs), 4
        )
        out.append(entry)
    return out


def split_half(rows: Sequence[Row], model: str, dtype: str) -> dict[str, Any] | None:
    """Calibrate on the honest samples of even prompt index and count how many of the odd ones
    the suggested policy fails: a held-out check when no separate calibration run exists."""
    honest = [
        r for r in rows if r.kind == "honest" and (r.model, r.manifest_dtype) == (model, dtype)
    ]
    train = [m for r in honest for i, m in enumerate(r.measured) if i % 2 == 0 and m.checks]
    test = [m for r in honest for i, m in enumerate(r.measured) if i % 2 == 1 and m.checks]
    if not train or not test:
        return None
    cal = calibrate(
        [m.checks for m in train], [m.unbounded for m in train],
        current=recommended_policy(model, dtype),
    )  # fmt: skip
    policy = cal.policy
    failed_samples = failed_chunks = 0
    for m in test:
        replay = replay_check(list(m.shortfalls), policy.replay_tolerance)
        failed_samples += not decide(m.checks, replay, policy, m.completion).passed
        failed_chunks += len(failing_chunks(m.checks, policy.toploc))
    return {
        "model": model,
        "manifest_dtype": dtype,
        "train_chunks": cal.chunks,
        "test_samples": len(test),
        "test_chunks": sum(len(m.checks) for m in test),
        "test_failed_samples": failed_samples,
        "test_failed_chunks": failed_chunks,
        "suggested": asdict(policy),
    }


def rescore_rows(paths: Sequence[Path]) -> list[Row]:
    """Rows of stored results, with their measurements (see :func:`rescore`)."""
    return _load_rows(paths)


def rescore(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Summaries of stored rows, every rate recomputed under today's recommended policy."""
    return [row_summary(r) for r in _load_rows(paths)]


def _load_rows(paths: Sequence[Path]) -> list[Row]:
    """Rows of stored results (the measurements are stored, so a new calibration needs no new
    generation)."""
    from flopnet.proof.calibrate import UNBOUNDED_TOLERANCE
    from flopnet.proof.completion import CompletionCheck

    out = []
    for path in paths:
        doc = json.loads(path.read_text())
        for r in doc["rows"]:
            row = Row(r["model"], r["manifest_dtype"], r["name"], r["kind"], r["how"])
            row.seconds, row.routing = r["seconds"], r.get("routing")
            for m in r["measurements"]:
                shortfalls = [0.0] * m["tokens"]
                for i, v in m["shortfalls"].items():
                    shortfalls[int(i)] = math.inf if v == "inf" else float(v)
                checks = tuple(
                    ChunkCheck(int(a), float(b), float(c), int(d)) for a, b, c, d in m["checks"]
                )
                completion = CompletionCheck(m["tokens"], 0, False, None, tuple(m["completion"]))
                unbounded = replay_check(shortfalls, UNBOUNDED_TOLERANCE)
                row.measured.append(
                    Measured(checks, tuple(shortfalls), unbounded, unbounded, completion,
                             decide(checks, unbounded, ProofPolicy(ToplocThresholds())))
                )  # fmt: skip
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few samples per row (smoke run)")
    parser.add_argument(
        "--models", default="deepseek-v3-tiny,smollm2-135m,deepseek-v3-small",
        help=f"comma-separated, of {sorted(PLANS)}",
    )  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--cheats-only", metavar="SAMPLES,TOKENS",
        help="run only the cheat rows at this size (results tagged _cheats)",
    )  # fmt: skip
    parser.add_argument(
        "--bulk-only", action="store_true",
        help="run only the large honest batches (results tagged _bulk)",
    )  # fmt: skip
    parser.add_argument(
        "--bulk-samples", type=int, help="samples per large honest batch row (default: the plan's)"
    )
    parser.add_argument(
        "--report", action="store_true",
        help="no generation: rescore every stored result under the recommended policies",
    )  # fmt: skip
    parser.add_argument(
        "--sweep-tolerance", metavar="T1,T2,...",
        help="with --report: the replay-tolerance trade-off with the tally, per model",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(WORKER_THREADS)
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {line}", file=sys.stderr, flush=True)

    models = [m for m in args.models.split(",") if m]
    if args.report:
        paths = [result_path(args.out_dir, m, t) for m in models for t in ("", "cheats", "bulk")]
        rows = rescore_rows([p for p in paths if p.exists()])
        summaries = [row_summary(r) for r in rows]
        print(markdown(summaries))
        report = {
            "benchmark": "proof_detection_report",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "inputs": [p.name for p in paths if p.exists()],
            "totals": totals(summaries, 0.0),
            "aggregation": aggregation(rows),
            "tally_honest": tally_honest(rows),
            "split_half": [
                split_half(rows, model, dtype)
                for model, dtype in sorted({(r.model, r.manifest_dtype) for r in rows})
            ],
            "routing": [(r.model, r.manifest_dtype, r.name, r.routing) for r in rows if r.routing],
            "tolerance_sweep": [
                entry
                for model in models
                for entry in tolerance_sweep(
                    rows, model, [float(t) for t in (args.sweep_tolerance or "").split(",") if t]
                )
            ],
        }
        for key in ("aggregation", "tally_honest", "split_half", "routing", "tolerance_sweep"):
            for entry in report[key]:
                print(json.dumps(entry))
        out = args.out_dir / f"proof_detection_report_{'_'.join(models)}.json"
        out.write_text(json.dumps(report, indent=1) + "\n")
        log(f"wrote {out}")
        return
    for model in models:
        if model not in PLANS:
            raise SystemExit(f"unknown model {model!r}; known: {sorted(PLANS)}")
    only = None
    if args.cheats_only:
        n, t = (int(x) for x in args.cheats_only.split(","))
        only = (n, t)
    for model in models:
        tag = "cheats" if only else "bulk" if args.bulk_only else ""
        out = result_path(args.out_dir, model, tag)
        run_model(
            model,
            args.quick,
            out,
            log,
            cheats_only=only,
            bulk_only=args.bulk_only,
            bulk_samples=args.bulk_samples,
        )
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
