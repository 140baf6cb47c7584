"""One GDSolver solver step for your own training loop (:class:`GDSolver`).

Ashok, Nagisetty, Srinivasa & Ganesh (IJCAI-22, Sec. 3, "Solver step"): freeze the head's inputs
on some training points, solve the MILP/LP of :mod:`beyondsgd.methods.gdsolver.milp` over the
head (with :mod:`beyondsgd.methods.gdsolver.highs`), write the solution, and keep it only if it
improves the validation accuracy (classification; ties: loss) or error (regression). The
registered method around it is :mod:`beyondsgd.methods.gdsolver.method`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ... import distributed as D
from .highs import (
    MILPResult,
    check_solver_args,
    check_work_limits,
    solve_classification_milp,
    solve_hinge_lp,
    solve_regression_lp,
)
from .milp import classification_margins
from .points import (
    BOXES,
    CHECK_LIMIT,
    ITERATION_LIMIT,
    NODE_LIMIT,
    OBJECTIVES,
    SELECTIONS,
    TASKS,
    check_n_points,
    check_selection,
    default_points,
    effective_selection,
    find_head,
    fit_radius,
    flip_radius,
    improves,
    select_points,
    unwrap_model,
)

__all__ = ["GDSolver"]


class GDSolver:
    """One GDSolver solver step for your own training loop.

    Args:
        model: the network; its output must be the output of ``head``.
        head: the final ``nn.Linear`` (module or name); default: the last ``nn.Linear``.
        task: ``"classification"`` or ``"regression"``; default: from the labels' dtype
            (integer labels: classification).
        radius: half-width of the box around the current weights and biases (the official code's
            ``w_range / 2``; 0.05 for its MNIST/CIFAR models); with ``box="fit"`` its upper bound.
        box: ``"fit"`` (default; the classification MILP): the radius is the largest, at most
            ``radius``, at which no training point left out of the MILP can change class
            (:func:`~beyondsgd.methods.gdsolver.points.fit_radius`), so the MILP maximises the
            number of correct training points in that box over the whole training set;
            ``"fixed"``: ``radius`` (official). The LPs always use ``radius``.
        objective: ``"paper"``: the paper's solver problem (classification: the MILP maximising
            the number of points correct with margin; regression: the L1/L-inf fit LP);
            ``"loss"`` (**our extension**, not in the paper): minimise a piecewise-linear
            surrogate of the training loss inside the box, an LP (classification: the
            multi-class hinge loss on ``LP_POINTS`` random points; regression: the L1 error
            over all training points up to ``LOSS_REGRESSION_NONZEROS``).
        node_limit, check_limit, iteration_limit: the work limits (``None``: unlimited): the
            MILP's branch-and-bound nodes and HiGHS limit checks (one per root cut round and per
            node), the LPs' simplex/IPM iterations. With one thread the outcome then does not
            depend on the machine's speed.
        time_limit, mip_gap, threads: HiGHS options (seconds, relative gap, threads); the time
            limit is a safety net whose hitting is reported (``limit="time"``,
            ``deterministic=False`` in the event).
        n_points, selection: how many training points go to the solver and which (see
            :func:`select_points`). ``n_points``: -1 (default, auto: :func:`default_points`,
            for the MILP as many points as keep it near 75k nonzeros -- 65 for a 128-wide
            10-class head --, 256 for the hinge LP, for the regression LP all points up to
            about 32k nonzeros) or a positive count; 0 is refused (every point:
            ``selection="all"``). ``selection="margin"`` (default): the points nearest to
            changing class (regression: random); ``"misclassified"`` with ``n_points=32`` is the
            official classification rule, ``"first"`` the official regression rule.
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

    ``model`` may be wrapped: ``torch.compile``'s module and ``DistributedDataParallel`` /
    ``DataParallel`` are unwrapped (:func:`~beyondsgd.methods.gdsolver.points.unwrap_model`).
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
        selection: str = "margin",
        margin: float = 1e-4,
        norm: str = "l1",
        min_gain: float = 0.0,
        keep_worse: bool = False,
        loss_fn: Any = None,
        seed: int = 0,
        verbose: bool = False,
        distributed: bool | None = None,
        box: str = "fit",
        check_limit: int | None = CHECK_LIMIT,
        iteration_limit: int | None = ITERATION_LIMIT,
    ):
        if task is not None and task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)} or None, got {task!r}")
        if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 0):
            raise ValueError(f"radius must be a positive finite number, got {radius!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
        check_solver_args(time_limit, mip_gap, threads)
        check_work_limits(node_limit, check_limit, iteration_limit)
        check_n_points(n_points)
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {list(SELECTIONS)}, got {selection!r}")
        if task is not None:
            check_selection(task, selection)
        if box not in BOXES:
            raise ValueError(f"box must be one of {list(BOXES)}, got {box!r}")
        if norm not in ("l1", "linf"):
            raise ValueError(f"norm must be 'l1' or 'linf', got {norm!r}")
        if not (0 <= min_gain <= 1):
            raise ValueError(f"min_gain must be in [0, 1], got {min_gain!r}")
        if not (margin >= 0):
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        if distributed is not None and not isinstance(distributed, bool):
            raise ValueError(f"distributed must be None (auto), True or False, got "
                             f"{distributed!r}")
        self.model = unwrap_model(model)
        self.head = find_head(self.model, head)
        self.task, self.objective = task, objective
        self.radius, self.time_limit, self.mip_gap = float(radius), float(time_limit), mip_gap
        self.threads = int(threads)
        self.node_limit = None if node_limit is None else int(node_limit)
        self.check_limit = None if check_limit is None else int(check_limit)
        self.iteration_limit = None if iteration_limit is None else int(iteration_limit)
        self.n_points, self.selection = int(n_points), selection
        self.margin, self.norm, self.min_gain = float(margin), norm, float(min_gain)
        self.keep_worse, self.loss_fn, self.seed = bool(keep_worse), loss_fn, int(seed)
        self.verbose, self.distributed = bool(verbose), distributed
        self.box = box
        self.n_solves = 0  # seeds the random selection of each solve

    def __repr__(self) -> str:
        name = next((n for n, m in self.model.named_modules() if m is self.head), "")
        points = "auto" if self.n_points < 0 else str(self.n_points)
        return (f"GDSolver(head={name!r} Linear({self.head.in_features} -> "
                f"{self.head.out_features}), objective={self.objective!r}, "
                f"radius={self.radius:g} ({self.box}), selection={self.selection!r}, "
                f"n_points={points}, margin={self.margin:g}, keep_worse={self.keep_worse}, "
                f"limits: nodes={self.node_limit}, checks={self.check_limit}, "
                f"iterations={self.iteration_limit}, mip_gap={self.mip_gap:g}, "
                f"threads={self.threads}, time_limit={self.time_limit:g} s (safety net))")

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
        """How many of ``n`` training points go to the solver (before ``selection="all"``)."""
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
        idx = select_points(task, out, y, k, self.selection, g, h, self.margin)
        radius = self.radius
        if self._fits(task):
            rest = torch.ones(h.shape[0], dtype=torch.bool, device=h.device)
            rest[idx] = False
            t = flip_radius(out[rest], y[rest], h[rest], self.margin)
            radius = fit_radius(t.min() if t.numel() else math.inf, self.radius)
        return self._solve_points(task, h[idx], y[idx], radius), idx

    def _fits(self, task: str) -> bool:
        """Is the radius fitted to the points (``box="fit"``: the classification MILP)?"""
        return self.box == "fit" and task == "classification" and self.objective == "paper"

    def _solve_distributed(self, task: str, h: torch.Tensor, out: torch.Tensor, y: torch.Tensor,
                           g: torch.Generator) -> tuple[MILPResult, torch.Tensor]:
        """Candidates of every rank -> rank 0 selects and solves -> result broadcast.

        Each rank's candidates are its first ``k`` rows in the selection order (any point a
        single process would select is among them: the global order restricted to a rank's rows
        is that rank's order), sent in row order with the smallest :func:`flip_radius` of its
        other rows (``box="fit"``); rank 0 re-runs the selection on their union, which is in
        global row order, so it picks exactly the single-process points, and the smallest flip
        radius of the points left out -- its unpicked candidates and every rank's other rows --
        gives the single-process radius."""
        sizes = D.all_gather_rows(torch.tensor([h.shape[0]])).tolist()
        offsets = np.cumsum([0, *sizes]).tolist()
        start, n_all = offsets[D.rank()], offsets[-1]
        n = h.shape[0]
        k = self.points_per_solve(task, n_all)
        sel, fits = effective_selection(task, self.selection), self._fits(task)
        if sel == "random":
            chosen = torch.randperm(n_all, generator=g)[:k].sort().values  # same on every rank
            local = chosen[(chosen >= start) & (chosen < start + n)] - start
        elif sel == "first":
            local = torch.arange(max(0, min(n, k - start)))
        else:
            local = select_points(task, out, y, k, sel, None, h, self.margin).sort().values
        local = local.to(h.device)
        t_rest = math.inf
        if fits:
            rest = torch.ones(n, dtype=torch.bool, device=h.device)
            rest[local] = False
            if bool(rest.any()):
                t_rest = float(flip_radius(out[rest], y[rest], h[rest], self.margin).min())
        payload = ((local.cpu() + start).numpy(), h[local].detach().cpu(),
                   out[local].detach().cpu(), y[local].detach().cpu(), t_rest)
        parts = D.gather_objects(payload)
        box: tuple[MILPResult, torch.Tensor] | None = None
        if parts is not None:  # rank 0
            gidx = torch.as_tensor(np.concatenate([p[0] for p in parts]))
            hc, oc, yc = (torch.cat([p[i] for p in parts]) for i in (1, 2, 3))
            if sel in ("random", "first"):
                pick = torch.arange(len(gidx))
            else:
                pick = select_points(task, oc, yc, k, sel, None, hc, self.margin)
            radius = self.radius
            if fits:
                left = torch.ones(len(gidx), dtype=torch.bool)
                left[pick] = False
                t = [p[4] for p in parts]
                if bool(left.any()):
                    t.append(float(flip_radius(oc[left], yc[left], hc[left],
                                               self.margin).min()))
                radius = fit_radius(min(t), self.radius)
            box = (self._solve_points(task, hc[pick], yc[pick], radius), gidx[pick])
        res, idx = D.broadcast_object(box)
        return res, idx

    def _solve_points(self, task: str, h: torch.Tensor, y: torch.Tensor, radius: float
                      ) -> MILPResult:
        """Build and solve the MILP/LP on the selected points' features ``h`` and targets,
        in the box of half-width ``radius``."""
        hs = h.detach().cpu().double().numpy()
        w = self.head.weight.detach().cpu().double().numpy()
        b = self.head.bias.detach().cpu().double().numpy()
        if task == "classification":
            ys = y.detach().cpu().numpy()
            if self.objective == "loss":
                return solve_hinge_lp(hs, ys, w, b, radius, 1.0, self.time_limit,
                                      self.threads, seed=self.seed, verbose=self.verbose,
                                      iteration_limit=self.iteration_limit)
            min_correct = None
            if self.min_gain > 0:
                start = int(np.all(classification_margins(hs, ys, w, b) >= self.margin,
                                   axis=1).sum())
                min_correct = min(len(ys), int(start + self.min_gain * len(ys)))
            return solve_classification_milp(
                hs, ys, w, b, radius, self.margin, min_correct, self.time_limit,
                self.mip_gap, self.threads, seed=self.seed, node_limit=self.node_limit,
                check_limit=self.check_limit, verbose=self.verbose)
        ys = y.detach().cpu().double().numpy().reshape(len(hs), -1)
        norm = "l1" if self.objective == "loss" else self.norm
        return solve_regression_lp(hs, ys, w, b, radius, norm, self.time_limit,
                                   self.threads, seed=self.seed, verbose=self.verbose,
                                   iteration_limit=self.iteration_limit)

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
