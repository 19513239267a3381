"""``flopnet export``: a node's or a devnet's checked traces as a dataset (raw, SFT, preference)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``export`` subcommand."""
    p = sub.add_parser(
        "export",
        help="write the checked traces as a dataset (raw, SFT or preference pairs)",
        description=(
            "Reads the traces the validators kept and the ledger's credit states: SFT and "
            "preference sets take only traces whose credit is final and never voided. Parquet "
            "output loads with datasets.load_dataset('parquet', data_dir=OUT)."
        ),
    )
    p.add_argument("--data-dir", type=Path, help="a validator's data dir or a devnet's")
    p.add_argument("--kind", choices=("raw", "sft", "preference"), default="raw")
    p.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    p.add_argument("--out", type=Path, required=True, help="the dataset's directory")
    p.add_argument("--as-of", type=float, help="Unix time the credit states are read at")
    p.add_argument(
        "--jobs",
        type=int,
        help="processes for a raw Parquet export, a file each (default: one per CPU from "
        "20,000 traces on)",
    )
    return {"export": _run}


def _run(args: argparse.Namespace) -> int:
    from flopnet.node.dataset.export import export
    from flopnet.protocol.errors import ConfigError

    if args.data_dir is None:
        raise ConfigError("give --data-dir (or set FLOPNET_HOME)")
    summary = export(
        args.data_dir, args.kind, args.format, args.out, now=args.as_of, jobs=args.jobs
    )
    print(json.dumps(summary, indent=1))
    return 0
