r"""The problems of GDSolver's solver step: a MILP (classification) or LPs over the last layer.

With the penultimate activations ``h_n`` (``N x d``) held fixed, the network's output
``z_n = W h_n + b`` is *linear* in the final layer's parameters ``(W, b)``. Ashok et al. (IJCAI-22,
Sec. 3, "Solver step") let a MILP solver search a box around the gradient-descent weights for
weights that fit more training points. Everything here goes from numpy arrays straight into
HiGHS (``highspy``, :mod:`beyondsgd.methods.gdsolver.highs`) as one CSR matrix: no per-nonzero
Python objects.

Classification (maximise the number of points correct with a margin)::

    max_{W, b, s}  sum_n s_n
    s.t.  m_nj(W, b) - M_nj s_n >= delta - M_nj      for every n, every j != y_n    (1)
          |W - W0| <= eps,  |b - b0| <= eps,  s_n in {0, 1}                          (2)
    where m_nj(W, b) = (W_{y_n} - W_j) . h_n + b_{y_n} - b_j  (the margin of class y_n over j)

(1) is the official code's indicator "s_n = 1 => every margin of point n >= delta" written as an
exact big-M row (lesson 2 of the digest; HiGHS has no indicator constraints): inside the box (2)
``m_nj >= m0_nj - 2 eps (||h_n||_1 + 1)`` with ``m0`` the margin at ``(W0, b0)``, so
``M_nj = delta - (m0_nj - 2 eps (||h_n||_1 + 1))`` is the smallest M that never cuts off a point
of the box; rows with ``M_nj <= 0`` hold everywhere in the box and are dropped. One binary per
point replaces the official per-class binaries (they are redundant). Points that cannot reach the
margin anywhere in the box get ``s_n`` fixed to 0. Biases are boxed like the weights (the official
code leaves them unbounded below at 0, a bug). The warm start is ``(W0, b0)`` with ``s_n = 1`` iff
point n already has every margin >= delta, so the solver starts from a feasible point.

Regression (the paper's "flexible output constraints"; an LP because only the last layer is in
it)::

    L1:    min  (1 / (N O)) sum_{n,o} t_no   s.t.  -t_no <= (W h_n + b - y_n)_o <= t_no,  box (2)
    Linf:  min  t                           s.t.  -t    <= (W h_n + b - y_n)_o <= t,     box (2)

The official code asks instead for exact equality or a feasibility tube (see the digest); an
objective with slack variables is the digest's lesson 5 and always has a feasible point. (With
the official 2 -> 2 toy head the equalities on 32 points are 64 equations in 6 unknowns:
infeasible by construction, so the official regression solve never changes the weights.)

Our extension (``objective="loss"`` in GDSolver, not in the paper): the multi-class hinge loss
inside the box, an LP (:func:`build_hinge_lp`)::

    min  (1 / N) sum_n xi_n   s.t.  m_nj(W, b) + xi_n >= 1  (every n, j != y_n),  xi >= 0,  box (2)

Reference: D. Ashok, V. Nagisetty, C. Srinivasa, V. Ganesh. *A Solver + Gradient Descent Training
Algorithm for Deep Neural Networks.* IJCAI-22, pp. 1766-1773, doi:10.24963/ijcai.2022/246.

The builders here are pure (numpy arrays in, a :class:`LinearProgram` out); solving them with
HiGHS is :mod:`beyondsgd.methods.gdsolver.highs`.

Example::

    >>> import numpy as np
    >>> h = np.array([[1.0, 0.0], [0.0, 1.0]]); y = np.array([0, 1])
    >>> lp = build_classification_milp(h, y, np.zeros((2, 2)), np.zeros(2), radius=0.1)
    >>> lp.num_col, lp.num_row, int(lp.integer.sum())
    (8, 2, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "LinearProgram",
    "build_classification_milp",
    "build_hinge_lp",
    "build_regression_lp",
    "classification_margins",
]


# --------------------------------------------------------------------------------------------
# Problem data
# --------------------------------------------------------------------------------------------
@dataclass
class LinearProgram:
    """A (mixed-integer) linear program in arrays: ``row_lower <= A x <= row_upper``,
    ``col_lower <= x <= col_upper``, objective ``cost . x`` (``maximize`` or minimise).

    ``A`` is CSR (``start``, ``index``, ``value``). Columns ``[0, C*d)`` are the weights ``W``
    (row-major, ``W[k, i]`` at ``k*d + i``), ``[C*d, C*d + C)`` the biases, then the auxiliary
    columns (binaries ``s`` or slacks ``t``). ``start_solution`` is the warm start.
    """

    cost: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    row_lower: np.ndarray
    row_upper: np.ndarray
    start: np.ndarray
    index: np.ndarray
    value: np.ndarray
    integer: np.ndarray  # bool per column
    maximize: bool
    start_solution: np.ndarray
    n_weight: int  # number of weight columns (C*d)
    n_bias: int
    objective_scale: float = 1.0  # reported objective = scale * (solver objective + offset)
    objective_offset: float = 0.0  # constant part of the objective (points fixed by the box)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_col(self) -> int:
        return int(self.cost.shape[0])

    @property
    def num_row(self) -> int:
        return int(self.row_lower.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.value.shape[0])

    def dense(self) -> np.ndarray:
        """The constraint matrix as a dense array (tests and small problems only)."""
        a = np.zeros((self.num_row, self.num_col))
        for r in range(self.num_row):
            sl = slice(self.start[r], self.start[r + 1])
            a[r, self.index[sl]] = self.value[sl]
        return a


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------
def _as2d(name: str, a: Any) -> np.ndarray:
    a = np.asarray(_to_numpy(a), dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _to_numpy(a: Any) -> Any:
    if hasattr(a, "detach"):  # torch tensor, without importing torch here
        return a.detach().cpu().double().numpy()
    return a


def _check_common(features: Any, weight: Any, bias: Any, radius: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    h = _as2d("features", features)
    w0 = _as2d("weight", weight)
    b0 = np.asarray(_to_numpy(bias), dtype=np.float64).reshape(-1)
    if w0.shape[1] != h.shape[1]:
        raise ValueError(f"weight has {w0.shape[1]} inputs but features have {h.shape[1]} columns")
    if b0.shape[0] != w0.shape[0]:
        raise ValueError(f"bias has {b0.shape[0]} entries, weight has {w0.shape[0]} rows")
    if not np.all(np.isfinite(b0)):
        raise ValueError("bias contains NaN or inf")
    radius = float(radius)
    if not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")
    if h.shape[0] == 0:
        raise ValueError("features has no rows (need at least one point)")
    return h, w0, b0, radius


def classification_margins(features: Any, labels: Any, weight: Any, bias: Any) -> np.ndarray:
    """``m[n, j] = z[n, y_n] - z[n, j]`` with ``z = h W^T + b`` (``m[n, y_n] = +inf``)."""
    h = np.asarray(_to_numpy(features), dtype=np.float64)
    y = np.asarray(_to_numpy(labels)).astype(np.int64).reshape(-1)
    z = h @ np.asarray(_to_numpy(weight), dtype=np.float64).T
    z = z + np.asarray(_to_numpy(bias), dtype=np.float64).reshape(1, -1)
    m = z[np.arange(len(y)), y][:, None] - z
    m[np.arange(len(y)), y] = np.inf
    return m


def _margin_rows(h: np.ndarray, y: np.ndarray, rn: np.ndarray, rj: np.ndarray, c: int,
                 aux_coef: np.ndarray, aux_col: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR rows ``m_{rn[r], rj[r]}(W, b) + aux_coef[r] * x_aux[rn[r]]`` (``m`` as in (1)).

    Columns: ``W[k, i]`` at ``k*d + i``, ``b_k`` at ``C*d + k``, the per-point auxiliary column
    of point n at ``C*d + C + aux_col[r]`` (default ``rn[r]``). Zero features (ReLU) get no
    entry."""
    n_rows, d = rn.shape[0], h.shape[1]
    nw = c * d
    ry = y[rn]
    hr = h[rn]  # R x d
    nzr, nzi = np.nonzero(hr)
    cnt = np.bincount(nzr, minlength=n_rows)  # nonzero features per row
    start = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(2 * cnt + 3, out=start[1:])  # +W_y, -W_j, b_y, b_j, aux
    index = np.empty(int(start[-1]), dtype=np.int32)
    value = np.empty(int(start[-1]), dtype=np.float64)
    first = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(cnt, out=first[1:])
    k = np.arange(nzr.shape[0]) - first[nzr]  # position of each nonzero within its row block
    base = start[nzr]
    hv = hr[nzr, nzi]
    index[base + k] = ry[nzr] * d + nzi
    value[base + k] = hv
    index[base + cnt[nzr] + k] = rj[nzr] * d + nzi
    value[base + cnt[nzr] + k] = -hv
    tail = start[1:] - 3
    index[tail], value[tail] = nw + ry, 1.0
    index[tail + 1], value[tail + 1] = nw + rj, -1.0
    index[tail + 2], value[tail + 2] = nw + c + (rn if aux_col is None else aux_col), aux_coef
    return start, index, value


def _check_labels(y: Any, n: int, c: int) -> np.ndarray:
    y = np.asarray(_to_numpy(y)).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"labels has {y.shape[0]} entries, features has {n} rows")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("labels must be integer class indices")
    y = y.astype(np.int64)
    if c < 2:
        raise ValueError(f"classification needs at least 2 classes, weight has {c} rows")
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"labels must lie in [0, {c - 1}], got range [{y.min()}, {y.max()}]")
    return y


# --------------------------------------------------------------------------------------------
# Builders (pure: arrays in, arrays out)
# --------------------------------------------------------------------------------------------
def build_classification_milp(
    features: Any,
    labels: Any,
    weight: Any,
    bias: Any,
    radius: float,
    margin: float = 1e-4,
    min_correct: int | None = None,
    reduce: bool = False,
) -> LinearProgram:
    """The classification MILP (1)-(2) of the module docstring as arrays.

    ``features``: ``N x d`` penultimate activations; ``labels``: ``N`` class indices;
    ``weight``/``bias``: the current final layer ``(C x d, C)``; ``radius``: half-width ``eps`` of
    the box; ``margin``: ``delta``; ``min_correct``: optional extra row ``sum_n s_n >=
    min_correct`` (the official code asks for batch accuracy + 5%).

    ``reduce`` (exact; default off here, on in :func:`~.highs.solve_classification_milp`): the
    points whose indicator the box fixes get no binary -- those correct with margin everywhere
    in the box (no row left) count 1 in ``objective_offset``, those that cannot reach the margin
    anywhere count 0 and lose their rows. The optimum value is unchanged (the dropped binaries
    were free with no row, or fixed to 0); the columns after the biases are then the binaries
    of the remaining points, in order (``info["binary_points"]``).
    """
    h, w0, b0, eps = _check_common(features, weight, bias, radius)
    n, d = h.shape
    c = w0.shape[0]
    y = _check_labels(labels, n, c)
    margin = float(margin)
    if not (np.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    if min_correct is not None and not (0 <= int(min_correct) <= n):
        raise ValueError(f"min_correct must be in [0, {n}], got {min_correct!r}")

    m0 = classification_margins(h, y, w0, b0)  # N x C, +inf on the label
    reach = 2.0 * eps * (np.abs(h).sum(axis=1) + 1.0)  # N: max change of any margin in the box
    big_m = margin - (m0 - reach[:, None])  # N x C
    keep = np.isfinite(big_m) & (big_m > 0)  # rows that can bind somewhere in the box
    reachable = np.all(m0 + reach[:, None] >= margin, axis=1)
    s0 = np.all(m0 >= margin, axis=1).astype(np.float64)
    if reduce:
        always = reachable & ~keep.any(axis=1)  # correct everywhere in the box: constant 1
        binary = reachable & ~always  # the rest of the unreachable points: constant 0
        keep &= binary[:, None]
        points = np.flatnonzero(binary)
    else:
        always = np.zeros(n, dtype=bool)
        points = np.arange(n)
    nb = points.shape[0]
    col_of = np.full(n, -1, dtype=np.int64)
    col_of[points] = np.arange(nb)
    rn, rj = np.nonzero(keep)  # row r: point rn[r], rival class rj[r]
    mr = big_m[rn, rj]
    nw = c * d
    # Row r: sum_i h[n,i] (W[y,i] - W[j,i]) + b_y - b_j - M s_n >= delta - M
    start, index, value = _margin_rows(h, y, rn, rj, c, -mr, col_of[rn])
    row_lower = margin - mr
    row_upper = np.full(rn.shape[0], np.inf)
    n_rows = rn.shape[0]
    offset = float(always.sum())

    if min_correct is not None:
        index = np.concatenate([index, (nw + c + np.arange(nb)).astype(np.int32)])
        value = np.concatenate([value, np.ones(nb)])
        start = np.append(start, start[-1] + nb)
        row_lower = np.append(row_lower, float(min_correct) - offset)
        row_upper = np.append(row_upper, np.inf)

    ncol = nw + c + nb
    col_lower = np.concatenate([(w0 - eps).ravel(), b0 - eps, np.zeros(nb)])
    col_upper = np.concatenate([(w0 + eps).ravel(), b0 + eps, np.ones(nb)])
    col_upper[nw + c:][~reachable[points]] = 0.0  # cannot reach the margin anywhere in the box
    cost = np.concatenate([np.zeros(nw + c), np.ones(nb)])
    integer = np.zeros(ncol, dtype=bool)
    integer[nw + c:] = True
    x0 = np.concatenate([w0.ravel(), b0, s0[points]])
    return LinearProgram(
        cost=cost, col_lower=col_lower, col_upper=col_upper, row_lower=row_lower,
        row_upper=row_upper, start=start, index=index, value=value, integer=integer,
        maximize=True, start_solution=x0, n_weight=nw, n_bias=c, objective_offset=offset,
        info={"task": "classification", "n_points": n, "n_classes": c, "n_features": d,
              "rows_dropped": int(n * (c - 1) - n_rows), "reachable": int(reachable.sum()),
              "start_correct": int(s0.sum()), "margin": margin, "radius": eps,
              "fixed_points": int(n - nb), "binary_points": points},
    )


def build_hinge_lp(
    features: Any,
    labels: Any,
    weight: Any,
    bias: Any,
    radius: float,
    hinge: float = 1.0,
) -> LinearProgram:
    """Our extension (``objective="loss"``, not in the paper): the multi-class hinge loss of
    Crammer & Singer (JMLR 2, 2001: the multi-class SVM loss) inside the box, an LP::

        min  (1/N) sum_n xi_n   s.t.  m_nj(W, b) + xi_n >= hinge  for every n, j != y_n,
                                      xi_n >= 0,  box (2)

    i.e. ``min mean_n max(0, max_{j != y_n} hinge - m_nj)``, a piecewise-linear surrogate of the
    training loss. Rows that hold with ``xi_n = 0`` everywhere in the box are dropped. The warm
    start is ``(W0, b0)`` with each ``xi_n`` at its hinge value, so it is feasible.
    """
    h, w0, b0, eps = _check_common(features, weight, bias, radius)
    n, d = h.shape
    c = w0.shape[0]
    y = _check_labels(labels, n, c)
    hinge = float(hinge)
    if not (np.isfinite(hinge) and hinge > 0):
        raise ValueError(f"hinge must be a positive finite number, got {hinge!r}")
    m0 = classification_margins(h, y, w0, b0)  # N x C, +inf on the label
    reach = 2.0 * eps * (np.abs(h).sum(axis=1) + 1.0)
    keep = np.isfinite(m0) & (m0 - reach[:, None] < hinge)  # rows that can bind in the box
    rn, rj = np.nonzero(keep)
    start, index, value = _margin_rows(h, y, rn, rj, c, np.ones(rn.shape[0]))
    nw = c * d
    xi0 = np.maximum(0.0, (hinge - m0).max(axis=1))  # -inf on the label column
    return LinearProgram(
        cost=np.concatenate([np.zeros(nw + c), np.ones(n)]),
        col_lower=np.concatenate([(w0 - eps).ravel(), b0 - eps, np.zeros(n)]),
        col_upper=np.concatenate([(w0 + eps).ravel(), b0 + eps, np.full(n, np.inf)]),
        row_lower=np.full(rn.shape[0], hinge), row_upper=np.full(rn.shape[0], np.inf),
        start=start, index=index, value=value, integer=np.zeros(nw + c + n, dtype=bool),
        maximize=False, start_solution=np.concatenate([w0.ravel(), b0, xi0]), n_weight=nw,
        n_bias=c, objective_scale=1.0 / n,
        info={"task": "classification", "surrogate": "hinge", "n_points": n, "n_classes": c,
              "n_features": d, "rows_dropped": int(n * (c - 1) - rn.shape[0]), "hinge": hinge,
              "radius": eps,
              "start_correct": int(np.all(m0 > 0, axis=1).sum())},
    )


def build_regression_lp(
    features: Any,
    targets: Any,
    weight: Any,
    bias: Any,
    radius: float,
    norm: str = "l1",
) -> LinearProgram:
    """The regression LP of the module docstring (``norm`` = ``"l1"`` or ``"linf"``) as arrays.

    ``targets`` is ``N x O`` (or ``N`` for one output); ``weight``/``bias`` are ``O x d`` and ``O``.
    """
    h, w0, b0, eps = _check_common(features, weight, bias, radius)
    if norm not in ("l1", "linf"):
        raise ValueError(f"norm must be 'l1' or 'linf', got {norm!r}")
    n, d = h.shape
    o = w0.shape[0]
    yt = np.asarray(_to_numpy(targets), dtype=np.float64)
    if yt.ndim == 1:
        yt = yt[:, None]
    if yt.shape != (n, o):
        raise ValueError(f"targets must have shape ({n}, {o}), got {yt.shape}")
    if not np.all(np.isfinite(yt)):
        raise ValueError("targets contains NaN or inf")
    nw = o * d
    n_slack = n * o if norm == "l1" else 1
    # Pair rows (n, o): the upper row  yhat - t <= y  and the lower row  yhat + t >= y.
    nzn, nzi = np.nonzero(h)
    cnt = np.bincount(nzn, minlength=n)
    per_row = cnt + 2  # features, bias, slack
    rows_per_pair = np.repeat(per_row, o)  # row block for (n, o) in order n-major
    lens = np.concatenate([rows_per_pair, rows_per_pair])  # upper rows, then lower rows
    start = np.zeros(2 * n * o + 1, dtype=np.int64)
    np.cumsum(lens, out=start[1:])
    index = np.empty(int(start[-1]), dtype=np.int32)
    value = np.empty(int(start[-1]), dtype=np.float64)
    first = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(cnt, out=first[1:])
    k = np.arange(nzn.shape[0]) - first[nzn]
    hv = h[nzn, nzi]
    slack_col = nw + o + (np.arange(n * o) if norm == "l1" else np.zeros(n * o, dtype=np.int64))
    for half, sign in ((0, -1.0), (1, 1.0)):
        for oo in range(o):  # O is the output width (small): a loop over outputs, not elements
            pair = nzn * o + oo
            base = start[half * n * o + pair]
            index[base + k] = oo * d + nzi
            value[base + k] = hv
            rows = half * n * o + np.arange(n) * o + oo
            tail = start[rows + 1] - 2
            index[tail], value[tail] = nw + oo, 1.0
            index[tail + 1], value[tail + 1] = slack_col[np.arange(n) * o + oo], sign
    yflat = yt.ravel()
    row_lower = np.concatenate([np.full(n * o, -np.inf), yflat])
    row_upper = np.concatenate([yflat, np.full(n * o, np.inf)])
    resid0 = h @ w0.T + b0[None, :] - yt
    if norm == "l1":
        cost_t = np.ones(n_slack)
        t0 = np.abs(resid0).ravel()
        scale = 1.0 / (n * o)
    else:
        cost_t = np.ones(1)
        t0 = np.array([np.abs(resid0).max()])
        scale = 1.0
    cost = np.concatenate([np.zeros(nw + o), cost_t])
    col_lower = np.concatenate([(w0 - eps).ravel(), b0 - eps, np.zeros(n_slack)])
    col_upper = np.concatenate([(w0 + eps).ravel(), b0 + eps, np.full(n_slack, np.inf)])
    x0 = np.concatenate([w0.ravel(), b0, t0])
    return LinearProgram(
        cost=cost, col_lower=col_lower, col_upper=col_upper, row_lower=row_lower,
        row_upper=row_upper, start=start, index=index, value=value,
        integer=np.zeros(cost.shape[0], dtype=bool), maximize=False, start_solution=x0,
        n_weight=nw, n_bias=o, objective_scale=scale,
        info={"task": "regression", "norm": norm, "n_points": n, "n_outputs": o,
              "n_features": d, "radius": eps},
    )
