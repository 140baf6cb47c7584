"""Issue 24: verdicts an author would sign.

The runner records per-process CPU seconds beside wall seconds and stores a run that learnt
nothing as ``collapsed``; the claims read CPU time where every row has it, say "untested" where
the method never acted (collapsed seeds, GDSolver without an accepted solve), "budget-limited"
below the budget floor, and test a per-epoch claim on the training-loss curve. Every claims test
builds a tiny store by hand, chosen so that the code before the issue gave another verdict.
"""



import math

import pytest

from beyondsgd.bench.problems import PROBLEMS
from beyondsgd.bench.run.runner import run_trial
from beyondsgd.bench.store import Store, trial_key


def _cpu(evals):
    return [e["train_cpu_seconds"] for e in evals]


def test_a_run_that_cannot_learn_ends_collapsed_and_is_done(tmp_store):
    res = run_trial("digits_mlp", "sgd", {"lr": 0.0}, seed=0, epochs=2, store=tmp_store)
    assert res.status == "collapsed"
    (t,) = tmp_store.trials()
    assert t["status"] == "collapsed"
    again = run_trial("digits_mlp", "sgd", {"lr": 0.0}, seed=0, epochs=2, store=tmp_store)
    assert again.skipped and again.status == "collapsed"  # done: never re-run


def test_a_run_that_learns_still_finishes():
    res = run_trial("digits_mlp", "adam", seed=0, epochs=1)
    assert res.status == "finished"
    assert res.evals[-1]["train_loss"] < res.evals[0]["train_loss"]


def test_cpu_seconds_are_recorded_with_the_thread_count(tmp_store):
    import torch

    res = run_trial("digits_mlp", "adam", seed=0, epochs=3, store=tmp_store)
    for rows in (res.evals, tmp_store.evals(tmp_store.trials()[0]["id"])):
        cpu = _cpu(rows)
        assert cpu[0] == 0.0 and all(c >= 0 for c in cpu)
        assert all(b >= a for a, b in zip(cpu, cpu[1:]))  # a running total
        assert cpu[-1] > 0  # three epochs of Adam take some CPU time
        assert rows[0]["threads"] == torch.get_num_threads()


def test_cpu_seconds_continue_across_a_resume(tmp_path):
    with Store(tmp_path / "s.db") as st:
        part = run_trial("digits_mlp", "adam", seed=0, epochs=3, store=st, stop_after_epoch=2)
        assert part.status == "running"
        before = _cpu(part.evals)
        resumed = run_trial("digits_mlp", "adam", seed=0, epochs=3, store=st)
        assert resumed.status == "finished"
        cpu = _cpu(st.evals(st.trials()[0]["id"]))
    assert cpu[:3] == before  # the stored rows are kept, the clock continues from them
    assert cpu[3] >= cpu[2] > 0


# ---- the claims, on hand-made stores -------------------------------------------------------

CLF, REG = "digits_mlp", "diabetes_mlp"  # budgets: 20 and 100 epochs


@pytest.fixture()
def st():
    with Store(":memory:") as s:
        yield s


def trial(st: Store, problem: str, method: str, seed: int, val: list[float], *,
          loss: list[float] | None = None, wall: float = 1.0, cpu: float | None = None,
          status: str = "finished", epochs: int | None = None,
          events: list[dict] | None = None) -> None:
    """One stored trial whose evaluation at epoch e has validation and test metric val[e],
    training loss loss[e] (default 1 / (e + 1)), e * wall wall seconds and, when ``cpu`` is
    given, e * cpu CPU seconds (and threads 1). Budget ``epochs``: default the problem's full
    one. ``events``: the method's events, at the last epoch (GDSolver: one accepted solve)."""
    loss = [1.0 / (e + 1) for e in range(len(val))] if loss is None else loss
    evals = []
    for e, v in enumerate(val):
        row = {"epoch": e, "step": 10 * e, "train_seconds": e * wall, "train_loss": loss[e],
               "val_loss": 0.0, "val_metric": v, "test_loss": 0.0, "test_metric": v}
        if cpu is not None:
            row["train_cpu_seconds"] = e * cpu
            if e == 0:
                row["threads"] = 1
        evals.append(row)
    last = evals[-1]
    summary = {} if status == "diverged" else {
        "final_train_loss": last["train_loss"], "final_val_metric": last["val_metric"],
        "final_test_metric": last["test_metric"]}
    if events is None:
        events = [{"kind": "milp", "accepted": True}] if method == "gdsolver" else []
    epochs = PROBLEMS[problem].epochs if epochs is None else epochs
    hp = {"lr": 0.1}
    key = trial_key(problem, method, hp, seed, epochs, 1.0, "final")
    n = len(val) - 1
    st.record_trial(key, problem, method, hp, seed, epochs, 1.0, "final", {}, status, evals,
                    [{"epoch": n, "step": 10 * n, "data": e} for e in events], summary)


def verdict(st: Store, claim_id: str, problem: str):
    from beyondsgd.bench.analysis import claims as C

    (v,) = [v for v in C.evaluate_claims(C.collect(st))
            if v.claim.id == claim_id and v.problem == problem]
    return v


def test_collapsed_seeds_make_the_claim_untested(st):
    """PHT "reaches the target faster" on two seeds that collapsed (final training loss at or
    above the initial one: one stored as collapsed, one as finished by an older runner) although
    their validation accuracy touched the target early. The old code dropped the collapsed trial
    and judged the finished one as a good seed (supported on 2 vs 3 seeds)."""
    for s in (1, 2, 3):
        j = 0.01 * s
        for m in ("sgd", "momentum"):
            trial(st, CLF, m, s, [0.1, 0.5, 0.7, 0.9 + j], wall=1.0 + j)
    flat = [2.3, 1.0, 2.3, 2.31]  # learnt, then lost it: ends above its start
    trial(st, CLF, "pht_alt", 1, [0.1, 0.95, 0.1, 0.1], loss=flat, wall=1.01)
    trial(st, CLF, "pht_alt", 2, [0.1, 0.95, 0.1, 0.1], loss=flat, wall=1.02,
          status="collapsed")
    trial(st, CLF, "pht_alt", 3, [0.1, 0.95, 0.95, 0.95], wall=1.03)
    v = verdict(st, "pht_speed", CLF)
    assert v.verdict == "untested" and v.note == "2 of 3 seeds collapsed"
    assert v.verdict_text() == "untested: 2 of 3 seeds collapsed"
    assert v.a_collapsed == 2 and v.a_diverged == 0
    assert sum(math.isinf(x) for x in v.a_values) == 2  # a collapsed seed never reaches it
    from beyondsgd.bench.analysis import claims as C

    assert "coll 2/3" in C.claims_markdown([v])


def test_one_collapsed_seed_of_three_is_counted_not_untested(st):
    for s in (1, 2, 3):
        j = 0.01 * s
        for m in ("sgd", "momentum"):
            trial(st, CLF, m, s, [0.1, 0.5, 0.7, 0.9 + j], wall=1.0 + j)
        trial(st, CLF, "pht_alt", s, [0.1, 0.95, 0.95, 0.95], wall=1.0 + j,
              status="collapsed" if s == 1 else "finished")
    v = verdict(st, "pht_speed", CLF)
    assert v.verdict != "untested" and v.a_collapsed == 1


def _gdsolver_mse(st: Store, accepted: list[bool]) -> None:
    """GDSolver's test MSE clearly below SGD's and Adam's; seed s's three solves accepted as
    ``accepted[s - 1]`` says."""
    for s in (1, 2, 3):
        j = 0.01 * s
        for m in ("sgd", "adam"):
            trial(st, REG, m, s, [2.0, 0.6, 0.5 + j])
        trial(st, REG, "gdsolver", s, [2.0, 0.4, 0.3 + j],
              events=[{"kind": "milp", "accepted": accepted[s - 1] and k == 0}
                      for k in range(3)])


def test_gdsolver_without_an_accepted_solve_is_untested(st):
    """No solve kept: the hybrid was SGD seed by seed. The old code said supported."""
    _gdsolver_mse(st, [False, False, True])
    v = verdict(st, "gdsolver_mse", REG)
    assert v.verdict == "untested"
    assert v.verdict_text() == "untested: 2 of 3 seeds accepted no solve (1 of 9 solves accepted)"


def test_gdsolver_with_most_seeds_solving_is_judged(st):
    _gdsolver_mse(st, [True, True, False])
    assert verdict(st, "gdsolver_mse", REG).verdict == "supported"


def _bpgrad(st: Store, epochs: int) -> None:
    for s in (1, 2, 3):
        j = 0.005 * s
        for m in ("adagrad", "adadelta", "rmsprop", "adam"):
            trial(st, CLF, m, s, [0.1, 0.5, 0.70 + j], epochs=epochs)
        trial(st, CLF, "bpgrad", s, [0.1, 0.6, 0.85 + j], epochs=epochs)


def test_a_budget_below_the_floor_is_budget_limited(st):
    """3 of digits' 20 epochs (15 %): the direction is reported, not a verdict. The old code
    said supported."""
    from beyondsgd.bench.analysis.judge import BUDGET_FLOOR

    assert BUDGET_FLOOR == 0.25
    _bpgrad(st, 3)
    v = verdict(st, "bpgrad_accuracy", CLF)
    assert v.budget == pytest.approx(0.15)
    assert v.verdict == "budget-limited"
    assert v.verdict_text() == ("budget-limited: direction at 15 % of the budget "
                                "(would read supported)")
    from beyondsgd.bench.analysis import claims as C

    table = C.claims_markdown([v])
    assert "| budget |" in table and "| 15 % |" in table


def test_a_budget_at_the_floor_is_judged(st):
    _bpgrad(st, 5)  # 5 / 20 = 25 %
    v = verdict(st, "bpgrad_accuracy", CLF)
    assert v.budget == pytest.approx(0.25) and v.verdict == "supported"


def test_median_over_studies_puts_run_verdicts_first():
    from beyondsgd.bench.analysis.claims import median_verdict

    assert median_verdict(["supported", "budget-limited", "supported"]) == (
        "budget-limited", True)
    assert median_verdict(["budget-limited", "untested", "supported"]) == ("untested", True)
    assert median_verdict(["budget-limited"] * 2) == ("budget-limited", False)
    assert median_verdict(["not supported", "supported", "inconclusive"]) == (
        "inconclusive", True)


def _gdsolver_time(st: Store, cpu: bool, cpu_for_baselines: bool | None = None) -> None:
    """Every seed reaches the validation target (0.29) at epoch 1. Wall seconds per epoch:
    GDSolver 2, SGD and Adam 1 (a loaded machine); CPU seconds: GDSolver 0.5, the others 1."""
    cpu_for_baselines = cpu if cpu_for_baselines is None else cpu_for_baselines
    for s in (1, 2, 3):
        j = 0.01 * s
        for m in ("sgd", "adam"):
            trial(st, REG, m, s, [2.0, 0.30 - j, 0.30 - j], wall=1.0 + j,
                  cpu=1.0 + j if cpu_for_baselines else None)
        trial(st, REG, "gdsolver", s, [2.0, 0.30 - j, 0.30 - j], wall=2.0 + j,
              cpu=0.5 + j if cpu else None)


def test_time_to_target_reads_cpu_seconds_when_every_run_has_them(st):
    """The old code read wall seconds: not supported. On CPU seconds: supported."""
    _gdsolver_time(st, cpu=True)
    v = verdict(st, "gdsolver_time", REG)
    assert v.target == pytest.approx(0.29)
    assert v.clock == "CPU s, 1 thread"
    assert v.a_values == pytest.approx([0.51, 0.52, 0.53])
    assert v.wall_seconds["gdsolver"] == pytest.approx([2.01, 2.02, 2.03])
    assert v.verdict == "supported"
    from beyondsgd.bench.analysis import claims as C

    table = C.claims_markdown([v])
    assert "CPU s, 1 thread" in table and "wall s beside" in table


def test_time_to_target_falls_back_to_wall_seconds(st):
    _gdsolver_time(st, cpu=False)
    v = verdict(st, "gdsolver_time", REG)
    assert v.clock == "wall s (store predates CPU time)" and v.verdict == "not supported"
    assert v.a_values == pytest.approx([2.01, 2.02, 2.03]) and v.wall_seconds == {}


def test_time_to_target_never_mixes_clocks(st):
    _gdsolver_time(st, cpu=True, cpu_for_baselines=False)
    v = verdict(st, "gdsolver_time", REG)
    assert v.clock == "wall s (not every run has CPU time)" and v.verdict == "not supported"


def test_seconds_to_target_prefers_cpu_seconds_per_trial():
    from beyondsgd.bench.analysis.metrics import seconds_to_target

    rows = [{"epoch": 0, "train_seconds": 0.0, "train_cpu_seconds": 0.0, "val_metric": 0.1},
            {"epoch": 1, "train_seconds": 3.0, "train_cpu_seconds": 1.0, "val_metric": 0.9}]
    assert seconds_to_target(rows, 0.8, True) == (1.0, 1.0)
    assert seconds_to_target(rows, 0.8, True, clock="train_seconds") == (3.0, 1.0)
    del rows[1]["train_cpu_seconds"]
    assert seconds_to_target(rows, 0.8, True) == (3.0, 1.0)


def test_per_epoch_speed_is_decided_on_the_curve(st):
    """ProxProp falls fast and flattens at 0.1; Adam falls slowly and ends lower (0.046). The
    old code compared the last points (not supported); the mean over the 20 epochs' curve
    (ProxProp about 0.21, Adam about 0.47) supports the claim."""
    for s in (1, 2, 3):
        j = 0.001 * s
        prox = [2.3] + [0.1 + j + 2.2 * 0.5 ** e for e in range(1, 21)]
        adam = [2.3] + [0.02 + j + 2.28 * 0.8 ** e for e in range(1, 21)]
        trial(st, CLF, "proxprop", s, [0.1] * 21, loss=prox)
        trial(st, CLF, "adam", s, [0.1] * 21, loss=adam)
    v = verdict(st, "proxprop_loss", CLF)
    assert v.claim.quantity == "train_loss_auc"
    assert v.a_values[0] == pytest.approx(0.1 + 0.001 + 2.2 * (1 - 0.5 ** 20) / 20)
    assert v.b_values["adam"][0] == pytest.approx(0.021 + 2.28 * 4 * (1 - 0.8 ** 20) / 20)
    assert v.verdict == "supported"


def test_a_diverged_seed_counts_at_its_initial_loss_on_the_curve(st):
    from beyondsgd.bench.analysis import claims as C

    trial(st, CLF, "adam", 1, [0.1, 0.5], loss=[2.0, 1.0], status="diverged", epochs=4)
    (d,) = C.collect(st).values()
    assert d["train_loss_auc"] == [pytest.approx((1.0 + 2.0 * 3) / 4)]


def test_a_collapsed_baseline_seed_does_not_set_the_target(st):
    """The target is the median over the baselines of the worst seed's best validation metric,
    a level every seed reached late in its budget; a seed that learnt nothing (here stored as
    finished by an older runner, loss back at its start) would drag it down to 0.5."""
    from beyondsgd.bench.analysis import claims as C

    for m in ("sgd", "momentum"):
        trial(st, CLF, m, 1, [0.1, 0.6, 0.9])
        trial(st, CLF, m, 2, [0.1, 0.7, 0.92])
    trial(st, CLF, "sgd", 3, [0.1, 0.5, 0.1], loss=[2.3, 2.0, 2.3])
    assert C.targets(st)[CLF] == pytest.approx(0.9)
