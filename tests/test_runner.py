"""The runner: every field recorded, NaN -> diverged, resume after a kill equals an uninterrupted
run, baselines reduce the loss, finished trials are skipped."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from beyondsgd.bench.problems import PROBLEMS
from beyondsgd.bench.run.runner import epoch_batches, run_trial
from beyondsgd.bench.store import Store
from beyondsgd.methods import METHODS
from beyondsgd.methods.baselines import Adam
from killing import kill_after_epochs

BASELINES = ["sgd", "momentum", "adam", "adamw", "adagrad", "adadelta", "rmsprop"]
FIELDS = {"epoch", "step", "train_seconds", "train_loss", "val_loss", "val_metric", "test_loss",
          "test_metric"}


def _numbers(evals):
    """Evaluation rows without the wall-clock column."""
    return [{k: v for k, v in e.items() if k not in ("train_seconds", "train_cpu_seconds")}
            for e in evals]


@pytest.mark.parametrize("method", BASELINES)
def test_each_baseline_reduces_loss_on_digits(method):
    res = run_trial("digits_mlp", method, seed=0, epochs=3)
    assert res.status == "finished"
    first, last = res.evals[0], res.evals[-1]
    assert last["train_loss"] < 0.6 * first["train_loss"], (method, first, last)
    assert last["test_metric"] > 0.5


def test_runner_records_all_fields(tmp_store):
    res = run_trial("digits_mlp", "adam", seed=1, epochs=3, store=tmp_store)
    assert [e["epoch"] for e in res.evals] == [0, 1, 2, 3]
    steps_per_epoch = -(-len(PROBLEMS["digits_mlp"].load(0).x_train) // 64)
    assert [e["step"] for e in res.evals] == [0, steps_per_epoch, 2 * steps_per_epoch,
                                              3 * steps_per_epoch]
    for e in res.evals:
        assert FIELDS <= set(e)
        assert all(e[k] is not None for k in FIELDS)
    secs = [e["train_seconds"] for e in res.evals]
    assert secs[0] == 0 and all(b > a for a, b in zip(secs, secs[1:]))
    (t,) = tmp_store.trials()
    assert t["status"] == "finished" and t["hparams"]["lr"] == 1e-3 and t["seed"] == 1
    assert t["env"]["torch"] == torch.__version__
    stored = tmp_store.evals(t["id"])
    assert _numbers(stored) == _numbers(res.evals)
    assert t["final_test_metric"] == res.evals[-1]["test_metric"]
    assert t["best_test_metric"] == max(e["test_metric"] for e in res.evals[1:])


def test_nan_ends_trial_as_diverged(tmp_store):
    res = run_trial("digits_mlp", "sgd", {"lr": 1e4}, seed=0, epochs=5, store=tmp_store)
    assert res.status == "diverged"
    assert len(res.evals) < 6
    (t,) = tmp_store.trials()
    assert t["status"] == "diverged"


def test_finished_trials_are_skipped(tmp_store):
    a = run_trial("digits_mlp", "sgd", seed=0, epochs=2, store=tmp_store)
    b = run_trial("digits_mlp", "sgd", seed=0, epochs=2, store=tmp_store)
    assert not a.skipped and b.skipped
    assert _numbers(a.evals) == _numbers(b.evals)
    assert len(tmp_store.trials()) == 1


def test_same_seed_same_numbers_different_seed_different():
    a = run_trial("digits_mlp", "momentum", seed=3, epochs=2)
    b = run_trial("digits_mlp", "momentum", seed=3, epochs=2)
    c = run_trial("digits_mlp", "momentum", seed=4, epochs=2)
    assert _numbers(a.evals) == _numbers(b.evals)
    assert _numbers(a.evals) != _numbers(c.evals)


def test_epoch_batches_cover_the_data_once():
    x = torch.arange(10.0).unsqueeze(1)
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in epoch_batches(x, y, 3, seed=0, epoch=2)])
    assert sorted(seen.tolist()) == list(range(10))
    again = torch.cat([yb for _, yb in epoch_batches(x, y, 3, seed=0, epoch=2)])
    other = torch.cat([yb for _, yb in epoch_batches(x, y, 3, seed=0, epoch=3)])
    assert torch.equal(seen, again) and not torch.equal(seen, other)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown problem 'nope'"):
        run_trial("nope", "adam")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        run_trial("digits_mlp", "nope")
    with pytest.raises(ValueError, match="no hyperparameter 'lrate'"):
        run_trial("digits_mlp", "adam", {"lrate": 1})
    with pytest.raises(ValueError, match="cannot read 'fast' as float"):
        run_trial("digits_mlp", "adam", {"lr": "fast"})


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": -1}, r"seed must be an integer in \[0, 4294967295\], got -1"),
    ({"seed": 2**32}, r"seed must be an integer in \[0, 4294967295\], got 4294967296"),
    ({"seed": 1.5}, r"seed must be an integer .*got 1.5"),
    ({"seed": True}, r"seed must be an integer .*got True"),
    ({"seed": "3"}, r"seed must be an integer .*got '3'"),
    ({"epochs": -2}, r"epochs must be an integer >= 1 .*got -2"),
    ({"epochs": 2.5}, r"epochs must be an integer >= 1 .*got 2.5"),
    ({"train_fraction": 0}, r"train_fraction must be a number in \(0, 1\], got 0"),
    ({"train_fraction": 1.5}, r"train_fraction must be a number in \(0, 1\], got 1.5"),
    ({"train_fraction": float("nan")}, r"train_fraction must be a number in \(0, 1\], got nan"),
    ({"train_fraction": "all"}, r"train_fraction must be a number in \(0, 1\], got 'all'"),
    ({"device": "foo"}, r"device must be cpu, cuda, cuda:N or mps .*got 'foo'"),
    ({"device": 3}, r"device must be cpu, cuda.*got 3"),
    ({"tag": 7}, r"tag must be a string, got 7"),
    ({"hparams": [("lr", 1)]}, r"hparams must be a dict of hyperparameters or None"),
    ({"store": "results.db"}, r"store must be a Store or None, got 'results.db'"),
    ({"progress": "yes"}, r"progress must be True, False or a callable"),
    ({"stop_after_epoch": 0}, r"stop_after_epoch must be an integer >= 1 or None, got 0"),
    ({"distributed": "auto"}, r"distributed must be True, False or None, got 'auto'"),
    ({"checkpoint_dir": 5}, r"checkpoint_dir must be a folder path or None, got 5"),
])
def test_bad_arguments_are_refused_before_any_work(kwargs, message, tmp_path, monkeypatch):
    """Each bad argument gets one ValueError naming it, its value and what is accepted, before
    any data is loaded or anything is written."""
    import beyondsgd.bench.run.runner as R

    def no_training(*a, **k):
        raise AssertionError("training started before the arguments were checked")

    monkeypatch.setattr(R, "_train", no_training)
    with Store(tmp_path / "s.db") as st:
        args = {"store": st, **kwargs}
        with pytest.raises(ValueError, match=message):
            run_trial("digits_mlp", "adam", **args)
        assert st.trials() == []


def test_cuda_without_cuda_and_readonly_store_are_refused(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda': CUDA is not available"):
            run_trial("digits_mlp", "adam", device="cuda")
    Store(tmp_path / "s.db").close()
    with Store(tmp_path / "s.db", readonly=True) as ro:
        with pytest.raises(ValueError, match=r"s.db is open read-only"):
            run_trial("digits_mlp", "adam", store=ro)


def test_lr_schedule_changes_lr():
    m = Adam({"schedule": "step", "step_size": 1, "gamma": 0.5})
    res = run_trial("digits_mlp", "adam", {"schedule": "step", "step_size": 1, "gamma": 0.5},
                    seed=0, epochs=2)
    assert res.status == "finished" and m.hp["gamma"] == 0.5
    cos = run_trial("digits_mlp", "adam", {"schedule": "cosine"}, seed=0, epochs=2)
    const = run_trial("digits_mlp", "adam", seed=0, epochs=2)
    assert _numbers(cos.evals)[1] == _numbers(const.evals)[1]  # same first epoch
    assert _numbers(cos.evals)[2] != _numbers(const.evals)[2]


def test_stop_and_resume_in_process_equals_uninterrupted(tmp_path):
    with Store(tmp_path / "a.db") as a, Store(tmp_path / "b.db") as b:
        full = run_trial("digits_mlp", "adam", seed=0, epochs=4, store=a)
        part = run_trial("digits_mlp", "adam", seed=0, epochs=4, store=b, stop_after_epoch=2)
        assert part.status == "running"
        assert b.trials()[0]["status"] == "running"
        resumed = run_trial("digits_mlp", "adam", seed=0, epochs=4, store=b)
        assert resumed.status == "finished"
        assert _numbers(resumed.evals) == _numbers(full.evals)
        assert _numbers(b.evals(b.trials()[0]["id"])) == _numbers(full.evals)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from beyondsgd.bench.run.runner import run_trial
    from beyondsgd.bench.store import Store
    st = Store(sys.argv[1])
    slow = lambda row: time.sleep(0.4)          # make epochs slow enough to be killed mid-run
    run_trial("digits_mlp", "momentum", seed=2, epochs=8, store=st, progress=slow)
""")


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    """SIGKILL a training subprocess mid-run, re-run the same trial, compare every number."""
    path = tmp_path / "killed.db"
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(path)])
    kill_after_epochs(proc, path, 3, poll=0.2)
    with Store(path) as st:
        (t,) = st.trials()
        assert t["status"] == "running" and 3 <= t["epochs_done"] < 8
        resumed = run_trial("digits_mlp", "momentum", seed=2, epochs=8, store=st)
        stored = st.evals(t["id"])
    full = run_trial("digits_mlp", "momentum", seed=2, epochs=8)
    assert resumed.status == "finished"
    assert _numbers(stored) == _numbers(full.evals)


def test_registered_methods_have_declared_hparams():
    for name, cls in METHODS.items():
        assert cls.name == name and cls.summary and cls.paper
        names = [h.name for h in cls.hparams]
        assert len(names) == len(set(names)), name
        for h in cls.hparams:
            assert h.parse(h.default) == h.default or h.default is None, (name, h)


def test_a_method_crashing_on_nan_weights_is_diverged_not_failed(tmp_store):
    """A solver that raises on NaN inputs (e.g. a least-squares solve) ends the trial as
    diverged; an exception with finite weights is a real failure and propagates."""
    from beyondsgd.methods.base import register

    @register
    class _NanThenRaise(Adam):
        name = "_test_nan_then_raise"

        def end_of_epoch(self, model, ctx, epoch):
            if self.hp["lr"] > 1:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))
            raise RuntimeError("solver failed")

    try:
        res = run_trial("digits_mlp", "_test_nan_then_raise", {"lr": 2.0}, seed=0, epochs=2,
                        store=tmp_store)
        assert res.status == "diverged" and "solver failed" in res.error
        assert tmp_store.trials()[0]["status"] == "diverged"
        with pytest.raises(RuntimeError, match="solver failed"):
            run_trial("digits_mlp", "_test_nan_then_raise", {"lr": 1e-3}, seed=0, epochs=2,
                      store=tmp_store)
        assert tmp_store.trials()[1]["status"] == "failed"
    finally:
        METHODS.pop("_test_nan_then_raise")


def test_rerun_of_a_failed_trial_replaces_its_stale_rows(tmp_store):
    """A failed (or interrupted, checkpoint lost) trial re-run from scratch must not keep the
    old attempt's evaluations and events beside the new ones."""
    from beyondsgd.bench.store import trial_key
    from beyondsgd.methods.base import resolve_hparams

    hp = resolve_hparams(METHODS["slbi"], {})
    key = trial_key("digits_mlp", "slbi", hp, 0, 2, 1.0, "")
    tid = tmp_store.begin_trial(key, "digits_mlp", "slbi", hp, 0, 2, 1.0, "", {})
    for epoch in range(4):  # an older, longer attempt
        tmp_store.add_eval(tid, {"epoch": epoch, "step": 7 * epoch, "train_seconds": 9.0,
                                 "train_loss": 99.0})
        tmp_store.add_events(tid, epoch, 7 * epoch, [{"kind": "stale"}])
    tmp_store.end_trial(tid, "failed", {}, "boom")
    res = run_trial("digits_mlp", "slbi", seed=0, epochs=2, store=tmp_store)
    assert res.status == "finished" and res.trial_id == tid
    evals = tmp_store.evals(tid)
    assert [e["epoch"] for e in evals] == [0, 1, 2]
    assert all(e["train_loss"] != 99.0 for e in evals)
    kinds = [e["kind"] for e in tmp_store.events(tid)]
    assert kinds == ["slbi_path", "slbi_path"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_a_corrupt_checkpoint_is_discarded_with_a_warning_and_the_trial_restarts(damage,
                                                                                tmp_path):
    """A checkpoint that cannot be used (cut short, overwritten, not ours) is named in a
    warning, deleted, and the trial restarts from epoch 0 with the numbers of a clean run."""
    from beyondsgd.bench.run.runner import default_checkpoint_dir

    with Store(tmp_path / "a.db") as st:
        part = run_trial("digits_mlp", "slbi", seed=0, epochs=3, store=st, stop_after_epoch=1)
        assert part.status == "running"
        (ckpt,) = default_checkpoint_dir(st).glob("*.pt")
        data = ckpt.read_bytes()
        if damage == "truncated":
            ckpt.write_bytes(data[:len(data) // 2])
        elif damage == "garbage":
            ckpt.write_bytes(b"\0" * len(data))
        else:
            torch.save({"weights": torch.zeros(3)}, ckpt)
        with pytest.warns(RuntimeWarning, match=f"discarding checkpoint {ckpt}: .*restarting"):
            res = run_trial("digits_mlp", "slbi", seed=0, epochs=3, store=st)
        assert res.status == "finished" and not ckpt.exists()
        stored, events = st.evals(res.trial_id), st.events(res.trial_id)
        assert st.lease_info(res.trial_id)["attempts"] == 2
    with Store(tmp_path / "b.db") as clean:
        full = run_trial("digits_mlp", "slbi", seed=0, epochs=3, store=clean)
        assert _numbers(stored) == _numbers(full.evals)
        assert events == clean.events(full.trial_id)
    assert list(default_checkpoint_dir(st).iterdir()) == []  # no temporary files left


def test_checkpoint_temporary_files_are_unique_per_process_and_call(tmp_path, monkeypatch):
    """Two writers of one checkpoint never share a temporary file (before: one fixed
    '<key>.pt.tmp' per trial, so a second writer's rename failed with FileNotFoundError)."""
    from beyondsgd.bench.run import checkpoint as C

    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(C.os, "replace", spy)
    target = tmp_path / "k.pt"
    C.save_atomic({"a": 1}, target)
    C.save_atomic({"a": 2}, target)
    assert len(set(seen)) == 2 and all(f"k.pt.{os.getpid()}." in n for n in seen)
    assert torch.load(target)["a"] == 2 and [p.name for p in tmp_path.iterdir()] == ["k.pt"]


def test_a_trial_held_by_another_live_process_is_not_run(tmp_store):
    """run_trial leaves a trial that another live process runs alone: busy=True, nothing run,
    nothing written."""
    from beyondsgd.bench.store import trial_key
    from beyondsgd.methods.base import resolve_hparams

    hp = resolve_hparams(METHODS["sgd"], {})
    key = trial_key("digits_mlp", "sgd", hp, 0, 2, 1.0, "")
    tid = tmp_store.begin_trial(key, "digits_mlp", "sgd", hp, 0, 2, 1.0, "", {})
    tmp_store.conn.execute("UPDATE trials SET owner_host='elsewhere', heartbeat=? WHERE id=?",
                           (time.time(), tid))
    res = run_trial("digits_mlp", "sgd", seed=0, epochs=2, store=tmp_store)
    assert res.busy and not res.skipped and res.status == "running" and res.evals == []
    assert "host elsewhere" in res.holder and res.trial_id == tid
    assert tmp_store.evals(tid) == [] and tmp_store.lease_info(tid)["attempts"] == 1


# ---- one evaluation: the runner's rows and a method's TrainContext give the same numbers ----
class _CtxProbe(Adam):
    """Adam that records, with every evaluation, what its TrainContext says of the model."""

    name = "_test_ctx_probe"
    summary = "test probe"
    paper = "none"

    def prepare(self, model, ctx):
        self.ctx = ctx
        return super().prepare(model, ctx)

    def metrics(self, model):
        return {"ctx_val_loss": self.ctx.val_loss(model),
                "ctx_val_metric": self.ctx.val_metric(model),
                "ctx_test_loss": self.ctx.evaluate(model, self.ctx.x_val[:0], self.ctx.y_val[:0])}


def test_runner_and_train_context_evaluate_identically(monkeypatch):
    """Both callers of the one evaluation (``methods.base.evaluate``) agree bit for bit on the
    validation loss and metric at every epoch, and both equal an independent one-batch
    forward pass up to float64 summation round-off (measured ~1e-16; tolerance 1e-12)."""
    monkeypatch.setitem(METHODS, _CtxProbe.name, _CtxProbe)
    res = run_trial("digits_mlp", _CtxProbe.name, seed=0, epochs=2)
    assert res.status == "finished" and len(res.evals) == 3
    for e in res.evals:
        assert e["ctx_val_loss"] == e["val_loss"] and e["ctx_val_metric"] == e["val_metric"]
        assert e["ctx_test_loss"] == 0.0  # an empty set: no division by zero
    assert res.evals[0]["val_loss"] != res.evals[-1]["val_loss"]  # the probe saw training
    prob = PROBLEMS["digits_mlp"]
    data = prob.load(0)
    model = res.model.eval()
    with torch.no_grad():
        out = model(data.x_val)
    loss = float(prob.loss_fn(out, data.y_val))
    acc = float((out.argmax(1) == data.y_val).double().mean())
    assert res.final["val_loss"] == pytest.approx(loss, rel=1e-6)  # float32 mean vs float64 sum
    assert res.final["val_metric"] == pytest.approx(acc, abs=1e-12)


def test_evaluate_is_chunk_independent_restores_mode_and_needs_a_metric_fn():
    """Chunked sums equal the one-chunk result up to float32 round-off of the per-chunk losses
    (measured 2.7e-8 relative; tolerance 1e-6), for regression (MSE per sample, averaged over
    outputs); the model's training mode is restored; val_metric without metric_fn is refused."""
    from beyondsgd.methods.base import TrainContext, evaluate

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(37, 3, generator=g), torch.randn(37, 2, generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.5)).train()
    mse = torch.nn.functional.mse_loss

    def per_sample(out, t):
        return ((out - t) ** 2).mean(dim=1).sum()

    whole = evaluate(model, x, y, mse, per_sample, chunk=1000)
    assert model.training
    for chunk in (1, 5, 36):
        got = evaluate(model, x, y, mse, per_sample, chunk=chunk)
        assert got == pytest.approx(whole, rel=1e-6)
    with torch.no_grad():
        ref = float(((model.eval()(x).double() - y.double()) ** 2).mean())
    assert whole[0] == pytest.approx(ref, rel=1e-6) and whole[1] == pytest.approx(ref, rel=1e-6)
    ctx = TrainContext(device=torch.device("cpu"), loss_fn=mse, task="regression", x_train=x,
                       y_train=y, x_val=x, y_val=y, batch_size=8, epochs=1, steps_per_epoch=5)
    assert ctx.val_loss(model) == whole[0]
    with pytest.raises(RuntimeError, match="no metric_fn"):
        ctx.val_metric(model)


def test_train_metric_is_recorded_and_stored_without_changing_the_train_loss(tmp_store):
    """Every row has ``train_metric`` (accuracy on the fixed training subset), equal to an
    independent count on the trained model and kept by the store (with the extras); the
    training loss is the one computed without it (bit for bit)."""
    from beyondsgd.methods.base import evaluate

    prob = PROBLEMS["digits_mlp"]
    res = run_trial("digits_mlp", "adam", seed=2, epochs=2, store=tmp_store)
    data = prob.load(0)
    n = min(prob.train_eval_size, data.x_train.shape[0])
    x, y = data.x_train[:n], data.y_train[:n]
    with torch.no_grad():
        acc = float((res.model.eval()(x).argmax(1) == y).double().mean())
    assert res.final["train_metric"] == pytest.approx(acc, abs=1e-12)
    assert 0 <= res.evals[0]["train_metric"] < res.final["train_metric"] <= 1
    assert res.final["train_loss"] == evaluate(res.model, x, y, prob.loss_fn)[0]
    stored = tmp_store.evals(res.trial_id)
    assert [e["train_metric"] for e in stored] == [e["train_metric"] for e in res.evals]


def test_analyse_is_stored_after_the_last_epochs_events_and_survives_a_resume(tmp_path):
    """``analyse`` runs once on the trained model; its dict is the last epoch's final event, after
    the method's own events of that epoch, also when the trial resumes after its last epoch."""
    seen = []

    def analyse(model, method, data):
        seen.append(type(method).__name__)
        w = next(model.parameters()).detach()
        return {"n_test": int(data.x_test.shape[0]), "w": float(w.sum())}

    def boom(model, method, data):
        raise RuntimeError("killed after training")

    def stored(st):
        return [{k: v for k, v in e.items() if not k.endswith("seconds")}
                for e in st.events(st.trials()[0]["id"])]

    with Store(tmp_path / "a.db") as a, Store(tmp_path / "b.db") as b:
        whole = run_trial("digits_mlp", "slbi", seed=0, epochs=2, store=a, analyse=analyse)
        last = [e for e in stored(a) if e["epoch"] == 2]
        assert [e["kind"] for e in last][-1] == "analysis" and len(last) > 1  # slbi_path first
        assert whole.events[-1] == {"epoch": 2, "step": last[-1]["step"], **last[-1]}
        with pytest.raises(RuntimeError, match="killed"):
            run_trial("digits_mlp", "slbi", seed=0, epochs=2, store=b, analyse=boom)
        assert b.trials()[0]["status"] == "failed"
        assert list((tmp_path / "b_checkpoints").glob("*.pt"))  # resumed after its last epoch
        resumed = run_trial("digits_mlp", "slbi", seed=0, epochs=2, store=b, analyse=analyse)
        assert resumed.status == "finished" and stored(b) == stored(a)
        assert seen == ["SLBIMethod"] * 2 and not list((tmp_path / "b_checkpoints").glob("*"))
        assert _numbers(resumed.evals) == _numbers(whole.evals)
    with pytest.raises(ValueError, match="analyse must be a callable"):
        run_trial("digits_mlp", "sgd", epochs=1, analyse=3)
