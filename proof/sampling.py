"""Seeded Gumbel-max sampling and its replay check.

The worker samples token ``i`` of a generation as the argmax, over the top-p set, of
``logits / temperature + g`` where ``g`` is Gumbel noise that depends only on (lease seed, i).
That is exact sampling from the renormalised top-p distribution, yet fully determined by the
seed, so a validator holding its own prefill logits can check every token: it must lie in the
top-p set and have (close to) the best score. Slack on both checks absorbs the small differences
between the worker's decode-time logits and the validator's prefill logits (bf16, batching).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flopnet.proof.measures import DEFAULT_TOLERANCE, ReplayCheck, replay_check
from flopnet.protocol.errors import ConfigError, ProofError

_NOISE_DOMAIN = b"flopnet/gumbel-noise/v1"
# Keeps log(-log(u)) finite; the extremes it cuts off have probability ~1e-12 per draw.
_U_EPS = 1e-12

# Probability mass by which the top-p boundary may move between decode and prefill logits.
DEFAULT_TOP_P_SLACK = 0.01


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters of a network (from its manifest). ``temperature == 0`` is greedy."""

    temperature: float = 0.6
    top_p: float = 0.95

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be finite and >= 0, got {self.temperature!r}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _generator_seed(seed: int, position: int) -> int:
    if position < 0:
        raise ConfigError(f"position must be >= 0, got {position}")
    try:
        seed_bytes = int(seed).to_bytes(32, "big", signed=True)
    except OverflowError:
        raise ConfigError("sampling seed does not fit in 256 bits") from None
    digest = hashlib.sha256(
        _NOISE_DOMAIN + seed_bytes + int(position).to_bytes(8, "big", signed=False)
    ).digest()
    return int.from_bytes(digest[:8], "big")


def gumbel_noise(seed: int, position: int, vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise for one position, float32 ``[vocab_size]`` on the CPU.

    Uniforms come from torch's CPU Mersenne Twister in float64 (a serial, ISA-independent kernel)
    and the double log is rounded to float32 once, so every machine gets the same bits.
    """
    if vocab_size <= 0:
        raise ConfigError(f"vocab_size must be positive, got {vocab_size}")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_generator_seed(seed, position))
    u = torch.rand(vocab_size, dtype=torch.float64, generator=gen)
    u = u.clamp_(_U_EPS, 1.0 - _U_EPS)
    return (-torch.log(-torch.log(u))).to(torch.float32)


def _top_p_keep(probs_sorted: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask (in sorted order) of the smallest prefix whose mass reaches ``top_p``; >= 1 token."""
    before = torch.cumsum(probs_sorted, dim=-1) - probs_sorted
    keep = before < top_p
    keep[..., 0] = True
    return keep


def sample_token(logits: torch.Tensor, seed: int, position: int, params: SamplingParams) -> int:
    """Sample one token from ``logits`` ([vocab]) with the seeded Gumbel-max rule.

    ``position`` is the index of the token within the generation (0-based).
    """
    if logits.dim() != 1 or logits.numel() == 0:
        raise ConfigError(f"logits must be a non-empty 1-D tensor, got shape {tuple(logits.shape)}")
    x = logits.detach().to(device="cpu", dtype=torch.float32)
    if params.greedy:
        return int(torch.argmax(x).item())
    scaled = x / params.temperature
    scores = scaled + gumbel_noise(seed, position, x.numel())
    if params.top_p < 1.0:
        probs = torch.softmax(scaled, dim=-1)
        # Stable sort: equal probabilities keep index order, the same on every machine.
        sorted_probs, order = torch.sort(probs, descending=True, stable=True)
        keep_sorted = _top_p_keep(sorted_probs, params.top_p)
        keep = torch.zeros_like(keep_sorted).scatter_(0, order, keep_sorted)
        scores = scores.masked_fill(~keep, -math.inf)
    return int(torch.argmax(scores).item())


def _tie_group_bounds(
    sorted_vals: torch.Tensor, cum_before: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sorted entry: mass strictly above its value, and mass above it with ties placed first.

    With ties, a sampler's sort order among equal probabilities is arbitrary, so the mass "before"
    a token can be anything between these two bounds.
    """
    rows, n = sorted_vals.shape
    idx = torch.arange(n).expand(rows, n)
    new_group = torch.ones_like(sorted_vals, dtype=torch.bool)
    new_group[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    start = torch.where(new_group, idx, torch.zeros_like(idx)).cummax(dim=1).values
    end_group = torch.ones_like(new_group)
    end_group[:, :-1] = new_group[:, 1:]
    # Last index of each tie group: reverse running minimum of the group-end positions.
    big = torch.full_like(idx, n)
    end = torch.where(end_group, idx, big).flip(1).cummin(dim=1).values.flip(1)
    return cum_before.gather(1, start), cum_before.gather(1, end)


def replay_sampling(
    logits: torch.Tensor,
    tokens: Sequence[int],
    seed: int,
    params: SamplingParams,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    top_p_slack: float = DEFAULT_TOP_P_SLACK,
    start_position: int = 0,
    chunk_rows: int = 256,
) -> ReplayCheck:
    """Check that each token could have come from the seeded sampler given ``logits`` ([G, vocab]).

    Row ``j`` holds the logits that sampled ``tokens[j]``, generation position
    ``start_position + j``. A token passes when (a) it lies in the top-p set computed with
    ``top_p + top_p_slack`` and (b) its score is at least the best score over the tokens that are
    surely in the set (computed with ``top_p - top_p_slack``) minus ``tolerance``. Scores are
    ``logits / temperature + noise``, or plain logits when greedy. Token ids outside the
    vocabulary and non-finite scores count as mismatches. Pure function of its inputs.
    """
    if tolerance < 0:
        raise ConfigError("tolerance must be >= 0")
    shortfalls = replay_shortfalls(
        logits,
        tokens,
        seed,
        params,
        top_p_slack=top_p_slack,
        start_position=start_position,
        chunk_rows=chunk_rows,
    )
    return replay_check(shortfalls.tolist(), tolerance, start_position=start_position)


def replay_shortfalls(
    logits: torch.Tensor,
    tokens: Sequence[int],
    seed: int,
    params: SamplingParams,
    *,
    top_p_slack: float = DEFAULT_TOP_P_SLACK,
    start_position: int = 0,
    chunk_rows: int = 256,
) -> torch.Tensor:
    """Per token, how far its score falls below the best candidate's: float32 ``[G]``.

    0 when the token is the seeded sampler's choice on these logits; small and positive at
    near-ties that decode/prefill differences flipped; ``inf`` when no tolerance can make it a
    sample (outside the lenient top-p set or the vocabulary, or non-finite scores). See
    :func:`replay_sampling` for the sets and scores.
    """
    if logits.dim() != 2:
        raise ProofError(f"logits must be [G, vocab], got shape {tuple(logits.shape)}")
    g, vocab = logits.shape
    if len(tokens) != g:
        raise ProofError(f"{len(tokens)} tokens for {g} rows of logits")
    if top_p_slack < 0 or chunk_rows <= 0 or start_position < 0:
        raise ConfigError("top_p_slack and start_position must be >= 0, chunk_rows > 0")
    if g == 0:
        return torch.zeros(0, dtype=torch.float32)
    if vocab == 0:
        raise ProofError("logits have an empty vocabulary")

    token_t = torch.tensor([int(t) for t in tokens], dtype=torch.int64)
    in_vocab = (token_t >= 0) & (token_t < vocab)
    safe_tok = torch.where(in_vocab, token_t, torch.zeros_like(token_t))
    shortfall = torch.empty(g, dtype=torch.float32)

    for lo in range(0, g, chunk_rows):
        hi = min(g, lo + chunk_rows)
        x = logits[lo:hi].detach().to(device="cpu", dtype=torch.float32)
        tok = safe_tok[lo:hi].unsqueeze(1)
        if params.greedy:
            scores = x
            candidate = torch.ones_like(x, dtype=torch.bool)
            in_set = torch.ones(hi - lo, dtype=torch.bool)
        else:
            scaled = x / params.temperature
            noise = torch.stack(
                [gumbel_noise(seed, start_position + j, vocab) for j in range(lo, hi)]
            )
            scores = scaled + noise
            if params.top_p < 1.0:
                probs = torch.softmax(scaled, dim=-1)
                sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
                cum_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
                above_min, above_max = _tie_group_bounds(sorted_probs, cum_before)
                # Lenient: some tie order (and a slightly moved boundary) puts it in the set.
                lenient_sorted = above_min < params.top_p + top_p_slack
                # Strict: in the set for every tie order and boundary shift; top token always.
                strict_sorted = above_max < params.top_p - top_p_slack
                strict_sorted[:, 0] = True
                lenient = torch.zeros_like(lenient_sorted).scatter_(1, order, lenient_sorted)
                candidate = torch.zeros_like(strict_sorted).scatter_(1, order, strict_sorted)
                in_set = lenient.gather(1, tok).squeeze(1)
            else:
                candidate = torch.ones_like(x, dtype=torch.bool)
                in_set = torch.ones(hi - lo, dtype=torch.bool)
        best = scores.masked_fill(~candidate, -math.inf).max(dim=1).values
        mine = scores.gather(1, tok).squeeze(1)
        possible = in_set & in_vocab[lo:hi] & torch.isfinite(mine) & torch.isfinite(best)
        shortfall[lo:hi] = torch.where(possible, (best - mine).clamp(min=0), math.inf)
    return shortfall
