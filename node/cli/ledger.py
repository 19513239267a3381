"""``flopnet ledger verify|dump|replicate`` and the ``flopnet leaderboard`` options.

``verify`` re-checks every chain in a data dir and exits 0 only if all is well; ``dump`` writes
the daily statistics export (BOINC-style: every contributor and team, with the chain heads it
was computed from); ``replicate`` runs a replica that fetches, verifies, stores and serves the
validators' chains (a mirror, and the vehicle of the replication tests and benchmarks).
Heavy imports stay inside the handlers so that ``flopnet --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flopnet.node.cli.web import add_web_commands, run_web
from flopnet.node.local import best_ledger, find_manifest, ledgers_in
from flopnet.protocol.errors import ConfigError

if TYPE_CHECKING:
    from flopnet.ledger.store import LedgerStore
    from flopnet.node.config import NetworkParams

DEFAULT_LOCK_WINDOW_S = 86400.0  # ledger.policy's default, repeated to keep this import cheap


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``ledger`` subcommand."""
    p = sub.add_parser("ledger", help="verify, export or replicate the signed ledgers")
    actions = p.add_subparsers(dest="ledger_command", required=True)

    verify = actions.add_parser(
        "verify", help="re-verify every chain in a data dir; exit 0 only if all is well"
    )
    _add_source(verify)

    dump = actions.add_parser("dump", help="write the daily statistics export (JSON, .gz ok)")
    _add_source(dump)
    dump.add_argument("--out", type=Path, required=True, help="file to write (.json or .json.gz)")
    dump.add_argument("--lock-window", type=float, help="seconds (default: manifest's, or 24 h)")
    dump.add_argument("--as-of", type=float, help="Unix time to compute the export at")

    checkpoint = actions.add_parser(
        "checkpoint",
        help="append a checkpoint of this validator's own chain (its state so far, signed)",
    )
    checkpoint.add_argument("--data-dir", type=Path, required=True, help="the validator's data dir")
    checkpoint.add_argument("--manifest", type=Path, help="network manifest (default: data dir's)")

    replicate = actions.add_parser(
        "replicate", help="run a replica: fetch, verify, store and serve the validators' chains"
    )
    replicate.add_argument("--data-dir", type=Path, help="identity and ledger of the replica")
    replicate.add_argument("--manifest", type=Path, required=True, help="the network manifest")
    replicate.add_argument("--bootstrap", action="append", default=[], help="peer multiaddr")
    replicate.add_argument("--port", type=int, default=0, help="libp2p TCP port (0: any)")
    replicate.add_argument("--listen-ip", default="127.0.0.1")
    replicate.add_argument("--batch", type=int, default=2048, help="entries per range request")
    replicate.add_argument(
        "--full-history",
        action="store_true",
        help="verify each chain from its first entry (default: join at a signed checkpoint)",
    )

    board = sub.add_parser(
        "leaderboard",
        help="contributors ranked by credited FLOPs; `serve` or `build` the web leaderboard",
    )
    add_leaderboard_arguments(board)
    add_web_commands(board)
    return {"ledger": _run, "leaderboard": run_leaderboard}


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="a node's or a devnet's data dir")
    p.add_argument("--manifest", type=Path, help="network manifest (default: found in data dir)")
    p.add_argument("--network-id", help="network id, when no manifest is at hand")


def add_leaderboard_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``flopnet leaderboard`` (handled by :func:`run_leaderboard`)."""
    parser.add_argument("--data-dir", type=Path, help="a node's or a devnet's data dir")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    fmt.add_argument("--csv", action="store_true", help="CSV instead of a table")
    parser.add_argument(
        "--window", choices=("24h", "7d", "30d", "all"), default="all", help="rank by this window"
    )
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument(
        "--manifest", type=Path, help="network manifest: validators and lock window"
    )
    parser.add_argument(
        "--lock-window", type=float, help="seconds credit stays pending (default: manifest, 24 h)"
    )


# ---------------------------------------------------------------------------------------------
# Helpers


def _find_manifest(args: argparse.Namespace, data_dir: Path | None) -> Path | None:
    if getattr(args, "manifest", None) is not None:
        return Path(args.manifest)
    return find_manifest(data_dir)


def _network(args: argparse.Namespace, data_dir: Path | None) -> NetworkParams | None:
    from flopnet.node.config import NetworkParams

    path = _find_manifest(args, data_dir)
    return None if path is None else NetworkParams.load(path)


def _best_ledger(ledgers: list[Path], validators: set[bytes] | None) -> Path:
    """The ledger with the most of the validators' entries (see ``local.best_ledger``)."""
    from flopnet.ledger.store import LedgerStore

    def coverage(path: Path) -> int:
        with LedgerStore(path) as store:
            heads = store.heads()
        return sum(
            seq + 1
            for signer, (seq, _) in heads.items()
            if validators is None or signer in validators
        )

    return best_ledger(ledgers, coverage)


def _lock_window(args: argparse.Namespace, net: NetworkParams | None) -> float:
    if getattr(args, "lock_window", None) is not None:
        if args.lock_window < 0:
            raise ConfigError("--lock-window must be >= 0")
        return float(args.lock_window)
    return net.lock_window_seconds if net is not None else DEFAULT_LOCK_WINDOW_S


# ---------------------------------------------------------------------------------------------
# flopnet leaderboard


def run_leaderboard(args: argparse.Namespace) -> int:
    """``flopnet leaderboard [--json | --csv] [--window 24h|7d|30d|all]``; ``serve``/``build``
    go to :mod:`flopnet.node.cli.web`."""
    if getattr(args, "board_command", None):
        return run_web(args)
    import json
    import time

    from flopnet.ledger.leaderboard import WINDOWS, format_table, leaderboard, to_csv, to_json
    from flopnet.ledger.store import LedgerStore

    net = _network(args, args.data_dir)
    validators = net.validator_keys if net is not None and net.validators else None
    path = _best_ledger(ledgers_in(args.data_dir), validators)
    lock_window = _lock_window(args, net)
    now = time.time()
    width = WINDOWS[args.window]
    with LedgerStore(path) as store:
        rows = leaderboard(
            store,
            validators,
            since=None if width is None else now - width,
            limit=args.limit,
            now=now,
            lock_window=lock_window,
        )
    if args.json:
        print(json.dumps(to_json(rows), indent=2))
    elif args.csv:
        sys.stdout.write(to_csv(rows))
    else:
        footer = [
            f"window: {args.window}; credit is pending for {lock_window / 3600:g} h, then final",
            f"ledger: {path}",
        ]
        print(format_table(rows, footer=footer))
    return 0


# ---------------------------------------------------------------------------------------------
# flopnet ledger ...


def _run(args: argparse.Namespace) -> int:
    command = args.ledger_command
    if command == "verify":
        return _verify(args)
    if command == "dump":
        return _dump(args)
    if command == "checkpoint":
        return _checkpoint(args)
    return _replicate(args)


def _checkpoint(args: argparse.Namespace) -> int:
    from flopnet.ledger.joining import append_checkpoint
    from flopnet.ledger.store import LedgerStore
    from flopnet.node.local import LEDGER_FILE
    from flopnet.protocol.identity import KEY_FILE, load_or_create_identity

    net = _network(args, args.data_dir)
    if net is None:
        raise ConfigError("no network manifest found: give --manifest")
    if not (args.data_dir / KEY_FILE).exists():
        raise ConfigError(f"no node identity in {args.data_dir}")
    identity = load_or_create_identity(args.data_dir)
    if identity.public_key not in net.validator_keys:
        raise ConfigError("this node is not a validator of the network: it keeps no chain")
    with LedgerStore(args.data_dir / LEDGER_FILE) as store:
        seq, state = append_checkpoint(store, identity, net.network_id)
    print(f"checkpoint appended at seq {seq}: {len(state):,} bytes of state")
    return 0


def _network_id(args: argparse.Namespace, net: NetworkParams | None) -> str:
    if args.network_id:
        if net is not None and net.network_id != args.network_id:
            raise ConfigError(f"--network-id {args.network_id} differs from the manifest's")
        return str(args.network_id)
    if net is None:
        raise ConfigError("no network manifest found: give --manifest or --network-id")
    return net.network_id


def _verify(args: argparse.Namespace) -> int:
    from flopnet.ledger.chain import signer_name
    from flopnet.ledger.joining import anchor
    from flopnet.ledger.store import LedgerStore

    ledgers = ledgers_in(args.data_dir)
    net = _network(args, args.data_dir)
    network_id = _network_id(args, net)
    validators = net.validator_keys if net is not None and net.validators else None
    total = 0
    for path in ledgers:
        print(f"ledger {path} (network {network_id})")
        with LedgerStore(path) as store:
            problems = store.verify_all(network_id)
            by_signer: dict[bytes, list[str]] = {}
            for problem in problems:
                by_signer.setdefault(problem.signer, []).append(problem.message)
            for signer in store.signers():
                head = store.head(signer)
                assert head is not None
                found = by_signer.pop(signer, [])
                if validators is not None and signer not in validators:
                    found.insert(0, "this signer is not a validator of the network")
                if net is not None:
                    found.extend(_audit_problems(store, signer, net))
                status = "OK" if not found else f"{len(found)} problem(s)"
                start = anchor(store, signer)
                held = "" if start is None else f", held from its checkpoint at seq {start[0]}"
                print(
                    f"  chain of {signer_name(signer)}: {head[0] + 1} entries{held}, head seq "
                    f"{head[0]} ({head[1][:6].hex()}): {status}"
                )
                for message in found:
                    print(f"    {message}")
                total += len(found)
            for signer, messages in sorted(by_signer.items()):  # e.g. evidence, no stored chain
                print(f"  {signer_name(signer)}:")
                for message in messages:
                    print(f"    {message}")
                total += len(messages)
            evidence = store.equivocations()
            if evidence:
                print(f"  equivocation evidence ({len(evidence)} conflicting signed entries):")
                for ev in evidence:
                    print(
                        f"    {signer_name(ev.signer)} signed seq {ev.seq} twice: stored "
                        f"{ev.conflicts_with[:6].hex()}, conflicting {ev.hash[:6].hex()} "
                        f"({ev.reason})"
                    )
    print("all chains verify" if total == 0 else f"{total} problem(s) found")
    return 0 if total == 0 else 1


def _audit_problems(store: LedgerStore, signer: bytes, net: NetworkParams) -> list[str]:
    """The signer's audit entries checked against its chain and the manifest's audit policy."""
    from flopnet.ledger.joining import anchored_audit_book
    from flopnet.ledger.policy import AuditPolicy, audit_problems

    credits, hard = store.audit_context(signer)
    policy = AuditPolicy(floor=net.audit_rate_floor)
    records = store.audit_records(signer)
    initial = anchored_audit_book(store, signer)
    return [m for _seq, m in audit_problems(records, policy, credits, hard, initial)]


def _dump(args: argparse.Namespace) -> int:
    import gzip
    import json
    import os
    import time

    from flopnet.ledger.dump import build_dump
    from flopnet.ledger.store import LedgerStore

    net = _network(args, args.data_dir)
    network_id = _network_id(args, net)
    validators = net.validator_keys if net is not None and net.validators else None
    path = _best_ledger(ledgers_in(args.data_dir), validators)
    now = time.time() if args.as_of is None else float(args.as_of)
    with LedgerStore(path) as store:
        dump = build_dump(
            store, network_id, validators, now=now, lock_window=_lock_window(args, net)
        )
    data = (json.dumps(dump, indent=1, sort_keys=True) + "\n").encode()
    out: Path = args.out
    tmp = out.with_name(out.name + ".tmp")
    # Written whole, then renamed: a reader never sees half an export.
    if out.name.endswith(".gz"):
        tmp.write_bytes(gzip.compress(data, mtime=0))
    else:
        tmp.write_bytes(data)
    os.replace(tmp, out)
    print(f"wrote {out}: {len(dump['contributors'])} contributors, {len(dump['teams'])} teams")
    return 0


def _replicate(args: argparse.Namespace) -> int:
    import trio

    from flopnet.node.config import NetworkParams, env_settings
    from flopnet.node.replica import run_replica

    data_dir = args.data_dir or env_settings().data_root
    net = NetworkParams.load(args.manifest)
    trio.run(
        run_replica,
        data_dir,
        net,
        tuple(args.bootstrap),
        args.port,
        args.listen_ip,
        args.batch,
        args.full_history,
    )
    return 0
