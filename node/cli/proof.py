"""``flopnet proof calibrate``: honest generation under the tolerated variations → thresholds.

Cheap to import: torch and the model load inside the handler, so ``flopnet --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``proof`` subcommand."""
    p = sub.add_parser("proof", help="TOPLOC proof tools: threshold calibration")
    actions = p.add_subparsers(dest="proof_command", required=True)
    cal = actions.add_parser(
        "calibrate",
        help="run honest generation under batch/attention/thread variations, suggest thresholds",
        description=(
            "Generates with the real backend at batch 1, 4, 8 and 16, with eager and SDPA "
            "attention (and, for MoE models, other expert kernels), with the validator on "
            "another thread count and auditing 8 at once in a padded prefill; validates every "
            "sample; prints the honest worst of each measure, the suggested threshold, its "
            "margin, and the recommended threshold the model ships with."
        ),
    )
    cal.add_argument(
        "--model",
        default="tiny",
        help="a seeded model (tiny, small, deepseek-v3-tiny, ...) or a trained one (smollm2-135m)",
    )
    cal.add_argument("--model-seed", type=int, default=0)
    cal.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    cal.add_argument("--samples", type=int, default=16, help="prompts per variation")
    cal.add_argument("--max-new-tokens", type=int, default=96)
    cal.add_argument("--json", action="store_true", help="print one JSON document")
    return {"proof": _run}


def _run(args: argparse.Namespace) -> int:
    if args.proof_command == "calibrate":
        return _calibrate(args)
    raise AssertionError(args.proof_command)  # argparse allows only the commands above


def _calibrate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from flopnet.node.model.calibration import run_honest
    from flopnet.node.model.tokenizer import EMBEDDED_MODELS
    from flopnet.node.model.trained import TRAINED_MODELS
    from flopnet.proof.calibrate import calibrate
    from flopnet.proof.policy import policy_params, recommended_policy
    from flopnet.protocol.errors import ConfigError

    if args.samples < 1 or args.max_new_tokens < 1:
        raise ConfigError("--samples and --max-new-tokens must be >= 1")
    if args.model not in EMBEDDED_MODELS | set(TRAINED_MODELS):
        known = sorted(EMBEDDED_MODELS | set(TRAINED_MODELS))
        raise ConfigError(f"--model must be a seeded or trained model ({', '.join(known)})")
    # Compared against what this model ships with (the paper-era values for unknown models).
    current = recommended_policy(args.model, args.dtype)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    runs = run_honest(
        args.model,
        args.dtype,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        policy=current,
        model_seed=args.model_seed,
        progress=progress,
    )
    measured = [m for run in runs for m in run.measured]
    result = calibrate(
        [m.checks for m in measured],
        [m.unbounded for m in measured],
        current=current,
    )
    doc: dict[str, Any] = {
        "model": args.model,
        "dtype": args.dtype,
        "variations": [run.variation.name for run in runs],
        "chunks": result.chunks,
        "samples": result.samples,
        "tokens": result.tokens,
        # Named as the manifest's fields (a pooled baseline of 0 there means no pooled check).
        "suggested": policy_params(result.policy),
        "measures": [asdict(s) for s in result.suggestions],
    }
    # What puts the suggestion in force: the proof policy of a new network's manifest.
    doc["network_init_flags"] = " ".join(
        f"--{name.replace('_', '-')} {value!r}" for name, value in doc["suggested"].items()
    )
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(
        f"{args.model} ({args.dtype}): {result.samples} honest samples, {result.chunks} chunks, "
        f"{result.tokens} tokens over: {', '.join(doc['variations'])}"
    )
    print(
        f"{'measure':30} {'honest worst':>12} {'honest mean':>12} {'suggested':>10} "
        f"{'margin':>8} {'shipped':>8} {'honest fails it':>16}"
    )
    for s in result.suggestions:
        print(
            f"{s.measure:30} {s.honest_worst:12.4g} {s.honest_mean:12.4g} {s.suggested:10.4g} "
            f"{s.margin:8.4g} {s.current:8.4g} {s.current_honest_failures:16d}"
        )
    print(f"to sign it into a network: flopnet network init ... {doc['network_init_flags']}")
    return 0
