"""Seeded Gumbel-max sampler and its replay check."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flopnet.proof.sampling import (
    ReplayCheck,
    SamplingParams,
    gumbel_noise,
    replay_check,
    replay_sampling,
    replay_shortfalls,
    sample_token,
)
from flopnet.protocol.errors import ConfigError, FlopnetError, ProofError

torch.set_num_threads(1)

PARAMS = SamplingParams()  # temperature 0.6, top_p 0.95


def _logits(rows: int, vocab: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((rows, vocab), generator=gen) * scale


def _sample_all(logits: torch.Tensor, seed: int, params: SamplingParams) -> list[int]:
    return [sample_token(row, seed, i, params) for i, row in enumerate(logits)]


def test_params_validation() -> None:
    assert SamplingParams(temperature=0.0).greedy
    for bad in (
        {"temperature": -0.1},
        {"temperature": math.nan},
        {"top_p": 0.0},
        {"top_p": 1.01},
        {"top_p": math.inf},
    ):
        with pytest.raises(ConfigError):
            SamplingParams(**bad)
    assert issubclass(ConfigError, FlopnetError)


def test_noise_is_deterministic_and_keyed() -> None:
    a = gumbel_noise(42, 7, 1000)
    assert a.dtype == torch.float32 and a.shape == (1000,)
    assert torch.isfinite(a).all()
    assert torch.equal(a, gumbel_noise(42, 7, 1000))
    assert not torch.equal(a, gumbel_noise(43, 7, 1000))
    assert not torch.equal(a, gumbel_noise(42, 8, 1000))
    # A prefix of a larger draw: the vocabulary size does not reseed.
    assert torch.equal(a[:100], gumbel_noise(42, 7, 100))
    # Huge and negative seeds are fine; nonsense is a ConfigError.
    assert gumbel_noise(2**200, 0, 8).shape == (8,)
    assert gumbel_noise(-5, 0, 8).shape == (8,)
    with pytest.raises(ConfigError):
        gumbel_noise(2**300, 0, 8)
    with pytest.raises(ConfigError):
        gumbel_noise(1, -1, 8)
    # Standard Gumbel: mean is the Euler-Mascheroni constant, variance pi^2/6.
    big = gumbel_noise(1, 0, 200_000).double()
    assert abs(big.mean().item() - 0.5772) < 0.02
    assert abs(big.var().item() - math.pi**2 / 6) < 0.05


def test_sample_is_deterministic_and_seed_dependent() -> None:
    logits = _logits(64, 500, scale=1.0)
    a = _sample_all(logits, 5, PARAMS)
    assert a == _sample_all(logits, 5, PARAMS)
    assert a != _sample_all(logits, 6, PARAMS)


@settings(max_examples=40, deadline=None)
@given(
    logits=st.lists(st.floats(-20, 20, allow_nan=False), min_size=1, max_size=50),
    seed=st.integers(0, 2**64 - 1),
    position=st.integers(0, 10_000),
)
def test_greedy_is_argmax(logits: list[float], seed: int, position: int) -> None:
    x = torch.tensor(logits)
    tok = sample_token(x, seed, position, SamplingParams(temperature=0.0, top_p=0.5))
    assert tok == int(torch.argmax(x))


@settings(max_examples=80, deadline=None)
@given(
    logits=st.lists(
        st.floats(-8, 8, allow_nan=False).map(lambda v: round(v, 1)), min_size=1, max_size=40
    ),
    seed=st.integers(0, 2**32),
    position=st.integers(0, 5000),
    temperature=st.floats(0.1, 2.0),
    top_p=st.floats(0.05, 1.0),
)
def test_top_p_restricts(
    logits: list[float], seed: int, position: int, temperature: float, top_p: float
) -> None:
    """A token outside the top-p set is never sampled (rounded logits make ties common)."""
    params = SamplingParams(temperature=temperature, top_p=top_p)
    x = torch.tensor(logits)
    tok = sample_token(x, seed, position, params)
    probs = torch.softmax(x / temperature, dim=-1)
    mass_above = probs[probs > probs[tok]].sum().item()
    assert mass_above < top_p + 1e-6
    # The honest token always passes replay, whatever the ties.
    check = replay_sampling(x[None], [tok], seed, params, start_position=position, tolerance=0.0)
    assert check.mismatches == 0


def test_small_top_p_keeps_only_the_top_token() -> None:
    logits = _logits(50, 200, scale=2.0)
    toks = _sample_all(logits, 3, SamplingParams(temperature=1.0, top_p=1e-6))
    assert toks == logits.argmax(dim=1).tolist()


def test_sampling_follows_the_distribution() -> None:
    """Gumbel-max over the top-p set samples from the renormalised top-p distribution."""
    x = torch.tensor([2.0, 1.0, 0.5, -3.0])
    params = SamplingParams(temperature=1.0, top_p=0.9)
    n = 3000
    counts = torch.zeros(4)
    for i in range(n):
        counts[sample_token(x, 11, i, params)] += 1
    p = torch.softmax(x, dim=0)  # 0.61, 0.22, 0.14, 0.003: the top-p set is {0, 1, 2}
    assert counts[3] == 0
    expected = p[:3] / p[:3].sum()
    assert torch.allclose(counts[:3] / n, expected, atol=0.03)


def test_replay_honest_tokens_pass() -> None:
    logits = _logits(200, 1000, seed=1)
    toks = _sample_all(logits, 99, PARAMS)
    check = replay_sampling(logits, toks, 99, PARAMS)
    assert check == ReplayCheck(checked=200, mismatches=0, mismatch_positions=())
    # Exact logits pass with zero tolerance, too.
    assert replay_sampling(logits, toks, 99, PARAMS, tolerance=0.0).mismatches == 0


def test_replay_random_tokens_fail() -> None:
    logits = _logits(200, 1000, seed=1)
    gen = torch.Generator().manual_seed(5)
    toks = torch.randint(0, 1000, (200,), generator=gen).tolist()
    check = replay_sampling(logits, toks, 99, PARAMS)
    assert check.mismatches > 190
    assert set(check.mismatch_positions) <= set(range(200))
    # Honest tokens replayed under another seed fail too, unless the distribution is so peaked
    # that every seed picks the argmax (hence the flat logits here).
    flat = _logits(200, 1000, seed=1, scale=0.5)
    honest = _sample_all(flat, 99, PARAMS)
    assert replay_sampling(flat, honest, 100, PARAMS).mismatches > 180


def test_replay_tolerates_small_logit_noise() -> None:
    logits = _logits(200, 1000, seed=2)
    toks = _sample_all(logits, 7, PARAMS)
    gen = torch.Generator().manual_seed(3)
    noisy = logits + (torch.rand(logits.shape, generator=gen) * 2 - 1) * 1e-3
    assert replay_sampling(noisy, toks, 7, PARAMS).mismatches == 0


def test_replay_flags_substituted_tokens_at_their_positions() -> None:
    logits = _logits(100, 300, seed=4)
    toks = _sample_all(logits, 1, PARAMS)
    forged = list(toks)
    for i in (3, 50, 97):
        # The least likely token: outside the top-p set.
        forged[i] = int(logits[i].argmin())
    check = replay_sampling(logits, forged, 1, PARAMS)
    assert check.mismatch_positions == (3, 50, 97)
    assert check.mismatch_rate == pytest.approx(0.03)


def test_replay_greedy_and_top_p_one() -> None:
    logits = _logits(64, 128, seed=6)
    greedy = SamplingParams(temperature=0.0)
    toks = _sample_all(logits, 0, greedy)
    assert replay_sampling(logits, toks, 0, greedy).mismatches == 0
    shifted = [(t + 1) % 128 for t in toks]
    assert replay_sampling(logits, shifted, 0, greedy).mismatches > 55
    full = SamplingParams(temperature=1.0, top_p=1.0)
    toks = _sample_all(logits, 8, full)
    assert replay_sampling(logits, toks, 8, full).mismatches == 0


def test_replay_chunks_and_offsets_agree() -> None:
    logits = _logits(70, 64, seed=8)
    toks = _sample_all(logits, 21, PARAMS)
    toks[10] = (toks[10] + 1) % 64
    whole = replay_sampling(logits, toks, 21, PARAMS, tolerance=0.0)
    chunked = replay_sampling(logits, toks, 21, PARAMS, tolerance=0.0, chunk_rows=16)
    assert whole == chunked
    tail = replay_sampling(logits[32:], toks[32:], 21, PARAMS, tolerance=0.0, start_position=32)
    assert tail.mismatch_positions == tuple(p for p in whole.mismatch_positions if p >= 32)


def test_replay_bad_inputs() -> None:
    logits = _logits(4, 16)
    with pytest.raises(ProofError):
        replay_sampling(logits, [1, 2, 3], 0, PARAMS)
    with pytest.raises(ProofError):
        replay_sampling(logits[0], [1], 0, PARAMS)
    with pytest.raises(ConfigError):
        replay_sampling(logits, [1, 2, 3, 4], 0, PARAMS, tolerance=-1.0)
    # Out-of-vocabulary ids are mismatches, not crashes.
    toks = _sample_all(logits, 0, PARAMS)
    toks[1], toks[2] = -1, 16
    assert replay_sampling(logits, toks, 0, PARAMS).mismatch_positions == (1, 2)
    assert replay_sampling(logits[:0], [], 0, PARAMS) == ReplayCheck(0, 0, ())
    with pytest.raises(ConfigError):
        sample_token(torch.zeros(0), 0, 0, PARAMS)


def test_shortfalls_are_zero_for_sampled_tokens_and_inf_outside_the_set() -> None:
    logits = _logits(24, 50, seed=8)
    tokens = _sample_all(logits, 99, PARAMS)
    shortfalls = replay_shortfalls(logits, tokens, 99, PARAMS)
    assert shortfalls.shape == (24,) and bool((shortfalls == 0).all())
    # The least likely token is outside the 0.95 nucleus at any tolerance.
    worst = [int(row.argmin()) for row in logits]
    outside = replay_shortfalls(logits, worst, 99, PARAMS)
    assert bool(torch.isinf(outside).all())
    # Another in-set token has a finite shortfall that a large enough tolerance accepts.
    second = [int(row.topk(2).indices[1]) for row in logits]
    near = replay_shortfalls(logits, second, 99, PARAMS)
    finite = near[torch.isfinite(near)]
    assert finite.numel() > 0 and bool((finite > 0).any())
    loose = replay_check(near.tolist(), float(finite.max()))
    assert loose.mismatches == int(torch.isinf(near).sum())
    assert loose.max_shortfall == pytest.approx(float(finite.max()))


def test_replay_sampling_is_replay_check_of_shortfalls() -> None:
    logits = _logits(40, 64, seed=12)
    tokens = _sample_all(logits, 5, PARAMS)
    tokens[3] = (tokens[3] + 1) % 64
    tokens[17] = (tokens[17] + 7) % 64
    direct = replay_sampling(logits, tokens, 5, PARAMS, tolerance=0.05, start_position=10)
    via = replay_check(
        replay_shortfalls(logits, tokens, 5, PARAMS, start_position=10).tolist(),
        0.05,
        start_position=10,
    )
    assert direct == via
    assert replay_check([], 0.1) == ReplayCheck(0, 0, (), 0.0)
    assert replay_check([float("nan"), 0.0], 0.1).mismatch_positions == (0,)
