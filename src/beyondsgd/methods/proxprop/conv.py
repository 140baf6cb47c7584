"""ProxProp directions for Conv2d layers (Eqs. 13-14): matrix-free CG (a convolution and
its weight adjoint per iteration), CG on the explicit unfolded Gram when cheaper
(:func:`conv2d_cg_flops`), or the exact per-group Cholesky solve."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import distributed as D
from .cg import batched_cg
from .config import ConvGeometry, ProxConfig, _cg_kwargs, _work_dtype
from .solvers import _global_gram, _solve_gram, _spd_solve_rows


def _conv_weight_bias_adjoint(
    u: torch.Tensor, x: torch.Tensor, w_shape: torch.Size, has_bias: bool, geo: ConvGeometry,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A^T u: weight and bias gradients of the convolution for output gradient ``u``."""
    gw = torch.nn.grad.conv2d_weight(x, w_shape, u, geo.stride, geo.padding, geo.dilation,
                                     geo.groups)
    gb = u.sum((0, 2, 3)) if has_bias else None
    return gw, gb


def _flat(gw: torch.Tensor, gb: torch.Tensor | None) -> torch.Tensor:
    return torch.cat([gw.flatten(1), gb[:, None]], 1) if gb is not None else gw.flatten(1)


def conv2d_gram_apply(
    x: torch.Tensor, v: torch.Tensor, w_shape: torch.Size, has_bias: bool, geo: ConvGeometry,
) -> torch.Tensor:
    """A^T A v for a Conv2d, ``v`` of shape (C_out, K) = [weight.flatten(1), bias].

    A forward convolution with ``v`` as the parameters followed by the adjoint to the parameters
    (``torch.nn.grad.conv2d_weight``); sums over the batch and the spatial positions.
    """
    u = _conv_forward(x, v, w_shape, has_bias, geo)
    return _flat(*_conv_weight_bias_adjoint(u, x, w_shape, has_bias, geo))


def _conv_forward(x: torch.Tensor, v: torch.Tensor, w_shape: torch.Size, has_bias: bool,
                  geo: ConvGeometry) -> torch.Tensor:
    """A v: the convolution of ``x`` with the rows ``v`` = [weight.flatten(1), bias]."""
    kw = v.shape[1] - int(has_bias)
    vw = v[:, :kw].reshape(w_shape)
    vb = v[:, kw].contiguous() if has_bias else None
    return F.conv2d(x, vw, vb, geo.stride, geo.padding, geo.dilation, geo.groups)


def conv2d_unfolded(x: torch.Tensor, w_shape: torch.Size, has_bias: bool, geo: ConvGeometry
                    ) -> torch.Tensor:
    """The matrix A of a Conv2d per group: (groups, B*L, K) with rows = (sample, position) and
    columns = the group's weight entries (+ a ones column for the bias)."""
    kh, kwd = w_shape[2], w_shape[3]
    cols = F.unfold(x, (kh, kwd), dilation=geo.dilation, padding=geo.padding, stride=geo.stride)
    n, ck, ell = cols.shape
    g = geo.groups
    cols = cols.reshape(n, g, ck // g, ell).permute(1, 0, 3, 2).reshape(g, n * ell, ck // g)
    if has_bias:
        cols = torch.cat([cols, cols.new_ones(g, n * ell, 1)], 2)
    return cols


UNFOLD_LIMIT = 1 << 26  # elements of an unfolded conv input the CG "gram" path may allocate


def conv2d_cg_flops(rows: int, k: int, c_out: int, groups: int, iters: int
                    ) -> dict[str, int]:
    """Flops of ``iters`` CG iterations for a Conv2d with ``rows`` = B * H_out * W_out output
    positions, ``k`` weights per output channel (+1 with bias) and ``c_out`` output channels
    in ``groups`` groups: ``gram``, the explicit per-group Gram of the unfolded input
    (2 R K^2 per group, then 2 C_out K^2 per iteration), or ``matrix_free``, a convolution
    forward and a weight adjoint per iteration (4 R C_out K), the forward only in the last.
    The gradient is computed by the convolution's backward either way."""
    return {"gram": 2 * groups * rows * k * k + 2 * iters * c_out * k * k,
            "matrix_free": (4 * iters - 2) * rows * c_out * k}


def conv2d_prox_direction(
    x: torch.Tensor, grad_theta: torch.Tensor, w_shape: torch.Size, has_bias: bool,
    geo: ConvGeometry, cfg: ProxConfig,
) -> torch.Tensor:
    """ProxProp direction for a Conv2d: ``(I/tau_theta + s A^T A)^{-1}`` applied to
    ``grad_theta`` = [dJ/dW.flatten(1), dJ/db] of shape (C_out, K); ``s`` = 1 or 1/batch."""
    if cfg.solver == "gradient":
        return grad_theta
    wd = _work_dtype(grad_theta)
    xw = x.to(wd)
    g = grad_theta.to(wd)
    beta = 1.0 / cfg.tau_theta
    if D.resolve(cfg.distributed):
        a = conv2d_unfolded(xw, w_shape, has_bias, geo)  # (G, R, K)
        gram, g, batch = _global_gram(a.transpose(1, 2) @ a, g, x.shape[0])
        s = 1.0 if cfg.gram == "sum" else 1.0 / max(batch, 1)
        rows = a.shape[1] * batch // max(x.shape[0], 1)  # global output positions
        return _solve_gram(gram, g, s, beta, cfg, rows, conv=True).to(grad_theta.dtype)
    s = 1.0 if cfg.gram == "sum" else 1.0 / max(x.shape[0], 1)
    if cfg.solver == "exact":
        a = conv2d_unfolded(xw, w_shape, has_bias, geo)  # (G, R, K)
        groups, _, k = a.shape
        eye = torch.eye(k, dtype=wd, device=x.device).expand(groups, k, k)
        mm = torch.baddbmm(eye, a.transpose(1, 2), a, beta=beta, alpha=s)
        rhs = g.reshape(groups, g.shape[0] // groups, k)
        return _spd_solve_rows(mm, rhs).reshape(g.shape).to(grad_theta.dtype)

    if cfg.cg_path == "gram" or cfg.cg_path == "auto" and _conv_gram_is_cheaper(
            x, w_shape, has_bias, geo, cfg.cg_iters):
        a = conv2d_unfolded(xw, w_shape, has_bias, geo)  # (G, R, K)
        return _solve_gram(a.transpose(1, 2) @ a, g, s, beta, cfg, a.shape[1], conv=True
                           ).to(grad_theta.dtype)

    def matvec(v: torch.Tensor) -> torch.Tensor:  # (beta I + s A^T A) applied to rows of v
        return conv2d_gram_apply(xw, v, w_shape, has_bias, geo).mul_(s).add_(v, alpha=beta)

    def quad(v: torch.Tensor) -> torch.Tensor:  # v^T M v per row: beta |v|^2 + s |A v|^2
        u = _conv_forward(xw, v, w_shape, has_bias, geo)
        return (v * v).sum(1).mul_(beta).add_(u.square().sum((0, 2, 3)), alpha=s)

    d, _ = batched_cg(matvec, g, cfg.cg_iters, quad=quad, **_cg_kwargs(cfg, conv=True))
    return d.to(grad_theta.dtype)


def _conv_gram_is_cheaper(x: torch.Tensor, w_shape: torch.Size, has_bias: bool,
                          geo: ConvGeometry, iters: int) -> bool:
    """Whether :func:`conv2d_cg_flops` prefers the explicit Gram, within ``UNFOLD_LIMIT``."""
    out = [(x.shape[2 + i] + 2 * geo.padding[i] - geo.dilation[i] * (w_shape[2 + i] - 1) - 1)
           // geo.stride[i] + 1 for i in (0, 1)]
    rows = x.shape[0] * out[0] * out[1]
    k = w_shape[1] * w_shape[2] * w_shape[3] + int(has_bias)
    if rows * k * geo.groups > UNFOLD_LIMIT:
        return False
    f = conv2d_cg_flops(rows, k, w_shape[0], geo.groups, iters)
    return f["gram"] < f["matrix_free"]
