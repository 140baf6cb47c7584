"""BPGrad: the update against hand computations and an independent reference (flat vectors,
``torch.autograd.grad``), torch.optim contract (state_dict round trip, LR schedulers, param
groups), convergence on a quadratic, Rosenbrock and digits_mlp, the Lipschitz estimator, and
bad input."""

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from beyondsgd.methods import METHODS, make_method
from beyondsgd.methods.bpgrad import (
    BPGrad,
    LossBelowBoundError,
    NonFiniteLossError,
    bpgrad_step_length,
    estimate_lipschitz,
    pairwise_lipschitz,
)

DT = torch.float64


# --------------------------------------------------------------------------------------------
# A tiny float64 problem and an independent reference implementation on flat vectors
# --------------------------------------------------------------------------------------------
def _tiny(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, generator=g, dtype=DT), torch.randn(8, 2, generator=g, dtype=DT))
            for _ in range(n)]


SHAPES = [(4, 3), (4,), (2, 4), (2,)]


def _ref_loss(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    parts, i = [], 0
    for s in SHAPES:
        n = math.prod(s)
        parts.append(w[i:i + n].reshape(s))
        i += n
    W1, b1, W2, b2 = parts
    return F.mse_loss(F.linear(torch.tanh(F.linear(x, W1, b1)), W2, b2), y)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _reference(w0, batches, L, rho, mu, wd, form, estimate, epoch_len):
    """BPGrad written out step by step from the digest's equations, on a flat vector."""
    w, v = w0.clone(), torch.zeros_like(w0)
    f_min, s, c, traj = math.inf, 0.0, 0, []
    for k, (x, y) in enumerate(batches):
        if k % epoch_len == 0:
            s, c = 0.0, 0
        wg = w.clone().requires_grad_(True)
        f = _ref_loss(wg, x, y)
        (g,) = torch.autograd.grad(f, wg)
        f = float(f.detach())
        if estimate == "running_mean":
            s, c = s + f, c + 1
            f_t = s / c
        else:
            f_t = f
        f_min = min(f_min, f_t)
        eta = (f_t - rho * f_min) / L
        d = (g + wd * w) / torch.linalg.vector_norm(g)
        if form == "paper":
            v = mu * v - eta * d
            w = w + v
        else:
            v = mu * v - d
            w = w + eta * v
        traj.append(w.clone())
    return traj


def _run_opt(model, opt, batches, epoch_len=10**9, with_batch_size=False):
    """Steps on ``batches`` (``new_epoch`` every ``epoch_len``); with ``with_batch_size`` each
    step is told its batch's size (BPGrad's ``nominal_batch_size`` parity option)."""
    traj = []
    for k, (x, y) in enumerate(batches):
        if k and k % epoch_len == 0:
            opt.new_epoch()

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss

        opt.step(closure, **({"batch_size": x.shape[0]} if with_batch_size else {}))
        traj.append(_flat(model))
    return traj


# --------------------------------------------------------------------------------------------
# The update rule
# --------------------------------------------------------------------------------------------
def test_step_length_equals_formula_with_momentum_zero():
    model = _tiny()
    (x1, y1), (x2, y2) = _batches(2)
    L, rho = 7.0, 0.3
    opt = BPGrad(model.parameters(), lipschitz=L, rho=rho, momentum=0.0)
    f_values = []
    for x, y in [(x1, y1), (x2, y2)]:
        w0 = _flat(model).requires_grad_(True)
        f = _ref_loss(w0, x, y)
        (g,) = torch.autograd.grad(f, w0)
        f_values.append(float(f.detach()))

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        w1 = _flat(model)
        eta = (f_values[-1] - rho * min(f_values)) / L  # Eq. (12), by hand
        assert eta > 0
        # the step has length eta exactly, along -g/||g||
        assert float(torch.linalg.vector_norm(w1 - w0.detach())) == pytest.approx(eta, rel=1e-12)
        torch.testing.assert_close(w1, w0.detach() - eta * g / g.norm(), rtol=0, atol=1e-14)
        assert opt.global_state["step_length"] == pytest.approx(eta, rel=1e-13)
    assert opt.global_state["f_min"] == min(f_values)
    assert bpgrad_step_length(2.0, 1.0, 0.5, 3.0) == pytest.approx(0.5)


def test_weight_decay_is_added_after_the_normalisation():
    model = _tiny()
    (x, y), = _batches(1)
    L, rho, wd = 5.0, 0.1, 0.3
    w0 = _flat(model).requires_grad_(True)
    f = _ref_loss(w0, x, y)
    (g,) = torch.autograd.grad(f, w0)
    opt = BPGrad(model.parameters(), lipschitz=L, rho=rho, momentum=0.0, weight_decay=wd)
    _run_opt(model, opt, [(x, y)])
    eta = (1 - rho) * float(f.detach()) / L
    expected = w0.detach() - eta * (g + wd * w0.detach()) / g.norm()
    torch.testing.assert_close(_flat(model), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("form", ["paper", "official"])
@pytest.mark.parametrize("estimate", ["minibatch", "running_mean"])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_momentum_forms_match_reference(form, estimate, wd):
    model = _tiny()
    batches = _batches(12)
    L, rho, mu, epoch_len = 4.0, 0.2, 0.9, 5
    ref = _reference(_flat(model), batches, L, rho, mu, wd, form, estimate, epoch_len)
    opt = BPGrad(model.parameters(), lipschitz=L, rho=rho, momentum=mu, weight_decay=wd,
                 momentum_form=form, loss_estimate=estimate)
    got = _run_opt(model, opt, batches, epoch_len)
    for k, (a, b) in enumerate(zip(got, ref)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=f"step {k}")


def test_momentum_forms_differ_when_step_length_changes():
    out = {}
    for form in ("paper", "official"):
        model = _tiny()
        opt = BPGrad(model.parameters(), lipschitz=4.0, momentum=0.9, momentum_form=form)
        out[form] = _run_opt(model, opt, _batches(6))[-1]
    assert float((out["paper"] - out["official"]).abs().max()) > 1e-6


def test_one_global_norm_over_param_groups_and_per_group_lipschitz():
    model = _tiny()
    (x, y), = _batches(1)
    w0 = _flat(model).requires_grad_(True)
    f = _ref_loss(w0, x, y)
    (g,) = torch.autograd.grad(f, w0)
    ps = list(model.parameters())
    opt = BPGrad([{"params": ps[:2]}, {"params": ps[2:], "lipschitz": 20.0}], lipschitz=5.0,
                 rho=0.0, momentum=0.0)
    _run_opt(model, opt, [(x, y)])
    n0 = ps[0].numel() + ps[1].numel()
    scale = torch.cat([torch.full((n0,), float(f.detach()) / 5.0, dtype=DT),
                       torch.full((g.numel() - n0,), float(f.detach()) / 20.0, dtype=DT)])
    torch.testing.assert_close(_flat(model), w0.detach() - scale * g / g.norm(), rtol=0,
                               atol=1e-14)
    assert opt.param_groups[1]["lr"] == pytest.approx(1 / 20.0)


def test_zero_gradient_makes_no_step_and_no_nan():
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=DT))
    opt = BPGrad([p], lipschitz=1.0, momentum=0.9)

    def moving():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    def flat_loss():  # f = 1 everywhere: zero gradient
        opt.zero_grad()
        loss = (p * 0.0).sum() + 1.0
        loss.backward()
        return loss

    opt.step(moving)
    before = p.detach().clone()
    buf = opt.state[p]["momentum_buffer"].clone()
    opt.step(flat_loss)
    assert torch.equal(p.detach(), before) and torch.isfinite(p).all()
    assert torch.equal(opt.state[p]["momentum_buffer"], buf)
    assert opt.global_state["grad_norm"] == 0.0


def test_lr_scheduler_scales_the_step_length():
    model = _tiny()
    b = _batches(2)
    opt = BPGrad(model.parameters(), lipschitz=3.0, rho=0.0, momentum=0.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _run_opt(model, opt, b[:1])
    sched.step()
    w0 = _flat(model)
    _run_opt(model, opt, b[1:])
    f1 = opt.global_state["f_t"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 / 3.0)
    assert float(torch.linalg.vector_norm(_flat(model) - w0)) == pytest.approx(
        0.5 * f1 / 3.0, rel=1e-12)


def test_running_mean_restarts_each_epoch_and_min_runs_over_history():
    p = nn.Parameter(torch.zeros(1, dtype=DT))
    losses = iter([4.0, 2.0, 3.0, 5.0])
    opt = BPGrad([p], lipschitz=1.0, loss_estimate="running_mean", momentum=0.0)

    def closure():  # the given value, zero gradient (the loss state still updates)
        opt.zero_grad()
        loss = p.sum() * 0.0 + next(losses)
        loss.backward()
        return loss

    seen = []
    for k in range(4):
        if k == 2:
            opt.new_epoch()
        opt.step(closure)
        st = opt.global_state
        seen.append((st["f_t"], st["f_min"], st["step"]))
    # epoch 1: means 4, 3; epoch 2 restarts: 3, 4; the min runs over all estimates
    assert seen == [(4.0, 4.0, 1), (3.0, 3.0, 2), (3.0, 3.0, 3), (4.0, 3.0, 4)]


# --------------------------------------------------------------------------------------------
# torch.optim contract
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form,estimate", [("paper", "minibatch"), ("official", "running_mean")])
def test_state_dict_round_trip_gives_identical_continued_training(form, estimate):
    batches = _batches(10)
    kw = dict(lipschitz=4.0, rho=0.1, momentum=0.9, weight_decay=1e-3, momentum_form=form,
              loss_estimate=estimate)
    a = _tiny()
    opt_a = BPGrad(a.parameters(), **kw)
    _run_opt(a, opt_a, batches[:4])  # mid-epoch: the running mean is part of the state
    b = copy.deepcopy(a)
    opt_b = BPGrad(b.parameters(), **{**kw, "lipschitz": 99.0, "rho": 0.5})
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert opt_b.global_state == opt_a.global_state
    assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    ta = _run_opt(a, opt_a, batches[4:], epoch_len=3)
    tb = _run_opt(b, opt_b, batches[4:], epoch_len=3)
    for x, y in zip(ta, tb):
        assert torch.equal(x, y)
    assert opt_b.global_state == opt_a.global_state
    sd = opt_a.state_dict()
    assert {"step", "f_min", "loss_sum", "loss_count"} <= set(sd["state"][0])


def test_deterministic():
    outs = []
    for _ in range(2):
        m = _tiny()
        outs.append(_run_opt(m, BPGrad(m.parameters(), lipschitz=3.0), _batches(5))[-1])
    assert torch.equal(outs[0], outs[1])


# --------------------------------------------------------------------------------------------
# Convergence
# --------------------------------------------------------------------------------------------
def _minimise(fn, x0, steps, **kw):
    x = nn.Parameter(torch.tensor(x0, dtype=DT))
    opt = BPGrad([x], **kw)

    def closure():
        opt.zero_grad()
        loss = fn(x)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return x.detach(), float(fn(x.detach()))


def test_converges_on_an_ill_conditioned_quadratic():
    A = torch.diag(torch.tensor([1.0, 10.0, 100.0], dtype=DT))
    fn = lambda x: 0.5 * x @ A @ x
    f0 = float(fn(torch.tensor([1.0, 1.0, 1.0], dtype=DT)))
    x, f = _minimise(fn, [1.0, 1.0, 1.0], 2000, lipschitz=50.0, rho=0.0, momentum=0.9)
    assert f < 1e-6 * f0
    assert float(x.abs().max()) < 1e-2


def test_converges_on_rosenbrock():
    fn = lambda z: (1 - z[0]) ** 2 + 100 * (z[1] - z[0] ** 2) ** 2
    x, f = _minimise(fn, [-1.5, 2.0], 4000, lipschitz=100.0, rho=0.0, momentum=0.9)
    assert f < 1e-4
    torch.testing.assert_close(x, torch.ones(2, dtype=DT), rtol=0, atol=2e-2)


def test_trains_digits_mlp_to_target():
    from beyondsgd.bench.problems import get_problem
    from beyondsgd.bench.run.runner import run_trial

    res = run_trial("digits_mlp", "bpgrad", {"lipschitz": 30.0}, seed=0)
    assert res.status == "finished"
    assert res.best >= get_problem("digits_mlp").target, res.best
    assert res.final["train_loss"] < 0.1 * res.evals[0]["train_loss"]


# --------------------------------------------------------------------------------------------
# The Lipschitz estimator
# --------------------------------------------------------------------------------------------
def test_pairwise_lipschitz_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    f = torch.rand(7, generator=g, dtype=DT)
    w = torch.randn(7, 5, generator=g, dtype=DT)
    w[3] = w[1]  # a repeated iterate: that pair is skipped
    ratios = []
    for i in range(7):
        for j in range(i + 1, 7):
            d = math.sqrt(sum((float(w[i, k]) - float(w[j, k])) ** 2 for k in range(5)))
            if d > 0:
                ratios.append(abs(float(f[i]) - float(f[j])) / d)
    est = pairwise_lipschitz(f, w)
    ratios.sort()
    assert est.num_pairs == len(ratios) == 20 and est.num_iterates == 7
    assert est.mean == pytest.approx(sum(ratios) / len(ratios), rel=1e-12)
    assert est.max == pytest.approx(max(ratios), rel=1e-12)
    assert est.median == pytest.approx(ratios[(len(ratios) - 1) // 2], rel=1e-12)  # lower median


def test_estimate_lipschitz_recovers_the_slope_of_a_linear_loss():
    # f(w) = a.w (+ b): plain SGD moves along -a, so every pair gives exactly ||a||
    torch.manual_seed(0)
    model = nn.Linear(4, 1).to(DT)
    x = torch.randn(16, 4, dtype=DT)
    loss_fn = lambda out, y: out.mean() + y.sum() * 0
    a = torch.cat([x.mean(0), torch.ones(1, dtype=DT)])  # d f / d (W, b)
    before = _flat(model)
    est = estimate_lipschitz(model, loss_fn, [(x, x[:, :1])] * 10, steps=6,
                             optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))
    assert torch.equal(_flat(model), before)  # the model itself is untouched
    assert est.num_iterates == 7 and est.num_pairs == 21
    for v in (est.mean, est.median, est.max):
        assert v == pytest.approx(float(a.norm()), rel=1e-9)
    est2 = estimate_lipschitz(model, loss_fn, [(x, x[:, :1])] * 10, steps=6, loss_on="minibatch",
                              optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))
    assert est2.num_iterates == 6 and est2.mean == pytest.approx(float(a.norm()), rel=1e-9)


def test_estimate_lipschitz_bad_input():
    model = nn.Linear(2, 1)
    b = [(torch.randn(4, 2), torch.randn(4, 1))]
    with pytest.raises(ValueError, match="steps"):
        estimate_lipschitz(model, F.mse_loss, b, steps=0)
    with pytest.raises(ValueError, match="loss_on"):
        estimate_lipschitz(model, F.mse_loss, b, loss_on="val")
    with pytest.raises(ValueError, match="optimizer"):
        estimate_lipschitz(model, F.mse_loss, b, optimizer="lbfgs")
    with pytest.raises(ValueError, match="at least"):
        estimate_lipschitz(model, F.mse_loss, [])
    with pytest.raises(ValueError, match="identical"):
        pairwise_lipschitz(torch.tensor([1.0, 2.0]), torch.zeros(2, 3))


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    ({"lipschitz": 0.0}, "lipschitz must be > 0, got 0.0"),
    ({"lipschitz": -2.0}, "lipschitz must be > 0, got -2.0"),
    ({"lipschitz": float("nan")}, "lipschitz must be finite"),
    ({"lipschitz": "10"}, "lipschitz must be a real number, got '10'"),
    ({"rho": -0.1}, r"rho must be in \[0, 1\], got -0.1"),
    ({"rho": 1.5}, r"rho must be in \[0, 1\], got 1.5"),
    ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
    ({"momentum": -0.5}, r"momentum must be in \[0, 1\), got -0.5"),
    ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
    ({"momentum_form": "nesterov"}, "momentum_form must be one of"),
    ({"loss_estimate": "ema"}, "loss_estimate must be one of"),
])
def test_bad_arguments_raise(kw, match):
    args = {"lipschitz": 1.0, **kw}
    with pytest.raises(ValueError, match=match):
        BPGrad(nn.Linear(2, 1).parameters(), **args)


def test_bad_param_groups_raise():
    m = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="lipschitz must be > 0"):
        BPGrad([{"params": [m.weight], "lipschitz": -1.0}], lipschitz=1.0)
    with pytest.raises(ValueError, match="not both"):
        BPGrad([{"params": [m.weight], "lipschitz": 2.0, "lr": 0.5}], lipschitz=1.0)
    with pytest.raises(ValueError, match="same for all param groups"):
        BPGrad([{"params": [m.weight]}, {"params": [m.bias], "loss_estimate": "running_mean"}],
               lipschitz=1.0)


def test_bad_step_calls_raise():
    m = nn.Linear(2, 1)
    opt = BPGrad(m.parameters(), lipschitz=1.0)
    x = torch.randn(4, 2)
    with pytest.raises(RuntimeError, match="needs the loss value"):
        opt.step()

    def negative():
        opt.zero_grad()
        loss = m(x).mean() - 100.0
        loss.backward()
        return loss

    with pytest.raises(LossBelowBoundError,
                       match=r"loss -\d.* is below loss_lower_bound=0.0 \(the closure returned"):
        opt.step(negative)
    with pytest.raises(RuntimeError, match="returned None"):
        opt.step(lambda: None)

    def vector():
        opt.zero_grad()
        out = m(x).squeeze(1) ** 2
        out.sum().backward()
        return out

    with pytest.raises(ValueError, match="must be a scalar"):
        opt.step(vector)


# --------------------------------------------------------------------------------------------
# step(loss=...): the caller's own backward, then the loss whose gradient is in .grad
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("as_tensor", [True, False])
def test_step_with_loss_and_no_closure_matches_the_reference(as_tensor):
    """DeepOBS's runner pattern: zero_grad, loss.backward(), opt.step() -- here step(loss=f)."""
    model = _tiny()
    batches = _batches(6)
    w0 = _flat(model).clone()
    opt = BPGrad(model.parameters(), lipschitz=4.0, rho=0.2, momentum=0.9, weight_decay=1e-3)
    traj = []
    for x, y in batches:
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        out = opt.step(loss=loss if as_tensor else float(loss.detach()))
        assert (out.item() if isinstance(out, torch.Tensor) else out) == loss.item()
        traj.append(_flat(model))
    ref = _reference(w0, batches, 4.0, 0.2, 0.9, 1e-3, "paper", "minibatch", 10**9)
    for a, b in zip(traj, ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_step_loss_overrides_the_closures_return():
    """closure computes the gradient; loss= is f_t: the step length uses loss, not the return."""
    p = nn.Parameter(torch.tensor([3.0, 4.0], dtype=DT))
    opt = BPGrad([p], lipschitz=2.0, rho=0.0, momentum=0.0)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = 0.5 * (p ** 2).sum()  # 12.5; gradient p, unit direction (0.6, 0.8)
        loss.backward()
        return loss

    out = opt.step(closure, loss=1.0)
    assert calls == [True]  # the closure ran, under enable_grad
    assert out.item() == 12.5  # the closure's return is returned (torch.optim contract)
    # eta = (1.0 - 0) / 2 = 0.5 along -(0.6, 0.8): not (12.5 / 2) along it
    assert torch.allclose(p.detach(), torch.tensor([3.0 - 0.3, 4.0 - 0.4], dtype=DT),
                          rtol=0, atol=1e-15)
    assert opt.global_state["f_t"] == 1.0


def test_step_loss_bad_values_raise():
    p = nn.Parameter(torch.tensor([1.0], dtype=DT))
    opt = BPGrad([p], lipschitz=1.0)
    (p ** 2).sum().backward()
    with pytest.raises(ValueError, match=r"must be a scalar, but step\(loss=...\) got"):
        opt.step(loss=torch.ones(2))
    with pytest.raises(ValueError, match=r"tensor or a real number, but step\(loss=...\) got 'x'"):
        opt.step(loss="x")
    with pytest.raises(NonFiniteLossError, match="the loss is nan"):
        opt.step(loss=math.nan)
    assert torch.equal(p.detach(), torch.tensor([1.0], dtype=DT))


# --------------------------------------------------------------------------------------------
# loss_lower_bound and on_below_bound
# --------------------------------------------------------------------------------------------
def test_step_length_is_measured_from_the_lower_bound():
    """eta = ((f_t - b) - rho (min f - b)) / L, checked as the length of the step (momentum 0)."""
    p = nn.Parameter(torch.tensor([3.0, 4.0], dtype=DT))
    L, rho, b = 4.0, 0.5, -6.0
    opt = BPGrad([p], lipschitz=L, rho=rho, momentum=0.0, loss_lower_bound=b)
    losses = [-1.0, -3.0, -2.0]  # given values (the gradient is that of 0.5 |p|^2)
    for k, f in enumerate(losses):
        opt.zero_grad()
        (0.5 * (p ** 2).sum()).backward()
        before = p.detach().clone()
        opt.step(loss=f)
        f_min = min(losses[:k + 1])
        eta = ((f - b) - rho * (f_min - b)) / L  # by hand
        step = float(torch.linalg.vector_norm(p.detach() - before))
        assert step == pytest.approx(eta, rel=1e-13)
        assert opt.global_state["step_length"] == pytest.approx(eta, rel=1e-15)
    assert bpgrad_step_length(-2.0, -3.0, rho, L, lower_bound=b) == pytest.approx(
        ((-2.0 + 6.0) - 0.5 * (-3.0 + 6.0)) / 4.0, rel=1e-15)


@pytest.mark.parametrize("form", ["paper", "official"])
def test_shifting_the_loss_and_the_bound_together_changes_nothing(form):
    """f - c with bound -c gives the iterates of f with bound 0 (the default)."""
    c = 5.0
    trajs = []
    for shift, bound in [(0.0, 0.0), (c, -c)]:
        model = _tiny()
        opt = BPGrad(model.parameters(), lipschitz=3.0, rho=0.3, momentum=0.9,
                     momentum_form=form, loss_lower_bound=bound)
        traj = []
        for x, y in _batches(6):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y) - shift
            loss.backward()
            opt.step(loss=loss)
            traj.append(_flat(model))
        trajs.append(traj)
    for a, b in zip(*trajs):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)  # measured: ~4e-16 (f - c + c rounding)
    ref = _reference(_flat(_tiny()), _batches(6), 3.0, 0.3, 0.9, 0.0, form, "minibatch", 10**9)
    assert torch.allclose(trajs[1][-1], ref[-1], rtol=0, atol=1e-12)


def test_loss_below_the_bound_raises_before_any_change_and_names_both_values():
    model = _tiny()
    opt = BPGrad(model.parameters(), lipschitz=3.0, loss_lower_bound=0.25)
    _run_opt(model, opt, _batches(2))
    before = _snapshot(opt, model)
    opt.zero_grad()
    loss = F.mse_loss(model(_batches(1)[0][0]), _batches(1)[0][1])
    loss.backward()
    with pytest.raises(LossBelowBoundError, match=r"loss 0\.125 is below loss_lower_bound=0\.25 "
                       r".*Nothing was changed.*on_below_bound='diverge'") as info:
        opt.step(loss=0.125)
    assert (info.value.loss, info.value.bound) == (0.125, 0.25)
    assert isinstance(info.value, ValueError)
    _assert_unchanged(before, opt, model)
    assert not opt.diverged


@pytest.mark.parametrize("as_tensor", [True, False])
def test_on_below_bound_diverge_ends_the_run_without_raising(as_tensor):
    model = _tiny()
    opt = BPGrad(model.parameters(), lipschitz=3.0, loss_lower_bound=-1.0,
                 on_below_bound="diverge")
    batches = _batches(4)
    _run_opt(model, opt, batches[:2])
    state_before = copy.deepcopy(opt.global_state)
    before = _flat(model).clone()
    calls = []

    def closure(shift):
        def c():
            calls.append(shift)
            opt.zero_grad()
            loss = F.mse_loss(model(batches[2][0]), batches[2][1]) - shift
            loss.backward()
            return loss if as_tensor else float(loss.detach())
        return c

    with pytest.warns(RuntimeWarning, match=r"below loss_lower_bound=-1\.0.*ends as diverged"):
        out = opt.step(closure(10.0))
    assert math.isnan(float(out)) and isinstance(out, torch.Tensor) == as_tensor
    assert opt.diverged and opt.global_state["diverged"]
    assert torch.equal(_flat(model), before)
    # later steps: the closure still runs, nothing changes, NaN comes back, no new warning
    import warnings as _w
    with _w.catch_warnings():
        _w.simplefilter("error")
        out2 = opt.step(closure(0.0))  # a loss above the bound: still diverged
    assert math.isnan(float(out2)) and calls == [10.0, 0.0]
    assert torch.equal(_flat(model), before)
    assert {k: v for k, v in opt.global_state.items() if k != "diverged"} == {
        k: v for k, v in state_before.items() if k != "diverged"}
    # the diverged flag travels with state_dict
    fresh = BPGrad(model.parameters(), lipschitz=3.0, loss_lower_bound=-1.0,
                   on_below_bound="diverge")
    fresh.load_state_dict(opt.state_dict())
    assert fresh.diverged


def test_bound_settings_are_validated_and_global():
    m = nn.Linear(2, 1)
    for kw, match in [({"loss_lower_bound": math.nan}, "loss_lower_bound must be finite"),
                      ({"loss_lower_bound": "0"}, "loss_lower_bound must be a real number"),
                      ({"on_below_bound": "clip"}, r"on_below_bound must be one of \['raise', "
                                                   r"'diverge'\], got 'clip'")]:
        with pytest.raises(ValueError, match=match):
            BPGrad(m.parameters(), lipschitz=1.0, **kw)
    with pytest.raises(ValueError, match="loss_lower_bound must be the same for all param groups"):
        BPGrad([{"params": [m.weight]}, {"params": [m.bias], "loss_lower_bound": -1.0}],
               lipschitz=1.0)
    with pytest.raises(ValueError, match="on_below_bound must be the same for all param groups"):
        BPGrad([{"params": [m.weight]}, {"params": [m.bias], "on_below_bound": "diverge"}],
               lipschitz=1.0)


def test_runner_records_a_below_bound_diverge_as_diverged(monkeypatch):
    """The benchmark path: BPGradMethod.train_step turns a diverged optimizer into a NaN loss,
    and the runner ends the trial as ``diverged`` (a bound of 10 is above digits' ~2.3 loss)."""
    from beyondsgd.bench.run.runner import run_trial
    from beyondsgd.methods.bpgrad import BPGradMethod

    def make(self, model):
        return BPGrad(model.parameters(), lipschitz=30.0, loss_lower_bound=10.0,
                      on_below_bound="diverge")

    monkeypatch.setattr(BPGradMethod, "make_optimizer", make)
    with pytest.warns(RuntimeWarning, match="ends as diverged"):
        res = run_trial("digits_mlp", "bpgrad", {"lipschitz": 30.0}, seed=0, epochs=2)
    assert res.status == "diverged", (res.status, res.error)
    # the first epoch diverged at its first step: recorded, weights never changed
    assert [e["epoch"] for e in res.evals] == [0, 1]
    assert res.evals[1]["train_loss"] == res.evals[0]["train_loss"]


# --------------------------------------------------------------------------------------------
# Non-finite losses and gradients: refused before anything changes
# --------------------------------------------------------------------------------------------
def _snapshot(opt: BPGrad, model: nn.Module):
    return (_flat(model).clone(), copy.deepcopy(opt.state_dict()))


def _assert_unchanged(before, opt: BPGrad, model: nn.Module):
    w, sd = before
    assert torch.equal(_flat(model), w)
    now = opt.state_dict()
    assert now["state"].keys() == sd["state"].keys()
    for k, st in sd["state"].items():
        assert now["state"][k].keys() == st.keys()
        for key, val in st.items():
            other = now["state"][k][key]
            if isinstance(val, torch.Tensor):
                assert torch.equal(other, val), key
            else:
                assert other == val or (math.isnan(val) and math.isnan(other)), key


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("as_tensor", [True, False])
def test_non_finite_loss_raises_before_any_change(bad, as_tensor):
    model = _tiny()
    opt = BPGrad(model.parameters(), lipschitz=3.0, momentum=0.9)
    _run_opt(model, opt, _batches(2))  # momentum buffers and a loss history exist
    (x, y), = _batches(1, seed=5)

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y) + bad  # the gradient itself stays finite
        loss.backward()
        return loss if as_tensor else float(loss.detach())

    before = _snapshot(opt, model)
    with pytest.raises(NonFiniteLossError, match=rf"the loss is {bad!r}.*nothing was changed"):
        opt.step(closure)
    _assert_unchanged(before, opt, model)
    assert issubclass(NonFiniteLossError, ValueError)


def test_nan_weights_loss_is_refused_not_propagated():
    """The issue's case: a NaN from the model (here a NaN input) used to turn every weight NaN."""
    model = _tiny()
    opt = BPGrad(model.parameters(), lipschitz=3.0, momentum=0.0)
    x, y = _batches(1)[0]
    x = x.clone()
    x[0, 0] = math.nan
    before = _snapshot(opt, model)
    with pytest.raises(ValueError, match="the loss is nan"):
        _run_opt(model, opt, [(x, y)])
    _assert_unchanged(before, opt, model)
    assert torch.isfinite(_flat(model)).all()


def test_non_finite_gradient_is_refused():
    p = nn.Parameter(torch.tensor([1.0, 2.0], dtype=DT))
    opt = BPGrad([p], lipschitz=1.0)

    def closure():  # finite loss 0, infinite gradient: d/dp sqrt(p - 1) at p = 1
        opt.zero_grad()
        loss = (p[:1] - 1.0).sqrt().sum()
        loss.backward()
        return loss

    with pytest.raises(NonFiniteLossError, match="gradient norm is inf"):
        opt.step(closure)
    assert torch.equal(p.detach(), torch.tensor([1.0, 2.0], dtype=DT))
    assert opt.global_state["step"] == 0


def test_method_train_step_hands_a_refused_step_to_the_runner_as_a_non_finite_loss():
    meth = make_method("bpgrad", {"lipschitz": 3.0})
    model = _tiny()
    meth.optimizer = meth.make_optimizer(model)
    w0 = _flat(model).clone()
    x, y = _batches(1)[0]

    def nan_loss(out, target):
        return F.mse_loss(out, target) * math.nan

    loss = meth.train_step(model, (x, y), nan_loss)
    assert math.isnan(float(loss)) and torch.equal(_flat(model), w0)
    assert math.isfinite(float(meth.train_step(model, (x, y), F.mse_loss)))


def test_runner_records_a_bpgrad_blow_up_as_diverged_not_failed():
    """L = 1e-6 overflows float32 in the first epoch: the refused step must end the trial as
    ``diverged`` (the runner re-raises errors raised while the weights and the summed loss are
    still finite, so without ``BPGradMethod.train_step`` this trial would fail)."""
    from beyondsgd.bench.run.runner import run_trial

    res = run_trial("digits_mlp", "bpgrad", {"lipschitz": 1e-6, "rho": 0.0}, epochs=2)
    assert res.status == "diverged", (res.status, res.error)


# --------------------------------------------------------------------------------------------
# Copies, pickles, optional lipschitz, lr
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("distributed", [None, False, True])
def test_copies_keep_distributed_and_step_identically(how, distributed):
    model = _tiny()
    opt = BPGrad(model.parameters(), lipschitz=3.0, distributed=distributed)
    if not distributed:
        _run_opt(model, opt, _batches(2))
    if how == "deepcopy":
        m2, o2 = copy.deepcopy((model, opt))
    else:
        m2, o2 = pickle.loads(pickle.dumps((model, opt)))
    assert o2.distributed is distributed
    if distributed:  # True needs an initialised process group: the copy refuses like the original
        for o, m in ((opt, model), (o2, m2)):
            with pytest.raises(RuntimeError, match="not initialised"):
                _run_opt(m, o, _batches(1))
        return
    ta = _run_opt(model, opt, _batches(3, seed=7))
    tb = _run_opt(m2, o2, _batches(3, seed=7))
    for a, b in zip(ta, tb):
        assert torch.equal(a, b)


def test_lipschitz_is_optional_when_every_group_sets_one():
    model = _tiny()
    ps = list(model.parameters())
    a = BPGrad([{"params": ps[:2], "lipschitz": 4.0}, {"params": ps[2:], "lr": 0.05}])
    assert [g["lr"] for g in a.param_groups] == [0.25, 0.05]
    m2 = copy.deepcopy(model)
    ps2 = list(m2.parameters())
    b = BPGrad([{"params": ps2[:2]}, {"params": ps2[2:], "lipschitz": 20.0}], lipschitz=4.0)
    b.param_groups[1]["lr"] = 0.05
    for ta, tb in zip(_run_opt(model, a, _batches(3)), _run_opt(m2, b, _batches(3))):
        assert torch.equal(ta, tb)
    with pytest.raises(ValueError, match=r"param group 1 sets neither 'lipschitz' nor 'lr'"):
        BPGrad([{"params": ps[:2], "lipschitz": 4.0}, {"params": ps[2:]}])
    with pytest.raises(ValueError, match=r"param group 0 sets neither"):
        BPGrad(model.parameters())
    with pytest.raises(ValueError, match=r"param group 2 sets neither"):
        a.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})


def test_lr_is_the_inverse_lipschitz():
    batches = _batches(4)
    runs = []
    for kw in ({"lipschitz": 4.0}, {"lr": 0.25}, {"lr": torch.tensor(0.25, dtype=DT)}):
        m = _tiny()
        runs.append(_run_opt(m, BPGrad(m.parameters(), momentum=0.9, **kw), batches))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="lipschitz=L or lr=1/L, not both"):
        BPGrad(_tiny().parameters(), lipschitz=4.0, lr=0.25)
    for bad, match in ((0.0, "lr = 1/lipschitz must be > 0"), (-1.0, "must be > 0"),
                       (math.inf, "must be finite"), (torch.tensor([0.1, 0.2]), "one floating"),
                       (torch.tensor(1), "one floating"), ("0.1", "real number")):
        with pytest.raises(ValueError, match=match):
            BPGrad(_tiny().parameters(), lr=bad)


# --------------------------------------------------------------------------------------------
# The registered method
# --------------------------------------------------------------------------------------------
def test_registered_method_hparams_and_epoch_hook():
    cls = METHODS["bpgrad"]
    hps = {h.name: h for h in cls.hparams}
    assert {"lipschitz", "rho", "momentum", "weight_decay", "momentum_form",
            "loss_estimate"} <= set(hps)
    assert hps["lipschitz"].tune and hps["lipschitz"].log
    assert hps["momentum_form"].choices == ("paper", "official")
    with pytest.raises(ValueError, match="not one of"):
        make_method("bpgrad", {"loss_estimate": "ema"})
    meth = make_method("bpgrad", {"loss_estimate": "running_mean", "lipschitz": "20"})
    model = _tiny().float()
    meth.optimizer = meth.make_optimizer(model)
    assert meth.metrics(model) == {}
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    for _ in range(3):
        meth.train_step(model, (x, y), F.mse_loss)
    assert meth.optimizer.global_state["loss_count"] == 3
    assert set(meth.metrics(model)) == {"bpgrad_step_length", "bpgrad_f_min"}
    meth.end_of_epoch(model, None, 0)
    assert meth.optimizer.global_state["loss_count"] == 0
    assert meth.optimizer.param_groups[0]["lr"] == pytest.approx(1 / 20)


# --------------------------------------------------------------------------------------------
# Issue 22/27: keyword-only settings, the official short-batch scaling, maximize, foreach,
# gradient scalers
# --------------------------------------------------------------------------------------------
def test_a_positional_second_argument_is_a_clear_type_error():
    """BPGrad(params, 1e-3) used to mean L = 0.001 (a step 1000x the loss): refused now."""
    with pytest.raises(TypeError, match=r"keywords only.*\(0\.001,\).*lipschitz=L"):
        BPGrad(_tiny().parameters(), 1e-3)
    with pytest.raises(TypeError, match="lipschitz=L"):
        BPGrad(_tiny().parameters(), 10.0, 0.1)


def _official_reference(w0, batches, nominal, L, rho, mu, wd, epoch_len):
    """The official MatConvNet BPGrad update (cnn_train_v2_cifar_BPGrad.m, accumulateGradients
    and processEpoch) written out on a flat vector: the loss layer returns the *sum* over the
    batch's b samples; the norm is that of sum / nominal N, the direction sum / b + decay,
    divided by that norm; f_t is the epoch's summed loss over its sample count; heavy ball
    s = mu s - d, w += eta s."""
    w, s_buf = w0.clone(), torch.zeros_like(w0)
    f_hist, loss_sum, count, traj = [], 0.0, 0, []
    for k, (x, y) in enumerate(batches):
        if k % epoch_len == 0:
            loss_sum, count = 0.0, 0
        b = x.shape[0]
        wg = w.clone().requires_grad_(True)
        total = _ref_loss(wg, x, y) * b  # the sum over the batch's samples
        (dzdw,) = torch.autograd.grad(total, wg)
        loss_sum, count = loss_sum + float(total.detach()), count + b
        f_hist.append(loss_sum / count)
        eta = (f_hist[-1] - rho * min(f_hist)) / L
        dzdw_norm = torch.linalg.vector_norm(dzdw / nominal)
        par_der = (dzdw / b + wd * w) / dzdw_norm
        s_buf = mu * s_buf - par_der
        w = w + eta * s_buf
        traj.append(w.clone())
    return traj


def _sized_batches(sizes, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 3, generator=g, dtype=DT), torch.randn(b, 2, generator=g, dtype=DT))
            for b in sizes]


def test_nominal_batch_size_matches_the_official_update_on_short_batches():
    """Parity with the official code (docs/methods/bpgrad.md names this test): epochs of 8, 8
    and 3 samples, N = 8, weight decay, official momentum and running mean."""
    sizes, n, epoch_len = [8, 8, 3] * 3, 8, 3
    batches = _sized_batches(sizes)
    kw = dict(lipschitz=4.0, rho=0.1, momentum=0.9, weight_decay=1e-2,
              momentum_form="official", loss_estimate="running_mean")
    model = _tiny()
    ref = _official_reference(_flat(model), batches, n, 4.0, 0.1, 0.9, 1e-2, epoch_len)
    got = _run_opt(model, BPGrad(model.parameters(), nominal_batch_size=n, **kw), batches,
                     epoch_len, with_batch_size=True)
    for k, (a, b) in enumerate(zip(got, ref)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=f"step {k}")
    # without the option (the true mean, minibatches weighted equally) the runs part after the
    # first short batch (step 3)
    plain = _tiny()
    other = _run_opt(plain, BPGrad(plain.parameters(), **kw), batches, epoch_len)
    torch.testing.assert_close(other[1], ref[1], rtol=0, atol=1e-12)
    moved = float((ref[-1] - _flat(_tiny())).norm())
    assert float((other[-1] - ref[-1]).norm()) / moved > 1e-2


def test_nominal_batch_size_changes_nothing_on_full_batches():
    batches = _batches(6)
    kw = dict(lipschitz=4.0, momentum=0.9, loss_estimate="running_mean")
    a, b = _tiny(), _tiny()
    ta = _run_opt(a, BPGrad(a.parameters(), **kw), batches, 3)
    tb = _run_opt(b, BPGrad(b.parameters(), nominal_batch_size=8, **kw), batches, 3,
                    with_batch_size=True)
    for x, y in zip(ta, tb):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-14)


def test_nominal_batch_size_bad_input():
    m = nn.Linear(2, 1)
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match=rf"nominal_batch_size must be None \(off\) or an "
                                             rf"int >= 1.*got {bad!r}"):
            BPGrad(m.parameters(), lipschitz=1.0, nominal_batch_size=bad)
    x, y = torch.randn(4, 2), torch.randn(4, 1)

    def closure(opt):
        opt.zero_grad()
        loss = F.mse_loss(m(x), y)
        loss.backward()
        return loss

    opt = BPGrad(m.parameters(), lipschitz=1.0, nominal_batch_size=4)
    with pytest.raises(ValueError, match=r"nominal_batch_size=4 needs step\(\.\.\., batch_size"):
        opt.step(lambda: closure(opt))
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match=rf"batch_size must be an int in \[1, "
                                             rf"nominal_batch_size=4\].*got {bad!r}"):
            opt.step(lambda: closure(opt), batch_size=bad)
    assert opt.global_state["step"] == 0
    plain = BPGrad(m.parameters(), lipschitz=1.0)
    with pytest.raises(ValueError, match="batch_size=4 is only used with nominal_batch_size"):
        plain.step(lambda: closure(plain), batch_size=4)
    with pytest.raises(ValueError, match="must be the same for all param groups"):
        BPGrad([{"params": [m.weight]}, {"params": [m.bias], "nominal_batch_size": 4}],
               lipschitz=1.0)


@pytest.mark.parametrize("form", ["paper", "official"])
def test_maximize_equals_minimising_the_negated_objective(form):
    batches = _batches(6)
    kw = dict(lipschitz=4.0, rho=0.2, momentum=0.9, weight_decay=1e-3, momentum_form=form,
              loss_estimate="running_mean", loss_lower_bound=-0.5)
    a, b = _tiny(), _tiny()
    oa = BPGrad(a.parameters(), **kw)
    ob = BPGrad(b.parameters(), maximize=True, **kw)
    for x, y in batches:
        def loss_a(x=x, y=y):
            oa.zero_grad()
            loss = F.mse_loss(a(x), y)
            loss.backward()
            return loss

        def gain_b(x=x, y=y):  # the objective to maximise: -mse, bounded above by 0.5
            ob.zero_grad()
            gain = -F.mse_loss(b(x), y)
            gain.backward()
            return gain

        assert float(oa.step(loss_a).detach()) == -float(ob.step(gain_b).detach())
        assert torch.equal(_flat(a), _flat(b))
    assert oa.global_state == ob.global_state
    # the bound: with maximize it bounds -f, so an objective above -loss_lower_bound is refused
    with pytest.raises(LossBelowBoundError, match=r"maximize=True the objective must stay <= "
                                                  r"-loss_lower_bound = 0.5"):
        ob.step(loss=torch.tensor(0.7, dtype=DT))
    with pytest.raises(ValueError, match="maximize must be True or False, got 1"):
        BPGrad(_tiny().parameters(), lipschitz=1.0, maximize=1)


@pytest.mark.parametrize("form", ["paper", "official"])
@pytest.mark.parametrize("mu,wd,maximize", [(0.9, 1e-2, False), (0.0, 0.0, True)])
def test_foreach_false_is_the_same_update_one_tensor_at_a_time(form, mu, wd, maximize):
    batches = _batches(5)
    runs = []
    for foreach in (None, True, False):
        m = _tiny()
        opt = BPGrad(m.parameters(), lipschitz=4.0, momentum=mu, weight_decay=wd,
                     momentum_form=form, maximize=maximize, foreach=foreach,
                     loss_lower_bound=-10.0 if maximize else 0.0)
        if maximize:
            traj = []
            for x, y in batches:
                def closure(x=x, y=y, opt=opt, m=m):
                    opt.zero_grad()
                    f = -F.mse_loss(m(x), y)
                    f.backward()
                    return f
                opt.step(closure)
                traj.append(_flat(m))
            runs.append(traj)
        else:
            runs.append(_run_opt(m, opt, batches))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="foreach must be None, True or False, got 'yes'"):
        BPGrad(_tiny().parameters(), lipschitz=1.0, foreach="yes")


def test_a_state_dict_saved_before_the_new_settings_loads_and_continues():
    model = _tiny()
    opt = BPGrad(model.parameters(), lipschitz=3.0)
    _run_opt(model, opt, _batches(2))
    sd = copy.deepcopy(opt.state_dict())
    for g in sd["param_groups"]:
        for key in ("maximize", "foreach", "nominal_batch_size"):
            del g[key]
    m2 = copy.deepcopy(model)
    o2 = BPGrad(m2.parameters(), lipschitz=3.0)
    o2.load_state_dict(sd)
    assert o2.param_groups[0]["maximize"] is False and o2.param_groups[0]["foreach"] is None
    for a, b in zip(_run_opt(model, opt, _batches(2, 9)), _run_opt(m2, o2, _batches(2, 9))):
        assert torch.equal(a, b)


def test_gradient_scaler_steps_with_loss_and_refuses_clearly_without():
    """torch.amp.GradScaler.step(opt) calls opt.step() without a closure: BPGrad names the
    fix; scaler.step(opt, loss=loss) gives BPGrad's step on the unscaled gradient."""
    batches = [(x.float(), y.float()) for x, y in _batches(4)]
    a, b = _tiny().float(), _tiny().float()
    oa = BPGrad(a.parameters(), lipschitz=4.0)
    ob = BPGrad(b.parameters(), lipschitz=4.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for x, y in batches:
        oa.zero_grad()
        loss = F.mse_loss(a(x), y)
        loss.backward()
        oa.step(loss=loss)
        ob.zero_grad()
        loss_b = F.mse_loss(b(x), y)
        scaler.scale(loss_b).backward()
        scaler.step(ob, loss=loss_b)
        scaler.update()
        torch.testing.assert_close(_flat(a), _flat(b), rtol=1e-6, atol=1e-7)
    ob.zero_grad()
    scaler.scale(F.mse_loss(b(batches[0][0]), batches[0][1])).backward()
    with pytest.raises(RuntimeError, match=r"gradient scaler.*scaler\.step\(opt, loss=loss\).*"
                                           r"BPGradMixin"):
        scaler.step(ob)


def test_with_rho_zero_the_lower_bound_is_the_papers_f_star():
    """docs/methods/bpgrad.md: a known optimum f* is used as the paper's pruning radius
    (f_t - f*)/L with rho=0, loss_lower_bound=f*; with rho > 0 the step is measured from
    f* + rho (min f - f*) instead (not f* itself)."""
    f_star, L = 0.3, 5.0
    model = _tiny()
    x, y = _batches(1)[0]
    for rho in (0.0, 0.4):
        m = copy.deepcopy(model)
        opt = BPGrad(m.parameters(), lipschitz=L, rho=rho, momentum=0.0,
                     loss_lower_bound=f_star)
        w0 = _flat(m)
        f = float(F.mse_loss(m(x), y).detach()) + 1.0  # any loss above f*: shifted by +1

        def closure(m=m, opt=opt):
            opt.zero_grad()
            loss = F.mse_loss(m(x), y) + 1.0
            loss.backward()
            return loss

        opt.step(closure)
        moved = float((_flat(m) - w0).norm())
        radius = (f - f_star) / L  # the paper's pruning radius
        if rho == 0.0:
            assert moved == pytest.approx(radius, rel=1e-12)
        else:
            assert moved == pytest.approx((1 - rho) * radius, rel=1e-12)  # f_min = f_t here
            assert moved < radius


def test_docs_state_the_parity_option_and_the_known_optimum():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs/methods/bpgrad.md").read_text()
    assert "nominal_batch_size" in doc
    assert "test_nominal_batch_size_matches_the_official_update_on_short_batches" in doc
    assert "rho=0, loss_lower_bound=f*" in doc
    assert "test_with_rho_zero_the_lower_bound_is_the_papers_f_star" in doc
    assert "maximize=True" in doc and "foreach" in doc
