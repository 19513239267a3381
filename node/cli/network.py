"""``flopnet network init`` and ``flopnet network show``: found a network, inspect a manifest."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from flopnet.protocol.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``network`` subcommand."""
    p = sub.add_parser("network", help="found a network or inspect its manifest")
    actions = p.add_subparsers(dest="network_command", required=True)

    init = actions.add_parser("init", help="create a founder key and a signed network manifest")
    init.add_argument("--out", type=Path, required=True, help="directory for the key and manifest")
    init.add_argument("--name", default="flopnet", help="network name (lowercase, digits, dashes)")
    init.add_argument("--model", default="tiny", help="seeded model name or Hugging Face id")
    init.add_argument("--model-revision", default="", help="Hugging Face revision to pin")
    init.add_argument("--model-seed", type=int, default=1234)
    init.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    init.add_argument("--weights-sha256", default="", help="pin the model's weights")
    init.add_argument(
        "--pin-weights",
        action="store_true",
        help="load the model here and pin the SHA-256 of its weights (nodes with others refuse "
        "to start)",
    )
    init.add_argument("--max-new-tokens", type=int, default=48)
    init.add_argument("--temperature", type=float, default=0.6)
    init.add_argument("--top-p", type=float, default=0.95)
    init.add_argument(
        "--samples",
        "--samples-per-task",
        dest="samples_per_task",
        type=int,
        default=1,
        help="samples of each task (preference pairs need 2+)",
    )
    init.add_argument("--lease-seconds", type=float, default=120.0)
    init.add_argument("--lock-window-seconds", type=float, default=86400.0)
    init.add_argument(
        "--audit-rate-floor",
        type=float,
        default=0.05,
        help="share of a trusted contributor's results still audited (1.0: audit everything)",
    )
    init.add_argument("--publisher", action="append", default=[], help="hex public key")
    init.add_argument("--validator", action="append", default=[], help="hex public key")
    init.add_argument("--bootstrap", action="append", default=[], help="multiaddr")
    policy = init.add_argument_group(
        "proof policy",
        "each defaults to proof.policy.recommended_policy(model, dtype): calibrated for the "
        "embedded models, the lenient paper-era values for any other model (calibrate it with "
        "`flopnet proof calibrate` on the network's hardware first)",
    )
    policy.add_argument("--max-exp-mismatches", type=int, help="per 32-token chunk, of top-k")
    policy.add_argument("--max-mant-err-mean", type=float, help="per chunk")
    policy.add_argument("--max-mant-err-median", type=float, help="per chunk")
    policy.add_argument("--max-sign-mismatches", type=int, help="per chunk")
    policy.add_argument(
        "--mant-err-mean-baseline", type=float, help="pooled check's honest average; 0: off"
    )
    policy.add_argument("--replay-tolerance", type=float, help="score units a token may fall short")
    policy.add_argument(
        "--max-replay-mismatch-fraction", type=float, help="of tokens that may fail the replay"
    )
    policy.add_argument(
        "--honest-replay-rate",
        type=float,
        help="impossible tokens per token honest work stays below (per-contributor tally); 0: off",
    )

    show = actions.add_parser("show", help="verify a manifest and print it")
    show.add_argument("manifest", type=Path)
    show.add_argument("--json", action="store_true")

    ident = sub.add_parser("identity", help="create (if needed) and print a node's identity")
    ident.add_argument("--data-dir", type=Path, help="the node's data dir")
    return {"network": _run, "identity": _identity}


def _identity(args: argparse.Namespace) -> int:
    from flopnet.protocol.identity import load_or_create_identity

    identity = load_or_create_identity(args.data_dir)
    print(json.dumps({"peer_id": identity.peer_id, "public_key": identity.public_key.hex()}))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.network_command == "init":
        return _init(args)
    return _show(args)


def _init(args: argparse.Namespace) -> int:
    from flopnet.node.config import (
        PROOF_PARAMS,
        NetworkParams,
        create_network,
        recommended_proof_params,
    )
    from flopnet.protocol.identity import load_or_create_identity
    from flopnet.protocol.manifest import MANIFEST_FILE

    out: Path = args.out
    if (out / MANIFEST_FILE).exists():
        raise ConfigError(f"{out / MANIFEST_FILE} exists; refusing to overwrite a network")
    weights = args.weights_sha256
    if args.pin_weights and not weights:
        from flopnet.node.model.models import model_weights_sha256

        weights = model_weights_sha256(
            args.model, seed=args.model_seed, dtype=args.dtype, revision=args.model_revision
        )
    proof = recommended_proof_params(args.model, args.dtype)
    overridden = [k for k in PROOF_PARAMS if getattr(args, k) is not None]
    proof.update({k: getattr(args, k) for k in overridden})
    params = NetworkParams(
        network_id="assigned-by-manifest",
        model=args.model,
        model_revision=args.model_revision,
        model_seed=args.model_seed,
        dtype=args.dtype,
        weights_sha256=weights,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        samples_per_task=args.samples_per_task,
        lease_seconds=args.lease_seconds,
        lock_window_seconds=args.lock_window_seconds,
        audit_rate_floor=args.audit_rate_floor,
        publishers=tuple(k.lower() for k in args.publisher),
        validators=tuple(k.lower() for k in args.validator),
        bootstrap=tuple(args.bootstrap),
        **proof,
    )
    founder = load_or_create_identity(out)  # after the parameters are known to be valid
    net = create_network(founder, args.name, params, out / MANIFEST_FILE)
    print(f"network {net.network_id}")
    source = f"recommended_policy({args.model!r}, {args.dtype!r})"
    if overridden:
        source += " with " + ", ".join(f"{k} {proof[k]}" for k in overridden)
    print(f"proof policy {source}")
    if weights:
        print(f"weights pinned: sha256 {weights}")
    print(f"manifest {out / MANIFEST_FILE} (founder key in {out / 'identity.key'}, keep it safe)")
    return 0


def _show(args: argparse.Namespace) -> int:
    from flopnet.node.config import NetworkParams

    data = NetworkParams.load(args.manifest).as_json()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        width = max(len(k) for k in data)
        for key, value in data.items():
            print(f"{key:<{width}}  {value}")
    return 0
