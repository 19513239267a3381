"""What this machine can run: detect GPUs, memory and driver; choose a backend, tensor-parallel
size and batch size; say clearly when a model will not fit.

Detection (:func:`detect`) is the only I/O; the plan (:func:`plan_for`) is a pure function of the
detected hardware and the model's Hugging Face config, so every rule is tested without a GPU.
Memory is estimated from the config alone: stored parameters (all experts of a MoE model) times
the bytes of the dtype, plus the KV cache of ``max_seq_tokens`` per sequence (MLA models cache
the compressed latent, as vLLM does).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from flopnet.protocol.errors import ConfigError

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1}
# Kept free on a GPU for activations, CUDA graphs and the allocator's slack.
GPU_RESERVE_FRACTION = 0.10
# Of the machine's RAM, what a CPU run may plan to use (the OS and the daemon need the rest).
CPU_USABLE_FRACTION = 0.75
MAX_GPU_BATCH = 64
MAX_CPU_BATCH = 8


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class Hardware:
    """What :func:`detect` found."""

    cpu_cores: int
    ram_bytes: int
    gpus: tuple[Gpu, ...] = ()
    driver: str = ""  # NVIDIA driver version, when nvidia-smi answers
    cuda: str = ""  # the CUDA version torch was built with
    vllm: bool = False  # vLLM importable


@dataclass(frozen=True)
class Plan:
    """How to run one model here."""

    backend: str  # "vllm" or "hf"
    device: str  # "cuda" or "cpu"
    tensor_parallel: int
    batch_size: int
    weights_bytes: int
    kv_bytes_per_token: int
    budget_bytes: int  # memory the plan may use, over all devices it uses
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Model memory from its config


def _int(c: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = c.get(key, default)
    if value is None:
        raise ConfigError(f"the model config lacks {key!r}")
    return int(value)


def stored_params(config: Mapping[str, Any]) -> int:
    """Parameters held in memory (every expert of a MoE model), from a HF config dict."""
    c = config
    hidden, layers, vocab = (
        _int(c, "hidden_size"),
        _int(c, "num_hidden_layers"),
        _int(c, "vocab_size"),
    )
    heads = _int(c, "num_attention_heads")
    embed = vocab * hidden * (1 if c.get("tie_word_embeddings") else 2)
    if c.get("model_type") in ("deepseek_v2", "deepseek_v3"):
        nope, rope, v_dim = (
            _int(c, k) for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        )
        kv_rank, q_rank = _int(c, "kv_lora_rank"), c.get("q_lora_rank")
        q_proj = (
            hidden * int(q_rank) + int(q_rank) * heads * (nope + rope)
            if q_rank
            else hidden * heads * (nope + rope)
        )
        attn = q_proj + hidden * (kv_rank + rope) + kv_rank * heads * (nope + v_dim)
        attn += heads * v_dim * hidden
        dense = 3 * hidden * _int(c, "intermediate_size")
        experts = _int(c, "n_routed_experts") + _int(c, "n_shared_experts", 0)
        moe = hidden * _int(c, "n_routed_experts") + experts * 3 * hidden * _int(
            c, "moe_intermediate_size"
        )
        first_dense, freq = _int(c, "first_k_dense_replace", 0), _int(c, "moe_layer_freq", 1)
        body = sum(
            attn + (moe if layer >= first_dense and layer % freq == 0 else dense)
            for layer in range(layers)
        )
        return embed + body
    kv_heads = _int(c, "num_key_value_heads", heads)
    head_dim = _int(c, "head_dim", hidden // heads)
    attn = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * _int(c, "intermediate_size")
    return embed + layers * (attn + mlp)


def kv_bytes_per_token(config: Mapping[str, Any], dtype: str) -> int:
    """KV-cache bytes one token of one sequence takes."""
    c, width = config, _dtype_bytes(dtype)
    layers = _int(c, "num_hidden_layers")
    if c.get("model_type") in ("deepseek_v2", "deepseek_v3"):
        return layers * (_int(c, "kv_lora_rank") + _int(c, "qk_rope_head_dim")) * width
    heads = _int(c, "num_attention_heads")
    kv_heads = _int(c, "num_key_value_heads", heads)
    head_dim = _int(c, "head_dim", _int(c, "hidden_size") // heads)
    return 2 * layers * kv_heads * head_dim * width


def _dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}") from None


# ---------------------------------------------------------------------------------------------
# The plan (pure)


def plan_for(
    hardware: Hardware,
    config: Mapping[str, Any],
    dtype: str,
    max_seq_tokens: int,
    *,
    model_name: str = "the model",
    backend: str | None = None,
) -> Plan:
    """Backend, tensor-parallel size and batch size for ``config`` on ``hardware``.

    Raises ConfigError with the numbers when the weights, or one sequence of
    ``max_seq_tokens``, do not fit.
    """
    if max_seq_tokens < 1:
        raise ConfigError("max_seq_tokens must be at least 1")
    weights = stored_params(config) * _dtype_bytes(dtype)
    kv_token = kv_bytes_per_token(config, dtype)
    sequence = kv_token * max_seq_tokens
    if backend not in (None, "hf", "vllm"):
        raise ConfigError(f"unknown backend {backend!r}; choose hf or vllm")
    if hardware.gpus:
        per_gpu = min(g.memory_bytes for g in hardware.gpus)
        usable = int(per_gpu * (1 - GPU_RESERVE_FRACTION))
        chosen = backend or ("vllm" if hardware.vllm else "hf")
        if chosen == "vllm" and not hardware.vllm:
            raise ConfigError("the vLLM backend was asked for but vllm is not installed")
        tp = 1
        # Tensor parallelism splits the weights (and the KV heads) over GPUs: powers of two.
        while weights / tp + sequence / tp > usable and tp * 2 <= len(hardware.gpus):
            tp *= 2
        if chosen == "hf" and tp > 1:
            raise ConfigError(
                f"{model_name} needs {weights / GIB:.1f} GiB of weights in {dtype}, more than one "
                f"GPU's {usable / GIB:.1f} GiB usable; the HF backend runs on one GPU: use the "
                "vLLM backend (pip install 'flopnet[gpu]') for tensor parallelism"
            )
        budget = usable * tp
        device = "cuda"
        cap = MAX_GPU_BATCH
        where = f"{tp} x {hardware.gpus[0].name} ({per_gpu / GIB:.0f} GiB each)"
    else:
        chosen = backend or "hf"
        if chosen == "vllm" and not hardware.vllm:
            raise ConfigError("the vLLM backend was asked for but vllm is not installed")
        tp, device = 1, "cpu"
        budget = int(hardware.ram_bytes * CPU_USABLE_FRACTION)
        cap = max(1, min(MAX_CPU_BATCH, hardware.cpu_cores))
        where = f"CPU with {hardware.ram_bytes / GIB:.0f} GiB RAM (no GPU found)"
    if weights > budget:
        raise ConfigError(
            f"{model_name} will not fit: its weights alone take {weights / GIB:.1f} GiB in "
            f"{dtype}, and {where} leaves {budget / GIB:.1f} GiB for them. Use a smaller or "
            "quantized model, a lower-precision dtype, or a machine with more memory."
        )
    room = budget - weights
    batch = min(cap, room // sequence) if sequence else cap
    if batch < 1:
        raise ConfigError(
            f"{model_name} fits ({weights / GIB:.1f} GiB of weights) but not one sequence of "
            f"{max_seq_tokens} tokens beside it ({sequence / GIB:.2f} GiB of KV cache, "
            f"{room / GIB:.2f} GiB left on {where}): lower max_new_tokens or add memory."
        )
    notes = [f"{where}; {room / GIB:.1f} GiB for the KV cache ({kv_token} bytes a token)"]
    if device == "cpu":
        notes.append("CPU inference: expect a few tokens/s on real models; fine for tiny/small")
    return Plan(chosen, device, tp, int(batch), weights, kv_token, budget, tuple(notes))


# ---------------------------------------------------------------------------------------------
# Detection (I/O)


def _nvidia_driver() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ""
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def detect() -> Hardware:
    """This machine's CPUs, RAM, CUDA GPUs (through torch), NVIDIA driver and vLLM."""
    import torch

    gpus: tuple[Gpu, ...] = ()
    if torch.cuda.is_available():
        gpus = tuple(
            Gpu(
                torch.cuda.get_device_name(i),
                int(torch.cuda.get_device_properties(i).total_memory),
            )
            for i in range(torch.cuda.device_count())
        )
    return Hardware(
        cpu_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1,
        ram_bytes=_ram_bytes(),
        gpus=gpus,
        driver=_nvidia_driver() if gpus else "",
        cuda=str(torch.version.cuda or ""),
        vllm=importlib.util.find_spec("vllm") is not None,
    )


def model_config(model: str, revision: str = "") -> dict[str, Any]:
    """A model's HF config as a dict: named seeded and trained models locally, others from the
    Hub's ``config.json`` (no weights are downloaded)."""
    from flopnet.node.model.models import seeded_config
    from flopnet.node.model.tokenizer import EMBEDDED_MODELS
    from flopnet.node.model.trained import TRAINED_MODELS

    if model in EMBEDDED_MODELS:
        return seeded_config(model)
    if model in TRAINED_MODELS:
        return dict(TRAINED_MODELS[model].config)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, revision=revision or None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the config of {model!r}: {exc}") from exc
    return dict(config.to_dict())
