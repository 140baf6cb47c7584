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
- ``seconds_to_target``: AlgoPerf's time to target on the *validation* split (test beside it):
  training seconds at the first evaluation whose metric reaches ``target``. The clock
  (:func:`trial_clock`): the process's CPU seconds (``train_cpu_seconds``, which other jobs on
  a shared machine cannot inflate; the runner measures them at the threads it records) when
  every evaluation row of the trial has them, else wall seconds (``train_seconds``: a store
  older than CPU time). ``set_target`` sets that target from baseline runs: for each baseline
  the worst seed's best validation metric (every seed reached it), then the median over the
  baselines.
- ``loss_auc``: the mean training loss over the evaluations of epochs 1..E (the normalised area
  under the training-loss curve), what "lowers the loss faster per epoch" is tested on.
- ``diverged_value``: what a diverged seed counts as: its untrained network's value (epoch 0).
- ``seeds_for_power``: seeds per arm for a two-sample test to detect a difference ``margin`` at
  spread ``sd`` (normal approximation): n = 2 (z_{1-alpha/2} + z_{power})^2 sd^2 / margin^2.

>>> seconds_to_target([{"epoch": 0, "train_seconds": 0.0, "val_metric": 0.1},
...                    {"epoch": 1, "train_seconds": 2.5, "val_metric": 0.9}], 0.8, True)
(2.5, 1.0)
>>> set_target([[0.90, 0.92], [0.80, 0.95], [0.85]], higher_is_better=True)
0.85
>>> seeds_for_power(0.005, 0.01)
4
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

from ..problems import Problem


def time_to_target(problem: Problem, evals: list[dict]) -> tuple[float, float]:
    """(training seconds, epochs) at the first evaluation reaching the problem's fixed *test*
    target ``problem.target``; ``(inf, inf)`` if it is never reached."""
    return seconds_to_target(evals, problem.target, problem.higher_is_better, "test_metric")


CPU_CLOCK, WALL_CLOCK = "train_cpu_seconds", "train_seconds"


def trial_clock(evals: list[dict]) -> str:
    """The clock a trial's times are read on: ``train_cpu_seconds`` when every evaluation row
    has it (a number), else the wall clock ``train_seconds``.

    >>> trial_clock([{"train_seconds": 0.0, "train_cpu_seconds": 0.0}])
    'train_cpu_seconds'
    >>> trial_clock([{"train_seconds": 0.0, "train_cpu_seconds": 0.0}, {"train_seconds": 1.0}])
    'train_seconds'
    """
    if evals and all(isinstance(e.get(CPU_CLOCK), int | float) for e in evals):
        return CPU_CLOCK
    return WALL_CLOCK


def seconds_to_target(evals: list[dict], target: float, higher_is_better: bool,
                      key: str = "val_metric", clock: str | None = None
                      ) -> tuple[float, float]:
    """(training seconds, epochs) at the first evaluation whose ``key`` reaches ``target``
    (>= for accuracy, <= for MSE); ``(inf, inf)`` if none does. ``clock``: the row key of the
    seconds (default :func:`trial_clock`: CPU seconds when every row has them, else wall)."""
    clock = clock or trial_clock(evals)
    for e in evals:
        v = e.get(key)
        if v is not None and math.isfinite(v) and (
                v >= target if higher_is_better else v <= target):
            return float(e[clock]), float(e["epoch"])
    return math.inf, math.inf


def loss_auc(evals: list[dict], epochs: int) -> float:
    """The normalised area under the training-loss curve: the mean over epochs 1..``epochs`` of
    the training loss evaluated after that epoch. An epoch without a finite evaluation (a run
    that diverged before it, or at it) counts at the initial (epoch-0) loss; ``inf`` without a
    finite initial loss.

    >>> loss_auc([{"epoch": 0, "train_loss": 2.0}, {"epoch": 1, "train_loss": 1.0},
    ...           {"epoch": 2, "train_loss": 0.5}], 2)
    0.75
    >>> loss_auc([{"epoch": 0, "train_loss": 2.0}, {"epoch": 1, "train_loss": 1.0}], 3)
    1.6666666666666667
    """
    start = evals[0].get("train_loss") if evals and evals[0].get("epoch") == 0 else None
    if start is None or not math.isfinite(start) or epochs < 1:
        return math.inf
    by_epoch = {e["epoch"]: e.get("train_loss") for e in evals}
    vals = [by_epoch.get(k) for k in range(1, epochs + 1)]
    return statistics.fmean(float(v) if v is not None and math.isfinite(v) else float(start)
                            for v in vals)


def set_target(best_by_baseline: Sequence[Sequence[float]], higher_is_better: bool) -> float:
    """The time-to-target target from baseline runs: per baseline (a list of per-seed best
    validation metrics) the worst seed's value, then the median over the baselines."""
    worst = [(min(v) if higher_is_better else max(v)) for v in best_by_baseline if len(v)]
    if not worst:
        raise ValueError("set_target needs at least one baseline run")
    return float(statistics.median(worst))


def diverged_value(evals: list[dict], key: str, fallback: float) -> float:
    """What a diverged seed counts as for ``key``: the value at its first evaluation (epoch 0,
    the untrained network: chance-level accuracy, the initial loss); ``fallback`` (the metric's
    worst) when that is missing or not finite."""
    v = evals[0].get(key) if evals and evals[0].get("epoch", 0) == 0 else None
    return float(v) if v is not None and math.isfinite(v) else float(fallback)


def seeds_for_power(sd: float, margin: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Seeds per arm for a two-sided two-sample test at level ``alpha`` to detect a difference
    ``margin`` with probability ``power`` when each seed's spread is ``sd`` (at least 2)."""
    from scipy import stats

    if margin <= 0 or sd < 0:
        raise ValueError(f"need margin > 0 and sd >= 0, got margin={margin}, sd={sd}")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return max(2, math.ceil(2 * (z * sd / margin) ** 2))


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
