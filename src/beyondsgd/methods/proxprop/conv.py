"""ProxProp directions for Conv2d layers (Eqs. 13-14): matrix-free CG (a convolution and
its weight adjoint per iteration, all output channels in one batched CG), CG on the explicit
unfolded Gram, or products with the unfolded input, chosen per layer and batch by the cost
model :func:`conv2d_cg_flops`; or the exact per-group Cholesky solve. The unfolded paths
unfold the input once per layer and step (a strided copy, no im2col buffer or ``cat``) and
form the weight gradient from the same unfold, so BackProp's convolution backward then
computes dJ/dx only."""

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


UNFOLD_LIMIT = 1 << 26  # elements of an unfolded conv input the unfolded paths may allocate
CHANNELS_LAST_CPU = True  # matrix-free CG convolutions on NHWC copies of the input (CPU)
UNFOLD_WEIGHT = 64  # flop-equivalents per unfolded element written (memory-bound copy)


def conv2d_unfolded_t(x: torch.Tensor, w_shape: torch.Size, geo: ConvGeometry
                      ) -> torch.Tensor:
    """The transposed matrix of a Conv2d per group without the bias column: (G, K_w, R),
    R = B * H_out * W_out output positions as columns, K_w = C_in/G * kh * kw weight entries
    as rows. One strided copy of the zero-padded input (no im2col buffer, no permute copy, no
    ``cat``): the bias column is handled apart (its Gram entries are the row sums and R)."""
    ph, pw = geo.padding
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x.contiguous()
    n, c, h, w = xp.shape
    kh, kwd = w_shape[2], w_shape[3]
    (sh, sw), (dh, dw), g = geo.stride, geo.dilation, geo.groups
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kwd - 1) - 1) // sw + 1
    st = xp.stride()
    # a strided view (G, C/G, kh, kw, B, H_out, W_out) of the padded input, copied once
    view = xp.as_strided((g, c // g, kh, kwd, n, ho, wo),
                         (c // g * st[1], st[1], dh * st[2], dw * st[3], st[0], sh * st[2],
                          sw * st[3]))
    return view.reshape(g, c // g * kh * kwd, n * ho * wo)


def _out_rows_t(u: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C_out, H, W) -> (G, C_out/G, R) with the same column order as the unfold."""
    n, c = u.shape[:2]
    return u.reshape(n, groups, c // groups, -1).permute(1, 2, 0, 3).reshape(groups, c // groups,
                                                                              -1)


def conv2d_cg_flops(rows: int, k: int, c_out: int, groups: int, iters: int
                    ) -> dict[str, int]:
    """Cost model of ``iters`` CG iterations for a Conv2d with ``rows`` = B * H_out * W_out
    output positions, ``k`` weights per output channel (+1 with bias; K = C_in/G * kh * kw
    + 1) and ``c_out`` output channels in ``groups`` groups: flops (2 per multiply-add),
    gradient included, plus ``UNFOLD_WEIGHT`` flop-equivalents per element of an explicit
    unfold (G * R * (K - 1) elements written by a strided copy; memory-bound, so far dearer per
    element than a GEMM's flop: on the 2-core CPU of docs/methods/proxprop.md one element
    copied costs as much as about 100-200 GEMM flops; 64 is deliberately lower):

    * ``gram``: unfold once, the explicit per-group K x K Gram (2 G R K^2) and the gradient
      (2 R C_out K) from the same unfold, then one (C_out/G, K) x (K, K) product per
      iteration (2 C_out K^2);
    * ``primal``: unfold once, the gradient from it, then products with the unfolded matrix,
      ``(v A^T) A`` per iteration (4 R C_out K), ``A v`` only in the last (2 R C_out K);
    * ``matrix_free``: no unfold: a convolution forward and its weight adjoint per iteration
      (the same (4N - 2) R C_out K flops) through the convolution kernels (oneDNN, cuDNN),
      which do not materialise the unfold, and BackProp's weight gradient.

    ``primal`` has the flops of ``matrix_free`` plus the unfold, so "auto" never picks it
    (forced with ``cg_path="primal"``; it can pay where the convolution kernels are slow).
    The explicit Gram wins when 2 K^2 + W (K - 1) < (4N - 2) C_out K with W =
    ``UNFOLD_WEIGHT``: a few input channels and many outputs (fmnist_2c2d conv1: K 26,
    C_out 32); the paper's ConvNet conv1 (K 76, C_out 16) is matrix-free at cg3, like its
    conv2/conv3 (K 401/501, C_out 20)."""
    unfold = UNFOLD_WEIGHT * groups * rows * (k - 1)
    grad = 2 * rows * c_out * k
    return {"gram": unfold + 2 * groups * rows * k * k + 2 * iters * c_out * k * k + grad,
            "primal": unfold + (4 * iters - 2) * rows * c_out * k + grad,
            "matrix_free": (4 * iters - 2) * rows * c_out * k + grad}


def conv2d_cg_path(rows: int, k: int, c_out: int, groups: int, iters: int) -> str:
    """The cheapest path of :func:`conv2d_cg_flops` ("gram", "primal" or "matrix_free"),
    "matrix_free" whenever the unfold would exceed ``UNFOLD_LIMIT`` elements."""
    if rows * (k - 1) * groups > UNFOLD_LIMIT:
        return "matrix_free"
    f = conv2d_cg_flops(rows, k, c_out, groups, iters)
    best = "gram"
    for path in ("primal", "matrix_free"):  # a plain loop: torch.compile traces it unbroken
        if f[path] < f[best]:
            best = path
    return best


def _conv_rows(x_shape: torch.Size, w_shape: torch.Size, geo: ConvGeometry) -> int:
    out = [(x_shape[2 + i] + 2 * geo.padding[i] - geo.dilation[i] * (w_shape[2 + i] - 1) - 1)
           // geo.stride[i] + 1 for i in (0, 1)]
    return x_shape[0] * out[0] * out[1]


def conv2d_path(x_shape: torch.Size, w_shape: torch.Size, has_bias: bool, geo: ConvGeometry,
                cfg: ProxConfig) -> str:
    """How :func:`conv2d_prox_direction` computes a layer's direction for this batch:
    "gradient", "distributed", "exact", or the CG path ("gram", "primal", "matrix_free"):
    ``cfg.cg_path`` "gram"/"primal" force those, "dual" the matrix-free one (a batch-space
    CG does not pay off for convolutions, whose rows are B * H_out * W_out), "auto" is
    :func:`conv2d_cg_path`."""
    if cfg.solver == "gradient":
        return "gradient"
    if D.resolve(cfg.distributed):
        return "distributed"
    if cfg.solver == "exact":
        return "exact"
    if cfg.cg_path == "gram" or cfg.cg_path == "primal":
        return cfg.cg_path
    if cfg.cg_path == "dual":
        return "matrix_free"
    k = w_shape[1] * w_shape[2] * w_shape[3] + int(has_bias)
    return conv2d_cg_path(_conv_rows(x_shape, w_shape, geo), k, w_shape[0], geo.groups,
                          cfg.cg_iters)


def conv2d_needs_gradient(path: str) -> bool:
    """Whether the path takes BackProp's weight gradient (else it forms it from its unfold,
    and the convolution backward computes only dJ/dx)."""
    return path in ("gradient", "distributed", "matrix_free")


def conv2d_prox_direction(
    x: torch.Tensor, grad_theta: torch.Tensor | None, w_shape: torch.Size, has_bias: bool,
    geo: ConvGeometry, cfg: ProxConfig, grad_out: torch.Tensor | None = None,
    path: str | None = None,
) -> torch.Tensor:
    """ProxProp direction for a Conv2d: ``(I/tau_theta + s A^T A)^{-1}`` applied to
    ``grad_theta`` = [dJ/dW.flatten(1), dJ/db] of shape (C_out, K); ``s`` = 1 or 1/batch.
    ``grad_theta`` may be ``None`` when ``grad_out`` (dJ/dz, (B, C_out, H_out, W_out)) is
    given: the unfolded paths then form it from their unfold. ``path``: from
    :func:`conv2d_path` (computed when ``None``)."""
    if path is None:
        path = conv2d_path(x.shape, w_shape, has_bias, geo, cfg)
    out_dtype = (grad_theta if grad_theta is not None else grad_out).dtype
    if path == "gradient":
        return grad_theta
    wd = _work_dtype(grad_theta if grad_theta is not None else grad_out)
    xw = x.to(wd)
    beta = 1.0 / cfg.tau_theta
    if grad_theta is None and conv2d_needs_gradient(path):
        gw, gb = _conv_weight_bias_adjoint(grad_out.to(wd), xw, w_shape, has_bias, geo)
        grad_theta = _flat(gw, gb)
    if path == "distributed":
        g = grad_theta.to(wd)
        a = conv2d_unfolded(xw, w_shape, has_bias, geo)  # (G, R, K)
        gram, g, batch = _global_gram(a.transpose(1, 2) @ a, g, x.shape[0])
        s = 1.0 if cfg.gram == "sum" else 1.0 / max(batch, 1)
        rows = a.shape[1] * batch // max(x.shape[0], 1)  # global output positions
        return _solve_gram(gram, g, s, beta, cfg, rows, conv=True).to(out_dtype)
    s = 1.0 if cfg.gram == "sum" else 1.0 / max(x.shape[0], 1)
    groups = geo.groups
    c_out = w_shape[0]
    if path == "matrix_free":
        g = grad_theta.to(wd)
        if CHANNELS_LAST_CPU and xw.device.type == "cpu" and groups == 1:
            # oneDNN's small-channel convolutions run faster on NHWC (one copy of the input)
            xw = xw.contiguous(memory_format=torch.channels_last)

        def matvec(v: torch.Tensor) -> torch.Tensor:  # (beta I + s A^T A) applied to rows
            return conv2d_gram_apply(xw, v, w_shape, has_bias, geo).mul_(s).add_(v, alpha=beta)

        def quad(v: torch.Tensor) -> torch.Tensor:  # v^T M v per row: beta |v|^2 + s |A v|^2
            u = _conv_forward(xw, v, w_shape, has_bias, geo)
            # |A v|^2 per channel: u * u then a sum is about 5x faster on the NHWC u than
            # vector_norm over (0, 2, 3) (paper's conv1 at B 128: 0.5 vs 2.8 ms, 1 thread)
            au2 = u.mul_(u).sum((0, 2, 3))
            return torch.linalg.vecdot(v, v).mul_(beta).add_(au2, alpha=s)

        d, _ = batched_cg(matvec, g, cfg.cg_iters, quad=quad, **_cg_kwargs(cfg, conv=True))
        return d.to(out_dtype)

    # unfolded paths: one unfold per layer and step, reused for the gradient
    at = conv2d_unfolded_t(xw, w_shape, geo)  # (G, Kw, R)
    kw, rows = at.shape[1], at.shape[2]
    cg_ = c_out // groups
    if grad_theta is None:
        go = _out_rows_t(grad_out.to(wd), groups)  # (G, C/G, R)
        gwt = torch.bmm(go, at.transpose(1, 2))  # (G, C/G, Kw)
        if has_bias:
            g = torch.cat([gwt, go.sum(2, keepdim=True)], 2).reshape(c_out, kw + 1)
        else:
            g = gwt.reshape(c_out, kw)
    else:
        g = grad_theta.to(wd)
    k = kw + int(has_bias)
    if path in ("gram", "exact"):
        gram = torch.bmm(at, at.transpose(1, 2))  # (G, Kw, Kw)
        if has_bias:  # border: X^T 1 and R (small, K x K)
            sums = at.sum(2, keepdim=True)
            corner = sums.new_full((groups, 1, 1), float(rows))
            gram = torch.cat([torch.cat([gram, sums], 2),
                              torch.cat([sums.transpose(1, 2), corner], 2)], 1)
        if path == "exact":
            eye = torch.eye(k, dtype=wd, device=x.device).expand(groups, k, k)
            mm = torch.add(eye * beta, gram, alpha=s)
            rhs = g.reshape(groups, cg_, k)
            return _spd_solve_rows(mm, rhs).reshape(g.shape).to(out_dtype)
        return _solve_gram(gram if groups > 1 else gram[0], g, s, beta, cfg, rows,
                           conv=True).to(out_dtype)

    # primal: products with the unfolded matrix, A v = v_w X^T + v_b, A^T u = [u X, u 1]
    def forward(v: torch.Tensor) -> torch.Tensor:  # (C_out, K) -> (G, C/G, R)
        vg = v.reshape(groups, cg_, k)
        if has_bias:
            return torch.baddbmm(vg[:, :, kw:], vg[:, :, :kw], at)
        return torch.bmm(vg, at)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        u = forward(v)
        out = torch.bmm(u, at.transpose(1, 2))  # (G, C/G, Kw)
        if has_bias:
            out = torch.cat([out, u.sum(2, keepdim=True)], 2)
        return out.reshape(v.shape).mul_(s).add_(v, alpha=beta)

    def quad(v: torch.Tensor) -> torch.Tensor:
        u = forward(v)
        au = torch.linalg.vector_norm(u, dim=2).reshape(-1)
        return (v * v).sum(1).mul_(beta).add_(au * au, alpha=s)

    d, _ = batched_cg(matvec, g, cfg.cg_iters, quad=quad, **_cg_kwargs(cfg, conv=True))
    return d.to(out_dtype)
