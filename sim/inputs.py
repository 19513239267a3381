"""The simulation's inputs taken from outside: published GPU throughputs, R1's config, the
sizes a task set's samples have, and what each cheat costs. Every number says where it is from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3

# DeepSeek-R1 (= DeepSeek-V3's architecture): the fields of its config.json the FLOP formula and
# the hardware plan read; tests/test_sim.py checks them against transformers' DeepseekV3Config.
R1_CONFIG: dict[str, Any] = {
    "model_type": "deepseek_v3",
    "vocab_size": 129280,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "n_shared_experts": 1,
    "n_routed_experts": 256,
    "num_experts_per_tok": 8,
    "first_k_dense_replace": 3,
    "moe_layer_freq": 1,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class GpuClass:
    """One kind of worker machine running the network's model (R1 in fp8)."""

    name: str
    gpus: int
    gpu_memory_gib: float
    output_tokens_per_s: float  # whole machine, decoding many sequences at once
    dense_fp8_tflops: float  # per GPU, without sparsity: what a validator's prefill can use
    source: str
    streams: int = 64  # sequences decoded at once (the hardware plan caps a GPU batch at 64)
    runs_r1: bool = True  # checked against the hardware plan (a measured stand-in is not)


GPU_CLASSES: dict[str, GpuClass] = {
    g.name: g
    for g in (
        GpuClass(
            "h200x8",
            8,
            141.0,
            2673.55,
            1979.0,
            "SGLang v0.4.1.post2 release notes (sgl-project/sglang#2643): DeepSeek-V3 TP8 on "
            "8xH200, ShareGPT 5k prompts, 2,673.55 output tok/s; H200 FP8 1,979 dense TFLOPS "
            "(NVIDIA datasheet, as tabled by DataCrunch's H200 DeepSeek-V3 benchmark)",
        ),
        GpuClass(
            "b200x8",
            8,
            180.0,
            30000.0,
            4500.0,
            "NVIDIA, GTC 2025: one DGX B200 (8 GPUs) reaches over 30,000 tok/s maximum "
            "throughput on DeepSeek-R1 (TensorRT-LLM, FP4); B200 FP8 4.5 dense PFLOPS (datasheet)",
        ),
        GpuClass(
            "h100x8",
            8,
            80.0,
            2673.55 * 3.35 / 4.8,
            1979.0,
            "8xH100 cannot hold R1 in fp8 (flopnet.node.model.hardware refuses it; Microsoft's "
            "Azure ND-H100-v5 R1 benchmark needed two such nodes): a class kept to show the "
            "refusal; its throughput is H200's scaled by memory bandwidth (3.35 / 4.8 TB/s)",
        ),
    )
}


@dataclass(frozen=True)
class TaskSet:
    """A family of tasks: its prompt size and how long R1's answers to it are."""

    name: str
    share: float
    prompt_tokens: int
    mean_generated: float
    sigma: float  # of the lognormal the generated length is drawn from
    max_new_tokens: int = 32768
    verify_cpu_s: float = 0.007  # answer check per sample (docs/benchmarks.md: math 7.1 ms)


# Generated lengths are an assumption, not a measurement: R1 traces on competition math run to
# thousands of tokens (its paper's length curves), code somewhat longer; the lognormal's spread
# puts a few percent of samples at the 32k cap.
TASK_SETS: dict[str, TaskSet] = {
    t.name: t
    for t in (
        TaskSet("math", 0.6, 180, 4000.0, 0.8, verify_cpu_s=0.0071),
        # One sandboxed program run per sample: docs/benchmarks.md, 20.4 programs/s on 2 cores.
        TaskSet("code", 0.4, 600, 6000.0, 0.7, verify_cpu_s=0.098),
    )
}


@dataclass(frozen=True)
class CheatKind:
    """A way to cheat: the row of the detection benchmark that measured it, what it costs the
    cheater per sample against an honest sample, and how much of the output it submits."""

    name: str
    row: str  # the row name in benchmarks/results/proof_detection.json
    cost: float  # GPU time per sample, honest = 1
    length: float = 1.0  # generated tokens submitted, honest = 1 (FLOPs are credited on these)


# Cost factors are assumptions stated here: a cheat that changes only what is sampled (tokens,
# temperature, top-p, the prompt) costs what honest work costs; a quantised model decodes
# faster because decoding is memory-bound (int4 weights move a quarter of bf16's bytes; R1 is
# served in fp8, so int4 halves them); "other weights" stands for a model ten times cheaper.
CHEAT_KINDS: dict[str, CheatKind] = {
    c.name: c
    for c in (
        CheatKind("other-weights", "other weights", 0.1),
        CheatKind("weights-noise", "weights + 1% noise", 1.0),
        CheatKind("int8", "int8 weights", 0.8),
        CheatKind("int4", "int4 weights", 0.6),
        CheatKind("fp32", "fp32 generation, bf16 check", 2.0),
        CheatKind("prompt-changed", "one prompt token changed", 1.0),
        CheatKind("tokens-injected", "16 output tokens injected", 1.0),
        CheatKind("answer-injected", "1 output token injected", 1.0),
        CheatKind("temperature", "temperature 1.0 (lease 0.6)", 1.0),
        CheatKind("top-p", "top-p 1.0 (lease 0.95)", 1.0),
        CheatKind("cut-short", "output cut short", 0.75, 0.75),
        CheatKind("cut-fake-eos", "output cut short + fake eos", 0.75, 0.75),
    )
}
# A Sybil identity's forged output: nothing computed (the garbage of flopnet.testing.hostile).
GARBAGE = CheatKind("garbage", "other weights", 0.0)

# Wire sizes measured with the real records (docs/benchmarks.md, issue 3 and 7) and the gossip
# CPU cost per delivered message (1.2-1.4 ms on py-libp2p 0.8.1, the same benchmarks).
GOSSIP_CPU_S_PER_MESSAGE = 0.0013
GOSSIP_MESH_DEGREE = 6  # GossipSub's D: a message reaches a node from up to D mesh peers
HEARTBEAT_INTERVAL_S = 2.0
LEDGER_INGEST_PER_CPU_S = 5473.0  # full verification, docs/benchmarks.md (Ledger, issue 7)
