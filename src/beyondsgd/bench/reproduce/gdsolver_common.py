"""GDSolver (Ashok et al., IJCAI-22) reproduce experiments: what ``gdsolver`` and
``gdsolver_regression`` share — the budget helpers and the mechanism check.

A solve *acted* (:func:`solve_acted`) when it was kept and, for classification, changed the
validation accuracy: the MILP maximises the number of correctly classified points, and a kept
solution that changes no validation prediction moved the weights by ~1e-5 (measured on the
committed store), so the model is SGD's. A row whose seeds mostly have no solve that acted is
"untested: solves kept in k of n seeds (a of b solves)" (:func:`untested_by_solves`).
"""

from __future__ import annotations

import math

PAPER = "GDSolver (Ashok et al., IJCAI 2022)"


def steps_of(rs) -> float:
    """The mean optimizer steps of finished trials (their last evaluation's ``step``)."""
    st = [float(r.evals[-1]["step"]) for r in rs if r.evals and r.evals[-1].get("step")]
    return sum(st) / len(st) if st else math.nan


def budget_of(steps: float, paper: float) -> float | None:
    """Our steps / the paper's (None when unknown)."""
    return steps / paper if math.isfinite(steps) and steps > 0 and paper > 0 else None


def solve_acted(ev: dict) -> bool:
    """Whether a solve event changed the trained model: kept (``accepted``) and, for
    classification, the validation accuracy changed (see the module docstring).

    >>> solve_acted({"accepted": True, "val_acc_before": 0.7, "val_acc_after": 0.7})
    False
    >>> solve_acted({"accepted": True, "val_acc_before": None, "val_acc_after": None})
    True
    """
    if not ev.get("accepted"):
        return False
    a0, a1 = ev.get("val_acc_before"), ev.get("val_acc_after")
    return a0 is None or a1 is None or a0 != a1


def solves_by_seed(per_seed: list[list]) -> tuple[int, int, int]:
    """(seeds with a solve that acted, solves that acted, solves) over ``per_seed`` (one list
    of trials per seed)."""
    seeds = acted = n = 0
    for rs in per_seed:
        ev = [e for r in rs for e in r.events if e.get("kind") == "milp"]
        k = sum(solve_acted(e) for e in ev)
        seeds += k > 0
        acted += k
        n += len(ev)
    return seeds, acted, n


def untested_by_solves(per_seed: list[list]) -> str | None:
    """"untested: ..." when more than half of the seeds have no solve that acted (the row then
    compares the hybrid's GD alone); None else.

    >>> from types import SimpleNamespace as T
    >>> kept = T(events=[{"kind": "milp", "accepted": True}])
    >>> idle = T(events=[{"kind": "milp", "accepted": False}])
    >>> untested_by_solves([[kept], [idle], [idle]])
    'untested: solves kept in 1 of 3 seeds (1 of 3 solves)'
    >>> untested_by_solves([[kept], [kept], [idle]]) is None
    True
    """
    seeds, acted, n = solves_by_seed(per_seed)
    if 2 * (len(per_seed) - seeds) <= len(per_seed):
        return None
    return f"untested: solves kept in {seeds} of {len(per_seed)} seeds ({acted} of {n} solves)"


def checked(verdict: str, why: str, per_seed: list[list] | None) -> tuple[str, str]:
    """(verdict, reason) after the mechanism check of :func:`untested_by_solves`."""
    bad = untested_by_solves(per_seed) if per_seed else None
    return ("untested", f"{bad}; {why}") if bad else (verdict, why)
