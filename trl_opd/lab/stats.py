"""The statistics the lab's tables and verdicts share: mean ± std over seeds and log-log growth exponents."""

from __future__ import annotations

import math
import statistics


EPS = 1e-3  # floor of an error before taking its log (a zero error would have log = -inf)


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that are not None (std 0 for one value; None, None for none)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean(values) -> float | None:
    return mean_std(values)[0]


def fmt(values, digits: int = 3) -> str:
    """``"mean ± std"`` of ``values`` (``"n/a"`` when there is none)."""
    m, s = mean_std(values)
    return "n/a" if m is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def slope(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x), errors floored at EPS."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(y, EPS)) for y in ys]
    mx, my = statistics.mean(lx), statistics.mean(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den if den else float("nan")
