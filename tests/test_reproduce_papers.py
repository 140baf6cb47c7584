"""``beyondsgd reproduce`` experiments of DessiLBI, GDSolver and PHT: the papers' models against
the published sizes, the problems, verdict logic on hand-made outcomes, pruning invariants, and
smoke runs that are stored, replayed and resumed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from beyondsgd import models as M
from beyondsgd.bench.problems import get_problem
from beyondsgd.bench.reproduce import REGISTRY
from beyondsgd.bench.reproduce import dessilbi as DL
from beyondsgd.bench.reproduce import gdsolver as GD
from beyondsgd.bench.reproduce import pht as PH
from beyondsgd.bench.reproduce.core import Context, analysed_trial, analysis_of, replay_context
from beyondsgd.bench.run.trial import TrialResult
from beyondsgd.bench.store import Store

torch.set_num_threads(1)
NAMES = ("dessilbi_lenet", "gdsolver_mnist_data", "gdsolver_cifar_data", "gdsolver_regression",
         "pht_convergence")


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---- models ---------------------------------------------------------------------------------
def test_gdsolver_mnist_model_matches_the_official_sizes():
    m = M.gdsolver_mnist(seed=0)
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    head = m[-1]
    # conv4x4 on 28x28 -> 25x25, 3 channels: 3*25*25 = 1875 inputs of the solved layer,
    # 18,750 weights (the digest's MILP size) + 10 biases
    assert (head.in_features, head.weight.numel()) == (1875, 18750)
    assert n_params(m) == (3 * 1 * 4 * 4 + 3) + (1875 * 10 + 10)


@pytest.mark.parametrize("c, side, flat", [(3, 32, 1024), (1, 28, 576)])
def test_gdsolver_deep_model_sizes(c, side, flat):
    m = M.gdsolver_cifar_deep(c, 10, seed=0, image_size=side)
    assert m(torch.zeros(2, c, side, side)).shape == (2, 10)
    fc, head = [x for x in m if isinstance(x, nn.Linear)]
    assert (fc.in_features, fc.out_features) == (flat, 500)
    assert head.weight.numel() + head.bias.numel() == 5010   # digest: 5,010 MILP variables
    convs = (c * 16 + 16) + (16 * 32 * 9 + 32) + (32 * 64 * 9 + 64)
    assert n_params(m) == convs + (flat * 500 + 500) + 5010


def test_models_are_seeded():
    a, b = M.gdsolver_mnist(seed=3), M.gdsolver_mnist(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(M.gdsolver_mnist(seed=4)[0].weight, a[0].weight)


def test_lenet_names_and_bad_model():
    assert DL.lenet_names(M.lenet5_official(seed=0)) == {"conv3": "6.weight", "fc1": "9.weight"}
    with pytest.raises(ValueError, match="official LeNet"):
        DL.lenet_names(M.mlp(4, [3], 2))


def test_problems_registered_with_their_models():
    for name, first in (("fmnist_lenet5_official_cpu", nn.Conv2d),
                        ("smoke_gdsolver", nn.Conv2d), ("mnist_gdsolver", nn.Conv2d)):
        assert isinstance(get_problem(name).build_model(
            type("D", (), {"input_shape": (1, 28, 28)})(), "relu", 0)[0], first)
    assert get_problem("mnist_lenet5").batch_size == 128      # official train_lenet.py
    assert get_problem("mnist_gdsolver").batch_size == 32     # official loaders
    for name in NAMES:
        exp = REGISTRY[name]
        assert set(exp.data) == set(exp.cost) == set(exp.changes) == {"paper", "cpu", "smoke"}
        for probs in exp.problems.values():
            for p in probs:
                get_problem(p)   # every declared problem exists


# ---- pruning invariants -------------------------------------------------------------------
def test_removed_fraction_counts_zeroed_weights_of_all_parameters():
    net = M.lenet5_official(seed=0)
    masks = {"6.weight": torch.arange(120) < 24,                    # 24 of 120 filters kept
             "9.weight": torch.zeros(84, 120, dtype=torch.bool)}    # every fc1 weight removed
    expect = (96 * 16 * 25 + 84 * 120) / n_params(net)
    assert DL.removed_fraction(net, masks) == pytest.approx(expect, rel=0, abs=1e-12)


def test_spearman_against_an_independent_computation():
    a = torch.tensor([1.0, 2.0, 2.0, 5.0, math.inf])
    b = torch.tensor([0.9, 0.5, 0.7, 0.1, 0.0])
    # average ranks: a -> [0, 1.5, 1.5, 3, 4], b -> [4, 2, 3, 1, 0]; Pearson of those ranks
    ra = torch.tensor([0, 1.5, 1.5, 3, 4.0], dtype=torch.float64)
    rb = torch.tensor([4, 2, 3, 1, 0.0], dtype=torch.float64)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    expect = float((ra * rb).sum() / (ra.norm() * rb.norm()))
    assert DL.spearman(a, b) == pytest.approx(expect, abs=1e-12)
    assert math.isnan(DL.spearman(torch.ones(4), b[:4]))


# ---- verdict logic on hand-made trials ----------------------------------------------------
def _trial(status="finished", evals=None, events=None) -> TrialResult:
    return TrialResult("smoke_lenet5_official", "slbi", {}, 0, status, evals=evals or [],
                       events=events or [])


def test_path_grows_needs_every_seed_to_grow():
    grow = _trial(events=[{"kind": "analysis", "support_path": [[1, 10], [2, 40]]}])
    flat = _trial(events=[{"kind": "analysis", "support_path": [[1, 40], [2, 40]]}])
    assert DL.path_grows([grow, grow]) == ([25.0, 25.0], True)
    fr, ok = DL.path_grows([grow, flat])
    assert fr == [25.0, 100.0] and not ok
    fr, ok = DL.path_grows([grow, _trial("diverged")])
    assert math.isnan(fr[1]) and not ok


def test_time_to_target_and_gdsolver_helpers():
    ev = [{"epoch": 0, "train_seconds": 0.0, "train_loss": 2.0},
          {"epoch": 1, "train_seconds": 2.0, "train_loss": float("nan")},
          {"epoch": 2, "train_seconds": 4.0, "train_loss": 0.3}]
    assert PH.time_to_target(ev, 0.3) == 4.0
    assert PH.time_to_target(ev, 0.3, "epoch") == 2.0
    assert PH.time_to_target(ev, 0.29) == math.inf
    assert math.isnan(PH.time_to_target(ev, math.nan))
    assert GD._rel(0.5, 1.0) == -50.0 and math.isnan(GD._rel(1.0, 0.0))
    assert GD._mean_col([[1.0, 2.0], [3.0, math.nan]], 0) == 2.0
    assert math.isnan(GD._mean_col([[1.0, 2.0], [3.0, math.nan]], 1))


def test_official_log_points():
    logs = GD.OFFICIAL_LOGS["gdsolver_mnist_data"]
    assert GD._paper_point(logs, "gdsolver", 10 / 55, "gdsolver_mnist_data")[0] == 94.95
    assert GD._paper_point(logs, "gdsolver_official", 1.0, "gdsolver_mnist_data")[0] == 97.64
    assert GD._paper_point(logs, "sgd", 1.0, "gdsolver_mnist_data")[0] == 97.71
    assert GD._paper_point(logs, "adam", 1.0, "gdsolver_mnist_data")[0] is None
    assert GD._paper_point(logs, "sgd", 0.5, "gdsolver_mnist_data")[0] is None


# ---- smoke runs: stored, replayed, resumed -------------------------------------------------
def _ctx(store, name, seeds=2) -> Context:
    return Context(scale="smoke", seeds=seeds, device="cpu", store=store, progress=False,
                   experiment=name)


@pytest.mark.parametrize("name", ["dessilbi_lenet", "gdsolver_regression", "gdsolver_mnist_data",
                                  "pht_convergence"])
def test_smoke_run_is_stored_and_replayed_identically(tmp_path, name):
    with Store(tmp_path / "s.db") as store:
        ctx = _ctx(store, name)
        first = REGISTRY[name].run(ctx)
        assert ctx.trained > 0 and ctx.skipped == 0
        again = _ctx(store, name)
        second = REGISTRY[name].run(again)          # everything found in the store
        assert again.trained == 0 and again.skipped == ctx.trained
        replayed = REGISTRY[name].run(replay_context(store, "smoke", 2, name))
    for rows in (second, replayed):
        assert [(o.quantity, o.verdict) for o in rows] == [(o.quantity, o.verdict)
                                                           for o in first]
        for a, b in zip(first, rows):
            assert a.ours == pytest.approx(b.ours, nan_ok=True, abs=0)
    assert {o.verdict for o in first} <= {"supported", "not supported", "inconclusive",
                                         "reference only", "budget-limited", "untested"}


def test_dessilbi_smoke_analysis_invariants(tmp_path):
    prob = get_problem("smoke_lenet5_official")
    with Store(tmp_path / "s.db") as store:
        res = analysed_trial(_ctx(store, "dessilbi_lenet"), prob, "slbi",
                             DL.slbi_hparams("smoke"), 0, DL.analyse_slbi(prob), 2, "t")
    a = analysis_of(res.events)
    assert [e for e, _ in a["support_path"]] == [1, 2]
    sizes = [s for _, s in a["support_path"]]
    assert sizes == sorted(sizes) and sizes[-1] <= a["units"]
    assert 0.0 <= a["sparse_removed"] < 1.0 and 0.0 <= a["support_conv3_kept"] <= 1.0
    assert res.evals[-1]["test_metric"] == a["dense"]      # the analysis sees the final model


def test_analysed_trial_resumes_from_its_checkpoint(tmp_path):
    prob = get_problem("toy_identity_mlp")
    hp = {"lr": 0.1}

    def boom(model, method, data):
        raise RuntimeError("killed after training")

    ok = GD._l1_analysis(prob)
    with Store(tmp_path / "a.db") as a:
        whole = analysed_trial(_ctx(a, "x"), prob, "sgd", hp, 0, ok, 2)
    with Store(tmp_path / "b.db") as b:
        with pytest.raises(RuntimeError, match="killed"):
            analysed_trial(_ctx(b, "x"), prob, "sgd", hp, 0, boom, 2)
        (t,) = b.trials()                       # the runner records the crash, no analysis
        assert t["status"] == "failed" and not analysis_of(b.events(t["id"]))
        assert list((tmp_path / "b_checkpoints").glob("*.pt"))   # the last epoch's checkpoint
        ctx = _ctx(b, "x")
        resumed = analysed_trial(ctx, prob, "sgd", hp, 0, ok, 2)
        assert not list((tmp_path / "b_checkpoints").glob("*.pt"))
    assert [e["test_loss"] for e in resumed.evals] == [e["test_loss"] for e in whole.evals]
    assert analysis_of(resumed.events)["test_l1"] == analysis_of(whole.events)["test_l1"]


def test_every_configured_recipe_resolves_at_every_scale():
    """A misspelt hyperparameter of a paper-scale recipe fails here, not on a GPU hours later."""
    from beyondsgd.methods import get_method_class
    from beyondsgd.methods.base import resolve_hparams

    recipes = [("momentum", DL.SGD_HP)]
    recipes += [("slbi", DL.slbi_hparams(s)) for s in ("paper", "cpu", "smoke")]
    recipes += list(GD.BASELINES.values())
    for scale_cfg in GD.DATA.values():
        for _, ep, _, _, tl, budget in scale_cfg.values():
            recipes.append(("gdsolver", GD._gd_hp(ep, tl, budget)))
    recipes += list(PH.METHODS.values())
    for method, hp in recipes:
        resolved = resolve_hparams(get_method_class(method), hp)
        assert all(resolved[k] == v for k, v in hp.items())
    assert DL.slbi_hparams("paper")["lambda_unit"] == "absolute"   # official λ = 1 as given
    gd = resolve_hparams(get_method_class("gdsolver"), GD._gd_hp(20, 60.0, 600.0))
    assert gd["preset"] == "published" and gd["solves_per_run"] == 2  # a solve after each half


def test_doctests_of_the_dessilbi_gdsolver_pht_modules():
    import doctest

    from beyondsgd.bench.reproduce import core

    for mod in (DL, GD, PH, core):
        res = doctest.testmod(mod)
        assert res.failed == 0 and res.attempted > 0, mod.__name__
