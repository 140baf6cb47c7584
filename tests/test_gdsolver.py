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
from beyondsgd.methods.milp import MILPResult


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
                      ({"threads": 0}, "threads"), ({"min_gain": 2.0}, "min_gain")]:
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


def test_select_points_regression_largest_error_first():
    out = torch.tensor([[0.0], [3.0], [1.0], [-2.0]])
    y = torch.zeros(4, 1)
    assert select_points("regression", out, y, 3).tolist() == [1, 3, 2]


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
    ev = GDSolver(m, radius=0.5, n_points=0, time_limit=20.0).step(x, y, x, yv)
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
    ev = GDSolver(m, radius=0.5, n_points=0, keep_worse=True, time_limit=20.0).step(x, y, x, yv)
    assert ev["accepted"] and ev["val_loss_after"] > ev["val_loss_before"]
    assert not torch.equal(m[2].weight, w0)


def test_infeasible_solve_leaves_weights_untouched():
    m = _mlp(3)
    x, y = _blobs(60, seed=0)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    # A tiny box cannot flip every point, but min_gain=1 demands it: infeasible.
    ev = GDSolver(m, radius=1e-6, n_points=0, min_gain=1.0).step(x, y, x, y)
    assert ev["status"] == "infeasible" and not ev["accepted"] and ev["val_loss_after"] is None
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_timed_out_solve_leaves_weights_untouched(monkeypatch):
    def timed_out(*args, **kwargs):
        return MILPResult(status="no_solution", has_solution=False, objective=None, bound=None,
                          gap=None, start_objective=0.0, solve_seconds=1.0, build_seconds=0.0,
                          n_points=len(args[1]), num_col=0, num_row=0, nnz=0, n_binaries=0,
                          highs_status="Time limit reached")

    monkeypatch.setattr(G, "solve_classification_milp", timed_out)
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
    solver = GDSolver(m, radius=1.0, n_points=0, norm="l1")
    before = (m(x) - y).abs().mean().item()
    ev = solver.step(x, y, x, y)
    assert ev["task"] == "regression" and ev["status"] == "optimal"
    assert ev["start_objective"] == pytest.approx(before, rel=1e-5)
    after = (m(x) - y).abs().mean().item()
    if ev["accepted"]:
        assert after == pytest.approx(ev["objective"], rel=1e-4, abs=1e-5)
        assert after < before


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
    hp = {"lr": 1e-4, "radius": 0.3, "patience": 2, "min_delta": 1e-3, "n_points": 60,
          "time_limit": 20.0}
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


@pytest.mark.parametrize("hp, match", [({"optimizer": "rmsprop"}, "optimizer"),
                                       ({"radius": 0.0}, "radius"), ({"lr": -1.0}, "lr"),
                                       ({"patience": 0}, "patience"),
                                       ({"max_solves": -1}, "max_solves"),
                                       ({"colour": 1}, "no hyperparameter")])
def test_method_bad_hparams(hp, match):
    with pytest.raises(ValueError, match=match):
        make_method("gdsolver", hp)


def test_runner_records_solve_events_and_resumes(tmp_path):
    from beyondsgd.bench.runner import run_trial
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
