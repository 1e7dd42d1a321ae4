"""The statistics the lab's tables, verdicts and conclusion tests share: means with bootstrap intervals over seeds,
separations measured against the seed spread, and log-log growth exponents."""

from __future__ import annotations

import math
import random
import statistics


EPS = 1e-3  # floor of an error before taking its log (a zero error would have log = -inf)
CI_LEVEL = 0.9  # the bootstrap intervals' coverage
BOOTSTRAP_DRAWS = 2000


def unit(run: dict) -> tuple[int, int]:
    """What one run is a replicate of: (teacher seed, student seed). Runs of a lab with one teacher have no
    ``teacher_seed`` key (read as 0)."""
    return run.get("teacher_seed", 0), run["seed"]


def present(values) -> list:
    return [v for v in values if v is not None]


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that are not None (std 0 for one value; None, None for none)."""
    values = present(values)
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean(values) -> float | None:
    return mean_std(values)[0]


def bootstrap_ci(values, level: float = CI_LEVEL, draws: int = BOOTSTRAP_DRAWS, seed: int = 0):
    """Percentile bootstrap interval of the mean: the (1 − level)/2 and (1 + level)/2 quantiles of the means of
    ``draws`` resamples (with replacement, a generator seeded with ``seed``). It lies inside [min, max] of the values,
    so an error rate's interval never goes below 0. One value: (v, v); none: (None, None)."""
    values = present(values)
    if not values:
        return None, None
    if len(values) == 1 or len(set(values)) == 1:
        return values[0], values[0]
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(draws))
    lo = means[int((1 - level) / 2 * (draws - 1))]
    hi = means[int(math.ceil((1 + level) / 2 * (draws - 1)))]
    return lo, hi


def num(value, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, ``"n/a"`` for None."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt(values, digits: int = 3) -> str:
    """``"mean [lo, hi]"``: the mean of ``values`` and its bootstrap interval (``"n/a"`` when there is none; the mean
    alone for one value)."""
    values = present(values)
    if not values:
        return "n/a"
    m = statistics.mean(values)
    if len(values) == 1:
        return f"{m:.{digits}f}"
    lo, hi = bootstrap_ci(values)
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def spread(*groups) -> float:
    """Pooled sample standard deviation of the groups (each around its own mean); 0 when no group has two values."""
    ss, dof = 0.0, 0
    for g in groups:
        g = present(g)
        if len(g) > 1:
            m = statistics.mean(g)
            ss += sum((v - m) ** 2 for v in g)
            dof += len(g) - 1
    return math.sqrt(ss / dof) if dof else 0.0


def separation(high, low) -> tuple[float, float]:
    """``(mean(high) − mean(low), pooled spread)``: how far apart two sets of per-seed values are, and the seed
    spread to measure that distance against."""
    return mean(high) - mean(low), spread(high, low)


def clearly_above(high, low, k: float = 2.0, floor: float = 0.0) -> bool:
    """mean(high) exceeds mean(low) by more than ``k`` pooled seed spreads and by more than ``floor``."""
    gap, s = separation(high, low)
    return gap > max(floor, k * s)


def paired_gap(high, low) -> tuple[float, float, int]:
    """Per-seed differences high − low (pairs with a None left out): ``(mean, sample std, n)``."""
    diffs = [h - lo for h, lo in zip(high, low, strict=True) if h is not None and lo is not None]
    m, s = mean_std(diffs)
    return m, s, len(diffs)


def clearly_above_paired(high, low, k: float = 2.0, floor: float = 0.0) -> bool:
    """Paired by seed: the mean difference exceeds ``k`` standard errors of the differences (std / √n) and
    ``floor``. Needs two pairs or more."""
    m, s, n = paired_gap(high, low)
    return n >= 2 and m > max(floor, k * s / math.sqrt(n))


def slope(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x), errors floored at EPS."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(y, EPS)) for y in ys]
    mx, my = statistics.mean(lx), statistics.mean(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den if den else float("nan")
