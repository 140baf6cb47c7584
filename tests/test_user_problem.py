"""Your problem (``bs.Problem``): found from a file or module, checked before any work, streamed
through a DataLoader with the in-memory minibatch order, identified by its file's hash in the
store, run by bench / train / suite (local workers and Ray) with the same guarantees as the
built-in problems (resume after kill -9 with identical numbers)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import beyondsgd as bs
from beyondsgd.bench.problems import PROBLEMS, ProblemError, load_ref
from beyondsgd.bench.problems import user as U
from beyondsgd.bench.protocol.tuning import Budget, sample_configs, search_space
from beyondsgd.bench.run.runner import run_trial
from beyondsgd.bench.store import Store
from beyondsgd.cli import main
from killing import kill_after_epochs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "image_problem.py"

# A user file: a tiny CNN on synthetic 1x8x8 images, four classes, served as a Dataset that
# builds each image on access (``streamed``) and as tensors (``in_memory``); ``small_pool``
# gives the methods a pool smaller than the training set.
USER_FILE = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.utils.data import Dataset
    import beyondsgd as bs

    g = torch.Generator().manual_seed(0)
    X = torch.randn(368, 1, 8, 8, generator=g)
    Y = ((X[:, 0, :4].mean((1, 2)) > 0).long() + 2 * (X[:, 0, 4:].mean((1, 2)) > 0).long())

    class Images(Dataset):
        def __init__(self, lo, hi):
            self.lo, self.hi = lo, hi
        def __len__(self):
            return self.hi - self.lo
        def __getitem__(self, i):
            return X[self.lo + i].clone(), int(Y[self.lo + i])

    def cnn(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 4))

    KW = dict(batch_size=32, epochs=3)
    streamed = bs.Problem("tiny_stream", cnn, Images(0, 240), Images(240, 304),
                          Images(304, 368), **KW)
    in_memory = bs.Problem("tiny_mem", cnn, (X[:240], Y[:240]), (X[240:304], Y[240:304]),
                           (X[304:], Y[304:]), **KW)
    small_pool = bs.Problem("tiny_pool", cnn, Images(0, 240), Images(240, 304),
                            Images(304, 368), pool=48, **KW)
    workers = bs.Problem("tiny_workers", cnn, Images(0, 240), Images(240, 304),
                         Images(304, 368), num_workers=2, **KW)
    SPACE = {"adam": {"lr": (1e-4, 1e-3)}, "sgd": {"weight_decay": [0.0, 1e-4]}}
    tuned = bs.Problem("tiny_tuned", cnn, (X[:240], Y[:240]), (X[240:304], Y[240:304]),
                       (X[304:], Y[304:]), search_space=SPACE, **KW)
    def factory():
        return in_memory
    not_a_problem = 3
''')

FIELDS = ("epoch", "step", "train_loss", "val_loss", "val_metric", "test_loss", "test_metric")


def numbers(evals: list[dict]) -> list[tuple]:
    return [tuple(e[k] for k in FIELDS) for e in evals]


@pytest.fixture()
def user_file(tmp_path) -> Path:
    path = tmp_path / "my_problems.py"
    path.write_text(USER_FILE)
    yield path
    for name in [n for n, p in PROBLEMS.items() if p.user]:
        del PROBLEMS[name]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


# ---- streaming ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["adam", "momentum", "gdsolver", "pht_alt", "slbi",
                                    "proxprop", "bpgrad"])
def test_streamed_dataset_trains_exactly_like_the_same_tensors(user_file, method):
    """The DataLoader serves the in-memory minibatch order and evaluation chunks, and the method
    pool covers this small training set: every number is identical, for every method."""
    load_ref(f"{user_file}:streamed")
    load_ref(f"{user_file}:in_memory")
    a = run_trial("tiny_stream", method, seed=1, epochs=2)
    b = run_trial("tiny_mem", method, seed=1, epochs=2)
    assert a.status == b.status == "finished"
    assert numbers(a.evals) == numbers(b.evals)
    assert a.events == b.events or method == "gdsolver"  # solve events carry timings
    if method == "gdsolver":
        strip = [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in a.events]
        strip_b = [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in b.events]
        assert strip == strip_b


def test_loader_workers_do_not_change_the_numbers(user_file):
    load_ref(f"{user_file}:streamed")
    load_ref(f"{user_file}:workers")
    a = run_trial("tiny_stream", "adam", seed=3, epochs=2)
    b = run_trial("tiny_workers", "adam", seed=3, epochs=2)
    assert numbers(a.evals) == numbers(b.evals)


def test_methods_that_need_epoch_data_use_the_pool(user_file):
    """A pool of 48 of the 240 training rows: GDSolver picks its points from it and PHT's
    epoch-level solves run on it; the evaluations still cover every row."""
    prob = load_ref(f"{user_file}:small_pool")
    data = prob.load(0)
    assert data.x_train.shape[0] == 48 and data.n_train == 240
    assert data.x_val.shape[0] == 48
    res = run_trial("tiny_pool", "gdsolver", {"solve_every": 1}, seed=0, epochs=2)
    solves = [e for e in res.events if e.get("kind") == "milp"]
    assert res.status in ("finished", "collapsed") and solves
    assert all(e["n_points"] <= 48 for e in solves)
    res = run_trial("tiny_pool", "pht_alt", seed=0, epochs=2)
    assert any(e["kind"] == "layer_solve" for e in res.events)
    with pytest.raises(ValueError, match="refresh='epoch'"):
        run_trial("tiny_pool", "pht_alt", {"refresh": "epoch"}, seed=0, epochs=1)


# ---- finding and checking -------------------------------------------------------------------
def test_a_factory_and_a_module_ref_load(user_file, monkeypatch):
    assert load_ref(f"{user_file}:factory").name == "tiny_mem"
    monkeypatch.chdir(user_file.parent)
    monkeypatch.setattr(sys, "path", list(sys.path))
    prob = load_ref("my_problems:streamed")
    assert prob.origin["sha256"] == hashlib.sha256(user_file.read_bytes()).hexdigest()


def test_search_space_overrides_apply_on_that_problem_only(user_file):
    load_ref(f"{user_file}:tuned")
    for cfg in sample_configs("adam", 8, problem="tiny_tuned"):
        assert 1e-4 <= cfg["lr"] <= 1e-3
    assert any(c["lr"] > 1e-3 for c in sample_configs("adam", 8))
    assert [h.name for h in search_space("sgd", "tiny_tuned")] == ["lr", "weight_decay"]
    assert {c["weight_decay"] for c in sample_configs("sgd", 8, problem="tiny_tuned")} == {
        0.0, 1e-4}
    b = Budget("b", {"tiny_tuned": 1}, n_tune=2, seeds=1)
    assert b.draws("sgd", problem="tiny_tuned") == 2 * b.draws("sgd")


def bad_file(tmp_path, body: str) -> str:
    path = tmp_path / "bad.py"
    path.write_text("import torch\nfrom torch import nn\nimport beyondsgd as bs\n"
                    "X, Y = torch.randn(40, 5), torch.randint(0, 3, (40,))\n"
                    "def lin(seed):\n    return nn.Linear(5, 3)\n" + textwrap.dedent(body))
    return f"{path}:p"


BAD = {
    "missing file": (None, "no file"),
    "missing attribute": ("q = 1\n", "has no attribute 'p'"),
    "not a problem": ("p = 3\n", "is a int, not a beyondsgd.Problem"),
    "file raises": ("raise RuntimeError('boom')\n", "importing bad.py raised RuntimeError: boom"),
    "factory raises": ("def boom(seed):\n    raise ValueError('no gpu here')\n"
                       "p = bs.Problem('b', boom, (X, Y), (X, Y), (X, Y))\n",
                       "model(0) raised ValueError: no gpu here"),
    "mismatched shapes": ("p = bs.Problem('b', lin, (X, Y[:39]), (X, Y), (X, Y))\n",
                          "train has 40 inputs and 39 targets"),
    "wrong input width": ("p = bs.Problem('b', lin, (X[:, :4], Y), (X, Y), (X, Y))\n",
                          "the model fails on train inputs of shape (8, 4)"),
    "label out of range": ("p = bs.Problem('b', lin, (X, Y), (X, Y + 1), (X, Y))\n",
                           "val has label 3, out of range for the model's 3 outputs"),
    "non-scalar loss": ("import torch.nn.functional as F\n"
                        "def loss(o, y):\n    return F.cross_entropy(o, y, reduction='none')\n"
                        "p = bs.Problem('b', lin, (X, Y), (X, Y), (X, Y), loss=loss, "
                        "task='classification')\n", "the loss returns (8,), not a scalar"),
    "built-in name": ("p = bs.Problem('digits_mlp', lin, (X, Y), (X, Y), (X, Y))\n",
                      "the name is a built-in problem's"),
    "bad batch size": ("p = bs.Problem('b', lin, (X, Y), (X, Y), (X, Y), batch_size=0)\n",
                       "batch_size=0; accepted: an integer >= 1"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("command", ["bench", "train", "suite"])
def test_bad_problems_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, case, command):
    body, expected = BAD[case]
    ref = f"{tmp_path}/nowhere.py:p" if body is None else bad_file(tmp_path, body)
    store = tmp_path / "s.db"
    argv = {"bench": ["bench", "--problem", ref, "--methods", "adam", "--store", str(store)],
            "train": ["train", "--problem", ref, "--method", "adam", "--store", str(store)],
            "suite": ["suite", "--problems", ref, "--methods", "adam", "--store", str(store),
                      "--out", str(tmp_path / "rep")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err
    assert err[0].startswith(f"beyondsgd {command}: error: problem")
    assert not store.exists() and not (tmp_path / "rep").exists()


def test_not_a_problem_object_is_refused_by_run_trial():
    with pytest.raises(ValueError, match="problem must be a problem name or a Problem"):
        run_trial(3, "adam")
    with pytest.raises(ProblemError, match="not a beyondsgd.Problem"):
        U.check_problem("digits_mlp")


# ---- the store: identity, device, resume ----------------------------------------------------
def test_store_records_the_file_hash_and_device_and_refuses_a_changed_file(user_file, tmp_path,
                                                                           capsys):
    store = tmp_path / "s.db"
    argv = ["bench", "--problem", f"{user_file}:in_memory", "--methods", "adam", "--seeds", "1",
            "--epochs", "1", "--store", str(store), "--quiet"]
    assert main(argv) == 0
    with Store(store, readonly=True) as st:
        env = st.trials()[0]["env"]
    assert env["problem"]["sha256"] == hashlib.sha256(user_file.read_bytes()).hexdigest()
    assert env["problem"]["user"] and env["problem"]["task"] == "classification"
    assert env["device"] == "cpu" and env["device_name"]
    before = store.read_bytes()
    user_file.write_text(USER_FILE.replace("manual_seed(0)", "manual_seed(1)"))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "problem tiny_mem changed" in err and "never mixed" in err
    assert store.read_bytes() == before


def test_a_worker_refuses_a_file_changed_since_the_driver_loaded_it(user_file):
    prob = load_ref(f"{user_file}:in_memory")
    ref, identity, cwd = U.job_source(prob)
    del PROBLEMS["tiny_mem"]
    user_file.write_text(USER_FILE + "\n# changed\n")
    with pytest.raises(ProblemError, match="changed since the run started"):
        U.ensure("tiny_mem", ref, identity, cwd)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from beyondsgd.bench.problems import load_ref
    from beyondsgd.bench.run.runner import run_trial
    from beyondsgd.bench.store import Store
    load_ref(sys.argv[2])
    slow = lambda row: time.sleep(0.3)   # epochs slow enough to be killed mid-run
    run_trial("tiny_stream", "slbi", seed=2, epochs=6, store=Store(sys.argv[1]), progress=slow)
""")


def test_a_streamed_user_problem_resumes_after_kill_9_with_identical_numbers(user_file,
                                                                              tmp_path):
    path = tmp_path / "killed.db"
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(path), f"{user_file}:streamed"])
    kill_after_epochs(proc, path, 2)
    with Store(path) as st:
        assert st.trials()[0]["status"] == "running"
        load_ref(f"{user_file}:streamed")
        resumed = run_trial("tiny_stream", "slbi", seed=2, epochs=6, store=st)
        stored = st.evals(st.trials()[0]["id"])
    full = run_trial("tiny_stream", "slbi", seed=2, epochs=6)
    assert resumed.status == "finished"
    assert numbers(stored) == numbers(full.evals)


# ---- the example: bench and suite end to end ------------------------------------------------
def test_the_example_runs_through_bench_and_the_smoke_suite_with_a_report(tmp_path, capsys):
    """examples/image_problem.py: a small CNN on digit images served as a Dataset."""
    pytest.importorskip("sklearn")
    ref = f"{EXAMPLE}:problem"
    try:
        assert main(["bench", "--problem", ref, "--methods", "adam,gdsolver,pht_alt", "--seeds",
                     "1", "--epochs", "1", "--store", str(tmp_path / "b.db"), "--quiet"]) == 0
        out = capsys.readouterr().out
        assert "digits_cnn_yours" in out and "pht_alt" in out
        rep = tmp_path / "rep"
        assert main(["suite", "--budget", "smoke", "--problems", ref, "--workers", "2",
                     "--threads", "1", "--store", str(tmp_path / "s.db"), "--out", str(rep),
                     "--quiet"]) == 0  # every method: 100 trials, about 30 s on 2 cores
        report = (rep / "report.md").read_text()
        assert "digits_cnn_yours (yours)" in report and "## Your problems" in report
        with Store(tmp_path / "s.db", readonly=True) as st:
            trials = st.trials()
        assert trials and all(t["status"] in ("finished", "collapsed") for t in trials)
        assert {t["epochs"] for t in trials} == {2}  # smoke: at most 2 of its 10 epochs
        assert {t["env"]["problem"]["sha256"] for t in trials} == {
            hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()}
    finally:
        PROBLEMS.pop("digits_cnn_yours", None)


def test_the_suite_on_ray_stores_what_the_local_workers_store(user_file, tmp_path):
    ray = pytest.importorskip("ray")
    from beyondsgd.bench.protocol.suite import run_suite

    load_ref(f"{user_file}:streamed")
    budget = Budget("mini", {"tiny_stream": 2}, n_tune=1, seeds=1)
    local, remote = str(tmp_path / "local.db"), str(tmp_path / "ray.db")
    res = run_suite(budget, local, methods=["sgd", "slbi"], workers=2, threads=1,
                    progress=False)
    assert not res.failed, res.failed
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        res = run_suite(budget, remote, methods=["sgd", "slbi"], threads=1, progress=False,
                        executor="ray")
    finally:
        if started:
            ray.shutdown()
    assert not res.failed, res.failed

    def snap(path):
        with Store(path, readonly=True) as st:
            return {t["key"]: numbers(st.evals(t["id"])) for t in st.trials()}

    # tuning draws, plus one defaults and one final run per method
    n = sum(budget.draws(m, problem="tiny_stream") + 2 for m in ("sgd", "slbi"))
    assert snap(local) == snap(remote) and len(snap(local)) == n


def test_public_api_is_bs_problem():
    assert bs.Problem is U.Problem


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_streamed_problem_on_cuda_records_the_gpu_and_its_wall_clock(user_file, tmp_path):
    """On a GPU: batches pinned and copied to the device, the GPU's name in the trial's
    environment, no CPU-seconds clock (time to target reads the synchronised wall clock), and
    the CPU run's numbers up to float32 round-off of the GPU kernels."""
    load_ref(f"{user_file}:streamed")
    with Store(tmp_path / "g.db") as st:
        gpu = run_trial("tiny_stream", "adam", seed=1, epochs=2, device="cuda", store=st)
        env = st.trials()[0]["env"]
    cpu = run_trial("tiny_stream", "adam", seed=1, epochs=2)
    assert env["device"].startswith("cuda") and env["device_name"] == \
        torch.cuda.get_device_name(0)
    assert all("train_cpu_seconds" not in e for e in gpu.evals)
    for a, b in zip(gpu.evals, cpu.evals):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
