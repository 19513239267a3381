"""``flopnet profile set|show``: the display name and team a worker shares with validators."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from flopnet.node.profile import MAX_FIELD_CHARS, load_profile, save_profile
from flopnet.protocol.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``profile`` subcommand."""
    p = sub.add_parser(
        "profile",
        help="your display name and team on the leaderboard",
        description=(
            "Stores the profile in the node's data dir. A running worker signs it and sends it to "
            "each validator that credits its work; the validator records it on its ledger, so "
            "every replica's leaderboard shows it."
        ),
    )
    actions = p.add_subparsers(dest="profile_command", required=True)
    set_ = actions.add_parser("set", help="set the display name and team")
    set_.add_argument("--name", required=True, help=f"display name (<= {MAX_FIELD_CHARS} chars)")
    set_.add_argument("--team", default="", help=f"team (<= {MAX_FIELD_CHARS} chars)")
    show = actions.add_parser("show", help="print the stored profile as JSON")
    for action in (set_, show):
        action.add_argument(
            "--data-dir", type=Path, help="the node's data dir (default: $FLOPNET_HOME)"
        )
    return {"profile": _run}


def _run(args: argparse.Namespace) -> int:
    if args.profile_command == "set":
        profile = save_profile(args.data_dir, args.name, args.team)
    else:
        stored = load_profile(args.data_dir)
        if stored is None:
            raise ConfigError(f"no profile in {args.data_dir}; set one with `flopnet profile set`")
        profile = stored
    print(json.dumps(profile.__dict__))
    return 0
