"""The H200 check: the HF backend on CUDA with seeded Qwen2.5-7B-shaped and MoE models.

    python benchmarks/gpu_check.py                 # on a CUDA machine (about 6 minutes on one H200)
    python benchmarks/gpu_check.py --dry-run       # CPU smoke run with the tiny stand-ins (~1 min)

Measures, per model:

* decode tokens/s at batch 1, 8 and 32 with capture and proofs on (``HFBackend.generate_batch``
  with the hook on the final norm and a :class:`~proof.stream.ProofStream` building each chunk's
  proof on a thread) and off (the same decode loop without hook, states or proofs); goal: the
  overhead is at most 1 %;
* prefill tokens/s (one forward pass over 8 × 1024 tokens) against decode tokens/s; goal ≥ 20×;
* honest false positives when the GPU generates and a CPU validator (an exact CPU copy of the
  weights, bf16) checks: TOPLOC, sampling replay and completion under the model's recommended
  policy and the paper-era one, with the worst honest values; the same with a GPU validator.

Needs only torch and transformers (5.x): flopnet's modules used here import nothing else. When
flopnet is not installed the repository is linked under a temporary ``flopnet`` name. Weights are
initialised on the device from a fixed seed (the bit-exact CPU seeding of ``models.py`` would take
minutes for 7B parameters); the CPU validator gets a copy of the same tensors. Results go to
``benchmarks/results/gpu_check.json``, written after every stage, so a run cut short still
leaves what it measured. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def _import_flopnet() -> None:
    try:
        import flopnet  # noqa: F401
    except ImportError:
        link_dir = Path(tempfile.mkdtemp(prefix="flopnet-link-"))
        (link_dir / "flopnet").symlink_to(REPO, target_is_directory=True)
        sys.path.insert(0, str(link_dir))


_import_flopnet()

from flopnet.node.model.hf_backend import GenerationRequest, HFBackend  # noqa: E402
from flopnet.node.model.models import ModelSpec, seeded_config  # noqa: E402
from flopnet.node.model.prompt import format_r1_prompt  # noqa: E402
from flopnet.node.model.tokenizer import ByteTokenizer  # noqa: E402
from flopnet.proof.completion import check_completion  # noqa: E402
from flopnet.proof.policy import ProofPolicy, decide, recommended_policy  # noqa: E402
from flopnet.proof.sampling import SamplingParams, replay_sampling, sample_token  # noqa: E402
from flopnet.proof.stream import ProofStream  # noqa: E402
from flopnet.proof.toploc import ToplocThresholds, verify_proofs  # noqa: E402

# The math instruction, as a task carries it (kept here: this script runs without msgpack, which
# the task package needs).
GPU_DIRECTIVE = "Please reason step by step, and put your final answer within \\boxed{}."

LEASE = SamplingParams(temperature=0.6, top_p=0.95)
# (model on the GPU, stand-in for --dry-run)
MODELS = (("qwen2.5-7b-shape", "tiny"), ("deepseek-v3-16b-shape", "deepseek-v3-tiny"))


def build(name: str, device: str, seed: int = 0) -> tuple[HFBackend, HFBackend]:
    """The model on ``device`` (weights N(0, 0.02²) from ``seed``, routers in fp32) and a CPU
    backend holding a copy of the same tensors."""
    import transformers

    cfg = {**seeded_config(name)}
    family = cfg.pop("model_type")
    cls = {"llama": "Llama", "qwen2": "Qwen2", "deepseek_v3": "DeepseekV3"}[family]
    config: Any = getattr(transformers, f"{cls}Config")(**cfg)
    config._attn_implementation = "sdpa"
    spec = ModelSpec(name=name, family=family, config=cfg, seed=seed)
    torch.manual_seed(seed)
    with torch.device(device):
        model: Any = getattr(transformers, f"{cls}ForCausalLM")(config)
    with torch.no_grad():
        gen = torch.Generator(device=device).manual_seed(seed)
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    router = {n for n, _ in model.named_parameters() if n.endswith("mlp.gate.weight")}
    for pname, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if pname in router else torch.bfloat16)
    for bname, b in model.named_buffers():
        if bname.endswith("e_score_correction_bias"):
            b.zero_()
    tok = ByteTokenizer()
    on_device = HFBackend.from_model(spec, model, tok, device=device)
    with torch.device("meta"):
        skeleton: Any = getattr(transformers, f"{cls}ForCausalLM")(config)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    skeleton.load_state_dict(state, assign=True)
    for bname, b in model.named_buffers():  # non-persistent buffers (rotary tables)
        parent, _, leaf = bname.rpartition(".")
        holder = skeleton.get_submodule(parent) if parent else skeleton
        setattr(holder, leaf, b.detach().to("cpu", copy=True))
    on_cpu = HFBackend.from_model(spec, skeleton, tok, device="cpu")
    return on_device, on_cpu


def prompts(count: int, tok: ByteTokenizer, offset: int = 0) -> list[list[int]]:
    """Math prompts of varied lengths (R1's format, byte tokens)."""
    out = []
    for i in range(offset, offset + count):
        text = f"Compute {37 * i + 11} * {13 * i + 7} and explain each step of the work. " * (
            1 + i % 3
        )
        out.append(tok.encode(format_r1_prompt(text, directive=GPU_DIRECTIVE), add_bos=True))
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_plain(backend: HFBackend, rows: list[list[int]], steps: int) -> float:
    """Seconds for ``steps`` decode steps of a left-padded batch: the loop of
    ``HFBackend.generate_batch`` without the norm hook, the stored states and the proofs."""
    model: Any = backend.model
    dev = backend.device
    b, width = len(rows), max(len(r) for r in rows)
    ids = torch.zeros((b, width), dtype=torch.long, device=dev)
    mask = torch.zeros((b, width), dtype=torch.long, device=dev)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, device=dev)
        mask[i, width - len(r) :] = 1
    lengths = mask.sum(dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    _sync(str(dev))
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1)  # fmt: skip
        for i in range(steps):
            logits = out.logits[:, -1].float().cpu()
            step = torch.tensor(
                [[sample_token(logits[r], 1000 + r, i, LEASE)] for r in range(b)], device=dev
            )
            if i + 1 == steps:
                break
            mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long, device=dev)], dim=1)
            out = model(input_ids=step, attention_mask=mask, position_ids=(lengths + i)[:, None],
                        past_key_values=out.past_key_values, use_cache=True)  # fmt: skip
    _sync(str(dev))
    return time.perf_counter() - t0


def decode_proven(backend: HFBackend, rows: list[list[int]], steps: int) -> float:
    """Seconds for the same decode through ``generate_batch`` with capture and streamed proofs
    (what a worker's model process runs on a GPU), the last partial chunk's proofs included."""
    from concurrent.futures import ThreadPoolExecutor

    # Rows never stop early: eos is made unreachable so both loops run ``steps`` steps.
    eos, backend.eos_id = backend.eos_id, -1
    pool = ThreadPoolExecutor(1)
    try:
        stream = ProofStream(pool)
        reqs = [GenerationRequest(r, 1000 + i, LEASE, steps) for i, r in enumerate(rows)]
        _sync(str(backend.device))
        t0 = time.perf_counter()
        gens = backend.generate_batch(reqs, **stream.backend_kwargs())
        stream.all_proofs([g.hidden for g in gens])
        _sync(str(backend.device))
        return time.perf_counter() - t0
    finally:
        backend.eos_id = eos
        pool.shutdown()


def throughput(
    backend: HFBackend, batches: list[int], steps: int, log: Any
) -> list[dict[str, Any]]:
    tok = ByteTokenizer()
    out = []
    decode_plain(backend, prompts(1, tok), 4)  # warm-up (kernels, allocator)
    for b in batches:
        rows = prompts(b, tok)
        plain = min(decode_plain(backend, rows, steps) for _ in range(2))
        proven = min(decode_proven(backend, rows, steps) for _ in range(2))
        row = {
            "batch": b,
            "steps": steps,
            "tokens_per_s_off": round(b * steps / plain, 1),
            "tokens_per_s_on": round(b * steps / proven, 1),
            "overhead": round(proven / plain - 1.0, 4),
        }
        log(f"  decode batch {b}: {row}")
        out.append(row)
    return out


def prefill_rate(backend: HFBackend, batch: int, length: int) -> float:
    """Tokens/s of one forward pass over ``batch`` rows of ``length`` tokens (best of 3)."""
    ids = torch.randint(0, backend.vocab_size, (batch, length), device=backend.device)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(3):
            _sync(str(backend.device))
            t0 = time.perf_counter()
            backend.model(input_ids=ids, use_cache=False, logits_to_keep=1)
            _sync(str(backend.device))
            best = min(best, time.perf_counter() - t0)
    return batch * length / best


def honest_checks(
    worker: HFBackend, validators: dict[str, HFBackend], model: str, samples: int, tokens: int
) -> dict[str, Any]:
    """Honest generation on the worker's device, checked by each validator."""
    tok = ByteTokenizer()
    rows = prompts(samples, tok, offset=100)
    reqs = [GenerationRequest(r, 7 + i, LEASE, tokens) for i, r in enumerate(rows)]
    gens = []
    for lo in range(0, len(reqs), 8):
        stream = ProofStream(None)
        part = worker.generate_batch(reqs[lo : lo + 8])
        gens += [
            (g, p) for g, p in zip(part, stream.all_proofs([g.hidden for g in part]), strict=True)
        ]
    policies = {"recommended": recommended_policy(model, "bfloat16"),
                "paper": ProofPolicy(ToplocThresholds())}  # fmt: skip
    out: dict[str, Any] = {}
    for vname, validator in validators.items():
        chunks = []
        fails = dict.fromkeys(policies, 0)
        worst_shortfall = 0.0
        t0 = time.perf_counter()
        for req, (g, proofs) in zip(reqs, gens, strict=True):
            pre = validator.prefill(req.prompt_ids, g.token_ids)
            checks = verify_proofs(pre.hidden, proofs)
            chunks += checks
            completion = check_completion(g.token_ids, eos_id=validator.eos_id,
                                          max_new_tokens=tokens)  # fmt: skip
            for pname, policy in policies.items():
                replay = replay_sampling(pre.logits, g.token_ids, req.seed, LEASE,
                                         tolerance=policy.replay_tolerance)  # fmt: skip
                worst_shortfall = max(worst_shortfall, replay.max_shortfall)
                fails[pname] += not decide(checks, replay, policy, completion).passed
        finite = [c.mant_err_mean for c in chunks if c.mant_err_mean < 2**63]
        out[vname] = {
            "samples": len(gens),
            "chunks": len(chunks),
            "failed_samples": fails,
            "exp_mismatches_max": max((c.exp_mismatches for c in chunks), default=0),
            "mant_err_mean_max": round(max(finite, default=0.0), 4),
            "sign_mismatches_max": max((c.sign_mismatches for c in chunks), default=0),
            "replay_worst_shortfall": round(worst_shortfall, 5),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU smoke run, tiny stand-ins")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/gpu_check.json")
    parser.add_argument("--samples", type=int, default=None, help="honest samples per model")
    args = parser.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --dry-run for the CPU smoke run)")
    device = "cpu" if dry else "cuda"
    # The CPU validator uses the machine's cores; a dry run on a shared 2-core box one thread
    # (an OpenMP team waiting for a busy core is far slower than one thread).
    torch.set_num_threads(1 if dry else min(16, os.cpu_count() or 1))
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {line}", file=sys.stderr, flush=True)

    doc: dict[str, Any] = {
        "benchmark": "gpu-check",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "dry_run": dry,
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpus": os.cpu_count(),
        },
        "goals": {"proof_overhead_max": 0.01, "prefill_over_decode_min": 20.0},
        "models": {},
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")

    batches = [1, 2, 4] if dry else [1, 8, 32]
    steps = 33 if dry else 96  # one full chunk and more on the small run
    samples = args.samples or (2 if dry else 8)
    for gpu_name, stand_in in MODELS:
        name = stand_in if dry else gpu_name
        t0 = time.perf_counter()
        worker, cpu_validator = build(name, device)
        entry: dict[str, Any] = {"build_s": round(time.perf_counter() - t0, 1)}
        doc["models"][name] = entry
        log(f"{name}: built on {device} and copied to the CPU in {entry['build_s']} s")
        entry["decode"] = throughput(worker, batches, steps, log)
        save()
        prefill = prefill_rate(worker, 2 if dry else 8, 256 if dry else 1024)
        decode_b1 = entry["decode"][0]["tokens_per_s_on"]
        decode_max = entry["decode"][-1]["tokens_per_s_on"]
        entry["prefill"] = {
            "tokens_per_s": round(prefill, 1),
            "over_decode_batch_1": round(prefill / decode_b1, 1),
            f"over_decode_batch_{batches[-1]}": round(prefill / decode_max, 1),
        }
        log(f"  prefill: {entry['prefill']}")
        save()
        validators = {"cpu": cpu_validator} if dry else {"cuda": worker, "cpu": cpu_validator}
        entry["honest"] = honest_checks(worker, validators, name, samples, 64 if dry else 192)
        log(f"  honest checks: {entry['honest']}")
        save()
        del worker, cpu_validator
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    doc["seconds"] = round(time.perf_counter() - started, 1)
    save()
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
