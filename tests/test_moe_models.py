"""R1's architecture at toy sizes: the seeded DeepSeek-V3 models through build, weights, FLOPs,
hardware planning, generation, proofs and routing."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from flopnet.ledger.flops import inference_flops, model_shape
from flopnet.node.model.hardware import Hardware, model_config, plan_for, stored_params
from flopnet.node.model.hf_backend import GenerationRequest, HFBackend
from flopnet.node.model.models import (
    SEEDED_MODELS,
    build_model,
    model_weights_sha256,
    seeded_config,
    seeded_spec,
    weights_sha256,
)
from flopnet.node.model.prompt import format_r1_prompt
from flopnet.node.model.routing import routers, routing_differences, trace_routing
from flopnet.node.model.tokenizer import EMBEDDED_MODELS
from flopnet.proof.policy import decide, recommended_policy
from flopnet.proof.sampling import SamplingParams, replay_sampling
from flopnet.proof.toploc import build_proofs, verify_proofs
from flopnet.protocol.errors import ConfigError

TINY = "deepseek-v3-tiny"
LEASE = SamplingParams(temperature=0.6, top_p=0.95)


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    return HFBackend(seeded_spec(TINY, seed=0), num_threads=2)


def prompt(backend: HFBackend, text: str = "What is 17 * 23?") -> list[int]:
    return backend.tokenizer.encode(format_r1_prompt(text), add_bos=True)


def test_the_seeded_names_agree_between_the_torch_free_list_and_the_builder() -> None:
    assert EMBEDDED_MODELS == SEEDED_MODELS


def test_tiny_has_r1s_architecture(backend: HFBackend) -> None:
    model: Any = backend.model
    cfg = model.config
    assert type(model).__name__ == "DeepseekV3ForCausalLM"
    assert (cfg.n_group, cfg.topk_group, cfg.num_experts_per_tok) == (4, 2, 4)
    assert cfg.q_lora_rank and cfg.kv_lora_rank and cfg.first_k_dense_replace == 1
    layers = model.model.layers
    assert not hasattr(layers[0].mlp, "experts")  # the first layer is dense
    for layer in layers[1:]:
        assert hasattr(layer.mlp, "experts") and hasattr(layer.mlp, "shared_experts")
        assert hasattr(layer.self_attn, "q_a_proj") and hasattr(
            layer.self_attn, "kv_a_proj_with_mqa"
        )
    assert len(routers(model)) == cfg.num_hidden_layers - 1
    # Routers stay in float32 (as transformers loads a DeepSeek checkpoint); the rest is bf16.
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if n.endswith("mlp.gate.weight")} == {torch.float32}
    assert {d for n, d in dtypes.items() if not n.endswith("mlp.gate.weight")} == {torch.bfloat16}
    assert 5_500_000 < sum(p.numel() for p in model.parameters()) < 7_000_000


def test_weights_are_a_function_of_the_seed(backend: HFBackend) -> None:
    pinned = weights_sha256(backend.model)
    assert model_weights_sha256(TINY, seed=0, dtype="bfloat16") == pinned
    other, _ = build_model(seeded_spec(TINY, seed=1))
    assert weights_sha256(other) != pinned
    with pytest.raises(ConfigError):
        build_model(seeded_spec(TINY), experts_implementation="fancy")


@pytest.mark.parametrize("name", ["deepseek-v3-tiny", "deepseek-v3-small"])
def test_memory_plan_counts_every_expert(name: str) -> None:
    config = model_config(name)
    model, _ = build_model(seeded_spec(name)) if name == TINY else (None, None)
    if model is not None:
        norms = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 1)
        assert stored_params(config) == sum(p.numel() for p in model.parameters()) - norms
    hardware = Hardware(cpu_cores=2, ram_bytes=24 * 1024**3)
    plan = plan_for(hardware, config, "bfloat16", 4096, model_name=name)
    assert plan.backend == "hf" and plan.device == "cpu"
    # MLA caches the compressed latent: (kv_lora_rank + rope dim) per layer, not heads x dims.
    assert (
        plan.kv_bytes_per_token
        == config["num_hidden_layers"] * (config["kv_lora_rank"] + config["qk_rope_head_dim"]) * 2
    )


def test_flop_credit_equals_the_matmuls_the_model_runs() -> None:
    """matmul-v1 on the tiny MoE (MLA, routed top-k + shared experts, a dense first layer)
    against torch's FLOP counter over a real forward pass: the body and head terms exactly; the
    eager attention computes the full square where the formula counts the causal half."""
    torch.manual_seed(0)
    model, _ = build_model(seeded_spec(TINY, dtype="float32"), attn_implementation="eager",
                           experts_implementation="eager")  # fmt: skip
    shape = model_shape(seeded_config(TINY))
    assert shape.family == "mla-moe"
    n = 40
    ids = torch.randint(0, 263, (1, n))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(input_ids=ids, use_cache=False)  # logits for all n positions
    counted = counter.get_total_flops()
    expected_square = (
        2 * shape.body_params * n + 2 * shape.head_params * n + 2 * shape.attention * n * n
    )
    assert counted == expected_square
    # The credited formula for the same positions: P = 1, G = n, so n positions processed.
    credited = inference_flops(seeded_config(TINY), 1, n)
    causal = shape.attention * n * (n + 1)
    assert credited == expected_square - 2 * shape.attention * n * n + causal


def test_honest_generation_passes_and_routing_mostly_agrees(backend: HFBackend) -> None:
    ids = prompt(backend)
    with trace_routing(backend.model) as decode:
        gen = backend.generate(ids, seed=5, params=LEASE, max_new_tokens=96)
    with trace_routing(backend.model) as prefill:
        pre = backend.prefill(ids, gen.token_ids)
    diff = routing_differences(decode, prefill, len(ids), len(gen.token_ids))
    assert diff.pairs == len(gen.token_ids) * len(routers(backend.model))
    assert diff.rate < 0.05  # bf16 noise flips a few routing choices, not many
    policy = recommended_policy(TINY, "bfloat16")
    checks = verify_proofs(pre.hidden, build_proofs(gen.hidden))
    replay = replay_sampling(pre.logits, gen.token_ids, 5, LEASE, tolerance=policy.replay_tolerance)
    assert decide(checks, replay, policy).passed


def test_batched_generation_and_padded_audit(backend: HFBackend) -> None:
    prompts = [prompt(backend, f"What is {i} + {i * 3}?") for i in range(3)]
    gens = backend.generate_batch(
        [GenerationRequest(p, 10 + i, LEASE, 64) for i, p in enumerate(prompts)]
    )
    pres = backend.prefill_batch([(p, g.token_ids) for p, g in zip(prompts, gens, strict=True)])
    policy = recommended_policy(TINY, "bfloat16")
    for i, (g, pre) in enumerate(zip(gens, pres, strict=True)):
        checks = verify_proofs(pre.hidden, build_proofs(g.hidden))
        replay = replay_sampling(
            pre.logits, g.token_ids, 10 + i, LEASE, tolerance=policy.replay_tolerance
        )
        assert decide(checks, replay, policy).passed, (i, checks)


def test_other_weights_fail(backend: HFBackend) -> None:
    ids = prompt(backend)
    other = HFBackend(seeded_spec(TINY, seed=1), num_threads=2)
    gen = other.generate(ids, seed=5, params=LEASE, max_new_tokens=64)
    pre = backend.prefill(ids, gen.token_ids)
    policy = recommended_policy(TINY, "bfloat16")
    checks = verify_proofs(pre.hidden, build_proofs(gen.hidden))
    replay = replay_sampling(pre.logits, gen.token_ids, 5, LEASE, tolerance=policy.replay_tolerance)
    assert not decide(checks, replay, policy).passed


def test_a_dense_model_has_no_routers() -> None:
    model, _ = build_model(seeded_spec("tiny"))
    assert routers(model) == []
    assert isinstance(model, nn.Module)
