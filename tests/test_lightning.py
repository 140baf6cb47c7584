"""PyTorch Lightning glue (beyondsgd.integrations.lightning) and the docs' Lightning examples.

Every run is on CPU, single-threaded (conftest), without progress bar, checkpoints or logger
unless the test is about them; data are small tensors or scikit-learn digits.
"""

from __future__ import annotations

import copy
import csv
import doctest
import importlib
import logging
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("pytorch_lightning")

import beyondsgd as bs  # noqa: E402
from beyondsgd.integrations import lightning as L  # noqa: E402
from beyondsgd.methods.gdsolver.points import improves  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "integrations" / "lightning"
QUIET = dict(enable_progress_bar=False, logger=False, enable_checkpointing=False,
             enable_model_summary=False, accelerator="cpu")
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="pytorch_lightning")  # its own deprecation notes


def _data(n=96, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y % classes


class Small(pl.LightningModule):
    def __init__(self, seed=0, opt=None):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 3))
        self.opt = opt or (lambda params: bs.BPGrad(params, lipschitz=5.0))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return self.opt(self.parameters())


class SmallBP(L.BPGradMixin, Small):
    pass


def test_missing_lightning_is_one_clear_import_error(monkeypatch):
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch"):
        monkeypatch.setitem(sys.modules, name, None)  # "import name" raises ImportError
    monkeypatch.delitem(sys.modules, "beyondsgd.integrations.lightning._pl")
    with pytest.raises(ImportError, match=r"pip install 'beyondsgd\[lightning\]'"):
        importlib.import_module("beyondsgd.integrations.lightning._pl")


def test_materialize_doctest_and_order():
    res = doctest.testmod(L.data, verbose=False)
    assert res.attempted >= 1 and res.failed == 0


# ---- BPGrad under gradient accumulation ------------------------------------------------------
def _fit(model, x, y, batch, **kw):
    trainer = pl.Trainer(max_epochs=1, **{**QUIET, **kw})
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False))
    return trainer


def _bpgrad_ref(model, batches):
    """Independent reference: plain BPGrad with a closure, one step per list of rows."""
    opt = bs.BPGrad(model.parameters(), lipschitz=5.0)
    f_ts = []
    for xb, yb in batches:
        def closure(xb=xb, yb=yb):
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            return loss
        opt.step(closure)
        f_ts.append(opt.global_state["f_t"])
    return f_ts


def test_bpgrad_accumulation_uses_mean_of_microbatch_losses():
    x, y = _data(96)
    ref = Small()
    start = copy.deepcopy(ref.net)
    with torch.no_grad():  # the two microbatch losses at the start, computed directly
        l1, l2 = (float(F.cross_entropy(start(x[i:i + 32]), y[i:i + 32])) for i in (0, 32))
    # k=2 and 3 batches: one full group (rows 0-63), then a group of one (rows 64-95)
    model = SmallBP()
    seen = []

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(trainer.optimizers[0].global_state["f_t"])

    trainer = _fit(model, x, y, 32, accumulate_grad_batches=2, callbacks=[Probe()])
    assert trainer.global_step == 2
    assert seen[1] == pytest.approx((l1 + l2) / 2, rel=1e-6)  # not l2 / 2 (Lightning's)
    assert abs(seen[1] - l2 / 2) > 0.1
    # same mean gradient: equal to un-accumulated BPGrad on the concatenated rows, then rows 64+
    f_ref = _bpgrad_ref(ref.net, [(x[:64], y[:64]), (x[64:], y[64:])])
    assert seen[2] == pytest.approx(f_ref[1], rel=1e-5)
    for p, q in zip(model.net.parameters(), ref.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)  # measured max diff 3e-8


def test_bpgrad_without_mixin_sees_last_loss_over_k():
    """The bug the mixin fixes (so the test above can fail): plain Lightning gives l2 / k."""
    x, y = _data(64)
    start = Small().net
    with torch.no_grad():
        l2 = float(F.cross_entropy(start(x[32:]), y[32:]))
    model = Small()
    _fit(model, x, y, 32, accumulate_grad_batches=2)
    assert model.optimizers().optimizer.global_state["f_t"] == pytest.approx(l2 / 2, rel=1e-6)


def test_bpgrad_mixin_refuses_a_hook_override_without_super():
    class NoSuper(SmallBP):
        def on_train_batch_end(self, outputs, batch, batch_idx):  # forgets super()
            pass

    x, y = _data(64)
    with pytest.raises(RuntimeError, match=r"super\(\).on_train_batch_end"):
        _fit(NoSuper(), x, y, 32, accumulate_grad_batches=2)


def test_bpgrad_clipping_warns_once_and_changes_nothing():
    x, y = _data(96)
    plain, clipped = SmallBP(), SmallBP()
    _fit(plain, x, y, 32)
    with pytest.warns(UserWarning, match="BPGrad normalises the gradient") as rec:
        _fit(clipped, x, y, 32, gradient_clip_val=0.01)
    assert sum("gradient_clip_val" in str(w.message) for w in rec) == 1
    for p, q in zip(plain.parameters(), clipped.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def _fp16_scaler_plugin():
    """Lightning's fp16 AMP with a gradient scaler, on CPU (``precision="16-mixed"`` on CPU
    becomes bf16 without a scaler; on a GPU it is this plugin): the scaler calls
    ``optimizer.step()`` without the closure."""
    from pytorch_lightning.plugins.precision import MixedPrecision

    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))


def test_bpgrad_plain_module_under_fp16_scaler_refuses_with_the_fix():
    x, y = _data(64)
    with pytest.raises(RuntimeError, match=r"gradient scaler.*BPGradMixin"):
        _fit(Small(), x, y, 32, plugins=[_fp16_scaler_plugin()])


@pytest.mark.parametrize("k", [1, 2])
def test_bpgrad_mixin_under_fp16_scaler_equals_plain_torch_amp(k):
    """The mixin passes f_t as step(loss=...), which Lightning's scaler forwards to BPGrad;
    the reference is plain torch AMP (fp16 autocast, GradScaler, scaler.step(opt, loss=loss))
    on the concatenated microbatches."""
    x, y = _data(96)
    model = SmallBP()
    ref = Small().net
    micro = 32 // k  # k microbatches of 32 // k rows: 32 rows per optimizer step
    _fit(model, x, y, micro, accumulate_grad_batches=k, plugins=[_fp16_scaler_plugin()])
    opt = bs.BPGrad(ref.parameters(), lipschitz=5.0)
    scaler = torch.amp.GradScaler("cpu")
    for i in range(0, 96, 32):
        opt.zero_grad()
        parts = [(x[j:j + micro], y[j:j + micro]) for j in range(i, i + 32, micro)]
        losses = []
        for xb, yb in parts:
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(ref(xb), yb)
            scaler.scale(loss / k).backward()
            losses.append(loss.detach().float())
        scaler.step(opt, loss=torch.stack(losses).mean())
        scaler.update()
    assert model.optimizers().optimizer.global_state["step"] == 3
    assert model.optimizers().optimizer.global_state["f_t"] == pytest.approx(
        opt.global_state["f_t"], rel=1e-5)
    for p, q in zip(model.net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_bpgrad_plain_module_runs_unchanged_under_bf16_mixed():
    """No scaler under bf16-mixed: Lightning passes the closure and BPGrad gets the loss."""
    x, y = _data(96)
    model = Small()
    _fit(model, x, y, 32, precision="bf16-mixed")
    st = model.optimizers().optimizer.global_state
    assert st["step"] == 3 and math.isfinite(st["f_t"]) and st["f_t"] > 0


# ---- PHT alternation ---------------------------------------------------------------------------
class PHTNet(L.PHTAlternationMixin, pl.LightningModule):
    def __init__(self, k):
        super().__init__()
        self.automatic_optimization = False
        self.net = bs.pht(bs.models.mlp(6, [16, 16], 3, seed=0))
        self.k = k

    def training_step(self, batch, batch_idx):
        self.alternation_step(self.net, *batch, inner_steps=self.k)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


@pytest.mark.parametrize("k", [1, 3])
def test_pht_alternation_counts_batches_and_equals_alternating(k):
    x, y = _data(96)
    model = PHTNet(k)
    ref = bs.pht(bs.models.mlp(6, [16, 16], 3, seed=0))
    trainer = pl.Trainer(max_epochs=2, **QUIET)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=32))
    assert trainer.global_step == 6  # 3 batches x 2 epochs, whatever K
    alt = bs.Alternating(ref, torch.optim.Adam(ref.parameters(), lr=1e-2), inner_steps=k)
    for _ in range(2):
        for i in range(0, 96, 32):
            alt.step(x[i:i + 32], y[i:i + 32])
    for p, q in zip(model.net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # same operations, same order
    assert 0 < model.pht_density <= 1


def test_pht_needs_manual_optimization():
    class Auto(PHTNet):
        def __init__(self):
            super().__init__(2)
            self.automatic_optimization = True

        def training_step(self, batch, batch_idx):
            self.alternation_step(self.net, *batch)
            return None

    x, y = _data(32)
    with pytest.raises(RuntimeError, match="automatic_optimization = False"):
        pl.Trainer(max_epochs=1, **QUIET).fit(Auto(), DataLoader(TensorDataset(x, y), 32))


def test_pht_mixin_refuses_data_parallelism(monkeypatch):
    """The docs say DDP is unsupported: a trainer with world_size > 1 is refused clearly
    (simulated: world_size patched to 2 on a one-process CPU trainer)."""
    monkeypatch.setattr(pl.Trainer, "world_size", property(lambda self: 2))
    x, y = _data(32)
    with pytest.raises(ValueError, match=r"does not support data parallelism \(trainer\."
                                         r"world_size=2\).*pht_alt under torchrun"):
        pl.Trainer(max_epochs=1, **QUIET).fit(PHTNet(1), DataLoader(TensorDataset(x, y), 32))


# ---- GDSolver callback ------------------------------------------------------------------------
class Digits(pl.LightningModule):
    def __init__(self, lr):
        super().__init__()
        self.net = bs.models.mlp(64, [32], 10, seed=0)
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        out = self(batch[0])
        self.log("val_loss", F.cross_entropy(out, batch[1]))
        self.log("val_acc", (out.argmax(1) == batch[1]).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _digits():
    d = bs.data.load_digits(seed=0)
    return (DataLoader(TensorDataset(d.x_train[:256], d.y_train[:256]), batch_size=64),
            DataLoader(TensorDataset(d.x_val, d.y_val), batch_size=512))


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_gdsolver_callback_plateau_schedule_acceptance_and_logging(tmp_path):
    """lr = 0: the validation loss changes only by accepted solves, so with patience 1 and
    backoff 2 the plateau solves fall on epochs 1 and 3 (patience 1, then 2), as
    GDSolverMethod.end_of_epoch schedules them."""
    train, val = _digits()
    cb = L.GDSolverCallback(module="net", patience=1, backoff=2.0, time_limit=10.0, n_points=32,
                            solves_per_run=0)
    model = Digits(lr=0.0)
    logger = pl.loggers.CSVLogger(tmp_path, name="run")
    trainer = pl.Trainer(max_epochs=5, callbacks=[cb], **{**QUIET, "logger": logger})
    trainer.fit(model, train, val)
    assert [ev["epoch"] for ev in cb.events] == [1, 3]
    assert all(ev["trigger"] == "plateau" for ev in cb.events)
    rows = _read_csv(Path(logger.log_dir) / "metrics.csv")
    by_epoch = {}
    for r in rows:
        for key, v in r.items():
            if v != "":
                by_epoch.setdefault(int(r["epoch"]), {})[key] = float(v)
    for ev in cb.events:
        assert ev["accepted"] == improves(ev["val_loss_before"], ev["val_acc_before"],
                                          ev["val_loss_after"], ev["val_acc_after"])
        logged = by_epoch[ev["epoch"]]
        assert logged["gdsolver/solved"] == 1.0
        # the solve runs before the epoch's validation: the module's own val_acc of that epoch
        # is the accuracy the callback measured for the kept head, on the same dataloader
        kept = ev["val_acc_after"] if ev["accepted"] else ev["val_acc_before"]
        assert logged["val_acc"] == pytest.approx(kept, abs=1e-6)
    assert by_epoch[4]["gdsolver/solves"] == 2.0
    assert by_epoch[4]["gdsolver/accepted"] == float(sum(ev["accepted"] for ev in cb.events))


def test_gdsolver_callback_refuses_bad_settings_and_missing_validation():
    with pytest.raises(ValueError, match="'lr'.*configure_optimizers"):
        L.GDSolverCallback(lr=0.1)
    with pytest.raises(ValueError, match="radius"):
        L.GDSolverCallback(radius=-1.0)
    train, _ = _digits()
    trainer = pl.Trainer(max_epochs=1, callbacks=[L.GDSolverCallback(module="net")], **QUIET)
    with pytest.raises(ValueError, match="validation dataloader"):
        trainer.fit(Digits(0.05), train)


def test_gdsolver_callback_exact_checkpoint_resume(tmp_path):
    train, val = _digits()

    def run(epochs, ckpt=None, save=False):
        cb = L.GDSolverCallback(module="net", solve_every=2, patience=50, time_limit=10.0,
                                n_points=32, solves_per_run=0)
        kw = {**QUIET, "enable_checkpointing": save, "default_root_dir": tmp_path}
        if save:
            kw["callbacks"] = [cb, pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck",
                                                                save_top_k=-1)]
        else:
            kw["callbacks"] = [cb]
        model = Digits(lr=0.05)
        pl.Trainer(max_epochs=epochs, **kw).fit(model, train, val, ckpt_path=ckpt)
        return model, cb

    full, cb_full = run(4)
    run(2, save=True)
    ckpt = next((tmp_path / "ck").glob("epoch=1-*.ckpt"))
    resumed, cb_res = run(4, ckpt=str(ckpt))
    assert [ev["epoch"] for ev in cb_full.events] == [1, 3]
    assert [ev["epoch"] for ev in cb_res.events] == [3]
    assert cb_res.solves == 2 and cb_res.accepted == cb_full.accepted
    # bounded by work, not seconds (issue 27: a resume used to differ by the radius when one
    # run's solve hit its time limit): the same solve, and nothing hit a time limit
    assert cb_res.events[0]["objective"] == cb_full.events[1]["objective"]
    assert all(ev["deterministic"] for ev in cb_full.events + cb_res.events)
    assert cb_full.time_limited == cb_res.time_limited == 0
    for p, q in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


# ---- the docs' examples ------------------------------------------------------------------------
def _example(name, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module(name)


@pytest.mark.parametrize("name, kw", [
    ("bpgrad_digits", {"accumulate": 2}),
    ("slbi_digits", {}),
    ("proxprop_digits", {}),
    ("gdsolver_digits", {"solve_every": 1}),
    ("pht_digits", {}),
])
def test_examples_train(name, kw, monkeypatch):
    mod = _example(name, monkeypatch)
    res = mod.main(epochs=2, limit_train_batches=6, **kw)
    losses = res["train_loss"]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert res["val_acc"] > 0.5  # chance is 0.1
    if name == "gdsolver_digits":
        assert [ev["epoch"] for ev in res["events"]] == [0, 1]
    if name == "pht_digits":
        assert res["trainer"].global_step == 12  # one step per batch, K = 5 inside
