"""GDSolver's LP-relaxation-first shortcut (issue 26): solve the relaxation of the classification
MILP, round it, and skip branch and bound when the rounded solution or the warm start reaches the
relaxation's bound rounded down (then it is provably optimal); otherwise it is the MILP's start.
Exact and deterministic: no limit in seconds is involved."""

from __future__ import annotations

from typing import Any

import numpy as np

from .milp import LinearProgram


def row_activity(lp: LinearProgram, x: np.ndarray) -> np.ndarray:
    rows = np.repeat(np.arange(lp.num_row), np.diff(lp.start))
    return np.bincount(rows, weights=lp.value * x[lp.index], minlength=lp.num_row)


def is_feasible(lp: LinearProgram, x: np.ndarray, tol: float = 1e-7) -> bool:
    act = row_activity(lp, x)
    return bool(np.all(act >= lp.row_lower - tol) and np.all(act <= lp.row_upper + tol)
                and np.all(x >= lp.col_lower - tol) and np.all(x <= lp.col_upper + tol))


def relaxation_first(h: Any, lp: LinearProgram, model: Any, warm_start: bool
                      ) -> tuple[np.ndarray, str]:
    """Solve the LP relaxation of the (maximising, integral-objective) MILP already passed to
    ``h``; return ``(start, shortcut)``: the best known solution (the warm start or the rounded
    relaxation) and ``"relaxation"``/``"start"`` when it provably is optimal, else ``""``.
    The model's integrality is restored before returning."""
    import highspy

    ints = np.flatnonzero(lp.integer)
    best = lp.start_solution if warm_start else None
    if not (lp.maximize and np.all(lp.cost[lp.integer] == 1.0)
            and np.all(lp.cost[~lp.integer] == 0.0)):
        return lp.start_solution, ""
    cont = highspy.HighsVarType.kContinuous
    h.changeColsIntegrality(len(ints), ints.astype(np.int32), np.full(len(ints), cont))
    h.run()
    ok = h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    x = np.asarray(h.getSolution().col_value, dtype=np.float64) if ok else None
    bound = float(h.getInfo().objective_function_value) if ok else None
    h.changeColsIntegrality(len(ints), ints.astype(np.int32),
                            np.full(len(ints), highspy.HighsVarType.kInteger))
    h.clearSolver()
    if x is None:
        return lp.start_solution, ""
    x = np.clip(x, lp.col_lower, lp.col_upper)
    # round: every binary 1 (up to its bound), then 0 for the binaries of the violated rows
    x[ints] = lp.col_upper[ints]
    act = row_activity(lp, x)
    bad = np.flatnonzero(act < lp.row_lower - 1e-7)
    if bad.size:
        rows = np.repeat(np.arange(lp.num_row), np.diff(lp.start))
        on = np.isin(rows, bad) & lp.integer[lp.index] & (lp.value < 0)
        x[lp.index[on]] = 0.0
    cands = [c for c in (x, best) if c is not None and is_feasible(lp, c)]
    if not cands:
        return lp.start_solution, ""
    top = max(cands, key=lambda c: float(lp.cost @ c))
    if float(lp.cost @ top) >= np.floor(bound + 1e-6):
        return top, ("start" if top is best else "relaxation")
    return top, ""
