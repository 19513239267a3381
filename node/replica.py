"""A replica: a node with no role that fetches, verifies, stores and serves the validators'
chains (a mirror, and the vehicle of the replication tests and benchmarks)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import trio

from flopnet.ledger.store import LedgerStore
from flopnet.node.config import NetworkParams
from flopnet.node.ledger_sync import LedgerSync
from flopnet.node.liveness import keep_connected
from flopnet.node.local import LEDGER_FILE, flopnet_argv
from flopnet.protocol.catalog import LEDGER_CHECKPOINT, LEDGER_GOSSIP, LEDGER_RANGE, ledger_topic
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import load_or_create_identity


def replica_command(
    data_dir: Path,
    manifest: Path,
    bootstrap: tuple[str, ...] = (),
    batch: int | None = None,
    *,
    full_history: bool = False,
) -> list[str]:
    """The command line of a replica process (``flopnet ledger replicate ...``)."""
    command = [*flopnet_argv(), "ledger", "replicate"]
    command += ["--data-dir", str(data_dir), "--manifest", str(manifest)]
    for addr in bootstrap:
        command += ["--bootstrap", addr]
    if batch is not None:
        command += ["--batch", str(batch)]
    if full_history:
        command.append("--full-history")
    return command


async def run_replica(
    data_dir: Path,
    net: NetworkParams,
    bootstrap: tuple[str, ...],
    port: int,
    listen_ip: str,
    batch: int,
    full_history: bool = False,
) -> None:
    """Sync and serve the validators' chains until SIGTERM/SIGINT.

    Prints one JSON line ``{"peer_id", "addrs"}`` on stdout once it listens.
    """
    identity = load_or_create_identity(data_dir)
    host = P2PHost(identity, network_id=net.network_id, listen_ip=listen_ip)
    with LedgerStore(data_dir / LEDGER_FILE) as store:
        sync = LedgerSync(
            host,
            store,
            identity,
            net.network_id,
            net.validator_keys,
            batch=batch,
            join_from_checkpoint=not full_history,
        )
        host.serve(LEDGER_RANGE, sync.handle_range)
        host.serve(LEDGER_CHECKPOINT, sync.handle_checkpoint)
        async with host.running(port), trio.open_nursery() as nursery:
            await host.subscribe(ledger_topic(net.network_id), sync.on_ledger_gossip, LEDGER_GOSSIP)
            for addr in bootstrap:
                nursery.start_soon(keep_connected, host, addr)
            nursery.start_soon(sync.run)
            print(json.dumps({"peer_id": host.peer_id, "addrs": host.addrs()}), flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
