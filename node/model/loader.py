"""Load a network's model on the chosen backend, and the facts a node reports about it.

Runs in the model child process (it imports torch, and vLLM when chosen). The backend is the
node's choice (``hf``, ``vllm``, or ``auto``: the hardware plan's); the model, its seed and dtype
are the network's.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from flopnet.protocol.errors import ConfigError

BACKENDS = ("auto", "hf", "vllm")


def _stderr(line: str) -> None:
    print(f"flopnet: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class LoadedModel:
    backend: Any  # HFBackend or VLLMBackend (node.inference.backend.InferenceBackend)
    backend_name: str
    weights_sha256: str  # "" when this backend cannot hash the weights it runs
    n_params: int
    n_params_no_embeddings: int
    config: dict[str, Any]


def load_model(
    model: str,
    *,
    seed: int,
    dtype: str,
    threads: int,
    backend: str,
    plan: dict[str, Any] | None,
    max_seq_tokens: int,
    revision: str = "",
) -> LoadedModel:
    """Build the backend for ``model``; ``plan`` (from node.inference.hardware) picks ``auto``."""
    from flopnet.node.model.models import param_count, resolve_spec, weights_sha256
    from flopnet.node.model.tokenizer import EMBEDDED_MODELS

    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    chosen = backend if backend != "auto" else (plan["backend"] if plan else "hf")
    seeded = model in EMBEDDED_MODELS
    # A trained model is converted here on a node's first run (the daemon logs that it will
    # be); the steps are printed on the model process's stderr. The revision is the manifest's
    # pin of a Hub model.
    spec = resolve_spec(model, seed=seed, dtype=dtype, revision=revision, progress=_stderr)
    if chosen == "hf":
        from flopnet.node.model.hf_backend import HFBackend

        device = plan["device"] if plan else "cpu"  # the plan's GPU, when it found one
        hf = HFBackend(spec, device=device, num_threads=threads or None)
        hf_config: Any = hf.model.config
        return LoadedModel(
            backend=hf,
            backend_name="hf",
            weights_sha256=weights_sha256(hf.model),
            n_params=param_count(hf.model, include_embeddings=True),
            n_params_no_embeddings=param_count(hf.model, include_embeddings=False),
            config=json.loads(hf_config.to_json_string(use_diff=False)),
        )
    from flopnet.node.model.hardware import model_config, stored_params
    from flopnet.node.model.models import model_weights_sha256
    from flopnet.node.model.trained import TRAINED_MODELS
    from flopnet.node.model.vllm_backend import VLLMBackend

    config = model_config(model, revision)
    vllm = VLLMBackend(
        spec,
        tensor_parallel_size=int(plan["tensor_parallel"]) if plan else 1,
        max_model_len=max(max_seq_tokens, 1024) if max_seq_tokens else 4096,
        num_threads=threads or None,
    )
    # A seeded model's weights are a function of the spec, a trained one's of its package file:
    # hash the same HF parameters the other backend hashes. A Hub checkpoint inside vLLM's
    # engine has other parameter names and layouts, so it is not hashed (a pinned manifest
    # then refuses this node, with the reason).
    pinned = (
        model_weights_sha256(model, seed=seed, dtype=dtype, revision=revision)
        if seeded or model in TRAINED_MODELS
        else ""
    )
    total = stored_params(config)
    head = int(config["vocab_size"]) * int(config["hidden_size"])
    embeddings = head if config.get("tie_word_embeddings") else 2 * head
    return LoadedModel(
        backend=vllm,
        backend_name="vllm",
        weights_sha256=pinned,
        n_params=total,
        n_params_no_embeddings=total - embeddings,
        config=config,
    )
