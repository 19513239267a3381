"""Shared test helpers: where the task data lives."""

from __future__ import annotations

from pathlib import Path

# Third-party task data is never copied into the repo: it sits in ../shared/data beside the
# checkout (on developer machines and in CI alike).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
