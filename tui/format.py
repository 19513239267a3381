"""Numbers and times as the screens print them (pure)."""

from __future__ import annotations

LEVEL_STYLE = {
    "ok": "bold green",
    "busy": "bold cyan",
    "idle": "bold yellow",
    "warn": "bold yellow",
    "error": "bold red",
}
LEVEL_MARK = {"ok": "✔", "warn": "!", "error": "✘", "busy": "…", "idle": "·"}


def flops(value: float | int | None) -> str:
    """FLOPs with an SI prefix: ``8.90 G``."""
    if value is None:
        return "-"
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{int(value)}"


def size(value: float | int | None) -> str:
    """Bytes in binary units: ``12.3 GiB``."""
    if value is None:
        return "-"
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{int(value)} B"


def ago(timestamp: float | None, now: float) -> str:
    """How long ago: ``12s``, ``4m``, ``3h``, ``2d``."""
    if not timestamp:
        return "-"
    seconds = max(0.0, now - timestamp)
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= scale:
            return f"{int(seconds // scale)}{unit}"
    return f"{int(seconds)}s"


def short_peer(peer_id: str, keep: int = 6) -> str:
    """A peer id shortened to its start and end: ``12D3Ko…k9XyZa``."""
    if len(peer_id) <= 2 * keep + 1:
        return peer_id
    return f"{peer_id[:6]}…{peer_id[-keep:]}"


def number(value: float | int | None, digits: int = 3) -> str:
    """A measured value: integers as they are, others with ``digits`` significant digits."""
    if value is None:
        return "-"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.{digits}g}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


_BARS = "▁▂▃▄▅▆▇█"


def spark(values: list[float], width: int, top: float | None = None) -> str:
    """The last ``width`` values as a text sparkline (``top`` is the full bar; default the
    largest value); padded on the left so it keeps its width."""
    tail = [max(0.0, float(v)) for v in values[-width:]]
    if not tail:
        return " " * width
    high = top if top is not None else max(tail)
    if high <= 0:
        return " " * (width - len(tail)) + _BARS[0] * len(tail)
    bars = "".join(_BARS[min(len(_BARS) - 1, int(v / high * (len(_BARS) - 1) + 0.5))] for v in tail)
    return " " * (width - len(tail)) + bars
