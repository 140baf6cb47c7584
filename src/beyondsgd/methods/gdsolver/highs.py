"""The solver half of GDSolver: pass a
:class:`~beyondsgd.methods.gdsolver.milp.LinearProgram` to HiGHS.

The program goes into ``highspy`` once, as CSR arrays, with a warm start; the outcome comes back
as a :class:`MILPResult`. ``solve_classification_milp``, ``solve_hinge_lp`` and
``solve_regression_lp`` build (:mod:`beyondsgd.methods.gdsolver.milp`, where the maths is) and
solve.

Defaults chosen from measurements (``benchmarks/gdsolver_milp_scaling.py``): one thread; for the
MILP no presolve and no primal heuristics (the warm start is feasible, so they only cost time:
presolve and feasibility jump 2-5x the solve on digits/mnist1d features, the sub-MIP heuristics
up to 9 s between two of HiGHS's limit checks without a better solution).

**Deterministic by work, not by seconds.** With one thread HiGHS follows the same path for the
same inputs on any machine; only a limit in seconds makes the outcome depend on the machine's
speed and load. So every solve is bounded by work: the MILP by ``node_limit`` branch-and-bound
nodes *and* ``check_limit`` of HiGHS's limit checks (it checks its limits, through the MIP
interrupt callback, once per root cut-separation round and per node: a node limit alone does
not bound the root, whose cut rounds ran past 30 s on a 200-point instance), an LP by
``iteration_limit`` simplex/IPM iterations. ``time_limit`` stays as an outer safety net; a
result that hit it has ``limit == "time"`` and ``deterministic`` False.

HiGHS prints a banner from C++ when a process creates its first solver, before any option can be
set: unless ``verbose``, that creation runs with stdout silenced.

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
from typing import Any

import numpy as np

from .milp import LinearProgram, build_classification_milp, build_hinge_lp, build_regression_lp
from .relaxation import relaxation_first as _relax_first
from .result import MILPResult, check_solver_args, check_work_limits

__all__ = [
    "CHECK_LIMIT",
    "ITERATION_LIMIT",
    "MIP_OPTIONS",
    "NODE_LIMIT",
    "MILPResult",
    "check_solver_args",
    "check_work_limits",
    "solve_classification_milp",
    "solve_hinge_lp",
    "solve_program",
    "solve_regression_lp",
]


# --------------------------------------------------------------------------------------------
# Solving
# --------------------------------------------------------------------------------------------
# HiGHS options for the MILP (measured in benchmarks/gdsolver_milp_scaling.py): the warm start is
# feasible, so presolve and the primal heuristics only cost time (presolve and feasibility jump
# 2-5x the solve on digits/mnist1d features; the sub-MIP heuristics RINS/RENS took up to 9 s
# between two limit checks and found no better solution on digits_mlp's MILPs).
MIP_OPTIONS: dict[str, Any] = {"presolve": "off", "mip_heuristic_run_feasibility_jump": False,
                               "mip_heuristic_effort": 0.0, "mip_heuristic_run_rins": False,
                               "mip_heuristic_run_rens": False,
                               "mip_heuristic_run_root_reduced_cost": False}
# Work limits (deterministic, unlike seconds; measured in docs/methods/gdsolver.md): the default
# MILPs of digits_mlp / fmnist_mlp end (optimal) within 2-120 limit checks and 0-45 nodes, their
# best solution found by check 110; the LPs within a few thousand iterations.
NODE_LIMIT = 100
CHECK_LIMIT = 200
ITERATION_LIMIT = 20_000
_LIMITS = {"kTimeLimit": "time", "kIterationLimit": "iterations", "kSolutionLimit": "nodes",
           "kInterrupt": "checks"}
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
    node_limit: int | None = NODE_LIMIT,
    verbose: bool = False,
    options: dict[str, Any] | None = None,
    check_limit: int | None = CHECK_LIMIT,
    iteration_limit: int | None = ITERATION_LIMIT,
    relaxation_first: bool = False,
) -> MILPResult:
    """Pass ``lp`` to HiGHS once (CSR arrays), warm-start it, solve within the work limits.

    ``relaxation_first`` (MILP only; exact): solve the LP relaxation first (within
    ``iteration_limit``); when the better of the warm start and the relaxation's solution with
    its binaries rounded (each set to 1 unless one of its rows is then violated) reaches the
    relaxation's bound rounded down (the objective counts points, an integer), it is optimal
    and the MILP is skipped (``info["shortcut"]``); otherwise it is the MILP's start.

    MILP: at most ``node_limit`` branch-and-bound nodes (HiGHS ``mip_max_nodes``) and
    ``check_limit`` of HiGHS's limit checks (counted in its MIP interrupt callback: one per root
    cut round and per node); LP: at most ``iteration_limit`` simplex and IPM iterations. With
    one thread these make the outcome independent of the machine's speed; ``time_limit``
    (seconds) is a safety net, reported as ``limit == "time"``, ``deterministic`` False.
    ``None``: no such limit. ``verbose`` shows HiGHS's banner and log on stdout (default:
    silent).
    The returned weights are clipped into the column box (HiGHS' feasibility tolerance may leave
    them ~1e-7 outside). Nothing is returned when there is no feasible solution.
    """
    import highspy

    check_solver_args(time_limit, mip_gap, threads)
    check_work_limits(node_limit, check_limit, iteration_limit)
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
    mip = bool(lp.integer.any())
    if node_limit is not None:
        h.setOptionValue("mip_max_nodes", int(node_limit))
    if iteration_limit is not None:
        h.setOptionValue("simplex_iteration_limit", int(iteration_limit))
        h.setOptionValue("ipm_iteration_limit", int(iteration_limit))
    checks = [0]
    if mip and check_limit is not None:
        def count_checks(event: Any) -> None:
            checks[0] += 1
            if checks[0] >= check_limit:
                event.interrupt()

        h.cbMipInterrupt.subscribe(count_checks)
    defaults = MIP_OPTIONS if mip else {}
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
    if mip:
        model.integrality_ = np.where(lp.integer, highspy.HighsVarType.kInteger,
                                      highspy.HighsVarType.kContinuous).tolist()
    status = h.passModel(model)
    if status == highspy.HighsStatus.kError:
        raise RuntimeError("HiGHS rejected the model (passModel returned kError)")
    start_x = lp.start_solution
    shortcut = ""
    build_seconds += time.perf_counter() - t0
    t1 = time.perf_counter()
    if mip and relaxation_first:
        start_x, shortcut = _relax_first(h, lp, model, warm_start)
    if shortcut:
        run_status = highspy.HighsStatus.kOk
    else:
        if warm_start or start_x is not lp.start_solution:
            sol = highspy.HighsSolution()
            sol.col_value = start_x.tolist()
            h.setSolution(sol)
        run_status = h.run()
    solve_seconds = time.perf_counter() - t1
    if shortcut:
        x = np.clip(start_x, lp.col_lower, lp.col_upper)
        objective = (float(lp.cost @ x) + lp.objective_offset) * lp.objective_scale
        return MILPResult(
            status="optimal", has_solution=True, objective=objective, bound=objective, gap=0.0,
            start_objective=(float(lp.cost @ lp.start_solution) + lp.objective_offset)
            * lp.objective_scale, solve_seconds=solve_seconds, build_seconds=build_seconds,
            n_points=int(lp.info.get("n_points", 0)), num_col=lp.num_col, num_row=lp.num_row,
            nnz=lp.nnz, n_binaries=int(lp.integer.sum()), highs_status="Optimal", limit="",
            deterministic=True, weight=x[: lp.n_weight],
            bias=x[lp.n_weight: lp.n_weight + lp.n_bias],
            info={**lp.info, "nodes": 0, "checks": 0, "shortcut": shortcut})
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
        objective = (float(lp.cost @ x) + lp.objective_offset) * lp.objective_scale
        if mip:
            bound = (float(info.mip_dual_bound) + lp.objective_offset) * lp.objective_scale
            gap = float(info.mip_gap)
        else:
            bound, gap = objective, 0.0
    if mip:  # the work done, in the units of the limits
        work = {"nodes": int(info.mip_node_count), "checks": checks[0]}
    else:
        work = {"iterations": int(info.simplex_iteration_count)
                + max(0, int(info.ipm_iteration_count))}
    limit = "" if status_s in ("optimal", "infeasible") else \
        _LIMITS.get(str(ms).rsplit(".", 1)[-1], "")
    return MILPResult(
        status=status_s, has_solution=has_sol, objective=objective, bound=bound, gap=gap,
        start_objective=(float(lp.cost @ lp.start_solution) + lp.objective_offset)
        * lp.objective_scale,
        solve_seconds=solve_seconds, build_seconds=build_seconds,
        n_points=int(lp.info.get("n_points", 0)), num_col=lp.num_col, num_row=lp.num_row,
        nnz=lp.nnz, n_binaries=int(lp.integer.sum()), highs_status=h.modelStatusToString(ms),
        limit=limit, deterministic=limit != "time", weight=weight, bias=bias,
        info={**lp.info, **work, "shortcut": ""},
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
    node_limit: int | None = NODE_LIMIT,
    verbose: bool = False,
    check_limit: int | None = CHECK_LIMIT,
    reduce: bool = True,
    relaxation_first: bool = True,
    options: dict[str, Any] | None = None,
) -> MILPResult:
    """Build (``build_classification_milp``) and solve the classification MILP within the work
    limits ``node_limit`` and ``check_limit`` (see :func:`solve_program`).

    ``result.weight`` is ``C x d`` and ``result.bias`` is ``C`` when a solution was found;
    ``result.objective`` is the number of points with every margin >= ``margin``.
    """
    check_solver_args(time_limit, mip_gap, threads)
    check_work_limits(node_limit, check_limit, None)
    t0 = time.perf_counter()
    lp = build_classification_milp(features, labels, weight, bias, radius, margin, min_correct,
                                   reduce=reduce)
    return _solve_head(lp, t0, "n_classes", time_limit, mip_gap, threads, warm_start, seed,
                       node_limit=node_limit, check_limit=check_limit, verbose=verbose,
                       relaxation_first=relaxation_first, options=options)


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
    iteration_limit: int | None = ITERATION_LIMIT,
) -> MILPResult:
    """Build (``build_regression_lp``) and solve the regression LP within ``iteration_limit``
    simplex/IPM iterations (see :func:`solve_program`).

    ``result.objective`` is the mean absolute error (``l1``) or the max error (``linf``) on the
    given points at the solution; ``result.start_objective`` the same at the current weights.
    """
    check_solver_args(time_limit, 0.0, threads)
    check_work_limits(None, None, iteration_limit)
    t0 = time.perf_counter()
    lp = build_regression_lp(features, targets, weight, bias, radius, norm)
    return _solve_head(lp, t0, "n_outputs", time_limit, 0.0, threads, warm_start, seed,
                       verbose=verbose, iteration_limit=iteration_limit)


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
    iteration_limit: int | None = ITERATION_LIMIT,
) -> MILPResult:
    """Build (``build_hinge_lp``) and solve the multi-class hinge LP (our extension) within
    ``iteration_limit`` simplex/IPM iterations.

    ``result.objective`` is the mean hinge loss on the given points at the solution."""
    check_solver_args(time_limit, 0.0, threads)
    check_work_limits(None, None, iteration_limit)
    t0 = time.perf_counter()
    lp = build_hinge_lp(features, labels, weight, bias, radius, hinge)
    return _solve_head(lp, t0, "n_classes", time_limit, 0.0, threads, warm_start, seed,
                       verbose=verbose, iteration_limit=iteration_limit)
