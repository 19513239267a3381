"""``flopnet audit list|replay``: the evidence behind each punishment, and its re-run."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flopnet.protocol.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``audit`` subcommand."""
    p = sub.add_parser(
        "audit",
        help="the evidence of failed audits, and re-running it on this machine",
        description=(
            "A validator punishes a failed audit (voiding the contributor's pending credit) only "
            "after a second check in float32 fails too, and keeps both checks' numbers, signed, "
            "in DATA_DIR/evidence/. `replay` loads the same model here and runs the checks again."
        ),
    )
    actions = p.add_subparsers(dest="audit_command", required=True)
    listing = actions.add_parser("list", help="the evidence files a validator kept")
    listing.add_argument("--data-dir", type=Path, help="the validator's data dir")
    replay = actions.add_parser("replay", help="re-run the checks of an evidence file here")
    replay.add_argument("evidence", type=Path, help="an evidence file (evidence/<id>.json)")
    replay.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    for action in (listing, replay):
        action.add_argument("--json", action="store_true", help="machine-readable output")
    return {"audit": _run}


def _run(args: argparse.Namespace) -> int:
    if args.audit_command == "list":
        return _list(args)
    from flopnet.node.validator.evidence import read_evidence
    from flopnet.node.validator.replay import replay_evidence

    report = replay_evidence(read_evidence(args.evidence), args.threads)
    row = {
        "submission_id": report.evidence.submission_id.hex(),
        "contributor": report.contributor,
        "task_id": report.task_id,
        "validator": report.evidence.validator.hex(),
        "model": report.evidence.model.name,
        "weights_match": report.weights_match,
        "reproduced": report.reproduced,
        "checks": [
            {
                "precision": c.precision or report.evidence.model.dtype,
                "recorded": "passed" if c.recorded_passed else "failed",
                "replayed": "passed" if c.passed else "failed",
                "chunks_identical": f"{c.chunks_identical}/{c.chunks}",
                "max_mant_err_mean_diff": c.max_mant_err_mean_diff,
                "max_exp_mismatch_diff": c.max_exp_mismatch_diff,
                "reasons": list(c.reasons),
            }
            for c in report.checks
        ],
    }
    if args.json:
        print(json.dumps(row, indent=1))
    else:
        _print_replay(row)
    return 0 if report.reproduced else 1


def _print_replay(row: dict[str, Any]) -> None:
    print(f"submission {row['submission_id']} of {row['contributor']} on {row['task_id']}")
    print(f"model {row['model']}: weights {_weights(row['weights_match'])}")
    for check in row["checks"]:
        print(
            f"  {check['precision']:>9}: recorded {check['recorded']}, here {check['replayed']}; "
            f"chunks identical {check['chunks_identical']}, largest mant_err_mean difference "
            f"{check['max_mant_err_mean_diff']:.3g}"
        )
        for reason in check["reasons"][:8]:
            print(f"             {reason}")
    verdict = "reproduced" if row["reproduced"] else "NOT reproduced"
    print(f"verdict {verdict}")


def _weights(match: bool | None) -> str:
    return {True: "match", False: "DIFFER", None: "not hashed"}[match]


def _list(args: argparse.Namespace) -> int:
    from flopnet.node.validator.evidence import EVIDENCE_DIR, EvidenceError, read_evidence
    from flopnet.protocol.envelope import peek_signer
    from flopnet.protocol.errors import MalformedMessage
    from flopnet.protocol.identity import peer_id_from_public_key

    if args.data_dir is None:
        raise ConfigError("give --data-dir (or set FLOPNET_HOME)")
    rows: list[dict[str, Any]] = []
    for path in sorted((args.data_dir / EVIDENCE_DIR).glob("*.json")):
        try:
            evidence = read_evidence(path)
            contributor = peer_id_from_public_key(peek_signer(evidence.submission))
        except (EvidenceError, MalformedMessage) as exc:
            rows.append({"file": str(path), "error": str(exc)})
            continue
        rows.append(
            {
                "file": str(path),
                "contributor": contributor,
                "written_at": evidence.written_at,
                "checks": [c.passed for c in evidence.checks],
                "reason": evidence.checks[-1].reasons[0] if evidence.checks[-1].reasons else "",
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no evidence in {args.data_dir / EVIDENCE_DIR}")
    for row in [] if args.json else rows:
        print(f"{row['file']}: {row.get('error') or row['contributor'] + ': ' + row['reason']}")
    return 0
