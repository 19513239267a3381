"""Model specs and construction: seeded random-weight models for anywhere, real HF models for GPUs.

A seeded model's weights are a pure function of (config, seed): every parameter is overwritten from
a generator keyed by (seed, parameter name), with arithmetic that is bit-exact on any CPU, so a
worker and a validator on different machines hold identical weights (checked via
:func:`weights_sha256`) without downloading anything.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flopnet.node.model.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer
from flopnet.protocol.errors import ConfigError

_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float32": torch.float32}
_FAMILIES = ("llama", "qwen2", "deepseek_v3")
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

# DeepSeek-V3/R1's architecture at toy sizes: multi-head latent attention with q and kv low-rank
# projections, the first layer(s) dense, then MoE layers of routed experts (sigmoid scores,
# group-limited top-k: the top ``topk_group`` of ``n_group`` groups, then top-k experts within
# them, normalised and scaled by ``routed_scaling_factor``) plus a shared expert. R1 itself:
# 256 routed experts in 8 groups, top-4 groups, 8 experts a token, 1 shared, 3 dense layers.
DEEPSEEK_V3_TINY_CONFIG: dict[str, Any] = {
    "vocab_size": _BYTE_VOCAB,
    "hidden_size": 256,
    "intermediate_size": 768,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 4,
    "first_k_dense_replace": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 96,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "n_routed_experts": 16,
    "n_shared_experts": 1,
    "num_experts_per_tok": 4,
    "n_group": 4,
    "topk_group": 2,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "rope_parameters": _ROPE,
    "tie_word_embeddings": False,
}
# ~97M parameters (~25M active a token).
DEEPSEEK_V3_SMALL_CONFIG: dict[str, Any] = {
    **DEEPSEEK_V3_TINY_CONFIG,
    "hidden_size": 640,
    "intermediate_size": 1792,
    "moe_intermediate_size": 192,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "q_lora_rank": 320,
    "kv_lora_rank": 128,
    "qk_nope_head_dim": 64,
    "qk_rope_head_dim": 32,
    "v_head_dim": 64,
    "n_routed_experts": 32,
    "n_group": 8,
    "topk_group": 4,
}

# R1's architecture at the size of DeepSeek-V2-Lite (~16B stored, ~2.5B active a token), for GPU
# runs: 64 routed experts in 8 groups (top-4 groups, 6 experts a token), 2 shared, MLA with q and
# kv low-rank projections, the first layer dense.
DEEPSEEK_V3_16B_SHAPE = _real_shape(
    DEEPSEEK_V3_TINY_CONFIG,
    hidden_size=2048,
    intermediate_size=10944,
    moe_intermediate_size=1408,
    num_hidden_layers=27,
    num_attention_heads=16,
    num_key_value_heads=16,
    q_lora_rank=768,
    kv_lora_rank=512,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
    n_routed_experts=64,
    n_shared_experts=2,
    num_experts_per_tok=6,
    n_group=8,
    topk_group=4,
)

_NAMED: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("llama", TINY_CONFIG),
    "small": ("qwen2", SMALL_CONFIG),
    "deepseek-v3-tiny": ("deepseek_v3", DEEPSEEK_V3_TINY_CONFIG),
    "deepseek-v3-small": ("deepseek_v3", DEEPSEEK_V3_SMALL_CONFIG),
    "qwen2.5-1.5b-shape": ("qwen2", QWEN25_1_5B_SHAPE),
    "qwen2.5-7b-shape": ("qwen2", QWEN25_7B_SHAPE),
    "llama3-8b-shape": ("llama", LLAMA3_8B_SHAPE),
    "deepseek-v3-16b-shape": ("deepseek_v3", DEEPSEEK_V3_16B_SHAPE),
}


def seeded_config(name: str) -> dict[str, Any]:
    """The Hugging Face config (as a dict, with ``model_type``) of a named seeded model."""
    try:
        family, config = _NAMED[name]
    except KeyError:
        raise ConfigError(f"unknown seeded model {name!r}; known: {sorted(_NAMED)}") from None
    return {**config, "model_type": family}


SEEDED_MODELS = frozenset(_NAMED)


def seeded_spec(name: str, *, seed: int = 0, dtype: str = "bfloat16") -> ModelSpec:
    """A named seeded random-weight model (``tiny``, ``small``, ``deepseek-v3-tiny``, ...)."""
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
        for name, buffer in model.named_buffers():
            # DeepSeek's router bias (load balancing, learnt outside the gradient): none here.
            if name.endswith("e_score_correction_bias"):
                buffer.zero_()
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


_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM"),
}
# How a MoE model runs its experts (transformers' choices on CPU): a local choice like the
# attention kernel, and like it one the proof check must tolerate.
EXPERTS_IMPLEMENTATIONS = ("eager", "grouped_mm", "batched_mm")


def _build_seeded(
    spec: ModelSpec, attn_implementation: str = "sdpa", experts_implementation: str | None = None
) -> nn.Module:
    import transformers

    cfg = dict(spec.config)
    cfg["tie_word_embeddings"] = False
    config_cls, model_cls = _CLASSES[spec.family]
    config: Any
    model: Any  # HF's typed .to() confuses mypy
    try:
        config = getattr(transformers, config_cls)(**cfg)
        config._attn_implementation = attn_implementation
        if experts_implementation is not None:
            config._experts_implementation = experts_implementation
        model = getattr(transformers, model_cls)(config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid config for seeded model {spec.name!r}: {exc}") from exc
    # Build in float32, overwrite, then cast: the cast is exactly rounded, so bf16 weights are the
    # rounding of the same float32 values everywhere.
    model = model.to(torch.float32)
    _overwrite_seeded(model, spec.seed)
    # A MoE router stays in float32, as transformers keeps it when it loads a DeepSeek
    # checkpoint (``_keep_in_fp32_modules_strict``): routing is a discrete choice, decided there.
    routers = {n: p.detach().clone() for n, p in model.named_parameters() if _is_router(n)}
    out: nn.Module = model.to(spec.torch_dtype)
    for name, param in out.named_parameters():
        if name in routers:
            param.data = routers[name]
    return out


def _is_router(name: str) -> bool:
    return name.endswith("mlp.gate.weight")


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
    spec: ModelSpec,
    *,
    attn_implementation: str | None = None,
    experts_implementation: str | None = None,
) -> tuple[nn.Module, Tokenizer]:
    """The model (eval mode, no grads, in ``spec.dtype``) and its tokenizer.

    ``attn_implementation`` ("sdpa" or "eager") and, for MoE models, ``experts_implementation``
    (one of :data:`EXPERTS_IMPLEMENTATIONS`) are local choices, not part of the network's model:
    each must produce states that pass the proof check. ``None`` means "sdpa" for seeded models
    and the library's default otherwise.
    """
    _check_attn(attn_implementation)
    if experts_implementation not in (None, *EXPERTS_IMPLEMENTATIONS):
        raise ConfigError(
            f"experts_implementation must be one of {EXPERTS_IMPLEMENTATIONS}, "
            f"got {experts_implementation!r}"
        )
    tokenizer: Tokenizer
    if spec.seeded:
        tokenizer = ByteTokenizer()
        vocab = int(spec.config.get("vocab_size", 0))
        if vocab != tokenizer.vocab_size:
            # The sampler draws over the model's vocabulary: every id must be decodable.
            raise ConfigError(
                f"seeded model vocab_size {vocab} != byte tokenizer's {tokenizer.vocab_size}"
            )
        model = _build_seeded(spec, attn_implementation or "sdpa", experts_implementation)
    else:
        assert spec.hf_id is not None
        tokenizer = HFTokenizer(
            spec.hf_id, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
        model = _build_hf(spec, attn_implementation)
        if experts_implementation is not None:
            setter = getattr(model, "set_experts_implementation", None)
            if setter is not None:
                setter(experts_implementation)
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


def resolve_spec(
    name: str,
    *,
    seed: int,
    dtype: str,
    revision: str = "",
    progress: Callable[[str], None] | None = None,
) -> ModelSpec:
    """The spec of a network's model by its manifest name: a seeded model, a trained model
    shipped in a package (converted once into the local cache, see :mod:`.trained`), or a
    Hugging Face id (at the manifest's revision)."""
    from flopnet.node.model import trained

    if name in SEEDED_MODELS:
        return seeded_spec(name, seed=seed, dtype=dtype)
    if name in trained.TRAINED_MODELS:
        path = trained.ensure_converted(name, dtype, progress=progress)
        return ModelSpec(name=name, family="hf", hf_id=str(path), dtype=dtype)
    return hf_spec(name, revision=revision or None, dtype=dtype)


def model_weights_sha256(name: str, *, seed: int, dtype: str, revision: str = "") -> str:
    """Build (or load) a network's model and hash its weights, for pinning in a manifest."""
    model, _tokenizer = build_model(resolve_spec(name, seed=seed, dtype=dtype, revision=revision))
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
