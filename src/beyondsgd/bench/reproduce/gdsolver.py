"""GDSolver (Ashok, Nagisetty, Srinivasa & Ganesh, IJCAI-22): the data-efficiency sweep and the
regression time/cost protocol, on the official code's models.

``gdsolver_mnist_data`` / ``gdsolver_cifar_data``: the data-efficiency claim (abstract, §5: "the
highest accuracy of all compared methods while using 50 % of the training data the GD baselines
need") on the official MNIST model (``model.py`` ``MNISTModel``: conv4x4(3)-ReLU-Linear
1875->10) and CIFAR-10 "Deep" model (``CIFAR10ModelDeep``). Baselines at equal epochs: SGD at the
official baselines' lr 0.05 (``train.py``), Adam at 1e-3 (the official runs used 0.05 for Adam
too and collapsed to 10-70 %, see the digest; 1e-3 is Adam's usual rate, so the "best baseline"
is a fair one). GDSolver runs the paper's recipe, the method's ``preset="published"``
(``GDSolverMethod.published_defaults``): SGD lr 0.05 inside, the box ±0.05, a solve at a
plateau (patience 2, official) and at the end of each half of the run — the official two-phase
schedule "[GD phase, solve, GD phase, solve]" (``data_scarcity_experiment.py``) — at most two.
Two solver rules: the official ones (``gdsolver_official``: the first 32 misclassified points,
+5 % of them made correct, every solution kept) and ours (``gdsolver``: the points nearest to
changing class in a box fitted to them, each solution kept only when the validation accuracy
rises). Solves are bounded by work (nodes, HiGHS limit checks), not seconds, so the trials
replay on any machine. SGD+LRS (ReduceLROnPlateau) is not a method of this library and is left
out.

``gdsolver_regression``: the official "k epochs then one solve" protocol on the synthetic tasks
(3 inputs, 2 outputs, the official 3-2-2 ReLU net): GDSolver = k epochs of SGD then one LP solve
of the last layer, against SGD for 2k epochs (and for k: the solve's own contribution); test MSE
and L1 and the training time. Paper: 31.5 % lower MSE in 48 % less time (abstract).

The GDSolver recipe (solves after each half of the run) and a relative change::

    >>> _gd_hp(20, 60.0, 600.0)["preset"], _gd_hp(20, 60.0, 600.0)["box"], _rel(0.5, 1.0)
    ('published', 'fit', -50.0)
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

PAPER = "GDSolver (Ashok et al., IJCAI 2022)"
SGD_LR = 0.05        # official train.py: GD baselines and the hybrid's GD at lr 0.05
ADAM_LR = 1e-3       # not the official 0.05 (collapsed), see the module docstring
RADIUS = 0.05        # official w_range 0.1 for the MNIST/CIFAR models: a box of ±0.05
MARGIN = 0.5         # points of accuracy: "GDSolver at 50 % >= best baseline at 100 % - 0.5"


def _gd_hp(epochs: int, time_limit: float, solver_seconds: float) -> dict:
    """GDSolver in the paper's recipe (``preset="published"``: SGD 0.05, radius 0.05, patience 2,
    a solve after each half, at most two) with our solver rules (:data:`OUR_RULES`)."""
    return {"preset": "published", **OUR_RULES, "time_limit": time_limit,
            "solver_seconds": solver_seconds}


# The official code's solver rules are the published preset's (evaluation.py
# get_incorrect_subset, data_scarcity_experiment.py milp_train): the first 32 misclassified
# training points, at least +5 % of them made correct, every solution kept (no validation check).
# Ours, beside them: the points nearest to changing class in a box fitted to them, each solution
# kept only when the validation accuracy rises.
OUR_RULES = {"selection": "margin", "n_points": -1, "box": "fit", "min_gain": 0.0,
             "keep_worse": False}


def _official_hp(time_limit: float, solver_seconds: float) -> dict:
    """The published preset as it is: the official recipe and solver rules."""
    return {"preset": "published", "time_limit": time_limit, "solver_seconds": solver_seconds}


# ---- data efficiency --------------------------------------------------------------------------
# scale -> (problem, epochs, fractions of the training set, the fraction that is "100 %",
#           time limit per solve, solver seconds per trial)
DATA = {
    "gdsolver_mnist_data": {
        "paper": ("mnist_gdsolver", 20, (5 / 55, 10 / 55, 20 / 55, 0.5, 1.0), 1.0, 60.0, 600.0),
        "cpu": ("fmnist_gdsolver_cpu", 4, (0.25, 0.5, 1.0), 1.0, 30.0, 120.0),
        "smoke": ("smoke_gdsolver", 2, (0.5, 1.0), 1.0, 10.0, 20.0),
    },
    "gdsolver_cifar_data": {
        "paper": ("cifar10_gdsolver_deep", 20, (0.2, 0.4, 0.5, 1.0), 1.0, 60.0, 600.0),
        "cpu": ("fmnist_gdsolver_deep_cpu", 4, (0.5, 1.0), 1.0, 30.0, 120.0),
        "smoke": ("smoke_gdsolver", 2, (0.5, 1.0), 1.0, 10.0, 20.0),
    },
}
# Official logs (logs/*_gd_vs_hybrid_metric.csv, the digest's table; test %, the paper's own
# tables are not confirmed): data size -> (SGD, hybrid after last GD, hybrid after last MILP)
OFFICIAL_LOGS = {
    "gdsolver_mnist_data": {"5k": (92.16, 94.21, 89.34), "10k": (93.11, 96.25, 94.95),
                            "20k": (96.64, 96.79, 90.06), "60k": (97.71, 97.72, 97.64)},
    "gdsolver_cifar_data": {"20k": (56.19, 62.74, 62.91), "50k": (67.55, 68.35, 67.55)},
}
BASELINES = {"sgd": ("sgd", {"lr": SGD_LR}), "adam": ("adam", {"lr": ADAM_LR})}


def _pct(r) -> float:
    return 100.0 * final_value(r, "test_metric")


def _solves(rs) -> tuple[int, int]:
    ev = [e for r in rs for e in r.events if e.get("kind") == "milp"]
    return len(ev), sum(bool(e.get("accepted")) for e in ev)


def run_data(name: str):
    def run(ctx: Context) -> list[Outcome]:
        scale = ctx.scale
        pname, epochs, fracs, full, tl, budget = DATA[name][scale]
        prob = get_problem(pname)
        half = full / 2
        acc: dict[tuple[str, float], list[float]] = {}
        runs: dict[tuple[str, float], list] = {}
        for seed in range(ctx.seeds):
            for f in sorted(set(fracs) | {half, full}):
                for label, (method, hp) in BASELINES.items():
                    if f not in (full, half) and label != "sgd":
                        continue   # the sweep's other sizes: SGD and GDSolver only
                    r = ctx.trial(prob, method, hp, seed, epochs, tag=f"{label}@{f:.4g}",
                                  train_fraction=f)
                    acc.setdefault((label, f), []).append(_pct(r))
                r = ctx.trial(prob, "gdsolver", _gd_hp(epochs, tl, budget), seed, epochs,
                              tag=f"gdsolver@{f:.4g}", train_fraction=f)
                acc.setdefault(("gdsolver", f), []).append(_pct(r))
                runs.setdefault(("gdsolver", f), []).append(r)
                if f in (half, full):   # the official solver rules, beside ours
                    r = ctx.trial(prob, "gdsolver", _official_hp(tl, budget), seed, epochs,
                                  tag=f"gdsolver_official@{f:.4g}", train_fraction=f)
                    acc.setdefault(("gdsolver_official", f), []).append(_pct(r))
                    runs.setdefault(("gdsolver_official", f), []).append(r)
        what = "value and direction" if scale == "paper" else "direction and size"
        best = max(BASELINES, key=lambda b: mean_or_nan(acc[(b, full)]))
        out: list[Outcome] = []

        def row(q, paper, src, ours, verdict, why, unit="%"):
            out.append(Outcome(name, q, paper, src, ours, unit, scale, verdict, why))

        v, p = compare(acc[("gdsolver", half)], acc[(best, full)], True, kind="matches",
                       margin=MARGIN)
        row(f"test accuracy, GDSolver with 50 % of the data vs best baseline ({best}) with "
            "100 % (%)", "GDSolver ≥ best baseline", "abstract; §5", acc[("gdsolver", half)], v,
            f"{what}: GDSolver at {half:.3g} of the training set ≥ {best} at {full:.3g} minus "
            f"{MARGIN} point ({best}: {mean_or_nan(acc[(best, full)]):.2f} %), "
            f"non-inferiority p={p:.3g}")
        v, p = compare(acc[("gdsolver_official", half)], acc[(best, full)], True,
                       kind="matches", margin=MARGIN)
        row("test accuracy, GDSolver with the official solver rules (first 32 misclassified "
            "points, every solution kept), 50 % of the data (%)", "GDSolver ≥ best baseline",
            "abstract; §5; official data_scarcity_experiment.py", acc[("gdsolver_official",
                                                                      half)], v,
            f"{what}: as the row above with the official code's solver rules, "
            f"non-inferiority p={p:.3g}")
        v, p = compare(acc[("gdsolver", full)], acc[(best, full)], True, kind="matches",
                       margin=MARGIN)
        row("test accuracy, GDSolver with 100 % of the data (%)", "highest of all methods",
            "abstract; §5", acc[("gdsolver", full)], v,
            f"{what}: GDSolver ≥ the best baseline ({best}) at equal data minus {MARGIN} point, "
            f"non-inferiority p={p:.3g}")
        for f in sorted(set(fracs) | {half, full}):
            for label in ("gdsolver", "gdsolver_official", *BASELINES):
                if (label, f) not in acc:
                    continue
                paper, src = _paper_point(OFFICIAL_LOGS[name], label, f / full, name)
                row(f"test accuracy, {label} with {f / full:.0%} of the data (%)", paper, src,
                    acc[(label, f)], "reference only", "the sweep (all at equal epochs)")
        per_seed = []
        for seed in range(ctx.seeds):
            per_seed.append(float(_solves([rs[seed] for (lab, _), rs in runs.items()
                                           if lab == "gdsolver" and len(rs) > seed])[1]))
        n, k = _solves([r for (lab, _), rs in runs.items() if lab == "gdsolver" for r in rs])
        row("solver steps kept per seed (our GDSolver's trials of the seed)", None, "–",
            per_seed, "reference only", f"{k} of {n} solves kept (kept only when validation "
            "accuracy rises; the official rules keep every one)", unit="solves")
        return out
    return run


def _paper_point(logs: dict, label: str, rel: float, name: str) -> tuple[float | None, str]:
    """The official log's number at the matching data size (None when there is none)."""
    sizes = {"gdsolver_mnist_data": {1.0: "60k", 20 / 55: "20k", 10 / 55: "10k", 5 / 55: "5k"},
             "gdsolver_cifar_data": {1.0: "50k", 0.4: "20k"}}[name]
    key = next((v for k, v in sizes.items() if abs(k - rel) < 1e-6), None)
    if key is None or label == "adam" or key not in logs:
        return None, "–"
    sgd, _, after_milp = logs[key]
    if label.startswith("gdsolver"):   # our runs end with a solve: the after-last-MILP column
        return after_milp, f"official logs, {key} (hybrid after its last MILP)"
    return sgd, f"official logs, {key}"


# ---- regression: k epochs then one solve ------------------------------------------------------
# task -> the official w_range (data.py): the box is ±w_range/2. toy_affine is the identity
# task once targets are standardised (problems.py), so it is not run twice.
TASKS = {"toy_identity_mlp": 0.1, "toy_polynomial_mlp": 10.0, "toy_formula_mlp": 100.0}
REG_K = {"paper": 7, "cpu": 7, "smoke": 1}   # official time/cost sweep: 1-15 epochs
REG_LR = 0.1                                 # official time/cost sweep: lr in {0.01, 0.1}


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

    def secs(task, label):
        return [final_value(r, "train_seconds") for r in rows[(task, label)]]

    rel_mse, rel_time = [], []
    for task in TASKS:
        h, g = get(task, "hybrid", "test_mse"), get(task, "gd_2k", "test_mse")
        v, p = compare(h, g, False)
        out.append(Outcome("gdsolver_regression", f"test MSE, {task}: {k} epochs + 1 solve vs "
                           f"{2 * k} epochs of SGD", "lower (−31.5 % on average)", "abstract",
                           h, "MSE", scale, v, f"{what}: hybrid's test MSE < SGD's at twice the "
                           f"epochs (SGD: {mean_or_nan(g):.4g}), one-sided Welch p={p:.3g}"))
        hl, gl = get(task, "hybrid", "test_l1"), get(task, "gd_2k", "test_l1")
        v, p = compare(hl, gl, False)
        out.append(Outcome("gdsolver_regression", f"test L1, {task}: hybrid vs {2 * k} epochs",
                           None, "official time/cost logs report L1 (no number in the digest)",
                           hl, "L1", scale, v, f"hybrid's test L1 < SGD's at {2 * k} epochs "
                           f"({mean_or_nan(gl):.4g}), p={p:.3g}"))
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
    out.append(Outcome("gdsolver_regression", "test MSE change vs SGD at 2k epochs, mean over "
                       "tasks (%)", -31.5, "abstract", per_seed_mse, "%", scale, v,
                       f"{what}: lower MSE on average over the {len(TASKS)} tasks, in every "
                       "seed, by at least half the paper's 31.5 %"))
    okt = [x for x in per_seed_time if math.isfinite(x)]
    v = "inconclusive" if len(okt) < 2 else "supported" if all(x < 0 for x in okt) else \
        "not supported"
    out.append(Outcome("gdsolver_regression", "training time change vs SGD at 2k epochs, mean "
                       "over tasks (%)", -48.0, "abstract", per_seed_time, "%", scale, v,
                       "direction: less training time (steps + solve) in every seed; seconds "
                       "on a shared machine, ±30 %"))
    return out


def _rel(a: float, b: float) -> float:
    return 100.0 * (a - b) / b if math.isfinite(a) and math.isfinite(b) and b else math.nan


def _mean_col(table: list[list[float]], i: int) -> float:
    col = [r[i] for r in table if i < len(r) and math.isfinite(r[i])]
    return statistics.fmean(col) if len(col) == len(table) else math.nan


_FM = "Fashion-MNIST instead of {} (1x28x28 inputs{}); "
register(Experiment(
    name="gdsolver_mnist_data",
    paper=PAPER,
    measures="data efficiency on the official MNIST model (conv4x4(3), Linear 1875->10): "
             "test accuracy vs training-set size; GDSolver at 50 % vs the best GD baseline at "
             "100 %",
    paper_numbers=(
        PaperNumber("GDSolver with 50 % of the data vs best baseline with 100 %", "≥",
                    "abstract; §5"),
        PaperNumber("official logs, MNIST 10k: hybrid vs SGD (%)", "96.25 vs 93.11",
                    "official logs (digest)"),
        PaperNumber("official logs, MNIST 60k: hybrid vs SGD (%)", "97.72 vs 97.71",
                    "official logs (digest)"),
    ),
    data={"paper": "MNIST, 5k/10k/20k/27.5k/55k of the 55000 training images",
          "cpu": "Fashion-MNIST subset 20000 / 1000 / 5000 (train / validation / test); 25, "
                 "50 and 100 % of its training images",
          "smoke": "synthetic 1x28x28 images (200/64/64)"},
    cost={"paper": "GPU or CPU: the model is tiny; ~20 epochs x 13 trials per seed",
          "cpu": "3 seeds x 10 trials x 4 epochs: measured 218 s wall in three runs "
                 "(docs/reproduce_papers.md)",
          "smoke": "seconds"},
    changes={"paper": "Adam at 1e-3 (official 0.05 collapsed); no SGD+LRS; fixed 20 epochs, no "
                      "early stop; the published preset (at most two solves, at plateaus and "
                      "after each half); beside the official solver rules ours (the points "
                      "nearest to changing class in a fitted box, a solution kept only if "
                      "validation accuracy rises); HiGHS bounded by work instead of Gurobi",
             "cpu": _FM.format("MNIST", "") + "a 20000-image training subset ('100 %'), 4 "
                    "epochs instead of 20 (solves after epochs 2 and 4 or at plateaus, at "
                    "most two)",
             "smoke": "synthetic data, 2 epochs"},
    run=run_data("gdsolver_mnist_data"),
    problems={s: (v[0],) for s, v in DATA["gdsolver_mnist_data"].items()},
    seeds={"paper": 3, "cpu": 3, "smoke": 2},
))

register(Experiment(
    name="gdsolver_cifar_data",
    paper=PAPER,
    measures="data efficiency on the official CIFAR-10 'Deep' model (3 conv + fc500): GDSolver "
             "at 50 % of the data vs the best GD baseline at 100 %",
    paper_numbers=(
        PaperNumber("GDSolver with 50 % of the data vs best baseline with 100 %", "≥",
                    "abstract; §5"),
        PaperNumber("official logs, CIFAR 20k: hybrid vs SGD (%)", "62.74 vs 56.19",
                    "official logs (digest)"),
        PaperNumber("official logs, CIFAR 50k: hybrid vs SGD (%)", "68.35 vs 67.55",
                    "official logs (digest)"),
    ),
    data={"paper": "CIFAR-10, 10k/20k/25k/50k training images",
          "cpu": "Fashion-MNIST subset 8000 / 500 / 2000 (train / validation / test); 50 % "
                 "and 100 % of its training images",
          "smoke": "synthetic 1x28x28 images (200/64/64), the MNIST model"},
    cost={"paper": "GPU: 20 epochs x 10 trials per seed",
          "cpu": "3 seeds x 8 trials x 4 epochs: measured 546 s wall in three runs "
                 "(docs/reproduce_papers.md)",
          "smoke": "seconds"},
    changes={"paper": "as gdsolver_mnist_data (Adam 1e-3, no SGD+LRS, acceptance check, HiGHS)",
             "cpu": _FM.format("CIFAR-10", ": the Deep model's FC layer has 576 inputs, not "
                               "1024") + "'100 %' is an 8000-image subset, 4 epochs instead "
                    "of 20 (solves after epochs 2 and 4 or at plateaus, at most two)",
             "smoke": "synthetic data and the small MNIST model (the Deep model is the cpu "
                      "scale's)"},
    run=run_data("gdsolver_cifar_data"),
    problems={s: (v[0],) for s, v in DATA["gdsolver_cifar_data"].items()},
    seeds={"paper": 3, "cpu": 3, "smoke": 2},
))

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
