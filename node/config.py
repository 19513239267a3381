"""Configuration: the network parameters every node shares, and one node's own settings.

Every environment variable flopnet reads is read in :func:`env_settings`, nowhere else.

``network.manifest`` (see :mod:`protocol.manifest`) carries what all nodes of a network must agree
on (model, sampling, proof thresholds, who publishes and who validates), signed by the founder
key; every node verifies it at start and refuses it if the signature or network id is wrong.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flopnet.node.control import Schedule, Settings, check_gpus
from flopnet.node.tasks.base import LANGUAGES
from flopnet.node.tasks.sources import TaskSourceSpec
from flopnet.proof.params import CHUNK, POLICY_PARAMS, TOPK
from flopnet.protocol.errors import ConfigError
from flopnet.protocol.identity import Identity, read_private
from flopnet.protocol.manifest import create_manifest, load_manifest
from flopnet.protocol.messages import NetworkManifest

if TYPE_CHECKING:  # proof.policy imports torch, which the daemon never loads
    from flopnet.proof.policy import ProofPolicy

# A "relay" node does no work: it is a bootstrap peer, a DHT server and a circuit relay.
ROLES = ("publisher", "validator", "worker", "relay")
# The fields of NetworkParams that make up the proof policy (from the torch-free proof.params).
PROOF_PARAMS = tuple(POLICY_PARAMS)


@dataclass(frozen=True)
class NetworkParams:
    """What every node of one network agrees on: the verified manifest, in memory."""

    network_id: str
    model: str = "tiny"
    model_revision: str = ""
    model_seed: int = 1234
    dtype: str = "bfloat16"
    weights_sha256: str = ""
    max_new_tokens: int = 48
    temperature: float = 0.6
    top_p: float = 0.95
    samples_per_task: int = 1
    lease_seconds: float = 120.0
    proof_chunk: int = 32
    proof_topk: int = 128
    # The proof policy (``proof_policy()``). These defaults are the lenient paper-era values of
    # ``ProofPolicy()``; ``flopnet network init`` and the devnet write ``recommended_policy(model,
    # dtype)`` instead (``recommended_proof_params``).
    max_exp_mismatches: int = 38
    max_mant_err_mean: float = 10.0
    max_mant_err_median: float = 8.0
    max_sign_mismatches: int = 4
    # Honest average mant_err_mean for the pooled check over a submission; 0: no pooled check.
    mant_err_mean_baseline: float = 0.0
    # Score units by which a sampled token may fall short of the seeded sampler's choice.
    replay_tolerance: float = 0.1
    # Fraction of generated tokens that may fail the sampling replay.
    max_replay_mismatch_fraction: float = 0.05
    # Honest ceiling of impossible tokens per token for the per-contributor tally; 0: no tally.
    honest_replay_rate: float = 0.0
    publishers: tuple[str, ...] = ()  # hex Ed25519 public keys
    validators: tuple[str, ...] = ()
    lock_window_seconds: float = 86400.0
    audit_rate_floor: float = 1.0
    bootstrap: tuple[str, ...] = ()
    founder: str = ""  # hex; empty only for parameters not taken from a manifest (tests)

    def __post_init__(self) -> None:
        if not self.network_id or len(self.network_id) > 64:
            raise ConfigError("network_id must be 1-64 characters")
        if self.dtype not in ("bfloat16", "float32"):
            raise ConfigError(f"dtype must be bfloat16 or float32, not {self.dtype!r}")
        if not 1 <= self.max_new_tokens <= 32768:
            raise ConfigError("max_new_tokens must be in 1..32768")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("temperature must be >= 0 and top_p in (0, 1]")
        if not 1 <= self.samples_per_task <= 64:
            raise ConfigError("samples_per_task must be in 1..64")
        for key in (*self.publishers, *self.validators):
            if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
                raise ConfigError(f"{key!r} is not a hex Ed25519 public key")
        self._check_proof_params()

    def _check_proof_params(self) -> None:
        for name in ("max_exp_mismatches", "max_sign_mismatches"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 4096:
                raise ConfigError(f"{name} must be an integer in 0..4096, not {value!r}")
        for name in (
            "max_mant_err_mean",
            "max_mant_err_median",
            "mant_err_mean_baseline",
            "replay_tolerance",
            "max_replay_mismatch_fraction",
            "honest_replay_rate",
        ):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(f"{name} must be a finite number >= 0, not {value!r}")
        for name in ("max_replay_mismatch_fraction", "honest_replay_rate"):
            if getattr(self, name) > 1:
                raise ConfigError(f"{name} must be in [0, 1]")
        if (self.proof_chunk, self.proof_topk) != (CHUNK, TOPK):
            # Workers and validators build and check proofs with the reference's 32/128 only.
            raise ConfigError("proof_chunk and proof_topk must be 32 and 128 (the TOPLOC format)")
        if not 0.0 <= self.audit_rate_floor <= 1.0:
            raise ConfigError(f"audit_rate_floor must be in [0, 1], not {self.audit_rate_floor}")
        if self.lock_window_seconds < 0:
            raise ConfigError("lock_window_seconds must be >= 0")
        if self.mant_err_mean_baseline > self.max_mant_err_mean:
            # The pooled limit falls from the per-chunk limit towards the baseline; above it the
            # baseline would loosen nothing and only confuse.
            raise ConfigError(
                f"mant_err_mean_baseline {self.mant_err_mean_baseline} must not exceed "
                f"max_mant_err_mean {self.max_mant_err_mean}"
            )

    def proof_params(self) -> dict[str, Any]:
        """The proof policy's parameters as plain numbers (what crosses the pipe to the model
        process); ``proof.policy.policy_from_params`` turns them into the policy."""
        return {name: getattr(self, name) for name in PROOF_PARAMS}

    def proof_policy(self) -> ProofPolicy:
        """The :class:`~proof.policy.ProofPolicy` this network's validators apply (loads torch)."""
        from flopnet.proof.policy import policy_from_params

        return policy_from_params(self.proof_params())

    @property
    def publisher_keys(self) -> set[bytes]:
        return {bytes.fromhex(k) for k in self.publishers}

    @property
    def validator_keys(self) -> set[bytes]:
        return {bytes.fromhex(k) for k in self.validators}

    @classmethod
    def from_manifest(cls, manifest: NetworkManifest) -> NetworkParams:
        """The parameters of a verified manifest."""
        fields = {f: getattr(manifest, f) for f in cls.__dataclass_fields__ if hasattr(manifest, f)}
        fields["publishers"] = tuple(k.hex() for k in manifest.publishers)
        fields["validators"] = tuple(k.hex() for k in manifest.validators)
        fields["founder"] = manifest.founder.hex()
        return cls(**fields)

    def manifest_fields(self) -> dict[str, Any]:
        """Keyword arguments for :func:`protocol.manifest.create_manifest` (all but id/founder)."""
        out = asdict(self)
        for key in ("network_id", "founder"):
            out.pop(key)
        out["publishers"] = tuple(bytes.fromhex(k) for k in self.publishers)
        out["validators"] = tuple(bytes.fromhex(k) for k in self.validators)
        out["created_at"] = time.time()
        for key in ("temperature", "top_p", "lease_seconds", "max_mant_err_mean"):
            out[key] = float(out[key])
        for key in (
            "max_mant_err_median",
            "mant_err_mean_baseline",
            "replay_tolerance",
            "max_replay_mismatch_fraction",
            "honest_replay_rate",
        ):
            out[key] = float(out[key])
        out["lock_window_seconds"] = float(out["lock_window_seconds"])
        out["audit_rate_floor"] = float(out["audit_rate_floor"])
        return out

    @classmethod
    def load(cls, path: Path) -> NetworkParams:
        """Read and verify a founder-signed ``network.manifest``."""
        return cls.from_manifest(load_manifest(path))

    def as_json(self) -> dict[str, Any]:
        """Every parameter as plain JSON-able data (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}


def recommended_proof_params(model: str, dtype: str) -> dict[str, Any]:
    """The proof parameters a new network of ``model``/``dtype`` starts with:
    ``proof.policy.recommended_policy`` (calibrated for the embedded models, the paper-era
    defaults for any other model until it is calibrated). Imports torch."""
    from flopnet.proof.policy import policy_params, recommended_policy

    return policy_params(recommended_policy(model, dtype))


def create_network(
    founder: Identity, name: str, params: NetworkParams, path: Path
) -> NetworkParams:
    """Sign ``params`` as a new network's manifest, write it to ``path``; return it verified."""
    data = create_manifest(founder, name, **params.manifest_fields())
    path.write_bytes(data)
    return NetworkParams.load(path)


@dataclass(frozen=True)
class EnvSettings:
    """Settings taken from the environment (the only place flopnet reads it)."""

    log_level: str = "INFO"
    torch_threads: int = 0  # 0: torch's default
    data_root: Path = field(default_factory=lambda: Path.home() / ".flopnet")
    # The validator's LLM judge (an OpenAI-compatible endpoint); flags override these.
    judge_url: str | None = None
    judge_model: str | None = None
    judge_api_key: str | None = field(default=None, repr=False)
    # Converted trained models (node/model/trained.py), shared by every node of this user.
    model_cache: Path = field(default_factory=lambda: Path.home() / ".flopnet" / "models")


def env_settings(environ: dict[str, str] | None = None) -> EnvSettings:
    """Read FLOPNET_LOG_LEVEL, FLOPNET_TORCH_THREADS, FLOPNET_HOME, FLOPNET_MODEL_CACHE and the
    judge's FLOPNET_JUDGE_URL, FLOPNET_JUDGE_MODEL and FLOPNET_JUDGE_API_KEY."""
    env = dict(os.environ) if environ is None else environ
    threads_text = env.get("FLOPNET_TORCH_THREADS", "0")
    try:
        threads = int(threads_text)
    except ValueError:
        raise ConfigError(f"FLOPNET_TORCH_THREADS={threads_text!r} is not an integer") from None
    home = env.get("FLOPNET_HOME")
    data_root = Path(home) if home else Path.home() / ".flopnet"
    cache = env.get("FLOPNET_MODEL_CACHE")
    return EnvSettings(
        log_level=env.get("FLOPNET_LOG_LEVEL", "INFO").upper(),
        torch_threads=max(0, threads),
        data_root=data_root,
        model_cache=Path(cache) if cache else data_root / "models",
        judge_url=env.get("FLOPNET_JUDGE_URL") or None,
        judge_model=env.get("FLOPNET_JUDGE_MODEL") or None,
        judge_api_key=env.get("FLOPNET_JUDGE_API_KEY") or None,
    )


MAX_KEY_FILE_BYTES = 4096


def read_key_file(path: Path) -> str:
    """An API key from a file only its owner can read (like the identity key); ConfigError
    when it is unreadable, empty, too long or readable by others."""
    data = read_private(path, MAX_KEY_FILE_BYTES)
    try:
        key = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: a key file must hold UTF-8 text") from None
    if not key or len(data) > MAX_KEY_FILE_BYTES or any(c.isspace() for c in key):
        raise ConfigError(f"{path}: expected one key of at most {MAX_KEY_FILE_BYTES} bytes")
    return key


@dataclass(frozen=True)
class JudgeSettings:
    """Where a validator's LLM judge is (an OpenAI-compatible base URL) and how to call it."""

    url: str | None = None
    model: str = "judge"
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--judge-url must be an http(s) URL, not {self.url!r}")
        if not self.model or len(self.model) > 256:
            raise ConfigError("--judge-model must be 1-256 characters")


@dataclass(frozen=True)
class NodeConfig:
    """One node's settings, validated."""

    roles: tuple[str, ...]
    data_dir: Path
    network: NetworkParams
    listen_port: int = 0
    listen_ip: str = "127.0.0.1"
    bootstrap: tuple[str, ...] = ()
    api_port: int = 0
    tasks: int = 6  # per task source (the built-in set counts as one)
    task_sources: tuple[TaskSourceSpec, ...] = ()  # --tasks-file (empty: the built-in set)
    languages: tuple[str, ...] = LANGUAGES  # the languages code problems are posed in
    task_seed: int = 0
    wait_for_workers: int = 0
    model_seed_override: int | None = None  # a forged computation, for devnet cheaters only
    cheat: str | None = None  # devnet cheaters only: node/worker/cheats.py
    torch_threads: int = 0
    verifier_workers: int = 1
    heartbeat_interval: float = 2.0
    relays: tuple[str, ...] = ()  # relay multiaddrs to take a reservation on (nodes behind NAT)
    mdns: bool = False
    batch_size: int = 1  # worker: leases generated together
    backend: str = "auto"  # inference backend: hf, vllm, or auto (the hardware plan's choice)
    audit_batch: int = 8  # validator: audits of different contributors made in one prefill
    # Publisher: active leases one worker may hold (a batching worker needs several).
    max_leases_per_worker: int = 8
    newcomer_leases: int = 1  # publisher: leases a worker without accepted work may hold
    judge: JudgeSettings = field(default_factory=JudgeSettings)  # validator: llm_judge tasks
    # Worker: work only in these local hours ("22:00-08:00"); the GPUs the model may use.
    pause_schedule: str | None = None
    gpus: tuple[int, ...] | None = None
    # Which of batch_size, pause_schedule and gpus were given on the command line: those win
    # over the settings saved by API commands (control.json); the others do not.
    control_flags: frozenset[str] = frozenset()
    # A token-free Prometheus listener, only if asked for (127.0.0.1 unless told otherwise).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    manifest_path: Path | None = None  # the signed manifest file, served by the web leaderboard
    # Joining: verify each validator's chain from its first entry instead of adopting a signed
    # checkpoint and fetching only the entries after it.
    full_history: bool = False
    # Validator: append a checkpoint of its chain this often (seconds; 0: never).
    checkpoint_interval: float = 86400.0

    def __post_init__(self) -> None:
        from flopnet.node.worker.cheats import CHEATS

        if self.cheat is not None and self.cheat not in CHEATS:
            raise ConfigError(f"--cheat must be one of {', '.join(CHEATS)}")
        if self.backend not in ("auto", "hf", "vllm"):
            raise ConfigError(f"--backend must be auto, hf or vllm, not {self.backend!r}")
        if not 1 <= self.audit_batch <= 256:
            raise ConfigError("--audit-batch must be in 1..256")
        if not 1 <= self.batch_size <= 256:
            raise ConfigError("--batch-size must be in 1..256")
        if not 1 <= self.newcomer_leases <= 1024:
            raise ConfigError("newcomer_leases must be in 1..1024")
        if not 1 <= self.max_leases_per_worker <= 1024:
            raise ConfigError("--max-leases-per-worker must be in 1..1024")
        if not self.roles:
            raise ConfigError("a node needs at least one role")
        for role in self.roles:
            if role not in ROLES:
                raise ConfigError(f"unknown role {role!r}; choose from {', '.join(ROLES)}")
        if not 0 <= self.listen_port <= 65535 or not 0 <= self.api_port <= 65535:
            raise ConfigError("ports must be in 0..65535")
        if self.tasks < 1:
            raise ConfigError("--tasks must be at least 1")
        if not self.languages or any(lang not in LANGUAGES for lang in self.languages):
            raise ConfigError(f"--languages must name some of {', '.join(LANGUAGES)}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError("--metrics-port must be in 0..65535")
        if self.pause_schedule is not None:
            Schedule.parse(self.pause_schedule)  # a ConfigError that says what is wrong
        if self.gpus is not None:
            check_gpus(list(self.gpus), None)
        if not (0 <= self.checkpoint_interval <= 366 * 86400.0):
            raise ConfigError("--checkpoint-interval must be 0 (never) to 366 days in seconds")

    def control_settings(self, saved: Settings | None) -> Settings:
        """The worker's settings at start: those saved by API commands, except what the command
        line gave explicitly (``control_flags``); without a saved file, the command line's."""
        flags = Settings(
            batch_size=self.batch_size,
            schedule=Schedule.parse(self.pause_schedule) if self.pause_schedule else None,
            gpus=self.gpus,
        )
        if saved is None:
            return flags
        return Settings(
            mode=saved.mode,
            schedule=flags.schedule if "pause_schedule" in self.control_flags else saved.schedule,
            batch_size=flags.batch_size if "batch_size" in self.control_flags else saved.batch_size,
            gpus=flags.gpus if "gpus" in self.control_flags else saved.gpus,
        )

    @property
    def model_seed(self) -> int:
        """The seed of the weights this node runs (the network's unless overridden)."""
        if self.model_seed_override is not None:
            return self.model_seed_override
        return self.network.model_seed
