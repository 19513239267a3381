"""Human forms of the numbers a page shows, computed with integers only.

The browser's checker (``static/verify.js``) formats the same values with the same rules
(BigInt arithmetic), and a page whose text differs from the formatted value is reported as
tampered, so these functions must never depend on float rounding.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

_PREFIXES = ("", "k", "M", "G", "T", "P", "E", "Z", "Y")


def _round_div(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up (both non-negative)."""
    return (2 * numerator + denominator) // (2 * denominator)


def human(value: int, unit: str) -> str:
    """Three significant digits and an SI prefix: ``1.23 PFLOP``, ``12.3 kFLOP``, ``999 FLOP``."""
    if value < 0:
        return "-" + human(-value, unit)
    if value < 1000:
        return f"{value} {unit}"
    power = 1
    while power + 1 < len(_PREFIXES) and value >= 1000 ** (power + 1):
        power += 1
    while True:
        base = 1000**power
        whole = value // base
        decimals = 2 if whole < 10 else 1 if whole < 100 else 0
        scaled = _round_div(value * 10**decimals, base)
        if scaled < 1000 or power + 1 == len(_PREFIXES):
            break
        if decimals > 0:  # 9.996 rounds to 10.00: one decimal fewer keeps 3 digits
            scaled = _round_div(value * 10 ** (decimals - 1), base)
            decimals -= 1
            if scaled < 1000:
                break
        power += 1  # 999.6 rounds to 1000: the next prefix
    text = str(scaled)
    if decimals:
        text = text[:-decimals] + "." + text[-decimals:]
    return f"{text} {_PREFIXES[power]}{unit}"


def flops(value: int) -> str:
    """FLOPs in human units."""
    return human(value, "FLOP")


def flops_per_day(value: int) -> str:
    """A rate of FLOPs per day in human units."""
    return human(value, "FLOP") + "/day"


def count(value: int) -> str:
    """An integer with thousands separators: ``1,234,567``."""
    return f"{value:,}"


def percent(numerator: int, denominator: int) -> str:
    """``numerator / denominator`` as a percentage with one decimal, or ``-`` for 0/0."""
    if denominator <= 0:
        return "-"
    tenths = _round_div(1000 * numerator, denominator)
    return f"{tenths // 10}.{tenths % 10}%"


def utc(timestamp: float) -> str:
    """A Unix time as ``2026-12-02 13:45:07 UTC`` (whole seconds, rounded down)."""
    moment = datetime.datetime.fromtimestamp(int(timestamp // 1), datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def day(day_number: int) -> str:
    """A UTC day (days since the epoch) as ``2026-12-02``."""
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day_number)).isoformat()


FORMATS: dict[str, Callable[[Any], str]] = {
    "flop": lambda v: flops(int(v)),
    "rate": lambda v: flops_per_day(int(v)),
    "int": lambda v: count(int(v)),
    "time": lambda v: utc(float(v)),
    "day": lambda v: day(int(v)),
    "text": str,
}
