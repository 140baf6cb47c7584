"""Issue 24: verdicts an author would sign.

The runner records per-process CPU seconds beside wall seconds and stores a run that learnt
nothing as ``collapsed``; the claims read CPU time where every row has it, say "untested" where
the method never acted (collapsed seeds, GDSolver without an accepted solve), "budget-limited"
below the budget floor, and test a per-epoch claim on the training-loss curve. Every claims test
builds a tiny store by hand, chosen so that the code before the issue gave another verdict.
"""



from beyondsgd.bench.run.runner import run_trial
from beyondsgd.bench.store import Store


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
