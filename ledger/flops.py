"""FLOP formulas: how much computation a checked sample is credited with.

Every number is computed by the validator from the model and the token counts it checked itself,
never taken from the worker, with exact integers; the formula's version name travels with every
number (``CreditBody.flop_formula``) so credits from different formulas are never silently mixed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flopnet.protocol.errors import LedgerError

# The skeleton's approximation: 2 FLOPs per parameter per token processed (prompt and output).
# A per-architecture formula (attention term, MoE active parameters) replaces it in a later issue.
FLOP_FORMULA = "2NT-v0"


def _count(name: str, value: int) -> int:
    # bool is an int subclass; True tokens is a bug, not a count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise LedgerError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise LedgerError(f"{name} must be non-negative, got {value}")
    return value


def skeleton_flops(n_params: int, prompt_tokens: int, generated_tokens: int) -> int:
    """FLOPs by ``2NT-v0``: 2 × n_params × (prompt_tokens + generated_tokens), exactly."""
    n = _count("n_params", n_params)
    p = _count("prompt_tokens", prompt_tokens)
    g = _count("generated_tokens", generated_tokens)
    return 2 * n * (p + g)


FORMULAS: dict[str, Callable[[int, int, int], int]] = {FLOP_FORMULA: skeleton_flops}


def flops_for(formula: str, n_params: int, prompt_tokens: int, generated_tokens: int) -> int:
    """FLOPs by the named formula version (for re-checking a credit entry)."""
    fn = FORMULAS.get(formula)
    if fn is None:
        raise LedgerError(f"unknown FLOP formula {formula!r}; known: {sorted(FORMULAS)}")
    return fn(n_params, prompt_tokens, generated_tokens)


# -- the exact per-architecture formula ---------------------------------------------------------

# Matmul FLOPs from the model config: the body's matmul parameters on every processed position,
# the LM head only on positions that yield a token, both attention matmuls over the causal
# positions; embedding lookups, norms, activations and biases are not counted.
MATMUL_FORMULA = "matmul-v1"

# Each formula version in words, published with the leaderboard beside the numbers it gives.
FORMULA_TEXT = {
    FLOP_FORMULA: "2 x N x (P + G): two FLOPs per model parameter N for each of the P prompt and "
    "G generated tokens.",
    MATMUL_FORMULA: "2 x body x n + 2 x head x G + attention x n x (n + 1), n = P + G - 1 "
    "positions: the body's matmul parameters on every processed position, the LM head on each "
    "generated token, both attention matmuls over the causal positions (exact integers from the "
    "model config; embeddings, norms and activations are not counted).",
}


@dataclass(frozen=True)
class ModelShape:
    """Per-model coefficients of ``F = 2·body·n + 2·head·G + attention·n·(n+1)``."""

    family: str
    body_params: int  # matmul parameters used by every processed position
    head_params: int  # LM head: hidden × vocabulary
    attention: int  # Σ over layers of heads × (qk head dim + v head dim)


def _get(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = config.get(key, default)
    if value is None:
        raise LedgerError(f"model config lacks {key!r}")
    return value


def _as_dict(config: Any) -> Mapping[str, Any]:
    if isinstance(config, Mapping):
        return config
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    raise LedgerError(f"a model config must be a mapping or a PretrainedConfig, not {config!r}")


def _mla_shape(c: Mapping[str, Any]) -> ModelShape:
    """DeepSeek-V2/V3/R1: multi-head latent attention (non-absorbed shapes) and MoE layers."""
    hidden, layers = int(_get(c, "hidden_size")), int(_get(c, "num_hidden_layers"))
    heads = int(_get(c, "num_attention_heads"))
    nope, rope, v_dim = (
        int(_get(c, k)) for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
    )
    kv_rank = int(_get(c, "kv_lora_rank"))
    q_rank = c.get("q_lora_rank")
    qk_dim = nope + rope
    if q_rank:
        q_proj = hidden * int(q_rank) + int(q_rank) * heads * qk_dim
    else:
        q_proj = hidden * heads * qk_dim
    attn = (
        q_proj
        + hidden * (kv_rank + rope)
        + kv_rank * heads * (nope + v_dim)
        + heads * v_dim * hidden
    )
    dense_mlp = 3 * hidden * int(_get(c, "intermediate_size"))
    experts = int(_get(c, "num_experts_per_tok")) + int(c.get("n_shared_experts") or 0)
    moe_mlp = hidden * int(_get(c, "n_routed_experts")) + experts * 3 * hidden * int(
        _get(c, "moe_intermediate_size")
    )
    first_dense = int(c.get("first_k_dense_replace") or 0)
    freq = int(c.get("moe_layer_freq") or 1)
    body = 0
    for layer in range(layers):
        is_moe = layer >= first_dense and layer % freq == 0
        body += attn + (moe_mlp if is_moe else dense_mlp)
    head = hidden * int(_get(c, "vocab_size"))
    return ModelShape("mla-moe", body, head, layers * heads * (qk_dim + v_dim))


def _dense_shape(c: Mapping[str, Any]) -> ModelShape:
    """Llama, Qwen2, Mistral and alike: grouped-query attention and a gated MLP."""
    hidden, layers = int(_get(c, "hidden_size")), int(_get(c, "num_hidden_layers"))
    heads = int(_get(c, "num_attention_heads"))
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or hidden // heads)
    attn = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    mlp = 3 * hidden * int(_get(c, "intermediate_size"))
    head = hidden * int(_get(c, "vocab_size"))
    return ModelShape("dense", layers * (attn + mlp), head, layers * heads * 2 * head_dim)


_MLA_TYPES = {"deepseek_v2", "deepseek_v3"}
_DENSE_TYPES = {"llama", "qwen2", "qwen3", "mistral"}


def model_shape(config: Any) -> ModelShape:
    """The formula's coefficients for a Hugging Face config (a PretrainedConfig or its dict)."""
    c = _as_dict(config)
    model_type = str(c.get("model_type", ""))
    if model_type in _MLA_TYPES:
        return _mla_shape(c)
    if model_type in _DENSE_TYPES:
        return _dense_shape(c)
    raise LedgerError(f"no FLOP formula for model type {model_type!r}")


def inference_flops(config: Any, prompt_tokens: int, generated_tokens: int) -> int:
    """Exact matmul FLOPs (formula ``matmul-v1``) of generating G tokens after a P-token prompt.

    n = P + G − 1 positions are processed (the last token is sampled, never fed back):
    F = 2·body·n + 2·head·G + attention·n·(n+1), the last term summing QKᵀ and AV over every
    causal position (2·d·i FLOPs per head and matmul at position i).
    """
    return shape_flops(model_shape(config), prompt_tokens, generated_tokens)


def shape_flops(shape: ModelShape, prompt_tokens: int, generated_tokens: int) -> int:
    """:func:`inference_flops` from a shape computed once (a caller crediting many samples of
    one model, such as the simulation, need not re-read the config per sample)."""
    p = _count("prompt_tokens", prompt_tokens)
    g = _count("generated_tokens", generated_tokens)
    n = max(0, p + g - 1)
    return 2 * shape.body_params * n + 2 * shape.head_params * g + shape.attention * n * (n + 1)
