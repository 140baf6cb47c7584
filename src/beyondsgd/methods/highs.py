"""The solver half of GDSolver: pass a :class:`~beyondsgd.methods.milp.LinearProgram` to HiGHS.

The program goes into ``highspy`` once, as CSR arrays, with a warm start; the outcome comes back
as a :class:`MILPResult`. ``solve_classification_milp``, ``solve_hinge_lp`` and
``solve_regression_lp`` build (:mod:`beyondsgd.methods.milp`, where the maths is) and solve.

Defaults chosen from measurements (``benchmarks/gdsolver_milp_scaling.py``): one thread; for the
MILP no presolve and no feasibility-jump heuristic (the warm start is feasible and the root LP is
usually optimal, so they only cost time, 2-5x the solve on digits/mnist1d features); an optional
node limit, which with one thread makes the outcome independent of the machine's speed, unlike
a binding time limit. HiGHS prints a banner from C++ when a process creates its first solver,
before any option can be set: unless ``verbose``, that creation runs with stdout silenced.

Example::

    >>> import numpy as np
    >>> h = np.array([[1.0, 0.0], [0.0, 1.0]]); y = np.array([0, 1])
    >>> res = solve_classification_milp(h, y, np.zeros((2, 2)), np.zeros(2), radius=0.1)
    >>> res.status, res.objective
    ('optimal', 2.0)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .milp import LinearProgram, build_classification_milp, build_hinge_lp, build_regression_lp

__all__ = [
    "MIP_OPTIONS",
    "MILPResult",
    "check_solver_args",
    "solve_classification_milp",
    "solve_hinge_lp",
    "solve_program",
    "solve_regression_lp",
]


@dataclass
class MILPResult:
    """Outcome of one solver call.

    ``status``: ``"optimal"`` (proved within ``mip_gap``), ``"feasible"`` (stopped at the time
    limit with a solution), ``"infeasible"``, ``"no_solution"`` (stopped without a solution) or
    ``"error"``. ``weight``/``bias`` are set only when ``has_solution`` (clipped into the box).
    ``objective`` is the number of points correct with margin (classification MILP), the mean
    hinge loss (hinge LP) or the mean absolute / max error (regression); ``start_objective`` is
    the same at the warm start; ``bound`` is the solver's dual bound and ``gap`` the relative
    gap.
    """

    status: str
    has_solution: bool
    objective: float | None
    bound: float | None
    gap: float | None
    start_objective: float | None
    solve_seconds: float
    build_seconds: float
    n_points: int
    num_col: int
    num_row: int
    nnz: int
    n_binaries: int
    highs_status: str = ""
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The scalar fields as a JSON-friendly dict (no arrays)."""
        d = asdict(self)
        d.pop("weight")
        d.pop("bias")
        info = d.pop("info")
        d.update({k: v for k, v in info.items() if np.isscalar(v)})
        return d


# --------------------------------------------------------------------------------------------
# Solving
# --------------------------------------------------------------------------------------------
def check_solver_args(time_limit: float, mip_gap: float, threads: int) -> None:
    """A clear ``ValueError`` for a bad time limit, gap or thread count."""
    if not (time_limit > 0):
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit!r}")
    if not (0 <= mip_gap < 1):
        raise ValueError(f"mip_gap must be in [0, 1), got {mip_gap!r}")
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")


# HiGHS options for the MILP (measured in benchmarks/gdsolver_milp_scaling.py): the warm start is
# feasible and the root LP usually optimal, so presolve and the feasibility-jump heuristic only
# cost time (2-5x the solve on digits/mnist1d features).
MIP_OPTIONS: dict[str, Any] = {"presolve": "off", "mip_heuristic_run_feasibility_jump": False}
_SCHEDULER_THREADS: int | None = None
_BANNER_DONE = False


@contextlib.contextmanager
def _stdout_to_devnull():
    """Point file descriptor 1 at /dev/null (C-level writes included), then restore it."""
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            try:
                yield
            finally:
                libc.fflush(None)  # C stdio buffers go to /dev/null, not to the restored fd
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def _new_highs(verbose: bool):
    """A ``highspy.Highs`` instance. HiGHS prints its copyright banner on stdout (from C++) when
    the first instance of a process is created, before any option can be set; unless
    ``verbose``, that first construction runs with stdout pointed at /dev/null."""
    import highspy

    global _BANNER_DONE
    if _BANNER_DONE or verbose:
        _BANNER_DONE = True
        return highspy.Highs()
    try:
        with _stdout_to_devnull():
            h = highspy.Highs()
    except OSError:  # no file descriptor 1 (e.g. a detached process): nothing to protect
        h = highspy.Highs()
    _BANNER_DONE = True
    return h


def solve_program(
    lp: LinearProgram,
    time_limit: float = 30.0,
    mip_gap: float = 1e-4,
    threads: int = 1,
    warm_start: bool = True,
    seed: int = 0,
    build_seconds: float = 0.0,
    node_limit: int | None = None,
    verbose: bool = False,
    options: dict[str, Any] | None = None,
) -> MILPResult:
    """Pass ``lp`` to HiGHS once (CSR arrays), warm-start it, solve within ``time_limit``.

    ``node_limit`` caps the branch-and-bound nodes (HiGHS ``mip_max_nodes``): with one thread
    the outcome then does not depend on the machine's speed, unlike a binding time limit.
    ``verbose`` shows HiGHS's banner and log on stdout (default: silent).
    The returned weights are clipped into the column box (HiGHS' feasibility tolerance may leave
    them ~1e-7 outside). Nothing is returned when there is no feasible solution.
    """
    import highspy

    check_solver_args(time_limit, mip_gap, threads)
    if node_limit is not None and int(node_limit) < 0:
        raise ValueError(f"node_limit must be >= 0 or None, got {node_limit!r}")
    global _SCHEDULER_THREADS
    if _SCHEDULER_THREADS not in (None, int(threads)):
        # HiGHS keeps one global task scheduler; a new thread count needs a reset.
        highspy.Highs.resetGlobalScheduler(True)
    _SCHEDULER_THREADS = int(threads)
    t0 = time.perf_counter()
    h = _new_highs(verbose)
    h.setOptionValue("output_flag", bool(verbose))
    h.setOptionValue("time_limit", float(time_limit))
    h.setOptionValue("mip_rel_gap", float(mip_gap))
    h.setOptionValue("threads", int(threads))
    h.setOptionValue("random_seed", int(seed))
    if node_limit is not None:
        h.setOptionValue("mip_max_nodes", int(node_limit))
    defaults = MIP_OPTIONS if lp.integer.any() else {}
    for key, val in {**defaults, **(options or {})}.items():
        if h.setOptionValue(key, val) != highspy.HighsStatus.kOk:
            raise ValueError(f"HiGHS rejected option {key}={val!r}")
    model = highspy.HighsLp()
    model.num_col_ = lp.num_col
    model.num_row_ = lp.num_row
    model.col_cost_ = lp.cost
    model.col_lower_ = lp.col_lower
    model.col_upper_ = lp.col_upper
    model.row_lower_ = lp.row_lower
    model.row_upper_ = lp.row_upper
    model.sense_ = highspy.ObjSense.kMaximize if lp.maximize else highspy.ObjSense.kMinimize
    model.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    model.a_matrix_.start_ = lp.start.astype(np.int32)
    model.a_matrix_.index_ = lp.index
    model.a_matrix_.value_ = lp.value
    if lp.integer.any():
        model.integrality_ = np.where(lp.integer, highspy.HighsVarType.kInteger,
                                      highspy.HighsVarType.kContinuous).tolist()
    status = h.passModel(model)
    if status == highspy.HighsStatus.kError:
        raise RuntimeError("HiGHS rejected the model (passModel returned kError)")
    if warm_start:
        sol = highspy.HighsSolution()
        sol.col_value = lp.start_solution.tolist()
        h.setSolution(sol)
    build_seconds += time.perf_counter() - t0
    t1 = time.perf_counter()
    run_status = h.run()
    solve_seconds = time.perf_counter() - t1
    ms = h.getModelStatus()
    info = h.getInfo()
    has_sol = int(info.primal_solution_status) == 2 and run_status != highspy.HighsStatus.kError
    S = highspy.HighsModelStatus
    if ms == S.kOptimal:
        status_s = "optimal"
    elif ms == S.kInfeasible:
        status_s = "infeasible"
    elif has_sol:
        status_s = "feasible"
    elif ms in (S.kTimeLimit, S.kIterationLimit, S.kInterrupt, S.kSolutionLimit):
        status_s = "no_solution"
    else:
        status_s = "error"
    has_sol = has_sol and status_s in ("optimal", "feasible")
    weight = bias = None
    objective = bound = gap = None
    if has_sol:
        x = np.clip(np.asarray(h.getSolution().col_value, dtype=np.float64),
                    lp.col_lower, lp.col_upper)
        weight = x[: lp.n_weight]
        bias = x[lp.n_weight: lp.n_weight + lp.n_bias]
        objective = float(lp.cost @ x) * lp.objective_scale
        if lp.integer.any():
            bound = float(info.mip_dual_bound) * lp.objective_scale
            gap = float(info.mip_gap)
        else:
            bound, gap = objective, 0.0
    return MILPResult(
        status=status_s, has_solution=has_sol, objective=objective, bound=bound, gap=gap,
        start_objective=float(lp.cost @ lp.start_solution) * lp.objective_scale,
        solve_seconds=solve_seconds, build_seconds=build_seconds,
        n_points=int(lp.info.get("n_points", 0)), num_col=lp.num_col, num_row=lp.num_row,
        nnz=lp.nnz, n_binaries=int(lp.integer.sum()), highs_status=h.modelStatusToString(ms),
        weight=weight, bias=bias, info=dict(lp.info),
    )


def solve_classification_milp(
    features: Any,
    labels: Any,
    weight: Any,
    bias: Any,
    radius: float,
    margin: float = 1e-4,
    min_correct: int | None = None,
    time_limit: float = 30.0,
    mip_gap: float = 1e-4,
    threads: int = 1,
    warm_start: bool = True,
    seed: int = 0,
    node_limit: int | None = None,
    verbose: bool = False,
) -> MILPResult:
    """Build (``build_classification_milp``) and solve the classification MILP.

    ``result.weight`` is ``C x d`` and ``result.bias`` is ``C`` when a solution was found;
    ``result.objective`` is the number of points with every margin >= ``margin``.
    """
    check_solver_args(time_limit, mip_gap, threads)
    t0 = time.perf_counter()
    lp = build_classification_milp(features, labels, weight, bias, radius, margin, min_correct)
    return _solve_head(lp, t0, "n_classes", time_limit, mip_gap, threads, warm_start, seed,
                       node_limit=node_limit, verbose=verbose)


def _solve_head(lp: LinearProgram, t0: float, rows_key: str, time_limit: float, mip_gap: float,
                threads: int, warm_start: bool, seed: int, **kw: Any) -> MILPResult:
    """Solve ``lp`` (built since ``t0``) and shape the head's weight as (lp.info[rows_key],
    n_features)."""
    res = solve_program(lp, time_limit, mip_gap, threads, warm_start, seed,
                        build_seconds=time.perf_counter() - t0, **kw)
    if res.weight is not None:
        res.weight = res.weight.reshape(lp.info[rows_key], lp.info["n_features"])
    return res


def solve_regression_lp(
    features: Any,
    targets: Any,
    weight: Any,
    bias: Any,
    radius: float,
    norm: str = "l1",
    time_limit: float = 30.0,
    threads: int = 1,
    warm_start: bool = True,
    seed: int = 0,
    verbose: bool = False,
) -> MILPResult:
    """Build (``build_regression_lp``) and solve the regression LP.

    ``result.objective`` is the mean absolute error (``l1``) or the max error (``linf``) on the
    given points at the solution; ``result.start_objective`` the same at the current weights.
    """
    check_solver_args(time_limit, 0.0, threads)
    t0 = time.perf_counter()
    lp = build_regression_lp(features, targets, weight, bias, radius, norm)
    return _solve_head(lp, t0, "n_outputs", time_limit, 0.0, threads, warm_start, seed,
                       verbose=verbose)


def solve_hinge_lp(
    features: Any,
    labels: Any,
    weight: Any,
    bias: Any,
    radius: float,
    hinge: float = 1.0,
    time_limit: float = 30.0,
    threads: int = 1,
    warm_start: bool = True,
    seed: int = 0,
    verbose: bool = False,
) -> MILPResult:
    """Build (``build_hinge_lp``) and solve the multi-class hinge LP (our extension).

    ``result.objective`` is the mean hinge loss on the given points at the solution."""
    check_solver_args(time_limit, 0.0, threads)
    t0 = time.perf_counter()
    lp = build_hinge_lp(features, labels, weight, bias, radius, hinge)
    return _solve_head(lp, t0, "n_classes", time_limit, 0.0, threads, warm_start, seed,
                       verbose=verbose)
