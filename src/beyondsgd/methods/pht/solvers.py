"""Block-coordinate layer solves under frozen support (our reconstruction).

With every support frozen, the network output is affine in one layer's parameters, so the loss is
convex in that layer: :func:`solve_layer` minimises it for one ``Linear``/``Conv`` layer, by
least squares (MSE on a ``Linear`` layer: the exact minimiser; ``torch.linalg.lstsq`` undamped,
a float64 Cholesky solve of the smaller Gram matrix when damped) or by a fixed number of
L-BFGS iterations (cross-entropy, conv layers: *not* a certified optimum; 20 iterations end 9-16 %
above the optimum on mnist1d_mlp). Only one layer is solved at a time; the joint problem over
several layers is never solved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..base import LossFn
from .activation import PositiveHardThreshold
from .fastpath import LinearCE
from .support import frozen_support, record_support

# --------------------------------------------------------------------------------------------
# Exact block-coordinate layer solves under frozen support
# --------------------------------------------------------------------------------------------
_LINEAR_TAIL = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, PositiveHardThreshold, nn.Flatten,
                nn.Unflatten, nn.Identity, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_SOLVABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def solvable_layers(model: nn.Module) -> list[int]:
    """Indices of the layers of ``model`` (an ``nn.Sequential``) whose sub-problem is convex under
    frozen support: a ``Linear``/``Conv`` followed only by modules linear under frozen support."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"layer solves need an nn.Sequential model, got {type(model).__name__}"
        )
    out = []
    for i, layer in enumerate(model):
        if isinstance(layer, _SOLVABLE) and all(isinstance(m, _LINEAR_TAIL) for m in model[i + 1:]):
            out.append(i)
    return out


def _loss(kind: str | LossFn) -> LossFn:
    if callable(kind):
        return kind
    if kind == "mse":
        return F.mse_loss
    if kind == "cross_entropy":
        return F.cross_entropy
    raise ValueError(f"loss must be 'mse', 'cross_entropy' or a callable, got {kind!r}")


def _lstsq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least-squares solution of ``a @ x = b`` (rank-deficient ``a`` allowed).

    Refuses non-finite inputs (diverged weights) with a ``ValueError`` instead of handing them
    to LAPACK, which prints an error and returns garbage."""
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        raise ValueError("lstsq layer solve: the design matrix or the targets hold NaN/inf "
                         "(diverged weights or inputs)")
    if a.device.type == "cpu":
        return torch.linalg.lstsq(a, b, driver="gelsd").solution
    return torch.linalg.pinv(a) @ b  # CUDA's lstsq driver assumes full rank


def _damped_lstsq(a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor,
                  scale: float) -> torch.Tensor:
    """``argmin_x ||a x - b||^2 + scale^2 ||x - x0||^2`` (``scale > 0``), the solution of the
    stacked system ``[a; scale I] x = [b; scale x0]`` without building it.

    With ``d = x - x0`` and ``r = b - a x0`` it is the ridge problem ``min ||a d - r||^2 +
    scale^2 ||d||^2``, solved in float64 by Cholesky, through whichever Gram matrix is smaller:
    the normal equations ``(a^T a + scale^2 I) d = a^T r`` when ``a`` has no more columns than
    rows, else the dual ``d = a^T (a a^T + scale^2 I)^{-1} r`` (e.g. 266 x 266 instead of
    4160 x 4160 for the second hidden layer of diabetes_mlp). Falls back to ``lstsq`` of the
    stacked system if the Cholesky factorisation fails (not seen: the Gram matrix plus
    ``scale^2 I`` is positive definite)."""
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        raise ValueError("lstsq layer solve: the design matrix or the targets hold NaN/inf "
                         "(diverged weights or inputs)")
    dt = a.dtype
    a64, x64 = a.to(torch.float64), x0.to(torch.float64)
    r = b.to(torch.float64) - a64 @ x64
    rows, cols = a.shape
    lam = scale * scale
    if cols <= rows:
        g = a64.T @ a64
        g.diagonal().add_(lam)
        chol, info = torch.linalg.cholesky_ex(g)
        if int(info) == 0:
            return (x64 + torch.cholesky_solve(a64.T @ r, chol)).to(dt)
    else:
        g = a64 @ a64.T
        g.diagonal().add_(lam)
        chol, info = torch.linalg.cholesky_ex(g)
        if int(info) == 0:
            return (x64 + a64.T @ torch.cholesky_solve(r, chol)).to(dt)
    eye = scale * torch.eye(cols, dtype=dt, device=a.device)
    return _lstsq(torch.cat([a, eye]), torch.cat([b, scale * x0]))


def _lstsq_linear(layer: nn.Linear, h: torch.Tensor, y: torch.Tensor,
                  tail: Callable[[torch.Tensor], torch.Tensor], tail_is_identity: bool,
                  damping: float, max_bytes: int) -> None:
    """Exact minimiser of ``mse(tail(layer(h)), y) + damping/2 ||theta - theta_0||^2`` over the
    layer's ``theta = [W, b]`` with the tail affine (frozen support); written into ``layer``."""
    if h.dim() != 2 or y.dim() != 2:
        raise ValueError("the lstsq layer solve needs 2-D layer inputs and 2-D targets (N, C); "
                         "use solver='lbfgs'")
    n, d = h.shape
    has_b = layer.bias is not None
    ht = torch.cat([h, h.new_ones(n, 1)], 1) if has_b else h
    w0 = layer.weight.detach()
    theta0 = torch.cat([w0, layer.bias.detach()[:, None]], 1) if has_b else w0  # (m, d+1)
    c_out = y.shape[1]
    scale = math.sqrt(damping * n * c_out / 2.0)
    if tail_is_identity:
        # C independent least-squares problems sharing the design [h, 1] (digest: the last layer
        # is a plain least-squares problem).
        if damping > 0:
            theta = _damped_lstsq(ht, y, theta0.T, scale).T  # (m, d+1)
        else:
            theta = _lstsq(ht, y).T
    else:
        m = layer.out_features
        need = n * c_out * m * ht.shape[1] * h.element_size()
        if need > max_bytes:
            raise MemoryError(
                f"the lstsq design matrix of this layer needs {need} bytes ({need / 2**20:.1f} "
                f"MiB) for {n} samples, more than max_bytes={max_bytes}; use solver='lbfgs' or "
                "fewer samples"
            )
        with torch.enable_grad():
            z = torch.zeros(n, m, dtype=h.dtype, device=h.device, requires_grad=True)
            out = tail(z)  # affine in z: out_i = M_i z_i + c_i
            if out.shape != y.shape:
                raise ValueError(f"output shape {tuple(out.shape)} != target {tuple(y.shape)}")
            jac = torch.stack([torch.autograd.grad(out[:, c].sum(), z, retain_graph=True)[0]
                               for c in range(c_out)], 1)  # (n, C, m) = M_i
        r = (y - out.detach()).reshape(-1)
        a = (jac[:, :, :, None] * ht[:, None, None, :]).reshape(n * c_out, -1)
        if damping > 0:
            theta = _damped_lstsq(a, r[:, None], theta0.reshape(-1, 1), scale).reshape(m, -1)
        else:
            theta = _lstsq(a, r[:, None]).reshape(m, -1)
    with torch.no_grad():
        layer.weight.copy_(theta[:, :d])
        if has_b:
            layer.bias.copy_(theta[:, d])


def _lbfgs_layer(layer: nn.Module, objective: Callable[[], torch.Tensor], iters: int,
                 damping: float, fast: LinearCE | None = None) -> None:
    """``iters`` L-BFGS iterations on ``objective() + damping/2 ||theta - theta_0||^2``; ``fast``
    computes the same closure without autograd, bit for bit (:mod:`.fastpath`)."""
    params = [p for p in layer.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iters, max_eval=3 * iters, history_size=10,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                            tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        with torch.enable_grad():
            loss = objective()
            if damping > 0:
                loss = loss + 0.5 * damping * sum(((p - s) ** 2).sum()
                                                  for p, s in zip(params, start, strict=True))
            grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        return loss.detach()

    opt.step(closure if fast is None else fast.closure(params, start, damping))
    for p in params:
        p.grad = None


def solve_layer(model: nn.Sequential, index: int, x: torch.Tensor, y: torch.Tensor,
                loss: str | LossFn = "mse", masks: Sequence[torch.Tensor] | None = None,
                solver: str = "auto", iters: int = 20, damping: float = 0.0,
                max_bytes: int = 2**28) -> dict[str, Any]:
    r"""Block-coordinate step: minimise the loss over layer ``model[index]`` alone, supports frozen.

    With every support fixed the network output is affine in one layer's parameters
    ``theta = [W_l, b_l]``, so (digest, Definitions)

    .. math:: \min_\theta\; \ell(A(\theta) ; y) + \tfrac{\lambda}{2}\|\theta - \theta_0\|^2

    is convex: least squares for ``loss="mse"`` (solved exactly: ``torch.linalg.lstsq`` undamped,
    :func:`_damped_lstsq` with ``damping > 0``; for a
    hidden layer the design matrix rows are ``M_i[c] (x) [h_i, 1]`` with ``M_i`` the Jacobian of the
    frozen tail), multinomial logistic regression for cross-entropy (``iters`` L-BFGS iterations
    with a strong-Wolfe line search). ``damping`` (``lambda``) adds a proximal term towards the
    current weights (use it for minibatch solves, which otherwise interpolate the batch).

    Args:
        masks: supports of ``x`` for every PHT module (``None``: recorded now from ``x``).
        solver: ``"lstsq"`` (MSE, ``nn.Linear``), ``"lbfgs"`` (any loss, Linear or Conv) or
            ``"auto"`` (lstsq for ``loss="mse"`` on a Linear layer, else L-BFGS).
        max_bytes: limit on the lstsq design matrix of a hidden layer.

    Returns ``{"layer": index, "loss_before": ..., "loss_after": ...}`` (losses under the frozen
    support, without the proximal term). The loss never increases: ``theta_0`` is feasible.
    """
    solvable = solvable_layers(model)
    if index not in solvable:
        allowed = ", ".join(t.__name__ for t in _LINEAR_TAIL)
        raise ValueError(
            f"layer {index} ({type(model[index]).__name__}) cannot be solved exactly: solvable "
            f"layers are Linear/Conv layers followed only by {allowed}; this model's solvable "
            f"layers: {solvable}"
        )
    if solver not in ("auto", "lstsq", "lbfgs"):
        raise ValueError(f"solver must be 'auto', 'lstsq' or 'lbfgs', got {solver!r}")
    if not (isinstance(iters, int) and iters >= 1):
        raise ValueError(f"iters must be an int >= 1, got {iters!r}")
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    layer = model[index]
    if solver == "auto":
        solver = "lstsq" if loss == "mse" and isinstance(layer, nn.Linear) else "lbfgs"
    if solver == "lstsq" and (loss != "mse" or not isinstance(layer, nn.Linear)):
        raise ValueError(
            "solver='lstsq' needs loss='mse' and an nn.Linear layer, got loss="
            f"{loss!r} and {type(layer).__name__}; use solver='lbfgs'"
        )
    loss_fn = _loss(loss)
    if masks is None:
        masks = record_support(model, x)[1]
    head, tail = model[:index], model[index + 1:]
    with frozen_support(model, masks), torch.no_grad():
        h = head(x)

        # cross-entropy on a last Linear layer: the same numbers without autograd (fastpath)
        fast = LinearCE.make(layer, tail, h, y, loss) if solver == "lbfgs" else None

        def objective() -> torch.Tensor:
            return loss_fn(tail(layer(h)), y) if fast is None else fast.objective()

        before = float(objective())
        state = [p.detach().clone() for p in layer.parameters()]
        if solver == "lstsq":
            _lstsq_linear(layer, h, y, tail, len(tail) == 0, damping, max_bytes)
        else:
            _lbfgs_layer(layer, objective, iters, damping, fast)
        after = float(objective())
        if not math.isfinite(after) or after > before * (1 + 1e-6) + 1e-12:
            # numerical failure: keep theta_0
            for p, s in zip(layer.parameters(), state, strict=True):
                p.copy_(s)
            after = before
    return {"layer": index, "loss_before": before, "loss_after": after}

