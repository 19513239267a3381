"""``flopnet devnet``: a real local network of separate processes on 127.0.0.1.

One process is publisher + validator (or, with ``separate_publisher``, one each: the validator
then holds no task set and fetches each task's spec from the publisher); with ``validators`` > 1
the others are validator-only processes (fetching specs from the publisher, each sample judged by
the one ``validator_for`` names, every chain replicated to all); each worker is its own
process (and each has its own model child process). Cheaters are workers whose model seed
differs from the network's: a forged computation that the validator's TOPLOC check must reject.
The devnet waits for every worker to connect before tasks are announced (so each worker,
cheaters included, gets a lease), follows the validator through its local API, then stops every
process and summarises the validator's ledger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flopnet.node.config import NetworkParams, create_network, recommended_proof_params
from flopnet.node.local import (
    LEDGER_FILE,
    NODE_INFO_FILE,
    api_get,
    flopnet_argv,
    read_node_info,
)
from flopnet.node.profile import save_profile
from flopnet.node.tasks.base import LANGUAGES
from flopnet.node.tasks.sources import TaskSourceSpec
from flopnet.node.worker.cheats import CHEATS
from flopnet.protocol.errors import ConfigError, FlopnetError
from flopnet.protocol.identity import load_or_create_identity
from flopnet.protocol.manifest import MANIFEST_FILE

VALIDATOR_DIR = "validator"
PUBLISHER_DIR = "publisher"
RELAY_DIR = "bootstrap"
NODE_START_TIMEOUT_S = 300.0
POLL_S = 0.5
CHEAT_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class DevnetOptions:
    workers: int = 2
    cheaters: int = 0  # workers running other weights (the cheat ``wrong_model``)
    cheats: tuple[str, ...] = ()  # one more cheater worker per cheat kind named
    tasks: int = 6  # per task source
    samples: int = 1  # samples of each task (preference pairs need several)
    task_sources: tuple[TaskSourceSpec, ...] = ()  # empty: the built-in arithmetic set
    languages: tuple[str, ...] = LANGUAGES
    # The validator's LLM judge for llm_judge tasks (the key file's path is handed on).
    judge_url: str | None = None
    judge_model: str | None = None
    judge_key_file: Path | None = None
    max_new_tokens: int = 48
    model: str = "tiny"
    dtype: str = "bfloat16"
    data_dir: Path | None = None
    timeout: float = 600.0
    headless: bool = True
    lease_seconds: float = 120.0
    # Start a separate bootstrap (relay) node that every other node knows, instead of giving
    # workers the validator's address: they must then find it on the DHT.
    bootstrap_node: bool = False
    batch_size: int = 1  # each worker generates this many leases together
    pin_weights: bool = False  # hash the model's weights into the manifest (~5 s for tiny)
    separate_publisher: bool = False  # publisher and validator in two processes
    # Validators in the manifest: the first is the one above (the publisher too, unless
    # separate); the others are validator-2, validator-3, ... Each sample goes to one of them.
    validators: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError("a devnet needs at least one honest worker")
        if self.cheaters < 0 or self.tasks < 1:
            raise ConfigError("--cheaters must be >= 0 and --tasks >= 1")
        unknown = set(self.cheats) - set(CHEATS)
        if unknown:
            raise ConfigError(f"--cheat must be one of {', '.join(CHEATS)}, not {sorted(unknown)}")
        if self.lease_seconds <= 0:
            raise ConfigError("--lease-seconds must be positive")
        if not 1 <= self.samples <= 64:
            raise ConfigError("--samples must be in 1..64")
        if not 1 <= self.validators <= 8:
            raise ConfigError("--validators must be in 1..8")
        from flopnet.node.model.trained import TRAINED_MODELS

        if self.cheaters and self.model in TRAINED_MODELS:
            # A devnet cheater runs other seeded weights; a trained model has one set.
            raise ConfigError(
                f"--cheaters needs a seeded model (--model tiny, deepseek-v3-tiny, ...): "
                f"{self.model} has one set of trained weights"
            )


@dataclass
class _Proc:
    name: str
    data_dir: Path
    cheater: str  # the cheat kind, or "" for an honest worker
    process: subprocess.Popen[bytes]
    public_key: str
    kind: str  # "validator", "publisher", "worker" or "relay"
    command: list[str]


def _launch(cmd: list[str], data_dir: Path) -> subprocess.Popen[bytes]:
    with open(data_dir / "stderr.log", "ab") as log:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_max_new_tokens(model: str) -> int:
    """Room for a trained model to finish an answer; seeded models' text means nothing, and
    short outputs keep their devnets fast."""
    from flopnet.node.model.trained import TRAINED_MODELS

    return 256 if model in TRAINED_MODELS else 48


def default_lease_seconds(model: str) -> float:
    """A trained model's 256 tokens take 10-20 s on a quiet 2-core machine but minutes on a busy
    one; a lease that lapses mid-generation only wastes the work, so give it room."""
    from flopnet.node.model.trained import TRAINED_MODELS

    return 600.0 if model in TRAINED_MODELS else 120.0


def prepare_model(model: str, dtype: str) -> float | None:
    """Convert a trained model into the model cache before any node starts (printing progress
    on stderr), so the nodes only read it; the seconds it took, None for other models."""
    from flopnet.node.model import trained

    if model not in trained.TRAINED_MODELS:
        return None
    t0 = time.perf_counter()

    def progress(line: str) -> None:
        print(f"flopnet: {line}", file=sys.stderr, flush=True)

    trained.ensure_converted(model, dtype, progress=progress)
    trained.ensure_tokenizer(model, progress=progress)
    return time.perf_counter() - t0


def devnet_params(
    opts: DevnetOptions,
    validator_key: str,
    publisher_key: str | None = None,
    more_validators: tuple[str, ...] = (),
) -> NetworkParams:
    """A devnet's network parameters: its validators (``validator_key`` first), one publisher
    (the first validator's node unless ``publisher_key`` is another), and the proof policy
    ``recommended_policy(model, dtype)`` (calibrated for the embedded models)."""
    return NetworkParams(
        network_id="assigned-by-manifest",  # the founder key decides the real id
        model=opts.model,
        dtype=opts.dtype,
        max_new_tokens=opts.max_new_tokens,
        lease_seconds=opts.lease_seconds,
        samples_per_task=opts.samples,
        publishers=(publisher_key or validator_key,),
        validators=(validator_key, *more_validators),
        **recommended_proof_params(opts.model, opts.dtype),
    )


class Devnet:
    """Starts, watches and stops the processes of one local network."""

    def __init__(self, options: DevnetOptions) -> None:
        self.options = options
        self.root = options.data_dir or Path(tempfile.mkdtemp(prefix="flopnet-devnet-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.procs: list[_Proc] = []
        self.started_at = time.time()
        self.validator_info: dict[str, Any] | None = None
        self.publisher_info: dict[str, Any] | None = None  # the validator's, unless separate
        self.final_status: dict[str, dict[str, Any]] = {}
        self.ready_at: float | None = None
        self.network_id = ""  # derived from the founder key in start()
        self.model_prepare_seconds: float | None = None
        self.network_file = self.root / MANIFEST_FILE
        self.task_count = options.tasks  # the task set's size once the sources are loaded

    # -- start ---------------------------------------------------------------------------------

    @property
    def workers(self) -> list[_Proc]:
        """The worker processes (honest and cheating), in start order."""
        return [p for p in self.procs if p.kind == "worker"]

    def _spawn(self, name: str, kind: str, args: list[str], cheater: str = "") -> _Proc:
        data_dir = self.root / name
        identity = load_or_create_identity(data_dir)
        (data_dir / NODE_INFO_FILE).unlink(missing_ok=True)
        cmd = [
            *flopnet_argv(),
            "node",
            "--data-dir",
            str(data_dir),
            "--manifest",
            str(self.network_file),
            "--torch-threads",
            "1",
            *args,
        ]
        process = _launch(cmd, data_dir)
        proc = _Proc(name, data_dir, cheater, process, identity.public_key.hex(), kind, cmd)
        self.procs.append(proc)
        return proc

    @staticmethod
    def _worker_plan(opts: DevnetOptions, bootstrap: str) -> list[tuple[str, list[str], str]]:
        """(name, arguments, cheat kind or "") of every worker: the honest ones, then one
        cheater per ``--cheaters`` (other weights) and per ``--cheat`` kind."""
        base = ["--role", "worker", "--bootstrap", bootstrap, "--batch-size", str(opts.batch_size)]
        plan = [(f"worker-{i + 1}", base, "") for i in range(opts.workers)]
        for i in range(opts.cheaters):
            seed = ["--cheat-model-seed", str(CHEAT_SEED_OFFSET + i)]
            plan.append((f"cheater-{i + 1}", [*base, *seed], "wrong_model"))
        for i, kind in enumerate(opts.cheats):
            extra = ["--cheat", kind]
            if kind == "wrong_model":
                extra = ["--cheat-model-seed", str(CHEAT_SEED_OFFSET + opts.cheaters + i)]
            plan.append((f"cheat-{kind}", [*base, *extra], kind))
        return plan

    def restart(self, name: str) -> dict[str, Any]:
        """Start a (killed) node again with the same command and state; wait until it is up."""
        proc = next(p for p in self.procs if p.name == name)
        if proc.process.poll() is None:
            raise FlopnetError(f"{name} is still running")
        (proc.data_dir / NODE_INFO_FILE).unlink(missing_ok=True)
        proc.process = _launch(proc.command, proc.data_dir)
        info = self._wait_info(proc, time.time() + NODE_START_TIMEOUT_S)
        first = proc.name == VALIDATOR_DIR
        if first:
            self.validator_info = info
        if proc.kind == "publisher" or (first and not self._separate):
            self.publisher_info = info
        return info

    @property
    def _separate(self) -> bool:
        return self.options.separate_publisher

    @property
    def extra_validator_dirs(self) -> list[str]:
        """The data dirs of the validators after the first (``--validators N``)."""
        return [f"{VALIDATOR_DIR}-{i}" for i in range(2, self.options.validators + 1)]

    @property
    def validators(self) -> list[_Proc]:
        """The validator processes, the first one first."""
        return [p for p in self.procs if p.kind == "validator"]

    def wait_replicated(self, timeout: float) -> bool:
        """Wait until every validator holds every validator's chain up to the same head (the
        summary reads one validator's ledger: with several, it must hold the others' credits)."""
        deadline = time.time() + timeout
        while True:
            heads = []
            for proc in self.validators:
                info = read_node_info(proc.data_dir)
                try:
                    heads.append(
                        dict(api_get(info, "/status"))["ledger"]["heads"] if info else None
                    )
                except Exception:
                    heads.append(None)
            if heads and heads[0] and all(h == heads[0] for h in heads):
                return True
            if time.time() >= deadline:
                return False
            time.sleep(POLL_S)

    def _wait_info(self, proc: _Proc, deadline: float) -> dict[str, Any]:
        while time.time() < deadline:
            info = read_node_info(proc.data_dir)
            if info is not None:
                return info
            if proc.process.poll() is not None:
                raise FlopnetError(
                    f"{proc.name} exited with code {proc.process.returncode}; "
                    f"see {proc.data_dir / 'stderr.log'} and node.log"
                )
            time.sleep(0.1)
        raise FlopnetError(f"{proc.name} did not start within {NODE_START_TIMEOUT_S}s")

    def start(self) -> None:
        """Write the network parameters and start every process.

        The validator's port is chosen here so that its multiaddr is known before it runs and
        every process starts at once (workers retry their bootstrap dial until it answers).
        """
        opts = self.options
        self.model_prepare_seconds = prepare_model(opts.model, opts.dtype)
        validator_identity = load_or_create_identity(self.root / VALIDATOR_DIR)
        validator_key = validator_identity.public_key.hex()
        port = _free_port()
        # A fresh founder key per devnet data dir: its manifest signs this network into being.
        founder = load_or_create_identity(self.root / "founder")
        publisher_key = None
        if opts.separate_publisher:
            publisher_key = load_or_create_identity(self.root / PUBLISHER_DIR).public_key.hex()
        more = tuple(
            load_or_create_identity(self.root / name).public_key.hex()
            for name in self.extra_validator_dirs
        )
        params = devnet_params(opts, validator_key, publisher_key, more)
        if opts.pin_weights:
            from flopnet.node.model.models import model_weights_sha256

            pinned = model_weights_sha256(opts.model, seed=params.model_seed, dtype=opts.dtype)
            params = dataclasses.replace(params, weights_sha256=pinned)
        self.network_id = create_network(founder, "devnet", params, self.network_file).network_id
        if opts.task_sources:
            # Load the set here first: a bad file is reported at once, not in a node's log.
            from flopnet.node.tasks import load_task_sources

            sources, languages = opts.task_sources, opts.languages
            self.task_count = len(load_task_sources(sources, limit=opts.tasks, languages=languages))
        task_args = ["--tasks", str(opts.tasks), "--languages", ",".join(opts.languages)]
        for source in opts.task_sources:
            task_args += source.arguments()
        # A newcomer earns its leases; a devnet's own workers may fill a batch from the start.
        task_args += ["--newcomer-leases", str(opts.batch_size)]
        peers_needed = opts.workers + opts.cheaters + len(opts.cheats) + len(more)
        if opts.separate_publisher:
            node_args = ["--role", "validator"]
            publisher_args = ["--role", "publisher", *task_args]
            peers_needed += 1  # the publisher waits for the validator too
        else:
            node_args = ["--role", "publisher", "--role", "validator", *task_args]
            publisher_args = []
        bootstrap = f"/ip4/127.0.0.1/tcp/{port}/p2p/{validator_identity.peer_id}"
        if opts.bootstrap_node:
            relay_port = _free_port()
            relay_identity = load_or_create_identity(self.root / RELAY_DIR)
            self._spawn(RELAY_DIR, "relay", ["--role", "relay", "--port", str(relay_port)])
            bootstrap = f"/ip4/127.0.0.1/tcp/{relay_port}/p2p/{relay_identity.peer_id}"
            node_args += ["--bootstrap", bootstrap]
            peers_needed += 1
        if opts.separate_publisher:
            publisher_args += ["--bootstrap", bootstrap, "--wait-for-workers", str(peers_needed)]
        else:
            node_args += ["--wait-for-workers", str(peers_needed)]
        node_args += self._judge_args()
        validator = self._spawn(VALIDATOR_DIR, "validator", [*node_args, "--port", str(port)])
        for name in self.extra_validator_dirs:
            self._spawn(
                name,
                "validator",
                ["--role", "validator", "--bootstrap", bootstrap, *self._judge_args()],
            )
        publisher = validator
        if opts.separate_publisher:
            publisher = self._spawn(PUBLISHER_DIR, "publisher", publisher_args)
        for name, args, cheat in self._worker_plan(opts, bootstrap):
            # Each worker signs a profile, so the leaderboard shows names and a team.
            save_profile(self.root / name, name, "devnet")
            self._spawn(name, "worker", args, cheat)
        deadline = time.time() + NODE_START_TIMEOUT_S
        self.validator_info = self._wait_info(validator, deadline)
        self.publisher_info = self._wait_info(publisher, deadline)
        for proc in self.procs:
            self._wait_info(proc, deadline)
        self.ready_at = time.time()

    def _judge_args(self) -> list[str]:
        opts = self.options
        args = ["--judge-url", opts.judge_url] if opts.judge_url else []
        if opts.judge_model:
            args += ["--judge-model", opts.judge_model]
        if opts.judge_key_file is not None:
            args += ["--judge-key-file", str(opts.judge_key_file)]
        return args

    # -- watch ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The validator's /status document."""
        assert self.validator_info is not None
        return dict(api_get(self.validator_info, "/status"))

    def publisher_status(self) -> dict[str, Any] | None:
        """The publisher's part of its node's /status."""
        assert self.publisher_info is not None
        return dict(api_get(self.publisher_info, "/status"))["publisher"]

    def dead(self) -> list[str]:
        """Names of processes that exited."""
        return [p.name for p in self.procs if p.process.poll() is not None]

    def wait_done(self, timeout: float, allow_dead: frozenset[str] = frozenset()) -> bool:
        """Poll until every task sample is validated; False on timeout or an unexpected death."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if set(self.dead()) - allow_dead:
                return False
            try:
                publisher = self.publisher_status()
            except Exception:
                publisher = None
            if publisher and publisher["all_done"]:
                return True
            time.sleep(POLL_S)
        return False

    def wait_profiles(self, timeout: float = 10.0) -> bool:
        """Wait until every worker credited so far has its profile on the validator's ledger
        (a worker sends it right after its first accepted verdict)."""
        assert self.validator_info is not None
        deadline = time.time() + timeout
        while True:
            try:
                rows = api_get(self.validator_info, "/leaderboard")
                if all(r["display_name"] for r in rows if r["tasks_accepted"]):
                    return True
            except Exception:
                pass  # the validator is busy or restarting: ask again
            if time.time() >= deadline:
                return False
            time.sleep(POLL_S)

    # -- stop and summarise --------------------------------------------------------------------

    def capture_status(self) -> None:
        """Keep every live node's last /status, for the summary's timings."""
        for proc in self.procs:
            info = read_node_info(proc.data_dir)
            if info is None or proc.process.poll() is not None:
                continue
            try:
                self.final_status[proc.name] = dict(api_get(info, "/status"))
            except Exception:
                continue  # a node that cannot answer simply has no timing row

    def stop(self) -> None:
        """SIGTERM every process, then SIGKILL what is left after a grace period."""
        for proc in self.procs:
            if proc.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.process.pid, signal.SIGCONT)  # a frozen node cannot stop
                proc.process.send_signal(signal.SIGTERM)
        grace = time.time() + 15
        for proc in self.procs:
            try:
                proc.process.wait(timeout=max(0.1, grace - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.process.pid, signal.SIGKILL)
                proc.process.wait()

    def summary(self, finished: bool) -> dict[str, Any]:
        """The run's results from the validator's ledger, one row per worker."""
        from flopnet.ledger.leaderboard import leaderboard
        from flopnet.ledger.store import LedgerStore

        with LedgerStore(self.root / VALIDATOR_DIR / LEDGER_FILE) as store:
            standings = {
                s.contributor.hex(): s
                for s in leaderboard(store, since=self.started_at, limit=10_000)
            }
        contributors: list[dict[str, Any]] = []
        for proc in self.workers:
            standing = standings.get(proc.public_key)
            contributors.append(
                {
                    "name": proc.name,
                    "peer_id": load_or_create_identity(proc.data_dir).peer_id,
                    "display_name": standing.display_name if standing else "",
                    "team": standing.team if standing else "",
                    "cheater": proc.cheater,
                    "tasks": standing.tasks_accepted if standing else 0,
                    "rejected": standing.tasks_rejected if standing else 0,
                    "flops": standing.flops if standing else 0,
                    "generated_tokens": standing.generated_tokens if standing else 0,
                }
            )
        validated = sum(c["tasks"] for c in contributors)
        tasks = self._task_count()
        total = tasks * self.options.samples
        return {
            "ok": finished and validated >= total,
            "network_id": self.network_id,
            "data_dir": str(self.root),
            "tasks": tasks,
            "samples": total,
            "tasks_validated": validated,
            "tasks_rejected": sum(c["rejected"] for c in contributors),
            "flops_credited": sum(c["flops"] for c in contributors),
            "wall_seconds": round(time.time() - self.started_at, 2),
            "startup_seconds": (
                round(self.ready_at - self.started_at, 2) if self.ready_at is not None else None
            ),
            # Of the start-up: converting a trained model (first run) or checking its cache.
            "model_prepare_seconds": (
                round(self.model_prepare_seconds, 2)
                if self.model_prepare_seconds is not None
                else None
            ),
            "dead_processes": self.dead() if not finished else [],
            "timing": self._timing(),
            "contributors": contributors,
        }

    def _task_count(self) -> int:
        """How many tasks the publisher held (several sources give more than ``--tasks``)."""
        name = PUBLISHER_DIR if self._separate else VALIDATOR_DIR
        held = ((self.final_status.get(name) or {}).get("publisher") or {}).get("tasks")
        return held if isinstance(held, int) and held > 0 else self.task_count

    def _timing(self) -> dict[str, float | None]:
        """Per-task generation and validation times and proof size, from the nodes' counters."""
        gen_s = gens = batches = 0.0
        for name, status in self.final_status.items():
            worker = status.get("worker")
            if worker and not any(p.cheater for p in self.procs if p.name == name):
                gen_s += worker["generation_seconds"]
                gens += worker["generations"]
                batches += worker["batches"]
        val = (self.final_status.get(VALIDATOR_DIR) or {}).get("validator") or {}
        checks = val.get("proof_checks", 0)
        tokens = val.get("tokens_checked", 0)
        return {
            "generation_s_per_task": round(gen_s / gens, 4) if gens else None,
            "tasks_per_generation_call": round(gens / batches, 2) if batches else None,
            "proof_check_s_per_task": round(val["prefill_seconds"] / checks, 4) if checks else None,
            "answer_check_s_per_task": (
                round(val["verify_seconds"] / val["accepted"], 4) if val.get("accepted") else None
            ),
            "proof_bytes_per_token": round(val["proof_bytes"] / tokens, 3) if tokens else None,
        }


def run_devnet(options: DevnetOptions) -> dict[str, Any]:
    """Run a devnet to completion (headless) or under the TUI; return the summary."""
    devnet = Devnet(options)
    finished = False
    try:
        devnet.start()
        if options.headless:
            finished = devnet.wait_done(options.timeout)
            if finished:
                devnet.wait_profiles()
                if options.validators > 1:
                    devnet.wait_replicated(60)
        else:
            from flopnet.tui.app import NodeTarget, run_tui

            targets = [NodeTarget(p.name, p.data_dir) for p in devnet.procs]
            run_tui(targets, title=f"flopnet devnet {devnet.network_id}")
            finished = bool((devnet.publisher_status() or {}).get("all_done"))
    finally:
        dead_before_stop = devnet.dead()
        devnet.capture_status()
        devnet.stop()
    summary = devnet.summary(finished)
    if dead_before_stop:
        summary["dead_processes"] = dead_before_stop
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable report of a devnet run."""
    lines = [
        f"devnet {summary['network_id']}: {summary['tasks_validated']}/{summary['samples']} "
        f"samples validated, {summary['tasks_rejected']} rejected, "
        f"{summary['flops_credited']:,} FLOPs "
        f"credited in {summary['wall_seconds']}s",
    ]
    for c in summary["contributors"]:
        tag = f" (cheater: {c['cheater']})" if c["cheater"] else ""
        lines.append(
            f"  {c['name']:<10} {c['peer_id']}  tasks {c['tasks']:>3}  rejected {c['rejected']:>3}"
            f"  FLOPs {c['flops']:>16,}{tag}"
        )
    lines.append(f"state kept in {summary['data_dir']}")
    return "\n".join(lines)
