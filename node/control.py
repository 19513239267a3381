"""What a contributor has asked its node to do: pause, finish then pause, a schedule of active
hours, batch size, which GPUs. Pure: callers pass the local time; nothing here reads a clock,
a file or the network (:mod:`flopnet.node.controller` does the I/O).

A schedule lists the hours in which the node works ("22:00-08:00": overnight only); outside
them the node is *paused (schedule)*: it claims nothing new and lets what it holds finish. A
manual pause wins over the schedule, and resuming ends a manual pause only (outside its hours a
scheduled node stays paused).
"""

from __future__ import annotations

import contextlib
import enum
import re
from dataclasses import dataclass, replace
from typing import Any

from flopnet.protocol.errors import ConfigError

MINUTES_PER_DAY = 24 * 60
MAX_WINDOWS = 8
MAX_BATCH_SIZE = 256
MAX_GPUS = 64
_WINDOW = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


class Mode(enum.Enum):
    """The contributor's own choice (the schedule is applied on top of it)."""

    RUNNING = "running"
    FINISHING = "finishing"  # claim nothing new; pause once the work in hand is done
    PAUSED = "paused"


@dataclass(frozen=True)
class Window:
    """Active minutes ``[start, end)`` of a day; ``end <= start`` runs over midnight."""

    start: int
    end: int

    def contains(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    @property
    def text(self) -> str:
        end = "24:00" if self.end == 0 else _hhmm(self.end)  # midnight ends a day
        return f"{_hhmm(self.start)}-{end}"


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


@dataclass(frozen=True)
class Schedule:
    """The node's active hours, in its local time."""

    windows: tuple[Window, ...]

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """``"22:00-08:00"`` or several windows joined by commas; ConfigError says what is
        wrong."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts or len(parts) > MAX_WINDOWS:
            raise ConfigError(
                f"a schedule is 1 to {MAX_WINDOWS} windows like 22:00-08:00, comma-separated"
            )
        windows = []
        for part in parts:
            match = _WINDOW.match(part)
            if match is None:
                raise ConfigError(f"{part!r} is not a window like 22:00-08:00")
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
                raise ConfigError(f"{part!r}: hours are 00-23 (24:00 may end a window)")
            start, end = h1 * 60 + m1, (h2 * 60 + m2) % MINUTES_PER_DAY
            if start == end and h2 != 24:  # 00:00-24:00 is the whole day
                raise ConfigError(f"{part!r} is empty; leave the schedule unset to always work")
            windows.append(Window(start, end))
        return cls(tuple(windows))

    @property
    def text(self) -> str:
        return ",".join(w.text for w in self.windows)

    def allows(self, minute: int) -> bool:
        """Whether the node works at this minute of the day."""
        return any(w.contains(minute % MINUTES_PER_DAY) for w in self.windows)

    def next_change(self, minute: int) -> int:
        """Minutes from ``minute`` until the schedule flips between working and paused."""
        now = self.allows(minute)
        for step in range(1, MINUTES_PER_DAY + 1):
            if self.allows(minute + step) != now:
                return step
        return MINUTES_PER_DAY  # a window covering the whole day never flips


@dataclass(frozen=True)
class Settings:
    """What the contributor chose; persisted in the data directory and shown by the API."""

    mode: Mode = Mode.RUNNING
    schedule: Schedule | None = None
    batch_size: int = 1
    gpus: tuple[int, ...] | None = None  # None: every GPU the machine has

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "schedule": self.schedule.text if self.schedule else None,
            "batch_size": self.batch_size,
            "gpus": list(self.gpus) if self.gpus is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], defaults: Settings) -> Settings:
        """Settings saved by :meth:`to_json`; a field that is missing or invalid keeps its
        default (a damaged file must not keep the node from starting)."""
        out = defaults
        with contextlib.suppress(ValueError):
            out = replace(out, mode=Mode(data.get("mode", out.mode.value)))
        schedule = data.get("schedule")
        if isinstance(schedule, str):
            with contextlib.suppress(ConfigError):
                out = replace(out, schedule=Schedule.parse(schedule))
        elif "schedule" in data and schedule is None:
            out = replace(out, schedule=None)
        size = data.get("batch_size")
        if isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_BATCH_SIZE:
            out = replace(out, batch_size=size)
        gpus = data.get("gpus")
        if gpus is None and "gpus" in data:
            out = replace(out, gpus=None)
        elif isinstance(gpus, list):
            with contextlib.suppress(ConfigError):
                out = replace(out, gpus=check_gpus(gpus, None))
        return out


def check_batch_size(value: object, most: int = MAX_BATCH_SIZE) -> int:
    """A batch size from an untrusted request (ConfigError says why not)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise ConfigError(f"batch_size must be an integer in 1..{most}")
    return value


def check_gpus(value: object, available: int | None) -> tuple[int, ...]:
    """GPU indices from an untrusted request: distinct, sorted, and below ``available`` when
    the number of GPUs is known (None: not checked here)."""
    if not isinstance(value, list | tuple) or not value or len(value) > MAX_GPUS:
        raise ConfigError(f"gpus must be a list of 1 to {MAX_GPUS} GPU indices, or null for all")
    if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in value):
        raise ConfigError("GPU indices are integers >= 0")
    if len(set(value)) != len(value):
        raise ConfigError("GPU indices must be distinct")
    if available is not None:
        if available == 0:
            raise ConfigError("this machine has no GPU that NVML can see")
        missing = [i for i in value if i >= available]
        if missing:
            raise ConfigError(
                f"no GPU {missing[0]}: this machine has {available} (indices 0-{available - 1})"
            )
    return tuple(sorted(value))


@dataclass(frozen=True)
class Effective:
    """Where the node stands now: ``state`` is running, finishing or paused; ``reason`` says
    who paused it (``manual``, ``schedule``, or ``""``); ``why`` is a sentence for people."""

    state: str
    reason: str
    may_claim: bool
    why: str
    next_change_minutes: int | None = None

    @property
    def badge(self) -> str:
        return f"{self.state} ({self.reason})" if self.reason else self.state

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason,
            "badge": self.badge,
            "may_claim": self.may_claim,
            "why": self.why,
            "next_change_minutes": self.next_change_minutes,
        }


def effective(settings: Settings, minute: int) -> Effective:
    """The node's working state at ``minute`` of its local day."""
    if settings.mode is Mode.PAUSED:
        return Effective("paused", "manual", False, "paused by you: resume to work again")
    if settings.mode is Mode.FINISHING:
        return Effective("finishing", "manual", False, "finishing the work in hand, then pausing")
    schedule = settings.schedule
    if schedule is not None:
        change = schedule.next_change(minute)
        at = _hhmm((minute + change) % MINUTES_PER_DAY)
        if not schedule.allows(minute):
            why = f"outside the active hours {schedule.text}: work resumes at {at}"
            return Effective("paused", "schedule", False, why, change)
        why = f"inside the active hours {schedule.text}: pauses at {at}"
        return Effective("running", "", True, why, change)
    return Effective("running", "", True, "working")


def local_minute(struct_time: Any) -> int:
    """The minute of the day of a ``time.localtime()`` result."""
    return int(struct_time.tm_hour) * 60 + int(struct_time.tm_min)
