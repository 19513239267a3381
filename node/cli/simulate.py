"""``flopnet simulate``: a seeded discrete-event simulation of a large network (flopnet.sim).

Imports stay inside the handler, so ``flopnet --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from flopnet.protocol.errors import ConfigError


def _pairs(text: str, what: str) -> tuple[tuple[str, float], ...]:
    """``name=share,name=share`` (a bare name means share 1)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, share = part.partition("=")
        try:
            out.append((name.strip(), float(share) if share else 1.0))
        except ValueError:
            raise ConfigError(f"{what}: {part!r} is not NAME=SHARE") from None
    return tuple(out)


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``simulate`` subcommand."""
    p = sub.add_parser(
        "simulate",
        help="simulate a large network with the real decision code (seeded, reproducible)",
        description=(
            "A discrete-event simulation (SimPy) of publishers, validators and workers that "
            "drives flopnet's own lease book, claim pacer, audit book, schedule, proof judgement, "
            "credit policy and FLOP formula. One simulated sample stands for --sample-scale real "
            "ones (auto: as many as keep the run within --sample-budget samples)."
        ),
    )
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--days", type=float, default=7.0)
    p.add_argument("--validators", type=int, default=0, help="0: 20 per 1,000 workers")
    p.add_argument("--publishers", type=int, default=4)
    p.add_argument("--task-sets", default="math,code", help="comma-separated: math, code")
    p.add_argument("--samples-per-task", type=int, default=4)
    p.add_argument("--gpus", default="h200x8=0.8,b200x8=0.2", help="GPU classes and shares")
    p.add_argument("--validator-gpu", default="h200x8")
    p.add_argument("--initial-share", type=float, default=0.5, help="online at the start")
    p.add_argument("--session-hours", type=float, default=48.0, help="mean stay online")
    p.add_argument("--away-hours", type=float, default=12.0, help="mean time away")
    p.add_argument("--return-share", type=float, default=0.7, help="of leavers that come back")
    p.add_argument("--freezes-per-day", type=float, default=0.2)
    p.add_argument("--freeze-minutes", type=float, default=30.0)
    p.add_argument("--cheaters", default="", help="KIND=SHARE,... (e.g. int4=0.01)")
    p.add_argument("--cheat-fraction", type=float, default=1.0, help="of a cheater's samples")
    p.add_argument("--sybil-swarms", type=int, default=0)
    p.add_argument("--sybil-size", type=int, default=500)
    p.add_argument("--sybil-behaviour", choices=("hoard", "garbage"), default="hoard")
    p.add_argument("--audit-floor", type=float, default=0.05)
    p.add_argument("--lock-window-hours", type=float, default=24.0)
    p.add_argument("--lease-seconds", type=float, default=1800.0)
    p.add_argument("--proof-model", choices=("tiny", "small"), default="small")
    p.add_argument("--sample-scale", type=int, default=0, help="0: auto")
    p.add_argument("--sample-budget", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeline", action="store_true", help="include hourly counts in the JSON")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    return {"simulate": _run}


def config_from_args(args: argparse.Namespace) -> object:
    """The :class:`~flopnet.sim.config.SimConfig` the options describe."""
    from flopnet.sim.config import SimConfig

    same = [
        "workers",
        "days",
        "validators",
        "publishers",
        "samples_per_task",
        "validator_gpu",
        "initial_share",
        "session_hours",
        "away_hours",
        "return_share",
        "freezes_per_day",
        "freeze_minutes",
        "cheat_fraction",
        "sybil_swarms",
        "sybil_size",
        "sybil_behaviour",
        "audit_floor",
        "lease_seconds",
        "proof_model",
        "sample_scale",
        "sample_budget",
        "seed",
    ]
    return SimConfig(
        **{name: getattr(args, name) for name in same},
        task_sets=tuple(filter(None, (t.strip() for t in args.task_sets.split(",")))),
        gpu_mix=_pairs(args.gpus, "--gpus"),
        cheaters=_pairs(args.cheaters, "--cheaters"),
        lock_window_s=args.lock_window_hours * 3600.0,
        keep=("timeline",) if args.timeline else (),
    )


def _run(args: argparse.Namespace) -> int:
    from flopnet.sim.engine import Simulation
    from flopnet.sim.report import report, summary_lines

    cfg = config_from_args(args)
    doc = report(Simulation(cfg).run())  # type: ignore[arg-type]
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print("\n".join(summary_lines(doc)))
    return 0
