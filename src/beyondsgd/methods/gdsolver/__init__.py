"""GDSolver (Ashok, Nagisetty, Srinivasa & Ganesh, IJCAI-22), one package:

- ``solver.py``: :class:`GDSolver`, one MILP/LP step on the last ``nn.Linear`` in your own loop;
- ``points.py``: which training points a solve sees, the box, plateaus and the solve schedule;
- ``milp.py``: the pure maths: the classification MILP, the hinge LP and the regression LP;
- ``highs.py``: solving them with HiGHS, bounded by work (nodes, limit checks, LP iterations);
- ``method.py``: the runner's registered ``gdsolver`` method (GD phases, plateau solves, the
  ``published`` preset); its docstring states the algorithm and our choices.
"""

from . import highs, milp, points, solver
from .highs import (
    MILPResult,
    solve_classification_milp,
    solve_hinge_lp,
    solve_program,
    solve_regression_lp,
)
from .method import PRESETS, PUBLISHED, SOLVES_PER_RUN, GDSolverMethod, make_solver, run_solve
from .milp import (
    LinearProgram,
    build_classification_milp,
    build_hinge_lp,
    build_regression_lp,
    classification_margins,
)
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
    check_selection,
    default_points,
    find_head,
    improves,
    scheduled,
    select_points,
    solve_budget_left,
)
from .solver import GDSolver

__all__ = [
    "BOXES", "CHECK_LIMIT", "ITERATION_LIMIT", "NODE_LIMIT", "OBJECTIVES", "PRESETS", "PUBLISHED",
    "SELECTIONS", "SOLVES_PER_RUN", "GDSolver", "GDSolverMethod", "LinearProgram", "MILPResult",
    "PlateauDetector", "account_solve", "backoff_patience", "build_classification_milp",
    "build_hinge_lp", "build_regression_lp", "check_n_points", "check_selection",
    "classification_margins", "default_points", "find_head", "highs", "improves", "make_solver",
    "milp", "points", "run_solve", "scheduled", "select_points", "solve_budget_left",
    "solve_classification_milp", "solve_hinge_lp", "solve_program", "solve_regression_lp",
    "solver",
]
