"""Confidence intervals of the report: a mean over seeds (Student t, clipped to the metric's
range) and a difference between two settings (Welch t, or paired t over shared seeds).

With one seed, or when every seed gave the same value, there is no interval (NaN ends): a
zero-width interval would claim a certainty that a handful of identical seeds does not give.

>>> m, s, lo, hi = seed_interval([0.9, 0.92, 0.94], (0.0, 1.0))
>>> round(m, 2), round(float(lo), 3), round(float(hi), 3)
(0.92, 0.87, 0.97)
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Sequence

from .metrics import mean_ci

LEVEL = 0.95
CI_METHOD = ("95% CI of the mean over seeds: Student t, clipped to the metric's range (accuracy "
             "[0, 1], MSE [0, inf)); differences: paired t over shared seeds, else Welch t; no "
             "interval for n=1 or identical seeds")


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def seed_interval(values: Sequence[float | None], bounds: tuple[float, float] = (-math.inf,
                  math.inf), level: float = LEVEL) -> tuple[float, float, float, float]:
    """(mean, std, lo, hi) over the finite values: Student t interval of the mean clipped to
    ``bounds``; lo = hi = NaN for n < 2 or when all values are equal (std 0 there; NaN mean and
    std when there is no finite value)."""
    vals = _finite(values)
    m, s, lo, hi = mean_ci(vals, level)
    if len(vals) < 2 or len(set(vals)) == 1:
        return m, (0.0 if vals else math.nan), math.nan, math.nan
    return m, s, max(lo, bounds[0]), min(hi, bounds[1])


def difference_interval(a: Sequence[float | None], b: Sequence[float | None],
                        width: float = math.inf, level: float = LEVEL, paired: bool = False
                        ) -> tuple[float, float, float]:
    """(mean(a) - mean(b), lo, hi), clipped to [-width, width] (``width``: the metric's range).

    Unpaired: Welch's t interval over the finite values (Welch-Satterthwaite degrees of freedom);
    lo = hi = NaN when a side has fewer than 2 values or both are constant. ``paired``: a[i] and
    b[i] share a seed (same initial weights and batch order), so Student's t interval of the
    per-seed differences; lo = hi = NaN for fewer than 2 pairs or constant differences.
    """
    from scipy import stats

    q = lambda df: float(stats.t.ppf(0.5 + level / 2, df))  # noqa: E731
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
        pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None
                 and math.isfinite(x) and math.isfinite(y)]
        if not pairs:
            return math.nan, math.nan, math.nan
        diffs = [x - y for x, y in pairs]
        d = statistics.fmean(diffs)
        # constant differences up to the round-off of the subtraction (a few ulps of the values)
        ulps = 4 * sys.float_info.epsilon * max(max(abs(x), abs(y)) for x, y in pairs)
        if len(diffs) < 2 or max(diffs) - min(diffs) <= ulps:
            return d, math.nan, math.nan
        half = q(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        return d, max(d - half, -width), min(d + half, width)
    a, b = _finite(a), _finite(b)
    if not a or not b:
        return math.nan, math.nan, math.nan
    d = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2 or (len(set(a)) == 1 and len(set(b)) == 1):
        return d, math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = q(df) * math.sqrt(va + vb)
    return d, max(d - half, -width), min(d + half, width)
