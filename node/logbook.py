"""The daemon's recent log lines in memory, for the API's ``/logs`` and the TUI's Logs screen.

A logging handler keeps the last lines (any thread may log; a lock guards the buffer) and
numbers them, so the daemon can hand new ones to the event stream from its own thread
(:meth:`LogBook.since`). :func:`select` filters by level and text (pure).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

KEEP = 2000
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_MESSAGE = 2000


@dataclass(frozen=True)
class LogLine:
    seq: int
    at: float
    level: str
    logger: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class LogBook(logging.Handler):
    """Keeps the last ``keep`` log records as :class:`LogLine`."""

    def __init__(self, keep: int = KEEP, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._lines: deque[LogLine] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._seq = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        with self._lock:
            self._seq += 1
            self._lines.append(
                LogLine(
                    self._seq, record.created, record.levelname, record.name, message[:MAX_MESSAGE]
                )
            )

    def lines(self) -> list[LogLine]:
        with self._lock:
            return list(self._lines)

    def since(self, seq: int) -> list[LogLine]:
        """Lines numbered after ``seq``."""
        with self._lock:
            return [line for line in self._lines if line.seq > seq]


def select(
    lines: Iterable[LogLine], *, level: str = "DEBUG", text: str = "", limit: int = 200
) -> list[LogLine]:
    """The last ``limit`` lines at ``level`` or above whose logger or message holds ``text``
    (case-insensitive)."""
    floor = LEVELS.index(level) if level in LEVELS else 0
    needle = text.lower()
    out = [
        line
        for line in lines
        if _rank(line.level) >= floor
        and (not needle or needle in line.message.lower() or needle in line.logger.lower())
    ]
    return out[-limit:] if limit > 0 else []


def _rank(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else 0
