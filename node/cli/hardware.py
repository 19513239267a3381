"""``flopnet hardware``: what this machine has, and how it would run the network's model."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from flopnet.protocol.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``hardware`` subcommand."""
    p = sub.add_parser(
        "hardware",
        help="detect GPUs and memory; plan backend, tensor parallelism and batch size",
        description=(
            "Detects CUDA GPUs (through torch), the NVIDIA driver, RAM and vLLM, then plans how "
            "to run a model from its config alone (nothing is downloaded but config.json). Exits "
            "1 with the numbers when the model will not fit."
        ),
    )
    p.add_argument("--model", default="tiny", help="seeded model name or Hugging Face id")
    p.add_argument("--manifest", type=Path, help="take model and dtype from a network manifest")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "fp8"))
    p.add_argument(
        "--max-seq-tokens", type=int, default=4096, help="prompt + generated tokens per sequence"
    )
    p.add_argument("--backend", choices=("hf", "vllm"), help="force a backend")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return {"hardware": _run}


def _run(args: argparse.Namespace) -> int:
    from flopnet.node.model.hardware import GIB, detect, model_config, plan_for

    model, dtype, revision = args.model, args.dtype, ""
    if args.manifest is not None:
        from flopnet.node.config import NetworkParams

        net = NetworkParams.load(args.manifest)
        model, dtype, revision = net.model, net.dtype, net.model_revision
    hardware = detect()
    error = ""
    plan = None
    try:
        plan = plan_for(
            hardware,
            model_config(model, revision),
            dtype,
            args.max_seq_tokens,
            model_name=model,
            backend=args.backend,
        )
    except ConfigError as exc:
        error = str(exc)
    if args.json:
        doc = {
            "hardware": {
                "cpu_cores": hardware.cpu_cores,
                "ram_bytes": hardware.ram_bytes,
                "gpus": [vars(g) for g in hardware.gpus],
                "driver": hardware.driver,
                "cuda": hardware.cuda,
                "vllm": hardware.vllm,
            },
            "model": model,
            "dtype": dtype,
            "plan": plan.as_dict() if plan else None,
            "error": error or None,
        }
        print(json.dumps(doc, indent=2))
    else:
        gpus = ", ".join(f"{g.name} ({g.memory_bytes / GIB:.0f} GiB)" for g in hardware.gpus)
        print(f"CPU cores: {hardware.cpu_cores}; RAM: {hardware.ram_bytes / GIB:.1f} GiB")
        driver, cuda = hardware.driver or "-", hardware.cuda or "-"
        print(f"GPUs: {gpus or 'none'}; driver: {driver}; CUDA: {cuda}")
        print(f"vLLM: {'installed' if hardware.vllm else 'not installed'}")
        if plan is not None:
            print(
                f"{model} ({dtype}): {plan.backend} backend on {plan.device}, tensor parallel "
                f"{plan.tensor_parallel}, batch {plan.batch_size}; weights "
                f"{plan.weights_bytes / GIB:.2f} GiB; " + "; ".join(plan.notes)
            )
        else:
            print(f"{model} ({dtype}): {error}")
    return 0 if plan is not None else 1
