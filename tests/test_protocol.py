"""Tuning protocol, suite bookkeeping, metrics maths (time to target, performance profiles,
confidence intervals) and claims verdicts on synthetic results with known answers."""

import math

import numpy as np
import pytest

from beyondsgd.bench.analysis import claims as C
from beyondsgd.bench.analysis.metrics import (
    mean_ci,
    performance_profile,
    profile_ratios,
    time_to_target,
)
from beyondsgd.bench.problems import get_problem
from beyondsgd.bench.protocol import (
    FINAL_TAG,
    Scored,
    pick_best,
    sample_configs,
    search_space,
    validation_score,
)
from beyondsgd.bench.protocol.suite import Budget, run_suite, tuning_jobs
from beyondsgd.bench.report import write_report
from beyondsgd.bench.store import Store
from beyondsgd.methods import METHODS


def test_every_method_gets_the_same_number_of_trials_per_tuned_hyperparameter():
    for m in METHODS:
        space = search_space(m)
        assert space, f"{m} declares nothing to tune"
        cfgs = sample_configs(m, 5)
        assert len(cfgs) == 5
        assert len({tuple(sorted(c.items())) for c in cfgs}) == 5, m
        for h in space:
            for c in cfgs:
                if h.choices:
                    assert c[h.name] in h.choices
                else:
                    assert h.low * 0.999 <= c[h.name] <= h.high * 1.001, (m, h.name, c)
    budget = Budget("t", {"digits_mlp": 1, "diabetes_mlp": 1}, n_tune=3, seeds=2,
                    methods=tuple(METHODS))
    jobs = tuning_jobs(budget, list(METHODS))
    for m in METHODS:
        for p in budget.problems:
            mine = [j for j in jobs if j.method == m and j.problem == p]
            # n_tune draws per tuned hyperparameter (test_tuning_fair.py)
            assert sum(j.tag == "tune" for j in mine) == 3 * len(search_space(m))
            assert sorted(j.seed for j in mine if j.tag == "defaults") == [1, 2]


def test_sampling_is_reproducible_and_log_uniform():
    a, b = sample_configs("adam", 64), sample_configs("adam", 64)
    assert a == b
    lrs = np.log10([c["lr"] for c in a])
    # log-uniform over [1e-5, 1e-1]: quarters of the log range hold about a quarter each
    counts, _ = np.histogram(lrs, bins=4, range=(-5, -1))
    assert counts.min() >= 12
    with pytest.raises(ValueError, match="n must be >= 1"):
        sample_configs("adam", 0)


def test_validation_score_and_pick_best():
    evals = [{"val_metric": 0.1}, {"val_metric": 0.8}, {"val_metric": 0.7}]
    assert validation_score(evals, True, "finished") == 0.7  # final, not best: no early peak
    assert validation_score([{"val_metric": 9}, {"val_metric": 2.0}, {"val_metric": 3.0}],
                            False, "finished") == -3.0
    assert validation_score(evals, True, "diverged") == -math.inf
    assert validation_score(evals[:1], True, "finished") == -math.inf
    best = pick_best([Scored({"lr": 1}, 0.5, "finished"), Scored({"lr": 2}, 0.9, "finished"),
                      Scored({"lr": 3}, 0.9, "finished"), Scored({"lr": 4}, -math.inf, "d")])
    assert best.hparams == {"lr": 2}


def test_time_to_target_including_never():
    prob = get_problem("digits_mlp")  # accuracy target 0.95 (higher is better)
    evals = [{"epoch": 0, "train_seconds": 0.0, "test_metric": 0.1},
             {"epoch": 1, "train_seconds": 1.5, "test_metric": 0.9},
             {"epoch": 2, "train_seconds": 3.0, "test_metric": 0.96},
             {"epoch": 3, "train_seconds": 4.5, "test_metric": 0.97}]
    assert time_to_target(prob, evals) == (3.0, 2.0)
    assert time_to_target(prob, evals[:2]) == (math.inf, math.inf)
    reg = get_problem("diabetes_mlp")  # MSE target: lower is better
    assert time_to_target(reg, [{"epoch": 0, "train_seconds": 0, "test_metric": 1.0},
                                {"epoch": 1, "train_seconds": 2, "test_metric": 0.5}]) == (2, 1)


def test_performance_profile_by_hand():
    times = {"p1": {"a": 10.0, "b": 20.0, "c": math.inf},
             "p2": {"a": 30.0, "b": 10.0, "c": 35.0},
             "p3": {"a": math.inf, "b": math.inf, "c": math.inf}}
    r = profile_ratios(times)
    assert r["p1"] == {"a": 1.0, "b": 2.0, "c": math.inf}
    assert r["p2"] == {"a": 3.0, "b": 1.0, "c": 3.5}
    assert all(math.isinf(v) for v in r["p3"].values())
    taus, rho, score = performance_profile(times, tau_max=4.0, n_points=3001)
    at = lambda m, t: rho[m][np.searchsorted(taus, t, side="right") - 1]  # noqa: E731
    assert at("a", 1.0) == pytest.approx(1 / 3) and at("a", 2.99) == pytest.approx(1 / 3)
    assert at("a", 3.0) == pytest.approx(2 / 3)
    assert at("b", 1.0) == pytest.approx(1 / 3) and at("b", 2.0) == pytest.approx(2 / 3)
    assert at("c", 4.0) == pytest.approx(1 / 3) and at("c", 3.4) == 0
    # integrals: a: 1/3 on [1,3), 2/3 on [3,4] -> (2/3 + 2/3)/3 = 4/9
    assert score["a"] == pytest.approx(4 / 9, abs=2e-3)
    assert score["b"] == pytest.approx((1 / 3 * 1 + 2 / 3 * 2) / 3, abs=2e-3)
    assert score["c"] == pytest.approx((1 / 3 * 0.5) / 3, abs=2e-3)
    with pytest.raises(ValueError, match="tau_max"):
        performance_profile(times, tau_max=1.0)


def test_mean_ci():
    m, s, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert (m, s) == (2.0, 1.0)
    assert lo == pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-5)
    assert hi == pytest.approx(2 + 4.302653 / math.sqrt(3), rel=1e-5)
    assert math.isnan(mean_ci([])[0])


def _values(a, b_by_name, quantity="test_metric", problem="digits_mlp", method="slbi"):
    """``collect``'s layout: (problem, method, train fraction) -> quantity -> per-seed values."""
    out = {(problem, method, 1.0): {quantity: a, "diverged": [0.0] * len(a)}}
    for name, b in b_by_name.items():
        out[(problem, name, 1.0)] = {quantity: b, "diverged": [0.0] * len(b)}
    return out


def _claim(method, quantity, kind):
    return C.Claim("x", "X", "claim", method, ("adam",), quantity, kind, "classification", "here")


def test_claims_verdicts_on_synthetic_results():
    better = _claim("bpgrad", "test_metric", "better")
    clearly_better = _values([0.95, 0.96, 0.955, 0.958], {"adam": [0.90, 0.91, 0.905, 0.90]},
                             method="bpgrad")
    clearly_worse = _values([0.80, 0.81, 0.805, 0.80], {"adam": [0.90, 0.91, 0.905, 0.90]},
                            method="bpgrad")
    overlapping = _values([0.90, 0.92, 0.89, 0.91], {"adam": [0.91, 0.90, 0.92, 0.89]},
                          method="bpgrad")
    assert C.evaluate_claims(clearly_better, (better,))[0].verdict == "supported"
    assert C.evaluate_claims(clearly_worse, (better,))[0].verdict == "not supported"
    assert C.evaluate_claims(overlapping, (better,))[0].verdict == "inconclusive"
    # lower-is-better quantities are oriented: a lower train loss is "better"
    loss = _claim("bpgrad", "train_loss", "better")
    v = C.evaluate_claims(_values([0.1, 0.11, 0.12], {"adam": [0.5, 0.52, 0.49]}, "train_loss",
                                  method="bpgrad"), (loss,))
    assert v[0].verdict == "supported"
    # non-inferiority with a 1-point margin
    match = _claim("slbi", "test_metric", "matches")
    same = _values([0.900, 0.902, 0.901, 0.899], {"adam": [0.901, 0.900, 0.902, 0.899]})
    far = _values([0.85, 0.86, 0.855, 0.85], {"adam": [0.90, 0.905, 0.90, 0.91]})
    noisy = _values([0.80, 0.95, 0.70, 0.99], {"adam": [0.90, 0.91, 0.90, 0.905]})
    assert C.evaluate_claims(same, (match,))[0].verdict == "supported"
    assert C.evaluate_claims(far, (match,))[0].verdict == "not supported"
    assert C.evaluate_claims(noisy, (match,))[0].verdict == "inconclusive"
    # one seed only: no test possible
    assert C.evaluate_claims(_values([0.9], {"adam": [0.8]}, method="bpgrad"),
                             (better,))[0].verdict == "inconclusive"
    # a seed at the metric's worst (a diverged one without an untrained evaluation) counts
    div = _values([0.95, 0.96, -math.inf], {"adam": [0.90, 0.91, 0.90]}, method="bpgrad")
    assert C.evaluate_claims(div, (better,))[0].verdict != "supported"
    # seconds to target: never reaching it (inf) is worst; compared by ranks
    ttt = _claim("bpgrad", "seconds_to_target", "better")
    never = _values([math.inf] * 4, {"adam": [1.0, 1.1, 1.2, 1.3]}, "seconds_to_target",
                    method="bpgrad")
    assert C.evaluate_claims(never, (ttt,))[0].verdict == "not supported"
    none = _values([math.inf] * 4, {"adam": [math.inf] * 4}, "seconds_to_target",
                   method="bpgrad")
    assert C.evaluate_claims(none, (ttt,))[0].verdict == "inconclusive"
    # a claim is checked only on its kind of problem
    assert C.evaluate_claims(_values([0.5, 0.6], {"adam": [0.4, 0.5]}, problem="diabetes_mlp",
                                     method="bpgrad"), (better,)) == []


def test_smoke_suite_end_to_end(tmp_path):
    """A miniature suite on two methods: tuning, final re-runs with the tuned setting and new
    seeds, defaults, resumability, and a report with every section."""
    budget = Budget("mini", {"digits_mlp": 2, "diabetes_mlp": 2}, n_tune=3, seeds=2)
    store_path = str(tmp_path / "suite.db")
    res = run_suite(budget, store_path, methods=["sgd", "adam"], workers=1, threads=1,
                    progress=False)
    assert not res.failed
    assert res.jobs == 2 * 2 * (3 + 2 + 2)
    with Store(store_path) as st:
        trials = st.trials()
        assert len(trials) == res.jobs
        for (p, m), best in res.best.items():
            finals = [t for t in trials if t["problem"] == p and t["method"] == m
                      and t["tag"] == FINAL_TAG]
            tuned = [t for t in trials if t["problem"] == p and t["method"] == m
                     and t["tag"] == "tune"]
            assert sorted(t["seed"] for t in finals) == [1, 2]
            assert {t["seed"] for t in tuned} == {0}
            # the final runs use the best validation setting of the tuning trials
            assert all(t["hparams"] == {**t["hparams"], **best["hparams"]} for t in finals)
            scores = [validation_score(st.evals(t["id"]), get_problem(p).higher_is_better,
                                       t["status"]) for t in tuned]
            assert best["val_score"] == max(scores)
        out = write_report(st, tmp_path / "rep")
    text = out.read_text()
    for section in ("## Summary", "## Performance profiles", "## Sensitivity", "## Curves",
                    "## Environment", "<final>", "<defaults>"):
        assert section in text, section
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    again = run_suite(budget, store_path, methods=["sgd", "adam"], workers=1, threads=1,
                      progress=False)
    with Store(store_path) as st:
        assert len(st.trials()) == len(trials)  # nothing re-run
    assert again.best == res.best


def test_two_workers_give_the_same_numbers_as_one(tmp_path):
    budget = Budget("mini2", {"digits_mlp": 2}, n_tune=2, seeds=1)
    kw = dict(methods=["sgd", "momentum"], threads=1, progress=False)
    run_suite(budget, str(tmp_path / "one.db"), workers=1, **kw)
    run_suite(budget, str(tmp_path / "two.db"), workers=2, **kw)

    def numbers(path):
        with Store(path) as st:
            return sorted(
                (t["key"], t["status"], tuple((e["epoch"], e["train_loss"], e["test_metric"])
                                              for e in st.evals(t["id"])))
                for t in st.trials())

    assert numbers(tmp_path / "one.db") == numbers(tmp_path / "two.db")


def test_the_smoke_budget_runs_every_method_end_to_end(smoke_store, tmp_path):
    """The real `smoke` budget (what `beyondsgd suite` runs by default): every registered method,
    tuning + final seeds + defaults, no failed trial, and a report with a claims table."""
    path, res = smoke_store
    assert not res.failed, res.failed
    n_methods = len(METHODS)
    # tuning (2 draws per tuned hyperparameter) + defaults + finals per method and problem,
    # plus GDSolver's final seeds at 50% of the data on the classification problem
    # (digits_mlp) for its data-efficiency claim
    draws = sum(2 * len(search_space(m)) for m in METHODS)
    assert res.jobs == 2 * (draws + n_methods * (2 + 2)) + 2
    assert len(res.best) == n_methods * 2
    with Store(path) as st:
        text = write_report(st, tmp_path / "rep").read_text()
    assert "## Verdicts at a glance" in text and "The claims in detail" in text
    assert "BPGrad" in text and "## Overview" in text


def test_suite_cli_problems_and_studies_refuse_bad_values(capsys, tmp_path):
    """--problems must name problems of the budget, --studies a positive integer: exit 2, one
    line naming the value, nothing created."""
    from beyondsgd.cli import main

    store = tmp_path / "s.db"
    assert main(["suite", "--budget", "smoke", "--problems", "fmnist_mlp",
                 "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "fmnist_mlp not in budget 'smoke'" in err and "digits_mlp, diabetes_mlp" in err
    assert main(["suite", "--budget", "smoke", "--problems", ",", "--store", str(store)]) == 2
    assert "names nothing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["suite", "--budget", "smoke", "--studies", "0", "--store", str(store)])
    assert exc.value.code == 2 and "--studies: expected a positive integer" in \
        capsys.readouterr().err
    assert not store.exists()
