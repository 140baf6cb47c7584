"""Issue 26 (ProxProp speed): the symmetric Gram by blocks and the fused CG scalars give the
same numbers as the dense products and the other CG paths (float64)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from beyondsgd.methods.proxprop import ProxConfig, ProxConv2d, ProxLinear
from beyondsgd.methods.proxprop.cg import _safe_div
from beyondsgd.methods.proxprop.solvers import SYM_GRAM_MIN, SYM_GRAM_MIN_INNER, sym_outer

DT = torch.float64


@pytest.mark.parametrize("shape", [(5, 7), (SYM_GRAM_MIN, SYM_GRAM_MIN_INNER),
                                   (SYM_GRAM_MIN + 3, SYM_GRAM_MIN_INNER + 1), (300, 20)])
def test_sym_outer_equals_the_dense_product(shape):
    x = torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(0))
    g = sym_outer(x)
    ref = x @ x.T
    assert float((g - ref).norm() / ref.norm()) <= 1e-14
    if shape[0] >= SYM_GRAM_MIN and shape[1] >= SYM_GRAM_MIN_INNER:
        h = shape[0] // 2  # the off-diagonal blocks mirror each other
        assert torch.equal(g[:h, h:], g[h:, :h].T)


def test_safe_div_is_zero_where_the_denominator_is_not_positive():
    num = torch.tensor([[1.0], [0.0], [2.0], [3.0]], dtype=DT)
    den = torch.tensor([[2.0], [0.0], [0.0], [-1e-30]], dtype=DT)
    assert _safe_div(num, den).tolist() == [[0.5], [0.0], [0.0], [0.0]]


def _direction(lin, x, **cfg):
    pl = ProxLinear.from_module(copy.deepcopy(lin), ProxConfig(**cfg))
    pl(x).square().sum().mul(0.5).backward()
    return torch.cat([pl.weight.grad, pl.bias.grad[:, None]], 1)


@pytest.mark.parametrize("batch,n_in", [(SYM_GRAM_MIN + 4, SYM_GRAM_MIN_INNER + 16),
                                        (SYM_GRAM_MIN_INNER + 20, SYM_GRAM_MIN + 1)])
def test_linear_paths_with_the_block_gram_agree_and_converge_to_the_dense_solve(batch, n_in):
    """Batch sizes where the batch-space (dual) or the K x K Gram (gram) path forms its Gram by
    blocks: cg3 on every path agrees to 1e-10 in float64, textbook and official variants, and
    many iterations reach the dense solve of (I / tau + A^T A) d = grad."""
    torch.manual_seed(0)
    lin = nn.Linear(n_in, 6).to(DT)
    x = torch.randn(batch, n_in, dtype=DT) * torch.linspace(0.2, 2, n_in, dtype=DT) / 10
    for variant in ("textbook", "official"):
        ref = _direction(lin, x, cg_iters=3, cg_tol=0.0, cg_variant=variant, cg_path="primal")
        for path in ("gram", "dual", "auto"):
            d = _direction(lin, x, cg_iters=3, cg_tol=0.0, cg_variant=variant, cg_path=path)
            assert float((d - ref).norm() / ref.norm()) <= 1e-10, (variant, path)
    tau = 0.05
    a = torch.cat([x, torch.ones(batch, 1, dtype=DT)], 1)
    pl = ProxLinear.from_module(copy.deepcopy(lin), ProxConfig(solver="gradient"))
    pl(x).square().sum().mul(0.5).backward()
    g = torch.cat([pl.weight.grad, pl.bias.grad[:, None]], 1)
    dense = torch.linalg.solve(torch.eye(n_in + 1, dtype=DT) / tau + a.T @ a, g.T).T
    for path in ("gram", "dual"):
        d = _direction(lin, x, cg_iters=300, cg_tol=0.0, cg_eps=0.0, tau_theta=tau,
                       cg_path=path)
        assert float((d - dense).norm() / dense.norm()) <= 1e-8, path


def test_conv_matrix_free_quadratic_form_matches_the_unfolded_paths():
    """The matrix-free path's last step (|A v|^2 as a sum of squares on the NHWC output)
    agrees with the unfolded Gram and primal paths to 1e-12 in float64, cg1 and cg3."""
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=1).to(DT)
    x = torch.randn(4, 3, 9, 9, dtype=DT)
    for n in (1, 3):
        out = {}
        for path in ("dual", "gram", "primal"):
            pc = ProxConv2d.from_module(copy.deepcopy(conv), ProxConfig(
                cg_iters=n, cg_tol=0.0, cg_path=path))
            pc(x).square().sum().mul(0.5).backward()
            out[path] = torch.cat([pc.weight.grad.flatten(1), pc.bias.grad[:, None]], 1)
        for path in ("gram", "primal"):
            rel = float((out[path] - out["dual"]).norm() / out["dual"].norm())
            assert rel <= 1e-12, (n, path, rel)
