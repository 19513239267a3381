"""Batched generation and the attention option: honest variations the proof check must accept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from flopnet.node.model.calibration import calibration_prompts, lease_seed
from flopnet.node.model.hf_backend import GenerationRequest, HFBackend
from flopnet.node.model.models import build_model, seeded_spec
from flopnet.proof.completion import check_completion
from flopnet.proof.policy import decide, recommended_policy
from flopnet.proof.sampling import SamplingParams, replay_sampling
from flopnet.proof.toploc import build_proofs, verify_proofs
from flopnet.protocol.errors import ConfigError

PARAMS = SamplingParams()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Decoding a tiny model gains nothing from a second thread and, on a busy machine, an OpenMP
    # team waiting for a core makes it many times slower. Restored for the other modules.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny() -> HFBackend:
    return HFBackend(seeded_spec("tiny", seed=0))


def test_batch_of_one_is_generate(tiny: HFBackend) -> None:
    prompt = calibration_prompts(tiny.tokenizer, 1)[0]
    single = tiny.generate(prompt, seed=5, params=PARAMS, max_new_tokens=20)
    (batched,) = tiny.generate_batch([GenerationRequest(prompt, 5, PARAMS, 20)])
    assert batched.token_ids == single.token_ids
    assert torch.equal(batched.hidden, single.hidden)
    assert batched.finish_reason == single.finish_reason and batched.text == single.text


def test_padded_batch_rows_pass_the_proof_check(tiny: HFBackend) -> None:
    prompts = calibration_prompts(tiny.tokenizer, 3, offset=50)
    assert len({len(p) for p in prompts}) == 3  # different lengths: real left padding
    limits = [40, 7, 33]
    reqs = [
        GenerationRequest(p, lease_seed(i), PARAMS, n)
        for i, (p, n) in enumerate(zip(prompts, limits, strict=True))
    ]
    policy = recommended_policy("tiny", "bfloat16")
    for req, gen in zip(reqs, tiny.generate_batch(reqs), strict=True):
        assert 1 <= len(gen.token_ids) <= req.max_new_tokens
        assert gen.hidden.shape == (len(gen.token_ids), tiny.hidden_size)
        assert gen.hidden.dtype == torch.bfloat16 and not gen.hidden.is_inference()
        pre = tiny.prefill(req.prompt_ids, gen.token_ids)
        checks = verify_proofs(pre.hidden, build_proofs(gen.hidden))
        replay = replay_sampling(
            pre.logits, gen.token_ids, req.seed, PARAMS, tolerance=policy.replay_tolerance
        )
        done = check_completion(
            gen.token_ids, eos_id=tiny.eos_id, max_new_tokens=req.max_new_tokens
        )
        assert decide(checks, replay, policy, done).passed, (checks, replay)


def test_batch_rows_stop_on_eos_independently(tiny: HFBackend) -> None:
    prompts = calibration_prompts(tiny.tokenizer, 2)
    ref = tiny.generate(prompts[0], seed=1, params=PARAMS, max_new_tokens=12)
    old = tiny.eos_id
    tiny.eos_id = ref.token_ids[3]  # pretend that token is eos
    try:
        a, b = tiny.generate_batch(
            [
                GenerationRequest(prompts[0], 1, PARAMS, 12),
                GenerationRequest(prompts[1], 2, PARAMS, 12),
            ]
        )
    finally:
        tiny.eos_id = old
    assert a.finish_reason == "eos" and a.token_ids[-1] == ref.token_ids[3]
    assert a.token_ids == ref.token_ids[: len(a.token_ids)]
    assert len(b.token_ids) == 12 or b.finish_reason == "eos"


def test_generate_batch_input_errors(tiny: HFBackend) -> None:
    assert tiny.generate_batch([]) == []
    with pytest.raises(ConfigError):
        tiny.generate_batch([GenerationRequest([], 1, PARAMS, 4)])
    with pytest.raises(ConfigError):
        tiny.generate_batch([GenerationRequest([1, 2], 1, PARAMS, 0)])
    with pytest.raises(ConfigError):
        tiny.generate_batch([GenerationRequest([tiny.vocab_size], 1, PARAMS, 4)])


def test_eager_attention_is_an_honest_variation(tiny: HFBackend) -> None:
    with pytest.raises(ConfigError):
        build_model(seeded_spec("tiny"), attn_implementation="flash")
    eager = HFBackend(seeded_spec("tiny", seed=0), attn_implementation="eager")
    config: Any = eager.model.config
    assert config._attn_implementation == "eager"
    config = tiny.model.config
    assert config._attn_implementation == "sdpa"
    prompt = calibration_prompts(tiny.tokenizer, 1, offset=9)[0]
    gen = eager.generate(prompt, seed=3, params=PARAMS, max_new_tokens=40)
    pre = tiny.prefill(prompt, gen.token_ids)
    policy = recommended_policy("tiny", "bfloat16")
    checks = verify_proofs(pre.hidden, build_proofs(gen.hidden))
    replay = replay_sampling(
        pre.logits, gen.token_ids, 3, PARAMS, tolerance=policy.replay_tolerance
    )
    assert decide(checks, replay, policy).passed


def test_chunks_handed_over_while_decoding_are_the_final_states(tiny: HFBackend) -> None:
    """``on_chunk`` gets each full 32-row chunk as soon as it exists; proofs built from those
    chunks are byte for byte the proofs of the whole output (the worker builds them meanwhile)."""
    prompts = calibration_prompts(tiny.tokenizer, 3)
    seen: dict[tuple[int, int], torch.Tensor] = {}

    def keep(row: int, index: int, states: torch.Tensor) -> None:
        assert (row, index) not in seen and states.dtype == torch.bfloat16
        seen[(row, index)] = states

    single = tiny.generate(prompts[0], seed=1, params=PARAMS, max_new_tokens=80, on_chunk=keep)
    full = len(single.token_ids) // 32
    assert full >= 1
    assert sorted(seen) == [(0, i) for i in range(full)]
    chunked = [p for i in range(full) for p in build_proofs(seen[(0, i)])]
    assert chunked == build_proofs(single.hidden)[:full]

    seen.clear()
    requests = [GenerationRequest(p, 20 + i, PARAMS, 70) for i, p in enumerate(prompts)]
    gens = tiny.generate_batch(requests, on_chunk=keep)
    for row, gen in enumerate(gens):
        rows = len(gen.token_ids) // 32
        assert {i for r, i in seen if r == row} == set(range(rows)), row
        for i in range(rows):
            assert torch.equal(seen[(row, i)], gen.hidden[i * 32 : (i + 1) * 32])
    assert sum(len(g.token_ids) // 32 for g in gens) >= 2


def test_batched_prefill_checks_what_one_prefill_checks(tiny: HFBackend) -> None:
    """A validator auditing several submissions in one padded forward pass reaches the same
    verdicts as one prefill each: honest rows pass, a row with another row's proofs fails."""
    prompts = calibration_prompts(tiny.tokenizer, 4, offset=70)
    reqs = [GenerationRequest(p, lease_seed(i), PARAMS, 40) for i, p in enumerate(prompts)]
    gens = [
        tiny.generate(r.prompt_ids, seed=r.seed, params=PARAMS, max_new_tokens=40) for r in reqs
    ]
    pres = tiny.prefill_batch(
        [(r.prompt_ids, g.token_ids) for r, g in zip(reqs, gens, strict=True)]
    )
    policy = recommended_policy("tiny", "bfloat16")
    for req, gen, pre in zip(reqs, gens, pres, strict=True):
        single = tiny.prefill(req.prompt_ids, gen.token_ids)
        assert pre.hidden.shape == single.hidden.shape and pre.logits.shape == single.logits.shape
        assert not pre.logits.is_inference()
        checks = verify_proofs(pre.hidden, build_proofs(gen.hidden))
        replay = replay_sampling(
            pre.logits, gen.token_ids, req.seed, PARAMS, tolerance=policy.replay_tolerance
        )
        done = check_completion(gen.token_ids, eos_id=tiny.eos_id, max_new_tokens=40)
        assert decide(checks, replay, policy, done).passed, (checks, replay)
    n = len(build_proofs(gens[0].hidden))
    other = next(g for g in gens[1:] if len(build_proofs(g.hidden)) == n)  # same proof count
    forged = verify_proofs(pres[0].hidden, build_proofs(other.hidden))
    replay = replay_sampling(pres[0].logits, gens[0].token_ids, reqs[0].seed, PARAMS)
    assert not decide(forged, replay, policy).passed
    with pytest.raises(ConfigError):
        tiny.prefill_batch([(prompts[0], [])])


def test_proof_stream_threaded_equals_built_after(tiny: HFBackend) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from flopnet.proof.stream import ProofStream

    prompts = calibration_prompts(tiny.tokenizer, 3, offset=90)
    requests = [GenerationRequest(p, 1 + i, PARAMS, 75) for i, p in enumerate(prompts)]
    with ThreadPoolExecutor(1) as pool:
        stream = ProofStream(pool)
        gens = tiny.generate_batch(requests, **stream.backend_kwargs())
        threaded = [stream.proofs(row, g.hidden) for row, g in enumerate(gens)]
    after = ProofStream(None)
    assert after.backend_kwargs() == {}
    assert threaded == [after.proofs(row, g.hidden) for row, g in enumerate(gens)]
    assert threaded == [build_proofs(g.hidden) for g in gens]
    assert sum(len(p) for p in threaded) > len(gens)  # some rows had full chunks


def test_prefill_hands_logits_over_in_chunks(
    tiny: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With on_logits no [G, vocab] tensor is kept; the chunked replay equals the whole one."""
    from flopnet.node.model import hf_backend
    from flopnet.proof.sampling import replay_check, replay_shortfalls

    monkeypatch.setattr(hf_backend, "_LOGITS_CHUNK", 16)  # several chunks from a short output
    prompt = calibration_prompts(tiny.tokenizer, 1, offset=120)[0]
    gen = tiny.generate(prompt, seed=2, params=PARAMS, max_new_tokens=70)
    whole = tiny.prefill(prompt, gen.token_ids)
    seen: list[tuple[int, torch.Tensor]] = []
    streamed = tiny.prefill(
        prompt, gen.token_ids, on_logits=lambda lo, rows: seen.append((lo, rows))
    )
    assert streamed.logits.shape == (0, tiny.vocab_size)  # nothing kept
    assert len(seen) >= 2
    assert torch.equal(streamed.hidden, whole.hidden)
    assert [lo for lo, _ in seen] == list(range(0, len(gen.token_ids), 16))
    assert torch.equal(torch.cat([rows for _, rows in seen]), whole.logits)
    shortfalls: list[float] = []
    for lo, rows in seen:
        part = gen.token_ids[lo : lo + len(rows)]
        shortfalls += replay_shortfalls(rows, part, 2, PARAMS, start_position=lo).tolist()
    tolerance = recommended_policy("tiny", "bfloat16").replay_tolerance
    assert replay_check(shortfalls, tolerance) == replay_sampling(
        whole.logits, gen.token_ids, 2, PARAMS, tolerance=tolerance
    )
