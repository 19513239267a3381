"""The embedded transformers backend, seeded models, byte tokenizer and R1 prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flopnet.node.model.hf_backend import HFBackend
from flopnet.node.model.models import (
    ModelSpec,
    build_model,
    param_count,
    seeded_spec,
    weights_sha256,
)
from flopnet.node.model.prompt import format_r1_prompt
from flopnet.node.model.tokenizer import SPECIAL_TOKENS, ByteTokenizer, HFTokenizer
from flopnet.proof.sampling import SamplingParams, replay_sampling
from flopnet.protocol.errors import ConfigError

PARAMS = SamplingParams()  # temperature 0.6, top_p 0.95
LEASE_SEED = 123_456_789
N_TOKENS = 96


@pytest.fixture(scope="module")
def bf16() -> HFBackend:
    return HFBackend(seeded_spec("tiny", seed=0), num_threads=2)


@pytest.fixture(scope="module")
def prompt_ids(bf16: HFBackend) -> list[int]:
    return bf16.tokenizer.encode(format_r1_prompt("What is 17 * 23?"), add_bos=True)


def _chunk_topk_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 128) -> list[float]:
    """TOPLOC's view: per 32-row chunk, overlap of the top-k |value| indices."""
    out = []
    for lo in range(0, a.shape[0] - 31, 32):
        ia = set(a[lo : lo + 32].float().abs().flatten().topk(k).indices.tolist())
        ib = set(b[lo : lo + 32].float().abs().flatten().topk(k).indices.tolist())
        out.append(len(ia & ib) / k)
    return out


# --- tokenizer and prompt ---------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_byte_tokenizer_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_byte_tokenizer_specials() -> None:
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 + len(SPECIAL_TOKENS)
    assert len({tok.special_id(s) for s in SPECIAL_TOKENS}) == len(SPECIAL_TOKENS)
    ids = tok.encode("<｜User｜>hi<think>x</think>", add_bos=True)
    assert ids == [
        tok.bos_id,
        tok.special_id("<｜User｜>"),
        ord("h"),
        ord("i"),
        tok.special_id("<think>"),
        ord("x"),
        tok.special_id("</think>"),
    ]
    assert tok.decode([tok.eos_id]) == "<｜end▁of▁sentence｜>"
    # Broken UTF-8 and unknown ids decode to U+FFFD rather than raising.
    assert tok.decode([0xE2, 0x82, ord("a"), 9999]) == "\ufffda\ufffd"
    with pytest.raises(ConfigError):
        tok.special_id("<nope>")


def test_hf_tokenizer_construction_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        HFTokenizer("")
    with pytest.raises(ConfigError):
        HFTokenizer(str(tmp_path), local_files_only=True)


def test_r1_prompt() -> None:
    p = format_r1_prompt("Compute 1+1.")
    assert p == (
        "<｜User｜>Compute 1+1.\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<｜Assistant｜><think>\n"
    )
    ids = ByteTokenizer().encode(p)
    assert ids[-2:] == [ByteTokenizer().special_id("<think>"), ord("\n")]


# --- seeded models ---------------------------------------------------------------------


def test_seeded_weights_are_reproducible(bf16: HFBackend) -> None:
    again, _ = build_model(seeded_spec("tiny", seed=0))
    other, _ = build_model(seeded_spec("tiny", seed=1))
    fp32, _ = build_model(seeded_spec("tiny", seed=0, dtype="float32"))
    h = weights_sha256(bf16.model)
    assert h == weights_sha256(again)
    assert h != weights_sha256(other)
    assert h != weights_sha256(fp32)
    # bf16 weights are the rounding of the fp32 ones, for every parameter.
    w32 = dict(fp32.named_parameters())
    for name, w16 in bf16.model.named_parameters():
        assert torch.equal(w32[name].to(torch.bfloat16), w16), name
    w = w32["lm_head.weight"]
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001


def test_param_count(bf16: HFBackend) -> None:
    total = param_count(bf16.model, include_embeddings=True)
    body = param_count(bf16.model, include_embeddings=False)
    assert 5_000_000 <= total <= 10_000_000
    assert total - body == 2 * 384 * ByteTokenizer().vocab_size
    print(f"\ntiny model: {total:,} parameters, {body:,} without embeddings")


def test_spec_validation() -> None:
    with pytest.raises(ConfigError):
        seeded_spec("huge")
    with pytest.raises(ConfigError):
        seeded_spec("tiny", dtype="float16")
    with pytest.raises(ConfigError):
        ModelSpec(name="x", family="gpt2", config={"vocab_size": 263})
    bad_vocab = ModelSpec(name="x", family="llama", config={"vocab_size": 1000, "hidden_size": 64})
    with pytest.raises(ConfigError):
        build_model(bad_vocab)


# --- generation and prefill ------------------------------------------------------------


def test_generation_is_deterministic(bf16: HFBackend, prompt_ids: list[int]) -> None:
    a = bf16.generate(prompt_ids, seed=LEASE_SEED, params=PARAMS, max_new_tokens=24)
    b = bf16.generate(prompt_ids, seed=LEASE_SEED, params=PARAMS, max_new_tokens=24)
    c = bf16.generate(prompt_ids, seed=LEASE_SEED + 1, params=PARAMS, max_new_tokens=24)
    assert a.token_ids == b.token_ids and torch.equal(a.hidden, b.hidden)
    assert a.token_ids != c.token_ids
    assert a.finish_reason == "length" and len(a.token_ids) == 24
    assert a.hidden.dtype == torch.bfloat16 and a.hidden.shape == (24, bf16.hidden_size)
    assert a.text == bf16.tokenizer.decode(a.token_ids)
    assert a.prefill_s > 0 and a.decode_s > 0


def test_generation_stops_on_eos(bf16: HFBackend, prompt_ids: list[int]) -> None:
    ref = bf16.generate(prompt_ids, seed=LEASE_SEED, params=PARAMS, max_new_tokens=12)
    stop = ref.token_ids[5]
    first = ref.token_ids.index(stop)
    old = bf16.eos_id
    bf16.eos_id = stop  # pretend that token is eos
    try:
        gen = bf16.generate(prompt_ids, seed=LEASE_SEED, params=PARAMS, max_new_tokens=12)
    finally:
        bf16.eos_id = old
    assert gen.finish_reason == "eos"
    assert gen.token_ids == ref.token_ids[: first + 1]  # eos included
    assert gen.hidden.shape[0] == first + 1
    assert torch.equal(gen.hidden, ref.hidden[: first + 1])
    assert gen.text == bf16.tokenizer.decode(gen.token_ids[:-1])


def test_generate_vs_prefill_bf16(bf16: HFBackend, prompt_ids: list[int]) -> None:
    gen = bf16.generate(prompt_ids, seed=LEASE_SEED, params=PARAMS, max_new_tokens=N_TOKENS)
    assert len(gen.token_ids) == N_TOKENS
    pre = bf16.prefill(prompt_ids, gen.token_ids)
    assert pre.hidden.dtype == torch.bfloat16 and pre.hidden.shape == gen.hidden.shape
    assert pre.logits.dtype == torch.float32
    # Ordinary tensors (not inference-mode ones), so callers may modify them in place.
    assert not (gen.hidden.is_inference() or pre.hidden.is_inference() or pre.logits.is_inference())
    assert pre.logits.shape == (N_TOKENS, bf16.vocab_size)

    diff = (pre.hidden.float() - gen.hidden.float()).abs().max().item()
    scale = gen.hidden.float().abs().max().item()
    overlap = _chunk_topk_overlap(gen.hidden, pre.hidden)
    print(
        f"\nbf16 generate vs prefill: max|diff| {diff:.4f} ({diff / scale:.2%} of max {scale:.2f})"
    )
    print(f"top-128 overlap per 32-token chunk: {[round(o, 3) for o in overlap]}")
    assert diff <= 0.05 * scale
    assert min(overlap) >= 0.9

    honest = replay_sampling(pre.logits, gen.token_ids, LEASE_SEED, PARAMS)
    wrong_seed = replay_sampling(pre.logits, gen.token_ids, LEASE_SEED + 1, PARAMS)
    print(f"replay: honest {honest.mismatches}/{N_TOKENS}, wrong seed {wrong_seed.mismatches}")
    assert honest.mismatches <= 1
    assert wrong_seed.mismatches >= 0.8 * N_TOKENS


def test_generate_vs_prefill_fp32_is_exact(prompt_ids: list[int]) -> None:
    fp32 = HFBackend(seeded_spec("tiny", seed=0, dtype="float32"), num_threads=2)
    gen = fp32.generate(prompt_ids, seed=LEASE_SEED, params=PARAMS, max_new_tokens=64)
    pre = fp32.prefill(prompt_ids, gen.token_ids)
    assert min(_chunk_topk_overlap(gen.hidden, pre.hidden)) == 1.0
    check = replay_sampling(pre.logits, gen.token_ids, LEASE_SEED, PARAMS, tolerance=1e-4)
    assert check.mismatches == 0


def test_an_upcast_prefill_agrees_with_bf16_generation_and_restores_every_weight(
    bf16: HFBackend, prompt_ids: list[int]
) -> None:
    """The second opinion's float32 prefill of a bf16 model runs in float32, agrees with an
    honest bf16 generation as a bf16 prefill does, and afterwards every weight and buffer is
    back, bit for bit and dtype."""
    before = {k: v.clone() for k, v in bf16.model.state_dict().items()}
    gen = bf16.generate(prompt_ids, seed=LEASE_SEED, params=PARAMS, max_new_tokens=N_TOKENS)
    with bf16.at_precision("float32"):
        assert next(bf16.model.parameters()).dtype == torch.float32
        upcast = bf16.prefill(prompt_ids, gen.token_ids)
    plain = bf16.prefill(prompt_ids, gen.token_ids)
    assert not torch.equal(upcast.hidden, plain.hidden)  # it did run in another precision
    assert min(_chunk_topk_overlap(gen.hidden, upcast.hidden)) >= 0.9
    assert replay_sampling(upcast.logits, gen.token_ids, LEASE_SEED, PARAMS).mismatches <= 1
    after = bf16.model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    with pytest.raises(ConfigError, match="unknown precision"), bf16.at_precision("float33"):
        pass


def test_other_weights_are_clearly_different(bf16: HFBackend, prompt_ids: list[int]) -> None:
    gen = bf16.generate(prompt_ids, seed=LEASE_SEED, params=PARAMS, max_new_tokens=64)
    other = HFBackend(seeded_spec("tiny", seed=1), num_threads=2)
    pre = other.prefill(prompt_ids, gen.token_ids)
    overlap = _chunk_topk_overlap(gen.hidden, pre.hidden)
    diff = (pre.hidden.float() - gen.hidden.float()).abs().max().item()
    assert max(overlap) < 0.5
    assert diff > 0.5 * gen.hidden.float().abs().max().item()
    # Replay alone is weak here: the random model's logits are nearly flat, so the shared Gumbel
    # noise decides most tokens whatever the weights. The hidden states above are the real check.
    assert replay_sampling(pre.logits, gen.token_ids, LEASE_SEED, PARAMS).mismatches > 12


def test_prefill_edge_cases(bf16: HFBackend, prompt_ids: list[int]) -> None:
    empty = bf16.prefill(prompt_ids, [])
    assert empty.hidden.shape == (0, bf16.hidden_size)
    assert empty.logits.shape == (0, bf16.vocab_size)
    gen = bf16.generate(prompt_ids, seed=1, params=PARAMS, max_new_tokens=1)
    one = bf16.prefill(prompt_ids, gen.token_ids)
    assert one.hidden.shape == (1, bf16.hidden_size)
    with pytest.raises(ConfigError):
        bf16.prefill(prompt_ids, [bf16.vocab_size])
    with pytest.raises(ConfigError):
        bf16.prefill([], [1])
    with pytest.raises(ConfigError):
        bf16.generate(prompt_ids, seed=1, params=PARAMS, max_new_tokens=0)


def test_decode_throughput(bf16: HFBackend, prompt_ids: list[int]) -> None:
    """Measured, not asserted: tokens/s of batch-1 decode of the tiny model on this CPU."""
    fp32 = HFBackend(seeded_spec("tiny", seed=0, dtype="float32"), num_threads=2)
    for name, backend in (("bf16", bf16), ("fp32", fp32)):
        backend.generate(prompt_ids, seed=0, params=PARAMS, max_new_tokens=4)  # warm-up
        gen = backend.generate(prompt_ids, seed=0, params=PARAMS, max_new_tokens=128)
        print(f"\ntiny {name} decode: {gen.tokens_per_s:.0f} tok/s (batch 1, 2 threads)")
