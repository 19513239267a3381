"""A sample's text while it is generated: decoded a few tokens at a time, sent now and then.

The model process decodes one token per row per step; the contributor's TUI shows the output as
it grows. :class:`IncrementalText` turns a growing token sequence into text deltas (a token may
be half of a character or merge with the next one, so a delta is cut only where the text is
complete), and :class:`OutputStream` gathers them per row and hands them on at most every
``every_s`` seconds, so a long batch costs a few small messages a second, not one per token.
Pure apart from the clock; no torch here (the daemon imports :class:`OutputDelta`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Often enough to read as live, rarely enough to cost nothing beside a forward pass.
STREAM_EVERY_S = 0.25
_INCOMPLETE = "\ufffd"  # what a decoder makes of a character cut between two tokens

OutputCallback = Callable[[Sequence["OutputDelta"]], None]


@dataclass(frozen=True)
class OutputDelta:
    """What one row of a generation added since its last delta."""

    row: int  # the request's index in its batch (0 for a single generation)
    tokens: int  # tokens generated so far in this row (eos included)
    text: str  # the text decoded since the previous delta of this row


class IncrementalText:
    """The text of a growing token sequence, as deltas: ``"".join`` of every :meth:`take` and
    the final :meth:`flush` is the decoding of the whole sequence.

    Decodes only the tokens since the last complete cut (plus the ones before it, so that a
    tokenizer that drops a leading space on a fresh slice still agrees), never the whole
    sequence again: the cost of a delta does not grow with the output.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # decoding starts here (context for the tokens after ``_read``)
        self._read = 0  # text up to here has been handed out

    def add(self, token: int) -> None:
        self._ids.append(token)

    def take(self) -> str:
        """The text completed since the last call ("" while a character is still cut)."""
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        now = self._decode(self._ids[self._prefix :])
        if len(now) <= len(before) or now.endswith(_INCOMPLETE):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return now[len(before) :]

    def flush(self) -> str:
        """Whatever is left, complete or not (the sequence has ended)."""
        before = self._decode(self._ids[self._prefix : self._read])
        now = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return now[len(before) :]


class OutputStream:
    """Per-row text deltas of a generation, sent through ``send`` at most every ``every_s``
    seconds (and once more at :meth:`close`). ``skip`` tokens (eos) count but add no text."""

    def __init__(
        self,
        rows: int,
        decode: Callable[[Sequence[int]], str],
        send: OutputCallback,
        *,
        skip: frozenset[int] = frozenset(),
        every_s: float = STREAM_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._texts = [IncrementalText(decode) for _ in range(rows)]
        self._counts = [0] * rows
        self._sent = [0] * rows
        self._send = send
        self._skip = skip
        self._every = every_s
        self._clock = clock
        self._last = clock()

    def on_token(self, row: int, token: int) -> None:
        """The backend sampled ``token`` for ``row`` (called once per token, so kept cheap)."""
        self._counts[row] += 1
        if token not in self._skip:
            self._texts[row].add(token)
        if self._clock() - self._last >= self._every:
            self._emit(final=False)

    def close(self) -> None:
        """The generation ended: send what is left."""
        self._emit(final=True)

    def _emit(self, *, final: bool) -> None:
        self._last = self._clock()
        deltas = []
        for row, text in enumerate(self._texts):
            if self._counts[row] == self._sent[row] and not final:
                continue
            piece = text.flush() if final else text.take()
            if self._counts[row] == self._sent[row] and not piece:
                continue  # nothing new in this row (a final flush of a row already sent)
            self._sent[row] = self._counts[row]
            deltas.append(OutputDelta(row, self._counts[row], piece))
        if deltas:
            self._send(deltas)
