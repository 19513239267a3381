"""``flopnet traces``: query the checked traces a validator kept (the dataset's raw material).

Filters by task set, task, contributor, credit state, verdict and score; prints a table, counts
per task set and state (``--counts``) or the matching traces as JSON Lines (``--json``, the raw
export's rows). Credit states come from the ledger, as for ``flopnet export``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flopnet.node.dataset.select import Marked

STATES = ("pending", "final", "void")


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``traces`` subcommand."""
    p = sub.add_parser(
        "traces",
        help="query the checked traces (task set, contributor, credit state, score)",
        description="Reads the validators' trace store and the ledger's credit states.",
    )
    p.add_argument("--data-dir", type=Path, help="a validator's data dir or a devnet's")
    p.add_argument("--task-set", help="only this task set (the task ids' stem)")
    p.add_argument("--task", help="only this task id")
    p.add_argument("--contributor", help="only this contributor (peer id or public key hex)")
    p.add_argument("--state", choices=STATES, help="only traces whose credit is in this state")
    verdict = p.add_mutually_exclusive_group()
    verdict.add_argument("--accepted", action="store_true", help="only accepted results")
    verdict.add_argument("--rejected", action="store_true", help="only rejected results")
    p.add_argument("--audited", action="store_true", help="only results whose proof was audited")
    p.add_argument("--min-score", type=float, help="only answers scoring at least this")
    p.add_argument("--limit", type=int, default=50, help="rows at most, newest first (0: all)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON Lines: the raw export's rows")
    out.add_argument("--counts", action="store_true", help="counts per task set and state")
    p.add_argument("--as-of", type=float, help="Unix time the credit states are read at")
    return {"traces": _run}


def matching(marked: Iterable[Marked], args: argparse.Namespace) -> list[Marked]:
    """The traces that pass every filter given (pure)."""
    contributor = _is_contributor(args.contributor) if args.contributor else None
    out = []
    for m in marked:
        t = m.trace
        if args.task_set is not None and t.task_set != args.task_set:
            continue
        if args.task is not None and t.task_id != args.task:
            continue
        if contributor is not None and not contributor(t.contributor):
            continue
        if args.state is not None and m.state.value != args.state:
            continue
        if (args.accepted and not t.accepted) or (args.rejected and t.accepted):
            continue
        if args.audited and not t.audited:
            continue
        if args.min_score is not None and t.answer_score < args.min_score:
            continue
        out.append(m)
    return out


def _is_contributor(text: str) -> Callable[[str], bool]:
    """Whether a trace's contributor (public key hex) is ``text`` (a peer id or key hex)."""
    from functools import cache

    from flopnet.protocol.identity import peer_id_from_public_key

    if text.startswith("12D3KooW"):

        @cache
        def same(key_hex: str) -> bool:
            return peer_id_from_public_key(bytes.fromhex(key_hex)) == text

        return same
    return lambda key_hex: key_hex == text.lower()


def _table(marked: list[Marked]) -> str:
    from flopnet.ledger.chain import signer_name

    lines = [f"{'task':32} {'#':>2} {'contributor':16} {'verdict':8} {'state':7} score tokens"]
    for m in marked:
        t = m.trace
        who = signer_name(bytes.fromhex(t.contributor))
        verdict = "accepted" if t.accepted else "rejected"
        lines.append(
            f"{t.task_id[:32]:32} {t.sample_index:>2} {who[-16:]:16} {verdict:8} "
            f"{m.state.value:7} {t.answer_score:5.2f} {t.output_tokens:>6}"
        )
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from flopnet.node.dataset.export import collect
    from flopnet.node.dataset.select import raw_rows
    from flopnet.protocol.errors import ConfigError

    if args.data_dir is None:
        raise ConfigError("give --data-dir (or set FLOPNET_HOME)")
    if args.limit < 0:
        raise ConfigError("--limit must be 0 (all) or more")
    found = matching(collect(args.data_dir, now=args.as_of).marked, args)
    if args.counts:
        counts = Counter((m.trace.task_set, m.state.value) for m in found)
        for (task_set, state), n in sorted(counts.items()):
            print(f"{task_set}\t{state}\t{n}")
        return 0
    found.sort(key=lambda m: m.trace.checked_at, reverse=True)
    if args.limit:
        found = found[: args.limit]
    if args.json:
        for row in raw_rows(found):
            print(json.dumps(row, ensure_ascii=False))
    else:
        print(_table(found))
    return 0
