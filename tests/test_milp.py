"""The GDSolver MILP/LPs (beyondsgd.methods.gdsolver.milp, solved by .highs) against independent
computations: brute-force enumeration, dense LPs written out by hand and solved by scipy, and
sampling."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import linprog

from beyondsgd.methods.gdsolver.highs import (
    solve_classification_milp,
    solve_hinge_lp,
    solve_regression_lp,
)
from beyondsgd.methods.gdsolver.milp import (
    build_classification_milp,
    build_hinge_lp,
    build_regression_lp,
    classification_margins,
)

DELTA = 1e-4


def _instance(seed, n=7, d=2, c=3, scale=1.0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d)) * scale
    y = rng.integers(0, c, size=n)
    w = rng.normal(size=(c, d))
    b = rng.normal(size=c) * 0.3
    return h, y, w, b


def _subset_feasible(h, y, w0, b0, eps, subset, delta=DELTA):
    """Is there (W, b) in the box with every margin of every point in ``subset`` >= delta?
    A plain LP without binaries or big-M (an independent formulation)."""
    c, d = w0.shape
    nvar = c * d + c
    rows, rhs = [], []
    for n in subset:
        for j in range(c):
            if j == y[n]:
                continue
            a = np.zeros(nvar)  # -(margin) <= -delta
            a[y[n] * d:(y[n] + 1) * d] -= h[n]
            a[j * d:(j + 1) * d] += h[n]
            a[c * d + y[n]] -= 1.0
            a[c * d + j] += 1.0
            rows.append(a)
            rhs.append(-delta)
    x0 = np.concatenate([w0.ravel(), b0])
    bounds = list(zip(x0 - eps, x0 + eps))
    if not rows:
        return True
    res = linprog(np.zeros(nvar), A_ub=np.array(rows), b_ub=np.array(rhs), bounds=bounds,
                  method="highs")
    return res.status == 0


def _brute_force_max(h, y, w, b, eps):
    n = len(y)
    for k in range(n, -1, -1):
        for subset in itertools.combinations(range(n), k):
            if _subset_feasible(h, y, w, b, eps, subset):
                return k
    return 0


@pytest.mark.parametrize("seed", range(6))
def test_milp_optimum_equals_enumeration(seed):
    h, y, w, b = _instance(seed)
    eps = 0.4
    res = solve_classification_milp(h, y, w, b, eps, margin=DELTA, mip_gap=0.0)
    assert res.status == "optimal"
    best = _brute_force_max(h, y, w, b, eps)
    assert res.objective == pytest.approx(best)
    # The returned weights really classify that many points with (almost) the margin.
    m = classification_margins(h, y, res.weight, res.bias)
    assert int(np.all(m >= DELTA - 1e-6, axis=1).sum()) >= best
    assert np.all(np.abs(res.weight - w) <= eps + 1e-12)
    assert np.all(np.abs(res.bias - b) <= eps + 1e-12)


def test_enumeration_instances_are_not_trivial():
    """Guard the test above: the optimum lies strictly between the start and all points on
    some instances (otherwise enumeration checks nothing)."""
    strict = 0
    for seed in range(6):
        h, y, w, b = _instance(seed)
        start = int(np.all(classification_margins(h, y, w, b) >= DELTA, axis=1).sum())
        best = _brute_force_max(h, y, w, b, 0.4)
        strict += start < best < len(y)
    assert strict >= 2


def _row_activity(lp, x):
    out = np.empty(lp.num_row)
    for r in range(lp.num_row):
        sl = slice(lp.start[r], lp.start[r + 1])
        out[r] = lp.value[sl] @ x[lp.index[sl]]
    return out


@pytest.mark.parametrize("seed", range(3))
def test_big_m_never_cuts_off_a_point_of_the_box(seed):
    """For (W, b) sampled in the box (interior and corners), setting s_n = 1 exactly for the
    points with every margin >= delta satisfies every row."""
    h, y, w, b = _instance(seed, n=12, d=4, c=4)
    eps = 0.3
    lp = build_classification_milp(h, y, w, b, eps, DELTA)
    rng = np.random.default_rng(100 + seed)
    x0 = np.concatenate([w.ravel(), b])
    for t in range(400):
        if t % 2:
            dx = rng.choice([-eps, eps], size=x0.shape)  # corners
        else:
            dx = rng.uniform(-eps, eps, size=x0.shape)
        x = x0 + dx
        wt, bt = x[:w.size].reshape(w.shape), x[w.size:]
        s = np.all(classification_margins(h, y, wt, bt) >= DELTA, axis=1).astype(float)
        act = _row_activity(lp, np.concatenate([x, s]))
        assert np.all(act >= lp.row_lower - 1e-9)
        # and s_n = 0 is always allowed
        act0 = _row_activity(lp, np.concatenate([x, np.zeros_like(s)]))
        assert np.all(act0 >= lp.row_lower - 1e-9)


def test_big_m_is_tight_and_dropped_rows_always_hold():
    h, y, w, b = _instance(3, n=10, d=3, c=4)
    eps = 0.25
    lp = build_classification_milp(h, y, w, b, eps, DELTA)
    c, d = w.shape
    m0 = classification_margins(h, y, w, b)
    kept = 0
    for n in range(len(y)):
        for j in range(c):
            if j == y[n]:
                continue
            # The box corner that minimises margin (n, j).
            wt, bt = w.copy(), b.copy()
            wt[y[n]] -= eps * np.sign(h[n])
            wt[j] += eps * np.sign(h[n])
            bt[y[n]] -= eps
            bt[j] += eps
            worst = classification_margins(h[n:n + 1], y[n:n + 1], wt, bt)[0, j]
            assert worst == pytest.approx(m0[n, j] - 2 * eps * (np.abs(h[n]).sum() + 1))
            if worst >= DELTA:
                continue  # dropped: holds everywhere in the box
            kept += 1
            x = np.concatenate([wt.ravel(), bt, np.zeros(len(y))])
            act = _row_activity(lp, x)
            # Exactly one row of the program is tight at this corner with s_n = 0.
            assert np.sum(np.isclose(act - lp.row_lower, 0.0, atol=1e-9)) >= 1
    assert kept == lp.num_row
    assert lp.info["rows_dropped"] == len(y) * (c - 1) - kept


def test_matrix_matches_a_dense_construction():
    h, y, w, b = _instance(1, n=5, d=3, c=3)
    h[h < 0] = 0.0  # ReLU-like zeros are dropped from the sparse matrix
    eps = 0.2
    lp = build_classification_milp(h, y, w, b, eps, DELTA)
    c, d = w.shape
    m0 = classification_margins(h, y, w, b)
    dense, lower = [], []
    for n in range(len(y)):
        for j in range(c):
            if j == y[n]:
                continue
            big_m = DELTA - (m0[n, j] - 2 * eps * (np.abs(h[n]).sum() + 1))
            if big_m <= 0:
                continue
            a = np.zeros(c * d + c + len(y))
            a[y[n] * d:(y[n] + 1) * d] += h[n]
            a[j * d:(j + 1) * d] -= h[n]
            a[c * d + y[n]] += 1
            a[c * d + j] -= 1
            a[c * d + c + n] = -big_m
            dense.append(a)
            lower.append(DELTA - big_m)
    np.testing.assert_allclose(lp.dense(), np.array(dense), rtol=0, atol=1e-12)
    np.testing.assert_allclose(lp.row_lower, lower, rtol=0, atol=1e-12)
    assert lp.nnz == np.count_nonzero(np.array(dense))


def test_warm_start_is_feasible_and_counts_correct_points():
    h, y, w, b = _instance(4, n=20, d=5, c=4)
    lp = build_classification_milp(h, y, w, b, 0.1, DELTA)
    act = _row_activity(lp, lp.start_solution)
    assert np.all(act >= lp.row_lower - 1e-9)
    correct = np.all(classification_margins(h, y, w, b) >= DELTA, axis=1).sum()
    assert lp.start_solution[-len(y):].sum() == correct


def test_solution_respects_box_on_a_larger_instance():
    rng = np.random.default_rng(0)
    h = np.maximum(rng.normal(size=(40, 32)), 0)
    w = rng.normal(size=(10, 32)) * 0.1
    b = rng.normal(size=10) * 0.1
    y = rng.integers(0, 10, 40)
    res = solve_classification_milp(h, y, w, b, 0.05, time_limit=20.0)
    assert res.has_solution
    assert np.all(np.abs(res.weight - w) <= 0.05 + 1e-12)
    assert np.all(np.abs(res.bias - b) <= 0.05 + 1e-12)
    assert res.objective >= res.start_objective
    assert res.bound >= res.objective - 1e-6


def test_unreachable_points_and_min_correct_infeasible():
    # Point 0 needs a margin of ~10 but the box allows ~0.4: it can never become correct.
    h = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([0, 1])
    w = np.array([[-5.0, 0.0], [5.0, 0.0]])
    b = np.zeros(2)
    lp = build_classification_milp(h, y, w, b, 0.1, DELTA)
    assert lp.col_upper[-2] == 0.0 and lp.info["reachable"] == 1
    res = solve_classification_milp(h, y, w, b, 0.1, DELTA, min_correct=2)
    assert res.status == "infeasible" and not res.has_solution and res.weight is None


def test_time_limit_without_warm_start_reports_no_solution():
    rng = np.random.default_rng(0)
    h = np.maximum(rng.normal(size=(300, 64)), 0)
    w = rng.normal(size=(10, 64)) * 0.1
    y = rng.integers(0, 10, 300)
    res = solve_classification_milp(h, y, w, np.zeros(10), 0.05, time_limit=1e-6,
                                    warm_start=False)
    assert res.status in ("no_solution", "feasible")
    if res.status == "no_solution":
        assert res.weight is None and res.objective is None


def _dense_regression_lp(h, yt, w0, b0, eps, norm):
    """The regression LP written out densely, solved by scipy (an independent build)."""
    n, d = h.shape
    o = w0.shape[0]
    nt = n * o if norm == "l1" else 1
    nvar = o * d + o + nt
    a_ub, b_ub = [], []
    for i in range(n):
        for k in range(o):
            t = o * d + o + (i * o + k if norm == "l1" else 0)
            row = np.zeros(nvar)
            row[k * d:(k + 1) * d] = h[i]
            row[o * d + k] = 1
            r1 = row.copy()
            r1[t] = -1  # yhat - t <= y
            r2 = -row
            r2[t] = -1  # -yhat - t <= -y
            a_ub += [r1, r2]
            b_ub += [yt[i, k], -yt[i, k]]
    cost = np.zeros(nvar)
    cost[o * d + o:] = 1.0 / (n * o) if norm == "l1" else 1.0
    x0 = np.concatenate([w0.ravel(), b0])
    bounds = list(zip(x0 - eps, x0 + eps)) + [(0, None)] * nt
    res = linprog(cost, A_ub=np.array(a_ub), b_ub=np.array(b_ub), bounds=bounds, method="highs")
    assert res.status == 0
    return res.fun


@pytest.mark.parametrize("norm", ["l1", "linf"])
@pytest.mark.parametrize("seed", range(3))
def test_regression_lp_equals_dense_lp(norm, seed):
    rng = np.random.default_rng(seed)
    h = np.maximum(rng.normal(size=(25, 6)), 0)
    w = rng.normal(size=(2, 6))
    b = rng.normal(size=2)
    yt = rng.normal(size=(25, 2))
    eps = 0.3
    res = solve_regression_lp(h, yt, w, b, eps, norm)
    assert res.status == "optimal"
    assert res.objective == pytest.approx(_dense_regression_lp(h, yt, w, b, eps, norm), abs=1e-7)
    err = np.abs(h @ res.weight.T + res.bias - yt)
    assert (err.mean() if norm == "l1" else err.max()) == pytest.approx(res.objective, abs=1e-7)
    start = np.abs(h @ w.T + b - yt)
    assert res.start_objective == pytest.approx(start.mean() if norm == "l1" else start.max())
    assert np.all(np.abs(res.weight - w) <= eps + 1e-12)


def test_regression_lp_with_a_large_box_recovers_least_absolute_deviation_fit():
    """Exact linear targets inside the box: the L1 LP reaches zero error and recovers W*."""
    rng = np.random.default_rng(0)
    h = rng.normal(size=(30, 3))
    w_true, b_true = np.array([[1.0, -2.0, 0.5]]), np.array([0.3])
    yt = h @ w_true.T + b_true
    res = solve_regression_lp(h, yt[:, 0], np.zeros((1, 3)), np.zeros(1), radius=5.0)
    assert res.objective == pytest.approx(0.0, abs=1e-8)
    np.testing.assert_allclose(res.weight, w_true, atol=1e-7)
    np.testing.assert_allclose(res.bias, b_true, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"radius": 0.0}, "radius"),
        ({"radius": -1.0}, "radius"),
        ({"labels": np.array([0, 5])}, r"labels must lie in \[0, 1\]"),
        ({"labels": np.array([0])}, "labels has 1 entries"),
        ({"weight": np.zeros((2, 3))}, "weight has 3 inputs"),
        ({"bias": np.zeros(3)}, "bias has 3 entries"),
        ({"features": np.array([[np.nan, 0.0], [0.0, 1.0]])}, "NaN"),
        ({"margin": -1.0}, "margin"),
        ({"min_correct": 3}, "min_correct"),
        ({"time_limit": 0.0}, "time_limit"),
        ({"mip_gap": 1.5}, "mip_gap"),
        ({"threads": 0}, "threads"),
    ],
)
def test_classification_bad_input(kwargs, match):
    args = {"features": np.eye(2), "labels": np.array([0, 1]), "weight": np.zeros((2, 2)),
            "bias": np.zeros(2), "radius": 0.1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        solve_classification_milp(**args)


def test_regression_bad_input():
    h = np.eye(3)
    with pytest.raises(ValueError, match="norm must be"):
        build_regression_lp(h, np.zeros(3), np.zeros((1, 3)), np.zeros(1), 0.1, norm="l2")
    with pytest.raises(ValueError, match=r"targets must have shape \(3, 1\)"):
        build_regression_lp(h, np.zeros((3, 2)), np.zeros((1, 3)), np.zeros(1), 0.1)
    with pytest.raises(ValueError, match="2-D"):
        build_regression_lp(np.zeros(3), np.zeros(3), np.zeros((1, 3)), np.zeros(1), 0.1)


def test_accepts_torch_tensors():
    import torch

    h, y, w, b = _instance(0)
    res_np = solve_classification_milp(h, y, w, b, 0.4, mip_gap=0.0)
    res_t = solve_classification_milp(torch.tensor(h), torch.tensor(y), torch.tensor(w),
                                      torch.tensor(b), 0.4, mip_gap=0.0)
    assert res_np.objective == res_t.objective


def test_changing_the_thread_count_between_solves():
    """HiGHS has one global scheduler; a new thread count must not make the solve fail."""
    h, y, w, b = _instance(2)
    objs = [solve_classification_milp(h, y, w, b, 0.4, mip_gap=0.0, threads=t).objective
            for t in (2, 1)]
    assert objs[0] == objs[1] == _brute_force_max(h, y, w, b, 0.4)


# ---- the hinge LP (objective="loss", our extension) -----------------------------------------
def _mean_hinge(h, y, w, b, hinge=1.0):
    m = classification_margins(h, y, w, b)
    return float(np.maximum(0.0, (hinge - m).max(axis=1)).mean())


def _dense_hinge_lp(h, y, w0, b0, eps, hinge=1.0):
    """min mean xi s.t. xi_n >= hinge - margin_nj, xi >= 0, box: every row written out densely
    (no rows dropped), solved by scipy."""
    n, d = h.shape
    c = w0.shape[0]
    nvar = c * d + c + n
    rows, rhs = [], []
    for i in range(n):
        for j in range(c):
            if j == y[i]:
                continue
            a = np.zeros(nvar)  # -(margin) - xi <= -hinge
            a[y[i] * d:(y[i] + 1) * d] -= h[i]
            a[j * d:(j + 1) * d] += h[i]
            a[c * d + y[i]] -= 1.0
            a[c * d + j] += 1.0
            a[c * d + c + i] = -1.0
            rows.append(a)
            rhs.append(-hinge)
    x0 = np.concatenate([w0.ravel(), b0])
    bounds = list(zip(x0 - eps, x0 + eps)) + [(0, None)] * n
    cost = np.concatenate([np.zeros(c * d + c), np.full(n, 1.0 / n)])
    res = linprog(cost, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=bounds, method="highs")
    assert res.status == 0
    return res.fun


@pytest.mark.parametrize("seed", range(4))
def test_hinge_lp_equals_dense_lp_and_its_weights_give_its_objective(seed):
    h, y, w, b = _instance(seed, n=12, d=3, c=4)
    eps = 0.3
    res = solve_hinge_lp(h, y, w, b, eps)
    assert res.status == "optimal" and res.n_binaries == 0
    assert res.objective == pytest.approx(_dense_hinge_lp(h, y, w, b, eps), abs=1e-7)
    assert res.start_objective == pytest.approx(_mean_hinge(h, y, w, b), abs=1e-12)
    # the returned weights, evaluated independently, reach the LP's objective
    assert _mean_hinge(h, y, res.weight, res.bias) == pytest.approx(res.objective, abs=1e-7)
    assert res.objective < res.start_objective
    assert np.abs(res.weight - w).max() <= eps + 1e-12  # (w0 + eps) - w0 round-off
    assert np.abs(res.bias - b).max() <= eps + 1e-12


def test_hinge_lp_drops_only_rows_that_always_hold():
    h, y, w, b = _instance(3, n=30, d=2, c=3, scale=3.0)
    lp = build_hinge_lp(h, y, w, b, radius=0.01)
    assert lp.info["rows_dropped"] > 0  # far-from-boundary points need no row
    m = classification_margins(h, y, w, b)
    reach = 2 * 0.01 * (np.abs(h).sum(axis=1) + 1)
    kept = np.isfinite(m) & (m - reach[:, None] < 1.0)
    assert lp.num_row == kept.sum()
    x0 = lp.start_solution
    a = lp.dense()
    assert np.all(a @ x0 >= lp.row_lower - 1e-9)  # the warm start is feasible


# ---- HiGHS output ----------------------------------------------------------------------------
_SOLVE = ("import numpy as np; "
          "from beyondsgd.methods.gdsolver.highs import solve_classification_milp as s; "
          "r = s(np.eye(2), np.array([0, 1]), np.zeros((2, 2)), np.zeros(2), 0.1, verbose={}); "
          "import sys; sys.stderr.write(r.status)")


@pytest.mark.parametrize("verbose", [False, True])
def test_highs_banner_only_when_verbose(verbose):
    """HiGHS prints its banner from C++ when a process creates its first solver: run a fresh
    interpreter so that the first creation is the one under test."""
    out = subprocess.run([sys.executable, "-c", _SOLVE.format(verbose)], capture_output=True,
                         text=True, timeout=120)
    assert out.stderr.endswith("optimal"), out.stderr
    if verbose:
        assert "HiGHS" in out.stdout
    else:
        assert out.stdout == ""


def test_no_output_in_process(capfd):
    h, y, w, b = _instance(0)
    solve_classification_milp(h, y, w, b, 0.1)
    solve_hinge_lp(h, y, w, b, 0.1)
    solve_regression_lp(h, np.ones((len(y), 3)), w, b, 0.1)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_node_limit_is_deterministic_and_validated():
    h, y, w, b = _instance(5, n=40, d=6, c=4)
    runs = [solve_classification_milp(h, y, w, b, 0.05, node_limit=3, time_limit=60.0)
            for _ in range(2)]
    assert runs[0].status in ("optimal", "feasible")
    assert runs[0].objective == runs[1].objective
    assert np.array_equal(runs[0].weight, runs[1].weight)
    with pytest.raises(ValueError, match="node_limit"):
        solve_classification_milp(h, y, w, b, 0.05, node_limit=-1)


# ---- deterministic by work (issue 27) ----------------------------------------------------------
def _branching_instance():
    """120 points of a noisy linear rule, 12 ReLU features, 4 classes, box 0.05: HiGHS needs
    branching, and the default work limits stop it (after ~200 limit checks, 0.8 s here) before
    it proves optimality. (60 points were enough before points the box decides were dropped
    and the LP relaxation tried first: that instance is now solved to optimality.)"""
    rng = np.random.default_rng(4)
    h = np.maximum(rng.normal(size=(120, 12)), 0)
    w = rng.normal(size=(4, 12)) * 0.3
    y = (h @ w.T + rng.normal(size=(120, 4)) * 0.8).argmax(1)
    return h, y, w, np.zeros(4)


def test_default_work_limits_give_identical_solves():
    """Two solves of the same instance with the default limits: stopped by work (limit checks),
    not by seconds, so the same solution, objective and bound; the reported objective is the
    number of points the returned weights classify with margin (checked independently)."""
    from beyondsgd.methods.gdsolver.highs import CHECK_LIMIT

    h, y, w, b = _branching_instance()
    runs = [solve_classification_milp(h, y, w, b, 0.05) for _ in range(2)]
    for r in runs:
        assert (r.status, r.limit, r.deterministic) == ("feasible", "checks", True)
        assert r.info["checks"] >= CHECK_LIMIT and r.bound > r.objective  # stopped early
    assert np.array_equal(runs[0].weight, runs[1].weight)
    assert np.array_equal(runs[0].bias, runs[1].bias)
    assert (runs[0].objective, runs[0].bound) == (runs[1].objective, runs[1].bound)
    m = classification_margins(h, y, runs[0].weight, runs[0].bias)
    assert runs[0].objective == np.all(m >= DELTA - 1e-7, axis=1).sum()
    assert runs[0].objective > runs[0].start_objective


def test_a_tighter_work_limit_stops_earlier_and_is_reported():
    h, y, w, b = _branching_instance()
    few = solve_classification_milp(h, y, w, b, 0.05, check_limit=3, node_limit=None)
    assert (few.limit, few.deterministic) == ("checks", True) and few.info["checks"] <= 6
    nodes = solve_classification_milp(h, y, w, b, 0.05, node_limit=2, check_limit=None)
    assert nodes.limit == "nodes" and nodes.info["nodes"] <= 3
    lp = solve_hinge_lp(h, y, w, b, 0.05, iteration_limit=2)
    assert (lp.status, lp.limit, lp.deterministic) == ("no_solution", "iterations", True)
    assert lp.weight is None
    full = solve_hinge_lp(h, y, w, b, 0.05)
    assert full.status == "optimal" and full.limit == "" and full.info["iterations"] > 2


def test_hitting_the_time_limit_marks_the_result_machine_dependent():
    h, y, w, b = _branching_instance()
    res = solve_classification_milp(h, y, w, b, 0.05, time_limit=1e-6, node_limit=None,
                                    check_limit=None)
    assert res.limit == "time" and not res.deterministic
    assert res.summary()["deterministic"] is False


@pytest.mark.parametrize("kw", [{"node_limit": 0}, {"check_limit": -1}, {"check_limit": 2.5},
                                {"check_limit": True}])
def test_work_limits_are_validated(kw):
    h, y, w, b = _branching_instance()
    with pytest.raises(ValueError, match=f"{next(iter(kw))} must be an int >= 1 or None"):
        solve_classification_milp(h, y, w, b, 0.05, **kw)
    with pytest.raises(ValueError, match="iteration_limit must be an int >= 1 or None"):
        solve_regression_lp(h, np.ones((60, 1)), w[:1], b[:1], 0.05, iteration_limit=0)
