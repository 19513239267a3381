"""A role's counters as the local API shows them (plain JSON values, seconds to the millisecond)."""

from __future__ import annotations

import dataclasses
from typing import Any


def counters(stats: Any, **extra: object) -> dict[str, object]:
    """Every field of a role's stats dataclass, floats rounded, plus ``extra`` values."""
    out: dict[str, object] = {
        name: round(value, 3) if isinstance(value, float) else value
        for name, value in dataclasses.asdict(stats).items()
    }
    out.update(extra)
    return out
