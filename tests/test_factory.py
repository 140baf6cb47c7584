"""``beyondsgd.create_optimizer``: every name hands back what its method needs, and it trains one
step on a tiny model; unknown names and keywords are one ValueError listing the accepted ones,
and bad values are refused before a model is converted."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import beyondsgd as bs
from beyondsgd import factory
from beyondsgd.models import mlp

torch.set_num_threads(1)


def _net() -> nn.Module:
    return mlp(4, [8], 3, seed=0)


def _data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _one_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    x, y = _data()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    w0 = _flat(model)
    opt.step(closure)
    assert not torch.equal(_flat(model), w0)
    assert torch.isfinite(_flat(model)).all()


def _types(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules()]


def test_exported_and_documented():
    assert bs.create_optimizer is factory.create_optimizer
    assert "create_optimizer" in bs.__all__
    assert doctest.testmod(factory).failed == 0
    assert set(factory.NAMES) == {"bpgrad", "slbi", "proxprop", "gdsolver", "pht", "sgd",
                                  "momentum", "adam", "adamw", "adagrad", "adadelta", "rmsprop"}


# --------------------------------------------------------------------------------------------
# Each name
# --------------------------------------------------------------------------------------------
def test_bpgrad():
    net = _net()
    opt = bs.create_optimizer("bpgrad", net)
    assert type(opt) is bs.BPGrad
    assert opt.param_groups[0]["lr"] == pytest.approx(1 / 10)  # the benchmark's lipschitz=10
    _one_step(net, opt)
    opt = bs.create_optimizer("BPGrad", _net(), lr=0.2, momentum=0.5, maximize=False)
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]) == (0.2, 0.5)
    assert bs.create_optimizer("bpgrad", _net(), lipschitz=4.0).param_groups[0]["lr"] == 0.25


def test_slbi_layer_groups():
    net = _net()
    opt = bs.create_optimizer("slbi", net, lr=0.05, lam=0.5)
    assert type(opt) is bs.SLBI
    want = bs.slbi_param_groups(net)
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == \
        [[id(p) for p in g["params"]] for g in want]
    assert [g["structure"] for g in opt.param_groups] == [g["structure"] for g in want]
    assert all(g["lr"] == 0.05 and g["lambda"] == 0.5 for g in opt.param_groups)
    _one_step(net, opt)
    # the layer options reach slbi_param_groups
    net = _net()
    opt = bs.create_optimizer("slbi", net, linear="neuron", output=None)
    want = bs.slbi_param_groups(net, linear="neuron", output=None)
    assert [g["structure"] for g in opt.param_groups] == [g["structure"] for g in want]


def test_slbi_flat_structure():
    net = _net()
    opt = bs.create_optimizer("slbi", net, structure="auto_neuron")
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["structure"] == "auto_neuron"
    assert opt.param_groups[0]["params"] == list(net.parameters())
    _one_step(net, opt)


def test_proxprop_adam_default_converts_in_place():
    net = _net()
    params = list(net.parameters())
    opt = bs.create_optimizer("proxprop", net)
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == 1e-3
    assert opt.param_groups[0]["params"] == params  # same parameter objects
    prox = [m for m in net.modules() if isinstance(m, bs.ProxLinear)]
    assert prox and all(m.prox.tau_theta == 1.0 for m in prox)
    _one_step(net, opt)
    # the output layer keeps its explicit step (decided by the first forward call)
    names = _types(net)
    assert names.count("ProxLinear") == 1 and names.count("Linear") == 1
    net = _net()
    bs.create_optimizer("proxprop", net, output_layer="3")
    assert _types(net).count("Linear") == 1 and isinstance(net[3], nn.Linear)


def test_proxprop_sgd_recipe_and_other_inner():
    net = _net()
    opt = bs.create_optimizer("proxprop", net, inner="sgd", cg_iters=2)
    g = opt.param_groups[0]
    assert type(opt) is torch.optim.SGD
    assert (g["lr"], g["momentum"], g["nesterov"]) == (1.0, 0.95, True)  # paper Sec. 5.1
    prox = [m for m in net.modules() if isinstance(m, bs.ProxLinear)]
    assert prox and all(m.prox.tau_theta == 0.05 and m.prox.cg_iters == 2 for m in prox)
    _one_step(net, opt)
    net = _net()
    opt = bs.create_optimizer("proxprop", net, inner="rmsprop", lr=1e-3, alpha=0.9,
                              tau_theta=0.5)
    assert type(opt) is torch.optim.RMSprop and opt.param_groups[0]["alpha"] == 0.9
    assert all(m.prox.tau_theta == 0.5 for m in net.modules() if isinstance(m, bs.ProxLinear))
    _one_step(net, opt)


def test_gdsolver():
    net = _net()
    solver = bs.create_optimizer("gdsolver", net, radius=0.1, time_limit=5.0, seed=3)
    assert type(solver) is bs.GDSolver and solver.model is net
    x, y = _data(64)
    event = solver.step(x[:48], y[:48], x[48:], y[48:])
    assert isinstance(event, dict) and "status" in event


def test_pht_converts_and_alternates():
    net = _net()
    alt = bs.create_optimizer("pht", net, tau=0.05, loss="cross_entropy")
    assert type(alt) is bs.Alternating and alt.model is net
    assert "ReLU" not in _types(net) and "PositiveHardThreshold" in _types(net)
    assert type(alt.optimizer) is torch.optim.Adam and alt.optimizer.param_groups[0]["lr"] == 1e-3
    assert alt.inner_steps == 5
    x, y = _data()
    w0 = _flat(net)
    loss = alt.step(x, y)
    assert torch.isfinite(torch.as_tensor(loss)).all() and not torch.equal(_flat(net), w0)
    alt = bs.create_optimizer("pht", _net(), inner="momentum", lr=0.01, inner_steps=2)
    g = alt.optimizer.param_groups[0]
    assert type(alt.optimizer) is torch.optim.SGD and (g["lr"], g["momentum"]) == (0.01, 0.9)
    assert alt.inner_steps == 2


@pytest.mark.parametrize("name,cls,defaults", [
    ("sgd", torch.optim.SGD, {"lr": 0.1, "momentum": 0}),
    ("momentum", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": False}),
    ("adam", torch.optim.Adam, {"lr": 1e-3}),
    ("adamw", torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 1e-2}),
    ("adagrad", torch.optim.Adagrad, {"lr": 1e-2}),
    ("adadelta", torch.optim.Adadelta, {"lr": 1.0}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 1e-3}),
])
def test_torch_baselines(name: str, cls: type, defaults: dict):
    net = _net()
    opt = bs.create_optimizer(name, net)
    assert type(opt) is cls
    assert {k: opt.param_groups[0][k] for k in defaults} == defaults
    _one_step(net, opt)
    opt = bs.create_optimizer(name, _net(), lr=0.02, weight_decay=1e-4)
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]) == (0.02, 1e-4)


def test_accepted_kwargs():
    assert {"lipschitz", "lr", "rho", "momentum", "maximize"} <= set(
        factory.accepted_kwargs("bpgrad"))
    assert {"lam", "nu", "structure", "conv", "linear", "output"} <= set(
        factory.accepted_kwargs("slbi"))
    assert {"tau_theta", "solver", "inner", "betas"} <= set(factory.accepted_kwargs("proxprop"))
    assert "nesterov" in factory.accepted_kwargs("proxprop", inner="sgd")
    assert {"tau", "inner_steps", "loss", "inner", "lr"} <= set(factory.accepted_kwargs("pht"))
    assert "learnable" not in factory.accepted_kwargs("pht")  # Alternating holds tau fixed
    assert {"radius", "time_limit"} <= set(factory.accepted_kwargs("gdsolver"))


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------
def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match="unknown name 'lbfgs'; accepted: bpgrad, slbi, "
                                         "proxprop, gdsolver, pht, sgd, momentum"):
        bs.create_optimizer("lbfgs", _net())
    with pytest.raises(ValueError, match="unknown name"):
        bs.create_optimizer(None, _net())


@pytest.mark.parametrize("name,bad,listed", [
    ("adam", "momentum", "betas"),
    ("bpgrad", "eta", "lipschitz"),
    ("slbi", "lambda_", "nu"),
    ("proxprop", "nesterov", "tau_theta"),  # Adam (the default inner) has no nesterov
    ("gdsolver", "lr", "radius"),
    ("pht", "learnable", "inner_steps"),
])
def test_unknown_keyword_lists_the_accepted(name: str, bad: str, listed: str):
    net = _net()
    with pytest.raises(ValueError, match=f"unknown keyword argument.*{bad}.*accepted: ") as e:
        bs.create_optimizer(name, net, **{bad: 1})
    assert listed in str(e.value)
    assert "ReLU" in _types(net) and "ProxLinear" not in _types(net)  # model untouched


def test_bad_values_refused_before_conversion():
    net = _net()
    with pytest.raises(ValueError):
        bs.create_optimizer("proxprop", net, lr=-1.0)
    with pytest.raises(ValueError, match="tau_theta"):
        bs.create_optimizer("proxprop", net, tau_theta=0.0)
    assert "ProxLinear" not in _types(net)
    with pytest.raises(ValueError, match="inner_steps"):
        bs.create_optimizer("pht", net, inner_steps=0)
    with pytest.raises(ValueError, match="inner="):
        bs.create_optimizer("pht", net, inner="lbfgs")
    assert "ReLU" in _types(net) and "PositiveHardThreshold" not in _types(net)


def test_other_bad_inputs():
    with pytest.raises(TypeError, match="nn.Module"):
        bs.create_optimizer("sgd", list(_net().parameters()))
    with pytest.raises(ValueError, match="not both"):
        bs.create_optimizer("slbi", _net(), structure="element", conv="filter")
    with pytest.raises(ValueError, match="not both"):
        bs.create_optimizer("bpgrad", _net(), lr=0.1, lipschitz=5.0)
    with pytest.raises(ValueError, match="nu"):
        bs.create_optimizer("slbi", _net(), nu=0.0)
