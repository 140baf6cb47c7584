r"""GDSolver: gradient descent, and a MILP on the last layer whenever GD plateaus.

Ashok, Nagisetty, Srinivasa & Ganesh (IJCAI-22, Sec. 3, Algorithm 1) alternate two phases:

1. **GD phase.** Train every parameter with a torch optimizer (SGD or Adam) until the loss on a
   validation split stops improving: ``patience`` epochs in a row with
   ``val_loss >= best - min_delta`` (the official code's early stopping, patience 2).
2. **Solver phase.** Freeze the penultimate activations ``h_n`` of ``n_points`` training points
   (misclassified ones first, as in the official code) and solve, over the final ``nn.Linear``
   only, the MILP/LP of :mod:`beyondsgd.methods.milp`::

       classification:  max_{W,b} #{n : z_{n,y_n} >= z_{n,j} + delta  for all j != y_n}
       regression:      min_{W,b} sum_{n,o} |W h_n + b - y_n|_o     (or the max, norm="linf")
       subject to       |W - W_GD| <= radius,  |b - b_GD| <= radius   (elementwise box)

   The step is **accepted only if the validation loss decreases**, otherwise the weights are
   reverted (the paper: stop when the solver finds no lower-loss point; the official code keeps
   any solution, available as ``keep_worse=True``). Then GD resumes.

The solver's size depends on the last layer's width and ``n_points``, not on the depth.

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
its rows and sends its first ``n_points`` candidates (in the selection order) to rank 0, which
picks the same points a single process would pick from all rows, solves the MILP/LP and
broadcasts the result; validation losses are summed over the ranks, so every rank takes the same
accept/reject decision and keeps identical weights.

Reference: D. Ashok, V. Nagisetty, C. Srinivasa, V. Ganesh. *A Solver + Gradient Descent Training
Algorithm for Deep Neural Networks.* IJCAI-22, pp. 1766-1773, doi:10.24963/ijcai.2022/246.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as D
from .base import SCHEDULE_HPARAMS, HParam, OptimizerMethod, TrainContext, register
from .milp import (
    LinearProgram,
    MILPResult,
    _check_solver_args,
    build_classification_milp,
    build_hinge_lp,
    build_regression_lp,
    classification_margins,
    solve_classification_milp,
    solve_hinge_lp,
    solve_program,
    solve_regression_lp,
)

__all__ = [
    "GDSolver",
    "GDSolverMethod",
    "LinearProgram",
    "MILPResult",
    "PlateauDetector",
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

SELECTIONS = ("random", "misclassified", "first", "largest_error", "all")
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
NODE_LIMIT = 100  # branch-and-bound nodes per MILP (deterministic, unlike a time limit)


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


def check_selection(task: str, selection: str) -> None:
    """``selection`` must exist and fit the task (``misclassified`` is for classification,
    ``largest_error`` for regression)."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {list(SELECTIONS)}, got {selection!r}")
    if task == "regression" and selection == "misclassified":
        raise ValueError("selection='misclassified' needs classification; for regression use "
                         "'random' (default), 'first' (the official code), 'all' or "
                         "'largest_error'")
    if task == "classification" and selection == "largest_error":
        raise ValueError("selection='largest_error' needs regression; for classification use "
                         "'random' (default), 'misclassified' (the official code), 'first' or "
                         "'all'")


def select_points(
    task: str,
    out: torch.Tensor,
    y: torch.Tensor,
    n_points: int,
    selection: str = "random",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices of the points given to the solver (``n_points <= 0``: all points).

    ``random``: a random subset (sorted), correct and misclassified points alike (the default);
    ``misclassified``: the misclassified points in dataset order, then the correct ones (the
    official classification rule: the first 32 misclassified); ``first``: the first points in
    dataset order (the official regression rule); ``largest_error``: the largest absolute
    errors first (regression; not the official rule, and it hurts: see the docs); ``all``.
    """
    check_selection(task, selection)
    n = out.shape[0]
    k = n if (n_points <= 0 or selection == "all") else min(int(n_points), n)
    if selection == "all" or k == n:
        return torch.arange(n, device=out.device)
    if selection == "random":
        return torch.randperm(n, generator=generator).to(out.device)[:k].sort().values
    if selection == "first":
        return torch.arange(k, device=out.device)
    if selection == "misclassified":
        wrong = (out.argmax(dim=1) != y).to(torch.int8)
        order = torch.argsort(-wrong, stable=True)  # wrong first, dataset order within each
    else:
        err = (out - y.reshape(out.shape)).abs().reshape(n, -1).sum(dim=1)
        order = torch.argsort(-err, stable=True)
    return order[:k]


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


# --------------------------------------------------------------------------------------------
# The public solver step
# --------------------------------------------------------------------------------------------
class GDSolver:
    """One GDSolver solver step for your own training loop.

    Args:
        model: the network; its output must be the output of ``head``.
        head: the final ``nn.Linear`` (module or name); default: the last ``nn.Linear``.
        task: ``"classification"`` or ``"regression"``; default: from the labels' dtype
            (integer labels: classification).
        radius: half-width of the box around the current weights and biases (the official code's
            ``w_range / 2``; 0.05 for its MNIST/CIFAR models).
        objective: ``"paper"``: the paper's solver problem (classification: the MILP maximising
            the number of points correct with margin; regression: the L1/L-inf fit LP);
            ``"loss"`` (**our extension**, not in the paper): minimise a piecewise-linear
            surrogate of the training loss inside the box, an LP (classification: the
            multi-class hinge loss on ``LP_POINTS`` random points; regression: the L1 error
            over all training points up to ``LOSS_REGRESSION_NONZEROS``).
        time_limit, mip_gap, threads: HiGHS options (seconds, relative gap, threads).
        node_limit: branch-and-bound nodes per MILP (``None``: unlimited). With one thread the
            MILP's outcome then does not depend on the machine's speed; ``time_limit`` is only a
            safety net.
        n_points, selection: how many training points go to the solver and which (see
            :func:`select_points`); ``n_points=-1`` (default) is :func:`default_points`: for
            the MILP as many random points as keep it near 75k nonzeros (65 for a 128-wide
            10-class head), 256 for the hinge LP, for the regression LP all points up to about
            32k nonzeros (512 points of a 64-wide head), else a random sample; ``0``: all.
            ``selection="misclassified"`` with ``n_points=32`` is the official classification
            rule, ``"first"`` the official regression rule.
        margin: classification margin ``delta`` (1e-4 in the official code).
        norm: regression objective, ``"l1"`` or ``"linf"`` (``objective="loss"``: always L1).
        min_gain: if > 0, require ``#correct >= start + min_gain * n_points`` in the MILP (the
            official code asks for batch accuracy + 0.05); infeasible then means "no such point".
        keep_worse: keep every solution (the official behaviour) instead of accepting only those
            that improve the validation accuracy (classification; ties broken by the validation
            loss) or the validation loss (regression: the validation error).
        loss_fn: validation loss; default cross-entropy / MSE by task.
        seed: seeds ``random`` point selection and HiGHS.
        verbose: show HiGHS's banner and log on stdout (default: silent).
        distributed: ``None`` (auto), ``True`` or ``False``: gather the points on rank 0 and
            broadcast the solution (see the module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        head: nn.Linear | str | None = None,
        task: str | None = None,
        radius: float = 0.05,
        objective: str = "paper",
        time_limit: float = 30.0,
        mip_gap: float = 1e-4,
        threads: int = 1,
        node_limit: int | None = NODE_LIMIT,
        n_points: int = -1,
        selection: str = "random",
        margin: float = 1e-4,
        norm: str = "l1",
        min_gain: float = 0.0,
        keep_worse: bool = False,
        loss_fn: Any = None,
        seed: int = 0,
        verbose: bool = False,
        distributed: bool | None = None,
    ):
        if task is not None and task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)} or None, got {task!r}")
        if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 0):
            raise ValueError(f"radius must be a positive finite number, got {radius!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
        _check_solver_args(time_limit, mip_gap, threads)
        if node_limit is not None and not (isinstance(node_limit, int) and node_limit >= 1):
            raise ValueError(f"node_limit must be an int >= 1 or None (unlimited), got "
                             f"{node_limit!r}")
        if not (isinstance(n_points, int) and n_points >= -1):
            raise ValueError(f"n_points must be an int >= -1 (-1: auto, 0: all), got "
                             f"{n_points!r}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {list(SELECTIONS)}, got {selection!r}")
        if task is not None:
            check_selection(task, selection)
        if norm not in ("l1", "linf"):
            raise ValueError(f"norm must be 'l1' or 'linf', got {norm!r}")
        if not (0 <= min_gain <= 1):
            raise ValueError(f"min_gain must be in [0, 1], got {min_gain!r}")
        if not (margin >= 0):
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        if distributed is not None and not isinstance(distributed, bool):
            raise ValueError(f"distributed must be None (auto), True or False, got "
                             f"{distributed!r}")
        self.model = model
        self.head = find_head(model, head)
        self.task, self.objective = task, objective
        self.radius, self.time_limit, self.mip_gap = float(radius), float(time_limit), mip_gap
        self.threads, self.node_limit = int(threads), node_limit
        self.n_points, self.selection = n_points, selection
        self.margin, self.norm, self.min_gain = float(margin), norm, float(min_gain)
        self.keep_worse, self.loss_fn, self.seed = bool(keep_worse), loss_fn, int(seed)
        self.verbose, self.distributed = bool(verbose), distributed
        self.n_solves = 0  # seeds the random selection of each solve

    # ---- pieces ---------------------------------------------------------------------------
    def _task(self, y: torch.Tensor) -> str:
        if self.task is not None:
            return self.task
        return "regression" if torch.is_floating_point(y) else "classification"

    def check_targets(self, y: torch.Tensor) -> str:
        """The task for targets ``y``, or a ``ValueError`` naming the dtype/shape when ``y`` does
        not fit it or the head (before any work is done)."""
        task = self._task(y)
        out = self.head.out_features
        if task == "classification":
            if torch.is_floating_point(y) or torch.is_complex(y) or y.dtype == torch.bool:
                raise ValueError(f"classification needs integer class labels (torch.long), got "
                                 f"y of dtype {y.dtype}; convert with y.long(), or pass "
                                 "task='regression' for real-valued targets")
            if y.dim() != 1:
                raise ValueError(f"classification labels must be 1-D class indices, got shape "
                                 f"{tuple(y.shape)}")
        elif not (y.dim() >= 1 and y.numel() == y.shape[0] * out):
            hint = (" (integer labels of a classifier? those must be an integer dtype, e.g. "
                    "torch.long)" if out > 1 and y.dim() == 1 else "")
            raise ValueError(f"y of dtype {y.dtype} means regression (floating-point targets), "
                             f"but its shape {tuple(y.shape)} does not match the head's "
                             f"{out} outputs{hint}")
        check_selection(task, self.selection)
        return task

    def _loss(self, task: str):
        if self.loss_fn is not None:
            return self.loss_fn
        return F.cross_entropy if task == "classification" else F.mse_loss

    def points_per_solve(self, task: str, n: int) -> int:
        """How many of ``n`` training points go to the solver."""
        if self.n_points == 0:
            return n
        if self.n_points < 0:
            return default_points(task, self.objective, n, self.head.in_features,
                                  self.head.out_features)
        return min(n, self.n_points)

    @torch.no_grad()
    def features(self, x: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, out)``: the head's input and the model's output on ``x`` (eval mode).

        Raises ``ValueError`` if the model's output is not the head's output."""
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []

        def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            captured.append((inp[0], out))

        handle = self.head.register_forward_hook(hook)
        was = self.model.training
        self.model.eval()
        hs, outs = [], []
        try:
            for i in range(0, x.shape[0], chunk):
                captured.clear()
                out = self.model(x[i:i + chunk])
                if len(captured) != 1:
                    raise ValueError(f"the head was called {len(captured)} times in one forward "
                                     "pass; GDSolver needs it called exactly once")
                h, hout = captured[0]
                if h.dim() != 2:
                    raise ValueError(f"the head's input must be 2-D (batch, features), got shape "
                                     f"{tuple(h.shape)}")
                if not (out is hout or (out.shape == hout.shape and torch.equal(out, hout))):
                    raise ValueError("the model's output is not the output of its last nn.Linear "
                                     "(something follows it); pass head= naming the final layer")
                hs.append(h)
                outs.append(out)
        finally:
            handle.remove()
            self.model.train(was)
        return torch.cat(hs), torch.cat(outs)

    def solve(self, x: torch.Tensor, y: torch.Tensor) -> tuple[MILPResult, torch.Tensor]:
        """Select points of ``(x, y)``, build and solve the MILP/LP. Weights are not touched.

        Returns the result and the indices of the selected points (global indices, identical on
        every rank, under data parallelism)."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        task = self.check_targets(y)
        h, out = self.features(x)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.n_solves)
        self.n_solves += 1
        if D.resolve(self.distributed):
            return self._solve_distributed(task, h, out, y, g)
        k = self.points_per_solve(task, h.shape[0])
        idx = select_points(task, out, y, k, self.selection, g)
        return self._solve_points(task, h[idx], y[idx]), idx

    def _solve_distributed(self, task: str, h: torch.Tensor, out: torch.Tensor, y: torch.Tensor,
                           g: torch.Generator) -> tuple[MILPResult, torch.Tensor]:
        """Candidates of every rank -> rank 0 selects and solves -> result broadcast.

        Each rank's candidates are its first ``k`` rows in the selection order (any point
        a single process would select is among them: the global order restricted to a rank's
        rows is that rank's order), sent in row order; rank 0 re-runs the selection on their
        union, which is in global row order, so it picks exactly the single-process points."""
        sizes = D.all_gather_rows(torch.tensor([h.shape[0]])).tolist()
        offsets = np.cumsum([0, *sizes]).tolist()
        start, n_all = offsets[D.rank()], offsets[-1]
        n = h.shape[0]
        k = self.points_per_solve(task, n_all)
        if self.selection == "random":
            chosen = torch.randperm(n_all, generator=g)[:k].sort().values  # same on every rank
            local = chosen[(chosen >= start) & (chosen < start + n)] - start
        elif self.selection == "first":
            local = torch.arange(max(0, min(n, k - start)))
        else:
            local = select_points(task, out, y, k, self.selection).sort().values
        local = local.to(h.device)
        payload = ((local.cpu() + start).numpy(), h[local].detach().cpu(),
                   out[local].detach().cpu(), y[local].detach().cpu())
        parts = D.gather_objects(payload)
        box: tuple[MILPResult, torch.Tensor] | None = None
        if parts is not None:  # rank 0
            gidx = torch.as_tensor(np.concatenate([p[0] for p in parts]))
            hc, oc, yc = (torch.cat([p[i] for p in parts]) for i in (1, 2, 3))
            if self.selection in ("random", "first"):
                pick = torch.arange(len(gidx))
            else:
                pick = select_points(task, oc, yc, k, self.selection)
            box = (self._solve_points(task, hc[pick], yc[pick]), gidx[pick])
        res, idx = D.broadcast_object(box)
        return res, idx

    def _solve_points(self, task: str, h: torch.Tensor, y: torch.Tensor) -> MILPResult:
        """Build and solve the MILP/LP on the selected points' features ``h`` and targets."""
        hs = h.detach().cpu().double().numpy()
        w = self.head.weight.detach().cpu().double().numpy()
        b = self.head.bias.detach().cpu().double().numpy()
        if task == "classification":
            ys = y.detach().cpu().numpy()
            if self.objective == "loss":
                return solve_hinge_lp(hs, ys, w, b, self.radius, 1.0, self.time_limit,
                                      self.threads, seed=self.seed, verbose=self.verbose)
            min_correct = None
            if self.min_gain > 0:
                start = int(np.all(classification_margins(hs, ys, w, b) >= self.margin,
                                   axis=1).sum())
                min_correct = min(len(ys), int(start + self.min_gain * len(ys)))
            return solve_classification_milp(
                hs, ys, w, b, self.radius, self.margin, min_correct, self.time_limit,
                self.mip_gap, self.threads, seed=self.seed, node_limit=self.node_limit,
                verbose=self.verbose)
        ys = y.detach().cpu().double().numpy().reshape(len(hs), -1)
        norm = "l1" if self.objective == "loss" else self.norm
        return solve_regression_lp(hs, ys, w, b, self.radius, norm, self.time_limit,
                                   self.threads, seed=self.seed, verbose=self.verbose)

    @torch.no_grad()
    def validate(self, x: torch.Tensor, y: torch.Tensor, task: str | None = None,
                 chunk: int = 8192) -> tuple[float, float | None]:
        """``(loss, accuracy)`` on ``(x, y)`` in eval mode (accuracy ``None`` for regression);
        summed over the ranks under data parallelism."""
        task = task or self._task(y)
        was = self.model.training
        self.model.eval()
        loss_fn = self._loss(task)
        total = torch.zeros(3, dtype=torch.float64, device=x.device)  # loss sum, rows, correct
        total[1] = x.shape[0]
        for i in range(0, x.shape[0], chunk):
            xb, yb = x[i:i + chunk], y[i:i + chunk]
            out = self.model(xb)
            total[0] += loss_fn(out, yb).double() * xb.shape[0]
            if task == "classification":
                total[2] += (out.argmax(dim=1) == yb).sum()
        self.model.train(was)
        if D.resolve(self.distributed):
            D.all_reduce_sum(total)
        rows = max(1.0, float(total[1]))
        return float(total[0]) / rows, (float(total[2]) / rows if task == "classification"
                                        else None)

    def step(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_val: torch.Tensor,
        y_val: torch.Tensor,
    ) -> dict[str, Any]:
        """One solver step: solve on training points, write the new last layer, keep it only if
        it improves what the solver optimises and the paper claims (:func:`improves`), or if
        ``keep_worse``. Returns an event dict: ``accepted``, ``status``,
        ``objective``/``start_objective``/``bound``/``gap``, ``val_loss_before``/
        ``val_loss_after``, ``val_acc_before``/``val_acc_after`` (classification),
        ``solve_seconds``/``build_seconds``, sizes."""
        task = self.check_targets(y_train)
        loss0, acc0 = self.validate(x_val, y_val, task)
        res, idx = self.solve(x_train, y_train)
        event: dict[str, Any] = {"kind": "milp", "task": task, "objective_kind": self.objective,
                                 **res.summary(), "val_loss_before": loss0,
                                 "val_loss_after": None, "val_acc_before": acc0,
                                 "val_acc_after": None, "accepted": False, "weight_change": 0.0}
        if not res.has_solution:
            return event  # infeasible / out of time: weights untouched
        wt, bt = self.head.weight, self.head.bias
        old_w, old_b = wt.detach().clone(), bt.detach().clone()
        change = max(float(np.abs(res.weight - old_w.cpu().double().numpy()).max()),
                     float(np.abs(res.bias - old_b.cpu().double().numpy()).max()))
        with torch.no_grad():
            wt.copy_(torch.as_tensor(res.weight, dtype=wt.dtype, device=wt.device))
            bt.copy_(torch.as_tensor(res.bias, dtype=bt.dtype, device=bt.device))
        loss1, acc1 = self.validate(x_val, y_val, task)
        accepted = bool(math.isfinite(loss1)
                        and (self.keep_worse or improves(loss0, acc0, loss1, acc1)))
        if not accepted:
            with torch.no_grad():
                wt.copy_(old_w)
                bt.copy_(old_b)
        event.update(val_loss_after=loss1, val_acc_after=acc1, accepted=accepted,
                     weight_change=change)
        return event


def improves(loss0: float, acc0: float | None, loss1: float, acc1: float | None) -> bool:
    """The acceptance rule: classification (accuracies given): higher validation accuracy, or
    equal accuracy and lower validation loss (the MILP maximises correctly classified points,
    and the paper claims accuracy); regression: lower validation loss (the validation error)."""
    if acc0 is not None and acc1 is not None:
        return acc1 > acc0 or (acc1 == acc0 and loss1 < loss0)
    return loss1 < loss0


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
        if self.hp["max_solves"] and self.solves >= self.hp["max_solves"]:
            return 0.0
        if self.hp["solver_seconds"]:
            return self.hp["solver_seconds"] - self.seconds_used
        return math.inf

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
        self.solves += 1
        self.accepted += int(ev["accepted"])
        self.seconds_used += ev["solve_seconds"] + ev["build_seconds"]
        after = ev["val_loss_after"] if ev["accepted"] else val
        self.plateau.patience = backoff_patience(self.hp["patience"], self.hp["backoff"],
                                                 self.solves)
        self.plateau.reset(best=after)  # a new GD phase starts
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
