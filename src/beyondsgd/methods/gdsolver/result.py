"""What one GDSolver solver call returns (:class:`MILPResult`) and the checks of the solver's
arguments; no solver import here (:mod:`.highs` solves)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class MILPResult:
    """Outcome of one solver call.

    ``status``: ``"optimal"`` (proved within ``mip_gap``), ``"feasible"`` (stopped at a limit
    with a solution), ``"infeasible"``, ``"no_solution"`` (stopped at a limit without a solution)
    or ``"error"``. ``limit``: the limit that stopped the solver (``"nodes"``, ``"checks"``,
    ``"iterations"`` or ``"time"``; ``""`` when none did); ``deterministic`` is False only when
    it was the time limit (the outcome then depends on the machine's speed). ``weight``/``bias``
    are set only when ``has_solution`` (clipped into the box). ``objective`` is the number of
    points correct with margin (classification MILP), the mean hinge loss (hinge LP) or the
    mean absolute / max error (regression); ``start_objective`` is the same at the warm start;
    ``bound`` is the solver's dual bound and ``gap`` the relative gap.
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
    limit: str = ""
    deterministic: bool = True
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


def check_solver_args(time_limit: float, mip_gap: float, threads: int) -> None:
    """A clear ``ValueError`` for a bad time limit, gap or thread count."""
    if not (time_limit > 0):
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit!r}")
    if not (0 <= mip_gap < 1):
        raise ValueError(f"mip_gap must be in [0, 1), got {mip_gap!r}")
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")


def check_work_limits(node_limit: Any, check_limit: Any, iteration_limit: Any) -> None:
    """A clear ``ValueError`` for a work limit that is not ``None`` (unlimited) or an int >= 1."""
    for name, v in (("node_limit", node_limit), ("check_limit", check_limit),
                    ("iteration_limit", iteration_limit)):
        if v is not None and not (isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                  and v >= 1):
            raise ValueError(f"{name} must be an int >= 1 or None (unlimited), got {v!r}")
