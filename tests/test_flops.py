"""The exact FLOP formula (matmul-v1) against DeepSeek-R1's polynomial and real modules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    DeepseekV3Config,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from flopnet.ledger.flops import inference_flops, model_shape
from flopnet.protocol.errors import LedgerError

R1 = DeepseekV3Config()


@given(st.integers(0, 40_000), st.integers(1, 40_000))
@settings(max_examples=200, deadline=None)
def test_deepseek_r1_matches_the_published_polynomial(prompt: int, generated: int) -> None:
    n = prompt + generated - 1
    expected = 71_395_835_904 * n + 1_853_358_080 * generated + 2_498_560 * n * (n + 1)
    assert inference_flops(R1, prompt, generated) == expected
    assert inference_flops(R1.to_dict(), prompt, generated) == expected  # a dict works too


def _linear_params(model: torch.nn.Module) -> tuple[int, int]:
    body = head = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if name == "lm_head":
                head += module.weight.numel()
            else:
                body += module.weight.numel()
    return body, head


@pytest.mark.parametrize(
    "config, cls",
    [
        (
            LlamaConfig(
                vocab_size=263,
                hidden_size=64,
                intermediate_size=176,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
            ),
            LlamaForCausalLM,
        ),
        (
            Qwen2Config(
                vocab_size=300,
                hidden_size=96,
                intermediate_size=256,
                num_hidden_layers=2,
                num_attention_heads=6,
                num_key_value_heads=2,
            ),
            Qwen2ForCausalLM,
        ),
    ],
)
def test_dense_formula_counts_every_linear_layer(config: object, cls: type) -> None:
    with torch.device("meta"):
        model = cls(config)
    body, head = _linear_params(model)
    shape = model_shape(config)
    assert (shape.body_params, shape.head_params) == (body, head)
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads  # type: ignore[attr-defined]
    assert shape.attention == config.num_hidden_layers * heads * 2 * head_dim  # type: ignore[attr-defined]


@given(st.integers(0, 5000), st.integers(1, 5000), st.integers(1, 50))
@settings(max_examples=100, deadline=None)
def test_monotone_in_tokens(prompt: int, generated: int, more: int) -> None:
    base = inference_flops(R1, prompt, generated)
    assert inference_flops(R1, prompt + more, generated) > base
    assert inference_flops(R1, prompt, generated + more) > base


def test_bad_inputs() -> None:
    with pytest.raises(LedgerError, match="no FLOP formula"):
        inference_flops({"model_type": "gpt2"}, 1, 1)
    with pytest.raises(LedgerError, match="lacks"):
        inference_flops({"model_type": "llama"}, 1, 1)
    with pytest.raises(LedgerError, match="non-negative"):
        inference_flops(R1, -1, 1)
    assert inference_flops(R1, 0, 0) == 0
