"""GDSolver's small pure pieces: which points go to the solver and how many, which layer it
optimises, when it runs (plateaus, geometric phases) and when its result is kept.

See :mod:`beyondsgd.methods.gdsolver` for the method and ``docs/methods/gdsolver.md`` for the
measurements behind the constants.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

from .highs import CHECK_LIMIT, ITERATION_LIMIT, NODE_LIMIT  # noqa: F401  (work limits, re-exported)

__all__ = [
    "BOXES",
    "OBJECTIVES",
    "SELECTIONS",
    "TASKS",
    "PlateauDetector",
    "backoff_patience",
    "check_n_points",
    "check_selection",
    "default_points",
    "effective_selection",
    "find_head",
    "fit_radius",
    "flip_radius",
    "improves",
    "margins",
    "scheduled",
    "select_points",
    "unwrap_model",
]

SELECTIONS = ("margin", "random", "misclassified", "first", "largest_error", "all")
TASKS = ("classification", "regression")
OBJECTIVES = ("paper", "loss")
# Default points per solve (n_points=-1), from benchmarks/gdsolver_milp_scaling.py: HiGHS's time
# grows with the nonzeros of the problem (one thread): the MILP about 0.3 s per 80k nonzeros on
# digits and mnist1d features, the regression LP about 0.06 s per 36k. Random points, as many as
# keep points * (classes - 1) * width <= MILP_NONZEROS (MILP) or points * outputs * width <=
# REGRESSION_NONZEROS (LP), at least MIN_POINTS; the hinge LP gets LP_POINTS.
MILP_NONZEROS = 75_000
REGRESSION_NONZEROS = 32_768  # 512 points for a 64-wide head: all of diabetes, 512 of friedman
MIN_POINTS, MAX_POINTS = 16, 256
LP_POINTS = 256  # hinge LP (objective="loss", classification): 0.3 s on digits, 3 s on mnist1d
# objective="loss", regression: every point up to this many nonzeros (8192 points of a 64-wide
# head, 2048 of a 256-wide one: 1.5-5 s, well inside the 30 s time limit), else a random sample
LOSS_REGRESSION_NONZEROS = 524_288
BOXES = ("fit", "fixed")
MIN_RADIUS = 1e-12  # box="fit": a point exactly on the boundary would otherwise give radius 0


def default_points(task: str, objective: str, n: int, width: int, outputs: int) -> int:
    """Points per solve when ``n_points=-1`` (auto), for ``n`` training points and a head of
    ``width`` inputs and ``outputs`` outputs (classes): the classification MILP gets
    ``MILP_NONZEROS / ((classes - 1) * width)`` points (clamped to ``[MIN_POINTS,
    MAX_POINTS]``), the hinge LP ``LP_POINTS``, the regression LP
    ``REGRESSION_NONZEROS / (outputs * width)`` (at least ``MIN_POINTS``), or
    ``LOSS_REGRESSION_NONZEROS / (outputs * width)`` with ``objective="loss"``."""
    if task == "regression":
        budget = LOSS_REGRESSION_NONZEROS if objective == "loss" else REGRESSION_NONZEROS
        return min(n, max(MIN_POINTS, budget // max(1, outputs * width)))
    if objective == "loss":
        return min(n, LP_POINTS)
    k = MILP_NONZEROS // max(1, (outputs - 1) * width)
    return min(n, max(MIN_POINTS, min(MAX_POINTS, k)))


# --------------------------------------------------------------------------------------------
# Small pure pieces
# --------------------------------------------------------------------------------------------
def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside its wrappers: ``torch.compile``'s module (``_orig_mod``) and
    ``DistributedDataParallel`` / ``DataParallel`` (``.module``), in any nesting. Its parameters
    are the wrapper's, so a solve through it changes the wrapped model; its forward pass runs
    eagerly, so the head's forward hook sees every call (a compiled graph does not run hooks
    registered after compilation)."""
    for _ in range(16):  # a wrapper of a wrapper of ...: a bounded loop
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            break
    return model


def find_head(model: nn.Module, head: nn.Linear | str | None = None) -> nn.Linear:
    """The final layer the solver optimises: ``head`` (a module or its name in
    ``model.named_modules()``) or, by default, the last ``nn.Linear`` of ``model.modules()``."""
    if isinstance(head, str):
        named = dict(model.named_modules())
        if head not in named:
            lin = [n for n, m in named.items() if isinstance(m, nn.Linear)]
            raise ValueError(f"model has no submodule named {head!r}; nn.Linear submodules: {lin}")
        head = named[head]
    if head is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("GDSolver needs a model whose final layer is an nn.Linear; "
                             f"{type(model).__name__} has no nn.Linear")
        head = linears[-1]
    if not isinstance(head, nn.Linear):
        raise ValueError(f"head must be an nn.Linear, got {type(head).__name__}")
    if not any(m is head for m in model.modules()):
        raise ValueError("head is not a submodule of model")
    if head.bias is None:
        raise ValueError("GDSolver needs the final nn.Linear to have a bias (bias=True)")
    return head


def check_n_points(n_points: Any) -> None:
    """``n_points`` must be -1 (auto) or a positive count; 0 is refused, not read as "all"."""
    if not (isinstance(n_points, numbers.Integral) and not isinstance(n_points, bool)
            and (n_points == -1 or n_points >= 1)):
        raise ValueError(f"n_points={n_points!r}: accepted -1 (auto: sized by the solver's "
                         "nonzeros) or a positive count of points; for every training point "
                         "pass selection='all'")


def check_selection(task: str, selection: str) -> None:
    """``selection`` must exist and fit the task (``misclassified`` is for classification,
    ``largest_error`` for regression)."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {list(SELECTIONS)}, got {selection!r}")
    if task == "regression" and selection == "misclassified":
        raise ValueError("selection='misclassified' needs classification; for regression use "
                         "'margin' (default: a random sample), 'random', 'first' (the official "
                         "code), 'all' or 'largest_error'")
    if task == "classification" and selection == "largest_error":
        raise ValueError("selection='largest_error' needs regression; for classification use "
                         "'margin' (default), 'random', 'misclassified' (the official code), "
                         "'first' or 'all'")


def effective_selection(task: str, selection: str) -> str:
    """The rule :func:`select_points` applies: regression has no margins, so ``margin`` (the
    default) is the random sample there."""
    check_selection(task, selection)
    return "random" if (selection == "margin" and task == "regression") else selection


def margins(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``m_n = out[n, y_n] - max_{j != y_n} out[n, j]`` for class labels ``y`` (negative: the
    point is misclassified; the MILP's margin rows use the same differences)."""
    top = out.gather(1, y.reshape(-1, 1)).reshape(-1)
    rival = out.clone()
    rival.scatter_(1, y.reshape(-1, 1), -math.inf)
    return top - rival.max(dim=1).values


def flip_radius(out: torch.Tensor, y: torch.Tensor, features: torch.Tensor | None = None,
                margin: float = 1e-4) -> torch.Tensor:
    """``t_n = |m_n - margin| / (2 (||h_n||_1 + 1))``: the smallest box radius (around the
    current head, weights and biases alike) at which point n's classification can change, with
    ``m_n`` from :func:`margins` and ``h_n`` the head's input (``features``; without them the
    scale is 1). Inside a box of radius ``eps`` every margin of point n moves by at most ``2 eps
    (||h_n||_1 + 1)``, and all of them at once by that much, so a misclassified point can be
    made correct (every margin >= ``margin``) iff ``eps >= t_n`` and a correct one broken iff
    ``eps > t_n``."""
    m = margins(out, y).double()
    scale = 2.0 * ((features.abs().sum(dim=1).double() if features is not None else 0.0) + 1.0)
    return (m - margin).abs() / scale


def select_points(
    task: str,
    out: torch.Tensor,
    y: torch.Tensor,
    n_points: int,
    selection: str = "margin",
    generator: torch.Generator | None = None,
    features: torch.Tensor | None = None,
    margin: float = 1e-4,
) -> torch.Tensor:
    """Indices of the ``n_points`` points given to the solver (``n_points <= 0``: all points).

    ``margin`` (classification, the default): the points whose classification the smallest
    box around the current head can change (:func:`flip_radius`, with the head's input
    ``features``), nearest first: the misclassified points the solver can make correct (the
    official code selects misclassified points) and the correct ones near the boundary that a
    new head could break, in the order in which a growing box reaches them (ties: dataset
    order). For regression (no margins) ``margin`` is ``random``.
    ``random``: a random subset (sorted), correct and misclassified points alike;
    ``misclassified``: the misclassified points in dataset order, then the correct ones (the
    official classification rule: the first 32 misclassified); ``first``: the first points in
    dataset order (the official regression rule); ``largest_error``: the largest absolute
    errors first (regression; not the official rule, and it hurts: see the docs); ``all``.
    """
    selection = effective_selection(task, selection)
    n = out.shape[0]
    k = n if (n_points <= 0 or selection == "all") else min(int(n_points), n)
    if selection == "all" or k == n:
        return torch.arange(n, device=out.device)
    if selection == "random":
        return torch.randperm(n, generator=generator).to(out.device)[:k].sort().values
    if selection == "first":
        return torch.arange(k, device=out.device)
    if selection == "margin":
        order = torch.argsort(flip_radius(out, y, features, margin), stable=True)
    elif selection == "misclassified":
        wrong = (out.argmax(dim=1) != y).to(torch.int8)
        order = torch.argsort(-wrong, stable=True)  # wrong first, dataset order within each
    else:
        err = (out - y.reshape(out.shape)).abs().reshape(n, -1).sum(dim=1)
        order = torch.argsort(-err, stable=True)
    return order[:k]


def fit_radius(t_rest: float, cap: float) -> float:
    """The ``box="fit"`` radius: the largest radius, at most ``cap``, at which no point left out
    of the solver can change its classification (``t_rest``: the smallest :func:`flip_radius`
    of those points; ``inf`` when every point is in). Never below ``MIN_RADIUS``."""
    return float(max(MIN_RADIUS, min(float(cap), float(t_rest))))


def backoff_patience(patience: int, backoff: float, solves: int) -> int:
    """Plateau epochs before the next solve after ``solves`` solves: ``patience *
    backoff**solves`` (rounded down, capped at 10**6). GD phases grow geometrically, so a run
    of E epochs has about log2(E / patience) plateau solves with the default backoff 2 (the
    official code: two GD phases, at most two solves)."""
    return int(min(1e6, patience * backoff ** min(solves, 64)))


class PlateauDetector:
    """Early-stopping counter: ``update(v)`` is True after ``patience`` consecutive values with
    ``v >= best - min_delta``; ``reset`` starts a new phase."""

    def __init__(self, patience: int = 2, min_delta: float = 0.0):
        if int(patience) < 1:
            raise ValueError(f"patience must be >= 1, got {patience!r}")
        if not (min_delta >= 0):
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.best, self.bad = math.inf, 0

    def update(self, value: float) -> bool:
        if value < self.best - self.min_delta:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def reset(self, best: float = math.inf) -> None:
        self.best, self.bad = best, 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad = float(state["best"]), int(state["bad"])


def improves(loss0: float, acc0: float | None, loss1: float, acc1: float | None) -> bool:
    """The acceptance rule: classification (accuracies given): higher validation accuracy, or
    equal accuracy and lower validation loss (the MILP maximises correctly classified points,
    and the paper claims accuracy); regression: lower validation loss (the validation error)."""
    if acc0 is not None and acc1 is not None:
        return acc1 > acc0 or (acc1 == acc0 and loss1 < loss0)
    return loss1 < loss0


def account_solve(owner: Any, ev: dict, val_before: float, patience: int, backoff: float
                  ) -> None:
    """The bookkeeping after one solve, shared by the benchmark method and the Lightning
    callback: ``owner`` (with ``solves``, ``accepted``, ``seconds_used`` and a
    :class:`PlateauDetector` ``plateau``) counts the solve and its time, and a new GD phase
    starts: the next plateau needs :func:`backoff_patience` epochs, measured from the
    validation loss the solve left (its own when accepted, else ``val_before``)."""
    owner.solves += 1
    owner.accepted += int(ev["accepted"])
    owner.seconds_used += ev["solve_seconds"] + ev["build_seconds"]
    owner.plateau.patience = backoff_patience(patience, backoff, owner.solves)
    owner.plateau.reset(best=ev["val_loss_after"] if ev["accepted"] else val_before)


def scheduled(hp: dict, epoch: int, epochs: int | None) -> bool:
    """Is a solve due after epoch ``epoch`` (from 0) of ``epochs`` without a plateau:
    ``solve_every`` (every k epochs) or ``solves_per_run`` = k (after epochs ``floor(epochs * i /
    k)``, i = 1..k, counted from 1; needs ``epochs``)?"""
    every, per_run = hp.get("solve_every", 0), hp.get("solves_per_run", 0)
    if every and (epoch + 1) % every == 0:
        return True
    if per_run and epochs:
        return epoch + 1 in {max(1, epochs * i // per_run) for i in range(1, per_run + 1)}
    return False


def solve_budget_left(hp: dict, solves: int, seconds_used: float) -> float:
    """Solver seconds still allowed: 0 once ``max_solves`` solves ran, else what is left of
    ``solver_seconds`` (inf when neither budget is set; 0 means no limit for both)."""
    if hp["max_solves"] and solves >= hp["max_solves"]:
        return 0.0
    if hp["solver_seconds"]:
        return hp["solver_seconds"] - seconds_used
    return math.inf
