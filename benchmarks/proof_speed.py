"""TOPLOC proof speed on one CPU core, against the reference ``toploc`` package.

    python benchmarks/proof_speed.py [--chunks 64] [--rounds 7] [--out FILE.json]

For hidden sizes 4096 and 7168 (bf16 states, ``--chunks`` chunks of 32 rows) it measures, in
chunks per second on one core (the process is pinned to CPU 0 and torch uses one thread):
our ``build_proofs`` and ``verify_proofs``, the reference's ``build_proofs_bytes`` (its own build:
Python top-k plus C++ interpolation) and its C++ ``verify_proofs_bytes`` path (2-D tensor,
``skip_prefill=True``). Each figure is the best of ``--rounds`` rounds, the four measurements
interleaved within a round so that load from other processes hits them alike. It also checks
that our proof bytes equal the reference's on these states, and measures what proof building
costs beside generation with the embedded models. The reference is optional (it is built from
source, see docs/proof.md); without it the comparison columns say ``absent``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flopnet.proof.toploc import build_proofs, verify_proofs

GOAL_BUILD_SPEEDUP = 2.0  # ours at least 2x the reference build
GOAL_VERIFY_RATIO = 0.5  # ours within 2x of the reference C++ verify


def _reference() -> Any:
    try:
        import toploc
    except ImportError:
        return None
    return toploc


def _states(rows: int, width: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, width, generator=gen).to(torch.bfloat16)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_width(width: int, chunks: int, rounds: int, ref: Any) -> dict[str, Any]:
    """Chunks per second of our build and verify and the reference's, at one hidden size."""
    hidden = _states(32 * chunks, width, seed=width)
    noisy = (hidden.float() * (1 + 0.01 * torch.randn(hidden.shape))).to(torch.bfloat16)
    proofs = build_proofs(hidden)
    cases: dict[str, Callable[[], object]] = {
        "ours_build": lambda: build_proofs(hidden),
        "ours_verify": lambda: verify_proofs(noisy, proofs),
    }
    row: dict[str, Any] = {"hidden_size": width, "chunks": chunks}
    if ref is not None:
        theirs = list(ref.build_proofs_bytes(hidden, 32, 128, skip_prefill=True))
        row["bytes_identical_to_reference"] = theirs == proofs
        cases["ref_build"] = lambda: ref.build_proofs_bytes(hidden, 32, 128, skip_prefill=True)
        cases["ref_verify_cpp"] = lambda: ref.verify_proofs_bytes(
            noisy, proofs, 32, 128, skip_prefill=True
        )
    best = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            best[name] = min(best[name], _timed(fn))
    for name, seconds in best.items():
        row[f"{name}_chunks_per_s"] = round(chunks / seconds, 1)
    if ref is not None:
        build_x = best["ref_build"] / best["ours_build"]
        verify_x = best["ref_verify_cpp"] / best["ours_verify"]
        row["build_speedup_vs_reference"] = round(build_x, 2)
        row["verify_speed_vs_reference_cpp"] = round(verify_x, 2)
        row["build_goal_met"] = build_x >= GOAL_BUILD_SPEEDUP
        row["verify_goal_met"] = verify_x >= GOAL_VERIFY_RATIO
    else:
        row["reference"] = "absent"
    return row


def generation_share(model: str, tokens: int) -> dict[str, Any]:
    """Proof building time as a share of generating the same tokens (batch 1, one thread)."""
    from flopnet.node.model.hf_backend import HFBackend
    from flopnet.node.model.models import seeded_spec
    from flopnet.node.model.prompt import format_r1_prompt
    from flopnet.proof.sampling import SamplingParams

    backend = HFBackend(seeded_spec(model, seed=0))
    prompt = backend.tokenizer.encode(format_r1_prompt("What is 12 * 34?"), add_bos=True)
    params = SamplingParams()
    backend.generate(prompt, seed=1, params=params, max_new_tokens=4)  # warm-up
    gen = backend.generate(prompt, seed=1, params=params, max_new_tokens=tokens)
    generation_s = gen.prefill_s + gen.decode_s
    build_s = min(_timed(lambda: build_proofs(gen.hidden)) for _ in range(5))
    return {
        "model": model,
        "hidden_size": backend.hidden_size,
        "tokens": len(gen.token_ids),
        "generation_s": round(generation_s, 4),
        "proof_build_s": round(build_s, 5),
        "build_share_of_generation": round(build_s / generation_s, 5),
    }


def machine_info() -> dict[str, Any]:
    """Where a benchmark ran (shared with proof_detection.py)."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.is_available(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/proof_speed.json"))
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    ref = _reference()
    rows = [measure_width(w, args.chunks, args.rounds, ref) for w in (4096, 7168)]
    for row in rows:
        print(json.dumps(row), flush=True)
    share = [generation_share(m, 128) for m in ("tiny", "small")]
    for row in share:
        print(json.dumps(row), flush=True)
    doc = {
        "benchmark": "proof-speed",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {
            **machine_info(),
            "pinned_to_one_core": hasattr(os, "sched_setaffinity"),
        },
        "reference": getattr(ref, "__version__", "installed") if ref is not None else "absent",
        "states": "torch.randn bf16, chunk 32, topk 128",
        "goals": {
            "build_speedup_vs_reference_at_least": GOAL_BUILD_SPEEDUP,
            "verify_speed_vs_reference_cpp_at_least": GOAL_VERIFY_RATIO,
        },
        "widths": rows,
        "generation_share": share,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
