"""Hardware detection and the run plan: memory from configs, backend, TP and batch, refusals."""

from __future__ import annotations

import json

import pytest
import trio
from transformers import DeepseekV3Config, LlamaConfig, Qwen2Config

from flopnet.node.cli.main import main as flopnet_main
from flopnet.node.model.calls import ModelError
from flopnet.node.model.hardware import (
    GIB,
    Gpu,
    Hardware,
    detect,
    kv_bytes_per_token,
    plan_for,
    stored_params,
)
from flopnet.node.model.models import build_model, seeded_config, seeded_spec
from flopnet.node.model.service import ModelService
from flopnet.protocol.errors import ConfigError

H200 = Gpu("NVIDIA H200", 141 * GIB)
EIGHT_H200 = Hardware(cpu_cores=192, ram_bytes=2048 * GIB, gpus=(H200,) * 8, vllm=True)
ONE_H200 = Hardware(cpu_cores=16, ram_bytes=128 * GIB, gpus=(H200,), vllm=False)
LAPTOP = Hardware(cpu_cores=2, ram_bytes=24 * GIB)

R1 = DeepseekV3Config().to_dict()
QWEN_7B = Qwen2Config(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    tie_word_embeddings=False,
).to_dict()
LLAMA3_8B = LlamaConfig(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
).to_dict()


def test_stored_parameters_match_published_sizes_and_real_modules() -> None:
    assert stored_params(R1) == pytest.approx(671e9, rel=0.01)  # DeepSeek-V3/R1: 671B
    assert stored_params(QWEN_7B) == pytest.approx(7.62e9, rel=0.01)  # Qwen2.5-7B
    assert stored_params(LLAMA3_8B) == pytest.approx(8.03e9, rel=0.01)  # Llama-3-8B
    model, _ = build_model(seeded_spec("tiny"))
    matrices = sum(p.numel() for p in model.parameters() if p.dim() == 2)  # norms aside
    assert stored_params(seeded_config("tiny")) == matrices
    # The real-shaped seeded bodies: Qwen2.5-7B less its 152k-token embedding and head.
    body = stored_params(seeded_config("qwen2.5-7b-shape"))
    assert body == pytest.approx(7.62e9 - 2 * 152064 * 3584, rel=0.01)


def test_kv_cache_per_token() -> None:
    assert kv_bytes_per_token(LLAMA3_8B, "bfloat16") == 2 * 32 * 8 * 128 * 2
    assert kv_bytes_per_token(R1, "bfloat16") == 61 * (512 + 64) * 2  # MLA caches the latent


def test_r1_needs_eight_h200s_in_fp8_and_does_not_fit_in_bf16() -> None:
    plan = plan_for(EIGHT_H200, R1, "fp8", 32768, model_name="DeepSeek-R1")
    assert (plan.backend, plan.device, plan.tensor_parallel) == ("vllm", "cuda", 8)
    assert plan.batch_size >= 1
    with pytest.raises(ConfigError, match=r"DeepSeek-R1 will not fit: .* 1249\.9 GiB in bfloat16"):
        plan_for(EIGHT_H200, R1, "bfloat16", 32768, model_name="DeepSeek-R1")


def test_gpu_and_cpu_plans() -> None:
    one = plan_for(ONE_H200, QWEN_7B, "bfloat16", 8192)
    assert (one.backend, one.device, one.tensor_parallel, one.batch_size) == ("hf", "cuda", 1, 64)
    tiny = plan_for(LAPTOP, seeded_config("tiny"), "bfloat16", 2048)
    assert (tiny.backend, tiny.device, tiny.batch_size) == ("hf", "cpu", 2)  # one per core
    with pytest.raises(ConfigError, match=r"will not fit: its weights alone take 28\.4 GiB"):
        plan_for(LAPTOP, QWEN_7B, "float32", 2048)
    with pytest.raises(ConfigError, match="not one sequence of 3000000 tokens"):
        plan_for(ONE_H200, QWEN_7B, "bfloat16", 3_000_000)
    # The HF backend has no tensor parallelism: a model that needs two GPUs needs vLLM.
    two_h200 = Hardware(cpu_cores=16, ram_bytes=256 * GIB, gpus=(H200, H200), vllm=False)
    big = dict(QWEN_7B, num_hidden_layers=28 * 12)  # ~148 GiB in bf16
    with pytest.raises(ConfigError, match="use the vLLM backend"):
        plan_for(two_h200, big, "bfloat16", 4096)
    with pytest.raises(ConfigError, match="vllm is not installed"):
        plan_for(LAPTOP, QWEN_7B, "bfloat16", 4096, backend="vllm")


def test_detection_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    found = detect()
    assert found.cpu_cores >= 1 and found.ram_bytes > GIB
    assert flopnet_main(["hardware", "--model", "tiny", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["plan"]["backend"] in ("hf", "vllm") and doc["error"] is None
    assert doc["hardware"]["cpu_cores"] == found.cpu_cores
    if not found.gpus:
        assert doc["plan"]["device"] == "cpu"
        # 64 GiB of float32 weights cannot fit on a machine without a GPU and < 85 GiB of RAM.
        if found.ram_bytes < 85 * GIB:
            assert flopnet_main(["hardware", "--model", "llama3-8b-shape", "--dtype", "float32"])
            assert "will not fit" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_the_model_process_plans_before_loading_and_refuses_what_cannot_fit() -> None:
    async def main() -> None:
        service = ModelService("tiny", 1, "bfloat16", threads=1, max_seq_tokens=512)
        try:
            info = await service.start()
            assert info.plan is not None and info.plan["weights_bytes"] > 0
        finally:
            service.close()
        # A billion-token sequence: refused at once with the numbers, before any weights exist.
        huge = ModelService("tiny", 1, "bfloat16", threads=1, max_seq_tokens=10**9)
        try:
            with pytest.raises(ModelError, match="not one sequence of 1000000000 tokens"):
                await huge.start()
        finally:
            huge.close()

    trio.run(main)
