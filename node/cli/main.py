"""The ``flopnet`` command. Subcommands import heavy modules lazily, so ``--help`` is instant."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from flopnet.node.cli.task_args import add_judge_arguments, add_task_arguments
from flopnet.protocol.errors import ConfigError, FlopnetError


def _add_node(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="run a node daemon (publisher, validator and/or worker)")
    p.add_argument(
        "--role",
        action="append",
        required=True,
        choices=("publisher", "validator", "worker", "relay"),
        help="a role of this node; repeat for several",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="identity, ledger, logs (default: $FLOPNET_HOME or ~/.flopnet)",
    )
    p.add_argument(
        "--manifest", type=Path, required=True, help="the network's founder-signed manifest"
    )
    p.add_argument("--port", type=int, default=0, help="libp2p TCP port (0: any)")
    p.add_argument(
        "--listen-ip", default="127.0.0.1", help="address to listen on (0.0.0.0 in containers)"
    )
    p.add_argument("--api-port", type=int, default=0, help="local API port (0: any)")
    p.add_argument("--bootstrap", action="append", default=[], help="multiaddr of a peer to dial")
    p.add_argument(
        "--relay",
        action="append",
        default=[],
        help="multiaddr of a Circuit Relay v2 node to reserve a slot on (when behind NAT)",
    )
    p.add_argument("--mdns", action="store_true", help="discover peers on the LAN (off by default)")
    add_task_arguments(p)
    p.add_argument(
        "--task-seed", type=int, default=0, help="seed of the built-in and generated task sets"
    )
    add_judge_arguments(p)
    p.add_argument(
        "--wait-for-workers", type=int, default=0, help="publisher: announce once N peers connect"
    )
    p.add_argument("--torch-threads", type=int, default=0, help="threads for the model (0: auto)")
    p.add_argument("--verifier-workers", type=int, default=1, help="validator: verifier processes")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="worker: leases to generate together (default 1, or as last set through the API)",
    )
    p.add_argument(
        "--pause-schedule",
        help="worker: work only in these local hours, e.g. 22:00-08:00 (comma-separated)",
    )
    p.add_argument("--gpus", help="worker: the GPUs the model may use, e.g. 0,1 (default: all)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="also serve /metrics without the API token on this port (off unless given)",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the token-free metrics listener (default 127.0.0.1)",
    )
    p.add_argument(
        "--audit-batch",
        type=int,
        default=8,
        help="validator: audits (of different contributors) made in one padded prefill",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "hf", "vllm"),
        help="inference backend (auto: vLLM on GPUs when installed, else Hugging Face)",
    )
    p.add_argument(
        "--max-leases-per-worker",
        type=int,
        default=8,
        help="publisher: active leases one worker may hold",
    )
    p.add_argument(
        "--newcomer-leases",
        type=int,
        default=1,
        help="publisher: active leases a worker without accepted work may hold (trust is earned)",
    )
    p.add_argument(
        "--full-history",
        action="store_true",
        help="join by verifying every validator's chain from its first entry (default: from "
        "its latest signed checkpoint a week old, then only the entries after it)",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=float,
        default=86400.0,
        help="validator: seconds between checkpoints of its chain (default a day; 0: never)",
    )
    p.add_argument("--cheat", default=None, help=argparse.SUPPRESS)  # devnet cheaters only
    p.add_argument(
        "--cheat-model-seed",
        type=int,
        default=None,
        help=argparse.SUPPRESS,  # devnet only: run other weights, a forged computation
    )


# The devnet's model: a real trained one (node/model/trained.py); tests pass --model tiny.
DEVNET_MODEL = "smollm2-135m"


def _add_devnet(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devnet", help="run a local network of real processes on 127.0.0.1")
    p.add_argument("--headless", action="store_true", help="no TUI; run until done or timeout")
    p.add_argument("--workers", type=int, default=2, help="honest workers")
    p.add_argument("--cheaters", type=int, default=0, help="workers running forged weights")
    p.add_argument(
        "--cheat",
        action="append",
        default=[],
        metavar="KIND",
        help="add a cheating worker of this kind (wrong_model, injected, truncated, temperature, "
        "top_p, prompt_swap); repeat for several",
    )
    p.add_argument("--batch-size", type=int, default=1, help="leases each worker runs together")
    p.add_argument(
        "--pin-weights", action="store_true", help="pin the model's weights hash in the manifest"
    )
    add_task_arguments(p)
    add_judge_arguments(p)
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="generation length cap (default: 256 for a trained model, 48 for a seeded one)",
    )
    p.add_argument(
        "--samples", type=int, default=1, help="samples of each task (preference pairs need 2+)"
    )
    p.add_argument(
        "--model",
        default=DEVNET_MODEL,
        help="smollm2-135m (trained, the default), a seeded model (tiny, small, "
        "deepseek-v3-tiny, deepseek-v3-small, ...) or a Hugging Face id",
    )
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.add_argument("--data-dir", type=Path, help="keep the nodes' state here (default: temp)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up")
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=None,
        help="lease deadline before re-leasing (default: 600 for a trained model, 120 otherwise)",
    )
    p.add_argument(
        "--bootstrap-node",
        action="store_true",
        help="start a separate bootstrap/relay node; others find the validator on the DHT",
    )
    p.add_argument(
        "--separate-publisher",
        action="store_true",
        help="run the publisher in its own process; the validator fetches task specs from it",
    )
    p.add_argument(
        "--validators",
        type=int,
        default=1,
        help="validators in the network (default 1); each sample is judged by one of them, and "
        "every validator replicates the others' ledger chains",
    )


def _add_tui(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tui", help="attach the terminal UI to a running node or devnet")
    p.add_argument("--data-dir", type=Path, help="a node's or a devnet's data dir")
    p.add_argument(
        "--url",
        help="a node's API URL instead (e.g. an SSH-forwarded port: http://127.0.0.1:PORT)",
    )
    p.add_argument("--token-file", type=Path, help="with --url: a copy of the node's api.token")


# Modules that add their own subcommands: each has ``register(sub) -> dict[name, handler]`` and
# must stay cheap to import (heavy imports inside the handlers), so ``--help`` stays instant.
EXTENSION_MODULES: tuple[str, ...] = (
    "flopnet.node.cli.network",
    "flopnet.node.cli.verify",
    "flopnet.node.cli.ledger",
    "flopnet.node.cli.proof",
    "flopnet.node.cli.profile",
    "flopnet.node.cli.hardware",
    "flopnet.node.cli.export",
    "flopnet.node.cli.traces",
    "flopnet.node.cli.audit",
    "flopnet.node.cli.status",
    "flopnet.node.cli.credits",
    "flopnet.node.cli.simulate",
)


def build_parser() -> tuple[
    argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]
]:
    """The argument parser of every subcommand, and the handler of each."""
    parser = argparse.ArgumentParser(
        prog="flopnet",
        description="Donate GPU time, earn verified FLOP credit: a peer-to-peer compute network.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_node(sub)
    _add_devnet(sub)
    _add_tui(sub)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = dict(COMMANDS)
    for module_name in EXTENSION_MODULES:
        handlers.update(importlib.import_module(module_name).register(sub))
    return parser, handlers


def _cmd_node(args: argparse.Namespace) -> int:
    import trio

    from flopnet.node.cli.task_args import judge_settings, languages, task_sources
    from flopnet.node.config import NetworkParams, NodeConfig, env_settings
    from flopnet.node.daemon import run_node, setup_logging

    env = env_settings()
    config = NodeConfig(
        roles=tuple(dict.fromkeys(args.role)),
        data_dir=args.data_dir,
        network=NetworkParams.load(args.manifest),
        manifest_path=args.manifest,
        listen_port=args.port,
        listen_ip=args.listen_ip,
        bootstrap=tuple(args.bootstrap),
        relays=tuple(args.relay),
        mdns=args.mdns,
        api_port=args.api_port,
        tasks=args.tasks,
        task_sources=task_sources(args),
        languages=languages(args),
        task_seed=args.task_seed,
        wait_for_workers=args.wait_for_workers,
        model_seed_override=args.cheat_model_seed,
        cheat=args.cheat,
        torch_threads=args.torch_threads or env.torch_threads,
        verifier_workers=args.verifier_workers,
        batch_size=args.batch_size or 1,
        backend=args.backend,
        audit_batch=args.audit_batch,
        max_leases_per_worker=args.max_leases_per_worker,
        newcomer_leases=args.newcomer_leases,
        judge=judge_settings(args, env),
        pause_schedule=args.pause_schedule,
        gpus=_gpu_list(args.gpus),
        control_flags=frozenset(
            name
            for name, given in (
                ("batch_size", args.batch_size is not None),
                ("pause_schedule", args.pause_schedule is not None),
                ("gpus", args.gpus is not None),
            )
            if given
        ),
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        full_history=args.full_history,
        checkpoint_interval=args.checkpoint_interval,
    )
    setup_logging(config.data_dir, env.log_level)
    try:
        trio.run(run_node, config)
    except (FlopnetError, OSError, KeyboardInterrupt):
        raise
    except BaseExceptionGroup as group:
        if group.split((FlopnetError, OSError))[1] is None:
            raise  # our own errors only: main() reports them plainly
        return _internal_error(group, config.data_dir)
    except Exception as exc:
        return _internal_error(exc, config.data_dir)
    return 0


def _internal_error(exc: BaseException, data_dir: Path) -> int:
    """A bug of ours ended the node: the traceback goes to the node's log (where an operator
    and a bug report find it), one plain line to stderr, and the exit status says "software
    error" (70), so a supervisor restarts the node; the outbox keeps its acknowledged work."""
    import logging

    from flopnet.node.local import LOG_FILE

    logging.getLogger("flopnet.node").critical(
        "the node stopped on an internal error", exc_info=exc
    )
    leaves = _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    first = next((e for e in leaves if not isinstance(e, (FlopnetError, OSError))), leaves[0])
    print(
        f"flopnet: error: internal error, the node stopped ({type(first).__name__}: {first}); "
        f"the traceback is in {data_dir / LOG_FILE}",
        file=sys.stderr,
    )
    return 70


def _gpu_list(text: str | None) -> tuple[int, ...] | None:
    """``--gpus 0,1`` as indices (None: every GPU)."""
    if text is None or text.strip().lower() == "all":
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--gpus takes GPU indices like 0,1, not {text!r}") from None


def _cmd_devnet(args: argparse.Namespace) -> int:
    from flopnet.node.cli.devnet import (
        DevnetOptions,
        default_lease_seconds,
        default_max_new_tokens,
        run_devnet,
    )
    from flopnet.node.cli.task_args import languages, task_sources

    options = DevnetOptions(
        workers=args.workers,
        cheaters=args.cheaters,
        cheats=tuple(args.cheat),
        batch_size=args.batch_size,
        pin_weights=args.pin_weights,
        tasks=args.tasks,
        samples=args.samples,
        task_sources=task_sources(args),
        languages=languages(args),
        judge_url=args.judge_url,
        judge_model=args.judge_model,
        judge_key_file=args.judge_key_file,
        max_new_tokens=args.max_new_tokens or default_max_new_tokens(args.model),
        model=args.model,
        dtype=args.dtype,
        data_dir=args.data_dir,
        timeout=args.timeout,
        headless=args.headless,
        lease_seconds=args.lease_seconds or default_lease_seconds(args.model),
        bootstrap_node=args.bootstrap_node,
        separate_publisher=args.separate_publisher,
        validators=args.validators,
    )
    summary = run_devnet(options)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        from flopnet.node.cli.devnet import format_summary

        print(format_summary(summary))
    return 0 if summary["ok"] else 1


def _cmd_tui(args: argparse.Namespace) -> int:
    from flopnet.tui.app import NodeTarget, attach_targets, run_tui

    if args.url:
        if args.token_file is None:
            raise ConfigError("--url needs --token-file (a copy of the node's api.token)")
        run_tui([NodeTarget(args.url, url=args.url, token_file=args.token_file)])
    else:
        run_tui(attach_targets(args.data_dir))
    return 0


COMMANDS = {
    "node": _cmd_node,
    "devnet": _cmd_devnet,
    "tui": _cmd_tui,
}


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``flopnet`` command."""
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "data_dir", "unset") is None and args.command != "devnet":
            from flopnet.node.config import env_settings

            args.data_dir = env_settings().data_root
        return handlers[args.command](args)
    except FlopnetError as exc:
        print(f"flopnet: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`flopnet leaderboard | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # A read-only data directory, a full disk, a missing file: say which, plainly.
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"flopnet: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        # What trio's nurseries wrap: report our own errors plainly, re-raise anything else.
        ours, rest = group.split((FlopnetError, OSError))
        if rest is not None or ours is None:
            raise
        for leaf in _leaves(ours):
            print(f"flopnet: error: {leaf}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
