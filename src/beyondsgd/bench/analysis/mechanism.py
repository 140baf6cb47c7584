"""Whether a method acted in its runs: the mechanism checks behind an "untested" verdict.

A claim about a method is only tested where the method did what makes it that method. Two
checks, each on the seeds of one (problem, method, train fraction), from the stored trials:

- **collapsed**: a seed that learnt nothing (:func:`is_collapsed`: status ``collapsed``, or a
  ``finished`` trial of an older store whose final training loss is within 1 % of its epoch-0
  one or above it, :func:`beyondsgd.bench.store.ends_collapsed`). Its values are a diverged seed's.
- **no accepted solve** (GDSolver): every MILP solve is a ``{"kind": "milp", "accepted": ...}``
  event (:meth:`beyondsgd.methods.gdsolver.solver.GDSolver.step`); a seed none of whose
  solves was kept trained as SGD alone, so the hybrid was never compared.

:func:`untested_note`: when **more than half** of the method's seeds collapsed, or (GDSolver)
accepted no solve, the claim is *untested* on that problem, whatever the tests say: the seeds
that did act are a minority, and a verdict would be about the others. Half or fewer: the verdict
stands (the collapsed seeds count as diverged ones, shown as ``coll k/n``). A comparison whose
seeds collapsed in more than half makes the claim untested too (it was compared with nothing).

>>> solves([{"kind": "milp", "accepted": False}, {"kind": "milp", "accepted": True},
...         {"kind": "analysis"}])
(2, 1)
>>> untested_note("gdsolver", {"collapsed": [0.0] * 3, "solves": [3.0] * 3,
...                            "accepted_solves": [0.0, 0.0, 1.0]}, {})
'2 of 3 seeds accepted no solve (1 of 9 solves accepted)'
"""

from __future__ import annotations

from ..store import learnt_nothing

#: Methods that act through solves recorded as ``milp`` events (the hybrid's solver step).
SOLVER_METHODS = ("gdsolver",)


def is_collapsed(trial: dict, evals: list[dict]) -> bool:
    """Whether a stored trial learnt nothing: status ``collapsed``, or ``finished`` with
    evaluations that end within 1 % of the initial training loss or above it (an older store)."""
    return learnt_nothing(trial["status"], evals)


def solves(events: list[dict]) -> tuple[int, int]:
    """(MILP solves, accepted ones) among a trial's events."""
    milp = [e for e in events if e.get("kind") == "milp"]
    return len(milp), sum(bool(e.get("accepted")) for e in milp)


def untested_note(method: str, a: dict[str, list[float]],
                  bs: dict[str, dict[str, list[float]]]) -> str:
    """Why a claim of ``method`` is untested ("" if it is not): ``a`` and ``bs`` are the
    per-seed quantities (:func:`beyondsgd.bench.analysis.claims.collect`) of the method and of
    each comparison (module docstring: more than half of the seeds collapsed or, for a solver
    method, accepted no solve)."""
    coll = a.get("collapsed", [])
    n = len(coll)
    if n and sum(coll) > n / 2:
        return f"{int(sum(coll))} of {n} seeds collapsed"
    if method in SOLVER_METHODS:
        acc = a.get("accepted_solves", [])
        none = sum(1 for k in acc if k == 0)
        if acc and none > len(acc) / 2:
            return (f"{none} of {len(acc)} seeds accepted no solve "
                    f"({int(sum(acc))} of {int(sum(a.get('solves', [])))} solves accepted)")
    for b, vals in bs.items():
        coll = vals.get("collapsed", [])
        if coll and sum(coll) > len(coll) / 2:
            return f"{int(sum(coll))} of {len(coll)} seeds of {b} collapsed"
    return ""
