"""DeepOBS 1.1.2 integration: BPGrad, SLBI, ProxProp and PHT under DeepOBS's PyTorch runner, and
``beyondsgd export --format deepobs`` read back by DeepOBS's analyzer.

Skipped when DeepOBS is not installed. DeepOBS imports TensorFlow and torchvision when it is
imported (``deepobs/__init__.py`` imports its TensorFlow half; its PyTorch data sets import
torchvision); neither is needed by what is tested here (``quadratic_deep`` and a local test
problem build their data with numpy/torch). When they are not installed, the ``deepobs``
fixture puts **import-only stand-ins** for both in a temporary directory on ``sys.path``
(modules whose every attribute is an inert class), imports DeepOBS, and removes the stand-ins
and DeepOBS from ``sys.modules`` afterwards so that no other test sees them.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from beyondsgd.bench.store.export import deepobs_record, deepobs_value
from beyondsgd.integrations import deepobs as I
from beyondsgd.methods.bpgrad import BPGrad
from beyondsgd.methods.slbi import SLBI

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepobs") is None,
                                reason="deepobs is not installed (extra 'deepobs')")
torch.set_num_threads(1)

_STAND_IN = '''"""Import-only stand-in written by beyondsgd's tests/test_deepobs.py (inert)."""


class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Stub

    def __call__(cls, *args, **kwargs):
        return Stub


class Stub(metaclass=_Meta):
    pass


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return Stub
'''

# A local DeepOBS test problem (DeepOBS imports a module named like the problem first): a small
# ReLU MLP on a fixed synthetic 3-class problem, for the ProxProp and PHT model hooks.
_TINY = '''
import torch
from torch import nn
from torch.utils import data as dat
from deepobs.pytorch.datasets.dataset import DataSet
from deepobs.pytorch.testproblems.testproblem import UnregularizedTestproblem


class _Data(DataSet):
    def __init__(self, batch_size):
        g = torch.Generator().manual_seed(0)
        self._x = torch.randn(256, 8, generator=g)
        self._y = (self._x @ torch.randn(8, 3, generator=g)).argmax(1)
        super().__init__(batch_size)

    def _part(self, a, b):
        return dat.TensorDataset(self._x[a:b], self._y[a:b])

    def _make_train_and_valid_dataloader(self):
        return (self._make_dataloader(self._part(0, 192), shuffle=True),
                self._make_dataloader(self._part(192, 224)))

    def _make_train_eval_dataloader(self):
        return self._make_dataloader(self._part(0, 192))

    def _make_test_dataloader(self):
        return self._make_dataloader(self._part(224, 256))


class tiny_mlp(UnregularizedTestproblem):
    def set_up(self):
        self.data = _Data(self._batch_size)
        self.loss_function = nn.CrossEntropyLoss
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).to(self._device)
        self.regularization_groups = self.get_regularization_groups()
'''


@pytest.fixture(scope="module")
def deepobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepobs_stand_ins")
    stand_ins = [m for m in ("tensorflow", "torchvision") if importlib.util.find_spec(m) is None]
    for pkg in stand_ins:
        (root / pkg).mkdir()
        (root / pkg / "__init__.py").write_text(_STAND_IN)
    if "torchvision" in stand_ins:
        for sub in ("datasets", "transforms"):
            (root / "torchvision" / f"{sub}.py").write_text(_STAND_IN)
    (root / "tiny_mlp.py").write_text(_TINY)
    sys.path.insert(0, str(root))
    before = set(sys.modules)
    argv = sys.argv
    sys.argv = sys.argv[:1]  # DeepOBS parses the command line for every run argument left None
    try:
        import deepobs

        yield deepobs
    finally:
        sys.argv = argv
        sys.path.remove(str(root))
        for name in set(sys.modules) - before:
            if name.split(".")[0] in ("deepobs", "tensorflow", "torchvision", "tiny_mlp"):
                del sys.modules[name]
        I._RUNNER = None


def _quadratic_rng_reset():
    """quadratic_deep draws its Hessian's rotation from a module-level numpy generator (seeded
    once at import), so every run in one process sees another Hessian; reset it per run."""
    sys.modules["deepobs.pytorch.testproblems.quadratic_deep"].rng = np.random.RandomState(42)


def _run(runner, hp, tmp_path, problem="quadratic_deep", epochs=2, batch_size=128, **kw):
    if problem == "quadratic_deep":
        _quadratic_rng_reset()
    return runner.run(testproblem=problem, hyperparams=hp, num_epochs=epochs, random_seed=42,
                      batch_size=batch_size, output_dir=str(tmp_path), weight_decay=None,
                      data_dir=str(tmp_path / "data"), train_log_interval=1,
                      print_train_iter=False, tb_log=False, tb_log_dir="none", **kw)


# --------------------------------------------------------------------------------------------
# BPGrad through the runner
# --------------------------------------------------------------------------------------------
def test_bpgrad_trains_on_quadratic_deep_as_a_closure_loop_does(deepobs, tmp_path):
    """The runner (loss fed to step(loss=...)) against an independent loop that drives the same
    DeepOBS test problem in the runner's order with BPGrad's closure path: equal losses."""
    from deepobs.pytorch.runners import StandardRunner

    out = _run(I.make_runner("bpgrad"), {"lipschitz": 1000.0}, tmp_path, epochs=3)
    assert out["optimizer_name"] == "BPGrad" and len(out["train_losses"]) == 4
    assert out["train_losses"][-1] < 0.5 * out["train_losses"][0]  # measured 223.7 -> 86.6
    files = list((tmp_path / "quadratic_deep" / "BPGrad").glob("*/random_seed__42__*.json"))
    assert len(files) == 1 and "lipschitz__1.e+03" in files[0].parent.name

    _quadratic_rng_reset()
    tp = StandardRunner.create_testproblem("quadratic_deep", 128, None, 42)
    opt = BPGrad(tp.net.parameters(), lipschitz=1000.0)
    train, minibatch = [], []
    for epoch in range(4):
        for phase in ("TRAIN", "VALID", "TEST"):
            loss, _ = StandardRunner.evaluate(tp, phase)
            if phase == "TRAIN":
                train.append(loss)
        if epoch == 3:
            break
        tp.train_init_op()

        def closure():
            opt.zero_grad()
            loss, _ = tp.get_batch_loss_and_accuracy()
            loss.backward()
            minibatch.append(loss.item())
            return loss

        while True:
            try:
                opt.step(closure)
            except StopIteration:
                break
    assert out["train_losses"] == train  # the same float operations in the same order
    assert out["minibatch_train_losses"] == minibatch


def test_bpgrad_running_mean_gets_new_epoch_from_the_runner(deepobs, tmp_path):
    out = _run(I.make_runner("bpgrad"), {"lipschitz": 1000.0, "loss_estimate": "running_mean"},
               tmp_path, epochs=2)
    assert all(math.isfinite(v) for v in out["train_losses"])
    assert out["train_losses"][-1] < out["train_losses"][0]


def test_loss_below_the_bound_ends_the_run_as_deepobs_ends_a_nan_run(deepobs, tmp_path):
    """A wrong bound (200 > the minibatch losses ~ 170): with the DeepOBS spec's default
    on_below_bound='diverge' the run is written, padded with the initial values."""
    with pytest.warns(RuntimeWarning) as rec:
        out = _run(I.make_runner("bpgrad"), {"lipschitz": 100.0, "loss_lower_bound": 200.0},
                   tmp_path, epochs=3)
    messages = " ".join(str(w.message) for w in rec)
    assert "below loss_lower_bound=200.0" in messages and "Breaking from run" in messages
    for key in ("train_losses", "valid_losses", "test_losses"):
        assert len(out[key]) == 4 and out[key] == [out[key][0]] * 4
    assert any(math.isnan(v) for v in out["minibatch_train_losses"])  # after the refusal
    assert len(list(tmp_path.glob("quadratic_deep/BPGrad/*/*.json"))) == 1


def test_plain_standard_runner_with_bpgrad_fails_with_the_fix_named(deepobs, tmp_path):
    from deepobs.pytorch.runners import StandardRunner

    runner = StandardRunner(BPGrad, I.hyperparameter_spec("BPGrad"))
    with pytest.raises(RuntimeError, match=r"needs the loss value.*step\(loss=loss\)"):
        _run(runner, {"lipschitz": 100.0}, tmp_path, epochs=1)


# --------------------------------------------------------------------------------------------
# SLBI, ProxProp, PHT
# --------------------------------------------------------------------------------------------
def test_slbi_auto_on_quadratic_deep_is_momentum_sgd_and_says_so(deepobs, tmp_path):
    """quadratic_deep's only parameter is a vector: 'auto' gives no Gamma, SLBI warns and is
    SGD with momentum (the same numbers as torch.optim.SGD, an independent optimizer)."""
    from deepobs.pytorch.runners import StandardRunner

    with pytest.warns(UserWarning, match=r"no parameter has a structure.*\(100,\)"):
        slbi = _run(StandardRunner(SLBI, I.hyperparameter_spec("SLBI")), {"lr": 0.01},
                    tmp_path / "a")
    sgd = _run(StandardRunner(torch.optim.SGD, {"lr": {"type": float},
                                                "momentum": {"type": float}}),
               {"lr": 0.01, "momentum": 0.9}, tmp_path / "b")
    np.testing.assert_allclose(slbi["train_losses"], sgd["train_losses"], rtol=1e-6)


def test_slbi_auto_couples_the_mlp_weights_under_the_standard_runner(deepobs, tmp_path):
    from deepobs.pytorch.runners import StandardRunner

    seen = {}

    class Spy(SLBI):
        def __init__(self, params, **hp):
            super().__init__(params, **hp)
            seen["structures"] = [self.structure(p) for g in self.param_groups
                                  for p in g["params"]]
            seen["groups"] = len(self.param_groups)

    Spy.__name__ = "SLBI"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = _run(StandardRunner(Spy, I.hyperparameter_spec("SLBI")), {"lr": 0.1}, tmp_path,
                   problem="tiny_mlp", batch_size=32)
    # one group (the runner's list); Linear weights element-wise (the official coupling),
    # biases none
    assert seen["groups"] == 1 and set(seen["structures"]) == {"element", None}
    assert out["train_losses"][-1] < out["train_losses"][0]


@pytest.mark.parametrize("method,hp,layer", [
    ("proxprop", {"lr": 0.5, "tau_theta": 0.5, "cg_iters": 2}, "ProxLinear"),
    ("pht_sgd", {"lr": 0.5, "tau": 0.1}, "PositiveHardThreshold"),
])
def test_model_hooks_convert_the_network_and_name_the_results(deepobs, tmp_path, method, hp,
                                                                layer):
    from deepobs.pytorch.runners import StandardRunner

    nets = []
    orig = StandardRunner.create_testproblem

    def spy(*args, **kwargs):
        tp = orig(*args, **kwargs)
        nets.append(tp.net)
        return tp

    runner = I.make_runner(method)
    runner.create_testproblem = spy
    out = _run(runner, hp, tmp_path, problem="tiny_mlp", batch_size=32)
    kinds = {type(m).__name__ for m in nets[0].modules()}
    assert any(layer in k for k in kinds), kinds
    assert out["optimizer_name"] == {"proxprop": "ProxPropSGD", "pht_sgd": "PHTSGD"}[method]
    assert out["optimizer_hyperparams"].items() >= hp.items()
    assert all(math.isfinite(v) for v in out["train_losses"])
    folder = next((tmp_path / "tiny_mlp" / out["optimizer_name"]).iterdir()).name
    assert all(f"__{k}__" in folder for k in hp)


def test_methods_without_a_hook_say_why_and_specs_match_the_constructors():
    with pytest.raises(ValueError, match="gdsolver.*MILP"):
        I.make_runner("gdsolver")
    with pytest.raises(ValueError, match="pht_alt.*minibatch"):
        I.make_runner("pht_alt")
    with pytest.raises(ValueError, match="no DeepOBS hyperparameter spec 'Adagrad'"):
        I.hyperparameter_spec("Adagrad")
    for name, cls in (("BPGrad", BPGrad), ("SLBI", SLBI)):
        sig = inspect.signature(cls.__init__).parameters
        for hp, spec in I.HYPERPARAMS[name].items():
            if "default" in spec and not (name == "BPGrad" and hp == "on_below_bound"):
                assert spec["default"] == sig[hp].default, (name, hp)
            assert hp in sig and hp != "weight_decay"


# --------------------------------------------------------------------------------------------
# beyondsgd export --format deepobs, read by DeepOBS's analyzer
# --------------------------------------------------------------------------------------------
def _cli(*args: str) -> int:
    from beyondsgd.cli import main
    return main(list(args))


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory) -> Path:
    """A tiny bench store: sgd at two learning rates (2 seeds each) and a diverging bpgrad."""
    store = tmp_path_factory.mktemp("digits") / "s.db"
    for method, setting, seeds in (("sgd", "sgd.lr=0.05", "2"), ("sgd", "sgd.lr=0.2", "2"),
                                   ("bpgrad", "bpgrad.lipschitz=1e-6", "1")):
        assert _cli("bench", "--methods", method, "--set", setting, "--seeds", seeds,
                    "--epochs", "2", "--store", str(store), "--quiet") == 0
    return store


def test_exported_digits_store_is_aggregated_and_ranked_by_the_analyzer(deepobs, digits_store,
                                                                          tmp_path, capsys):
    from deepobs.analyzer import shared_utils as su

    store = str(digits_store)
    out = tmp_path / "dob"
    assert _cli("export", store, "--format", "deepobs", "--out", str(out)) == 0
    assert "exported 5 runs in DeepOBS's layout" in capsys.readouterr().out
    assert _cli("export", store, "--format", "deepobs", "--out", str(out)) == 2  # not empty

    I.name_problems(["digits_mlp"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no accuracies: ranks by valid_losses
        ranked = su.create_setting_analyzer_ranking(str(out / "digits_mlp" / "sgd"), "final")
    assert [sa.aggregate["optimizer_hyperparams"]["lr"] for sa in ranked] == [0.2, 0.05]
    assert [sa.n_runs for sa in ranked] == [2, 2]
    # the aggregate equals the mean over the exported runs, computed here from the files
    runs = [json.loads(p.read_text()) for p in Path(ranked[0].path).glob("*.json")]
    assert ranked[0].get_final_value("valid_losses") == pytest.approx(
        np.mean([r["valid_losses"][-1] for r in runs]), rel=1e-12)
    diverged = su.aggregate_runs(str(next((out / "digits_mlp" / "bpgrad").iterdir())))
    losses = diverged["train_losses"]["mean"]
    assert len(losses) == 3 and losses[1] == losses[0] == losses[2]  # padded as DeepOBS does


def test_recorded_training_accuracy_is_exported_and_ranked_by_valid_accuracy(deepobs,
                                                                           digits_store,
                                                                           tmp_path):
    """With ``train_metric`` in every evaluation (written here into a copy of the store, as the
    runner records it in an evaluation's extras) the three accuracy lists are exported and
    DeepOBS ranks by ``valid_accuracies`` without falling back."""
    import shutil
    import sqlite3

    from deepobs.analyzer import shared_utils as su

    store = tmp_path / "s.db"
    shutil.copy(digits_store, store)
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE evals SET extras = json_set(coalesce(extras, '{}'), "
                     "'$.train_metric', val_metric + 0.01)")
    out = tmp_path / "dob"
    assert _cli("export", str(store), "--format", "deepobs", "--out", str(out)) == 0
    I.name_problems(["digits_mlp"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback metric
        ranked = su.create_setting_analyzer_ranking(str(out / "digits_mlp" / "sgd"), "final",
                                                    "valid_accuracies")
    finals = [sa.get_final_value("valid_accuracies") for sa in ranked]
    assert finals == sorted(finals, reverse=True) and finals[0] > 0.5
    rec = json.loads(next(Path(ranked[0].path).glob("*.json")).read_text())
    np.testing.assert_allclose(rec["train_accuracies"], np.add(rec["valid_accuracies"], 0.01),
                               rtol=0, atol=1e-12)


def test_trials_that_are_not_runs_are_skipped_and_counted(digits_store, tmp_path, capsys):
    """A diverged trial without one finite evaluation, and an unfinished one, are no DeepOBS
    runs: skipped, counted in the CLI's summary (DeepOBS itself is not needed here)."""
    import shutil
    import sqlite3

    store = tmp_path / "s.db"
    shutil.copy(digits_store, store)
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE evals SET train_loss = NULL WHERE trial_id IN "
                     "(SELECT id FROM trials WHERE method = 'bpgrad')")
        conn.execute("UPDATE trials SET status = 'running' WHERE id = "
                     "(SELECT min(id) FROM trials)")
    assert _cli("export", str(store), "--format", "deepobs", "--out", str(tmp_path / "o")) == 0
    said = capsys.readouterr().out
    assert "exported 3 runs" in said
    assert "skipped: 1 diverged without a finite evaluation, 1 running" in said
    assert len(list((tmp_path / "o").rglob("*.json"))) == 3


def test_deepobs_record_layout_padding_and_accuracies():
    t = {"id": 1, "problem": "digits_mlp", "method": "sgd", "hparams": {"lr": 0.1}, "seed": 3,
         "epochs": 3, "status": "diverged", "train_fraction": 1.0, "tag": ""}
    ev = [{"epoch": e, "train_loss": 2.0 - e, "val_loss": 2.1 - e, "test_loss": 2.2 - e,
           "val_metric": 0.1 * e, "test_metric": 0.2 * e, "train_metric": 0.3 * e}
          for e in range(3)]
    ev[2]["train_loss"] = math.nan  # the evaluation after the diverging epoch
    rec = deepobs_record(t, ev, 64)
    assert rec["train_losses"] == [2.0, 1.0, 2.0, 2.0]  # kept, then the initial value
    assert rec["test_accuracies"] == [0.0, 0.2, 0.0, 0.0]
    assert rec["train_accuracies"] == [0.0, 0.3, 0.0, 0.0]
    assert (rec["batch_size"], rec["num_epochs"], rec["random_seed"]) == (64, 3, 3)
    del ev[0]["train_metric"]
    assert "train_accuracies" not in deepobs_record(t, ev, 64)  # all three or none
    t["status"] = "finished"
    with pytest.raises(ValueError, match="stops at epoch 1 of 3 and did not diverge"):
        deepobs_record(t, ev, 64)
    assert [deepobs_value(v) for v in (0.1, 1e-6, 30.0, 3, "paper", True)] == \
        ["1.e-01", "1.e-06", "3.e+01", "3", "paper", "True"]


# --------------------------------------------------------------------------------------------
# Installing the extra: what DeepOBS needs at import, said exactly (issue 27)
# --------------------------------------------------------------------------------------------
def _fresh(code: str, stand_ins: tuple[str, ...], tmp_path: Path):
    """``code`` in a new interpreter with import-only stand-ins for ``stand_ins`` on its path."""
    import os
    import subprocess

    for pkg in stand_ins:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(_STAND_IN)
        if pkg == "torchvision":
            for sub in ("datasets", "transforms"):
                (tmp_path / pkg / f"{sub}.py").write_text(_STAND_IN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                    reason="torchvision is installed")
def test_without_torchvision_the_error_names_it_and_the_command_that_installs_it(tmp_path):
    """Before: `make_runner` said to install the 'deepobs' extra, the very thing just installed
    (DeepOBS imports TensorFlow and torchvision at import time)."""
    res = _fresh("import sys\nfrom beyondsgd.integrations import deepobs as I\n"
                 "try:\n    I.make_runner('bpgrad')\nexcept ImportError as e:\n"
                 "    print(e.name, '|', e)\n"
                 "print(sorted(m for m in sys.modules if m.split('.')[0] == 'deepobs'))\n",
                 (), tmp_path)
    assert res.returncode == 0, res.stderr
    said, left = res.stdout.strip().splitlines()
    name, _, msg = said.partition(" | ")
    assert name == "torchvision" and "beyondsgd[deepobs]" not in msg, said
    assert I.torchvision_install_command() in msg and "TensorFlow is not needed" in msg
    assert left == "[]"  # no half-imported DeepOBS left behind


def test_tensorflow_is_not_needed_for_the_pytorch_runner(tmp_path):
    """DeepOBS's __init__ imports its TensorFlow half; the PyTorch runner is imported without
    it, so torchvision (here an import-only stand-in where it is not installed) is all it
    takes."""
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed")
    stand_ins = () if importlib.util.find_spec("torchvision") else ("torchvision",)
    res = _fresh("import sys\nfrom beyondsgd.integrations import deepobs as I\n"
                 "r = I.make_runner('bpgrad')\nimport deepobs.config\n"
                 "print(type(r).__mro__[1].__name__, 'tensorflow' in sys.modules)\n",
                 stand_ins, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["StandardRunner", "False"]


def test_the_torchvision_command_matches_the_torch_build():
    assert I.torchvision_install_command("2.13.0+cpu", None) == \
        "pip install 'torchvision==0.28.*' --index-url https://download.pytorch.org/whl/cpu"
    assert I.torchvision_install_command("2.1.2", "12.1") == "pip install 'torchvision==0.16.*'"
