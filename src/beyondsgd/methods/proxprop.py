"""ProxProp: proximal backpropagation (Frerix, Moellenhoff, Moeller & Cremers, ICLR 2018).

ProxProp keeps the BackProp forward/backward sweep but replaces the explicit gradient step on the
parameters of every linear layer (``nn.Linear``, ``nn.Conv2d``) by a proximal (implicit) step.
With the forward pass :math:`z = \\phi(\\theta^k, a)` and the BackProp signal
:math:`g = \\partial J / \\partial z` of the mean-reduced loss, the layer target is
:math:`\\tilde z = z - g` (Eqs. 8-9 with unit step) and the new parameters are (Eq. 11)

.. math::

    \\theta^{k+1} = \\arg\\min_\\theta\\; \\tfrac12 \\|\\phi(\\theta, a) - \\tilde z\\|^2
                   + \\tfrac{1}{2\\tau_\\theta}\\|\\theta - \\theta^k\\|^2 ,

equivalently (Prop. 2, Eq. 13; Eq. 14 is the linear system)

.. math::

    d = \\theta^k - \\theta^{k+1} = M^{-1} \\nabla_\\theta J(\\theta^k),\\qquad
    M = \\tfrac{1}{\\tau_\\theta} I + A^\\top A,

where :math:`A` is the linear map :math:`\\theta \\mapsto \\phi(\\theta, a)` (weights *and* bias;
for a convolution :math:`A^\\top A` sums over the batch and the spatial positions). The layer's
``backward`` writes :math:`d` into ``.grad`` (this is the paper's Section 5.3 interface), so any
``torch.optim`` optimizer applies it with ``lr`` = :math:`\\tau`: SGD gives
:math:`\\theta^{k+1} = \\theta^k - \\tau M^{-1}\\nabla J` (Eq. 13). The gradient passed to
earlier layers is the ordinary BackProp gradient with the *old* weights (Eq. 10), so the
downward signal is exactly BackProp's. The last layer keeps an explicit step (Eq. 12).

Solvers (``solver=``):

* ``"cg"``: ``cg_iters`` conjugate-gradient iterations on Eq. 14, warm-started at
  :math:`\\theta^k` (i.e. :math:`d_0 = 0`, so the initial residual is :math:`\\nabla_\\theta J`
  and N iterations cost N Gram applications). Any number of iterations gives a descent
  direction (Prop. 5). One CG per output unit/channel (``cg_block="unit"``, default) or one CG
  over the whole layer (``cg_block="layer"``, what the official code does for Conv2d). For a
  Linear layer the iterates are carried on the cheapest of three equivalent paths by flop
  count (:func:`linear_cg_path`): the explicit K x K Gram, primal batch products, or
  batch-space ("dual") CG with the B x B Gram :math:`\\tilde A \\tilde A^\\top`
  (:func:`~beyondsgd.methods.cg.batch_space_cg`). ``cg_variant="official"`` reproduces the
  official code's aliased iteration (not CG; the paper's cgN numbers came from it).
* ``"exact"``: a dense solve. Linear: Woodbury, :math:`d^\\top = \\tilde A^\\top (\\beta I + s
  \\tilde A \\tilde A^\\top)^{-1} g` with a BxB Cholesky, when the batch B is smaller than the
  fan-in + 1; otherwise a Cholesky of the (fan-in+1)^2 matrix. Conv2d: the unfolded-input Gram
  (shared by all output channels of a group) and a Cholesky solve.
* ``"gradient"``: :math:`d = \\nabla_\\theta J` (BackProp through the same layer; the
  paper's baseline mode).

Data parallelism (``distributed=``, default: whenever ``torch.distributed`` is initialised with
more than one process): :math:`A` must be the map of the *global* batch, so each rank forms its
local Gram :math:`A_r^\top A_r` (per group for convolutions) and its gradient, one all-reduce
sums them, and every rank solves the same system (CG or Cholesky on the explicit
:math:`K\times K` Gram, :math:`K` = fan-in + 1). The result equals the one-process solve on the
whole batch up to round-off; the downward gradient is per sample and stays local. Memory: the
Gram is :math:`K^2` per group (and a convolution's unfolded input, rows x :math:`K`).

Scaling (``gram=``): ``"sum"`` (default, the paper's) uses the unnormalised Gram
:math:`A^\\top A` with the mean-reduced loss's gradient, so the preconditioner's strength grows
with the batch size (and with the feature-map size for convolutions); keep batch 500 to reuse
the paper's :math:`\\tau_\\theta`. ``"mean"`` uses :math:`A^\\top A / B` (B = rows of the
layer input: batch size, times extra leading dims for Linear), making :math:`\\tau_\\theta`
batch-size independent.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from beyondsgd.methods.proxprop import proxprop
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> net = proxprop(net, tau_theta=1.0, solver="cg", cg_iters=3)   # net[0] -> ProxLinear
    >>> opt = torch.optim.SGD(net.parameters(), lr=1.0, momentum=0.95, nesterov=True)
    >>> x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    >>> loss = nn.functional.cross_entropy(net(x), y)
    >>> loss.backward(); opt.step()                     # net[0].weight.grad holds M^{-1} grad

Reference: T. Frerix, T. Moellenhoff, M. Moeller, D. Cremers, "Proximal Backpropagation",
ICLR 2018, arXiv:1706.04638. Official code: github.com/tfrerix/proxprop (MIT licence;
behaviour described, no code reused).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .. import distributed as D
from .base import SCHEDULE_HPARAMS, HParam, OptimizerMethod, register
from .cg import batch_space_cg, batched_cg

__all__ = [
    "ProxConfig",
    "ProxConv2d",
    "ProxLinear",
    "ProxProp",
    "ProxPropSGD",
    "conv2d_cg_flops",
    "conv2d_gram_apply",
    "conv2d_prox_direction",
    "linear_cg_flops",
    "linear_cg_path",
    "linear_prox_direction",
    "linear_prox_parts",
    "proxprop",
]

SOLVERS = ("cg", "exact", "gradient")
GRAMS = ("sum", "mean")
CG_BLOCKS = ("unit", "layer")
CG_VARIANTS = ("textbook", "official")
CG_PATHS = ("auto", "gram", "primal", "dual")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProxConfig:
    """Settings of one proximal layer (validated on construction).

    ``tau_theta``: prox step (M = I/tau_theta + A^T A); ``solver``: "cg" | "exact" | "gradient";
    ``cg_iters``: CG iterations (>= 1); ``cg_tol``: relative stopping tolerance of the official
    code (0: always ``cg_iters``); ``cg_eps``: added to the CG denominators, relative to each
    CG block's current squared residual (scale-free; 0: textbook CG; with
    ``cg_variant="official"`` absolute, as the official code's 1e-6); ``gram``: "sum" (paper)
    | "mean" (divided by the batch rows); ``cg_block``: "unit" (one CG per output
    unit/channel) | "layer" (one CG for the layer); ``cg_variant``: "textbook" (CG, Prop. 5)
    | "official" (reproduces the official code's aliased iteration, which is not CG: see
    :mod:`beyondsgd.methods.cg`); ``cg_path``: how a Linear layer's CG is computed, "auto"
    (the cheapest by flop count, :func:`linear_cg_path`) | "gram" | "primal" | "dual" (same
    iterates up to round-off);
    ``distributed``: sum the Gram and gradient over the ranks of the initialised
    ``torch.distributed`` group (``None``: when it has more than one process). For a
    Conv2d, ``cg_path="gram"`` forces the explicit unfolded Gram, "primal"/"dual" the
    matrix-free path, "auto" the cheaper by :func:`conv2d_cg_flops`.
    """

    tau_theta: float = 1.0
    solver: str = "cg"
    cg_iters: int = 3
    cg_tol: float = 1e-2
    cg_eps: float = 1e-6
    gram: str = "sum"
    cg_block: str = "unit"
    distributed: bool | None = None
    cg_variant: str = "textbook"
    cg_path: str = "auto"

    def __post_init__(self) -> None:
        t = self.tau_theta
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < float(t) < float(
                "inf"):
            raise ValueError(f"tau_theta must be a finite float > 0, got {t!r}")
        object.__setattr__(self, "tau_theta", float(t))
        if self.solver not in SOLVERS:
            raise ValueError(f"solver {self.solver!r} is not one of {list(SOLVERS)}")
        n = self.cg_iters
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            hint = " (use solver='gradient' for the plain BackProp gradient)" if n == 0 else ""
            raise ValueError(f"cg_iters must be an int >= 1, got {n!r}{hint}")
        for name in ("cg_tol", "cg_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < \
                    float("inf"):
                raise ValueError(f"{name} must be a finite float >= 0, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.gram not in GRAMS:
            raise ValueError(f"gram {self.gram!r} is not one of {list(GRAMS)}")
        if self.cg_block not in CG_BLOCKS:
            raise ValueError(f"cg_block {self.cg_block!r} is not one of {list(CG_BLOCKS)}")
        if self.cg_variant not in CG_VARIANTS:
            raise ValueError(f"cg_variant {self.cg_variant!r} is not one of {list(CG_VARIANTS)}")
        if self.cg_path not in CG_PATHS:
            raise ValueError(f"cg_path {self.cg_path!r} is not one of {list(CG_PATHS)}")
        if self.distributed is not None and not isinstance(self.distributed, bool):
            raise ValueError(f"distributed must be None (auto), True or False, got "
                             f"{self.distributed!r}")


def _cg_kwargs(cfg: ProxConfig) -> dict[str, Any]:
    """The CG settings of ``cfg`` as keyword arguments of the solvers in ``cg.py``."""
    official = cfg.cg_variant == "official"
    return dict(tol=cfg.cg_tol, eps=cfg.cg_eps, joint=cfg.cg_block == "layer",
                relative_eps=not official, aliased=official)


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """Solve in float32 (or float64 when the layer is float64), never in half precision."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _spd_solve_rows(m: torch.Tensor, rhs_rows: torch.Tensor) -> torch.Tensor:
    """Solve ``m x = r`` for every row ``r`` of ``rhs_rows`` (batched over leading dims),
    ``m`` SPD: Cholesky, with an LU fallback if float round-off breaks positive definiteness."""
    chol, info = torch.linalg.cholesky_ex(m)
    rhs = rhs_rows.transpose(-1, -2)
    if bool((info != 0).any()):
        return torch.linalg.solve(m, rhs).transpose(-1, -2)
    return torch.cholesky_solve(rhs, chol).transpose(-1, -2)


def _global_gram(gram: torch.Tensor, g: torch.Tensor, rows: int
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Data parallelism: sum the local Gram ``A_r^T A_r``, the gradient and the row count over
    the ranks in one all-reduce. Each rank's ``g`` is the gradient of its loss scaled as DDP
    expects (mean over ranks = global gradient), so the global gradient is the sum / W."""
    flat = torch.cat([gram.reshape(-1), g.reshape(-1), gram.new_tensor([float(rows)])])
    D.all_reduce_sum(flat)
    n1, n2 = gram.numel(), g.numel()
    return (flat[:n1].reshape(gram.shape), flat[n1:n1 + n2].reshape(g.shape) / D.world_size(),
            int(round(float(flat[-1]))))


def _solve_gram(gram: torch.Tensor, g: torch.Tensor, s: float, beta: float, cfg: ProxConfig
                ) -> torch.Tensor:
    """Rows of ``g`` (C_out, K) through ``(beta I + s gram)^{-1}``; ``gram`` is (K, K), or
    (G, K, K) with the rows of ``g`` split into G consecutive groups. Cholesky for
    ``solver="exact"``, else CG with the explicit matrix."""
    k = gram.shape[-1]
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    m = gram.mul(s).add_(eye * beta)
    groups = m.shape[0] if m.dim() == 3 else 1

    def by_group(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(groups, v.shape[0] // groups, k) if m.dim() == 3 else v

    if cfg.solver == "exact":
        return _spd_solve_rows(m, by_group(g)).reshape(g.shape)

    def matvec(v: torch.Tensor) -> torch.Tensor:  # m is symmetric: rows @ m
        return (by_group(v) @ m).reshape(v.shape)

    d, _ = batched_cg(matvec, g, cfg.cg_iters, **_cg_kwargs(cfg))
    return d


# --------------------------------------------------------------------------------------------
# Pure maths: Linear
# --------------------------------------------------------------------------------------------
def linear_cg_flops(rows: int, k: int, m: int, iters: int) -> dict[str, int]:
    """Multiply-add flops (2 per multiply-add) of ``iters`` CG iterations for a Linear layer
    with ``rows`` batch rows, ``k`` = fan-in (+1 with bias) and ``m`` outputs, gradient
    included, on each path (they give the same iterates up to round-off):

    * ``gram``: form the explicit K x K Gram (2 B K^2), then one (m, K) x (K, K) product per
      iteration; needs the gradient (2 m B K);
    * ``primal``: two batch products per iteration, ``(v Ã^T) Ã`` (4 m B K), plus the gradient;
    * ``dual``: batch-space CG (:func:`~beyondsgd.methods.cg.batch_space_cg`): G = Ã Ã^T
      (2 B^2 K), one (m, B) x (B, B) product per iteration, and the final direction q Ã
      (2 m B K) instead of the gradient.
    """
    return {"gram": 2 * rows * k * k + 2 * iters * m * k * k + 2 * m * rows * k,
            "primal": 4 * iters * m * rows * k + 2 * m * rows * k,
            "dual": 2 * rows * rows * k + 2 * m * rows * k + 2 * iters * m * rows * rows}


def linear_cg_path(rows: int, k: int, m: int, iters: int) -> str:
    """The path of :func:`linear_cg_flops` with the fewest flops (first one on a tie)."""
    flops = linear_cg_flops(rows, k, m, iters)
    return min(flops, key=flops.__getitem__)


def linear_prox_direction(
    x: torch.Tensor, grad_out: torch.Tensor, grad_theta: torch.Tensor | None, has_bias: bool,
    cfg: ProxConfig,
) -> torch.Tensor:
    """ProxProp direction ``d = (I/tau_theta + s Ã^T Ã)^{-1}`` applied to each row of the
    gradient ``[dJ/dW, dJ/db]`` of a Linear layer (Eqs. 13-14).

    ``x``: (B, n) layer inputs; ``grad_out``: (B, m) BackProp signal dJ/dz; ``grad_theta``:
    (m, K) = [dJ/dW, dJ/db] = ``grad_out^T Ã`` with K = n + has_bias and Ã = [x, 1], or
    ``None`` to compute it only if the chosen path needs it. Returns (m, K) in ``grad_out``'s
    dtype. ``s`` = 1 (gram="sum") or 1/B (gram="mean"). CG runs on the cheapest path by
    :func:`linear_cg_path` unless ``cfg.cg_path`` names one.
    """
    dw, db = linear_prox_parts(x, grad_out, grad_theta, has_bias, cfg)
    d = torch.cat([dw, db[:, None]], 1) if db is not None else dw
    return d.to(grad_out.dtype if grad_theta is None else grad_theta.dtype)


def linear_prox_parts(
    x: torch.Tensor, grad_out: torch.Tensor, grad_theta: torch.Tensor | None, has_bias: bool,
    cfg: ProxConfig,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`linear_prox_direction` as contiguous (weight, bias or None) parts in the work
    dtype (float32, or float64 for float64 layers); what the layer's backward uses."""
    wd = _work_dtype(grad_out)
    xw = x.to(wd)
    go = grad_out.to(wd)
    rows, n = xw.shape
    k, m_out = n + int(has_bias), go.shape[1]
    beta = 1.0 / cfg.tau_theta

    def augmented() -> torch.Tensor:
        return torch.cat([xw, xw.new_ones(rows, 1)], 1) if has_bias else xw

    def gradient() -> torch.Tensor:
        return grad_theta.to(wd) if grad_theta is not None else go.T @ augmented()

    def split(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (d[:, :n].contiguous(), d[:, n].contiguous()) if has_bias else (d, None)

    if cfg.solver == "gradient":
        return split(gradient())
    if D.resolve(cfg.distributed):
        a = augmented()
        gram, g, rows = _global_gram(a.T @ a, gradient(), rows)
        s = 1.0 if cfg.gram == "sum" else 1.0 / max(rows, 1)
        return split(_solve_gram(gram, g, s, beta, cfg))
    s = 1.0 if cfg.gram == "sum" else 1.0 / max(rows, 1)
    path = "exact" if cfg.solver == "exact" else cfg.cg_path
    if path == "auto":
        path = linear_cg_path(rows, k, m_out, cfg.cg_iters)
    if path in ("dual", "exact") and (path == "dual" or rows < k):
        # batch space: Ã Ã^T = x x^T (+ 1 with a bias); the direction is q Ã = [q x, q 1]
        gram = xw @ xw.T
        if has_bias:
            gram.add_(1.0)
        if path == "exact":
            # Woodbury: (beta I + s Ã^T Ã)^{-1} Ã^T go = Ã^T (beta I + s Ã Ã^T)^{-1} go
            kk = gram.mul(s).add_(torch.eye(rows, dtype=wd, device=xw.device), alpha=beta)
            q = _spd_solve_rows(kk, go.T)
        else:
            q, _ = batch_space_cg(gram, go.T, beta, s, cfg.cg_iters, **_cg_kwargs(cfg))
        return q @ xw, (q.sum(1) if has_bias else None)
    a = augmented()
    if path == "exact":
        mm = torch.addmm(torch.eye(k, dtype=wd, device=a.device), a.T, a, beta=beta, alpha=s)
        return split(_spd_solve_rows(mm, gradient()))
    if path == "gram":
        gram = torch.addmm(torch.eye(k, dtype=wd, device=a.device), a.T, a, beta=beta, alpha=s)

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return v @ gram
    else:
        def matvec(v: torch.Tensor) -> torch.Tensor:  # (beta I + s Ã^T Ã) applied to rows
            return torch.addmm(v, v @ a.T, a, beta=beta, alpha=s)

    def quad(v: torch.Tensor) -> torch.Tensor:  # v^T M v per row: beta |v|^2 + s |v Ã^T|^2
        u = v @ a.T
        return (v * v).sum(1).mul_(beta).add_((u * u).sum(1), alpha=s)

    d, _ = batched_cg(matvec, gradient(), cfg.cg_iters, quad=None if path == "gram" else quad,
                      **_cg_kwargs(cfg))
    return split(d)


def bias_prox_direction(grad_b: torch.Tensor, outputs: int, batch: int, cfg: ProxConfig
                        ) -> torch.Tensor:
    """ProxProp direction of a bias whose weight is frozen: the prox variable is the bias
    alone, so ``A`` maps b to b 1^T (a column of ones per output unit, ``outputs`` = B rows
    for Linear, B * H_out * W_out for Conv2d), ``A^T A = outputs`` and
    ``M = 1/tau_theta + s outputs`` (Eq. 13 restricted to the trainable parameters; ``s`` =
    1, or 1/``batch`` for gram="mean" as for the whole layer). Solved like the full system
    (Cholesky or CG with the same settings, all-reduced under data parallelism)."""
    if cfg.solver == "gradient":
        return grad_b
    wd = _work_dtype(grad_b)
    gram = torch.full((1, 1), float(outputs), dtype=wd, device=grad_b.device)
    g = grad_b.to(wd)[:, None]
    if D.resolve(cfg.distributed):
        gram, g, batch = _global_gram(gram, g, batch)
    s = 1.0 if cfg.gram == "sum" else 1.0 / max(batch, 1)
    return _solve_gram(gram, g, s, 1.0 / cfg.tau_theta, cfg)[:, 0].to(grad_b.dtype)


# --------------------------------------------------------------------------------------------
# Pure maths: Conv2d
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvGeometry:
    """Integer stride/padding/dilation and groups of a zero-padded Conv2d."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


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
    forward and a weight adjoint per iteration (4 R C_out K). The gradient is computed by the
    convolution's backward either way."""
    return {"gram": 2 * groups * rows * k * k + 2 * iters * c_out * k * k,
            "matrix_free": 4 * iters * rows * c_out * k}


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
        gram, g, rows = _global_gram(a.transpose(1, 2) @ a, g, x.shape[0])
        s = 1.0 if cfg.gram == "sum" else 1.0 / max(rows, 1)
        return _solve_gram(gram, g, s, beta, cfg).to(grad_theta.dtype)
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
        return _solve_gram(a.transpose(1, 2) @ a, g, s, beta, cfg).to(grad_theta.dtype)

    def matvec(v: torch.Tensor) -> torch.Tensor:  # (beta I + s A^T A) applied to rows of v
        return conv2d_gram_apply(xw, v, w_shape, has_bias, geo).mul_(s).add_(v, alpha=beta)

    def quad(v: torch.Tensor) -> torch.Tensor:  # v^T M v per row: beta |v|^2 + s |A v|^2
        u = _conv_forward(xw, v, w_shape, has_bias, geo)
        return (v * v).sum(1).mul_(beta).add_(u.square().sum((0, 2, 3)), alpha=s)

    d, _ = batched_cg(matvec, g, cfg.cg_iters, quad=quad, **_cg_kwargs(cfg))
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


# --------------------------------------------------------------------------------------------
# Autograd functions: forward as usual, backward writes the ProxProp direction
# --------------------------------------------------------------------------------------------
class ProxLinearFunction(torch.autograd.Function):
    """y = x W^T + b; backward: ordinary dJ/dx (old W), ProxProp direction for (W, b)."""

    @staticmethod
    def forward(ctx, x, weight, bias, cfg):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.cfg = cfg
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        cfg: ProxConfig = ctx.cfg
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        n, m = weight.shape[1], weight.shape[0]
        g2 = grad_out.reshape(-1, m).to(weight.dtype)  # autocast: grad_out may be half
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = (g2 @ weight).reshape(x.shape).to(x.dtype)
        if need_w:  # the prox variable is the trainable part of (W, b)
            x2 = x.reshape(-1, n).to(weight.dtype)
            if cfg.solver == "gradient":
                grad_w = g2.T @ x2
                grad_b = g2.sum(0) if need_b else None
            else:
                grad_w, grad_b = linear_prox_parts(x2, g2, None, bool(need_b), cfg)
                grad_w = grad_w.to(weight.dtype)
                grad_b = grad_b.to(weight.dtype) if grad_b is not None else None
        elif need_b:  # frozen weight: the bias alone is the prox variable
            grad_b = bias_prox_direction(g2.sum(0), g2.shape[0], g2.shape[0], cfg)
        return grad_x, grad_w, grad_b, None


class ProxConv2dFunction(torch.autograd.Function):
    """Conv2d forward; backward: ordinary dJ/dx (old W), ProxProp direction for (W, b)."""

    @staticmethod
    def forward(ctx, x, weight, bias, geo, cfg):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.geo, ctx.cfg = geo, cfg
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, geo.stride, geo.padding, geo.dilation, geo.groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        geo: ConvGeometry = ctx.geo
        cfg: ProxConfig = ctx.cfg
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        x_dtype = x.dtype
        x, grad_out = x.to(weight.dtype), grad_out.to(weight.dtype)  # autocast: may be half
        grad_x, gw, gb = torch.ops.aten.convolution_backward(
            grad_out, x, weight, bias_sizes, list(geo.stride), list(geo.padding),
            list(geo.dilation), False, [0, 0], geo.groups, [need_x, need_w, need_b])
        if need_w and cfg.solver != "gradient":
            use_b = bool(need_b)
            gth = _flat(gw, gb if use_b else None)
            d = conv2d_prox_direction(x, gth, weight.shape, use_b, geo, cfg)
            kw = gw[0].numel()
            gw = d[:, :kw].reshape(weight.shape)
            if use_b:
                gb = d[:, kw].contiguous()
        elif need_b:  # frozen weight: the bias alone is the prox variable
            gb = bias_prox_direction(gb, grad_out.numel() // grad_out.shape[1], x.shape[0],
                                     cfg)
        return (grad_x.to(x_dtype) if need_x else None, gw if need_w else None,
                gb if need_b else None, None, None)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------
def _config(cfg: ProxConfig | None, kwargs: dict[str, Any]) -> ProxConfig:
    if cfg is not None and kwargs:
        raise ValueError("give either config= or individual prox settings, not both")
    return cfg if cfg is not None else ProxConfig(**kwargs)


class ProxLinear(nn.Linear):
    """``nn.Linear`` whose backward writes the ProxProp direction into ``.grad``.

    ``ProxLinear(in_features, out_features, bias=True, *, tau_theta=1.0, solver="cg",
    cg_iters=3, cg_tol=1e-2, cg_eps=1e-6, gram="sum", cg_block="unit")``. Same parameters,
    state_dict keys and forward as ``nn.Linear``; without grad (``torch.no_grad``) it is a plain
    ``F.linear``. Inputs of any shape (..., in_features); the batch rows are all leading dims.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: Any = None, dtype: Any = None, *, config: ProxConfig | None = None,
                 **prox: Any):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.prox = _config(config, prox)

    @classmethod
    def from_module(cls, layer: nn.Linear, config: ProxConfig) -> ProxLinear:
        """A ProxLinear sharing ``layer``'s Parameter objects (no copy, no RNG use)."""
        new = cls(layer.in_features, layer.out_features, layer.bias is not None,
                  device="meta", config=config)
        new.weight = layer.weight
        new.bias = layer.bias
        new.train(layer.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return ProxLinearFunction.apply(x, self.weight, self.bias, self.prox)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.prox}"


def _geometry(conv: nn.Conv2d) -> ConvGeometry:
    pad = conv.padding
    if conv.padding_mode != "zeros":
        pad = (0, 0)  # the non-zero padding is applied by F.pad in forward
    elif isinstance(pad, str):
        if pad == "valid":
            pad = (0, 0)
        else:  # "same" (stride 1, enforced by nn.Conv2d)
            totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
            if any(t % 2 for t in totals):
                raise ValueError(
                    "ProxConv2d: padding='same' with an even effective kernel size pads "
                    f"asymmetrically (kernel {conv.kernel_size}, dilation {conv.dilation}); "
                    "accepted: integer padding or 'same' with odd effective kernels")
            pad = tuple(t // 2 for t in totals)
    return ConvGeometry(tuple(conv.stride), tuple(pad), tuple(conv.dilation), conv.groups)


class ProxConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose backward writes the ProxProp direction into ``.grad``.

    Same constructor as ``nn.Conv2d`` plus the keyword-only ProxProp settings of
    :class:`ProxConfig`. Supports stride, dilation, groups, integer/'valid'/'same' padding
    (symmetric) and every ``padding_mode``.
    """

    def __init__(self, *args: Any, config: ProxConfig | None = None, **kwargs: Any):
        prox = {k: kwargs.pop(k) for k in list(kwargs) if k in ProxConfig.__dataclass_fields__}
        super().__init__(*args, **kwargs)
        self.prox = _config(config, prox)
        self.geometry = _geometry(self)

    @classmethod
    def from_module(cls, layer: nn.Conv2d, config: ProxConfig) -> ProxConv2d:
        """A ProxConv2d sharing ``layer``'s Parameter objects (no copy, no RNG use)."""
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                  layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                  layer.padding_mode, device="meta", config=config)
        new.weight = layer.weight
        new.bias = layer.bias
        new.train(layer.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        geo = self.geometry
        if not torch.is_grad_enabled():
            return F.conv2d(x, self.weight, self.bias, geo.stride, geo.padding, geo.dilation,
                            geo.groups)
        return ProxConv2dFunction.apply(x, self.weight, self.bias, geo, self.prox)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.prox}"


# --------------------------------------------------------------------------------------------
# Converter
# --------------------------------------------------------------------------------------------
_SUPPORTED: dict[type, type] = {nn.Linear: ProxLinear, nn.Conv2d: ProxConv2d}
_PROX_TYPES = (ProxLinear, ProxConv2d)


_LINEAR_LIKE = (nn.Linear, nn.modules.conv._ConvNd)


def _output_layer(model: nn.Module, example_input: Any) -> str | None:
    """Name of the linear layer that produces the model's output (kept explicit, Eq. 12): the
    last ``nn.Linear``/convolution *called* in a forward pass on ``example_input`` (a tensor,
    or a tuple of positional arguments), else the last one in registration order."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, _LINEAR_LIKE)]
    if example_input is None:
        return names[-1] if names else None
    called: list[str] = []
    handles = [m.register_forward_hook(lambda *_, n=n: called.append(n))
               for n, m in model.named_modules() if n in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            model(*args)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not called:
        raise ValueError("proxprop: the forward pass on example_input called no nn.Linear or "
                         f"convolution of {type(model).__name__}; give output_layer= instead")
    return called[-1]


def proxprop(
    model: nn.Module,
    tau_theta: float = 1.0,
    solver: str = "cg",
    cg_iters: int = 3,
    cg_tol: float = 1e-2,
    cg_eps: float = 1e-6,
    gram: str = "sum",
    cg_block: str = "unit",
    layers: str | list[str] | tuple[str, ...] | None = None,
    distributed: bool | None = None,
    cg_variant: str = "textbook",
    cg_path: str = "auto",
    output_layer: str | None = None,
    example_input: Any = None,
) -> nn.Module:
    """Convert ``model``'s ``nn.Linear``/``nn.Conv2d`` layers to ProxProp layers in place.

    ``layers=None`` converts every ``nn.Linear`` and ``nn.Conv2d`` (exact types) except the
    layer that produces the output, which keeps its explicit step as in the paper (Eq. 12):
    ``output_layer`` (its name), else the last linear layer called in a forward pass on
    ``example_input`` (a tensor or a tuple of arguments; run under ``no_grad`` in eval mode),
    else the last ``nn.Linear``/convolution in registration order. ``layers`` may
    name modules (``dict(model.named_modules())`` keys) to convert exactly those; a named module
    of another type raises ``ValueError``. Already converted layers get the new settings.
    Parameters are shared, not copied, so optimizers built before the conversion still work
    and ``state_dict`` keys are unchanged. ``distributed``: see :class:`ProxConfig` (data
    parallelism sums the Gram over the ranks). Returns ``model``.
    """
    cfg = ProxConfig(tau_theta=tau_theta, solver=solver, cg_iters=cg_iters, cg_tol=cg_tol,
                     cg_eps=cg_eps, gram=gram, cg_block=cg_block, distributed=distributed,
                     cg_variant=cg_variant, cg_path=cg_path)
    modules = dict(model.named_modules())
    if layers is None:
        if not any(type(m) in _SUPPORTED or isinstance(m, _PROX_TYPES)
                   for m in modules.values()):
            kinds = sorted({type(m).__name__ for n, m in modules.items() if n} or
                           {type(model).__name__})
            raise ValueError(
                f"proxprop: {type(model).__name__} has no nn.Linear or nn.Conv2d layer to "
                f"convert (its layers: {', '.join(kinds)}); supported: nn.Linear, nn.Conv2d "
                "(exact types)")
        if output_layer is not None:
            if output_layer not in modules or output_layer == "":
                known = [n for n, m in modules.items() if n and isinstance(m, _LINEAR_LIKE)]
                raise ValueError(f"proxprop: output_layer {output_layer!r} is not a submodule; "
                                 f"linear layers: {known}")
            last = output_layer
        else:
            last = _output_layer(model, example_input)
        targets = [n for n, m in modules.items()
                   if (type(m) in _SUPPORTED or isinstance(m, _PROX_TYPES)) and n != last and n]
        skipped = [f"{n} ({type(m).__name__})" for n, m in modules.items()
                   if isinstance(m, _LINEAR_LIKE) and n != last
                   and type(m) not in _SUPPORTED and not isinstance(m, _PROX_TYPES)]
        if skipped:
            warnings.warn("proxprop: these layers stay plain (only nn.Linear and nn.Conv2d are "
                          f"supported): {', '.join(skipped)}", stacklevel=2)
        if not targets:
            warnings.warn(f"proxprop: no layer converted; the only supported layer, {last!r}, "
                          "is the output layer and keeps its explicit step (Eq. 12); name it "
                          "in layers= to make it proximal", stacklevel=2)
    else:
        targets = [layers] if isinstance(layers, str) else list(layers)
        for n in targets:
            if n not in modules or n == "":
                raise ValueError(
                    f"proxprop: no submodule named {n!r}; convertible layers: "
                    f"{[k for k, m in modules.items() if type(m) in _SUPPORTED]}")
            m = modules[n]
            if type(m) not in _SUPPORTED and not isinstance(m, _PROX_TYPES):
                raise ValueError(
                    f"proxprop: layer {n!r} is a {type(m).__name__}; accepted: nn.Linear, "
                    "nn.Conv2d (exact types; subclasses may change forward)")
    for n in targets:
        m = modules[n]
        if isinstance(m, _PROX_TYPES):
            m.prox = cfg
            continue
        new = _SUPPORTED[type(m)].from_module(m, cfg)
        parent_name, _, child = n.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model


# --------------------------------------------------------------------------------------------
# Registered methods
# --------------------------------------------------------------------------------------------
PROX_KEYS = ("tau_theta", "solver", "cg_iters", "cg_tol", "cg_eps", "gram", "cg_block",
             "cg_variant")


def _prox_hparams(tau_theta: float, cg_iters: int) -> tuple[HParam, ...]:
    return (
        HParam("tau_theta", tau_theta, float, "prox step: M = I/tau_theta + A^T A",
               low=1e-3, high=10.0, log=True, tune=True),
        HParam("solver", "cg", str, "prox solver", choices=SOLVERS),
        HParam("cg_iters", cg_iters, int, "CG iterations per layer and step (solver=cg)"),
        HParam("cg_tol", 1e-2, float, "CG relative tolerance (official code; 0: fixed iters)"),
        HParam("cg_eps", 1e-6, float, "CG denominator epsilon, relative to each block's "
               "squared residual (absolute with cg_variant=official; 0: textbook)"),
        HParam("gram", "sum", str, "Gram scaling: sum (paper) or mean over the batch",
               choices=GRAMS),
        HParam("cg_block", "unit", str, "one CG per output unit, or one per layer",
               choices=CG_BLOCKS),
        HParam("cg_variant", "textbook", str, "textbook CG, or the official code's aliased "
               "iteration (reproduces the paper's cgN numbers; not CG)", choices=CG_VARIANTS),
    )


class _ProxPropMethod(OptimizerMethod):
    def __init__(self, hp: dict[str, Any] | None = None):
        super().__init__(hp)
        self.config = ProxConfig(**{k: self.hp[k] for k in PROX_KEYS})

    def prepare(self, model: nn.Module, ctx) -> nn.Module:
        proxprop(model, **{k: getattr(self.config, k) for k in PROX_KEYS},
                 distributed=ctx.world_size > 1, example_input=ctx.x_train[:2])
        return super().prepare(model, ctx)


@register
class ProxProp(_ProxPropMethod):
    """ProxProp directions (Eq. 13) applied by Adam (paper Section 5.3: lr 1e-3,
    tau_theta 1)."""

    name = "proxprop"
    summary = "proximal backpropagation (implicit steps on Linear/Conv2d) with Adam"
    paper = "Frerix, Moellenhoff, Moeller & Cremers, ICLR 2018"
    hparams = (
        HParam("lr", 1e-3, float, "Adam learning rate (tau)", low=1e-5, high=1e-1, log=True,
               tune=True),
        *_prox_hparams(1.0, 3),
        HParam("beta1", 0.9, float, "first-moment decay"),
        HParam("beta2", 0.999, float, "second-moment decay"),
        HParam("eps", 1e-8, float, "denominator epsilon"),
        HParam("weight_decay", 0.0, float, "L2 weight decay"),
        *SCHEDULE_HPARAMS,
    )
    published_defaults = {"lr": 1e-3, "tau_theta": 1.0}

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.hp["lr"],
                                betas=(self.hp["beta1"], self.hp["beta2"]), eps=self.hp["eps"],
                                weight_decay=self.hp["weight_decay"])


@register
class ProxPropSGD(_ProxPropMethod):
    """ProxProp directions (Eq. 13) applied by Nesterov SGD (paper Section 5.1: momentum 0.95,
    lr 1, tau_theta 0.05)."""

    name = "proxprop_sgd"
    summary = "proximal backpropagation (implicit steps on Linear/Conv2d) with Nesterov SGD"
    paper = "Frerix, Moellenhoff, Moeller & Cremers, ICLR 2018"
    hparams = (
        HParam("lr", 1.0, float, "learning rate (tau)", low=1e-3, high=10.0, log=True,
               tune=True),
        *_prox_hparams(0.05, 3),
        HParam("momentum", 0.95, float, "momentum coefficient", low=0.0, high=0.999),
        HParam("nesterov", True, bool, "Nesterov momentum"),
        HParam("weight_decay", 0.0, float, "L2 weight decay"),
        *SCHEDULE_HPARAMS,
    )
    published_defaults = {"lr": 1.0, "tau_theta": 0.05, "momentum": 0.95}

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.hp["lr"],
                               momentum=self.hp["momentum"], nesterov=self.hp["nesterov"],
                               weight_decay=self.hp["weight_decay"])
