"""The tuning protocol (see docs/protocol.md): equal budgets, quasi-random search, seed re-runs.

For every (problem, method), baselines included:

1. **Search space**: the method's hyperparameters declared with ``tune=True`` (a numeric range,
   log-uniform where ``log=True``, or a set of ``choices``). Nothing else is tuned.
2. **Tuning**: the same number ``n_trials`` of settings for every method, drawn from a scrambled
   Halton sequence (``scipy.stats.qmc``) seeded by the method name, so the draws are
   reproducible and independent of which other methods run. Each setting is trained once with
   seed 0 (tag ``tune``) and scored on the *validation* split: the validation metric at the end
   of the budget (what the suite reports is the final test metric); a diverged trial scores
   worst.
3. **Final runs**: the best setting is re-run with seeds ``1..S`` (tag ``final``) and reported on
   the *test* split. The tuning seed is not reused, so the selection does not leak into the
   reported numbers. A claim made at a smaller share of the data (GDSolver at 50 %) adds runs of
   its method's tuned setting at that ``train_fraction`` (same tag and seeds).
4. **Defaults column**: every method at its published/declared defaults, untuned, seeds ``1..S``
   (tag ``defaults``).
5. **Studies** (AlgoPerf's repeated tuning): steps 2-3 may be repeated as ``K`` independent
   studies. Study ``k`` draws its settings with Halton seed ``k`` and re-runs its best setting
   with its own seeds ``k*S+1 .. (k+1)*S`` under tag ``final`` (k = 0) or ``final-sK``; each
   study gets its own claims verdict, the table shows the median verdict and marks a verdict
   that differs between studies as unstable (``claims.py``).

>>> study_tag(0), study_tag(2), study_of("final-s2"), list(final_seeds(1, 3))
('final', 'final-s2', 2, [4, 5, 6])
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from ...methods import get_method_class
from ...methods.base import HParam, resolve_hparams

TUNE_TAG, FINAL_TAG, DEFAULTS_TAG = "tune", "final", "defaults"
#: The tuning check: study 0 tuned again with twice the draws; its tuning runs carry
#: ``TUNING_CHECK_TUNE_TAG`` and its final runs (study 0's seeds) ``TUNING_CHECK_TAG``. The
#: claims table says whether each verdict survives it (not a study: ``study_of`` gives None).
TUNING_CHECK_TAG, TUNING_CHECK_TUNE_TAG = "final-x2", "tune-x2"

#: The standard optimizers every paper method is compared with (the ones AlgoPerf and DeepOBS
#: ship as baselines); claims' time-to-target targets are set over their tuned runs.
BASELINES = ("sgd", "momentum", "adam", "adamw", "adagrad", "adadelta", "rmsprop")


def study_tag(study: int) -> str:
    """Tag of study ``study``'s final runs: ``final`` for study 0 (so a one-study store is the
    classic layout), ``final-s<k>`` after."""
    if study < 0:
        raise ValueError(f"study must be >= 0, got {study}")
    return FINAL_TAG if study == 0 else f"{FINAL_TAG}-s{study}"


def study_of(tag: str) -> int | None:
    """The study whose final runs carry ``tag``; None for any other tag."""
    if tag == FINAL_TAG:
        return 0
    head, _, k = tag.rpartition("-s")
    return int(k) if head == FINAL_TAG and k.isdigit() and int(k) > 0 else None


def final_seeds(study: int, n: int) -> range:
    """Seeds of study ``study``'s ``n`` final runs: ``study*n+1 .. (study+1)*n`` (never 0, the
    tuning seed; disjoint across studies, so the studies are independent replications)."""
    return range(study * n + 1, (study + 1) * n + 1)


def search_space(method: str) -> list[HParam]:
    """The method's tuned hyperparameters (``tune=True``)."""
    return [h for h in get_method_class(method).hparams if h.tune]


def _scale(h: HParam, u: float) -> Any:
    if h.choices is not None:
        return h.choices[min(int(u * len(h.choices)), len(h.choices) - 1)]
    if h.low is None or h.high is None:
        raise ValueError(f"tuned hyperparameter {h.name!r} needs low/high or choices")
    if h.log:
        v = math.exp(math.log(h.low) + u * (math.log(h.high) - math.log(h.low)))
    else:
        v = h.low + u * (h.high - h.low)
    if h.type is int:
        return int(round(v))
    return float(f"{v:.4g}")  # readable labels; 4 significant digits is plenty for a search


def _method_seed(method: str, seed: int) -> int:
    return int(hashlib.sha256(f"{method}:{seed}".encode()).hexdigest()[:8], 16)


def sample_configs(method: str, n: int, seed: int = 0,
                   fixed: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``n`` settings of ``method``'s search space from a scrambled Halton sequence.

    ``fixed`` hyperparameters are added to every setting (e.g. a problem-specific override).
    A method with an empty search space gets its defaults (once: ``n`` copies would be wasted).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    space = search_space(method)
    fixed = dict(fixed or {})
    if not space:
        return [fixed]
    from scipy.stats import qmc

    sampler = qmc.Halton(d=len(space), scramble=True, seed=_method_seed(method, seed))
    points = sampler.random(n)
    configs = []
    for row in points:
        cfg = {h.name: _scale(h, float(u)) for h, u in zip(space, row)}
        cfg.update(fixed)
        resolve_hparams(get_method_class(method), cfg)  # validate
        configs.append(cfg)
    return configs


@dataclass
class Scored:
    hparams: dict[str, Any]
    score: float  # validation metric, oriented so that higher is better
    status: str


def validation_score(evals: list[dict], higher_is_better: bool, status: str) -> float:
    """Validation metric at the end of the budget, oriented so that higher is better; ``-inf``
    for a diverged or empty trial.

    The *final* value, not the best over epochs: the suite reports final test metrics, and a
    setting that peaks early and then overfits (seen on diabetes_mlp) must not win the tuning.
    """
    if status != "finished" or len(evals) < 2:
        return -math.inf
    v = evals[-1].get("val_metric")
    if v is None or not math.isfinite(v):
        return -math.inf
    return v if higher_is_better else -v


def pick_best(scored: list[Scored]) -> Scored:
    """The best-scoring setting; ties go to the earliest drawn (deterministic)."""
    if not scored:
        raise ValueError("no tuning trials to pick from")
    return max(enumerate(scored), key=lambda t: (t[1].score, -t[0]))[1]
