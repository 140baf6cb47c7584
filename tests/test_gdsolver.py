"""GDSolver: the solver step in a user's loop (head finding, features, point selection,
accept/reject, untouched weights on failure) and the registered method ``gdsolver``."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from beyondsgd.methods import TrainContext, make_method
from beyondsgd.methods import gdsolver as G
from beyondsgd.methods.gdsolver import GDSolver, PlateauDetector, find_head, select_points
from beyondsgd.methods.gdsolver import points as P
from beyondsgd.methods.gdsolver import solver as S
from beyondsgd.methods.gdsolver.highs import MILPResult


def _mlp(seed=0, d_in=4, width=8, c=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, c))


def _blobs(n, seed=0, c=3, d=4, noise=0.6):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=torch.Generator().manual_seed(123)) * 2
    y = torch.randint(0, c, (n,), generator=g)
    x = centers[y] + noise * torch.randn(n, d, generator=g)
    return x, y


# ---- head and features ---------------------------------------------------------------------
def test_find_head_default_name_and_errors():
    m = _mlp()
    assert find_head(m) is m[2]
    assert find_head(m, "0") is m[0]
    with pytest.raises(ValueError, match="no submodule named 'fc'"):
        find_head(m, "fc")
    with pytest.raises(ValueError, match="has no nn.Linear"):
        find_head(nn.Sequential(nn.Conv1d(1, 1, 3), nn.ReLU()))
    with pytest.raises(ValueError, match="must be an nn.Linear"):
        find_head(m, "1")
    with pytest.raises(ValueError, match="bias"):
        find_head(nn.Sequential(nn.Linear(3, 2, bias=False)))


def test_features_are_the_heads_input():
    m = _mlp()
    x, _ = _blobs(20)
    h, out = GDSolver(m).features(x)
    torch.testing.assert_close(h, m[1](m[0](x)), rtol=0, atol=0)
    torch.testing.assert_close(out, m(x), rtol=0, atol=0)


def test_model_with_a_layer_after_the_head_is_rejected():
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1))
    x, y = _blobs(10)
    with pytest.raises(ValueError, match="not the output of its last nn.Linear"):
        GDSolver(m).step(x, y, x, y)


def test_bad_arguments():
    m = _mlp()
    for kw, match in [({"radius": 0.0}, "radius"), ({"time_limit": -1.0}, "time_limit"),
                      ({"selection": "best"}, "selection"), ({"norm": "l2"}, "norm"),
                      ({"task": "ranking"}, "task"), ({"mip_gap": 2.0}, "mip_gap"),
                      ({"threads": 0}, "threads"), ({"min_gain": 2.0}, "min_gain"),
                      ({"objective": "hinge"}, "objective"), ({"node_limit": 0}, "node_limit"),
                      ({"n_points": -2}, "n_points"), ({"n_points": 2.5}, "n_points"),
                      ({"task": "regression", "selection": "misclassified"}, "misclassified")]:
        with pytest.raises(ValueError, match=match):
            GDSolver(m, **kw)


# ---- point selection -----------------------------------------------------------------------
def test_select_points_misclassified_first_in_dataset_order():
    out = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1], [1, 0]])
    y = torch.tensor([0, 0, 0, 0, 1])  # wrong: 1, 3, 4
    idx = select_points("classification", out, y, 4, "misclassified")
    assert idx.tolist() == [1, 3, 4, 0]
    assert sorted(select_points("classification", out, y, 0, "misclassified").tolist()) == \
        [0, 1, 2, 3, 4]
    assert select_points("classification", out, y, 2, "all").tolist() == [0, 1, 2, 3, 4]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    r1 = select_points("classification", out, y, 3, "random", g1)
    assert r1.tolist() == select_points("classification", out, y, 3, "random", g2).tolist()
    assert len(set(r1.tolist())) == 3
    with pytest.raises(ValueError, match="selection"):
        select_points("classification", out, y, 3, "worst")


def test_select_points_regression_rules():
    out = torch.tensor([[0.0], [3.0], [1.0], [-2.0]])
    y = torch.zeros(4, 1)
    assert select_points("regression", out, y, 3, "largest_error").tolist() == [1, 3, 2]
    assert select_points("regression", out, y, 3, "first").tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="'misclassified' needs classification"):
        select_points("regression", out, y, 3, "misclassified")
    with pytest.raises(ValueError, match="'largest_error' needs regression"):
        select_points("classification", out, y.long().reshape(-1), 3, "largest_error")


def test_regression_default_never_selects_by_error_size(monkeypatch):
    """Default regression solves take every training point when the LP is small; above the
    size budget a random sample, the same whatever the errors are."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 1))
    x = torch.randn(50, 3)
    y_small_err = m(x).detach() + 0.01 * torch.randn(50, 1)
    y_big_err = y_small_err.clone()
    y_big_err[:10] += 100.0  # the first ten points now have by far the largest errors
    solver = GDSolver(m)
    assert solver.selection == "margin" and solver.n_points == -1
    assert P.effective_selection("regression", "margin") == "random"
    _, idx = solver.solve(x, y_big_err)
    assert idx.tolist() == list(range(50))  # all points
    monkeypatch.setattr(P, "REGRESSION_NONZEROS", 20 * 6)  # 20 points of a 6-wide head
    picks = []
    for y in (y_small_err, y_big_err):
        _, idx = GDSolver(m).solve(x, y)
        picks.append(idx.tolist())
    assert len(picks[0]) == 20 and picks[0] == picks[1]
    assert sum(i < 10 for i in picks[1]) < 10  # not the ten largest errors
    method = make_method("gdsolver", {})
    assert method.hp["selection"] == "margin" and method.hp["n_points"] == -1


def test_default_sample_size_follows_the_milp_size():
    assert G.default_points("classification", "paper", 5000, 128, 10) == 75_000 // (9 * 128)
    assert G.default_points("classification", "paper", 5000, 4096, 10) == P.MIN_POINTS
    assert G.default_points("classification", "paper", 5000, 2, 2) == P.MAX_POINTS
    assert G.default_points("classification", "paper", 10, 128, 10) == 10
    assert G.default_points("classification", "loss", 5000, 128, 10) == P.LP_POINTS
    assert G.default_points("regression", "paper", 300, 64, 1) == 300
    assert G.default_points("regression", "paper", 5000, 64, 1) == 32_768 // 64
    assert G.default_points("regression", "paper", 5000, 10**6, 1) == P.MIN_POINTS
    assert G.default_points("regression", "loss", 5000, 64, 1) == 5000
    assert G.default_points("regression", "loss", 10**5, 64, 1) == 524_288 // 64


# ---- one solver step ----------------------------------------------------------------------
def test_step_accepts_an_improving_solution_inside_the_box():
    m = _mlp(1)
    x, y = _blobs(200, seed=0)
    xv, yv = _blobs(200, seed=1)
    w0, b0 = m[2].weight.detach().clone(), m[2].bias.detach().clone()
    first = m[0].weight.detach().clone()
    before = F.cross_entropy(m(xv), yv).item()
    ev = GDSolver(m, radius=0.2, n_points=60, time_limit=20.0).step(x, y, xv, yv)
    after = F.cross_entropy(m(xv), yv).item()
    assert ev["accepted"] and ev["status"] in ("optimal", "feasible")
    assert ev["objective"] > ev["start_objective"]
    assert after == pytest.approx(ev["val_loss_after"], rel=1e-5) and after < before
    assert ev["val_loss_before"] == pytest.approx(before, rel=1e-5)
    assert (m[2].weight - w0).abs().max() <= 0.2 + 1e-6
    assert (m[2].bias - b0).abs().max() <= 0.2 + 1e-6
    assert torch.equal(m[0].weight, first)  # only the head is changed
    assert ev["weight_change"] > 0


def _contradicting_val(m, x):
    """Validation labels = the model's current predictions, so fitting the training labels can
    only hurt them."""
    with torch.no_grad():
        return m(x).argmax(1)


def test_step_rejects_a_worse_solution_and_restores_the_weights_exactly():
    m = _mlp(2)
    x, y = _blobs(100, seed=0)
    yv = _contradicting_val(m, x)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    ev = GDSolver(m, radius=0.5, selection="all", time_limit=20.0).step(x, y, x, yv)
    assert ev["status"] in ("optimal", "feasible") and ev["weight_change"] > 0
    assert ev["val_loss_after"] > ev["val_loss_before"]
    assert not ev["accepted"]
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_keep_worse_keeps_the_solution():
    m = _mlp(2)
    x, y = _blobs(100, seed=0)
    yv = _contradicting_val(m, x)
    w0 = m[2].weight.detach().clone()
    ev = GDSolver(m, radius=0.5, selection="all", keep_worse=True, time_limit=20.0).step(
        x, y, x, yv)
    assert ev["accepted"] and ev["val_loss_after"] > ev["val_loss_before"]
    assert not torch.equal(m[2].weight, w0)


def test_infeasible_solve_leaves_weights_untouched():
    m = _mlp(3)
    x, y = _blobs(60, seed=0)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    # A tiny box cannot flip every point, but min_gain=1 demands it: infeasible.
    ev = GDSolver(m, radius=1e-6, selection="all", min_gain=1.0).step(x, y, x, y)
    assert ev["status"] == "infeasible" and not ev["accepted"] and ev["val_loss_after"] is None
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_timed_out_solve_leaves_weights_untouched(monkeypatch):
    def timed_out(*args, **kwargs):
        return MILPResult(status="no_solution", has_solution=False, objective=None, bound=None,
                          gap=None, start_objective=0.0, solve_seconds=1.0, build_seconds=0.0,
                          n_points=len(args[1]), num_col=0, num_row=0, nnz=0, n_binaries=0,
                          highs_status="Time limit reached")

    monkeypatch.setattr(S, "solve_classification_milp", timed_out)
    m = _mlp(3)
    x, y = _blobs(30, seed=0)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    ev = GDSolver(m).step(x, y, x, y)
    assert ev["status"] == "no_solution" and not ev["accepted"]
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_regression_step_lowers_l1_on_the_points():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.rand(80, 3) * 2 - 1
    y = torch.stack([3 * x[:, 0] + 1, x[:, 1] ** 2], dim=1)
    solver = GDSolver(m, radius=1.0, selection="all", norm="l1")
    before = (m(x) - y).abs().mean().item()
    ev = solver.step(x, y, x, y)
    assert ev["task"] == "regression" and ev["status"] == "optimal"
    assert ev["start_objective"] == pytest.approx(before, rel=1e-5)
    after = (m(x) - y).abs().mean().item()
    if ev["accepted"]:
        assert after == pytest.approx(ev["objective"], rel=1e-4, abs=1e-5)
        assert after < before


def test_float_labels_on_a_classifier_are_a_clear_error(monkeypatch):
    """Float class labels: a ValueError naming the dtype before any work (no solve, no change)."""
    def must_not_run(*a, **k):
        raise AssertionError("the solver ran")

    monkeypatch.setattr(S, "solve_classification_milp", must_not_run)
    monkeypatch.setattr(S, "solve_regression_lp", must_not_run)
    m = _mlp(0)
    x, y = _blobs(40)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"integer class labels.*dtype torch\.float32"):
        GDSolver(m, task="classification").step(x, y.float(), x, y.float())
    # task inferred from float labels -> regression, which does not fit a 3-output head
    with pytest.raises(ValueError, match=r"dtype torch\.float32.*3 outputs.*integer dtype"):
        GDSolver(m).step(x, y.float(), x, y.float())
    with pytest.raises(ValueError, match=r"dtype torch\.float64"):
        GDSolver(m).solve(x, y.double())
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k
    ctx = _ctx(x, y.float(), x, y.float(), epochs=1)
    with pytest.raises(ValueError, match=r"dtype torch\.float32"):  # before training starts
        make_method("gdsolver", {"solve_every": 1}).prepare(_mlp(0), ctx)


def test_acceptance_rule():
    assert G.improves(0.5, 0.80, 0.6, 0.81)  # accuracy up, loss up: accepted
    assert not G.improves(0.5, 0.80, 0.4, 0.79)  # accuracy down, loss down: rejected
    assert G.improves(0.5, 0.80, 0.49, 0.80)  # tie on accuracy, broken by the loss
    assert not G.improves(0.5, 0.80, 0.5, 0.80)
    assert G.improves(0.5, None, 0.49, None) and not G.improves(0.5, None, 0.51, None)


def _one_d_classifier():
    """h = x (identity first layer), logits (-5x, 5x): x = 0.1 with label 0 is misclassified."""
    m = nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 2))
    with torch.no_grad():
        m[0].weight.fill_(1.0)
        m[0].bias.zero_()
        m[1].weight.copy_(torch.tensor([[-5.0], [5.0]]))
        m[1].bias.zero_()
    x = torch.tensor([[-1.0], [1.0], [0.1]])
    return m, x, torch.tensor([0, 1, 0])


def test_step_accepts_higher_accuracy_even_if_the_loss_rises(monkeypatch):
    m, x, y = _one_d_classifier()
    # a "solution" that classifies all three points correctly with tiny margins
    w1, b1 = np.array([[-0.1], [0.1]]), np.array([0.05, -0.05])

    def fake(h, ys, w, b, *a, **k):
        return MILPResult(status="optimal", has_solution=True, objective=3.0, bound=3.0, gap=0.0,
                          start_objective=2.0, solve_seconds=0.0, build_seconds=0.0,
                          n_points=3, num_col=0, num_row=0, nnz=0, n_binaries=3,
                          weight=w1, bias=b1)

    monkeypatch.setattr(S, "solve_classification_milp", fake)
    loss0 = F.cross_entropy(m(x), y).item()
    ev = GDSolver(m).step(x, y, x, y)
    loss1 = F.cross_entropy(m(x), y).item()
    assert (ev["val_acc_before"], ev["val_acc_after"]) == (pytest.approx(2 / 3), 1.0)
    assert loss1 > loss0 and ev["val_loss_after"] == pytest.approx(loss1, rel=1e-6)
    assert ev["accepted"]
    torch.testing.assert_close(m[1].weight.double(), torch.as_tensor(w1))


def test_loss_objective_solves_the_hinge_lp_and_lowers_it():
    m = _mlp(1)
    x, y = _blobs(200, seed=0)
    xv, yv = _blobs(200, seed=1)
    solver = GDSolver(m, radius=0.2, objective="loss")
    ev = solver.step(x, y, xv, yv)
    assert ev["objective_kind"] == "loss" and ev["n_binaries"] == 0 and ev["n_points"] == 200
    assert ev["status"] == "optimal" and ev["objective"] < ev["start_objective"]
    assert ev["accepted"]  # the blobs' validation split agrees with the training split
    _, out = solver.features(x)
    m_h = out.gather(1, y[:, None]) - out  # margins at the accepted weights, independently
    m_h[torch.arange(len(y)), y] = float("inf")
    hinge = torch.clamp(1.0 - m_h.min(dim=1).values, min=0).mean().item()
    assert hinge == pytest.approx(ev["objective"], abs=1e-5)


# ---- plateau detector ------------------------------------------------------------------------
def test_plateau_detector():
    p = PlateauDetector(patience=2, min_delta=0.1)
    assert [p.update(v) for v in [1.0, 0.8, 0.75, 0.74, 0.5, 0.5]] == \
        [False, False, False, True, False, False]
    p.reset(best=0.5)
    assert not p.update(0.45) and p.update(0.45)
    q = PlateauDetector(2, 0.1)
    q.load_state_dict(p.state_dict())
    assert (q.best, q.bad) == (p.best, p.bad)
    with pytest.raises(ValueError, match="patience"):
        PlateauDetector(0)


# ---- the registered method -------------------------------------------------------------------
def _ctx(x, y, xv, yv, epochs, batch_size=50):
    def batches(epoch):
        g = torch.Generator().manual_seed(epoch)
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            yield x[perm[i:i + batch_size]], y[perm[i:i + batch_size]]

    return TrainContext(device=torch.device("cpu"), loss_fn=F.cross_entropy,
                        task="classification", x_train=x, y_train=y, x_val=xv, y_val=yv,
                        batch_size=batch_size, epochs=epochs,
                        steps_per_epoch=math.ceil(len(x) / batch_size), num_classes=3,
                        batch_iter=batches, seed=0)


def _train(method, model, ctx):
    model = method.prepare(model, ctx)
    events = []
    for epoch in range(ctx.epochs):
        for batch in ctx.train_batches(epoch):
            method.train_step(model, batch, ctx.loss_fn)
        events += method.end_of_epoch(model, ctx, epoch)
    return model, events


def test_method_escapes_a_gd_plateau():
    """GD with a tiny learning rate barely moves (a plateau by min_delta); the solver step on
    the last layer then lowers the validation loss far below what GD alone reaches."""
    x, y = _blobs(300, seed=0)
    xv, yv = _blobs(300, seed=1)
    hp = {"lr": 1e-4, "radius": 0.3, "box": "fixed", "patience": 2, "min_delta": 1e-3,
          "n_points": 60, "time_limit": 20.0, "solves_per_run": 0}
    gd = make_method("sgd", {"lr": 1e-4})
    m_gd, _ = _train(gd, _mlp(4), _ctx(x, y, xv, yv, epochs=6))
    gs = make_method("gdsolver", hp)
    m_gs, events = _train(gs, _mlp(4), _ctx(x, y, xv, yv, epochs=6))
    assert events and all(e["kind"] == "milp" for e in events)
    assert events[0]["trigger"] == "plateau"
    assert any(e["accepted"] for e in events)
    loss_gd = F.cross_entropy(m_gd(xv), yv).item()
    loss_gs = F.cross_entropy(m_gs(xv), yv).item()
    acc_gd = (m_gd(xv).argmax(1) == yv).float().mean().item()
    acc_gs = (m_gs(xv).argmax(1) == yv).float().mean().item()
    assert loss_gs < loss_gd - 0.05
    assert acc_gs > acc_gd + 0.05
    assert gs.metrics(m_gs)["milp_accepted"] >= 1


def test_method_budgets_and_state_dict_round_trip():
    x, y = _blobs(100, seed=0)
    xv, yv = _blobs(100, seed=1)
    gs = make_method("gdsolver", {"solve_every": 1, "max_solves": 2, "optimizer": "adam",
                                  "lr": 1e-3})
    model, events = _train(gs, _mlp(5), _ctx(x, y, xv, yv, epochs=4))
    assert len(events) == 2 and [e["trigger"] for e in events] == ["schedule", "schedule"]
    state = gs.state_dict()
    other = make_method("gdsolver", {"solve_every": 1, "max_solves": 2, "optimizer": "adam",
                                     "lr": 1e-3})
    other.prepare(_mlp(5), _ctx(x, y, xv, yv, epochs=4))
    other.load_state_dict(state)
    s2 = other.state_dict()
    assert s2["solves"] == state["solves"] == 2 and s2["plateau"] == state["plateau"]
    assert s2["solver_calls"] == state["solver_calls"]
    assert s2["optimizer"]["state"].keys() == state["optimizer"]["state"].keys()
    for k, v in state["optimizer"]["state"].items():
        for name, t in v.items():
            assert torch.equal(torch.as_tensor(s2["optimizer"]["state"][k][name]),
                               torch.as_tensor(t))


def test_method_is_deterministic():
    x, y = _blobs(100, seed=0)
    xv, yv = _blobs(100, seed=1)

    def run():
        gs = make_method("gdsolver", {"solve_every": 1, "max_solves": 2, "selection": "random",
                                      "n_points": 20, "radius": 0.1})
        model, events = _train(gs, _mlp(6), _ctx(x, y, xv, yv, epochs=2))
        strip = [{k: v for k, v in e.items() if "seconds" not in k} for e in events]
        return [p.detach().clone() for p in model.parameters()], strip

    p1, e1 = run()
    p2, e2 = run()
    assert e1 == e2
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_backoff_after_rejected_solves(monkeypatch):
    """A flat validation loss (lr ~ 0) plateaus every `patience` = 2 epochs after the first one
    (which sets the best value); each solve doubles the wait: solves at (0-based) epochs 2,
    2 + 4, 2 + 4 + 8; with backoff 1 at every plateau."""
    def no_solution(*args, **kwargs):
        return MILPResult(status="no_solution", has_solution=False, objective=None, bound=None,
                          gap=None, start_objective=0.0, solve_seconds=0.0, build_seconds=0.0,
                          n_points=len(args[1]), num_col=0, num_row=0, nnz=0, n_binaries=0)

    monkeypatch.setattr(S, "solve_classification_milp", no_solution)
    x, y = _blobs(60, seed=0)
    xv, yv = _blobs(60, seed=1)
    assert [G.backoff_patience(2, 2.0, k) for k in range(4)] == [2, 4, 8, 16]
    assert G.backoff_patience(2, 1.0, 5) == 2 and G.backoff_patience(2, 2.0, 10**9) == 10**6
    for backoff, expected in ((2.0, [2, 6, 14]), (1.0, [2, 4, 6, 8, 10, 12, 14])):
        gs = make_method("gdsolver", {"lr": 1e-12, "backoff": backoff, "solves_per_run": 0})
        ctx = _ctx(x, y, xv, yv, epochs=15)
        model = gs.prepare(_mlp(7), ctx)
        epochs = [e for e in range(15) if gs.end_of_epoch(model, ctx, e)]
        assert epochs == expected, backoff
        state = gs.state_dict()
        other = make_method("gdsolver", {"lr": 1e-12, "backoff": backoff,
                                         "solves_per_run": 0})
        other.prepare(_mlp(7), _ctx(x, y, xv, yv, epochs=15))
        other.load_state_dict(state)
        assert other.plateau.patience == gs.plateau.patience
        assert other.solves == gs.solves == len(expected)


def _digits_trial(method, hp, seed=0):
    from beyondsgd.bench.run.runner import run_trial

    torch.set_num_threads(1)
    return run_trial("digits_mlp", method, hp, seed=seed)


def test_digits_defaults_accept_a_solve_within_the_budget():
    """Issue 22: digits_mlp, the method's defaults, the problem's epoch budget (20), seed 0: the
    solves run (SGD at this lr does not plateau, the schedule solves after epochs 5, 10, 15, 20),
    at least one is accepted, every one is bounded by work (never by the time limit), and the
    runner's own evaluation after each solve (an implementation independent of the solver's)
    shows what the acceptance rule promises: an accepted solve raised the validation accuracy
    or kept it with a lower loss, a rejected one left it as it was. The final test accuracy is
    SGD's (its defaults, same seed) or better, within one test point. Deterministic: one torch
    thread, one HiGHS thread, work limits."""
    res = _digits_trial("gdsolver", {})
    assert res.status == "finished" and len(res.evals) == 21
    milp = [e for e in res.events if e["kind"] == "milp"]
    assert {5, 10, 15, 20} <= {e["epoch"] for e in milp}
    assert all(e["deterministic"] and e["limit"] != "time" for e in milp)
    assert sum(e["accepted"] for e in milp) >= 1
    assert res.final["milp_accepted"] == sum(e["accepted"] for e in milp) >= 1
    assert res.final["milp_time_limited"] == 0
    for e in milp:
        row = res.evals[e["epoch"]]
        if e["accepted"]:
            assert row["val_metric"] == pytest.approx(e["val_acc_after"], abs=1e-9)
            assert row["val_loss"] == pytest.approx(e["val_loss_after"], rel=1e-5)
            assert e["val_acc_after"] > e["val_acc_before"] or (
                e["val_acc_after"] == e["val_acc_before"]
                and e["val_loss_after"] < e["val_loss_before"])
        else:
            assert row["val_metric"] == pytest.approx(e["val_acc_before"], abs=1e-9)
    from beyondsgd.bench.problems import get_problem

    sgd = _digits_trial("sgd", {})
    one_point = 1.0 / get_problem("digits_mlp").load(0).x_test.shape[0]
    assert res.final["test_metric"] >= sgd.final["test_metric"] - one_point - 1e-12


def test_default_selection_includes_the_misclassified_points_the_box_can_fix():
    """Issue 22: the default selection (``margin``) hands the MILP misclassified points to fix
    and the correct ones nearest to the boundary: on a few-misclassified synthetic set all the
    misclassified points are selected; and, in general, every misclassified point that the
    solve's box can make correct is selected, in the order of the smallest box that flips
    each point (computed here independently from the logits)."""
    # 40 points of class 1 with logits (0, s_n): correct with margin s_n > 0; four mistakes
    # near the boundary and one far one (s = -3.5)
    h = torch.ones(40, 1)
    s = torch.linspace(0.2, 4.0, 40)
    s[[5, 12, 25, 33, 38]] = torch.tensor([-0.1, -0.4, -0.25, -0.05, -3.5])
    out = torch.stack([torch.zeros(40), s], dim=1)
    y = torch.ones(40, dtype=torch.long)
    idx = select_points("classification", out, y, 12, "margin", features=h, margin=1e-4)
    assert {5, 12, 25, 33} <= set(idx.tolist())  # the mistakes a small box can fix
    assert 38 not in idx.tolist()  # 3.5 from the boundary: after 11 nearer points
    # independently: the smallest box that flips point n is |margin_n - delta| / (2 (|h| + 1))
    margin = torch.tensor([o[c] - max(v for j, v in enumerate(o) if j != c)
                           for o, c in zip(out.tolist(), y.tolist())], dtype=torch.float64)
    t = (margin - 1e-4).abs() / 4.0
    assert torch.allclose(P.flip_radius(out, y, h), t)
    assert idx.tolist() == torch.argsort(t, stable=True)[:12].tolist()
    # on digits after 10 SGD epochs (some mistakes the box cannot fix): the fixable ones are in
    from beyondsgd.bench.problems import get_problem

    torch.set_num_threads(1)
    prob = get_problem("digits_mlp")
    data = prob.load(0)
    model = prob.build_model(data, "relu", 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(10):
        for xb, yb in _epoch(data.x_train, data.y_train, 64, epoch):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    solver = GDSolver(model)
    hd, od = solver.features(data.x_train)
    res, sel = solver.solve(data.x_train, data.y_train)
    wrong = (od.argmax(1) != data.y_train)
    t = P.flip_radius(od, data.y_train, hd)
    fixable = (wrong & (t <= res.info["radius"])).nonzero().reshape(-1).tolist()
    assert len(fixable) >= 5 and set(fixable) <= set(sel.tolist())
    assert int(wrong[sel].sum()) >= len(fixable)


def _epoch(x, y, batch, epoch):
    g = torch.Generator().manual_seed(epoch)
    perm = torch.randperm(len(x), generator=g)
    for i in range(0, len(x), batch):
        yield x[perm[i:i + batch]], y[perm[i:i + batch]]


def test_fitted_box_changes_no_point_left_out_of_the_milp():
    """``box="fit"``: the radius is the largest (up to ``radius``) at which no training point
    left out of the MILP can change class, so the solve changes the classification (with margin)
    of the selected points only. Checked on the weights it returns, over all points, and
    against the flip radii: the point left out nearest to flipping sits exactly at the box."""
    m = _mlp(1, d_in=4, width=8, c=3)
    x, y = _blobs(300, seed=0, noise=1.2)
    solver = GDSolver(m, n_points=40, radius=0.5)
    h, out = solver.features(x)
    res, idx = solver.solve(x, y)
    assert res.has_solution and res.objective > res.start_objective
    rest = torch.ones(300, dtype=torch.bool)
    rest[idx] = False
    t = P.flip_radius(out, y, h)
    assert res.info["radius"] == pytest.approx(float(t[rest].min()), rel=1e-12)
    assert res.info["radius"] < 0.5 and float(t[idx].max()) <= res.info["radius"]

    def correct(w, b):  # every margin >= delta, in float64 from the features
        return torch.as_tensor(G.classification_margins(h.double(), y, w, b) >= 1e-4 - 1e-9
                               ).all(dim=1)

    before = correct(m[2].weight.detach().double().numpy(), m[2].bias.detach().double().numpy())
    after = correct(res.weight, res.bias)
    assert torch.equal(before[rest], after[rest])  # nothing left out changed class
    assert int(after[idx].sum()) == res.objective and int(before[idx].sum()) == \
        res.start_objective
    fixed = GDSolver(m, n_points=40, radius=0.5, box="fixed").solve(x, y)[0]
    assert fixed.info["radius"] == 0.5


def test_n_points_zero_is_refused_everywhere(tmp_path, capsys):
    """Issue 27: n_points=0 used to mean "all points" silently; now one message says what is
    accepted (GDSolver, the registered method, the CLI's --set)."""
    from beyondsgd.cli import main

    msg = r"n_points=0: accepted -1 \(auto.*positive count.*selection='all'"
    with pytest.raises(ValueError, match=msg):
        GDSolver(_mlp(), n_points=0)
    with pytest.raises(ValueError, match=msg):
        make_method("gdsolver", {"n_points": 0})
    for bad in (-2, 2.5, True):
        with pytest.raises(ValueError, match="accepted -1"):
            GDSolver(_mlp(), n_points=bad)
    code = main(["train", "--problem", "digits_mlp", "--method", "gdsolver", "--epochs", "1",
                 "--set", "gdsolver.n_points=0", "--store", str(tmp_path / "s.db")])
    err = capsys.readouterr().err
    assert code == 2 and "n_points=0: accepted -1" in err and "selection='all'" in err
    x, y = _blobs(30)
    _, idx = GDSolver(_mlp(), selection="all", n_points=5).solve(x, y)
    assert idx.tolist() == list(range(30))  # every point, asked for explicitly


def test_compiled_and_ddp_wrapped_models_are_unwrapped(tmp_path):
    """Issue 27: GDSolver(torch.compile(model)) and GDSolver(DDP(model)) work on the wrapped
    network (its head, named as in the unwrapped model) and the solve changes the wrapped
    model's weights."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    x, y = _blobs(200, seed=0)
    xv, yv = _blobs(200, seed=1)
    ref = _mlp(1)
    ev_ref = GDSolver(ref, radius=0.2, n_points=60).step(x, y, xv, yv)
    m = _mlp(1)
    compiled = torch.compile(m, backend="eager")
    solver = GDSolver(compiled, head="2", radius=0.2, n_points=60)
    assert solver.model is m and solver.head is m[2]
    ev = solver.step(x, y, xv, yv)
    assert ev["accepted"] and ev["objective"] == ev_ref["objective"]
    assert torch.equal(compiled(x), ref(x))  # the compiled model runs the new head
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        wrapped = DDP(_mlp(1))
        inner = GDSolver(wrapped, head="2", radius=0.2, n_points=60)
        assert inner.model is wrapped.module and inner.head is wrapped.module[2]
        assert inner.step(x, y, xv, yv)["objective"] == ev_ref["objective"]
        assert torch.equal(wrapped.module[2].weight, ref[2].weight)
    finally:
        dist.destroy_process_group()


def test_repr_names_the_head_box_and_limits():
    text = repr(GDSolver(_mlp(), radius=0.1, time_limit=7.0))
    assert "object at" not in text
    for part in ("head='2' Linear(8 -> 3)", "radius=0.1 (fit)", "selection='margin'",
                 "n_points=auto", "nodes=100", "checks=200", "iterations=20000",
                 "time_limit=7 s (safety net)"):
        assert part in text, (part, text)


def test_published_preset_from_python_and_the_cli(tmp_path):
    """Issue 22: the official recipe is a named preset (GDSolverMethod.published_defaults);
    values given explicitly win; the runner keys and stores the values actually used."""
    from beyondsgd.bench.run.runner import run_trial
    from beyondsgd.bench.store import Store
    from beyondsgd.cli import parse_overrides

    pub = G.GDSolverMethod.published_defaults
    assert pub is G.PUBLISHED and pub["lr"] == 0.05 and pub["selection"] == "misclassified"
    method = make_method("gdsolver", {"preset": "published"})
    ours = make_method("gdsolver", {})
    assert method.hp["preset"] == "published" and ours.hp["preset"] == "ours"
    for name, h in ((h.name, h) for h in G.GDSolverMethod.hparams if h.name != "preset"):
        assert method.hp[name] == pub.get(name, h.default), name
        assert ours.hp[name] == h.default, name
    assert ours.hp["lr"] == 0.1 and ours.hp["selection"] == "margin"  # SGD's default lr
    assert make_method("gdsolver", {"preset": "published", "lr": 0.2}).hp["lr"] == 0.2
    with pytest.raises(ValueError, match="'preset'.*not one of"):
        make_method("gdsolver", {"preset": "paper"})
    hp = parse_overrides(["gdsolver.preset=published"], ["gdsolver"], single="gdsolver")
    with Store(tmp_path / "s.db") as st:
        res = run_trial("digits_mlp", "gdsolver", hp["gdsolver"], seed=0, epochs=2, store=st)
        stored = st.trials()[0]["hparams"]
    assert res.status == "finished"
    assert {k: stored[k] for k in pub} == pub and stored["preset"] == "published"


def test_solves_per_run_schedule():
    hp = {"solve_every": 0, "solves_per_run": 4}
    assert [e + 1 for e in range(20) if P.scheduled(hp, e, 20)] == [5, 10, 15, 20]
    assert [e + 1 for e in range(10) if P.scheduled(hp, e, 10)] == [2, 5, 7, 10]
    assert [e + 1 for e in range(3) if P.scheduled(hp, e, 3)] == [1, 2, 3]
    assert not any(P.scheduled({"solve_every": 0, "solves_per_run": 0}, e, 9) for e in range(9))
    assert [e + 1 for e in range(6) if P.scheduled({"solve_every": 3}, e, None)] == [3, 6]


@pytest.mark.parametrize("hp, match", [({"optimizer": "rmsprop"}, "optimizer"),
                                       ({"radius": 0.0}, "radius"), ({"lr": -1.0}, "lr"),
                                       ({"patience": 0}, "patience"),
                                       ({"max_solves": -1}, "max_solves"),
                                       ({"backoff": 0.5}, "backoff"),
                                       ({"n_points": -2}, "n_points"),
                                       ({"n_points": 0}, "n_points=0"),
                                       ({"check_limit": -1}, "check_limit"),
                                       ({"solves_per_run": -1}, "solves_per_run"),
                                       ({"box": "auto"}, "box"),
                                       ({"objective": "hinge"}, "objective"),
                                       ({"node_limit": -1}, "node_limit"),
                                       ({"colour": 1}, "no hyperparameter")])
def test_method_bad_hparams(hp, match):
    with pytest.raises(ValueError, match=match):
        make_method("gdsolver", hp)


def test_runner_records_solve_events_and_resumes(tmp_path):
    from beyondsgd.bench.run.runner import run_trial
    from beyondsgd.bench.store import Store

    hp = {"solve_every": 1, "max_solves": 3, "lr": 0.1, "n_points": 16}
    with Store(tmp_path / "a.db") as a, Store(tmp_path / "b.db") as b:
        full = run_trial("digits_mlp", "gdsolver", hp, seed=0, epochs=3, store=a)
        assert full.status == "finished"
        milp = [e for e in full.events if e.get("kind") == "milp"]
        assert len(milp) == 3 and [e["epoch"] for e in milp] == [1, 2, 3]
        assert full.final["milp_solves"] == 3.0
        run_trial("digits_mlp", "gdsolver", hp, seed=0, epochs=3, store=b, stop_after_epoch=1)
        resumed = run_trial("digits_mlp", "gdsolver", hp, seed=0, epochs=3, store=b)

        def strip(rows):
            return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]

        assert strip(resumed.evals) == strip(full.evals)
        assert strip(b.events(b.trials()[0]["id"])) == strip(a.events(a.trials()[0]["id"]))


def test_public_reexports():
    for name in ("solve_classification_milp", "solve_regression_lp", "build_classification_milp",
                 "build_regression_lp", "MILPResult"):
        assert hasattr(G, name)
    assert np.isfinite(0.0)
