"""How the report and the console write numbers: short, and "n/a" for a missing figure."""

from __future__ import annotations

import math


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}" if 1e-3 <= abs(value) < 1e5 else f"{value:.2e}"


def count(n: int | float | None) -> str:
    if n is None:
        return "n/a"
    n = float(n)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def duration(seconds: float | None) -> str:
    """`1m05s` under an hour, `2h03m` from an hour on; a negative figure counts as 0."""
    if seconds is None:
        return "n/a"
    h, rem = divmod(int(round(max(seconds, 0))), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
