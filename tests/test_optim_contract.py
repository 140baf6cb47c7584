"""The torch.optim contract, checked the same way for every optimizer the package defines.

One row per configuration in ``ROWS`` (each ``torch.optim.Optimizer`` subclass of ``beyondsgd``
has at least one; ``test_every_optimizer_class_has_a_row`` finds them by walking the package).
Every test runs every row: deepcopy / pickle round trips that step bit-identically, a mid-run
``state_dict`` save/load into a freshly built optimizer with bit-identical continuation,
per-group hyperparameters (a two-group optimizer equals two single-setting optimizers on the
same gradients), tensor ``lr``, step pre/post hooks, every ``torch.optim.lr_scheduler``,
``zero_grad`` and a parameter that gets no gradient. Float64, tiny models, one thread: every
comparison is exact (``torch.equal``), as the same float operations run in the same order.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import io
import math
import pickle
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler as S

import beyondsgd as bs

torch.set_num_threads(1)
DT = torch.float64
Batch = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Tiny models and data
# --------------------------------------------------------------------------------------------
def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)


def _conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2)).to(DT)


def _batches(model: nn.Module, n: int, seed: int = 1) -> list[Batch]:
    shape = (8, 1, 6) if isinstance(model[0], nn.Conv1d) else (8, 3)
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g, dtype=DT), torch.randn(8, 2, generator=g, dtype=DT))
            for _ in range(n)]


def _layer_groups(model: nn.Module) -> list[dict[str, Any]]:
    """First layer / the rest: two plain groups."""
    first = list(model[0].parameters())
    ids = {id(p) for p in first}
    return [{"params": first}, {"params": [p for p in model.parameters() if id(p) not in ids]}]


def _slbi_mlp_groups(model: nn.Module) -> list[dict[str, Any]]:
    return bs.slbi_param_groups(model, linear="neuron")  # hidden Linear: neurons; rest dense


def _slbi_conv_groups(model: nn.Module) -> list[dict[str, Any]]:
    return bs.slbi_param_groups(model, conv="filter", output="element")  # + dense biases


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One optimizer configuration. ``per_group``: two settings that differ in every per-group
    hyperparameter the optimizer has; ``xfail``: test name -> reason (known open bugs)."""

    id: str
    cls: type[torch.optim.Optimizer]
    model: Callable[[], nn.Module]
    groups: Callable[[nn.Module], list[dict[str, Any]]]
    kwargs: dict[str, Any]
    per_group: tuple[dict[str, Any], dict[str, Any]]
    queries: Callable[[Any, nn.Module], Any] = lambda opt, model: None
    xfail: dict[str, str] = field(default_factory=dict)

    def make(self, model: nn.Module, **overrides: Any) -> torch.optim.Optimizer:
        return self.cls(self.groups(model), **{**self.kwargs, **overrides})


def _bpgrad_queries(opt: Any, model: nn.Module) -> Any:
    return opt.global_state


def _slbi_queries(opt: Any, model: nn.Module) -> Any:
    ps = list(model.parameters())
    structures = [opt.structure(p) for p in ps]
    gammas = [opt.gamma(p) for p, s in zip(ps, structures) if s is not None]
    return structures, gammas, opt.support_sizes(model)


ROWS = [
    Row("bpgrad-paper", bs.BPGrad, _mlp, _layer_groups,
        dict(lr=1 / 3, rho=0.1, momentum=0.9, weight_decay=1e-3),
        ({"lipschitz": 3.0, "rho": 0.1, "momentum": 0.9, "momentum_form": "paper"},
         {"lr": 0.05, "rho": 0.5, "momentum": 0.5, "momentum_form": "official",
          "weight_decay": 1e-2}),
        queries=_bpgrad_queries),
    Row("bpgrad-official-running-mean", bs.BPGrad, _conv, _layer_groups,
        dict(lr=0.25, rho=0.1, momentum=0.9, momentum_form="official",
             loss_estimate="running_mean", distributed=False),
        ({"lr": 0.25, "momentum": 0.0}, {"lr": 0.1, "rho": 0.0, "momentum": 0.8}),
        queries=_bpgrad_queries),
    Row("bpgrad-no-momentum", bs.BPGrad, _mlp, _layer_groups,
        dict(lr=0.2, rho=0.0, momentum=0.0),
        ({"lr": 0.2}, {"lr": 0.4, "rho": 0.3, "weight_decay": 1e-2}),
        queries=_bpgrad_queries),
    Row("slbi-mlp-neuron", bs.SLBI, _mlp, _slbi_mlp_groups,
        dict(lr=0.1, nu=1.0, lam=0.02, momentum=0.9, weight_decay=1e-3),
        ({"lr": 0.1, "nu": 1.0, "lambda": 0.02},
         {"lr": 0.05, "nu": 2.0, "lambda": 0.05, "momentum": 0.5, "kappa": 2.0,
          "weight_decay": 1e-2}),
        queries=_slbi_queries),
    Row("slbi-conv-code-nesterov", bs.SLBI, _conv, _slbi_conv_groups,
        dict(lr=0.05, nu=2.0, lam=0.01, momentum=0.9, nesterov=True, coupling="code",
             kappa=2.0, lambda_scaling="sqrt_size"),
        ({"lr": 0.05, "coupling": "code", "lambda_scaling": "sqrt_size"},
         {"lr": 0.1, "coupling": "paper", "lambda_scaling": "none", "nu": 1.0, "kappa": 1.0,
          "lambda": 0.03, "dampening": 0.1, "nesterov": False, "kappa_uncoupled": False}),
        queries=_slbi_queries),
]


def _rows(test_name: str) -> list:
    """The rows as pytest params, with the row's known failures marked (non-strict xfail)."""
    out = []
    for r in ROWS:
        marks = ([pytest.mark.xfail(strict=False, reason=r.xfail[test_name])]
                 if test_name in r.xfail else [])
        out.append(pytest.param(r, id=r.id, marks=marks))
    return out


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _closure(model: nn.Module, opt: torch.optim.Optimizer, batch: Batch):
    x, y = batch

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


def _run(model: nn.Module, opt: torch.optim.Optimizer, batches: list[Batch],
         after_step: Callable[[], None] | None = None) -> list[torch.Tensor]:
    """Step once per batch; the parameters after each step."""
    traj = []
    for b in batches:
        opt.step(_closure(model, opt, b))
        if after_step is not None:
            after_step()
        traj.append(_flat(model).clone())
    return traj


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    """Exact equality of nested state (tensors bitwise, floats with NaN == NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, a.keys(), b.keys())
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, (where, a, b)


def _assert_same_run(ta: list[torch.Tensor], tb: list[torch.Tensor]) -> None:
    assert len(ta) == len(tb)
    for k, (a, b) in enumerate(zip(ta, tb)):
        assert torch.equal(a, b), f"step {k}: max diff {float((a - b).abs().max())}"


def _moved(traj: list[torch.Tensor], start: torch.Tensor) -> bool:
    return not torch.equal(traj[-1], start)


# --------------------------------------------------------------------------------------------
# The table covers the package
# --------------------------------------------------------------------------------------------
def _package_optimizers() -> set[type]:
    found = set()
    for info in pkgutil.walk_packages(bs.__path__, "beyondsgd.", onerror=lambda name: None):
        try:
            mod = importlib.import_module(info.name)
        except ImportError:
            # integrations need their optional extra (lightning, deepobs); elsewhere a failed
            # import is a bug
            if not info.name.startswith("beyondsgd.integrations."):
                raise
            continue
        for obj in vars(mod).values():
            if (inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer)
                    and obj.__module__.startswith("beyondsgd")):
                found.add(obj)
    return found


def test_every_optimizer_class_has_a_row():
    classes = _package_optimizers()
    assert {bs.BPGrad, bs.SLBI} <= classes
    assert classes <= {r.cls for r in ROWS}, f"no row for {classes - {r.cls for r in ROWS}}"


# --------------------------------------------------------------------------------------------
# Copies and pickles
# --------------------------------------------------------------------------------------------
def _copy(how: str, model: nn.Module, opt: torch.optim.Optimizer):
    if how == "deepcopy":
        return copy.deepcopy((model, opt))
    return pickle.loads(pickle.dumps((model, opt)))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("row", _rows("test_copies_step_identically"))
def test_copies_step_identically(row: Row, how: str):
    model = row.model()
    opt = row.make(model)
    _run(model, opt, _batches(model, 3))
    m2, o2 = _copy(how, model, opt)
    _assert_same(o2.state_dict(), opt.state_dict())
    _assert_same(row.queries(o2, m2), row.queries(opt, model), "queries")
    w0 = _flat(model)
    later = _batches(model, 4, seed=7)
    ta, tb = _run(model, opt, later), _run(m2, o2, later)
    _assert_same_run(ta, tb)
    assert _moved(ta, w0)
    _assert_same(o2.state_dict(), opt.state_dict())
    _assert_same(row.queries(o2, m2), row.queries(opt, model), "queries")


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("row", _rows("test_copies_keep_instance_attributes"))
def test_copies_keep_instance_attributes(row: Row, how: str):
    """A copy keeps every attribute the original has, except those torch's own optimizers lose
    too (measured on torch.optim.SGD), and plain-valued ones are equal."""
    probe = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    torch_drops = set(vars(probe)) - set(vars(copy.deepcopy(probe)))
    model = row.model()
    opt = row.make(model)
    _run(model, opt, _batches(model, 2))
    _, o2 = _copy(how, model, opt)
    missing = set(vars(opt)) - set(vars(o2)) - torch_drops
    assert not missing, f"the {how} lost {sorted(missing)}"
    for k, v in vars(opt).items():
        if k not in torch_drops and (v is None or isinstance(v, bool | int | float | str)):
            assert getattr(o2, k) == v, k


# --------------------------------------------------------------------------------------------
# state_dict
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", _rows("test_state_dict_mid_run_continues_bit_identically"))
def test_state_dict_mid_run_continues_bit_identically(row: Row):
    model = row.model()
    opt = row.make(model)
    _run(model, opt, _batches(model, 3))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    m2 = row.model()  # fresh weights and a freshly constructed optimizer
    m2.load_state_dict(saved["model"])
    o2 = row.make(m2)
    o2.load_state_dict(saved["opt"])
    _assert_same(o2.state_dict(), opt.state_dict())
    _assert_same(row.queries(o2, m2), row.queries(opt, model), "queries")
    later = _batches(model, 4, seed=7)
    _assert_same_run(_run(model, opt, later), _run(m2, o2, later))
    _assert_same(o2.state_dict(), opt.state_dict())


# --------------------------------------------------------------------------------------------
# Per-group hyperparameters
# --------------------------------------------------------------------------------------------
def _scripted(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[torch.Tensor]:
    """Steps with gradients and losses fixed in advance (independent of the weights), so that
    optimizers on different weights see the same inputs."""
    g = torch.Generator().manual_seed(3)
    traj = []
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=g, dtype=DT) for p in model.parameters()]
        loss = 0.5 + torch.rand((), generator=g, dtype=DT)

        def closure(grads=grads, loss=loss):
            for p, gr in zip(model.parameters(), grads):
                p.grad = gr.clone()
            return loss

        opt.step(closure)
        traj.append([p.detach().clone() for p in model.parameters()])
    return traj


@pytest.mark.parametrize("row", _rows("test_per_group_hyperparameters"))
def test_per_group_hyperparameters(row: Row):
    """Group 0 with setting A and the other groups with B step exactly as an optimizer with A
    everywhere does on group 0, and as one with B everywhere does on the others."""
    a_set, b_set = row.per_group
    runs = {}
    for name, sets in (("mixed", (a_set, b_set)), ("A", (a_set, a_set)), ("B", (b_set, b_set))):
        model = row.model()
        groups = [{**grp, **(sets[0] if i == 0 else sets[1])}
                  for i, grp in enumerate(row.groups(model))]
        opt = row.cls(groups, **row.kwargs)
        assert len(opt.param_groups) >= 2
        n0 = len(opt.param_groups[0]["params"])
        runs[name] = _scripted(model, opt, 5)
    start = [p.detach() for p in row.model().parameters()]
    for k in range(5):
        for i, p in enumerate(runs["mixed"][k]):
            ref = runs["A"][k][i] if i < n0 else runs["B"][k][i]
            assert torch.equal(p, ref), f"step {k}, parameter {i}"
    assert not torch.equal(runs["A"][-1][0], runs["B"][-1][0])  # the settings do differ
    assert not torch.equal(runs["mixed"][-1][-1], start[-1])


# --------------------------------------------------------------------------------------------
# Tensor lr
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", _rows("test_tensor_lr"))
def test_tensor_lr(row: Row):
    lr = row.kwargs["lr"]
    ma, mb = row.model(), row.model()
    oa = row.make(ma)
    ob = row.make(mb, lr=torch.tensor(lr, dtype=DT))
    assert all(isinstance(g["lr"], torch.Tensor) for g in ob.param_groups)
    batches = _batches(ma, 4)
    _assert_same_run(_run(ma, oa, batches), _run(mb, ob, batches))
    sched = S.ExponentialLR(ob, gamma=0.5)
    _run(mb, ob, batches[:1])
    sched.step()
    assert [float(g["lr"]) for g in ob.param_groups] == [lr * 0.5] * len(ob.param_groups)
    assert isinstance(ob.param_groups[0]["lr"], torch.Tensor)
    w = _flat(mb)
    assert _moved(_run(mb, ob, batches[:1]), w)


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", _rows("test_step_hooks"))
def test_step_hooks(row: Row):
    model = row.model()
    opt = row.make(model)
    calls: list[tuple[str, Any]] = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o)))
    post = opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o)))
    _run(model, opt, _batches(model, 2))
    assert calls == [("pre", opt), ("post", opt)] * 2
    pre.remove()
    post.remove()
    _run(model, opt, _batches(model, 1))
    assert len(calls) == 4


# --------------------------------------------------------------------------------------------
# LR schedulers
# --------------------------------------------------------------------------------------------
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": lambda o: S.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[1, 3], gamma=0.3),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.7),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=4, eta_min=1e-3),
    "LambdaLR": lambda o: S.LambdaLR(o, lr_lambda=lambda e: 1.0 / (1 + e)),
    "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lr_lambda=lambda e: 0.9),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.25, total_iters=3),
    "ConstantLR": lambda o: S.ConstantLR(o, factor=0.5, total_iters=2),
    "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=6, power=2.0),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=0.3, total_steps=10),
    "CyclicLR": lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=0.3, step_size_up=2,
                                     cycle_momentum=False),
    "CyclicLR-momentum": lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=0.3, step_size_up=2,
                                              base_momentum=0.5, max_momentum=0.9),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=0),
    "SequentialLR": lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.5, total_iters=2), S.ExponentialLR(o, gamma=0.8)],
        milestones=[2]),
    "ChainedScheduler": lambda o: S.ChainedScheduler(
        [S.ConstantLR(o, factor=0.5, total_iters=2), S.ExponentialLR(o, gamma=0.9)]),
}


def _sched_step(sched: Any) -> None:
    if isinstance(sched, S.ReduceLROnPlateau):
        sched.step(1.0)  # a metric that never improves: the lr is cut every step
    else:
        sched.step()


@pytest.mark.parametrize("sched_name", sorted(SCHEDULERS))
@pytest.mark.parametrize("row", _rows("test_lr_scheduler"))
def test_lr_scheduler(row: Row, sched_name: str):
    """Each scheduler builds on the optimizer, steps with it, changes every group's lr (and
    momentum where it cycles it) exactly as it does for torch.optim.SGD from the same values."""
    model = row.model()
    opt = row.make(model)
    ref = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1, dtype=DT))],
                            "lr": g["lr"], "momentum": g["momentum"]}
                           for g in opt.param_groups], lr=0.1)
    sched, ref_sched = SCHEDULERS[sched_name](opt), SCHEDULERS[sched_name](ref)
    seen: list[list[float]] = []

    def after_step() -> None:
        ref.step()
        _sched_step(sched)
        _sched_step(ref_sched)
        seen.append([g["lr"] for g in opt.param_groups])
        assert seen[-1] == [g["lr"] for g in ref.param_groups]
        assert [g["momentum"] for g in opt.param_groups] == \
            [g["momentum"] for g in ref.param_groups]

    w0 = _flat(model)
    traj = _run(model, opt, _batches(model, 6), after_step)
    assert len({tuple(s) for s in seen}) > 1, f"{sched_name} never changed the lr: {seen}"
    assert torch.isfinite(traj[-1]).all() and _moved(traj, w0)


# --------------------------------------------------------------------------------------------
# zero_grad and a parameter without a gradient
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("row", _rows("test_zero_grad"))
def test_zero_grad(row: Row, set_to_none: bool):
    model = row.model()
    opt = row.make(model)
    _run(model, opt, _batches(model, 1))
    assert all(p.grad is not None for p in model.parameters())
    opt.zero_grad(set_to_none=set_to_none)
    for p in model.parameters():
        if set_to_none:
            assert p.grad is None
        else:
            assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))


@pytest.mark.parametrize("row", _rows("test_parameter_without_gradient_is_skipped"))
def test_parameter_without_gradient_is_skipped(row: Row):
    """An extra parameter the loss never uses (first in the first group, where BPGrad keeps its
    global state) stays bit-identical; the others train exactly as without it."""
    model, plain = row.model(), row.model()
    unused = nn.Parameter(torch.randn(3, dtype=DT))
    u0 = unused.detach().clone()
    opt = row.cls([{"params": [unused]}, *row.groups(model)], **row.kwargs)
    ref = row.cls([{"params": [nn.Parameter(torch.zeros(3, dtype=DT))]}, *row.groups(plain)],
                  **row.kwargs)
    batches = _batches(model, 4)
    w0 = _flat(model)
    ta = _run(model, opt, batches)
    opt.zero_grad(set_to_none=True)  # keep the gradless parameter gradless for the reference
    assert unused.grad is None and torch.equal(unused.detach(), u0)
    assert _moved(ta, w0)
    _assert_same_run(ta, _run(plain, ref, batches))
    assert not (set(opt.state.get(unused, {})) & {"momentum_buffer", "V", "Gamma"})
