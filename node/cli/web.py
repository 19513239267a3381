"""``flopnet leaderboard serve`` and ``flopnet leaderboard build``: the web leaderboard.

``serve`` answers HTTP from a data dir's ledger (pages rebuilt as the chains grow, ETags);
``build`` writes the whole site as files for any static host. Heavy imports stay inside the
handlers so that ``flopnet --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flopnet.node.local import ledgers_in


def add_web_commands(board: argparse.ArgumentParser) -> None:
    """Add ``serve`` and ``build`` under ``flopnet leaderboard``."""
    actions = board.add_subparsers(dest="board_command", metavar="{serve,build}")
    serve = actions.add_parser("serve", help="serve the web leaderboard over HTTP")
    _add_source(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port (0: any free one)")
    build = actions.add_parser("build", help="write the web leaderboard as a static site")
    _add_source(build)
    build.add_argument("--out", type=Path, required=True, help="folder to write the site into")
    build.add_argument("--as-of", type=float, help="Unix time to build the site at")


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="a node's or a devnet's data dir")
    p.add_argument("--manifest", type=Path, help="network manifest (default: found in data dir)")


def run_web(args: argparse.Namespace) -> int:
    """Dispatch ``serve`` or ``build``."""
    from flopnet.web.server import ledger_for

    ledger = ledger_for(args.data_dir, args.manifest, ledgers_in(args.data_dir))
    if args.board_command == "build":
        from flopnet.web.static_site import build_site

        report = build_site(ledger, args.out, args.as_of)
        print(
            f"wrote {args.out}: {report.files} files, {report.bytes / 1e6:.1f} MB, "
            f"{report.contributors} contributors, {report.entries} entries, "
            f"{report.seconds:.1f} s"
        )
        return 0
    import trio

    from flopnet.web.server import make_app, serve

    def ready(url: str) -> None:
        print(f"serving the leaderboard of {ledger.path} at {url}/", flush=True)

    try:
        trio.run(serve, make_app(ledger), args.host, args.port, ready)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0
