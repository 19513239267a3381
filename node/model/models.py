"""Model specs and construction: seeded random-weight models for anywhere, real HF models for GPUs.

A seeded model's weights are a pure function of (config, seed): every parameter is overwritten from
a generator keyed by (seed, parameter name), with arithmetic that is bit-exact on any CPU, so a
worker and a validator on different machines hold identical weights (checked via
:func:`weights_sha256`) without downloading anything.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flopnet.node.model.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer
from flopnet.protocol.errors import ConfigError

_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float32": torch.float32}
_FAMILIES = ("llama", "qwen2")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
_INIT_STD = 0.02
_WEIGHT_DOMAIN = b"flopnet/seeded-weights/v1"

_BYTE_VOCAB = ByteTokenizer().vocab_size


@dataclass(frozen=True)
class ModelSpec:
    """What model a network runs: a seeded random-weight config, or a Hugging Face id + revision."""

    name: str
    family: str = "llama"
    config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    seed: int = 0
    dtype: str = "bfloat16"
    hf_id: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.hf_id is None:
            if self.family not in _FAMILIES:
                raise ConfigError(f"family must be one of {_FAMILIES}, got {self.family!r}")
            if not self.config:
                raise ConfigError(f"seeded model {self.name!r} needs a config")
        elif not self.hf_id:
            raise ConfigError("hf_id is empty")

    @property
    def seeded(self) -> bool:
        return self.hf_id is None

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


_ROPE = {"rope_type": "default", "rope_theta": 10000.0}

# ~6.5M parameters (6.3M without embeddings): small enough for tests and CPU devnets.
TINY_CONFIG: dict[str, Any] = {
    "vocab_size": _BYTE_VOCAB,
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": _ROPE,
    "tie_word_embeddings": False,
}

# ~97M parameters, Qwen2-shaped (q/k/v biases).
SMALL_CONFIG: dict[str, Any] = {
    "vocab_size": _BYTE_VOCAB,
    "hidden_size": 768,
    "intermediate_size": 2816,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "rope_parameters": _ROPE,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
}


def _real_shape(base: dict[str, Any], **shape: Any) -> dict[str, Any]:
    """A real model's body (layers, widths, heads) with the byte vocabulary: every sampled id
    stays decodable, and the embedding and LM head are tiny instead of ~0.5-1B parameters."""
    return {**base, **shape, "max_position_embeddings": 32768}


# Bodies of real models, for GPU runs (building one takes minutes and its full size in RAM).
QWEN25_1_5B_SHAPE = _real_shape(
    SMALL_CONFIG,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
)
QWEN25_7B_SHAPE = _real_shape(
    SMALL_CONFIG,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
)
LLAMA3_8B_SHAPE = _real_shape(
    TINY_CONFIG,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
)

_NAMED: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("llama", TINY_CONFIG),
    "small": ("qwen2", SMALL_CONFIG),
    "qwen2.5-1.5b-shape": ("qwen2", QWEN25_1_5B_SHAPE),
    "qwen2.5-7b-shape": ("qwen2", QWEN25_7B_SHAPE),
    "llama3-8b-shape": ("llama", LLAMA3_8B_SHAPE),
}


def seeded_config(name: str) -> dict[str, Any]:
    """The Hugging Face config (as a dict, with ``model_type``) of a named seeded model."""
    try:
        family, config = _NAMED[name]
    except KeyError:
        raise ConfigError(f"unknown seeded model {name!r}; known: {sorted(_NAMED)}") from None
    return {**config, "model_type": family}


def seeded_spec(name: str, *, seed: int = 0, dtype: str = "bfloat16") -> ModelSpec:
    """The named seeded random-weight model (``tiny`` or ``small``)."""
    try:
        family, config = _NAMED[name]
    except KeyError:
        raise ConfigError(f"unknown seeded model {name!r}; known: {sorted(_NAMED)}") from None
    return ModelSpec(name=name, family=family, config=dict(config), seed=seed, dtype=dtype)


def hf_spec(hf_id: str, *, revision: str | None = None, dtype: str = "bfloat16") -> ModelSpec:
    """A real model from the Hugging Face Hub (or a local path)."""
    return ModelSpec(name=hf_id, family="hf", hf_id=hf_id, revision=revision, dtype=dtype)


def _param_generator(seed: int, name: str) -> torch.Generator:
    try:
        seed_bytes = int(seed).to_bytes(32, "big", signed=True)
    except OverflowError:
        raise ConfigError("model seed does not fit in 256 bits") from None
    digest = hashlib.sha256(_WEIGHT_DOMAIN + seed_bytes + name.encode("utf-8")).digest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest[:8], "big"))
    return gen


def _seeded_values(shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """Zero-mean values with std 0.02, bit-identical on every machine.

    torch's ``normal_`` has an AVX2 path that can differ in the last bit from the scalar one, so
    instead: a sum of four float64 uniforms (Irwin-Hall, close to normal) -- only exactly rounded
    adds and multiplies -- rounded once to float32.
    """
    u = torch.rand((4, *shape), dtype=torch.float64, generator=gen)
    s = ((u[0] + u[1]) + (u[2] + u[3])) - 2.0
    return (s * (_INIT_STD * math.sqrt(3.0))).to(torch.float32)


def _overwrite_seeded(model: nn.Module, seed: int) -> None:
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                param.zero_()
            elif param.dim() == 1:
                # 1-D weights in these families are RMSNorm scales.
                param.fill_(1.0)
            else:
                param.copy_(_seeded_values(param.shape, _param_generator(seed, name)))


def _check_attn(attn_implementation: str | None) -> None:
    if attn_implementation is not None and attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, "
            f"got {attn_implementation!r}"
        )


def _build_seeded(spec: ModelSpec, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cfg = dict(spec.config)
    cfg["tie_word_embeddings"] = False
    config: Any
    model: Any  # HF's typed .to() confuses mypy
    try:
        if spec.family == "llama":
            config = LlamaConfig(**cfg)
            config._attn_implementation = attn_implementation
            model = LlamaForCausalLM(config)
        else:
            config = Qwen2Config(**cfg)
            config._attn_implementation = attn_implementation
            model = Qwen2ForCausalLM(config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid config for seeded model {spec.name!r}: {exc}") from exc
    # Build in float32, overwrite, then cast: the cast is exactly rounded, so bf16 weights are the
    # rounding of the same float32 values everywhere.
    model = model.to(torch.float32)
    _overwrite_seeded(model, spec.seed)
    out: nn.Module = model.to(spec.torch_dtype)
    return out


def _build_hf(spec: ModelSpec, attn_implementation: str | None = None) -> nn.Module:
    from transformers import AutoModelForCausalLM

    if not spec.hf_id:
        raise ConfigError("hf_id is empty")
    # Only passed when asked for, so the library keeps choosing by default.
    extra: dict[str, Any] = {}
    if attn_implementation is not None:
        extra["attn_implementation"] = attn_implementation
    try:
        model: nn.Module = AutoModelForCausalLM.from_pretrained(
            spec.hf_id,
            revision=spec.revision,
            dtype=spec.torch_dtype,
            trust_remote_code=spec.trust_remote_code,
            **extra,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load model {spec.hf_id!r}: {exc}") from exc
    return model


def build_model(
    spec: ModelSpec, *, attn_implementation: str | None = None
) -> tuple[nn.Module, Tokenizer]:
    """The model (eval mode, no grads, in ``spec.dtype``) and its tokenizer.

    ``attn_implementation`` ("sdpa" or "eager") is a local choice, not part of the network's
    model: both must produce states that pass the proof check. ``None`` means "sdpa" for seeded
    models and the library's default for Hugging Face ones.
    """
    _check_attn(attn_implementation)
    tokenizer: Tokenizer
    if spec.seeded:
        tokenizer = ByteTokenizer()
        vocab = int(spec.config.get("vocab_size", 0))
        if vocab != tokenizer.vocab_size:
            # The sampler draws over the model's vocabulary: every id must be decodable.
            raise ConfigError(
                f"seeded model vocab_size {vocab} != byte tokenizer's {tokenizer.vocab_size}"
            )
        model = _build_seeded(spec, attn_implementation or "sdpa")
    else:
        assert spec.hf_id is not None
        tokenizer = HFTokenizer(
            spec.hf_id, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
        model = _build_hf(spec, attn_implementation)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over parameters in sorted-name order: name, dtype, shape and raw bytes of each."""
    h = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        t = param.detach().to("cpu").contiguous()
        header = f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode()
        h.update(len(header).to_bytes(4, "big"))
        h.update(header)
        # uint8 view: raw bytes for every dtype (numpy has no bfloat16).
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_weights_sha256(name: str, *, seed: int, dtype: str, revision: str = "") -> str:
    """Build (or load) a network's model and hash its weights, for pinning in a manifest."""
    from flopnet.node.model.tokenizer import EMBEDDED_MODELS

    if name in EMBEDDED_MODELS:
        spec = seeded_spec(name, seed=seed, dtype=dtype)
    else:
        spec = hf_spec(name, revision=revision or None, dtype=dtype)
    model, _tokenizer = build_model(spec)
    return weights_sha256(model)


def param_count(model: nn.Module, include_embeddings: bool) -> int:
    """Number of parameters; without embeddings excludes the input embedding and the LM head."""
    excluded: set[int] = set()
    if not include_embeddings:
        for getter in ("get_input_embeddings", "get_output_embeddings"):
            module = getattr(model, getter, lambda: None)()
            if module is not None:
                excluded.update(id(p) for p in module.parameters())
    # parameters() already yields a tied tensor once.
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)
