"""Fair tuning (issue 24, finding 7): tuning draws scale with the number of tuned
hyperparameters, the Halton draws are prefix-stable (a larger budget reuses a smaller one's
trials), and the tuning check (study 0 tuned again with twice the draws) writes ``final-x2`` runs
only for the pairs whose best setting changed."""

import pytest

from beyondsgd.bench.protocol import (
    TUNE_TAG,
    TUNING_CHECK_TAG,
    TUNING_CHECK_TUNE_TAG,
    sample_configs,
    search_space,
)
from beyondsgd.bench.protocol import suite as S
from beyondsgd.bench.protocol.suite import Budget, run_suite
from beyondsgd.bench.store import Store, trial_key
from beyondsgd.methods import METHODS, get_method_class
from beyondsgd.methods.base import resolve_hparams

PROBLEM = "digits_mlp"


def test_tuning_draws_scale_with_the_number_of_tuned_hyperparameters():
    b = Budget("t", {PROBLEM: 1, "diabetes_mlp": 1}, n_tune=3, seeds=1)
    jobs = S.tuning_jobs(b, list(METHODS))
    for m in METHODS:
        k = len(search_space(m))
        assert b.draws(m) == 3 * max(1, k), m
        for p in b.problems:
            tuned = [j for j in jobs if j.method == m and j.problem == p and j.tag == TUNE_TAG]
            assert len(tuned) == 3 * max(1, k), (m, p)
    # a paper method tuned over two hyperparameters gets twice a baseline's draws
    assert len(search_space("slbi")) == 2 and len(search_space("sgd")) == 1
    assert b.draws("slbi") == 2 * b.draws("sgd") and b.draws("slbi", 2) == 4 * b.draws("sgd")
    # the built-in budgets too: small gives ProxProp/SLBI/GDSolver 8 draws, the baselines 4
    small = S.get_budget("small")
    assert small.draws("proxprop") == 2 * small.n_tune and small.draws("adam") == small.n_tune
    # n_tune must be a count; 0 means no tuning (defaults runs only)
    with pytest.raises(ValueError, match="n_tune must be an integer >= 0"):
        Budget("bad", {PROBLEM: 1}, n_tune=-1, seeds=1)
    none = S.tuning_jobs(Budget("none", {PROBLEM: 1}, n_tune=0, seeds=2), ["sgd"])
    assert [(j.tag, j.seed) for j in none] == [("defaults", 1), ("defaults", 2)]


def test_halton_draws_are_prefix_stable_and_the_check_extends_study_0():
    """The first n of 2n draws are the n draws (same seed), so stored tuning trials keep their
    keys when the draws grow; the check's extra draws are exactly draws n+1..2n of study 0."""
    for m in METHODS:
        for seed in (0, 1, 3):
            for n in (1, 3, 4, 8):
                assert sample_configs(m, 2 * n, seed=seed)[:n] == sample_configs(m, n, seed=seed)
    b = Budget("t", {PROBLEM: 2}, n_tune=4, seeds=1)
    extra = S.check_tuning_jobs(b, ["sgd", "slbi"])
    for m in ("sgd", "slbi"):
        n = b.draws(m)
        mine = [j for j in extra if j.method == m]
        assert [j.hparams for j in mine] == sample_configs(m, 2 * n)[n:]
        assert all((j.seed, j.tag, j.epochs) == (0, TUNING_CHECK_TUNE_TAG, 2) for j in mine)
        # the protocol's own draws are unchanged by the check (same trial keys)
        own = [j.hparams for j in S.tuning_jobs(b, [m]) if j.tag == TUNE_TAG]
        assert own == sample_configs(m, 2 * n)[:n]
    # a setting another study drew runs once: not re-planned by the check
    two = S.check_tuning_jobs(b, ["sgd"], studies=2)
    drawn = [c for k in (0, 1) for c in sample_configs("sgd", 4, seed=k)]
    assert all(j.hparams not in drawn for j in two)


def _tune_trial(st: Store, method: str, cfg: dict, val: float, epochs: int = 1) -> None:
    """A finished seed-0 tuning trial of ``cfg`` on PROBLEM whose final validation accuracy is
    ``val`` (what ``best_settings`` scores)."""
    hp = resolve_hparams(get_method_class(method), cfg)
    evals = [{"epoch": e, "step": 10 * e, "train_seconds": float(e), "train_loss": 2.0 - e,
              "val_loss": 1.0, "val_metric": (0.1, val)[e], "test_loss": 1.0,
              "test_metric": (0.1, val)[e]} for e in range(epochs + 1)]
    summary = {"final_train_loss": 1.0, "final_val_metric": val, "final_test_metric": val,
               "best_val_metric": val, "best_test_metric": val}
    st.record_trial(trial_key(PROBLEM, method, hp, 0, epochs, 1.0, TUNE_TAG), PROBLEM, method,
                    hp, 0, epochs, 1.0, TUNE_TAG, {}, "finished", evals, [], summary)


def test_the_check_writes_final_x2_runs_only_where_the_best_setting_changed(tmp_path):
    """Hand-made tuning scores: for SGD and GDSolver an extra draw (n+1..2n) beats study 0's
    draws, for Adam it does not. The check runs study 0's seeds under final-x2 for SGD and
    GDSolver (GDSolver's 50%-data runs included), none for Adam; a re-run adds nothing."""
    b = Budget("t", {PROBLEM: 1}, n_tune=1, seeds=1, final_seeds={PROBLEM: 2})
    path = str(tmp_path / "s.db")
    scores = {"sgd": [0.5, 0.9], "adam": [0.8, 0.6],
              "gdsolver": [0.3, 0.4, 0.2, 0.7]}  # draws 1..2n; gdsolver: 2 hparams, n = 2
    with Store(path) as st:
        for m, vals in scores.items():
            assert len(vals) == b.draws(m, 2)
            for cfg, v in zip(sample_configs(m, len(vals)), vals):
                _tune_trial(st, m, cfg, v)
    methods = list(scores)
    res = run_suite(b, path, methods=methods, workers=1, threads=1, progress=False,
                    tuning_check=True)
    assert not res.failed, res.failed
    assert set(res.check_changed) == {(PROBLEM, "sgd"), (PROBLEM, "gdsolver")}
    with Store(path, readonly=True) as st:
        x2 = st.trials(tag=TUNING_CHECK_TAG)
        assert sorted((t["method"], t["seed"], t["train_fraction"]) for t in x2) == [
            ("gdsolver", 1, 0.5), ("gdsolver", 1, 1.0), ("gdsolver", 2, 0.5),
            ("gdsolver", 2, 1.0), ("sgd", 1, 1.0), ("sgd", 2, 1.0)]
        for m, best0, best2 in (("sgd", 0, 1), ("gdsolver", 1, 3)):
            cfgs = sample_configs(m, b.draws(m, 2))
            for tag, i in (("final", best0), (TUNING_CHECK_TAG, best2)):
                for t in st.trials(method=m, tag=tag):
                    assert all(t["hparams"][k] == v for k, v in cfgs[i].items()), (m, tag)
            assert res.best[(PROBLEM, m)]["hparams"] == cfgs[best0]  # study 0's pick stands
            assert res.check_changed[(PROBLEM, m)]["hparams"] == cfgs[best2]
        # the finals of study 0 ran with the same seeds
        assert sorted(t["seed"] for t in st.trials(method="adam", tag="final")) == [1, 2]
        n = len(st.trials())
    again = run_suite(b, path, methods=methods, workers=1, threads=1, progress=False,
                      tuning_check=True)
    assert again.check_changed == res.check_changed
    with Store(path, readonly=True) as st:
        assert len(st.trials()) == n  # resumable: every trial keyed, nothing re-run
        # study 0 alone picks among its own n draws, whatever else the store holds
        assert S.best_settings(st, b, ["sgd"])[(PROBLEM, "sgd")].score == 0.5


def test_the_check_refuses_a_budget_without_tuning(tmp_path, monkeypatch, capsys):
    """--tuning-check with nothing to double: one line, exit status 2, nothing created."""
    from beyondsgd.cli import main

    notune = Budget("notune", {PROBLEM: 1}, n_tune=0, seeds=1)
    store = tmp_path / "s.db"
    with pytest.raises(ValueError, match="has no tuning .n_tune=0."):
        run_suite(notune, str(store), methods=["sgd"], workers=1, progress=False,
                  tuning_check=True)
    with pytest.raises(ValueError, match="tuning_check must be True or False"):
        run_suite("smoke", str(store), methods=["sgd"], workers=1, progress=False,
                  tuning_check="yes")
    assert not store.exists()
    monkeypatch.setitem(S.BUDGETS, "notune", notune)
    assert main(["suite", "--budget", "notune", "--tuning-check", "--store", str(store),
                 "--out", str(tmp_path / "rep"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--tuning-check: budget 'notune' has no tuning (n_tune=0)" in err
    assert len(err.strip().splitlines()) == 1
    assert not store.exists()
