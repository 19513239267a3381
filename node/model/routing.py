"""Expert routing of a MoE model, recorded: does a validator's prefill pick the experts the
worker's decode picked?

Routing is a discrete choice (top-k over router scores), so the bf16 noise between a decode step
and a prefill row can flip an expert, and the state after that layer then differs by a whole
expert's contribution. :class:`RouterTrace` hooks every router (a module with a ``top_k`` whose
forward returns ``(logits, weights, indices)``, as transformers' DeepSeek-V3 router does) and
keeps the indices of each row; :func:`routing_differences` compares two traces of the same
positions. Used by ``benchmarks/proof_detection.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


def routers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's MoE routers in layer order (empty for a dense model)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if name.endswith("mlp.gate") and hasattr(m, "top_k") and hasattr(m, "num_group")
    ]


@dataclass
class RouterTrace:
    """Expert indices chosen per router, one tensor [rows, top_k] per forward call."""

    calls: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def rows(self, router: str) -> torch.Tensor:
        """Every row this router saw, in call order, each row's experts sorted."""
        parts = self.calls.get(router, [])
        if not parts:
            return torch.empty((0, 0), dtype=torch.long)
        return torch.cat(parts).sort(dim=-1).values


@contextmanager
def trace_routing(model: nn.Module) -> Iterator[RouterTrace]:
    """Record the experts every router of ``model`` picks while the block runs."""
    trace = RouterTrace()
    handles = []
    for name, module in routers(model):
        trace.calls[name] = []

        def hook(_m: nn.Module, _args: Any, out: Any, name: str = name) -> None:
            trace.calls[name].append(out[2].detach().to("cpu").reshape(-1, out[2].shape[-1]))

        handles.append(module.register_forward_hook(hook))
    try:
        yield trace
    finally:
        for h in handles:
            h.remove()


def decode_rows(trace: RouterTrace, router: str, prompt_len: int) -> torch.Tensor:
    """A batch-1 decode's rows for the positions that sampled tokens: the prompt pass's last row,
    then one row per step."""
    parts = trace.calls.get(router, [])
    if not parts:
        return torch.empty((0, 0), dtype=torch.long)
    first = parts[0][prompt_len - 1 : prompt_len]
    return torch.cat([first, *parts[1:]]).sort(dim=-1).values


def prefill_rows(trace: RouterTrace, router: str, prompt_len: int, generated: int) -> torch.Tensor:
    """A prefill's rows for the same positions: prompt_len - 1 onwards, ``generated`` of them."""
    rows = trace.rows(router)
    return rows[prompt_len - 1 : prompt_len - 1 + generated]


@dataclass(frozen=True)
class RoutingDiff:
    """How often decode and prefill routed a (position, layer) to different expert sets."""

    pairs: int  # (position, MoE layer) pairs compared
    differing: int  # pairs whose expert sets differ
    positions_differing: tuple[int, ...]  # positions with a difference in any layer

    @property
    def rate(self) -> float:
        return self.differing / self.pairs if self.pairs else 0.0


def routing_differences(
    decode: RouterTrace, prefill: RouterTrace, prompt_len: int, generated: int
) -> RoutingDiff:
    """Compare a batch-1 decode's routing with a prefill's over the ``generated`` positions."""
    pairs = differing = 0
    positions: set[int] = set()
    for router in decode.calls:
        a = decode_rows(decode, router, prompt_len)[:generated]
        b = prefill_rows(prefill, router, prompt_len, generated)
        n = min(len(a), len(b))
        if n == 0:
            continue
        diff = (a[:n] != b[:n]).any(dim=-1)
        pairs += n
        differing += int(diff.sum())
        positions.update(int(i) for i in diff.nonzero().flatten())
    return RoutingDiff(pairs, differing, tuple(sorted(positions)))
