"""``flopnet node``: one trio process holding one or more roles.

Start-up order: identity, model child process (workers and validators), verifier pool and ledger
(validators), libp2p host and handlers, bootstrap dials, the local API, then ``node.json`` in the
data directory (peer id, multiaddrs, API URL) so local tools can find the node. SIGTERM or SIGINT
stops the node cleanly; acknowledged ledger entries are durable before they are acknowledged.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from flopnet.ledger.chain import VerifiedEntry
from flopnet.ledger.receipts import append_receipt, receipt_from_entry
from flopnet.node.api import build_api, load_or_create_token, serve_api
from flopnet.node.config import NodeConfig
from flopnet.node.controller import Controller
from flopnet.node.discovery import Discovery
from flopnet.node.endpoints import endpoints
from flopnet.node.events import EventBus
from flopnet.node.feeds import run_feeds
from flopnet.node.liveness import Liveness
from flopnet.node.local import (
    INBOX_FILE,
    LEDGER_FILE,
    LOG_FILE,
    NODE_INFO_FILE,
    PUBLISHER_FILE,
    RECEIPTS_FILE,
    write_node_info,
)
from flopnet.node.logbook import LogBook
from flopnet.node.metrics import registry_for, serve_metrics
from flopnet.node.monitor import Monitor, load_nvml
from flopnet.node.publisher.store import PublisherStore
from flopnet.node.sqlite_files import private_file
from flopnet.node.tasks import Task, builtin_tasks, load_task_sources
from flopnet.node.validator.inbox import Inbox
from flopnet.node.view import NodeParts, NodeView
from flopnet.node.worker.board import TaskBoard, TaskEntry
from flopnet.protocol.catalog import (
    ANNOUNCEMENTS,
    CLAIM,
    LEDGER_CHECKPOINT,
    LEDGER_GOSSIP,
    LEDGER_RANGE,
    PROFILE,
    RELEASE,
    SUBMIT,
    TASK_SPEC,
    VERDICT,
    heartbeat_budget,
    heartbeat_topic,
    ledger_topic,
    tasks_topic,
)
from flopnet.protocol.errors import ConfigError, FlopnetError
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import load_or_create_identity
from flopnet.protocol.messages import CreditBody

if TYPE_CHECKING:
    from flopnet.verifiers.registry import VerifyOptions

log = logging.getLogger("flopnet.node")


def load_task_set(config: NodeConfig) -> list[Task]:
    """The node's task set: its task sources (``config.tasks`` from each), else the built-in
    generator."""
    if config.task_sources:
        return load_task_sources(
            config.task_sources,
            limit=config.tasks,
            languages=config.languages,
            seed=config.task_seed,
        )
    return builtin_tasks(config.tasks, seed=config.task_seed)


def verify_options(config: NodeConfig) -> VerifyOptions:
    """The validator's verifier settings: the truncation rule's cap and the LLM judge."""
    from flopnet.verifiers.registry import VerifyOptions

    judge = config.judge
    return VerifyOptions(
        max_tokens=config.network.max_new_tokens,
        judge_url=judge.url,
        judge_model=judge.model,
        judge_api_key=judge.api_key,
    )


def setup_logging(data_dir: Path, level: str) -> None:
    """Log to ``<data dir>/node.log`` (stdout stays free for machine-readable output)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create the data directory {data_dir}: {exc.strerror}") from None
    handler = logging.FileHandler(private_file(data_dir / LOG_FILE))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Errors also go to stderr: when the data directory's disk is full, the log is not written.
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    errors.setFormatter(logging.Formatter("flopnet: %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.addHandler(errors)
    root.setLevel(level)
    # libp2p is chatty at INFO about every stream it negotiates.
    logging.getLogger("libp2p").setLevel(max(logging.WARNING, root.level))


async def _check_reachability(host: P2PHost, config: NodeConfig, state: dict[str, Any]) -> None:
    """Find out whether peers can dial us, and take relay reservations when asked to.

    A node that nobody can dial still works as a worker (workers only dial out), but a publisher
    or validator must be reachable: directly, or through a relay's circuit address.
    """
    for relay in config.relays:
        try:
            relayed = await host.reserve_relay(relay)
            state["relayed_addrs"].append(relayed)
            log.info("reachable through relay at %s", relayed)
        except FlopnetError as exc:
            log.warning("relay %s refused or failed: %s", relay, exc)
    for _attempt in range(30):
        peers = host.connected_peers()
        if peers:
            try:
                reachable = await host.check_reachability(peers[0])
            except FlopnetError as exc:
                log.info("reachability check via %s failed: %s", peers[0], exc)
            else:
                state["reachable"] = bool(reachable)
                if reachable:
                    log.info("reachable: %s dialed us back at %s", peers[0], reachable)
                else:
                    log.warning(
                        "this node is NOT reachable from %s; publishers and validators behind "
                        "NAT need --relay <relay multiaddr>",
                        peers[0],
                    )
                return
        await trio.sleep(2.0)


# Prompt tokens planned for beside max_new_tokens when checking that a sequence fits in memory.
PROMPT_ALLOWANCE_TOKENS = 2048
OUTBOX_KEEP_S = 7 * 86400.0  # judged rows kept this long (for looking back), then pruned


def check_pinned_weights(model: str, pinned: str, actual: str) -> None:
    """Refuse to run weights other than the ones the manifest pins (if it pins any): a wrong
    revision, dtype or a modified checkpoint would only ever earn rejected proofs."""
    if pinned and not actual:
        raise ConfigError(
            f"the network's manifest pins the weights of {model}, and this node's backend cannot "
            "hash a Hub checkpoint inside its engine (vLLM): refusing to start; run it with "
            "--backend hf, or found the network without a pin"
        )
    if pinned and actual != pinned:
        raise ConfigError(
            f"the weights of {model} on this node hash to {actual[:16]}..., but the network's "
            f"manifest pins {pinned[:16]}...: refusing to start (check the model revision and "
            "dtype, or that the checkpoint is unmodified)"
        )


async def run_node(config: NodeConfig) -> None:
    """Run a node until SIGTERM/SIGINT."""
    from flopnet.node.model.service import ModelService

    identity = load_or_create_identity(config.data_dir)
    (config.data_dir / NODE_INFO_FILE).unlink(missing_ok=True)
    net = config.network
    roles = set(config.roles)
    started = time.time()
    log.info("node %s starting with roles %s", identity.peer_id, sorted(roles))

    with ExitStack() as stack:
        bus = EventBus()
        logbook = LogBook()
        logging.getLogger().addHandler(logbook)
        stack.callback(logging.getLogger().removeHandler, logbook)
        monitor = Monitor(load_nvml())
        stack.callback(monitor.close)
        control: Controller | None = None
        if "worker" in roles:
            control = Controller(
                config.data_dir,
                config.control_settings(Controller.saved(config.data_dir)),
                bus,
                gpu_count=lambda: monitor.gpu_count,
                max_batch_size=config.max_leases_per_worker,
            )
        model: ModelService | None = None
        model_config: dict[str, Any] = {}
        if roles & {"worker", "validator"}:
            model = ModelService(
                net.model,
                config.model_seed,
                net.dtype,
                config.torch_threads,
                max_seq_tokens=net.max_new_tokens + PROMPT_ALLOWANCE_TOKENS,
                backend=config.backend,
                revision=net.model_revision,
                devices=control.settings.gpus if control is not None else config.gpus,
            )
            stack.callback(model.close)
            from flopnet.node.model.trained import load_note

            note = load_note(net.model, net.dtype)
            if note is not None:  # a trained model: converted once, then read from the cache
                log.info(note)
            info = await model.start()
            model_config = info.config or {}
            log.info(
                "model %s seed %d loaded in %.1fs: %d parameters, weights sha256 %s",
                info.name,
                info.seed,
                info.load_seconds,
                info.n_params,
                info.weights_sha256[:16],
            )
            if info.plan is not None:
                log.info(
                    "hardware plan (running %s): %s on %s, tensor parallel %d, batch %d; %s",
                    info.backend,
                    info.plan["backend"],
                    info.plan["device"],
                    info.plan["tensor_parallel"],
                    info.plan["batch_size"],
                    "; ".join(info.plan["notes"]),
                )
            if config.model_seed_override is None:  # a devnet cheater forges on purpose
                check_pinned_weights(net.model, net.weights_sha256, info.weights_sha256)

        host = P2PHost(
            identity,
            network_id=net.network_id,
            listen_ip=config.listen_ip,
            relay_hop="relay" in roles,
            mdns=config.mdns,
        )
        network_state: dict[str, Any] = {"reachable": None, "relayed_addrs": []}
        # A validator beside its publisher holds the task set; a validator alone holds only a
        # tasks file it was given and fetches every other spec from the leasing publisher.
        if "publisher" in roles or ("validator" in roles and config.task_sources):
            tasks = load_task_set(config)
        else:
            tasks = []
        publisher = validator = worker = None
        pool = None

        if "publisher" in roles:
            from flopnet.node.model.tokenizer import tokenizer_for_model
            from flopnet.node.publisher.publisher import Publisher

            publisher_store = PublisherStore(config.data_dir / PUBLISHER_FILE)
            stack.callback(publisher_store.close)
            publisher = Publisher(
                config, identity, host, tokenizer_for_model(net.model), tasks, publisher_store
            )
            host.serve(CLAIM, publisher.handle_claim)
            host.serve(RELEASE, publisher.handle_release)
            host.serve(ANNOUNCEMENTS, publisher.handle_range)
            host.serve(TASK_SPEC, publisher.handle_task_spec)

        # Every node keeps verified replicas of the validators' chains (a validator's own chain
        # lives in the same store) and serves them; the leaderboard is a query over it.
        from flopnet.ledger.store import LedgerStore
        from flopnet.node.ledger_sync import LedgerSync

        store = LedgerStore(config.data_dir / LEDGER_FILE)
        stack.callback(store.close)

        def on_replicated(entry: VerifiedEntry) -> None:
            # Remote publishers learn verdicts from the validators' replicated credit entries.
            if publisher is not None and isinstance(entry.body, CreditBody):
                publisher.settle(entry.body.lease_id, entry.body.accepted)
            if isinstance(entry.body, CreditBody) and entry.body.contributor == identity.public_key:
                keep_receipt(entry)

        def keep_receipt(entry: VerifiedEntry) -> None:
            """Our credit reached our replica: keep its receipt (checkable offline later)."""
            assert isinstance(entry.body, CreditBody)
            if entry.body.accepted:
                try:
                    receipt = receipt_from_entry(entry.raw, net.network_id)
                    append_receipt(config.data_dir / RECEIPTS_FILE, receipt)
                except (FlopnetError, OSError) as exc:
                    log.error("cannot keep the receipt of entry %d: %s", entry.seq, exc)
            bus.publish(
                "credit",
                {
                    "task_id": entry.body.task_id,
                    "sample_index": entry.body.sample_index,
                    "accepted": entry.body.accepted,
                    "flops": entry.body.flops,
                    "validator_seq": entry.seq,
                },
            )

        ledger_sync = LedgerSync(
            host,
            store,
            identity,
            net.network_id,
            net.validator_keys,
            on_entry=on_replicated,
            join_from_checkpoint=not config.full_history,
            checkpoint_interval=config.checkpoint_interval,
        )
        host.serve(LEDGER_RANGE, ledger_sync.handle_range)
        host.serve(LEDGER_CHECKPOINT, ledger_sync.handle_checkpoint)
        host.serve(PROFILE, ledger_sync.handle_profile)

        if "validator" in roles:
            from flopnet.node.validator.task_source import TaskSource
            from flopnet.node.validator.validator import Validator
            from flopnet.verifiers.pool import MATH_WARMUP, VerifierPool
            from flopnet.verifiers.registry import Verifiers

            assert model is not None
            pool = VerifierPool(config.verifier_workers, warmup=(MATH_WARMUP,))
            stack.callback(pool.close)
            if config.judge.url is None and any(t.task_type == "llm_judge" for t in tasks):
                log.warning("llm_judge tasks but no --judge-url: their answers stay unjudged")
            verifiers = Verifiers(verify_options(config), pool=pool)
            inbox = Inbox(config.data_dir / INBOX_FILE)
            stack.callback(inbox.close)
            await trio.to_thread.run_sync(pool.wait_ready)

            def on_verdict(lease_id: bytes, accepted: bool) -> None:
                if publisher is not None:
                    publisher.settle(lease_id, accepted)

            validator = Validator(
                config,
                identity,
                host,
                model,
                verifiers,
                store,
                inbox,
                TaskSource(
                    {t.task_id: t for t in tasks},
                    host,
                    identity,
                    net.network_id,
                    frozenset(net.publisher_keys),
                ),
                model_config,
                on_verdict,
                publish_entry=ledger_sync.publish_entry,
            )
            host.serve(SUBMIT, validator.handle_submission)
            host.serve(VERDICT, validator.handle_verdict_request)

            def on_judged(judged: dict[str, Any]) -> None:
                bus.publish("verdict", judged)

            validator.on_judged.append(on_judged)

        if "worker" in roles:
            from flopnet.node.worker.outbox import Outbox
            from flopnet.node.worker.worker import Worker

            assert model is not None
            outbox = Outbox(config.data_dir / "worker.sqlite")
            stack.callback(outbox.close)
            outbox.prune(time.time() - OUTBOX_KEEP_S)

            def on_task(entry: TaskEntry) -> None:
                bus.publish("task", entry.summary())

            worker = Worker(
                config, identity, host, model, outbox, control=control, board=TaskBoard(on_task)
            )

        def on_devices(gpus: tuple[int, ...] | None) -> None:
            """The contributor chose other GPUs: the model process restarts on them."""
            if model is None:
                return
            model.devices = gpus
            if worker is not None:
                worker.stop_generating("devices_changed")
                worker.restart_model_soon()

        if control is not None:
            control.device_hooks.append(on_devices)

        def capacity() -> tuple[float, int, int]:
            busy = worker is not None and worker.busy
            queued = validator.inbox.queue_length() if validator is not None else 0
            free = int(worker is not None and not busy)
            head = publisher.log.head if publisher is not None else 0
            return (float(busy) + queued, free, head)

        liveness = Liveness(
            host,
            identity,
            net.network_id,
            tuple(sorted(roles)),
            interval=config.heartbeat_interval,
            capacity=capacity,
            gpus=tuple(model.info.gpu_names) if model is not None and model.info else (),
            on_publisher_head=worker.on_publisher_head if worker is not None else None,
        )
        liveness.publishers = net.publisher_keys

        parts = NodeParts(
            config=config,
            identity=identity,
            roles=frozenset(roles),
            started=started,
            host=host,
            liveness=liveness,
            store=store,
            ledger_sync=ledger_sync,
            bus=bus,
            logbook=logbook,
            monitor=monitor,
            control=control,
            model=model,
            publisher=publisher,
            validator=validator,
            worker=worker,
            pool=pool,
            network_state=network_state,
        )
        view = NodeView(parts)
        registry = registry_for(view)

        async with host.running(config.listen_port), trio.open_nursery() as nursery:
            for addr in (*config.bootstrap, *net.bootstrap):
                if not addr.endswith("/p2p/" + identity.peer_id):
                    nursery.start_soon(liveness.keep_connected, addr)
            if worker is not None:
                await host.subscribe(tasks_topic(net.network_id), worker.on_announcement)
            await host.subscribe(
                ledger_topic(net.network_id), ledger_sync.on_ledger_gossip, LEDGER_GOSSIP
            )
            nursery.start_soon(ledger_sync.run)
            await host.subscribe(
                heartbeat_topic(net.network_id),
                liveness.on_heartbeat,
                heartbeat_budget(config.heartbeat_interval),
            )
            nursery.start_soon(liveness.heartbeat_loop)
            discovery = Discovery(
                host, net.network_id, roles, net.publisher_keys, net.validator_keys
            )
            nursery.start_soon(discovery.run)
            nursery.start_soon(_check_reachability, host, config, network_state)
            token = load_or_create_token(config.data_dir)
            # The public web leaderboard at /web/ (no token: it shows the public ledger only).
            from flopnet.web.server import web_mount

            web = web_mount(config.data_dir / LEDGER_FILE, config.manifest_path, config.data_dir)
            app = build_api(
                token,
                endpoints(view, registry),
                mounts=[web] if web is not None else [],
                version=_software_version(),
            )
            api_url = await nursery.start(serve_api, app, config.api_port)
            metrics_url = None
            if config.metrics_port is not None:
                bound = await nursery.start(
                    serve_metrics, registry, config.metrics_host, config.metrics_port
                )
                metrics_url = f"{bound}/metrics"
                log.info("token-free metrics on %s", metrics_url)
            nursery.start_soon(run_feeds, view)
            if control is not None:
                nursery.start_soon(control.run)
            write_node_info(
                config.data_dir,
                {
                    "peer_id": identity.peer_id,
                    "public_key": identity.public_key.hex(),
                    "addrs": host.addrs(),
                    "api_url": api_url,
                    "metrics_url": metrics_url,
                    "roles": sorted(roles),
                    "pid": os.getpid(),
                },
            )
            log.info("listening on %s; API on %s", host.addrs(), api_url)
            if publisher is not None:
                nursery.start_soon(publisher.run)
            if worker is not None:
                nursery.start_soon(worker.run)
            if validator is not None:
                nursery.start_soon(validator.run)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("signal %d: shutting down", signum)
                    break
            nursery.cancel_scope.cancel()
    log.info("node stopped")


def _software_version() -> str:
    import flopnet

    return str(flopnet.__version__)
