"""GDSolver (Ashok et al., IJCAI-22): the regression time/cost protocol, ``gdsolver_regression``.

The official "k epochs then one solve" protocol on the synthetic tasks (3 inputs, 2 outputs, the
official 3-2-2 ReLU net): GDSolver = k epochs of SGD then one LP solve of the last layer, against
SGD for 2k epochs (and for k: the solve's own contribution); test MSE and L1 and the training
time. Paper: 31.5 % lower MSE in 48 % less time (abstract).

**Budget**: the paper's steps are the official time/cost sweep's at our k (1-15 epochs there; k
= 7 here) on its 1000 training points at batch 32, so ``budget`` is 100 % at ``paper`` and
``cpu`` scale. **Mechanism check**: the hybrid's rows are "untested: solves kept in k of n seeds
(a of b solves)" when more than half of the seeds kept no solve (:func:`.gdsolver_common.checked`):
the hybrid is then "SGD for k epochs", and the row would compare k with 2k SGD epochs.
**Time** is per-process CPU seconds (``train_cpu_seconds``) when every evaluation has it, else
wall seconds, labelled so (:func:`.pht.time_key`).
"""

from __future__ import annotations

import math
import statistics

import torch

from ..problems import get_problem
from .core import (
    Context,
    Experiment,
    Outcome,
    PaperNumber,
    analysed_trial,
    analysis_of,
    compare,
    final_value,
    mean_or_nan,
    register,
)
from .gdsolver_common import PAPER, budget_of, checked, steps_of

# task -> the official w_range (data.py): the box is ±w_range/2. toy_affine is the identity
# task once targets are standardised (problems.py), so it is not run twice.
TASKS = {"toy_identity_mlp": 0.1, "toy_polynomial_mlp": 10.0, "toy_formula_mlp": 100.0}
REG_K = {"paper": 7, "cpu": 7, "smoke": 1}   # official time/cost sweep: 1-15 epochs
REG_LR = 0.1                                 # official time/cost sweep: lr in {0.01, 0.1}
# the paper's budget: the official sweep's k (REG_K["paper"]) epochs on its 1000 training points
# (data.py) at batch 32 (the toy problems' and the official loaders' train batch)
PAPER_REG_STEPS = REG_K["paper"] * math.ceil(1000 / 32)


def _l1_analysis(prob):
    def analyse(model, method, data) -> dict:
        model.eval()
        with torch.no_grad():
            out = model(data.x_test)
        err = out - data.y_test
        return {"test_l1": float(err.abs().mean()), "test_mse": float((err ** 2).mean())}
    return analyse


def run_regression(ctx: Context) -> list[Outcome]:
    scale = ctx.scale
    k = REG_K[scale]
    rows: dict[tuple[str, str], list] = {}
    for seed in range(ctx.seeds):
        for task, w_range in TASKS.items():
            prob = get_problem(task)
            # the published preset with the official regression changes of this protocol (all
            # points, L1, the solution kept only if validation MSE falls; see `changes`)
            hyb = {"preset": "published", "selection": "all", "keep_worse": False,
                   "optimizer": "sgd", "lr": REG_LR, "radius": w_range / 2, "patience": 10_000,
                   "solves_per_run": 0, "solve_every": k, "max_solves": 1, "time_limit": 30.0}
            for label, method, hp, ep in (("gd_2k", "sgd", {"lr": REG_LR}, 2 * k),
                                          ("gd_k", "sgd", {"lr": REG_LR}, k),
                                          ("hybrid", "gdsolver", hyb, k)):
                rows.setdefault((task, label), []).append(analysed_trial(
                    ctx, prob, method, hp, seed, _l1_analysis(prob), ep, label))
    what = "value and direction" if scale == "paper" else "direction and size"
    out: list[Outcome] = []

    def get(task, label, key):
        return [float(analysis_of(r.events).get(key, math.nan)) if r.status == "finished"
                else math.nan for r in rows[(task, label)]]

    from .pht import time_key  # here: importing pht at the top would register it first

    every = [r for rs in rows.values() for r in rs]
    tkey, tlabel = time_key(every)

    def secs(task, label):
        return [final_value(r, tkey) for r in rows[(task, label)]]

    def hyb(tasks):   # per seed: the hybrid's trials of these tasks (the mechanism check)
        return [[rows[(t, "hybrid")][i] for t in tasks] for i in range(ctx.seeds)]

    budget = budget_of(steps_of(rows[(next(iter(TASKS)), "hybrid")]), PAPER_REG_STEPS)

    rel_mse, rel_time = [], []
    for task in TASKS:
        h, g = get(task, "hybrid", "test_mse"), get(task, "gd_2k", "test_mse")
        v, p = compare(h, g, False)
        v, why = checked(v, f"{what}: hybrid's test MSE < SGD's at twice the epochs (SGD: "
                         f"{mean_or_nan(g):.4g}), one-sided Welch p={p:.3g}", hyb([task]))
        out.append(Outcome("gdsolver_regression", f"test MSE, {task}: {k} epochs + 1 solve vs "
                           f"{2 * k} epochs of SGD", "lower (−31.5 % on average)", "abstract",
                           h, "MSE", scale, v, why, budget))
        hl, gl = get(task, "hybrid", "test_l1"), get(task, "gd_2k", "test_l1")
        v, p = compare(hl, gl, False)
        v, why = checked(v, f"hybrid's test L1 < SGD's at {2 * k} epochs ({mean_or_nan(gl):.4g}),"
                         f" one-sided Welch p={p:.3g}", hyb([task]))
        out.append(Outcome("gdsolver_regression", f"test L1, {task}: hybrid vs {2 * k} epochs",
                           None, "official time/cost experiment (reports L1; no number known)",
                           hl, "L1", scale, v, why, budget))
        gk = get(task, "gd_k", "test_mse")
        out.append(Outcome("gdsolver_regression", f"test MSE, {task}: SGD {k} epochs (no "
                           "solve)", None, "–", gk, "MSE", scale, "reference only",
                           "the hybrid's own GD part: what the one solve adds"))
        rel_mse.append([_rel(a, b) for a, b in zip(h, g)])
        rel_time.append([_rel(a, b) for a, b in zip(secs(task, "hybrid"), secs(task, "gd_2k"))])
    per_seed_mse = [_mean_col(rel_mse, i) for i in range(ctx.seeds)]
    per_seed_time = [_mean_col(rel_time, i) for i in range(ctx.seeds)]
    ok = [x for x in per_seed_mse if math.isfinite(x)]
    v = "inconclusive" if len(ok) < 2 else \
        "supported" if all(x < 0 for x in ok) and statistics.fmean(ok) <= -31.5 / 2 else \
        "not supported" if statistics.fmean(ok) >= 0 else "inconclusive"
    v, why = checked(v, f"{what}: lower MSE on average over the {len(TASKS)} tasks, in every "
                     "seed, by at least half the paper's 31.5 %", hyb(list(TASKS)))
    out.append(Outcome("gdsolver_regression", "test MSE change vs SGD at 2k epochs, mean over "
                       "tasks (%)", -31.5, "abstract", per_seed_mse, "%", scale, v, why, budget))
    okt = [x for x in per_seed_time if math.isfinite(x)]
    v = "inconclusive" if len(okt) < 2 else "supported" if all(x < 0 for x in okt) else \
        "not supported"
    v, why = checked(v, f"direction: less training time (steps + solve) in every seed, in "
                     f"{tlabel}", hyb(list(TASKS)))
    out.append(Outcome("gdsolver_regression", "training time change vs SGD at 2k epochs, mean "
                       "over tasks (%)", -48.0, "abstract", per_seed_time, "%", scale, v, why,
                       budget))
    return out


def _rel(a: float, b: float) -> float:
    return 100.0 * (a - b) / b if math.isfinite(a) and math.isfinite(b) and b else math.nan


def _mean_col(table: list[list[float]], i: int) -> float:
    col = [r[i] for r in table if i < len(r) and math.isfinite(r[i])]
    return statistics.fmean(col) if len(col) == len(table) else math.nan



register(Experiment(
    name="gdsolver_regression",
    paper=PAPER,
    measures="regression time/cost protocol: k epochs of SGD then one LP solve of the last "
             "layer vs SGD for 2k epochs on the synthetic tasks (3-2-2 ReLU net): test MSE, "
             "L1 and training time",
    paper_numbers=(PaperNumber("MSE vs GD baselines (%)", -31.5, "abstract"),
                   PaperNumber("training time vs GD baselines (%)", -48.0, "abstract")),
    data={s: "synthetic: x ~ U(-1,1)^3 -> f(x1), f(x2), 1000 train / 200 val / 1000 test; "
             "identity, polynomial, formula (affine = identity once standardised)"
          for s in ("paper", "cpu", "smoke")},
    cost={"paper": "seconds per trial (CPU)", "cpu": "27 trials: measured 15 s wall",
          "smoke": "seconds"},
    changes={"paper": "the solve minimises the L1 error over all training points inside the "
                      "official box (±w_range/2) and is kept only if validation MSE falls (the "
                      "official exact-equality solve on 32 points is infeasible and never "
                      "changes the weights, digest); standardised targets; k = 7, lr 0.1",
             "cpu": "as paper (the tasks are tiny)", "smoke": "k = 1"},
    run=run_regression,
    problems={s: tuple(TASKS) for s in ("paper", "cpu", "smoke")},
    seeds={"paper": 3, "cpu": 3, "smoke": 2},
))
