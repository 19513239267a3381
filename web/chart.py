"""Inline SVG bar charts of credit per day: a pure function of the numbers, no script.

Bar heights are integers of tenths of a pixel, computed with integer arithmetic, because the
browser's checker recomputes them from the signed entries and compares them as text.
"""

from __future__ import annotations

from flopnet.web import units

WIDTH = 720
HEIGHT = 160
PLOT = 140  # pixels of the tallest bar
BASE = 150  # y of the baseline


def _tenths(value: int) -> str:
    return f"{value // 10}.{value % 10}"


def bar_tenths(value: int, peak: int) -> int:
    """A bar's height in tenths of a pixel: ``value / peak`` of the plot, rounded half up."""
    if peak <= 0 or value <= 0:
        return 0
    return (2 * value * PLOT * 10 + peak) // (2 * peak)


def daily_chart(days: list[tuple[int, int]], label: str) -> str:
    """Bars of credited FLOPs per UTC day (oldest left), with the peak and the date range."""
    peak = max((v for _, v in days), default=0)
    slot = WIDTH * 10 // max(1, len(days))  # tenths of a pixel per day
    bars = []
    for i, (day, value) in enumerate(days):
        h = bar_tenths(value, peak)
        title = f"{units.day(day)}: {units.flops(value)}"
        bars.append(
            f'<rect data-k="day" data-day="{day}" data-v="{value}" x="{_tenths(i * slot)}" '
            f'y="{_tenths(BASE * 10 - h)}" width="{_tenths(max(1, slot - 2))}" '
            f'height="{_tenths(h)}"><title>{title}</title></rect>'
        )
    first = units.day(days[0][0]) if days else ""
    last = units.day(days[-1][0]) if days else ""
    return (
        f'<svg class="chart" role="img" aria-label="{label}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" data-chart="daily" data-days="{len(days)}">'
        f'<line x1="0" y1="{BASE}" x2="{WIDTH}" y2="{BASE}" class="axis"/>'
        + "".join(bars)
        + f'<text x="0" y="{HEIGHT - 1}" class="tick">{first}</text>'
        f'<text x="{WIDTH}" y="{HEIGHT - 1}" class="tick end">{last}</text>'
        f'<text x="0" y="9" class="tick">peak {units.flops(peak)}/day</text>'
        "</svg>"
    )
