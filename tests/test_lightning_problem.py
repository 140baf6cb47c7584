"""A LightningDataModule + LightningModule as a benchmark problem
(beyondsgd.integrations.lightning.problem)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("pytorch_lightning")

from beyondsgd.bench.problems.user import Problem, ProblemError  # noqa: E402
from beyondsgd.bench.run.runner import run_trial  # noqa: E402
from beyondsgd.integrations.lightning import (  # noqa: E402
    model_from_lightning,
    problem_from_datamodule,
)

SIZES = (64, 24, 24)


def tensors():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 6, generator=g) for n in SIZES]
    return [(x, x[:, :3].argmax(dim=1)) for x in xs]  # learnable labels in 0..2


class Data(pl.LightningDataModule):
    def __init__(self, batch_size=16, num_workers=0):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.prepared = False

    def prepare_data(self):
        self.prepared = True

    def setup(self, stage=None):
        if stage == "fit":
            self.train_set, self.val_set = (TensorDataset(*t) for t in tensors()[:2])
        elif stage == "test":
            self.test_set = TensorDataset(*tensors()[2])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          num_workers=self.num_workers)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=self.batch_size)


class NoTest(Data):
    test_dataloader = pl.LightningDataModule.test_dataloader


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


class LateNet(pl.LightningModule):
    """Builds its layers in configure_model, as large models do under Lightning."""

    def __init__(self):
        super().__init__()
        self.net = None

    def configure_model(self):
        if self.net is None:
            self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def test_datamodule_problem_trains_like_the_tensor_problem():
    torch.set_num_threads(1)
    dm = Data()
    prob = problem_from_datamodule("lit_dm", dm, Net, epochs=2)
    assert dm.prepared and isinstance(prob, Problem)
    assert [len(getattr(prob, s)) for s in ("train", "val", "test")] == list(SIZES)
    direct = Problem("lit_direct", model_from_lightning(Net), *tensors(), batch_size=16, epochs=2)
    a = run_trial(prob, "adam", seed=0, epochs=2)
    b = run_trial(direct, "adam", seed=0, epochs=2)
    assert a.status == b.status == "finished"
    losses = [e["train_loss"] for e in a.evals]
    assert len(losses) == 3 and all(v == v for v in losses)
    assert losses == [e["train_loss"] for e in b.evals]


def test_batch_size_and_workers_from_the_loaders():
    prob = problem_from_datamodule("lit_bs", Data(batch_size=8, num_workers=2), Net)
    assert (prob.batch_size, prob.num_workers) == (8, 2)
    prob = problem_from_datamodule("lit_bs", Data(batch_size=8, num_workers=2), Net,
                                   batch_size=32, num_workers=0)
    assert (prob.batch_size, prob.num_workers) == (32, 0)


def test_no_test_dataloader_is_one_clear_error():
    with pytest.raises(ValueError) as err:
        problem_from_datamodule("lit_notest", NoTest(), Net)
    msg = str(err.value)
    assert isinstance(err.value, ProblemError) and "\n" not in msg
    assert "NoTest" in msg and "test_dataloader" in msg and "test_from='val'" in msg
    prob = problem_from_datamodule("lit_notest", NoTest(), Net, test_from="val")
    assert prob.test is prob.val and "validation" in prob.description


def test_model_from_lightning_with_configure_model():
    make = model_from_lightning(LateNet)
    m0, m0b, m1 = make(0), make(0), make(1)
    assert isinstance(m0, LateNet) and m0.net is not None
    assert torch.equal(m0.net[0].weight, m0b.net[0].weight)
    assert not torch.equal(m0.net[0].weight, m1.net[0].weight)
    assert make(0)(torch.zeros(2, 6)).shape == (2, 3)
    inner = model_from_lightning(LateNet, attr="net")(0)
    assert isinstance(inner, nn.Sequential) and torch.equal(inner[0].weight, m0.net[0].weight)
    prob = problem_from_datamodule("lit_late", Data(), make, epochs=1)
    res = run_trial(prob, "adam", seed=0, epochs=1)  # one short epoch may learn too little
    assert res.status in ("finished", "collapsed") and len(res.evals) == 2
