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
from dataclasses import asdict, dataclass, field
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
    proofs_of,
)
from flopnet.node.model.hf_backend import HFBackend
from flopnet.node.model.models import seeded_spec
from flopnet.proof.calibrate import calibrate
from flopnet.proof.policy import ProofPolicy, decide, recommended_policy
from flopnet.proof.sampling import SamplingParams, replay_check
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

    def backend(self, **kw: Any) -> HFBackend:
        """A worker's model: the network's unless ``seed``/``dtype``/``attn`` say otherwise."""
        spec = seeded_spec(
            self.model, seed=kw.get("seed", MODEL_SEED), dtype=kw.get("dtype", self.dtype)
        )
        return HFBackend(spec, attn_implementation=kw.get("attn"))


@dataclass
class Row:
    model: str
    manifest_dtype: str
    name: str
    kind: str  # "honest" or "cheat"
    how: str
    measured: list[Measured] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------------
# Worker-side cheats: each returns what a cheating worker would submit for the lease's prompts.


def _honest(ctx: Ctx, worker: HFBackend, params: SamplingParams = LEASE) -> list[Sample]:
    gens = generate(worker, ctx.prompts, ctx.seeds, params, ctx.max_new_tokens)
    return [
        Sample(p, g.token_ids, proofs_of(g.hidden), s, LEASE, ctx.max_new_tokens)
        for p, s, g in zip(ctx.prompts, ctx.seeds, gens, strict=True)
    ]


def _perturb_linear(model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Apply ``fn`` (in float32) to the weight of every linear layer inside the decoder."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.startswith("model.layers."):
                w = module.weight
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


def cheat_prompt_token(ctx: Ctx) -> list[Sample]:
    """Generate for a prompt with one token changed (the first digit of the problem)."""
    out = []
    for p, s in zip(ctx.prompts, ctx.seeds, strict=True):
        where = next(i for i, t in enumerate(p) if 48 <= t <= 57)
        altered = [*p[:where], 48 + (p[where] - 48 + 1) % 10, *p[where + 1 :]]
        g = ctx.validator.generate(altered, seed=s, params=LEASE, max_new_tokens=ctx.max_new_tokens)
        out.append(Sample(p, g.token_ids, proofs_of(g.hidden), s, LEASE, ctx.max_new_tokens))
    return out


def cheat_injected(ctx: Ctx, count: int) -> list[Sample]:
    """Overwrite ``count`` generated tokens with chosen ones; prove the edited output honestly.

    The worker runs its own prefill over the edited tokens, so every proof matches: the model
    did run over these tokens. Only the replay can tell they were not sampled.
    """
    out = []
    for s in _honest(ctx, ctx.validator):
        tokens = list(s.token_ids)
        if count == 1:
            where = len(tokens) // 2
            tokens[where] = ord("7") if tokens[where] != ord("7") else ord("3")
        else:
            start = min(16, max(0, len(tokens) - count))
            for i, b in enumerate(INJECTED.encode()[:count]):
                if start + i < len(tokens):
                    tokens[start + i] = b
        pre = ctx.validator.prefill(s.prompt_ids, tokens)
        out.append(
            Sample(s.prompt_ids, tokens, proofs_of(pre.hidden), s.seed, LEASE, s.max_new_tokens)
        )
    return out


def cheat_cut(ctx: Ctx, fake_eos: bool) -> list[Sample]:
    """Stop at 3/4 of the output; optionally append eos there (its state is the honest one)."""
    out = []
    gens = generate(ctx.validator, ctx.prompts, ctx.seeds, LEASE, ctx.max_new_tokens)
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
        ("other weights", "worker model seed 1 instead of 0",
         lambda: _honest(ctx, ctx.backend(seed=1))),
        ("weights + 1% noise", "decoder linears + N(0, (1% of their std)^2)",
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
    ]  # fmt: skip


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


def run_rows(
    ctx: Ctx,
    honest: Sequence[Variation],
    cheats: bool,
    log: Callable[[str], None],
) -> list[Row]:
    policy = recommended_policy(ctx.model, ctx.dtype)
    rows: list[Row] = []
    workers: dict[str, HFBackend] = {"sdpa": ctx.validator}

    def record(
        name: str,
        kind: str,
        how: str,
        samples: Callable[[], list[Sample]],
        threads: int | None,
        t0: float,
    ) -> None:
        made = samples()
        row = Row(ctx.model, ctx.dtype, name, kind, how)
        row.measured = [measure(ctx.validator, s, policy, threads=threads) for s in made]
        row.seconds = time.perf_counter() - t0
        rows.append(row)
        r = evaluate(row, policy)
        log(
            f"{ctx.model} {ctx.dtype} {kind:6} {name:32} {len(row.measured):3} samples "
            f"{sum(len(m.checks) for m in row.measured):4} chunks, "
            f"decision {r['decision_rate']:.2f} ({row.seconds:.0f} s)"
        )

    for v in honest:
        t0 = time.perf_counter()
        if v.worker_attn not in workers:
            workers[v.worker_attn] = ctx.backend(attn=v.worker_attn)
        worker = workers[v.worker_attn]
        record(
            v.name,
            "honest",
            f"batch {v.batch_size}, worker {v.worker_attn}, "
            f"validator threads {v.validator_threads or 'same'}",
            lambda w=worker, v=v: honest_samples(
                w, v, ctx.prompts, ctx.seeds, LEASE, ctx.max_new_tokens
            ),  # type: ignore[misc]
            v.validator_threads,
            t0,
        )
    if cheats:
        for name, how, make in cheat_rows(ctx):
            record(name, "cheat", how, make, None, time.perf_counter())
    return rows


def make_ctx(model: str, dtype: str, samples: int, max_new_tokens: int) -> Ctx:
    validator = HFBackend(seeded_spec(model, seed=MODEL_SEED, dtype=dtype))
    prompts = calibration_prompts(validator.tokenizer, samples, offset=PROMPT_OFFSET)
    seeds = [lease_seed(i, offset=PROMPT_OFFSET) for i in range(samples)]
    return Ctx(model, dtype, validator, prompts, seeds, max_new_tokens)


def bf16_checked_as_fp32(
    model: str, samples: int, max_new_tokens: int, log: Callable[[str], None]
) -> list[Row]:
    """The manifest says fp32; one worker runs bf16. Also the fp32 honest rows it is judged by."""
    ctx = make_ctx(model, "float32", samples, max_new_tokens)
    honest = [HONEST_VARIATIONS[0], HONEST_VARIATIONS[1], HONEST_VARIATIONS[4]]
    rows = run_rows(ctx, honest, cheats=False, log=log)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few samples per row (smoke run)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/proof_detection.json"))
    args = parser.parse_args()
    q = args.quick
    torch.set_num_threads(WORKER_THREADS)
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {line}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    tiny = make_ctx("tiny", "bfloat16", 3 if q else 32, 64 if q else 128)
    rows += run_rows(tiny, HONEST_VARIATIONS, cheats=False, log=log)
    tiny_cheats = make_ctx("tiny", "bfloat16", 3 if q else 24, 64 if q else 96)
    rows += run_rows(tiny_cheats, (), cheats=True, log=log)
    rows += bf16_checked_as_fp32("tiny", 3 if q else 12, 64 if q else 96, log)
    small = make_ctx("small", "bfloat16", 2 if q else 12, 40 if q else 64)
    rows += run_rows(small, HONEST_VARIATIONS, cheats=False, log=log)
    small_cheats = make_ctx("small", "bfloat16", 2 if q else 10, 40 if q else 64)
    rows += run_rows(small_cheats, (), cheats=True, log=log)
    rows += bf16_checked_as_fp32("small", 2 if q else 6, 40 if q else 64, log)

    summaries = [row_summary(r) for r in rows]
    honest = [r for r in rows if r.kind == "honest"]
    suggested = {}
    for model, dtype in sorted({(r.model, r.manifest_dtype) for r in honest}):
        measured = [
            m for r in honest if (r.model, r.manifest_dtype) == (model, dtype) for m in r.measured
        ]
        cal = calibrate(
            [m.checks for m in measured],
            [m.unbounded for m in measured],
            current=recommended_policy(model, dtype),
        )
        suggested[f"{model}/{dtype}"] = [s.__dict__ for s in cal.suggestions]
    totals = {
        "honest_chunks": sum(s["chunks"] for s in summaries if s["kind"] == "honest"),
        "honest_samples": sum(s["samples"] for s in summaries if s["kind"] == "honest"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    for name in ("default", "recommended"):
        fp_chunks = sum(
            round(s["rates"][name]["toploc_chunk_rate"] * s["chunks"])
            for s in summaries
            if s["kind"] == "honest"
        )
        fp_samples = sum(
            round(s["rates"][name]["decision_rate"] * s["samples"])
            for s in summaries
            if s["kind"] == "honest"
        )
        totals[f"{name}_false_positive_chunks"] = fp_chunks
        totals[f"{name}_false_positive_samples"] = fp_samples
    doc = {
        "benchmark": "proof-detection",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine_info(),
        "quick": q,
        "lease": {"temperature": LEASE.temperature, "top_p": LEASE.top_p},
        "policies": {
            f"{m}/{d}": {k: asdict(v) for k, v in policies_for(m, d).items()}
            for m, d in sorted({(r.model, r.manifest_dtype) for r in rows})
        },
        "totals": totals,
        "suggested_from_these_honest_rows": suggested,
        "rows": summaries,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # One line: the per-sample measurements make an indented file several times larger.
    args.out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(markdown(summaries))
    print(json.dumps(totals))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
