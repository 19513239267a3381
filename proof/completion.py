"""Is a generation complete? The check that catches an output cut short.

The seeded sampler and TOPLOC both check tokens that are there; neither notices tokens that are
missing. A worker that stops early (to save compute, or to drop an inconvenient ending) submits
a prefix of an honest generation, whose every token and proof is valid. What gives it away is
how it ends: an honest generation stops only on eos or at the lease's token limit, so

- an output must end with eos, or hold exactly ``max_new_tokens`` tokens;
- eos may appear only as the last token (generation stops at the first one);
- an output never holds more than ``max_new_tokens`` tokens.

A cut that appends a fake eos passes this check but not the sampling replay: the eos at that
position was not what the seeded sampler drew. The check reads only token ids and lease limits,
so it is the same whatever the worker claims as its finish reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flopnet.protocol.errors import ConfigError


@dataclass(frozen=True)
class CompletionCheck:
    """How a generation ends, beside the lease's limit; ``reasons`` is empty when complete."""

    tokens: int
    max_new_tokens: int
    ends_with_eos: bool
    first_eos: int | None  # position of the first eos, if any
    reasons: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.reasons


def check_completion(
    token_ids: Sequence[int], *, eos_id: int, max_new_tokens: int
) -> CompletionCheck:
    """Check that ``token_ids`` ends the way an honest generation ends (pure)."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    n = len(token_ids)
    first_eos = next((i for i, t in enumerate(token_ids) if int(t) == eos_id), None)
    ends_with_eos = n > 0 and int(token_ids[-1]) == eos_id
    reasons: list[str] = []
    if n > max_new_tokens:
        reasons.append(f"{n} tokens > max_new_tokens {max_new_tokens}")
    if first_eos is not None and first_eos != n - 1:
        reasons.append(f"eos at position {first_eos} before the last token (position {n - 1})")
    if not ends_with_eos and n < max_new_tokens:
        reasons.append(
            f"output stops after {n} tokens without eos, short of max_new_tokens {max_new_tokens}"
        )
    return CompletionCheck(
        tokens=n,
        max_new_tokens=max_new_tokens,
        ends_with_eos=ends_with_eos,
        first_eos=first_eos,
        reasons=tuple(reasons),
    )
