"""ProxProp: the maths against independent dense computations, the paper's invariants
(Prop. 1/2/4/5), the converter and the registered methods."""

import copy
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import beyondsgd as bs
from beyondsgd.methods import METHODS, make_method
from beyondsgd.methods.proxprop import (
    ConvGeometry,
    ProxConfig,
    ProxConv2d,
    ProxLinear,
    conv2d_gram_apply,
    conv2d_unfolded,
    linear_prox_direction,
    proxprop,
)
from beyondsgd.methods.proxprop.cg import batched_cg

DT = torch.float64


def _loss(z: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A fixed nonlinear, mean-reduced loss of a layer output (ReLU -> linear -> CE)."""
    g = torch.Generator().manual_seed(seed)
    zf = z.flatten(1)
    r = torch.randn(zf.shape[1], 5, generator=g, dtype=z.dtype).to(z.device)
    y = torch.randint(0, 5, (z.shape[0],), generator=g).to(z.device)
    return F.cross_entropy(torch.relu(zf) @ r, y)


def _plain_grads(layer: nn.Module, x: torch.Tensor):
    """Autograd on the plain layer: (dJ/dz, [dJ/dW.flatten(1), dJ/db], dJ/dx)."""
    layer = copy.deepcopy(layer)
    x = x.clone().requires_grad_(True)
    z = layer(x)
    z.retain_grad()
    _loss(z).backward()
    gth = torch.cat([layer.weight.grad.flatten(1), layer.bias.grad[:, None]], 1)
    return z.grad, gth, x.grad


def _prox_grads(layer: nn.Module, x: torch.Tensor, **cfg):
    """The ProxProp layer's .grad (flattened like _plain_grads) and dJ/dx."""
    layer = copy.deepcopy(layer)
    cls = ProxLinear if isinstance(layer, nn.Linear) else ProxConv2d
    pl = cls.from_module(layer, ProxConfig(**cfg))
    x = x.clone().requires_grad_(True)
    _loss(pl(x)).backward()
    return torch.cat([pl.weight.grad.flatten(1), pl.bias.grad[:, None]], 1), x.grad


def _linear(n_in=7, n_out=4, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out).to(DT)


def _dense_linear_solution(x, gth, tau, gram="sum"):
    a = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    s = 1.0 if gram == "sum" else 1.0 / x.shape[0]
    m = torch.eye(a.shape[1], dtype=x.dtype) / tau + s * a.T @ a
    return torch.linalg.solve(m, gth.T).T


# ------------------------------------------------------------------------------------------
# BackProp equivalence and the downward signal
# ------------------------------------------------------------------------------------------
def test_gradient_mode_equals_autograd_on_cnn_and_mlp():
    from beyondsgd import models as M

    for build, shape in ((lambda: M.cnn_2c2d(seed=3), (6, 1, 28, 28)),
                         (lambda: M.mlp(20, [16, 12], 3, seed=3), (9, 20))):
        ref, net = build(), proxprop(build(), solver="gradient")
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        y = torch.randint(0, 3, (shape[0],))
        F.cross_entropy(ref(x), y).backward()
        F.cross_entropy(net(x), y).backward()
        for (n, p), (_, q) in zip(ref.named_parameters(), net.named_parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("solver,iters", [("exact", 1), ("cg", 1), ("cg", 3)])
def test_input_gradient_is_ordinary_backprop(solver, iters):
    """Eq. 10: the signal passed down uses the old weights, so dJ/dx equals BackProp's."""
    lin = _linear(6, 5)
    x = torch.randn(11, 6, dtype=DT)
    _, _, gx_ref = _plain_grads(lin, x)
    _, gx = _prox_grads(lin, x, solver=solver, cg_iters=iters)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-14)
    conv = nn.Conv2d(2, 3, 3, padding=1).to(DT)
    xc = torch.randn(2, 2, 5, 5, dtype=DT)
    _, _, gx_ref = _plain_grads(conv, xc)
    _, gx = _prox_grads(conv, xc, solver=solver, cg_iters=iters)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-14)


def test_layers_below_a_prox_layer_get_backprop_gradients_of_the_same_loss():
    """Only the prox layers' .grad change; the explicit last layer's gradient is BackProp's."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))
    net = proxprop(copy.deepcopy(ref), solver="exact", tau_theta=0.5)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    F.cross_entropy(ref(x), y).backward()
    F.cross_entropy(net(x), y).backward()
    assert isinstance(net[0], ProxLinear) and isinstance(net[2], ProxLinear)
    assert type(net[4]) is nn.Linear
    torch.testing.assert_close(net[4].weight.grad, ref[4].weight.grad)
    assert not torch.allclose(net[0].weight.grad, ref[0].weight.grad)


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_tau_theta_to_zero_gives_scaled_gradient(solver):
    """M = I/tau + A^T A  =>  M^{-1} grad / tau -> grad as tau -> 0."""
    lin = _linear(9, 4)
    x = torch.randn(13, 9, dtype=DT)
    _, gth, _ = _plain_grads(lin, x)
    for tau, tol in ((1e-4, 1e-2), (1e-7, 1e-5)):  # error is O(tau |A^T A|)
        d, _ = _prox_grads(lin, x, solver=solver, cg_iters=1, tau_theta=tau, cg_eps=0.0)
        rel = (d / tau - gth).norm() / gth.norm()
        assert rel < tol, (tau, rel)
    conv = nn.Conv2d(2, 3, 3).to(DT)
    xc = torch.randn(3, 2, 6, 6, dtype=DT)
    _, gth, _ = _plain_grads(conv, xc)
    d, _ = _prox_grads(conv, xc, solver=solver, cg_iters=1, tau_theta=1e-7, cg_eps=0.0)
    assert (d / 1e-7 - gth).norm() / gth.norm() < 1e-4


# ------------------------------------------------------------------------------------------
# Exact solves against dense linear algebra
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [5, 40])  # 5 < fan-in + 1: Woodbury; 40: Cholesky
@pytest.mark.parametrize("gram", ["sum", "mean"])
def test_exact_linear_matches_dense_normal_equations(batch, gram):
    lin = _linear(12, 4)
    x = torch.randn(batch, 12, dtype=DT)
    _, gth, _ = _plain_grads(lin, x)
    d, _ = _prox_grads(lin, x, solver="exact", tau_theta=0.3, gram=gram)
    torch.testing.assert_close(d, _dense_linear_solution(x, gth, 0.3, gram), rtol=1e-9,
                               atol=1e-12)


def test_exact_linear_is_the_papers_closed_form_prox_step():
    """Appendix/Section 3 closed form: Theta+ = (z~ a~^T + Theta/tau)(a~ a~^T + I/tau)^{-1}
    with z~ = z - dJ/dz (Eqs. 8-11, unit steps) and theta_k - theta_{k+1} in .grad."""
    lin = _linear(6, 3)
    x = torch.randn(8, 6, dtype=DT)
    gz, _, _ = _plain_grads(lin, x)
    tau = 0.7
    a = torch.cat([x, torch.ones(8, 1, dtype=DT)], 1).T  # (K, B) columns = samples
    theta = torch.cat([lin.weight, lin.bias[:, None]], 1).detach()
    z_t = (lin(x) - gz).T.detach()  # (m, B)
    new = (z_t @ a.T + theta / tau) @ torch.linalg.inv(a @ a.T + torch.eye(7, dtype=DT) / tau)
    d, _ = _prox_grads(lin, x, solver="exact", tau_theta=tau)
    torch.testing.assert_close(theta - d, new, rtol=1e-9, atol=1e-12)


def _jacobian_matrix(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Dense A: d vec(conv(x; W, b)) / d [W, b] per output channel, via autograd."""
    def f(w, b):
        return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    jw, jb = torch.autograd.functional.jacobian(f, (conv.weight.detach(), conv.bias.detach()))
    out = f(conv.weight, conv.bias)
    n_out = out.numel()
    return torch.cat([jw.reshape(n_out, -1), jb.reshape(n_out, -1)], 1)  # (outputs, params)


CONVS = [
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1),
    dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=0),
    dict(in_channels=4, out_channels=4, kernel_size=2, dilation=2, padding=1, groups=2),
]


def _param_vec_to_rows(v: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    nw = conv.weight.numel()
    return torch.cat([v[:nw].reshape(conv.out_channels, -1), v[nw:, None]], 1)


@pytest.mark.parametrize("spec", CONVS)
def test_conv_gram_apply_matches_explicit_matrix(spec):
    torch.manual_seed(0)
    conv = nn.Conv2d(**spec).to(DT)
    x = torch.randn(3, spec["in_channels"], 7, 7, dtype=DT)
    geo = ConvGeometry(conv.stride, conv.padding, conv.dilation, conv.groups)
    a = _jacobian_matrix(conv, x)
    v = torch.randn(a.shape[1], dtype=DT)
    rows = _param_vec_to_rows(v, conv)
    got = conv2d_gram_apply(x, rows, conv.weight.shape, True, geo)
    torch.testing.assert_close(got, _param_vec_to_rows(a.T @ (a @ v), conv), rtol=1e-10,
                               atol=1e-10)
    # the unfolded matrix used by the exact solver reproduces the convolution
    u = conv2d_unfolded(x, conv.weight.shape, True, geo)  # (G, B*L, K)
    g = conv.groups
    th = torch.cat([conv.weight.flatten(1), conv.bias[:, None]], 1).detach()
    th = th.reshape(g, conv.out_channels // g, -1)
    out = torch.bmm(u, th.transpose(1, 2))  # (G, B*L, C/G)
    ref = conv(x).detach()  # (B, C, H, W)
    n, c, h, w = ref.shape
    ref = ref.reshape(n, g, c // g, h * w).permute(1, 0, 3, 2).reshape(g, n * h * w, c // g)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spec", CONVS)
@pytest.mark.parametrize("gram", ["sum", "mean"])
def test_exact_and_converged_cg_conv_match_dense_solve(spec, gram):
    torch.manual_seed(1)
    conv = nn.Conv2d(**spec).to(DT)
    x = torch.randn(3, spec["in_channels"], 7, 7, dtype=DT)
    _, gth, _ = _plain_grads(conv, x)
    a = _jacobian_matrix(conv, x)
    s = 1.0 if gram == "sum" else 1.0 / 3
    tau = 0.2
    m = torch.eye(a.shape[1], dtype=DT) / tau + s * a.T @ a
    nw = conv.weight.numel()
    gvec = torch.cat([gth[:, :-1].reshape(-1), gth[:, -1]])
    ref = _param_vec_to_rows(torch.linalg.solve(m, gvec), conv)
    d, _ = _prox_grads(conv, x, solver="exact", tau_theta=tau, gram=gram)
    torch.testing.assert_close(d, ref, rtol=1e-8, atol=1e-12)
    for block in ("unit", "layer"):
        d, _ = _prox_grads(conv, x, solver="cg", cg_iters=nw + 5, tau_theta=tau, gram=gram,
                           cg_tol=0.0, cg_eps=0.0, cg_block=block)
        torch.testing.assert_close(d, ref, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------------
# CG: convergence and descent (Prop. 4 / Prop. 5)
# ------------------------------------------------------------------------------------------
def test_linear_cg_error_decreases_to_exact():
    lin = _linear(30, 6)
    x = torch.randn(50, 30, dtype=DT) * torch.linspace(0.1, 3, 30, dtype=DT)  # ill-conditioned
    _, gth, _ = _plain_grads(lin, x)
    exact = _dense_linear_solution(x, gth, 1.0)
    errs = []
    for it in (1, 3, 10, 60):
        d, _ = _prox_grads(lin, x, solver="cg", cg_iters=it, cg_tol=0.0, cg_eps=0.0)
        errs.append(float((d - exact).norm() / exact.norm()))
    assert errs[0] > errs[1] > errs[2] > errs[3], errs
    assert errs[-1] < 1e-8, errs


@pytest.mark.parametrize("solver,iters", [("exact", 1), ("cg", 1), ("cg", 3), ("cg", 5)])
@pytest.mark.parametrize("block", ["unit", "layer"])
def test_direction_is_descent_on_random_batches(solver, iters, block):
    """<d, grad> > 0 per layer (Prop. 4 for exact, Prop. 5 for any CG count from v=0), also
    per output unit for the per-unit CG and the exact solve (each row is its own system)."""
    from beyondsgd import models as M

    net = M.cnn_2c2d(seed=0, image_size=12).to(DT)
    net[7] = nn.Linear(64 * 9, 20).to(DT)  # smaller fc for speed
    net[9] = nn.Linear(20, 10).to(DT)
    ref = copy.deepcopy(net)
    proxprop(net, solver=solver, cg_iters=iters, cg_block=block, tau_theta=2.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.rand(16, 1, 12, 12, generator=g, dtype=DT)
        y = torch.randint(0, 10, (16,), generator=g)
        for m in (net, ref):
            m.zero_grad()
            F.cross_entropy(m(x), y).backward()
        for i in (0, 3, 7):
            d = torch.cat([net[i].weight.grad.flatten(1), net[i].bias.grad[:, None]], 1)
            gr = torch.cat([ref[i].weight.grad.flatten(1), ref[i].bias.grad[:, None]], 1)
            assert (d * gr).sum() > 0
            if block == "unit" or solver == "exact":
                row = (d * gr).sum(1)
                assert ((row > 0) | (gr.abs().sum(1) == 0)).all()  # zero only for dead units


def test_batched_cg_against_dense_solve_and_stopping_rule():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(8, 8, generator=g, dtype=DT)
    mat = q @ q.T + 0.5 * torch.eye(8, dtype=DT)
    b = torch.randn(5, 8, generator=g, dtype=DT)
    ref = torch.linalg.solve(mat, b.T).T
    x, k = batched_cg(lambda v: v @ mat, b, maxiter=8)
    assert k == 8
    torch.testing.assert_close(x, ref, rtol=1e-8, atol=1e-10)
    x, k = batched_cg(lambda v: v @ mat, b, maxiter=50, x0=ref + 0.1)
    torch.testing.assert_close(x, ref, rtol=1e-8, atol=1e-10)
    # joint: one CG on the whole (block-diagonal) system converges to the same solution
    x, _ = batched_cg(lambda v: v @ mat, b, maxiter=60, joint=True)
    torch.testing.assert_close(x, ref, rtol=1e-7, atol=1e-9)
    # official stopping rule: stops early once max row residual^2 < tol^2 mean initial
    _, k = batched_cg(lambda v: v @ mat, b, maxiter=100, tol=1e-2)
    assert 1 < k < 100
    # zero right-hand side: no NaN (0/0 guarded), solution zero
    x, _ = batched_cg(lambda v: v @ mat, torch.zeros(2, 8, dtype=DT), maxiter=3)
    assert torch.equal(x, torch.zeros(2, 8, dtype=DT))
    with pytest.raises(ValueError, match="maxiter"):
        batched_cg(lambda v: v, b, maxiter=0)
    with pytest.raises(ValueError, match="tol"):
        batched_cg(lambda v: v, b, maxiter=1, tol=-1.0)


def test_cg_eps_matches_official_formula_for_one_iteration():
    """cg1 from v=0: d = alpha g with alpha = |g|^2 / (g^T M g + eps) per output unit for the
    official variant (absolute eps) and alpha = |g|^2 / (g^T M g + eps |g|^2) for ours."""
    lin = _linear(5, 3)
    x = torch.randn(4, 5, dtype=DT) * 1e-3
    _, gth, _ = _plain_grads(lin, x)
    a = torch.cat([x, torch.ones(4, 1, dtype=DT)], 1)
    m = torch.eye(6, dtype=DT) + a.T @ a
    gg, gmg = (gth ** 2).sum(1), ((gth @ m) * gth).sum(1)
    for eps in (0.0, 1e-6, 0.5):
        for variant, den in (("official", gmg + eps), ("textbook", gmg + eps * gg)):  # r0 = g
            d, _ = _prox_grads(lin, x, solver="cg", cg_iters=1, cg_eps=eps, cg_variant=variant)
            torch.testing.assert_close(d, (gg / den)[:, None] * gth, rtol=1e-10, atol=1e-15)


# ------------------------------------------------------------------------------------------
# Layers and converter
# ------------------------------------------------------------------------------------------
def test_converter_shares_parameters_and_state_dict_round_trips(tmp_path):
    from beyondsgd import models as M

    net = M.cnn_2c2d(seed=0)
    plain_sd = {k: v.clone() for k, v in net.state_dict().items()}
    params_before = [id(p) for p in net.parameters()]
    proxprop(net)
    assert [id(p) for p in net.parameters()] == params_before
    assert list(net.state_dict()) == list(plain_sd)  # also before the output layer is known
    net(torch.zeros(1, 1, 28, 28))  # the first forward finds the output layer
    assert [id(p) for p in net.parameters()] == params_before
    assert isinstance(net[0], ProxConv2d) and isinstance(net[3], ProxConv2d)
    assert isinstance(net[7], ProxLinear) and type(net[9]) is nn.Linear  # last layer explicit
    assert list(net.state_dict()) == list(plain_sd)
    torch.save(net.state_dict(), tmp_path / "m.pt")
    other = proxprop(M.cnn_2c2d(seed=1))
    other.load_state_dict(torch.load(tmp_path / "m.pt"))
    x = torch.randn(3, 1, 28, 28)
    ref = M.cnn_2c2d(seed=0)
    ref.load_state_dict(plain_sd)
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x), ref(x))
    torch.testing.assert_close(net(x), ref(x))  # grad-enabled forward is the plain forward


def test_named_layers_and_errors():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Conv1d(1, 1, 1), nn.Linear(5, 2))
    proxprop(net, layers=["3"])  # the last layer may be converted when named
    assert isinstance(net[3], ProxLinear) and type(net[0]) is nn.Linear
    with pytest.raises(ValueError, match="ReLU.*accepted: nn.Linear, nn.Conv2d"):
        proxprop(net, layers="1")
    with pytest.raises(ValueError, match="Conv1d"):
        proxprop(net, layers=["2"])
    with pytest.raises(ValueError, match="no submodule named 'fc9'"):
        proxprop(net, layers=["fc9"])
    with pytest.warns(UserWarning, match="Conv1d"), \
            pytest.warns(UserWarning, match="no layer converted"):
        net1 = proxprop(nn.Sequential(nn.Conv1d(1, 1, 1), nn.Flatten(), nn.Linear(3, 2)))
        net1(torch.zeros(2, 1, 3))  # the Linear is called last: it is the output layer
    assert type(net1[2]) is nn.Linear
    proxprop(net, layers=["3"], tau_theta=0.1)  # reconfigure an already converted layer
    assert net[3].prox.tau_theta == 0.1
    bad = [(dict(tau_theta=0.0), "tau_theta"), (dict(tau_theta=math.inf), "tau_theta"),
           (dict(solver="lbfgs"), "solver 'lbfgs' is not one of"),
           (dict(cg_iters=0), "solver='gradient'"), (dict(cg_iters=2.5), "cg_iters"),
           (dict(cg_tol=-1.0), "cg_tol"), (dict(gram="max"), "gram"),
           (dict(cg_block="x"), r"cg_block 'x' is not one of \['auto', 'unit', 'layer'\]")]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            proxprop(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), **kw)
    with pytest.raises(ValueError, match="asymmetrically"):
        ProxConv2d(1, 1, 4, padding="same")


@pytest.mark.parametrize("kw", [dict(padding="same"), dict(padding=1, padding_mode="reflect"),
                                dict(padding=1, bias=False), dict(padding="valid", stride=2)])
def test_conv_variants_gradient_mode_parity_and_forward(kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, **kw).to(DT)
    pc = ProxConv2d.from_module(copy.deepcopy(conv), ProxConfig(solver="gradient"))
    x = torch.randn(2, 2, 6, 6, dtype=DT)
    torch.testing.assert_close(pc(x), conv(x))
    _loss(conv(x)).backward()
    _loss(pc(x)).backward()
    torch.testing.assert_close(pc.weight.grad, conv.weight.grad)
    # the prox direction is still a descent direction for every variant
    pc.prox = ProxConfig(solver="cg", cg_iters=2)
    pc.zero_grad()
    _loss(pc(x)).backward()
    assert (pc.weight.grad * conv.weight.grad).sum() > 0


def test_linear_handles_extra_leading_dims_and_no_bias():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3, bias=False).to(DT)
    pl = ProxLinear.from_module(copy.deepcopy(lin), ProxConfig(solver="exact", tau_theta=0.5))
    x = torch.randn(2, 5, 4, dtype=DT)
    _loss(lin(x).reshape(10, 3)).backward()
    _loss(pl(x).reshape(10, 3)).backward()
    x2 = x.reshape(10, 4)
    m = 2.0 * torch.eye(4, dtype=DT) + x2.T @ x2
    torch.testing.assert_close(pl.weight.grad, torch.linalg.solve(m, lin.weight.grad.T).T)


def test_sgd_on_prox_grad_is_eq13_update_and_lowers_the_loss():
    """theta+ = theta - tau M^{-1} grad; on a least-squares layer the prox step with large
    tau_theta and lr 1 solves the (regularised) problem nearly exactly."""
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    w_true = torch.randn(2, 5)
    target = x @ w_true.T
    layer = ProxLinear(5, 2, solver="exact", tau_theta=1e4)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    with torch.no_grad():
        loss0 = float(0.5 * ((layer(x) - target) ** 2).sum())
    (0.5 * ((layer(x) - target) ** 2).sum()).backward()  # sum loss: z~ = target exactly
    opt.step()
    with torch.no_grad():
        loss1 = float(0.5 * ((layer(x) - target) ** 2).sum())
    assert loss1 < 1e-3 * loss0


# ------------------------------------------------------------------------------------------
# Registered methods
# ------------------------------------------------------------------------------------------
def test_methods_registered_with_declared_hparams():
    for name in ("proxprop", "proxprop_sgd"):
        cls = METHODS[name]
        hp = {h.name: h for h in cls.hparams}
        assert hp["lr"].tune and hp["tau_theta"].tune and hp["tau_theta"].log
        assert {"solver", "cg_iters", "cg_tol", "cg_eps", "gram", "cg_block"} <= set(hp)
    with pytest.raises(ValueError, match="cg_iters"):
        make_method("proxprop", {"cg_iters": 0})
    with pytest.raises(ValueError, match="tau_theta"):
        make_method("proxprop_sgd", {"tau_theta": -1.0})


@pytest.mark.parametrize("method,hp", [("proxprop", {}), ("proxprop_sgd", {"lr": 0.5}),
                                       ("proxprop_sgd", {"solver": "exact"})])
def test_converges_on_digits_mlp(method, hp):
    from beyondsgd.bench.run.runner import run_trial

    res = run_trial("digits_mlp", method, hp, seed=0, epochs=10)
    assert res.status == "finished"
    linears = [m for m in res.model.modules() if isinstance(m, nn.Linear)]
    assert type(linears[-1]) is nn.Linear  # the output layer keeps its explicit step
    assert all(isinstance(m, ProxLinear) for m in linears[:-1])
    assert res.final["test_metric"] >= 0.93, res.final
    assert res.final["train_loss"] < 0.2 * res.evals[0]["train_loss"]


def test_autocast_bfloat16_backward_runs_in_float32():
    """Under autocast the layer output is bf16; the solve runs in float32 and .grad keeps the
    parameter dtype, close to the float32 direction."""
    from beyondsgd import models as M

    net = proxprop(M.cnn_2c2d(seed=0, image_size=12), solver="cg", cg_iters=2)
    net[7] = proxprop(nn.Sequential(nn.Linear(576, 16), nn.Linear(16, 16)))[0]
    net[9] = nn.Linear(16, 10)
    x, y = torch.rand(4, 1, 12, 12), torch.randint(0, 10, (4,))
    F.cross_entropy(net(x), y).backward()
    ref = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(net(x), y)
    loss.backward()
    for p, r in zip(net.parameters(), ref):
        assert p.grad.dtype == torch.float32
        assert torch.isfinite(p.grad).all()
        assert (p.grad * r).sum() > 0.9 * r.norm() * p.grad.norm()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    lin = _linear(12, 4).float()
    x = torch.randn(9, 12)
    for cfg in (dict(solver="exact"), dict(solver="cg", cg_iters=3)):
        d_cpu, _ = _prox_grads(lin, x, **cfg)
        d_gpu, _ = _prox_grads(lin.cuda(), x.cuda(), **cfg)
        torch.testing.assert_close(d_gpu.cpu(), d_cpu, rtol=1e-4, atol=1e-6)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    xc = torch.randn(2, 2, 6, 6)
    for cfg in (dict(solver="exact"), dict(solver="cg", cg_iters=3)):
        d_cpu, _ = _prox_grads(conv, xc, **cfg)
        d_gpu, _ = _prox_grads(conv.cuda(), xc.cuda(), **cfg)
        torch.testing.assert_close(d_gpu.cpu(), d_cpu, rtol=1e-4, atol=1e-6)


def test_model_without_supported_layers_is_refused():
    """Issue 13 §5: a model with no nn.Linear/nn.Conv2d is an error naming its layer types,
    not a silent no-op; a model whose only supported layer is the output layer warns."""
    net = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.LayerNorm(2))
    with pytest.raises(ValueError, match=r"Sequential has no nn.Linear or nn.Conv2d.*"
                                         r"Conv1d, LayerNorm, ReLU.*supported: nn.Linear"):
        proxprop(net)
    with pytest.raises(ValueError, match="GELU.*supported: nn.Linear, nn.Conv2d"):
        proxprop(nn.GELU())
    with pytest.warns(UserWarning, match="no layer converted.*'1'.*output layer"):
        proxprop(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))


# ------------------------------------------------------------------------------------------
# Issue 17 §2: frozen weights, scale-free eps, the official (aliased) iteration, output layer
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver,iters", [("exact", 1), ("cg", 1), ("cg", 3)])
@pytest.mark.parametrize("gram", ["sum", "mean"])
def test_frozen_weight_trainable_bias_gets_its_prox_direction(solver, iters, gram):
    """With W frozen the prox variable is b alone: A b = b 1^T, A^T A = rows, so
    d_b = dJ/db / (1/tau + s rows) (rows = B, or B*H*W for a convolution; s = 1 or 1/B); the
    plain gradient (what a need_w guard gives) differs by that factor."""
    tau = 0.3
    for layer, x in ((_linear(6, 4), torch.randn(9, 6, dtype=DT)),
                     (nn.Conv2d(2, 3, 3, padding=1).to(DT), torch.randn(4, 2, 5, 5, dtype=DT))):
        _, gth, _ = _plain_grads(layer, x)
        rows = 9 if x.dim() == 2 else 4 * 5 * 5
        s = 1.0 if gram == "sum" else 1.0 / x.shape[0]
        frozen = copy.deepcopy(layer)
        frozen.weight.requires_grad_(False)
        cls = ProxLinear if isinstance(layer, nn.Linear) else ProxConv2d
        pl = cls.from_module(frozen, ProxConfig(solver=solver, cg_iters=iters, tau_theta=tau,
                                                gram=gram, cg_eps=0.0))
        xx = x.clone().requires_grad_(True)
        _loss(pl(xx)).backward()
        assert pl.weight.grad is None
        torch.testing.assert_close(pl.bias.grad, gth[:, -1] / (1 / tau + s * rows),
                                   rtol=1e-12, atol=1e-15)
        _, _, gx_ref = _plain_grads(layer, x)
        torch.testing.assert_close(xx.grad, gx_ref, rtol=1e-12, atol=1e-14)


def test_per_unit_cg_is_never_worse_than_layer_cg_in_m_norm():
    """Per-unit CG minimises each block's M-norm error over that block's Krylov space, which
    contains the joint CG iterate's block, so unit <= layer at equal N (with eps = 0; the
    relative eps must not change that). Mean-reduced loss and a batch of 60 make |r|^2 small:
    an absolute eps of 1e-6 made unit CG far worse than layer CG here (0.36 vs 0.26 on the
    issue's ConvNet)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(8 * 16, 10)).to(DT)
    x, y = torch.rand(60, 3, 16, 16, dtype=DT), torch.randint(0, 10, (60,))

    def direction(**cfg):
        m = copy.deepcopy(net)
        m[0] = ProxConv2d.from_module(m[0], ProxConfig(**cfg))
        F.cross_entropy(m(x), y).backward()
        return torch.cat([m[0].weight.grad.flatten(1), m[0].bias.grad[:, None]], 1)

    c = net[0]
    geo = ConvGeometry(c.stride, c.padding, c.dilation, c.groups)

    def m_norm(e):
        return float(((conv2d_gram_apply(x, e, c.weight.shape, True, geo) + e) * e).sum()) ** .5

    exact = direction(solver="exact")
    scale = m_norm(exact)
    for n in (1, 2, 3):  # later iterates of this ill-conditioned system move with round-off
        err = {b: m_norm(direction(solver="cg", cg_iters=n, cg_tol=0.0, cg_block=b) - exact)
               for b in ("unit", "layer")}
        assert err["unit"] <= err["layer"] * (1 + 1e-9), (n, err)
        textbook = m_norm(direction(solver="cg", cg_iters=n, cg_tol=0.0, cg_eps=0.0) - exact)
        assert abs(err["unit"] - textbook) <= 1e-6 * scale, (n, err, textbook)


def test_cg_eps_is_scale_free():
    """The direction is linear in the gradient (loss scaled by c -> direction scaled by c),
    whatever the loss reduction; an absolute eps breaks this for small gradients."""
    lin = _linear(10, 4)
    x = torch.randn(30, 10, dtype=DT)
    for block in ("unit", "layer"):
        ds = []
        for c in (1.0, 1e-6):
            pl = ProxLinear.from_module(copy.deepcopy(lin), ProxConfig(cg_iters=3, cg_tol=0.0,
                                                                        cg_block=block))
            (c * _loss(pl(x))).backward()
            ds.append(pl.weight.grad / c)
        torch.testing.assert_close(ds[1], ds[0], rtol=1e-10, atol=0.0)


def _official_cg_transliteration(mat, b, iters, eps, aliased=True):
    """The official ProxProp CG loop as issue 17 describes it, with Python's aliasing:
    ``P = R`` makes P the same array as R, so ``R -= ...`` in place also changes P; then
    ``P = R + beta * P`` builds a new array. Written from the description, plain numpy-like
    torch ops on one system (no batching), warm start x = 0. ``aliased=False``: the loop with
    the alias removed (``P`` a copy of ``R``), i.e. CG with the official absolute eps."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r if aliased else r.clone()  # alias, not a copy
    rs = float(r @ r)
    for i in range(iters):
        ap = mat @ p
        alpha = rs / (float(p @ ap) + eps)
        x += alpha * p
        if i == iters - 1:
            break
        r -= alpha * ap  # in place: p (the same array) changes too on the first pass
        rs_new = float(r @ r)
        p = r + (rs_new / (rs + eps)) * p
        rs = rs_new
    return x


def test_official_cg_variant_reproduces_the_aliased_iteration():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(3, 3, generator=g, dtype=DT)
    mat = q @ q.T + 0.3 * torch.eye(3, dtype=DT)
    b = torch.randn(3, generator=g, dtype=DT)
    exact = torch.linalg.solve(mat, b)
    textbook, _ = batched_cg(lambda v: v @ mat, b[None], 3)
    aliased, _ = batched_cg(lambda v: v @ mat, b[None], 3, aliased=True)
    assert float((textbook[0] - exact).norm() / exact.norm()) < 1e-12  # CG: exact after n
    assert float((aliased[0] - exact).norm() / exact.norm()) > 1e-3  # not CG
    for n in (1, 2, 3, 6):
        for eps in (0.0, 1e-6):
            ref = _official_cg_transliteration(mat, b, n, eps)
            got, _ = batched_cg(lambda v: v @ mat, b[None], n, eps=eps, aliased=True)
            torch.testing.assert_close(got[0], ref, rtol=1e-12, atol=1e-15)
    # through a layer, per output unit, on every CG path of a Linear layer
    lin = _linear(5, 3)
    x = torch.randn(4, 5, dtype=DT)
    _, gth, _ = _plain_grads(lin, x)
    a = torch.cat([x, torch.ones(4, 1, dtype=DT)], 1)
    m = torch.eye(6, dtype=DT) / 0.5 + a.T @ a
    ref = torch.stack([_official_cg_transliteration(m, row, 3, 1e-6) for row in gth])
    for path in ("gram", "primal", "dual"):
        d, _ = _prox_grads(lin, x, cg_iters=3, cg_tol=0.0, tau_theta=0.5, cg_path=path,
                           cg_variant="official")
        torch.testing.assert_close(d, ref, rtol=1e-10, atol=1e-14)


class _OutOfOrder(nn.Module):
    """The output layer ``head`` is registered first and called last, and a LayerNorm
    with parameters follows it."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)  # registered first, called last
        self.body = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(3)

    def forward(self, x):
        return self.norm(self.head(torch.relu(self.body(x))))


def test_output_layer_found_by_forward_pass_or_named():
    """The explicit layer is the one producing the output (Eq. 12), not the last module with
    parameters: a trailing LayerNorm, and layers registered out of call order."""
    torch.manual_seed(0)
    net = proxprop(_OutOfOrder(), example_input=torch.randn(2, 4))
    assert isinstance(net.body, ProxLinear) and type(net.head) is nn.Linear
    assert net.training
    net = proxprop(_OutOfOrder(), output_layer="head")
    assert isinstance(net.body, ProxLinear) and type(net.head) is nn.Linear
    with pytest.raises(ValueError, match="output_layer 'fc' is not a submodule.*'head'"):
        proxprop(_OutOfOrder(), output_layer="fc")
    seq = proxprop(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.LayerNorm(3)))
    seq(torch.randn(2, 4))
    assert isinstance(seq[0], ProxLinear) and type(seq[2]) is nn.Linear


# ------------------------------------------------------------------------------------------
# Issue 17 §1: batch-space (dual) CG and the per-layer choice of CG path
# ------------------------------------------------------------------------------------------
def _linear_direction(lin, x, **cfg):
    pl = ProxLinear.from_module(copy.deepcopy(lin), ProxConfig(**cfg))
    _loss(pl(x)).backward()
    g = pl.weight.grad
    return torch.cat([g, pl.bias.grad[:, None]], 1) if pl.bias is not None else g


# the official variant fixes its blocking (unit for Linear, layer for Conv2d): cg_block "auto"
BLOCK_VARIANTS = [("unit", "textbook"), ("layer", "textbook"), ("auto", "official")]


@pytest.mark.parametrize("batch", [6, 40])  # B < K and B > K (K = 13 or 14)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gram", ["sum", "mean"])
def test_linear_cg_paths_give_the_same_direction(batch, bias, gram):
    """Gram, primal and batch-space CG carry the same iterates: equal .grad in float64 up to
    round-off, for N = 1, 3, 10, per unit and per layer, textbook and official, with the
    default eps and tolerance. Measured max relative difference over this grid: 8e-16 for
    N <= 3, 4.2e-12 for N = 10 (10 iterations on a 13- or 14-dimensional system are near
    convergence, where round-off is amplified by the condition number)."""
    torch.manual_seed(0)
    lin = nn.Linear(13, 5, bias=bias).to(DT)
    x = torch.randn(batch, 13, dtype=DT) * torch.linspace(0.2, 2, 13, dtype=DT)
    for n in (1, 3, 10):
        for block, variant in BLOCK_VARIANTS:
            cfg = dict(cg_iters=n, cg_block=block, cg_variant=variant, gram=gram, tau_theta=0.7)
            ref = _linear_direction(lin, x, cg_path="primal", **cfg)
            for path in ("gram", "dual", "auto"):
                d = _linear_direction(lin, x, cg_path=path, **cfg)
                rel = float((d - ref).norm() / ref.norm())
                assert rel <= (1e-14 if n <= 3 else 2e-11), (n, block, variant, path, rel)


def test_dual_cg_reaches_the_exact_prox_direction():
    lin = _linear(30, 6)
    for batch in (12, 50):
        x = torch.randn(batch, 30, dtype=DT)
        _, gth, _ = _plain_grads(lin, x)
        exact = _dense_linear_solution(x, gth, 1.0)
        errs = [float((_linear_direction(lin, x, cg_iters=it, cg_tol=0.0, cg_eps=0.0,
                                          cg_path="dual") - exact).norm() / exact.norm())
                for it in (1, 3, 2 * min(batch, 31))]
        assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-8, (batch, errs)


def test_linear_cg_path_choice_by_flop_count():
    from beyondsgd.methods.proxprop import linear_cg_flops, linear_cg_path

    # fmnist_mlp's first layer (B 128, 785 inputs, 256 outputs): batch space is cheapest
    assert linear_cg_path(128, 785, 256, 3) == "dual"
    # a long batch through a narrow layer: the explicit K x K Gram
    assert linear_cg_path(4096, 33, 64, 3) == "gram"
    # a single output unit (a row's CG is cheap, forming any Gram is not)
    assert linear_cg_path(100, 100, 1, 3) == "primal"
    f = linear_cg_flops(500, 785, 4000, 3)  # the paper's first layer at B 500
    assert f["dual"] == 2 * 500 ** 2 * 785 + 2 * 4000 * 500 * 785 + 6 * 4000 * 500 ** 2
    assert f["dual"] < f["gram"] < f["primal"]


@pytest.mark.parametrize("spec", CONVS)
def test_conv_cg_gram_and_matrix_free_paths_agree(spec):
    """The explicit unfolded Gram ("gram"), products with the unfolded matrix ("primal") and
    the matrix-free convolutions ("dual" for a Conv2d) carry the same CG iterates (float64;
    measured max relative difference 1e-15 for N <= 3)."""
    torch.manual_seed(2)
    conv = nn.Conv2d(**spec).to(DT)
    x = torch.randn(3, spec["in_channels"], 7, 7, dtype=DT)
    for n in (1, 3):
        for block, variant in BLOCK_VARIANTS:
            cfg = dict(cg_iters=n, cg_block=block, cg_variant=variant, tau_theta=0.4)
            ref, _ = _prox_grads(conv, x, cg_path="dual", **cfg)
            for path in ("gram", "primal", "auto"):
                d, _ = _prox_grads(conv, x, cg_path=path, **cfg)
                rel = float((d - ref).norm() / ref.norm())
                assert rel <= 1e-13, (n, block, variant, path, rel)


PAPER_CONVS = [  # the paper's ConvNet (3x32x32): conv16-conv20-conv20, 5x5, padding 2
    (dict(in_channels=3, out_channels=16, kernel_size=5, padding=2), 32),
    (dict(in_channels=16, out_channels=20, kernel_size=5, padding=2), 16),
    (dict(in_channels=20, out_channels=20, kernel_size=5, padding=2), 8),
]


@pytest.mark.parametrize("spec,side", PAPER_CONVS)
def test_paper_convnet_chosen_path_equals_the_exact_prox_direction(spec, side):
    """Every path the cost model may choose for a layer of the paper's ConvNet (the choice at
    B 128 and B 32 of the real 3x32x32 net, and the others) converges to the exact prox
    direction (same tolerance as the other converged-CG tests), and at cg3 the paths agree to
    1e-10 in float64, textbook and official variants alike."""
    from beyondsgd.methods.proxprop import conv2d_path

    conv = nn.Conv2d(**spec).to(DT)
    geo = ConvGeometry(conv.stride, conv.padding, conv.dilation, conv.groups)
    chosen = {conv2d_path(torch.Size([b, spec["in_channels"], side, side]), conv.weight.shape,
                          True, geo, ProxConfig(cg_iters=3)) for b in (128, 32)}
    assert chosen == {"matrix_free"}  # the cost model's choice for this net (docs)
    torch.manual_seed(3)
    x = torch.randn(2, spec["in_channels"], 6, 6, dtype=DT)
    exact, _ = _prox_grads(conv, x, solver="exact", tau_theta=0.2)
    _, gth, _ = _plain_grads(conv, x)
    a = _jacobian_matrix(conv, x)
    m = torch.eye(a.shape[1], dtype=DT) / 0.2 + a.T @ a
    gvec = torch.cat([gth[:, :-1].reshape(-1), gth[:, -1]])
    torch.testing.assert_close(exact, _param_vec_to_rows(torch.linalg.solve(m, gvec), conv),
                               rtol=1e-8, atol=1e-12)
    for path in ("auto", "gram", "primal", "dual"):
        d, _ = _prox_grads(conv, x, cg_iters=200, cg_tol=0.0, cg_eps=0.0, tau_theta=0.2,
                           cg_path=path)
        torch.testing.assert_close(d, exact, rtol=1e-6, atol=1e-9)
    for variant in ("textbook", "official"):
        ref, _ = _prox_grads(conv, x, cg_iters=3, cg_tol=0.0, cg_variant=variant,
                             cg_path="dual")
        for path in ("auto", "gram", "primal"):
            d, _ = _prox_grads(conv, x, cg_iters=3, cg_tol=0.0, cg_variant=variant,
                               cg_path=path)
            assert float((d - ref).norm() / ref.norm()) <= 1e-10, (variant, path)


def test_conv_cg_path_choice_by_cost_model():
    from beyondsgd.methods.proxprop import conv2d_cg_flops, conv2d_cg_path

    # fmnist_2c2d at B 128: conv1 (1->32, 5x5, 28x28) is cheaper through its 26x26 Gram,
    # conv2 (32->64, 5x5, 14x14) matrix-free for cg3 but not for cg10
    f1 = conv2d_cg_flops(128 * 28 * 28, 26, 32, 1, 3)
    assert f1["gram"] < f1["matrix_free"] < f1["primal"]
    assert conv2d_cg_path(128 * 28 * 28, 26, 32, 1, 3) == "gram"
    f2 = conv2d_cg_flops(128 * 14 * 14, 801, 64, 1, 3)
    assert f2["matrix_free"] < f2["gram"]
    f2 = conv2d_cg_flops(128 * 14 * 14, 801, 64, 1, 10)
    assert f2["gram"] < f2["matrix_free"]
    # the paper's ConvNet (3x32x32, padding 2): every layer matrix-free at cg3, B 128 and 32
    for b in (128, 32):
        for rows, k, c in ((b * 32 * 32, 76, 16), (b * 16 * 16, 401, 20), (b * 8 * 8, 501, 20)):
            assert conv2d_cg_path(rows, k, c, 1, 3) == "matrix_free", (b, k)
    # an unfold above UNFOLD_LIMIT elements is never chosen
    assert conv2d_cg_path(1 << 24, 26, 32, 1, 3) == "matrix_free"


def test_cuda_style_masked_stopping_equals_the_cpu_break(monkeypatch):
    """On CUDA the stopping rule masks the step instead of breaking (no host sync); forced on
    CPU here, every CG path gives the same direction as the breaking loop."""
    from beyondsgd.methods.proxprop import cg

    lin = _linear(12, 4)
    x = torch.randn(30, 12, dtype=DT)
    conv = nn.Conv2d(2, 3, 3, padding=1).to(DT)
    xc = torch.randn(2, 2, 5, 5, dtype=DT)
    cfgs = [dict(cg_iters=40, cg_tol=1e-2, cg_path=p) for p in ("gram", "primal", "dual")]
    ref = [_linear_direction(lin, x, **c) for c in cfgs]
    ref_c = [_prox_grads(conv, xc, cg_iters=40, cg_tol=1e-2, cg_path=p)[0]
             for p in ("gram", "primal")]
    init = cg._Loop.__init__

    def masked(self, rs0, tol, eps, relative_eps, is_cuda):
        init(self, rs0, tol, eps, relative_eps, True)

    monkeypatch.setattr(cg._Loop, "__init__", masked)
    for c, r in zip(cfgs, ref):
        torch.testing.assert_close(_linear_direction(lin, x, **c), r, rtol=1e-12, atol=0.0)
    for p, r in zip(("gram", "primal"), ref_c):
        got = _prox_grads(conv, xc, cg_iters=40, cg_tol=1e-2, cg_path=p)[0]
        torch.testing.assert_close(got, r, rtol=1e-12, atol=0.0)


# ------------------------------------------------------------------------------------------
# Issue 22: the official variant's blocking, eps and parity, float32 accuracy, output layer
# ------------------------------------------------------------------------------------------
def test_official_variant_implies_the_official_blocking():
    """cg_variant="official" alone reproduces the official iteration on a Conv2d: one CG over
    all weights and the bias (one scalar step), aliased, with the absolute eps; against the
    transliteration on the dense Jacobian's M (flattened parameters). Measured max relative
    difference 1.4e-15 (cg1..cg5, both eps, both CG paths); with one CG per channel (the
    default blocking before issue 22) 0.56-0.97. A cg_block given with it is refused."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1).to(DT)
    x = torch.rand(6, 2, 6, 6, dtype=DT)  # non-negative, like activations
    _, gth, _ = _plain_grads(conv, x)
    a = _jacobian_matrix(conv, x)
    tau = 0.5
    m = torch.eye(a.shape[1], dtype=DT) / tau + a.T @ a
    gvec = torch.cat([gth[:, :-1].reshape(-1), gth[:, -1]])
    for n in (1, 3, 5):
        for eps in (1e-6, 1e-2):
            ref = _param_vec_to_rows(_official_cg_transliteration(m, gvec, n, eps), conv)
            for path in ("gram", "primal"):
                d, _ = _prox_grads(conv, x, cg_iters=n, cg_tol=0.0, cg_eps=eps, tau_theta=tau,
                                   cg_path=path, cg_variant="official")
                rel = float((d - ref).norm() / ref.norm())
                assert rel <= 1e-13, (n, eps, path, rel)
    # the same through proxprop() on a model (its Linear layers: per unit, tested above)
    plain = nn.Sequential(copy.deepcopy(conv), nn.Flatten(), nn.Linear(108, 2)).to(DT)
    net = proxprop(copy.deepcopy(plain), cg_variant="official", cg_iters=3, cg_tol=0.0,
                   tau_theta=tau)
    for model in (plain, net):
        F.cross_entropy(model(x), torch.arange(6) % 2).backward()
    g = torch.cat([plain[0].weight.grad.reshape(-1), plain[0].bias.grad])
    ref = _param_vec_to_rows(_official_cg_transliteration(m, g, 3, 1e-6), conv)
    d = torch.cat([net[0].weight.grad.flatten(1), net[0].bias.grad[:, None]], 1)
    assert float((d - ref).norm() / ref.norm()) <= 1e-13
    for block in ("unit", "layer"):
        msg = (rf"cg_block '{block}' conflicts with cg_variant='official'.*one CG per output "
               r"unit for Linear, one CG over the whole layer for Conv2d.*cg_block='auto'")
        with pytest.raises(ValueError, match=msg):
            ProxConfig(cg_variant="official", cg_block=block)
        with pytest.raises(ValueError, match=msg):
            make_method("proxprop", {"cg_variant": "official", "cg_block": block})


def test_textbook_cg_is_the_alias_fixed_official_cg_only_without_eps():
    """Ours is textbook CG; the official loop with its alias removed is textbook CG with an
    absolute eps (1e-6) in both denominators. With eps 0 on both sides they agree (measured
    max relative difference 7.5e-16, cg1..cg10); with the defaults they do not once squared
    residuals are of order 1e-6 or below (the mean-reduced loss at the paper's batch 500;
    here |g|^2 <= 1e-7 per unit): the absolute eps damps those steps (measured 9.5-17 % off
    for cg3..cg10), while ours (relative eps) stays within 3.3e-8 of eps-0 CG and much closer
    to the exact prox direction (cg5: 7e-4 vs 0.12)."""
    torch.manual_seed(0)
    x = torch.randn(256, 20, dtype=DT)
    gz = torch.randn(256, 4, dtype=DT) * 1e-3 / 256
    gz[:, 0] = 0.0  # a dead unit: 0/0 in the official loop, a zero step in ours
    a = torch.cat([x, torch.ones(256, 1, dtype=DT)], 1)
    gth = gz.T @ a
    m = torch.eye(21, dtype=DT) + a.T @ a
    exact = torch.linalg.solve(m, gth.T).T
    assert float((gth * gth).sum(1).max()) < 1e-6  # the small-residual regime

    def official(n, eps):  # eps 1e-300: 0, but for the 0/0 of the dead unit
        return torch.stack([_official_cg_transliteration(m, r, n, eps, aliased=False)
                            for r in gth])

    def ours(n, **cfg):
        return linear_prox_direction(x, gz, None, True, ProxConfig(cg_iters=n, cg_tol=0.0,
                                                                    **cfg))

    for n in (1, 3, 5, 10):
        fixed0, ours0 = official(n, 1e-300), ours(n, cg_eps=0.0)
        assert float((ours0 - fixed0).norm() / fixed0.norm()) <= 1e-13, n
        fixed, default = official(n, 1e-6), ours(n)
        assert float((default - ours0).norm() / ours0.norm()) < 1e-6, n
        if n > 1:
            assert float((default - fixed).norm() / fixed.norm()) > 0.05, n
            assert (default - exact).norm() < (fixed - exact).norm(), n


def _smooth_images(n, c, side, seed):
    """Non-negative, spatially smooth images (ill-conditioned conv Gram, like activations)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(n, c, side // 4, side // 4, generator=g, dtype=DT)
    return F.interpolate(img, size=(side, side), mode="bilinear", align_corners=False)


def test_float32_cg_on_an_explicit_gram_runs_in_float64():
    """Float32 CG on an ill-conditioned system loses accuracy in its recurrences, not in the
    float32 Gram: on the explicit Gram (conv "gram" path, Linear "gram" path) it runs in
    float64 where cheap (N x rows(g) <= rows(A) / 64), so a float32 layer's direction is its
    float64 direction up to the float32 Gram's round-off. Same inputs (rounded to float32)
    on both sides; measured max over cg5/cg10: conv 8.4e-6, Linear 2.5e-6 (float32 CG,
    before issue 22: 1.2e-2 and 4.0e-5)."""
    from beyondsgd.methods.proxprop import conv2d_prox_direction

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1).to(DT)
    x = _smooth_images(16, 4, 16, 0)  # rows(A) = 16*16*16 = 4096 >= 10 * 4 * 64
    _, gth, _ = _plain_grads(conv, x)
    geo = ConvGeometry(conv.stride, conv.padding, conv.dilation, conv.groups)
    xl = torch.rand(4096, 12, dtype=DT)
    gz = torch.randn(4096, 3, dtype=DT) / 4096
    worst = {"conv": 0.0, "linear": 0.0}
    for n in (5, 10):
        cfg = ProxConfig(cg_iters=n, cg_tol=0.0, cg_path="gram")
        x32, g32 = x.float().double(), gth.float().double()  # the same inputs on both sides
        d64 = conv2d_prox_direction(x32, g32, conv.weight.shape, True, geo, cfg)
        d32 = conv2d_prox_direction(x32.float(), g32.float(), conv.weight.shape, True, geo, cfg)
        worst["conv"] = max(worst["conv"], float((d32.double() - d64).norm() / d64.norm()))
        xl32, gz32 = xl.float().double(), gz.float().double()
        d64 = linear_prox_direction(xl32, gz32, None, True, cfg)
        d32 = linear_prox_direction(xl32.float(), gz32.float(), None, True, cfg)
        worst["linear"] = max(worst["linear"], float((d32.double() - d64).norm() / d64.norm()))
    assert worst["conv"] <= 2e-5 and worst["linear"] <= 5e-6, worst


def test_output_layer_found_by_the_first_forward_without_help():
    """Without output_layer/example_input the explicit layer (Eq. 12) is the last linear
    layer called in the model's first forward call, not the last one registered: until then
    every candidate is converted; that forward's own backward gives the output layer the
    plain gradient (it is swapped back to nn.Linear when the call returns) and the others
    the prox direction of a conversion told the output layer by name."""
    torch.manual_seed(0)
    ref = _OutOfOrder().to(DT)
    named = proxprop(copy.deepcopy(ref), output_layer="head", tau_theta=0.5)
    net = proxprop(copy.deepcopy(ref), tau_theta=0.5)
    assert isinstance(net.head, ProxLinear) and isinstance(net.body, ProxLinear)  # pending
    x, y = torch.randn(10, 4, dtype=DT), torch.randint(0, 3, (10,))
    for m in (ref, named, net):
        F.cross_entropy(m(x), y).backward()
    assert type(net.head) is nn.Linear and isinstance(net.body, ProxLinear)
    torch.testing.assert_close(net.head.weight.grad, ref.head.weight.grad, rtol=1e-12,
                               atol=1e-15)
    torch.testing.assert_close(net.body.weight.grad, named.body.weight.grad, rtol=1e-12,
                               atol=1e-15)
    assert not torch.allclose(net.body.weight.grad, ref.body.weight.grad, rtol=1e-3)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    # a second step: nothing left to decide, same as the named conversion
    for m in (named, net):
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
    torch.testing.assert_close(net.body.weight.grad, named.body.weight.grad, rtol=1e-12,
                               atol=1e-15)


def test_deferred_output_layer_with_deepcopy_state_dict_and_pickle(tmp_path):
    """The search lives on the model: a deep copy or a pickled copy made before the first
    forward decides on its own first forward (here under no_grad, as the runner's first
    evaluation), the original stays undecided until its own; state_dict keys never change."""
    keys = list(_OutOfOrder().state_dict())
    net = proxprop(_OutOfOrder())
    assert list(net.state_dict()) == keys
    twin = copy.deepcopy(net)
    torch.save(net, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    for m in (twin, loaded):
        with torch.no_grad():
            m(torch.randn(2, 4))
        assert type(m.head) is nn.Linear and isinstance(m.body, ProxLinear)
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert list(m.state_dict()) == keys
    assert isinstance(net.head, ProxLinear) and net._forward_hooks  # still undecided
    net.load_state_dict(twin.state_dict())
    net(torch.randn(2, 4))
    assert type(net.head) is nn.Linear and twin.head.weight is not net.head.weight


def test_prox_backward_before_the_output_layer_is_known_is_refused():
    """A candidate layer whose forward did not go through the model's own call cannot know
    whether it is the output layer: its backward refuses instead of guessing."""
    net = proxprop(_OutOfOrder())
    out = net.head(torch.relu(net.body(torch.randn(3, 4))))  # submodules called directly
    with pytest.raises(RuntimeError, match="before the model's output layer.*output_layer="):
        out.sum().backward()
    net(torch.randn(3, 4))  # decides; direct calls are fine from now on
    net.head(torch.relu(net.body(torch.randn(3, 4)))).sum().backward()
    assert type(net.head) is nn.Linear


def test_docs_parity_statements_name_their_tests():
    """Every agreement/parity statement with a tolerance in docs/methods/proxprop.md names the
    test (or benchmark) that backs it, and every test it names exists in this file; the
    textbook-vs-official agreement is stated for cg_eps=0 only."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "methods" / "proxprop.md").read_text()
    named = set(re.findall(r"`(test_\w+)`", doc))
    assert named and named <= set(globals()), named - set(globals())
    paragraphs = re.split(r"\n(?=\s*- |\s*\n)", doc)
    claims = [p for p in paragraphs if re.search(r"agree|reproduc|parity|match", p)
              and re.search(r"(≤|<=|within|to) ?\d(\.\d+)?e-\d+", p)]
    assert claims
    for p in claims:
        assert re.search(r"`test_\w+`|benchmarks/proxprop_\w+\.py", p), p[:300]
    alias = [p for p in claims if "alias removed" in p]  # textbook vs alias-fixed official
    assert alias and all("cg_eps=0" in p for p in alias), alias


@pytest.mark.parametrize("cg_tol", [0.0, 1e-2])
def test_torch_compile_traces_without_graph_breaks(cg_tol):
    """Under ``torch.compile`` the CG loop has no host sync (converged systems are masked, as on
    CUDA, instead of a ``.item()`` stopping test), so forward + backward trace without a graph
    break; the gradients equal eager mode's to float64 round-off."""
    from torch._dynamo.utils import counters

    def make():
        return bs.proxprop(bs.models.mlp(12, [8], 3, seed=0).double(), tau_theta=1.0,
                           solver="cg", cg_iters=3, cg_tol=cg_tol,
                           example_input=torch.randn(2, 12, dtype=torch.float64))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    eager = make()
    F.cross_entropy(eager(x), y).backward()
    model = make()
    compiled = torch.compile(model, backend="eager")
    counters.clear()
    F.cross_entropy(compiled(x), y).backward()
    assert dict(counters["graph_break"]) == {}
    for a, b in zip(eager.parameters(), model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-12)
