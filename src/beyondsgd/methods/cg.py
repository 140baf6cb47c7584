"""Batched (block-diagonal) conjugate gradient for many small SPD systems at once.

ProxProp (Frerix et al., ICLR 2018, Eq. 14) solves, for every proximal layer,

.. math::

    \\Bigl(\\tfrac{1}{\\tau_\\theta} I + A^\\top A\\Bigr)\\, d = \\nabla_\\theta J,

where the operator acts on the parameter matrix row by row (one row per output unit or output
channel, all rows sharing the same Gram matrix). ``batched_cg`` runs one textbook CG
(Hestenes & Stiefel 1952) per row, in parallel, with only tensor operations:

.. math::

    r_0 = b - \\mathcal{A} x_0,\\quad p_0 = r_0,\\qquad
    \\alpha_k = \\frac{\\|r_k\\|^2}{p_k^\\top \\mathcal{A} p_k + \\epsilon},\\quad
    x_{k+1} = x_k + \\alpha_k p_k,\\quad r_{k+1} = r_k - \\alpha_k \\mathcal{A} p_k,\\quad
    p_{k+1} = r_{k+1} + \\frac{\\|r_{k+1}\\|^2}{\\|r_k\\|^2 + \\epsilon}\\, p_k .

``joint=True`` instead treats the whole tensor as one vector (a single CG with one scalar
step; this is what the official ProxProp code does for convolutions). With ``x0=None`` the
start is ``x0 = 0`` and ``r0 = b``, so ``maxiter`` iterations cost exactly ``maxiter``
operator applications (the last iteration updates ``x`` and stops, as in the official code).

Stopping rule (official ProxProp code): stop once ``max_rows ||r||^2 < tol^2 * mean_rows
||r_0||^2``; ``tol=0`` runs exactly ``maxiter`` iterations. On CUDA the rule is applied by
masking the step (no host synchronisation); on CPU the loop breaks.

Example::

    >>> import torch
    >>> from beyondsgd.methods.cg import batched_cg
    >>> M = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    >>> b = torch.tensor([[1.0, 2.0], [0.0, 1.0]])        # two systems M x = b_i (rows)
    >>> x, _ = batched_cg(lambda v: v @ M, b, maxiter=2, tol=0.0, eps=0.0)
    >>> torch.allclose(x, torch.linalg.solve(M, b.T).T, atol=1e-6)
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["batched_cg"]


def _rowdot(a: torch.Tensor, b: torch.Tensor, joint: bool) -> torch.Tensor:
    """Inner products per row (shape (s,)) or one inner product (shape (1,)) when joint."""
    if joint:
        return (a * b).sum().reshape(1)
    return (a * b).reshape(a.shape[0], -1).sum(1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-row scalars (s,) or (1,) so they broadcast against ``like``."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0 where den == 0 (a row whose residual is exactly zero stays put)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.zeros_like(num))


def batched_cg(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    maxiter: int,
    x0: torch.Tensor | None = None,
    tol: float = 0.0,
    eps: float = 0.0,
    joint: bool = False,
) -> tuple[torch.Tensor, int]:
    """Solve ``matvec(x) = rhs`` for every row of ``rhs`` (shape ``(s, ...)``) by CG.

    ``matvec`` must be linear, symmetric positive definite and act on each row independently
    (unless ``joint``). Returns ``(x, iterations run)``. ``eps`` is added to both CG
    denominators (the official ProxProp code uses 1e-6); ``eps=0`` is textbook CG.
    """
    if not isinstance(maxiter, int) or isinstance(maxiter, bool) or maxiter < 1:
        raise ValueError(f"maxiter must be an int >= 1, got {maxiter!r}")
    if not tol >= 0.0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if rhs.dim() == 0:
        raise ValueError("rhs must have a leading row dimension, got a scalar")
    if x0 is None:
        x = torch.zeros_like(rhs)
        r = rhs.clone()
    else:
        if x0.shape != rhs.shape:
            raise ValueError(f"x0 has shape {tuple(x0.shape)}, rhs has {tuple(rhs.shape)}")
        x = x0.clone()
        r = rhs - matvec(x0)
    p = r.clone()
    rs_old = _rowdot(r, r, joint)
    threshold = (tol ** 2) * rs_old.mean()
    active = torch.ones((), dtype=torch.bool, device=rhs.device)
    use_mask = tol > 0 and rhs.is_cuda
    k = 0
    while True:
        k += 1
        ap = matvec(p)
        alpha = _safe_div(rs_old, _rowdot(p, ap, joint) + eps)
        if use_mask:
            alpha = alpha * active
        x.add_(_bcast(alpha, p) * p)
        if k >= maxiter:
            break
        r.sub_(_bcast(alpha, ap) * ap)
        rs_new = _rowdot(r, r, joint)
        if tol > 0:
            converged = rs_new.max() < threshold
            if use_mask:
                active = active & ~converged
            elif bool(converged):
                break
        beta = _safe_div(rs_new, rs_old + eps)
        p = r + _bcast(beta, p) * p
        rs_old = rs_new
    return x, k
