"""The Ray executor of the suite (``executor="ray"``): same store as the local executor, finished
trials never redone, a killed worker loses nothing, and clear errors.

The cluster tests share one local Ray cluster (``ray.init(num_cpus=2)``) and one reference store
written by the local executor; they are skipped when Ray is not installed. Training is
deterministic on CPU with one torch thread, so the two executors must store identical numbers
(training seconds and timestamps aside).
"""

from __future__ import annotations

import sys
import types

import pytest

from beyondsgd.bench.protocol import DEFAULTS_TAG, TUNE_TAG, sample_configs
from beyondsgd.bench.protocol import ray_executor as RX
from beyondsgd.bench.protocol.suite import Budget, Job, run_suite
from beyondsgd.bench.store import Store

# Two problems, the whole protocol (tuning, defaults, finals), two methods: sgd, and slbi whose
# trials also carry events (its regularisation path) and method metrics (support sizes).
BUDGET = Budget("ray-mini", {"digits_mlp": 2, "diabetes_mlp": 2}, n_tune=2, seeds=1)
METHODS = ["sgd", "slbi"]
# tuning draws scale with the tuned hyperparameters (BUDGET.draws), then defaults and finals
N_TRIALS = len(BUDGET.problems) * sum(BUDGET.draws(m) + 2 * BUDGET.seeds for m in METHODS)


def snapshot(path, methods=None) -> dict[str, dict]:
    """Every trial of the store as ``Store.trial_record`` gives it, keyed by trial key, minus
    what legitimately differs between runs: timestamps, measured training seconds, measured
    seconds in method events (a GDSolver solve's ``build_seconds``/``solve_seconds``: its result
    is bounded by work, its duration is not), and the git commit (a checkout may get a commit
    between two runs)."""
    out = {}
    with Store(path) as st:
        for t in st.trials():
            if methods is not None and t["method"] not in methods:
                continue
            rec = st.trial_record(t["key"])
            del rec["started"], rec["finished"]
            rec["env"].pop("git_commit", None)
            for e in rec["evals"]:
                del e["train_seconds"]
                e.pop("train_cpu_seconds", None)  # a clock, like the wall seconds
            for e in rec["events"]:
                for k in [k for k in e.get("data", {}) if k.endswith("seconds")]:
                    del e["data"][k]
            out[t["key"]] = rec
    return out


def rows(path) -> list[dict]:
    """The raw trial rows (ids, timestamps and all) and evaluation rows."""
    with Store(path) as st:
        return [(t, st.evals(t["id"]), st.events(t["id"])) for t in st.trials()]


@pytest.fixture(scope="module")
def local_db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("local") / "local.db")
    res = run_suite(BUDGET, path, methods=METHODS, workers=1, threads=1, progress=False)
    assert not res.failed and res.jobs == N_TRIALS
    return path


@pytest.fixture(scope="module")
def kill_dir(tmp_path_factory):
    """The executor's test hook: a file named after a trial key here gets that trial's worker
    killed once, after the trial's first epoch (``ray_executor.KILL_DIR_ENV``)."""
    return tmp_path_factory.mktemp("kill")


@pytest.fixture(scope="module")
def ray_cluster(kill_dir):
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    # set for the whole module, so every task has the same runtime_env and Ray reuses its
    # workers across tests (a new worker spends seconds importing torch)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(RX.KILL_DIR_ENV, str(kill_dir))
        # start both workers now (their imports take seconds), while the local reference runs
        def warm_up() -> None:  # nested: Ray ships it by value, the workers can't import tests
            import sklearn  # noqa: F401
            import torch

            import beyondsgd.bench.run.runner  # noqa: F401

            torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # imports dynamo

        warm = ray.remote(warm_up).options(**RX.RayExecutor().task_options())
        refs = [warm.remote() for _ in range(2)]
        yield ray
        ray.get(refs)
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_db(ray_cluster, local_db, tmp_path_factory):  # local_db first: overlaps the warm-up
    path = str(tmp_path_factory.mktemp("ray") / "ray.db")
    res = run_suite(BUDGET, path, methods=METHODS, threads=1, progress=False, executor="ray")
    assert not res.failed, res.failed
    assert res.jobs == N_TRIALS
    assert ray_cluster.is_initialized()  # a cluster the suite did not start is left running
    return path, res


def spy_on_execute(monkeypatch) -> list[RX.RayStats]:
    calls: list[RX.RayStats] = []
    original = RX.RayExecutor.execute

    def spy(self, *args, **kwargs):
        calls.append(original(self, *args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(RX.RayExecutor, "execute", spy)
    return calls


# ---- against a local Ray cluster ------------------------------------------------------------
def test_the_smoke_budget_on_ray_gives_the_local_store(ray_cluster, smoke_store, tmp_path):
    """The real `smoke` budget, every registered method (180 trials), on the local Ray cluster:
    the same trials, statuses, evaluations and events as the local executor's store."""
    local_path, local_res = smoke_store
    path = str(tmp_path / "smoke_ray.db")
    res = run_suite("smoke", path, threads=1, progress=False, executor="ray")
    assert not res.failed, res.failed
    assert res.jobs == local_res.jobs and res.best == local_res.best
    local, remote = snapshot(local_path), snapshot(path)
    assert sorted(local) == sorted(remote) and len(local) == res.jobs
    for key, rec in local.items():
        assert remote[key] == rec, key


def test_ray_gives_the_same_store_as_the_local_executor(local_db, ray_db):
    path, res = ray_db
    local, remote = snapshot(local_db), snapshot(path)
    assert len(local) == N_TRIALS
    assert sorted(local) == sorted(remote)
    for key, rec in local.items():
        assert rec["status"] in ("finished", "diverged", "collapsed"), key
        # every column: hyperparameters, env, summary, each evaluation (losses, metrics, step,
        # epoch, method metrics) and each event
        assert remote[key] == rec, key
    assert any(rec["events"] for rec in local.values())  # the comparison covers events too
    local_res = run_suite(BUDGET, local_db, methods=METHODS, threads=1, progress=False)
    assert res.best == local_res.best


def test_a_rerun_redoes_only_unfinished_trials(ray_db, local_db, monkeypatch):
    path, _ = ray_db
    before = rows(path)
    calls = spy_on_execute(monkeypatch)
    res = run_suite(BUDGET, path, methods=METHODS, threads=1, progress=False, executor="ray")
    assert res.jobs == N_TRIALS and not res.failed
    assert sum(c.submitted for c in calls) == 0  # no task at all
    assert sum(c.skipped for c in calls) == N_TRIALS
    assert rows(path) == before  # same ids, timestamps, rows

    # an interrupted trial ('running', half its evaluations) and a failed one are redone
    with Store(path) as st:
        t_run, t_fail = st.trials()[0], st.trials()[5]
        st.conn.execute("UPDATE trials SET status='running' WHERE id=?", (t_run["id"],))
        st.conn.execute("DELETE FROM evals WHERE trial_id=? AND epoch>0", (t_run["id"],))
        st.conn.execute("UPDATE trials SET status='failed', error='boom' WHERE id=?",
                        (t_fail["id"],))
    calls.clear()
    run_suite(BUDGET, path, methods=METHODS, threads=1, progress=False, executor="ray")
    assert sum(c.submitted for c in calls) == 2
    after = rows(path)
    redone = {t_run["id"], t_fail["id"]}
    assert [t["id"] for t, _, _ in after] == [t["id"] for t, _, _ in before]
    assert [r for r in after if r[0]["id"] not in redone] == \
        [r for r in before if r[0]["id"] not in redone]
    assert snapshot(path) == snapshot(local_db)


def arm(kill_dir, job: Job) -> str:
    """Arm the kill hook for ``job``'s trial; returns the trial key."""
    key = RX.trial_fields(job)["key"]
    (kill_dir / key).touch()
    return key


def was_killed(kill_dir, key: str) -> bool:
    return (kill_dir / f"{key}.killed").exists() and not (kill_dir / key).exists()


def test_killing_a_worker_mid_trial_loses_nothing(ray_cluster, kill_dir, local_db, tmp_path):
    """The worker running one trial is SIGKILLed after its first epoch; Ray retries the task and
    the store ends up exactly as the local executor's."""
    victim = Job("digits_mlp", "slbi", sample_configs("slbi", BUDGET.n_tune)[1], 0, 2, TUNE_TAG)
    key = arm(kill_dir, victim)
    path = str(tmp_path / "ray.db")
    res = run_suite(BUDGET, path, methods=METHODS, threads=1, progress=False, executor="ray")
    assert was_killed(kill_dir, key)  # the worker really was killed mid-trial
    assert not res.failed and res.jobs == N_TRIALS
    assert snapshot(path) == snapshot(local_db)


def test_a_task_out_of_retries_is_recorded_as_failed_then_redone(ray_cluster, kill_dir, local_db,
                                                                 tmp_path, monkeypatch):
    victim = Job("digits_mlp", "slbi", {}, 1, 2, DEFAULTS_TAG)
    key = arm(kill_dir, victim)
    path = str(tmp_path / "ray.db")
    res = run_suite(BUDGET, path, methods=["slbi"], threads=1, progress=False, executor="ray",
                    max_retries=0)
    assert was_killed(kill_dir, key)
    assert len(res.failed) == 1 and "digits_mlp/slbi/defaults/seed1" in res.failed[0]
    # the suite went on: every slbi trial ran (its draws scale with its 2 tuned hyperparameters)
    assert res.jobs == len(BUDGET.problems) * (BUDGET.draws("slbi") + 2 * BUDGET.seeds)
    with Store(path) as st:
        failed = [t for t in st.trials() if t["status"] == "failed"]
        assert [t["key"] for t in failed] == [key]
        assert failed[0]["status"] == "failed" and "WorkerCrashedError" in failed[0]["error"]
    # the next run (the marker is there: no more kills) redoes it and only it
    calls = spy_on_execute(monkeypatch)
    res = run_suite(BUDGET, path, methods=["slbi"], threads=1, progress=False, executor="ray")
    assert not res.failed and sum(c.submitted for c in calls) == 1
    assert snapshot(path) == snapshot(local_db, methods=["slbi"])


# ---- without a cluster ----------------------------------------------------------------------
def test_store_record_trial_copies_trials_exactly(local_db, tmp_path):
    copy = tmp_path / "copy.db"
    with Store(local_db) as src, Store(copy) as dst:
        for t in src.trials():
            dst.record_trial(**src.trial_record(t["key"]))
    full = [(t, ev, evs) for t, ev, evs in rows(local_db)]
    assert rows(copy) == full  # ids, timestamps, training seconds included

    # a finished trial is never downgraded: recording a failed attempt over it changes nothing
    with Store(local_db) as src:
        t = next(t for t in src.trials() if t["method"] == "slbi")
        rec = src.trial_record(t["key"])
        full_evals, full_events = src.evals(t["id"]), src.events(t["id"])
    half = dict(rec, status="failed", evals=rec["evals"][:1], events=rec["events"][:1],
                summary={}, error="Boom: x")
    before = rows(copy)
    with Store(copy) as dst:
        assert dst.record_trial(**half) == t["id"]
    assert rows(copy) == before

    # recording over a failed (or interrupted) trial replaces its evaluations and events and
    # keeps its id and first start
    with Store(tmp_path / "fresh.db") as dst:
        tid = dst.record_trial(**half)
        assert dst.evals(tid) == full_evals[:1] and dst.events(tid) == full_events[:1]
        row = dst.trials(id=tid)[0]
        assert (row["status"], row["error"], row["final_test_metric"]) == ("failed", "Boom: x",
                                                                            None)
        assert row["epochs_done"] == 0 and row["started"] == t["started"]
        assert dst.record_trial(**dict(rec, started=t["started"] + 5)) == tid
        assert dst.evals(tid) == full_evals and dst.events(tid) == full_events
        row = dst.trials(id=tid)[0]
        assert (row["status"], row["error"]) == ("finished", None)
        assert row["epochs_done"] == t["epochs_done"] and row["started"] == t["started"]
        assert dst.trial_record("no-such-key") is None


def test_unknown_executor_and_stray_address_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"unknown executor 'dask'; accepted: local, ray"):
        run_suite(BUDGET, str(tmp_path / "x.db"), methods=METHODS, executor="dask")
    with pytest.raises(ValueError, match=r"address='auto' is for executor='ray'"):
        run_suite(BUDGET, str(tmp_path / "x.db"), methods=METHODS, address="auto")
    with pytest.raises(ValueError, match="max_retries must be >= 0, got -1"):
        run_suite(BUDGET, str(tmp_path / "x.db"), methods=METHODS, executor="ray",
                  max_retries=-1)
    assert not (tmp_path / "x.db").exists()


def test_missing_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'beyondsgd\[ray\]'"):
        run_suite(BUDGET, str(tmp_path / "x.db"), methods=METHODS, executor="ray")
    assert not (tmp_path / "x.db").exists()


class FakeRay(types.SimpleNamespace):
    """Just enough of ``ray`` to watch how the executor connects and disconnects."""

    def __init__(self, initialized: bool):
        super().__init__(calls=[], up=initialized)

    def is_initialized(self):
        return self.up

    def init(self, **kw):
        self.calls.append(("init", kw))
        self.up = True

    def shutdown(self):
        self.calls.append(("shutdown", {}))
        self.up = False

    def remote(self, fn):
        return fn


@pytest.mark.parametrize("address, initialized, expected", [
    (None, False, [("init", {"num_cpus": 4, "include_dashboard": False}), ("shutdown", {})]),
    ("ray://head:10001", False, [("init", {"address": "ray://head:10001"}), ("shutdown", {})]),
    (None, True, []),  # already connected (a notebook, the tests): neither init nor shutdown
    ("auto", True, []),
])
def test_connects_and_disconnects_only_what_it_opened(address, initialized, expected,
                                                      monkeypatch):
    fake = FakeRay(initialized)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with RX.RayExecutor(address=address, num_cpus=4):
        pass
    assert fake.calls == expected


def test_task_options_pass_data_settings_to_the_workers(monkeypatch):
    monkeypatch.setenv("BEYONDSGD_DATA", "/data/cache")
    monkeypatch.setenv("UNRELATED_VAR", "x")
    opts = RX.RayExecutor(threads=2, device="cuda", max_retries=5).task_options()
    assert opts["num_cpus"] == 2 and opts["num_gpus"] == 1
    assert opts["max_retries"] == 5 and opts["retry_exceptions"] is False
    env = opts["runtime_env"]["env_vars"]
    assert env["BEYONDSGD_DATA"] == "/data/cache" and "UNRELATED_VAR" not in env
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        RX.RayExecutor(threads=0)


def test_data_flows_one_way_between_suite_and_ray_executor():
    """suite -> ray_executor -> jobs, never back: neither executor module imports the suite."""
    import ast
    from pathlib import Path

    from beyondsgd.bench.protocol import jobs as jobs

    for mod in (RX, jobs):
        tree = ast.parse(Path(mod.__file__).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "suite" not in imported and "beyondsgd.bench.protocol.suite" not in imported
