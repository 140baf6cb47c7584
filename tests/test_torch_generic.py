"""torch's generic optimizer checks (the cases ``TestOptimRenewed`` in torch's own test suite runs
for every ``torch.optim`` optimizer), re-stated in this project's words for BPGrad and SLBI.

Each optimizer gets an ``Info`` entry (our own small counterpart of torch's ``OptimizerInfo``):
the class, how a user hands it the parameters, several constructor inputs (like torch's
``optim_inputs``), the bad arguments it must refuse, and which checks are expected to fail for a
known reason (``pending``: another change has not landed yet; ``bugs``: an open bug). Those are
non-strict xfails, so they turn into XPASS once fixed and the mark can be removed.

Already covered by ``tests/test_optim_contract.py`` and not repeated here: deepcopy/pickle round
trips that step bit-identically, mid-run ``state_dict`` continuation for one configuration per
row, exact per-group hyperparameters, tensor ``lr`` for one configuration, step pre/post hooks,
every ``torch.optim.lr_scheduler``, ``zero_grad`` and a parameter that never gets a gradient.
Here: every constructor input goes the right direction; param groups with schedulers, per-group
lr and weight decay go the right direction; tensor lr for every input; a step without gradients
and a step with zero gradients; ``repr``; deterministic state dicts; ``torch.save`` /
``weights_only=True`` round trips for every input; older state dicts (keys added later
missing); state_dict, load_state_dict and global step hooks, and step pre-hooks that rewrite the
arguments; deepcopy of every public attribute; ``named_parameters``; groups kept as given;
``maximize``; ``foreach``; bad arguments; ``set_default_dtype(float64)``; complex parameters;
gradients never modified; mixed dtypes; sparse gradients refused; no empty state entries.
The CUDA-only and flag-specific cases of torch's suite are listed in ``NOT_APPLICABLE``.

Float64, tiny models, one thread: comparisons are exact (``torch.equal``) wherever the same float
operations run in the same order.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler as S

import beyondsgd as bs
from test_optim_contract import _assert_same, _assert_same_run  # one exact-equality helper

torch.set_num_threads(1)
DT = torch.float64
Batch = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Tiny models and data
# --------------------------------------------------------------------------------------------
def _mlp(dtype: torch.dtype | None = DT) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    return m if dtype is None else m.to(dtype)


class _Mixed(nn.Module):
    """First layer float32, second float64."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(3, 4).float()
        self.b = nn.Linear(4, 2).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x.float())).double())


class _Free(nn.Module):
    """Free parameters (complex or real): ``w`` (2-D complex / 3-D real view) and ``b``."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None = None) -> None:
        super().__init__()
        self.w = nn.Parameter(w)
        self.b = None if b is None else nn.Parameter(b)


def _batch(seed: int = 1, n: int = 16) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=DT), torch.randn(n, 2, generator=g, dtype=DT)


def _batches(k: int, seed: int = 1) -> list[Batch]:
    return [_batch(seed + i) for i in range(k)]


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().to(DT).reshape(-1) for p in model.parameters()])


def _closure(model: nn.Module, opt: torch.optim.Optimizer, batch: Batch, sign: float = 1.0,
             record: list | None = None) -> Callable[[], torch.Tensor]:
    """Zero the gradients, ``sign * mse``, backward, return it (BPGrad needs the loss value);
    ``record`` gets a copy of the gradients the step will see."""
    x, y = batch

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = sign * F.mse_loss(model(x), y)
        loss.backward()
        if record is not None:
            record.append([None if p.grad is None else p.grad.clone()
                           for p in model.parameters()])
        return loss

    return closure


def _run(model: nn.Module, opt: torch.optim.Optimizer, batches: list[Batch],
         sign: float = 1.0) -> list[torch.Tensor]:
    traj = []
    for b in batches:
        opt.step(_closure(model, opt, b, sign))
        traj.append(_flat(model).clone())
    return traj


def _loss(model: nn.Module, batch: Batch) -> float:
    with torch.no_grad():
        return float(F.mse_loss(model(batch[0]), batch[1]))


def _save_load(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _weights_and_rest(model: nn.Module) -> list[dict[str, Any]]:
    """Two plain groups: the weights (2+ dims), then the rest."""
    ps = list(model.parameters())
    return [{"params": [p for p in ps if p.dim() > 1]},
            {"params": [p for p in ps if p.dim() <= 1]}]


def _names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def _as_named(model: nn.Module, params: Any) -> Any:
    """The same parameters (flat or in groups) as ``(name, parameter)`` pairs."""
    names = _names(model)
    params = list(params)
    if params and isinstance(params[0], dict):
        return [{**g, "params": [(names[id(p)], p) for p in g["params"]]} for g in params]
    return [(names[id(p)], p) for p in params]


# --------------------------------------------------------------------------------------------
# The entries
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Input:
    """Constructor keyword arguments (besides the parameters) and a short name."""

    desc: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class BadInput:
    """Arguments the optimizer must refuse: ``build(model)`` raises ``error`` whose message
    contains ``match`` (the argument's name). ``pending``: why it does not raise yet."""

    desc: str
    build: Callable[[nn.Module], Any]
    error: type[Exception] | tuple[type[Exception], ...]
    match: str
    pending: str | None = None


@dataclass(frozen=True)
class Info:
    """One optimizer, as a user builds it: ``params(model)`` is what they pass, ``groups(model)``
    two or more groups for the param-group checks. ``pending`` / ``bugs``: test name -> reason
    (non-strict xfail). ``later_keys``: param-group keys added after the first release, with the
    value an older state dict implies. ``extra``: keyword arguments every input gets."""

    id: str
    cls: type[torch.optim.Optimizer]
    params: Callable[[nn.Module], Any]
    groups: Callable[[nn.Module], list[dict[str, Any]]]
    inputs: tuple[Input, ...]
    bad: tuple[BadInput, ...]
    later_keys: dict[str, Any]
    pending: dict[str, str] = field(default_factory=dict)
    bugs: dict[str, str] = field(default_factory=dict)
    per_param: bool = False  # each parameter's update depends on its own gradient only

    def make(self, model: nn.Module, inp: Input, params: Any = None,
             **overrides: Any) -> torch.optim.Optimizer:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # SLBI: "no parameter has a Gamma"
            return self.cls(self.params(model) if params is None else params,
                            **{**inp.kwargs, **overrides})


def _params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.parameters())


def _slbi_groups(model: nn.Module) -> list[dict[str, Any]]:
    return bs.slbi_param_groups(model)


def _torch_bad(make: Callable[..., Any]) -> tuple[BadInput, ...]:
    """What torch's base class refuses for any optimizer, and ``fused=True`` (no fused kernel:
    refused by the signature or by a check). ``make(params, **kwargs)`` builds the optimizer."""
    return (
        BadInput("one-tensor-as-params", lambda m: make(m[0].weight), TypeError, "iterable"),
        BadInput("empty-params", lambda m: make([]), ValueError, "empty"),
        BadInput("param-in-two-groups",
                 lambda m: make([{"params": [m[0].weight]}, {"params": [m[0].weight]}]),
                 ValueError, "more than one"),
        BadInput("fused", lambda m: make(m.parameters(), fused=True), (TypeError, ValueError),
                 "fused"),
    )


def _bp_bad(extra: dict[str, Any]) -> tuple[BadInput, ...]:
    B = bs.BPGrad
    kw = {"lr": 0.2, **extra}
    return (
        BadInput("lr<0", lambda m: B(m.parameters(), **{**kw, "lr": -1.0}), ValueError, "lr"),
        BadInput("lipschitz=0", lambda m: B(m.parameters(), lipschitz=0.0), ValueError,
                 "lipschitz"),
        BadInput("lr-and-lipschitz", lambda m: B(m.parameters(), lr=0.1, lipschitz=5.0),
                 ValueError, "not both"),
        BadInput("no-lr", lambda m: B(m.parameters()), ValueError, "lipschitz"),
        BadInput("rho>1", lambda m: B(m.parameters(), **kw, rho=1.5), ValueError, "rho"),
        BadInput("momentum=1", lambda m: B(m.parameters(), **{**kw, "momentum": 1.0}),
                 ValueError, "momentum"),
        BadInput("weight_decay<0", lambda m: B(m.parameters(), **kw, weight_decay=-1e-3),
                 ValueError, "weight_decay"),
        BadInput("momentum_form", lambda m: B(m.parameters(), **kw, momentum_form="nesterov"),
                 ValueError, "momentum_form"),
        BadInput("loss_estimate", lambda m: B(m.parameters(), **kw, loss_estimate="ema"),
                 ValueError, "loss_estimate"),
        BadInput("tensor-lr-2-values",
                 lambda m: B(m.parameters(), **{**kw, "lr": torch.tensor([0.1, 0.2])}),
                 ValueError, "lr"),
        BadInput("group-rho>1",
                 lambda m: B([{"params": list(m.parameters()), "rho": 2.0}], **kw),
                 ValueError, "rho"),
        BadInput("global-setting-differs",
                 lambda m: B([{"params": [m[0].weight]},
                              {"params": [m[0].bias], "loss_estimate": "running_mean"}], **kw),
                 ValueError, "loss_estimate"),
        BadInput("positional-after-params", lambda m: B(m.parameters(), 10.0), TypeError,
                 "keyword"),
        BadInput("maximize-not-bool", lambda m: B(m.parameters(), **kw, maximize="yes"),
                 (ValueError, TypeError), "maximize"),
        BadInput("foreach-not-bool", lambda m: B(m.parameters(), **kw, foreach="yes"),
                 (ValueError, TypeError), "foreach"),
        *_torch_bad(lambda ps, **k: B(ps, **{**kw, **k})),
    )


def _slbi_bad(params: Callable[[nn.Module], Any]) -> tuple[BadInput, ...]:
    L = bs.SLBI

    def group_with(**kv: Any) -> Callable[[nn.Module], Any]:
        # every group the user passes carries the bad value
        def build(m: nn.Module) -> Any:
            ps = params(m)
            groups = ps if isinstance(ps[0], dict) else [{"params": ps}]
            return L([{**g, **kv} for g in groups])
        return build

    def added(**kv: Any) -> Callable[[nn.Module], Any]:
        def build(m: nn.Module) -> Any:
            opt = L([m[0].weight])
            opt.add_param_group({"params": [m[0].bias, m[2].weight, m[2].bias], **kv})
        return build

    return (
        BadInput("lr<0", lambda m: L(params(m), lr=-1.0), ValueError, "lr"),
        BadInput("kappa=0", lambda m: L(params(m), kappa=0.0), ValueError, "kappa"),
        BadInput("nu=0", lambda m: L(params(m), nu=0.0), ValueError, "nu"),
        BadInput("lam<0", lambda m: L(params(m), lam=-1.0), ValueError, "lam"),
        BadInput("momentum<0", lambda m: L(params(m), momentum=-0.1), ValueError, "momentum"),
        BadInput("dampening<0", lambda m: L(params(m), dampening=-0.1), ValueError,
                 "dampening"),
        BadInput("weight_decay<0", lambda m: L(params(m), weight_decay=-1e-3), ValueError,
                 "weight_decay"),
        BadInput("nesterov-no-momentum", lambda m: L(params(m), momentum=0.0, nesterov=True),
                 ValueError, "nesterov"),
        BadInput("coupling", lambda m: L(params(m), coupling="both"), ValueError, "coupling"),
        BadInput("lambda_scaling", lambda m: L(params(m), lambda_scaling="size"), ValueError,
                 "lambda_scaling"),
        BadInput("structure", lambda m: L(params(m), structure="row"), ValueError, "structure"),
        BadInput("filter-on-2d", lambda m: L([{"params": [m[0].weight], "structure": "filter"}]),
                 ValueError, "filter"),
        BadInput("tensor-lr-2-values", lambda m: L(params(m), lr=torch.tensor([0.1, 0.2])),
                 ValueError, "lr"),
        BadInput("group-lambda<0", group_with(**{"lambda": -1.0}), ValueError, "lambda"),
        BadInput("group-lr<0", group_with(lr=-1.0), ValueError, "lr"),
        BadInput("group-nu=0", group_with(nu=0.0), ValueError, "nu"),
        BadInput("group-kappa=0", group_with(kappa=0.0), ValueError, "kappa"),
        BadInput("group-momentum<0", group_with(momentum=-0.5), ValueError, "momentum"),
        BadInput("group-nesterov-no-momentum", group_with(momentum=0.0, nesterov=True),
                 ValueError, "nesterov"),
        BadInput("added-group-lr<0", added(lr=-1.0), ValueError, "lr"),
        BadInput("maximize-not-bool", lambda m: L(params(m), maximize="yes"),
                 (ValueError, TypeError), "maximize"),
        BadInput("foreach-not-bool", lambda m: L(params(m), foreach="yes"),
                 (ValueError, TypeError), "foreach"),
        *_torch_bad(L),
    )


# BPGrad: the global state (step, f_min, ...) lives under the first parameter; "diverged" was
# added to it later (state saved before it has no such key).
_BP_LATER = {"maximize": False, "foreach": None, "nominal_batch_size": None}
_BP_BUGS: dict[str, str] = {}
_SLBI_BUGS: dict[str, str] = {}
_SLBI_LATER = {"maximize": False, "foreach": None, "weight_decay_1d": False}

INFOS = [
    Info(
        "bpgrad-momentum", bs.BPGrad, _params, _weights_and_rest,
        inputs=(
            Input("lr", {"lr": 0.05}),
            Input("lipschitz-rho0", {"lipschitz": 25.0, "rho": 0.0}),
            Input("official-form", {"lr": 0.05, "momentum": 0.5, "momentum_form": "official"}),
            Input("weight-decay", {"lr": 0.05, "weight_decay": 1e-2}),
            Input("running-mean", {"lr": 0.05, "rho": 0.5, "loss_estimate": "running_mean"}),
        ),
        bad=_bp_bad({}), later_keys=_BP_LATER, bugs=_BP_BUGS,
    ),
    Info(
        "bpgrad-no-momentum", bs.BPGrad, _params, _weights_and_rest,
        inputs=(
            Input("lr", {"lr": 0.2, "momentum": 0.0}),
            Input("lipschitz-rho0", {"lipschitz": 5.0, "rho": 0.0, "momentum": 0.0}),
            Input("weight-decay", {"lr": 0.2, "momentum": 0.0, "weight_decay": 1e-2}),
        ),
        bad=_bp_bad({"momentum": 0.0}), later_keys=_BP_LATER, bugs=_BP_BUGS,
    ),
    Info(
        "slbi-auto", bs.SLBI, _params, _weights_and_rest,
        inputs=(
            Input("official", {}),
            Input("small-lambda", {"lr": 0.05, "nu": 5.0, "lam": 0.002}),
            Input("auto-neuron", {"structure": "auto_neuron", "lam": 0.002, "nu": 5.0}),
            Input("nesterov-decay", {"nesterov": True, "weight_decay": 1e-3,
                                     "weight_decay_1d": True, "lam": 0.002}),
            Input("paper-coupling", {"coupling": "paper", "kappa": 2.0, "lr": 0.02,
                                     "lam": 0.01}),
            Input("element-no-momentum", {"structure": "element", "momentum": 0.0, "nu": 5.0,
                                          "lam": 0.005}),
            Input("dampening-sqrt", {"dampening": 0.1, "lambda_scaling": "sqrt_size",
                                     "lam": 0.002, "kappa_uncoupled": False, "kappa": 2.0,
                                     "lr": 0.05}),
        ),
        bad=_slbi_bad(_params), later_keys=_SLBI_LATER, per_param=True, bugs=_SLBI_BUGS,
    ),
    Info(
        "slbi-layer-groups", bs.SLBI, _slbi_groups, _slbi_groups,
        inputs=(
            Input("official", {}),
            Input("small-lambda", {"lr": 0.05, "nu": 5.0, "lam": 0.002}),
            Input("paper-nesterov", {"coupling": "paper", "nesterov": True, "lr": 0.02,
                                     "lam": 0.01, "weight_decay": 1e-3}),
            Input("uncoupled-nu-inf", {"nu": math.inf, "momentum": 0.0}),
        ),
        bad=_slbi_bad(_slbi_groups), later_keys=_SLBI_LATER, per_param=True,
        bugs=_SLBI_BUGS,
    ),
]

def _marks(info: Info, test: str) -> list:
    if test in info.pending:
        return [pytest.mark.xfail(strict=False, reason=info.pending[test])]
    if test in info.bugs:
        return [pytest.mark.xfail(strict=False, reason=info.bugs[test])]
    return []


def _by_info(test: str) -> list:
    return [pytest.param(i, id=i.id, marks=_marks(i, test)) for i in INFOS]


def _by_input(test: str) -> list:
    return [pytest.param(i, inp, id=f"{i.id}-{inp.desc}", marks=_marks(i, test))
            for i in INFOS for inp in i.inputs]


# --------------------------------------------------------------------------------------------
# Goes the right direction
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("info,inp", _by_input("test_goes_right_direction"))
def test_goes_right_direction(info: Info, inp: Input):
    model = _mlp()
    opt = info.make(model, inp)
    batch = _batch()
    before = _loss(model, batch)
    _run(model, opt, [batch] * 10)
    after = _loss(model, batch)
    assert math.isfinite(after) and after < before, (before, after)


SCHEDS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": lambda o: S.StepLR(o, step_size=3, gamma=0.5),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.9),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1),
}


@pytest.mark.parametrize("sched", sorted(SCHEDS))
@pytest.mark.parametrize("info", _by_info("test_param_groups_with_lr_scheduler"))
def test_param_groups_with_lr_scheduler(info: Info, sched: str):
    """Two groups with different lrs, a scheduler stepping every iteration: the loss falls."""
    inp = info.inputs[0]
    model = _mlp()
    groups = info.groups(model)
    base = inp.kwargs.get("lr", 0.1 if info.cls is bs.SLBI else None)
    if base is not None:
        groups[0]["lr"] = base / 2
    opt = info.make(model, inp, params=groups)
    s = SCHEDS[sched](opt)
    batch = _batch()
    before = _loss(model, batch)
    for _ in range(10):
        loss = opt.step(_closure(model, opt, batch))
        s.step(float(loss.detach())) if isinstance(s, S.ReduceLROnPlateau) else s.step()
    assert _loss(model, batch) < before


@pytest.mark.parametrize("info,inp", _by_input("test_param_groups_lr"))
def test_param_groups_lr(info: Info, inp: Input):
    """A group with a smaller lr moves less on its first step, the loss still falls."""
    batch = _batch()
    runs = {}
    for name, scale in (("same", 1.0), ("smaller", 0.25)):
        model = _mlp()
        groups = info.groups(model)
        if "lr" in inp.kwargs or info.cls is bs.SLBI:
            groups[0]["lr"] = inp.kwargs.get("lr", 0.1) * scale
        else:
            groups[0]["lipschitz"] = inp.kwargs["lipschitz"] / scale
        opt = info.make(model, inp, params=groups)
        w0 = [p.detach().clone() for p in groups[0]["params"]]
        before = _loss(model, batch)
        opt.step(_closure(model, opt, batch))
        runs[name] = sum(float((p.detach() - w).norm()) for p, w in zip(groups[0]["params"], w0))
        _run(model, opt, [batch] * 9)
        assert _loss(model, batch) < before
    assert runs["smaller"] < runs["same"]


@pytest.mark.parametrize("info,inp", _by_input("test_param_groups_weight_decay"))
def test_param_groups_weight_decay(info: Info, inp: Input):
    """Weight decay on the weight group only: the loss falls and the decayed group ends up
    different from an undecayed run, the other group's first step is unchanged."""
    batch = _batch()
    ends = []
    for wd in (0.0, 0.05):
        model = _mlp()
        groups = info.groups(model)
        groups[0]["weight_decay"] = wd
        groups[0]["weight_decay_1d"] = True  # SLBI: decay 1-D parameters of the group too
        for g in groups[1:]:
            g["weight_decay"] = 0.0
        if info.cls is bs.BPGrad:
            for g in groups:
                g.pop("weight_decay_1d", None)
        opt = info.make(model, inp, params=groups)
        before = _loss(model, batch)
        opt.step(_closure(model, opt, batch))
        first_rest = [p.detach().clone() for g in groups[1:] for p in g["params"]]
        _run(model, opt, [batch] * 9)
        assert _loss(model, batch) < before
        ends.append(([p.detach().clone() for p in groups[0]["params"]], first_rest))
    assert not all(torch.equal(a, b) for a, b in zip(ends[0][0], ends[1][0]))
    # BPGrad: decay is added after the (global) normalisation, so undecayed groups see the same
    # first step; SLBI: per-parameter updates
    assert all(torch.equal(a, b) for a, b in zip(ends[0][1], ends[1][1]))


# --------------------------------------------------------------------------------------------
# Tensor lr (every input; test_optim_contract checks one configuration per row)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("info,inp", _by_input("test_tensor_lr"))
def test_tensor_lr(info: Info, inp: Input):
    kw = dict(inp.kwargs)
    if "lipschitz" in kw:
        kw["lr"] = 1.0 / kw.pop("lipschitz")
    lr = kw.get("lr", 0.1)
    ma, mb = _mlp(), _mlp()
    oa = info.make(ma, Input(inp.desc, kw))
    ob = info.make(mb, Input(inp.desc, {**kw, "lr": torch.tensor(lr, dtype=DT)}))
    batches = _batches(4)
    _assert_same_run(_run(ma, oa, batches), _run(mb, ob, batches))


# --------------------------------------------------------------------------------------------
# Steps without gradients / with zero gradients
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("info,inp", _by_input("test_step_without_gradients_is_a_noop"))
def test_step_without_gradients_is_a_noop(info: Info, inp: Input):
    model = _mlp()
    opt = info.make(model, inp)
    w0 = _flat(model)
    for _ in range(2):
        opt.step(lambda: torch.tensor(1.0, dtype=DT))  # a loss, but no gradient anywhere
    assert torch.equal(_flat(model), w0)
    for st in opt.state.values():  # no per-parameter buffers were made
        assert not {"momentum_buffer", "V", "Gamma"} & set(st)


def _slbi_zero_grad_expected(opt: torch.optim.Optimizer, p: torch.Tensor,
                             w: torch.Tensor) -> torch.Tensor:
    """SLBI's first step from W with a zero gradient (Γ = V = 0): the coupling pulls W towards
    Γ = 0 and weight decay shrinks it; nothing else moves it."""
    g = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
    coupled_struct = "V" in opt.state.get(p, {})
    lr = float(g["lr"])
    s = lr * g["kappa"] if (coupled_struct or g["kappa_uncoupled"]) else lr
    inv_nu = 1.0 / g["nu"] if coupled_struct and g["nu"] != math.inf else 0.0
    wd = g["weight_decay"] if (p.dim() > 1 or g.get("weight_decay_1d", False)) else 0.0
    mom = g["momentum"]
    m = 1.0 + mom if (g["nesterov"] and mom != 0) else 1.0  # first step: buffer = direction
    if g["coupling"] == "paper":
        return w - s * m * (wd + inv_nu) * w
    return w - s * inv_nu * w - s * m * wd * w


@pytest.mark.parametrize("info,inp", _by_input("test_step_with_zero_gradients"))
def test_step_with_zero_gradients(info: Info, inp: Input):
    """BPGrad: a zero gradient is a stationary point, the step is skipped (weight decay
    included). SLBI: not a no-op where W is coupled to Γ (the coupling term pulls W towards Γ);
    the parameters move exactly as the coupling and weight decay say, and uncoupled parameters
    without weight decay stay put."""
    model = _mlp()
    opt = info.make(model, inp)
    w0 = [p.detach().clone() for p in model.parameters()]

    def closure() -> torch.Tensor:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        return torch.tensor(0.5, dtype=DT)

    opt.step(closure)
    for p, w in zip(model.parameters(), w0):
        if info.cls is bs.BPGrad:
            assert torch.equal(p.detach(), w)
        else:
            torch.testing.assert_close(p.detach(), _slbi_zero_grad_expected(opt, p, w),
                                       rtol=1e-14, atol=1e-16)
    if info.cls is bs.BPGrad:
        assert not any("momentum_buffer" in st for st in opt.state.values())


# --------------------------------------------------------------------------------------------
# repr, state dicts
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("info", _by_info("test_can_be_printed"))
def test_can_be_printed(info: Info):
    model = _mlp()
    opt = info.make(model, info.inputs[0])
    for _ in range(2):
        text = repr(opt)
        assert text.startswith(info.cls.__name__) and "Parameter Group 0" in text
        for key in opt.defaults:
            assert key in text, key
        assert str(opt) == text
        _run(model, opt, _batches(1))


@pytest.mark.parametrize("info,inp", _by_input("test_state_dict_deterministic"))
def test_state_dict_deterministic(info: Info, inp: Input):
    batches = _batches(3)
    runs = []
    for _ in range(2):
        model = _mlp()
        opt = info.make(model, inp)
        _run(model, opt, batches)
        runs.append((_flat(model), opt.state_dict()))
        _assert_same(opt.state_dict(), opt.state_dict())
    assert torch.equal(runs[0][0], runs[1][0])
    _assert_same(runs[0][1], runs[1][1])


@pytest.mark.parametrize("info,inp", _by_input("test_save_load_weights_only"))
def test_save_load_weights_only(info: Info, inp: Input):
    """``torch.save`` / ``torch.load(weights_only=True)`` mid-run, loaded into an optimizer built
    with other hyperparameters (the loaded ones win): it continues bit-identically."""
    model = _mlp()
    opt = info.make(model, inp)
    _run(model, opt, _batches(3))
    saved = _save_load({"model": model.state_dict(), "opt": opt.state_dict()})
    m2 = _mlp()
    m2.load_state_dict(saved["model"])
    o2 = info.make(m2, inp, **({"momentum": 0.3} if info.cls is bs.SLBI else {"rho": 0.7}))
    o2.load_state_dict(saved["opt"])
    _assert_same(o2.state_dict(), opt.state_dict())
    later = _batches(3, seed=11)
    _assert_same_run(_run(model, opt, later), _run(m2, o2, later))


@pytest.mark.parametrize("info,inp", _by_input("test_load_older_state_dict"))
def test_load_older_state_dict(info: Info, inp: Input):
    """A state dict from before the keys in ``later_keys`` existed (and, for BPGrad, before
    the global state had ``diverged``) loads and continues exactly as the original (the
    missing settings take their defaults)."""
    model = _mlp()
    opt = info.make(model, inp)
    _run(model, opt, _batches(2))
    sd = copy.deepcopy(opt.state_dict())
    for g in sd["param_groups"]:
        for key, default in info.later_keys.items():
            if key in g and g[key] == default:
                del g[key]
    for st in sd["state"].values():
        st.pop("diverged", None)
    m2 = _mlp()
    m2.load_state_dict(model.state_dict())
    o2 = info.make(m2, inp)
    o2.load_state_dict(sd)
    for g, g0 in zip(o2.param_groups, opt.param_groups):
        for key in info.later_keys:
            if key in g:
                assert g[key] == g0[key], key
    later = _batches(3, seed=11)
    _assert_same_run(_run(model, opt, later), _run(m2, o2, later))


# --------------------------------------------------------------------------------------------
# Hooks (step pre/post per optimizer: test_optim_contract)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("info", _by_info("test_state_dict_hooks"))
def test_state_dict_hooks(info: Info):
    inp = info.inputs[0]
    model = _mlp()
    opt = info.make(model, inp)
    _run(model, opt, _batches(2))
    calls: list[str] = []

    def post(o: Any, sd: dict) -> dict:
        calls.append("post")
        sd["note"] = "added by a hook"
        return sd

    opt.register_state_dict_pre_hook(lambda o: calls.append("pre"))
    opt.register_state_dict_post_hook(post)
    opt.register_state_dict_pre_hook(lambda o: calls.append("pre-first"), prepend=True)
    sd = opt.state_dict()
    assert calls == ["pre-first", "pre", "post"] and sd["note"] == "added by a hook"

    calls.clear()
    m2 = _mlp()
    m2.load_state_dict(model.state_dict())
    o2 = info.make(m2, inp)

    def load_pre(o: Any, d: dict) -> dict:
        calls.append("load-pre")
        d = dict(d)
        assert d.pop("note") == "added by a hook"
        return d

    o2.register_load_state_dict_pre_hook(load_pre)
    o2.register_load_state_dict_post_hook(lambda o: calls.append("load-post"))
    o2.register_load_state_dict_post_hook(lambda o: calls.append("load-post-first"),
                                          prepend=True)
    o2.load_state_dict(copy.deepcopy(sd))  # torch's load keeps the saved tensors (shared)
    assert calls == ["load-pre", "load-post-first", "load-post"]
    later = _batches(2, seed=11)
    _assert_same_run(_run(model, opt, later), _run(m2, o2, later))


@pytest.mark.parametrize("info", _by_info("test_global_and_rewriting_step_hooks"))
def test_global_and_rewriting_step_hooks(info: Info):
    """The process-wide step hooks of torch.optim fire for these optimizers too, and a step
    pre-hook may replace the step's arguments (here it supplies the closure)."""
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    model = _mlp()
    opt = info.make(model, info.inputs[0])
    batch = _batch()
    calls: list[str] = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global-pre")),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append("global-post"))]
    try:
        def supply_closure(o: Any, args: tuple, kwargs: dict) -> tuple:
            calls.append("pre")
            return (o, _closure(model, opt, batch)), kwargs  # args[0] is the optimizer

        h = opt.register_step_pre_hook(supply_closure)
        w0 = _flat(model)
        loss = opt.step()  # no closure: the hook gives it
        h.remove()
    finally:
        for handle in handles:
            handle.remove()
    assert calls == ["global-pre", "pre", "global-post"]
    assert isinstance(loss, torch.Tensor) and not torch.equal(_flat(model), w0)


# --------------------------------------------------------------------------------------------
# deepcopy, named parameters, groups
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("info", _by_info("test_deepcopy_copies_all_public_attrs"))
def test_deepcopy_copies_all_public_attrs(info: Info):
    """Every public non-callable attribute (properties included) survives a deepcopy."""
    model = _mlp()
    opt = info.make(model, info.inputs[0])
    _run(model, opt, _batches(2))
    clone = copy.deepcopy(opt)
    public = [n for n in dir(opt) if not n.startswith("_") and not callable(getattr(opt, n))]
    assert {"defaults", "state", "param_groups"} <= set(public)
    for name in public:
        if name in ("state", "param_groups"):  # keyed by / holding the parameters themselves
            continue
        got = getattr(clone, name)
        if name == "defaults" and "differentiable" not in opt.defaults:
            # torch's Optimizer.__setstate__ adds defaults["differentiable"] = False to any
            # copy (torch.optim.SGD has the key from the start)
            assert got.pop("differentiable") is False
        _assert_same(got, getattr(opt, name), name)
    _assert_same(clone.state_dict(), opt.state_dict())


@pytest.mark.parametrize("info,inp", _by_input("test_named_parameters"))
def test_named_parameters(info: Info, inp: Input):
    """``(name, parameter)`` pairs (``model.named_parameters()``, or in groups) are accepted,
    the names land in ``param_groups`` and ``state_dict``, the run equals the unnamed one and
    a named state dict loads into a named optimizer."""
    ma, mb = _mlp(), _mlp()
    oa = info.make(ma, inp)
    named = _as_named(mb, info.params(mb))
    if not isinstance(named[0], dict):
        named = mb.named_parameters()  # a flat list: exactly what users pass
    ob = info.make(mb, inp, params=named)
    names = [n for n, _ in mb.named_parameters()]
    got = [n for g in ob.state_dict()["param_groups"] for n in g["param_names"]]
    assert sorted(got) == sorted(names)
    batches = _batches(3)
    _assert_same_run(_run(ma, oa, batches), _run(mb, ob, batches))
    mc = _mlp()
    mc.load_state_dict(mb.state_dict())
    oc = info.make(mc, inp, params=_as_named(mc, info.params(mc)))
    oc.load_state_dict(copy.deepcopy(ob.state_dict()))
    later = _batches(2, seed=11)
    _assert_same_run(_run(mb, ob, later), _run(mc, oc, later))


@pytest.mark.parametrize("info", _by_info("test_groups_kept_as_given"))
def test_groups_kept_as_given(info: Info):
    """``param_groups`` holds the groups the user passed, in order, with their parameters in
    order (a flat list is one group)."""
    for build in (info.params, info.groups):
        model = _mlp()
        given = build(model)
        opt = info.make(model, info.inputs[0], params=given)
        want = ([g["params"] for g in given] if isinstance(given[0], dict) else [given])
        got = [g["params"] for g in opt.param_groups]
        assert len(got) == len(want), (build.__name__, len(got), len(want))
        for a, b in zip(got, want):
            assert len(a) == len(b) and all(x is y for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------
# maximize, foreach
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("info,inp", _by_input("test_maximize"))
def test_maximize(info: Info, inp: Input):
    """``maximize=True`` on h = -mse climbs h, exactly as minimising mse does (BPGrad treats
    -h as its loss, so h <= -loss_lower_bound = 0 holds)."""
    ma, mb = _mlp(), _mlp()
    oa = info.make(ma, inp)
    ob = info.make(mb, inp, maximize=True)
    assert all(g["maximize"] is True for g in ob.param_groups)
    batches = [_batch()] * 6
    h0 = -_loss(mb, batches[0])
    _assert_same_run(_run(ma, oa, batches), _run(mb, ob, batches, sign=-1.0))
    assert -_loss(mb, batches[0]) > h0
    assert ob.state_dict()["param_groups"][0]["maximize"] is True


@pytest.mark.parametrize("info,inp", _by_input("test_foreach_matches_forloop"))
def test_foreach_matches_forloop(info: Info, inp: Input):
    """``foreach`` True / False / None: the same numbers on the CPU (torch runs this on CUDA,
    where the multi-tensor kernels differ; on the CPU they are the same arithmetic)."""
    batches = _batches(4)
    runs = []
    for fe in (None, True, False):
        model = _mlp()
        opt = info.make(model, inp, foreach=fe)
        assert all(g["foreach"] is fe for g in opt.param_groups)
        runs.append(_run(model, opt, batches))
    _assert_same_run(runs[0], runs[1])
    _assert_same_run(runs[0], runs[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (foreach kernels)")
@pytest.mark.parametrize("info,inp", _by_input("test_foreach_matches_forloop_cuda"))
def test_foreach_matches_forloop_cuda(info: Info, inp: Input):
    batches = [(x.cuda(), y.cuda()) for x, y in _batches(4)]
    runs = []
    for fe in (True, False):
        model = _mlp().cuda()
        opt = info.make(model, inp, foreach=fe)
        runs.append(_run(model, opt, batches))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------
def _bad_params() -> list:
    out = []
    for i in INFOS:
        for b in i.bad:
            marks = [pytest.mark.xfail(strict=False, reason=b.pending)] if b.pending else []
            out.append(pytest.param(i, b, id=f"{i.id}-{b.desc}", marks=marks))
    return out


@pytest.mark.parametrize("info,bad", _bad_params())
def test_errors(info: Info, bad: BadInput):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(bad.error) as exc:
            bad.build(_mlp())
    assert bad.match.lower() in str(exc.value).lower(), str(exc.value)


# --------------------------------------------------------------------------------------------
# dtypes, complex, mixed
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("info,inp", _by_input("test_set_default_dtype_float64"))
def test_set_default_dtype_float64(info: Info, inp: Input):
    """Under ``set_default_dtype(float64)``: a model built with the default dtype runs exactly
    as a float64 model does under float32, and a float32 model keeps float32 parameters and
    state."""
    batches = _batches(3)
    ref_model = _mlp()
    init = copy.deepcopy(ref_model.state_dict())
    ref = _run(ref_model, info.make(ref_model, inp), batches)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = _mlp(dtype=None)
        assert next(model.parameters()).dtype == torch.float64
        model.load_state_dict(init)  # the same numbers (init draws differ by dtype)
        _assert_same_run(_run(model, info.make(model, inp), batches), ref)
        m32 = _mlp(torch.float32)
        o32 = info.make(m32, inp)
        for b in batches:
            o32.step(_closure(m32, o32, (b[0].float(), b[1].float())))
        for p in m32.parameters():
            assert p.dtype == torch.float32 and torch.isfinite(p).all()
            for v in o32.state.get(p, {}).values():
                if isinstance(v, torch.Tensor):
                    assert v.dtype == torch.float32
    finally:
        torch.set_default_dtype(prev)


def _fit(model: _Free, opt: torch.optim.Optimizer, targets: list[torch.Tensor], steps: int,
         complex_view: bool) -> list[float]:
    """Least squares to fixed targets, written on the real numbers (``view_as_real`` of the
    complex parameters), so both set-ups compute the same loss and gradients."""
    ps = [p for p in (model.w, model.b) if p is not None]
    losses = []
    for _ in range(steps):
        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = sum((torch.view_as_real(p) if complex_view else p).sub(t).pow(2).sum()
                       for p, t in zip(ps, targets))
            loss.backward()
            return loss
        losses.append(float(opt.step(closure).detach()))
    return losses


@pytest.mark.parametrize("info,inp", _by_input("test_complex_matches_real_view"))
def test_complex_matches_real_view(info: Info, inp: Input):
    """Complex parameters train as their real views (``torch.view_as_real``) do. SLBI: a
    complex (4, 3) weight grouped by neuron has the same groups as its (4, 3, 2) real view
    grouped by filter; the complex bias has no Γ."""
    if inp.kwargs.get("lambda_scaling") == "sqrt_size":
        pytest.skip("sqrt_size counts a complex row's entries, its real view has twice as many")
    g = torch.Generator().manual_seed(5)
    w0 = torch.randn(4, 3, generator=g, dtype=torch.complex128)
    b0 = torch.randn(3, generator=g, dtype=torch.complex128)
    targets = [torch.randn(4, 3, 2, generator=g, dtype=DT), torch.randn(3, 2, generator=g,
                                                                          dtype=DT)]
    mc = _Free(w0.clone(), b0.clone())
    mr = _Free(torch.view_as_real(w0).clone(), torch.view_as_real(b0).clone())

    def params(m: _Free, structure: str) -> Any:
        if info.cls is bs.SLBI:
            return [{"params": [m.w], "structure": structure},
                    {"params": [m.b], "structure": None}]
        return [m.w, m.b]

    # SLBI decays only parameters of 2+ dims by default: the complex bias is 1-D, its view 2-D
    more = {"weight_decay_1d": True} if info.cls is bs.SLBI else {}
    oc = info.make(mc, inp, params=params(mc, "neuron"), **more)
    orr = info.make(mr, inp, params=params(mr, "filter"), **more)
    lc = _fit(mc, oc, targets, 5, complex_view=True)
    lr = _fit(mr, orr, targets, 5, complex_view=False)
    for pc, pr in ((mc.w, mr.w), (mc.b, mr.b)):
        torch.testing.assert_close(torch.view_as_real(pc.detach()), pr.detach(), rtol=1e-13,
                                   atol=1e-14)
    assert lc[-1] < lc[0] and lr[-1] < lr[0]


@pytest.mark.parametrize("info", [
    pytest.param(i, id=i.id, marks=_marks(i, "test_complex_lasso_refused_or_works"))
    for i in INFOS if i.cls is bs.SLBI])
def test_complex_lasso_refused_or_works(info: Info):
    """SLBI's element-wise lasso (``structure="element"``) on a complex parameter: either a
    clear refusal (ValueError/TypeError naming 'complex') when the group is added, or steps
    that train."""
    z0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.complex128)
    target = [torch.zeros(4, 3, 2, dtype=DT)]
    model = _Free(z0)
    try:
        opt = info.make(model, Input("element", {"lam": 0.01}),
                        params=[{"params": [model.w], "structure": "element"}])
    except (ValueError, TypeError) as e:
        assert "complex" in str(e).lower()
        return
    losses = _fit(model, opt, target, 5, complex_view=True)
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0]


@pytest.mark.parametrize("info,inp", _by_input("test_grads_never_modified"))
def test_grads_never_modified(info: Info, inp: Input):
    """``.grad`` after a step equals what backward wrote, and no state tensor shares memory
    with a gradient (a later backward must not change the optimizer's state)."""
    model = _mlp()
    opt = info.make(model, inp)
    for b in _batches(3):
        seen: list = []
        opt.step(_closure(model, opt, b, record=seen))
        for p, g in zip(model.parameters(), seen[-1]):
            assert torch.equal(p.grad, g)
            ptr = p.grad.untyped_storage().data_ptr()
            for k, v in opt.state.get(p, {}).items():
                if isinstance(v, torch.Tensor):
                    assert v.untyped_storage().data_ptr() != ptr, k


@pytest.mark.parametrize("info,inp", _by_input("test_mixed_dtypes"))
def test_mixed_dtypes(info: Info, inp: Input):
    """float32 and float64 parameters in one optimizer: each keeps its dtype (state too), the
    loss falls; where updates are per parameter (SLBI), each parameter moves exactly as in an
    optimizer of its own given the same gradients."""
    model = _Mixed()
    opt = info.make(model, inp)
    batch = _batch()
    before = _loss(model, batch)
    _run(model, opt, [batch] * 8)
    assert _loss(model, batch) < before
    for p in model.parameters():
        assert torch.isfinite(p).all()
        for v in opt.state.get(p, {}).values():
            if isinstance(v, torch.Tensor):
                assert v.dtype == p.dtype
    if not info.per_param:
        return
    # scripted gradients (fixed in advance), so both set-ups see the same ones
    ma, mb = _Mixed(), _Mixed()
    oa = info.make(ma, inp)
    singles = []
    for grp in info.make(mb, inp).param_groups:  # the resolved groups, one optimizer per param
        for p in grp["params"]:
            one = {k: v for k, v in grp.items() if k not in ("params", "param_names")}
            singles.append(info.make(mb, inp, params=[{**one, "params": [p]}]))
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=gen, dtype=DT) for p in ma.parameters()]
        for m in (ma, mb):
            for p, gr in zip(m.parameters(), grads):
                p.grad = gr.to(p.dtype)
        oa.step()
        for o in singles:
            o.step()
        for pa, pb in zip(ma.parameters(), mb.parameters()):
            assert torch.equal(pa, pb)


@pytest.mark.parametrize("info", _by_info("test_sparse_gradients_refused"))
def test_sparse_gradients_refused(info: Info):
    """Neither optimizer has a sparse update: a sparse gradient is refused with an error that
    says so (torch's sparse cases do not apply)."""
    emb = nn.Embedding(5, 3, sparse=True).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = info.cls([{"params": list(emb.parameters())}], **info.inputs[0].kwargs)
    idx = torch.tensor([0, 2, 2])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = emb(idx).pow(2).sum()
        loss.backward()
        return loss

    w0 = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step(closure)
    assert torch.equal(emb.weight.detach(), w0)


@pytest.mark.parametrize("info,inp", _by_input("test_no_empty_state_entries"))
def test_no_empty_state_entries(info: Info, inp: Input):
    """After steps, every entry of ``state`` holds something (no empty dicts left behind by
    lookups into the defaultdict)."""
    model = _mlp()
    opt = info.make(model, inp)
    _run(model, opt, _batches(2))
    _ = opt.state_dict()
    assert all(len(st) > 0 for st in opt.state.values())


# --------------------------------------------------------------------------------------------
# torch's cases that do not apply
# --------------------------------------------------------------------------------------------
NOT_APPLICABLE = {
    "fused_matches_forloop / fused_large_tensor / fused_does_not_step_if_foundinf":
        "neither optimizer has a fused kernel; fused=True is refused (test_errors)",
    "capturable / CUDA graphs":
        "no capturable flag: BPGrad reads the loss and gradient norm on the host every step",
    "differentiable":
        "no differentiable flag: both step under torch.no_grad()",
    "load_nontensor_step":
        "no tensor 'step' in the state (BPGrad keeps a Python int in its global state, "
        "SLBI keeps no step count)",
    "mixed_device_dtype / state_dict_with_cuda_params / cpu_load_state_dict / multigpu":
        "need CUDA devices (the CPU dtype mix is test_mixed_dtypes)",
    "peak_memory_foreach":
        "CUDA memory measurement",
    "grad_scaling_autocast":
        "CUDA GradScaler cases (BPGrad needs the loss: scaler.step(opt, loss=...); "
        "see tests/test_bpgrad.py)",
    "defaults_changed_to_foreach":
        "torch's dispatch to foreach kernels on CUDA by default; on the CPU: "
        "test_foreach_matches_forloop",
    "rosenbrock_sparse":
        "no sparse support; refusal checked in test_sparse_gradients_refused",
    "optim_infos_do_not_specify_global_cliquey_kwargs":
        "a check of torch's own OptimizerInfo table",
}


@pytest.mark.parametrize("case", sorted(NOT_APPLICABLE))
def test_not_applicable(case: str):
    pytest.skip(NOT_APPLICABLE[case])
