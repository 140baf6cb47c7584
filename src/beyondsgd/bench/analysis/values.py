"""The per-seed values the claims are judged on, read from a store's final runs.

:func:`collect` gives, for each (problem, method, train fraction) among the trials of one tag,
one value per seed of every quantity. **A diverged or collapsed seed counts** (it is never
dropped): its test/validation metric and training loss are those of its untrained network (the
epoch-0 evaluation of the same trial: chance level for accuracy, the initial MSE; where that is
missing, the metric's worst value: accuracy 0, MSE and loss inf), and it never reaches the
target. A seed is collapsed when it learnt nothing (:func:`mechanism.is_collapsed`: status
``collapsed``, or an older store's ``finished`` trial ending at or above its initial loss).

**Time to target** (AlgoPerf's convention): training seconds until the *validation* metric first
reaches the problem's target (test beside it), ``inf`` if never. Seconds are the process's CPU
seconds where every evaluation row of the trial has them (``train_cpu_seconds``: a shared,
loaded machine cannot inflate them; the runner records its thread count), else wall seconds
(:func:`metrics.trial_clock`); wall seconds are collected beside them
(``wall_seconds_to_target``), and a verdict reads CPU seconds only when every seed of every arm
has them.

**The target** (:func:`targets`) is set from the tuned baselines (``protocol.BASELINES``) of the
same study: for each baseline, the worst seed's *best* validation metric over its epochs (a
level every seed of it reached), then the median over the baselines. It is a target that is
reached **late**: it is a best value, so the baseline whose worst seed sets it reaches it at or
near the end of its budget (a tuned baseline improves until its budget ends), and a method is
faster only if it gets there before the tuned baselines' own end. Collapsed baseline seeds do
not set it (their best is no level a tuned baseline reaches); with no baseline runs, the
problem's fixed target is used.

**Per-epoch speed** (``train_loss_auc``, :func:`metrics.loss_auc`): the mean training loss over
the evaluations of epochs 1..E, E the trial's epochs (the normalised area under the
training-loss curve), an epoch after a divergence at the initial loss.
"""

from __future__ import annotations

import math
from collections import defaultdict

from ..problems import PROBLEMS
from ..protocol import BASELINES, FINAL_TAG, study_of
from ..store import DONE_STATUSES, Store
from .mechanism import is_collapsed, solves
from .metrics import (
    CPU_CLOCK,
    WALL_CLOCK,
    diverged_value,
    loss_auc,
    seconds_to_target,
    set_target,
    trial_clock,
)


class Values(dict):
    """``collect``'s result: ``{(problem, method, train_fraction): {quantity: per-seed list}}``
    with ``targets`` (the time-to-target target per problem) and ``study``."""

    targets: dict[str, float]
    study: int = 0


def targets(store: Store, tag: str = FINAL_TAG) -> dict[str, float]:
    """Validation target per problem from the tuned baselines' ``tag`` runs (module docstring);
    problems without baseline runs get their fixed ``Problem.target``."""
    best: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in store.trials(tag=tag):
        if (t["method"] in BASELINES and t["train_fraction"] == 1.0 and t["problem"] in PROBLEMS
                and t["status"] in ("finished", "diverged")):
            evals = store.evals(t["id"])
            if is_collapsed(t, evals):
                continue
            best[t["problem"]][t["method"]].append(
                _best_val(evals, PROBLEMS[t["problem"]].higher_is_better))
    out = {name: p.target for name, p in PROBLEMS.items()}
    for p, by_method in best.items():
        out[p] = set_target(list(by_method.values()), PROBLEMS[p].higher_is_better)
    return out


def _best_val(evals: list[dict], higher_is_better: bool) -> float:
    vals = [e["val_metric"] for e in evals[1:]
            if e.get("val_metric") is not None and math.isfinite(e["val_metric"])]
    if not vals:
        return -math.inf if higher_is_better else math.inf
    return max(vals) if higher_is_better else min(vals)


def collect(store: Store, tag: str = FINAL_TAG) -> Values:
    """Per-seed values of each (problem, method, train fraction) among the done ``tag`` trials,
    diverged and collapsed seeds counted (module docstring). Quantities: test_metric,
    val_metric, train_loss, train_loss_auc, seconds_to_target and test_seconds_to_target (CPU
    seconds where the trial has them, else wall), wall_seconds_to_target and
    wall_test_seconds_to_target, cpu_clock (1.0 when the seconds are CPU seconds), threads (nan
    when unrecorded), diverged and collapsed (1.0 or 0.0), epochs (the trial's budget), solves
    and accepted_solves (MILP events), seed."""
    tg = targets(store, tag)
    out = Values()
    out.targets, out.study = tg, study_of(tag) or 0
    for t in store.trials(tag=tag):
        if t["problem"] not in PROBLEMS or t["status"] not in DONE_STATUSES:
            continue
        prob = PROBLEMS[t["problem"]]
        hib = prob.higher_is_better
        evals = store.evals(t["id"])
        d = out.setdefault((t["problem"], t["method"], t["train_fraction"]), defaultdict(list))
        div = t["status"] == "diverged"
        coll = not div and is_collapsed(t, evals)
        worst = prob.metric_range[0] if hib else math.inf
        clock = trial_clock(evals)
        if div or coll:
            d["test_metric"].append(diverged_value(evals, "test_metric", worst))
            d["val_metric"].append(diverged_value(evals, "val_metric", worst))
            d["train_loss"].append(diverged_value(evals, "train_loss", math.inf))
            for k in ("", "test_", "wall_", "wall_test_"):
                d[k + "seconds_to_target"].append(math.inf)
        else:
            d["test_metric"].append(t["final_test_metric"])
            d["val_metric"].append(t["final_val_metric"])
            d["train_loss"].append(t["final_train_loss"])
            for prefix, c in (("", clock), ("wall_", WALL_CLOCK)):
                for split in ("val", "test"):
                    d[prefix + ("test_" if split == "test" else "") + "seconds_to_target"].append(
                        seconds_to_target(evals, tg[prob.name], hib, f"{split}_metric", c)[0])
        d["train_loss_auc"].append(loss_auc(evals, t["epochs"]))
        d["cpu_clock"].append(1.0 if clock == CPU_CLOCK else 0.0)
        threads = evals[0].get("threads") if evals else None
        d["threads"].append(float(threads) if isinstance(threads, int | float) else math.nan)
        d["diverged"].append(1.0 if div else 0.0)
        d["collapsed"].append(1.0 if coll else 0.0)
        d["epochs"].append(float(t["epochs"]))
        n, k = solves(store.events(t["id"]))
        d["solves"].append(float(n))
        d["accepted_solves"].append(float(k))
        d["seed"].append(float(t["seed"]))
    return out
