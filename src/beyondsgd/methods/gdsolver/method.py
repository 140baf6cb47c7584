r"""GDSolver: gradient descent, and a MILP on the last layer whenever GD plateaus.

Ashok, Nagisetty, Srinivasa & Ganesh (IJCAI-22, Sec. 3, Algorithm 1) alternate two phases:

1. **GD phase.** Train every parameter with a torch optimizer (SGD or Adam) until the loss on a
   validation split stops improving: ``patience`` epochs in a row with
   ``val_loss >= best - min_delta`` (the official code's early stopping, patience 2).
2. **Solver phase.** Freeze the penultimate activations ``h_n`` of some training points and
   solve, over the final ``nn.Linear`` only, the MILP/LP of :mod:`beyondsgd.methods.gdsolver.milp`
   (solved by :mod:`beyondsgd.methods.gdsolver.highs`)::

       classification:  max_{W,b} #{n : z_{n,y_n} >= z_{n,j} + delta  for all j != y_n}
       regression:      min_{W,b} sum_{n,o} |W h_n + b - y_n|_o     (or the max, norm="linf")
       subject to       |W - W_GD| <= radius,  |b - b_GD| <= radius   (elementwise box)

   The new head is **kept only if it improves what the MILP optimises and the paper claims**:
   the validation accuracy (classification; equal accuracy and a lower validation loss also
   count) or the validation error (regression); otherwise the weights are restored (the paper:
   stop when the solver finds no better point; the official code keeps any solution, available
   as ``keep_worse=True``). Then GD resumes.

Our choices, measured in ``docs/methods/gdsolver.md`` (``preset="published"`` is the official
recipe instead, :data:`PUBLISHED`): SGD at its default lr 0.1, and solves after a quarter, half,
three quarters and all of the run as well as at plateaus (at SGD's lr the validation loss of
digits_mlp / fmnist_mlp does not plateau within their budgets); the points nearest to changing
class (``selection="margin"``: the misclassified points a small box can fix and the correct
ones closest to the boundary) and a box fitted to them (``box="fit"``: the largest radius at
which no point left out can change class, so the MILP is exact over the training set); after k
plateau solves the next waits ``patience * backoff**k`` epochs (geometric GD phases);
``objective="loss"`` (our extension, not in the paper) minimises a piecewise-linear surrogate of
the training loss instead (a hinge LP, or the L1 LP over all points). Every solve is bounded by
work (nodes, HiGHS limit checks, LP iterations), not seconds, so a trial repeats on any machine.
The solver's size depends on the last layer's width and the number of points, not on the depth.

Use it in your own loop::

    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> solver = GDSolver(model, radius=0.05, time_limit=5.0)
    >>> event = solver.step(x[:48], y[:48], x[48:], y[48:])   # one MILP step, accept/reject
    >>> event["status"] in ("optimal", "feasible", "no_solution", "infeasible")
    True

or train with the registered method ``gdsolver`` (``beyondsgd train --problem digits_mlp --method
gdsolver``). Supported models: any ``nn.Module`` whose output is the output of one ``nn.Linear``
with a bias (found automatically as the last ``nn.Linear``, or named with ``head=``) applied to a
2-D input; anything after that layer (a softmax, a reshape) is rejected with a clear error.

Data parallelism (``distributed=``, default: whenever ``torch.distributed`` is initialised with
more than one process): pass each rank's own training and validation rows to ``step``; the
global order of the points is rank order, then row order. Every rank computes the features of
its rows and sends its first ``k`` candidates (in the selection order) to rank 0, which
picks the same points a single process would pick from all rows, solves the MILP/LP and
broadcasts the result; validation losses are summed over the ranks, so every rank takes the same
accept/reject decision and keeps identical weights.

Reference: D. Ashok, V. Nagisetty, C. Srinivasa, V. Ganesh. *A Solver + Gradient Descent Training
Algorithm for Deep Neural Networks.* IJCAI-22, pp. 1766-1773, doi:10.24963/ijcai.2022/246.

On a streamed problem (``ctx.pooled``: a ``Dataset`` read in minibatches) the candidate points
are chosen from the method pool, a fixed sample of the training rows, and a solution's accept
check reads the first pool rows of the validation set; plateaus are detected on the whole
validation loss (:mod:`beyondsgd.data.streamed`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..base import SCHEDULE_HPARAMS, HParam, OptimizerMethod, TrainContext, register
from .points import (
    BOXES,
    CHECK_LIMIT,
    ITERATION_LIMIT,
    NODE_LIMIT,
    OBJECTIVES,
    SELECTIONS,
    PlateauDetector,
    account_solve,
    backoff_patience,
    check_n_points,
    scheduled,
    solve_budget_left,
)
from .solver import GDSolver

__all__ = ["PRESETS", "PUBLISHED", "SOLVES_PER_RUN", "GDSolverMethod", "make_solver", "run_solve"]


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------
PRESETS = ("ours", "published")
SOLVES_PER_RUN = 4  # our default schedule: solves after 1/4, 1/2, 3/4 and all of the epochs
#: The official code's recipe (the digest, ``docs/methods/gdsolver.md``): SGD at lr 0.05 without
#: momentum, the box +-0.05 around the GD weights, early stopping with patience 2, a MILP after
#: each of two GD phases (at most two), on the first 32 misclassified training points (the first
#: 32 points for regression: pass ``selection="first"``), at least 5 % of them made correct, every
#: solution kept. Not official, kept: a real validation split, HiGHS instead of Gurobi, the work
#: limits, boxed biases.
PUBLISHED: dict[str, Any] = {
    "optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "radius": 0.05, "box": "fixed",
    "patience": 2, "min_delta": 0.0, "backoff": 1.0, "objective": "paper", "n_points": 32,
    "selection": "misclassified", "margin": 1e-4, "min_gain": 0.05, "keep_worse": True,
    "max_solves": 2, "solves_per_run": 2, "solve_every": 0,
}


# --------------------------------------------------------------------------------------------
# The registered method
# --------------------------------------------------------------------------------------------
@register
class GDSolverMethod(OptimizerMethod):
    """GD (SGD or Adam over all parameters), and one solver step on the last layer (see
    :class:`GDSolver`) when the validation loss plateaus and at ``solves_per_run`` evenly spaced
    epochs, kept only if it improves the validation accuracy (classification) or error
    (regression); then GD again. Budgets: ``max_solves`` and ``solver_seconds`` (0: unlimited).
    Each solve is an event (``kind="milp"``) returned by ``end_of_epoch``.

    ``preset="published"`` (:attr:`published_defaults`) is the official code's recipe; the
    declared defaults (``preset="ours"``) are ours, chosen in ``docs/methods/gdsolver.md``."""

    name = "gdsolver"
    summary = "GD + MILP (HiGHS) on the last layer at plateaus and on a schedule"
    paper = "Ashok, Nagisetty, Srinivasa & Ganesh, IJCAI 2022"
    hparams = (
        HParam("preset", "ours", str, "ours: the defaults below; published: the official code's "
               "recipe (GDSolverMethod.published_defaults) for every value not given",
               choices=PRESETS),
        HParam("optimizer", "sgd", str, "inner GD optimizer", choices=("sgd", "adam")),
        HParam("lr", 0.1, float, "inner optimizer learning rate (SGD's default; official 0.05)",
               low=1e-4, high=1.0, log=True, tune=True),
        HParam("momentum", 0.0, float, "SGD momentum (official: 0)"),
        HParam("radius", 0.05, float, "half-width of the weight/bias box (official ±0.05); with "
               "box=fit its upper bound", low=1e-3, high=10.0, log=True, tune=True),
        HParam("box", "fit", str, "fit: the classification MILP's radius is the largest one, at "
               "most radius, at which no point left out of it can change class; fixed: radius "
               "(official)", choices=BOXES),
        HParam("patience", 2, int, "epochs without validation improvement before a solve"),
        HParam("min_delta", 0.0, float, "improvement smaller than this counts as none"),
        HParam("objective", "paper", str, "paper: the paper's MILP/LP; loss: our extension, "
               "a hinge (classification) / L1 (regression) LP of the training loss",
               choices=OBJECTIVES),
        HParam("n_points", -1, int, "training points per solve: -1 auto (sized by the solver's "
               "nonzeros, see default_points) or a positive count; every point: selection=all"),
        HParam("selection", "margin", str, "which points go to the solver: margin (the points "
               "nearest to changing class, misclassified and correct; regression: random), "
               "random, misclassified / first (official), largest_error, all",
               choices=SELECTIONS),
        HParam("time_limit", 30.0, float, "HiGHS seconds per solve: a safety net only (hitting "
               "it is reported and makes the trial machine-dependent)"),
        HParam("node_limit", NODE_LIMIT, int, "branch-and-bound nodes per MILP (0: unlimited)"),
        HParam("check_limit", CHECK_LIMIT, int, "HiGHS limit checks per MILP, one per root cut "
               "round and per node: a deterministic bound on its work (0: unlimited)"),
        HParam("iteration_limit", ITERATION_LIMIT, int, "simplex/IPM iterations per LP "
               "(0: unlimited)"),
        HParam("mip_gap", 1e-4, float, "HiGHS relative MIP gap"),
        HParam("threads", 1, int, "HiGHS threads"),
        HParam("margin", 1e-4, float, "classification margin delta"),
        HParam("norm", "l1", str, "regression objective", choices=("l1", "linf")),
        HParam("min_gain", 0.0, float, "required gain in correct batch points (official 0.05)"),
        HParam("keep_worse", False, bool, "keep solutions that raise the validation loss"),
        HParam("max_solves", 0, int, "maximum number of solves (0: unlimited)"),
        HParam("solver_seconds", 600.0, float, "total solver seconds per run, a safety net "
               "(0: unlimited; hitting it is reported)"),
        HParam("solves_per_run", SOLVES_PER_RUN, int, "also solve at the end of epochs "
               "floor(epochs * i / k), i = 1..k, plateau or not (0: off)"),
        HParam("solve_every", 0, int, "also solve every k epochs regardless of plateaus (0: off)"),
        HParam("backoff", 2.0, float, "after k solves, the next plateau solve waits patience * "
               "backoff**k epochs without improvement (1: every plateau)"),
        *SCHEDULE_HPARAMS,
    )
    presets = {"ours": {}, "published": PUBLISHED}
    published_defaults = PUBLISHED

    def __init__(self, hp: dict[str, Any] | None = None):
        super().__init__(hp)
        for name in ("lr", "radius", "time_limit"):
            if not self.hp[name] > 0:
                raise ValueError(f"hyperparameter {name!r} must be > 0, got {self.hp[name]!r}")
        check_n_points(self.hp["n_points"])
        for name in ("max_solves", "solve_every", "solves_per_run", "node_limit", "check_limit",
                     "iteration_limit", "solver_seconds", "min_delta"):
            if self.hp[name] < 0:
                raise ValueError(f"hyperparameter {name!r} must be >= 0, got {self.hp[name]!r}")
        if not self.hp["backoff"] >= 1:
            raise ValueError(f"hyperparameter 'backoff' must be >= 1, got {self.hp['backoff']!r}")
        if self.hp["patience"] < 1:
            raise ValueError(f"hyperparameter 'patience' must be >= 1, got {self.hp['patience']}")
        self.solver: GDSolver | None = None
        self.plateau = PlateauDetector(self.hp["patience"], self.hp["min_delta"])
        self.solves = 0
        self.accepted = 0
        self.time_limited = 0
        self.seconds_used = 0.0

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        if self.hp["optimizer"] == "adam":
            return torch.optim.Adam(model.parameters(), lr=self.hp["lr"])
        return torch.optim.SGD(model.parameters(), lr=self.hp["lr"], momentum=self.hp["momentum"])

    def prepare(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        model = super().prepare(model, ctx)
        self.solver = make_solver(model, self.hp, task=ctx.task, loss_fn=ctx.loss_fn,
                                  seed=ctx.seed, distributed=ctx.world_size > 1)
        if ctx.y_train is not None:  # bad labels fail here, before any training
            self.solver.check_targets(ctx.y_train)
        return model

    def end_of_epoch(self, model: nn.Module, ctx: TrainContext, epoch: int) -> list[dict]:
        events = super().end_of_epoch(model, ctx, epoch)  # LR schedule
        val = ctx.val_loss(model)
        plateau = self.plateau.update(val)
        if not (plateau or scheduled(self.hp, epoch, ctx.epochs)):
            return events
        # under data parallelism each rank passes its own rows; the solver gathers them
        ev = run_solve(self, val, ctx.local(ctx.x_train), ctx.local(ctx.y_train),
                       ctx.local(ctx.x_val), ctx.local(ctx.y_val))
        if ev is not None:
            ev["trigger"] = "plateau" if plateau else "schedule"
            events.append(ev)
        return events

    def metrics(self, model: nn.Module) -> dict[str, float]:
        return {"milp_solves": float(self.solves), "milp_accepted": float(self.accepted),
                "milp_time_limited": float(self.time_limited)}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(plateau=self.plateau.state_dict(), solves=self.solves,
                     accepted=self.accepted, seconds_used=self.seconds_used,
                     time_limited=self.time_limited,
                     solver_calls=self.solver.n_solves if self.solver else 0)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.plateau.load_state_dict(state["plateau"])
        self.solves, self.accepted = int(state["solves"]), int(state["accepted"])
        self.time_limited = int(state.get("time_limited", 0))
        self.seconds_used = float(state["seconds_used"])
        self.plateau.patience = backoff_patience(self.hp["patience"], self.hp["backoff"],
                                                 self.solves)
        if self.solver is not None:
            self.solver.n_solves = int(state["solver_calls"])


def make_solver(model: nn.Module, hp: dict[str, Any], **kw: Any) -> GDSolver:
    """The :class:`GDSolver` of the method's (or the Lightning callback's) hyperparameters
    ``hp`` (0 for a work limit: unlimited); ``kw``: head, task, loss_fn, seed, distributed."""
    return GDSolver(
        model, radius=hp["radius"], objective=hp["objective"], time_limit=hp["time_limit"],
        mip_gap=hp["mip_gap"], threads=hp["threads"], node_limit=hp["node_limit"] or None,
        check_limit=hp["check_limit"] or None, iteration_limit=hp["iteration_limit"] or None,
        n_points=hp["n_points"], selection=hp["selection"], margin=hp["margin"],
        norm=hp["norm"], min_gain=hp["min_gain"], keep_worse=hp["keep_worse"], box=hp["box"],
        **kw)


def run_solve(owner: Any, val: float, x_train: torch.Tensor, y_train: torch.Tensor,
              x_val: torch.Tensor, y_val: torch.Tensor) -> dict[str, Any] | None:
    """One solve of ``owner`` (the method or the Lightning callback: ``hp``, ``solver`` and the
    counters of :func:`account_solve`) within its budgets; ``None`` when a budget is spent. The
    seconds budget is a safety net: a solve it skips or cuts short counts in
    ``owner.time_limited`` (the trial then depends on the machine's speed)."""
    hp = owner.hp
    if hp["max_solves"] and owner.solves >= hp["max_solves"]:
        return None
    left = solve_budget_left(hp, owner.solves, owner.seconds_used)
    if left <= 0:
        owner.time_limited += 1
        return None
    owner.solver.time_limit = min(hp["time_limit"], left)
    ev = owner.solver.step(x_train, y_train, x_val, y_val)
    account_solve(owner, ev, val, hp["patience"], hp["backoff"])  # a new GD phase
    owner.time_limited += int(not ev["deterministic"])
    return ev
