r"""GDSolver: gradient descent, and a MILP on the last layer whenever GD plateaus.

Ashok, Nagisetty, Srinivasa & Ganesh (IJCAI-22, Sec. 3, Algorithm 1) alternate two phases:

1. **GD phase.** Train every parameter with a torch optimizer (SGD or Adam) until the loss on a
   validation split stops improving: ``patience`` epochs in a row with
   ``val_loss >= best - min_delta`` (the official code's early stopping, patience 2).
2. **Solver phase.** Freeze the penultimate activations ``h_n`` of some training points and
   solve, over the final ``nn.Linear`` only, the MILP/LP of :mod:`beyondsgd.methods.milp`
   (solved by :mod:`beyondsgd.methods.highs`)::

       classification:  max_{W,b} #{n : z_{n,y_n} >= z_{n,j} + delta  for all j != y_n}
       regression:      min_{W,b} sum_{n,o} |W h_n + b - y_n|_o     (or the max, norm="linf")
       subject to       |W - W_GD| <= radius,  |b - b_GD| <= radius   (elementwise box)

   The new head is **kept only if it improves what the MILP optimises and the paper claims**:
   the validation accuracy (classification; equal accuracy and a lower validation loss also
   count) or the validation error (regression); otherwise the weights are restored (the paper:
   stop when the solver finds no better point; the official code keeps any solution, available
   as ``keep_worse=True``). Then GD resumes.

Our choices, measured in ``docs/methods/gdsolver.md``: the points are a random sample, correct
and misclassified alike, sized so the solver stays near a nonzero budget
(:func:`~beyondsgd.methods.gdsolver_points.default_points`; the official first 32 misclassified
points lowered validation accuracy in every probe and are ``selection="misclassified",
n_points=32``); after k solves the next plateau solve waits ``patience * backoff**k`` epochs
(geometric GD phases); ``objective="loss"`` (our extension, not in the paper) minimises a
piecewise-linear surrogate of the training loss instead (a hinge LP, or the L1 LP over all
points). The solver's size depends on the last layer's width and the number of points, not on
the depth.

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
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import SCHEDULE_HPARAMS, HParam, OptimizerMethod, TrainContext, register
from .gdsolver_points import (
    NODE_LIMIT,
    OBJECTIVES,
    SELECTIONS,
    PlateauDetector,
    account_solve,
    backoff_patience,
    check_selection,
    default_points,
    find_head,
    improves,
    select_points,
    solve_budget_left,
)
from .gdsolver_step import GDSolver
from .highs import (
    MILPResult,
    solve_classification_milp,
    solve_hinge_lp,
    solve_program,
    solve_regression_lp,
)
from .milp import (
    LinearProgram,
    build_classification_milp,
    build_hinge_lp,
    build_regression_lp,
    classification_margins,
)

__all__ = [
    "GDSolver",
    "GDSolverMethod",
    "LinearProgram",
    "MILPResult",
    "PlateauDetector",
    "backoff_patience",
    "build_classification_milp",
    "build_hinge_lp",
    "build_regression_lp",
    "classification_margins",
    "check_selection",
    "default_points",
    "find_head",
    "improves",
    "select_points",
    "solve_classification_milp",
    "solve_hinge_lp",
    "solve_program",
    "solve_regression_lp",
]


# --------------------------------------------------------------------------------------------
# The registered method
# --------------------------------------------------------------------------------------------
@register
class GDSolverMethod(OptimizerMethod):
    """GD (SGD or Adam over all parameters) until the validation loss plateaus, then one solver
    step on the last layer (see :class:`GDSolver`), accepted only if the validation loss
    decreases; then GD again. Budgets: ``max_solves`` and ``solver_seconds`` (0: unlimited).
    Each solve is an event (``kind="milp"``) returned by ``end_of_epoch``."""

    name = "gdsolver"
    summary = "GD + MILP (HiGHS) on the last layer when the validation loss plateaus"
    paper = "Ashok, Nagisetty, Srinivasa & Ganesh, IJCAI 2022"
    hparams = (
        HParam("optimizer", "sgd", str, "inner GD optimizer", choices=("sgd", "adam")),
        HParam("lr", 0.05, float, "inner optimizer learning rate (official: 0.05)",
               low=1e-4, high=1.0, log=True, tune=True),
        HParam("momentum", 0.0, float, "SGD momentum (official: 0)"),
        HParam("radius", 0.05, float, "half-width of the weight/bias box (official ±0.05)",
               low=1e-3, high=10.0, log=True, tune=True),
        HParam("patience", 2, int, "epochs without validation improvement before a solve"),
        HParam("min_delta", 0.0, float, "improvement smaller than this counts as none"),
        HParam("objective", "paper", str, "paper: the paper's MILP/LP; loss: our extension, "
               "a hinge (classification) / L1 (regression) LP of the training loss",
               choices=OBJECTIVES),
        HParam("n_points", -1, int, "training points per solve (-1: auto, sized by the "
               "solver's nonzeros, see default_points; 0: all)"),
        HParam("selection", "random", str, "which points go to the solver (official: "
               "misclassified for classification, first for regression)", choices=SELECTIONS),
        HParam("time_limit", 30.0, float, "HiGHS time limit per solve, seconds (a safety net)"),
        HParam("node_limit", NODE_LIMIT, int, "branch-and-bound nodes per MILP (0: unlimited)"),
        HParam("mip_gap", 1e-4, float, "HiGHS relative MIP gap"),
        HParam("threads", 1, int, "HiGHS threads"),
        HParam("margin", 1e-4, float, "classification margin delta"),
        HParam("norm", "l1", str, "regression objective", choices=("l1", "linf")),
        HParam("min_gain", 0.0, float, "required gain in correct batch points (official 0.05)"),
        HParam("keep_worse", False, bool, "keep solutions that raise the validation loss"),
        HParam("max_solves", 0, int, "maximum number of solves (0: unlimited)"),
        HParam("solver_seconds", 600.0, float, "total solver time budget (0: unlimited)"),
        HParam("solve_every", 0, int, "also solve every k epochs regardless of plateaus (0: off)"),
        HParam("backoff", 2.0, float, "after k solves, the next plateau solve waits patience * "
               "backoff**k epochs without improvement (1: every plateau)"),
        *SCHEDULE_HPARAMS,
    )

    def __init__(self, hp: dict[str, Any] | None = None):
        super().__init__(hp)
        for name in ("lr", "radius", "time_limit"):
            if not self.hp[name] > 0:
                raise ValueError(f"hyperparameter {name!r} must be > 0, got {self.hp[name]!r}")
        if self.hp["n_points"] < -1:
            raise ValueError(f"hyperparameter 'n_points' must be >= -1 (-1: auto, 0: all), got "
                             f"{self.hp['n_points']!r}")
        for name in ("max_solves", "solve_every", "node_limit", "solver_seconds", "min_delta"):
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
        self.seconds_used = 0.0

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        if self.hp["optimizer"] == "adam":
            return torch.optim.Adam(model.parameters(), lr=self.hp["lr"])
        return torch.optim.SGD(model.parameters(), lr=self.hp["lr"], momentum=self.hp["momentum"])

    def prepare(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        model = super().prepare(model, ctx)
        hp = self.hp
        self.solver = GDSolver(
            model, task=ctx.task, radius=hp["radius"], objective=hp["objective"],
            time_limit=hp["time_limit"], mip_gap=hp["mip_gap"], threads=hp["threads"],
            node_limit=hp["node_limit"] or None, n_points=hp["n_points"],
            selection=hp["selection"], margin=hp["margin"], norm=hp["norm"],
            min_gain=hp["min_gain"], keep_worse=hp["keep_worse"], loss_fn=ctx.loss_fn,
            seed=ctx.seed, distributed=ctx.world_size > 1)
        if ctx.y_train is not None:  # bad labels fail here, before any training
            self.solver.check_targets(ctx.y_train)
        return model

    def _budget_left(self) -> float:
        return solve_budget_left(self.hp, self.solves, self.seconds_used)

    def end_of_epoch(self, model: nn.Module, ctx: TrainContext, epoch: int) -> list[dict]:
        events = super().end_of_epoch(model, ctx, epoch)  # LR schedule
        val = ctx.val_loss(model)
        plateau = self.plateau.update(val)
        every = self.hp["solve_every"]
        if not (plateau or (every and (epoch + 1) % every == 0)):
            return events
        left = self._budget_left()
        if left <= 0:
            return events
        self.solver.time_limit = min(self.hp["time_limit"], left)
        # under data parallelism each rank passes its own rows; the solver gathers them
        ev = self.solver.step(ctx.local(ctx.x_train), ctx.local(ctx.y_train),
                              ctx.local(ctx.x_val), ctx.local(ctx.y_val))
        account_solve(self, ev, val, self.hp["patience"], self.hp["backoff"])  # new GD phase
        ev["trigger"] = "plateau" if plateau else "schedule"
        events.append(ev)
        return events

    def metrics(self, model: nn.Module) -> dict[str, float]:
        return {"milp_solves": float(self.solves), "milp_accepted": float(self.accepted)}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(plateau=self.plateau.state_dict(), solves=self.solves,
                     accepted=self.accepted, seconds_used=self.seconds_used,
                     solver_calls=self.solver.n_solves if self.solver else 0)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.plateau.load_state_dict(state["plateau"])
        self.solves, self.accepted = int(state["solves"]), int(state["accepted"])
        self.seconds_used = float(state["seconds_used"])
        self.plateau.patience = backoff_patience(self.hp["patience"], self.hp["backoff"],
                                                 self.solves)
        if self.solver is not None:
            self.solver.n_solves = int(state["solver_calls"])
