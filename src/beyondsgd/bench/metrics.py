"""Benchmark metrics computed from stored results only.

- ``mean_ci``: mean, standard deviation and a two-sided 95% confidence interval (Student t).
- ``performance_profile``: AlgoPerf-style profiles. For problem p and method m let t[p, m] be
  m's time to target (median training seconds over seeds; ``inf`` if never reached). The ratio
  r[p, m] = t[p, m] / min_m' t[p, m'] (``inf`` if m never reached it, or nobody did). The profile
  rho_m(tau) = fraction of problems with r[p, m] <= tau, for tau in [1, tau_max]. The score is
  the normalised integral (1 / (tau_max - 1)) * int_1^tau_max rho_m(tau) dtau, in [0, 1]: 1 means
  fastest on every problem, 0 means never within tau_max of the fastest.
- ``relative_step_cost``: seconds per step of each method divided by SGD's on the same problem,
  from the same store (so measured in the same run / on the same machine).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

from .problems import Problem


def time_to_target(problem: Problem, evals: list[dict]) -> tuple[float, float]:
    """(training seconds, epochs) at the first evaluation reaching the problem's test target;
    ``(inf, inf)`` if it is never reached."""
    for e in evals:
        v = e.get("test_metric")
        if v is not None and math.isfinite(v) and problem.reached(v):
            return float(e["train_seconds"]), float(e["epoch"])
    return math.inf, math.inf


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, std, ci_low, ci_high) of the finite values; NaNs when there are none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return (math.nan,) * 4
    m = statistics.fmean(vals)
    if len(vals) == 1:
        return m, 0.0, math.nan, math.nan
    s = statistics.stdev(vals)
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, len(vals) - 1) * s / math.sqrt(len(vals))
    return m, s, m - half, m + half


def profile_ratios(times: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """times[problem][method] -> ratio to the fastest method on that problem."""
    out: dict[str, dict[str, float]] = {}
    for problem, by_method in times.items():
        finite = [t for t in by_method.values() if math.isfinite(t)]
        best = min(finite) if finite else math.inf
        out[problem] = {}
        for m, t in by_method.items():
            if not math.isfinite(t) or not math.isfinite(best):
                out[problem][m] = math.inf
            elif best <= 0:
                out[problem][m] = 1.0 if t <= 0 else math.inf
            else:
                out[problem][m] = t / best
    return out


def performance_profile(times: dict[str, dict[str, float]], tau_max: float = 4.0,
                        n_points: int = 301) -> tuple[np.ndarray, dict[str, np.ndarray],
                                                      dict[str, float]]:
    """(taus, rho per method, normalised integral per method) over the problems in ``times``.

    A method missing from a problem counts as never reaching the target there.
    """
    if tau_max <= 1:
        raise ValueError(f"tau_max must be > 1, got {tau_max}")
    ratios = profile_ratios(times)
    methods = sorted({m for by in times.values() for m in by})
    problems = list(times)
    taus = np.linspace(1.0, tau_max, n_points)
    rho, score = {}, {}
    for m in methods:
        r = np.array([ratios[p].get(m, math.inf) for p in problems], float)
        rho[m] = (r[None, :] <= taus[:, None]).mean(axis=1) if len(problems) else \
            np.zeros_like(taus)
        score[m] = float(np.trapezoid(rho[m], taus) / (tau_max - 1.0))
    return taus, rho, score


def relative_step_cost(sec_per_step: dict[str, dict[str, float]], reference: str = "sgd"
                       ) -> dict[str, dict[str, float]]:
    """sec_per_step[problem][method] / sec_per_step[problem][reference]."""
    out = {}
    for p, by in sec_per_step.items():
        ref = by.get(reference)
        out[p] = {m: (v / ref if ref and math.isfinite(v) else math.nan) for m, v in by.items()}
    return out
