"""Issue 26: the cheaper GDSolver MILP (reduce, relaxation_first) keeps the optimum."""

import numpy as np
import pytest

from beyondsgd.methods.gdsolver.highs import solve_classification_milp
from beyondsgd.methods.gdsolver.milp import build_classification_milp

OLD = {"reduce": False, "relaxation_first": False}
EXACT = {"node_limit": None, "check_limit": None}


def _instance(seed, n=24, d=6, c=3):
    rng = np.random.default_rng(seed)
    h = np.maximum(rng.normal(size=(n, d)), 0)
    y = rng.integers(0, c, size=n)
    w = rng.normal(size=(c, d))
    b = rng.normal(size=c) * 0.1
    return h, y, w, b


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("radius", [0.01, 0.05, 0.3, 2.0])
def test_same_optimum_as_old_formulation(seed, radius):
    h, y, w, b = _instance(seed)
    old = solve_classification_milp(h, y, w, b, radius, **OLD, **EXACT)
    new = solve_classification_milp(h, y, w, b, radius, **EXACT)
    assert old.status == new.status == "optimal"
    assert new.objective == pytest.approx(old.objective, abs=1e-9)
    assert new.start_objective == pytest.approx(old.start_objective, abs=1e-9)
    # the returned weights achieve the reported objective
    z = h @ new.weight.T + new.bias
    m = z[np.arange(len(y)), y][:, None] - z
    m[np.arange(len(y)), y] = np.inf
    assert int(np.all(m >= 1e-4 - 1e-6, axis=1).sum()) >= new.objective


def test_brute_force_tiny():
    """1-D features, 2 classes: the optimum by a fine grid over the box equals the MILP's."""
    rng = np.random.default_rng(3)
    h = np.abs(rng.normal(size=(8, 1)))
    y = rng.integers(0, 2, size=8)
    w, b = np.zeros((2, 1)), np.zeros(2)
    r = 0.5
    grid = np.linspace(-r, r, 41)
    best = 0
    for w0 in grid:
        for w1 in grid:
            for b0 in grid:
                for b1 in grid:
                    z = h @ np.array([[w0], [w1]]).T + np.array([b0, b1])
                    m = z[np.arange(8), y] - z[np.arange(8), 1 - y]
                    best = max(best, int((m >= 1e-4).sum()))
    res = solve_classification_milp(h, y, w, b, r, **EXACT)
    old = solve_classification_milp(h, y, w, b, r, **OLD, **EXACT)
    assert res.objective == old.objective >= best


def test_reduce_drops_fixed_points():
    h, y, w, b = _instance(1)
    lp_old = build_classification_milp(h, y, w, b, 0.01)
    lp = build_classification_milp(h, y, w, b, 0.01, reduce=True)
    assert lp.info["fixed_points"] > 0
    assert int(lp.integer.sum()) == len(y) - lp.info["fixed_points"]
    assert lp.num_row <= lp_old.num_row
    # the warm start keeps its objective
    assert float(lp.cost @ lp.start_solution) + lp.objective_offset == \
        float(lp_old.cost @ lp_old.start_solution)


def test_min_correct_with_reduce():
    h, y, w, b = _instance(2)
    for k in (0, 5, 12):
        old = solve_classification_milp(h, y, w, b, 0.05, min_correct=k, **OLD, **EXACT)
        new = solve_classification_milp(h, y, w, b, 0.05, min_correct=k, **EXACT)
        assert old.status == new.status
        assert old.objective == new.objective


def test_relaxation_shortcut_deterministic():
    """Separable points and a large box: the relaxation proves "all correct"; no MILP."""
    h, _, w, b = _instance(4)
    v = np.random.default_rng(5).normal(size=w.shape)
    y = np.argmax(h @ v.T, axis=1)
    w, b = np.zeros_like(w), np.zeros_like(b)
    a = solve_classification_milp(h, y, w, b, 10.0)
    c = solve_classification_milp(h, y, w, b, 10.0)
    old = solve_classification_milp(h, y, w, b, 10.0, **OLD)
    assert a.info["shortcut"] == c.info["shortcut"] == "relaxation"
    assert round(a.objective) == round(c.objective) == round(old.objective) == len(y)
    np.testing.assert_array_equal(a.weight, c.weight)
