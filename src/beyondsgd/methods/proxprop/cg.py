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

``eps``: absolute (the official code's 1e-6), or with ``relative_eps=True`` scaled by each
block's current :math:`\\|r_k\\|^2` (in both denominators), which makes the iterates
homogeneous in ``b`` (the result does not depend on the loss reduction or on how many rows a
block has) and perturbs the step by a relative amount of at most
:math:`\\epsilon / \\lambda_{\\min}` (since :math:`p_k^\\top \\mathcal{A} p_k \\ge
\\lambda_{\\min} \\|r_k\\|^2`); an absolute eps instead damps blocks with small residuals
far more than large ones.

``aliased=True`` reproduces a defect of the official ProxProp code (tfrerix/proxprop): its
search direction starts as an *alias* of the residual, so the in-place residual update also
overwrites it and the second direction is :math:`(1 + \\beta_1) r_1` instead of
:math:`r_1 + \\beta_1 p_0`; later directions follow the usual recurrence. That iteration is
not CG (on an n x n system it is not exact after n steps); it exists only to reproduce the
paper's cg3/cg5/cg10 numbers.

Stopping rule (official ProxProp code): stop once ``max_rows ||r||^2 < tol^2 * mean_rows
||r_0||^2``; ``tol=0`` runs exactly ``maxiter`` iterations. On CUDA the rule is applied by
masking the step (no host synchronisation); on CPU the loop breaks.

``batch_space_cg`` runs the same iteration for the Linear-layer operator
:math:`\\beta I + s \\tilde A^\\top \\tilde A` in batch coordinates (see its docstring).

Example::

    >>> import torch
    >>> from beyondsgd.methods.proxprop.cg import batched_cg
    >>> M = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    >>> b = torch.tensor([[1.0, 2.0], [0.0, 1.0]])        # two systems M x = b_i (rows)
    >>> x, _ = batched_cg(lambda v: v @ M, b, maxiter=2, tol=0.0, eps=0.0)
    >>> torch.allclose(x, torch.linalg.solve(M, b.T).T, atol=1e-6)
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["batch_space_cg", "batched_cg"]


def _rowdot(a: torch.Tensor, b: torch.Tensor, joint: bool) -> torch.Tensor:
    """Inner products per row, shape (s, 1), or one inner product, shape (1, 1), when joint
    (``a``, ``b`` contiguous)."""
    if joint:
        return torch.dot(a.reshape(-1), b.reshape(-1)).reshape(1, 1)
    if a.dim() == 2:  # one call (the same products and sum as below)
        return torch.linalg.vecdot(a, b).unsqueeze_(1)
    return (a * b).reshape(a.shape[0], -1).sum(1, keepdim=True)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, and 0 where den <= 0: a block whose residual vanished (0/0), or whose
    p^T M p came out <= 0 by round-off once converged, stays put."""
    # masked_fill_ with a Python scalar: no scalar tensor, fewer dispatches than where()
    return torch.div(num, den).masked_fill_(den <= 0, 0.0)


def _check(maxiter: int, tol: float, eps: float) -> None:
    if not isinstance(maxiter, int) or isinstance(maxiter, bool) or maxiter < 1:
        raise ValueError(f"maxiter must be an int >= 1, got {maxiter!r}")
    if not tol >= 0.0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")


class _Loop:
    """The scalar side of the iteration, shared by the primal and the batch-space CG:
    step sizes with their eps, the stopping rule and the CUDA masking."""

    def __init__(self, rs0: torch.Tensor, tol: float, eps: float, relative_eps: bool,
                 is_cuda: bool):
        self.eps, self.relative = eps, relative_eps
        self.tol = tol
        # on CUDA, and under torch.compile, converged systems are masked instead of stopping
        # the loop: no host sync per iteration (and no graph break), the same iterates
        self.use_mask = tol > 0 and (is_cuda or torch.compiler.is_compiling())
        if tol > 0:  # tol = 0 (fixed iteration count) needs neither: two ops saved per solve
            self.threshold = (tol ** 2) * rs0.mean()
        if self.use_mask:
            self.active = torch.ones((), dtype=torch.bool, device=rs0.device)

    def _plus_eps(self, v: torch.Tensor, rs: torch.Tensor) -> torch.Tensor:
        return torch.add(v, rs, alpha=self.eps) if self.relative else v + self.eps

    def alpha(self, rs: torch.Tensor, pap: torch.Tensor) -> torch.Tensor:
        a = _safe_div(rs, self._plus_eps(pap, rs))
        return a * self.active if self.use_mask else a

    def stop(self, rs_new: torch.Tensor) -> bool:
        if self.tol <= 0:
            return False
        converged = rs_new.max() < self.threshold
        if self.use_mask:
            self.active = self.active & ~converged
            return False
        return bool(converged)

    def beta(self, rs_new: torch.Tensor, rs: torch.Tensor) -> torch.Tensor:
        return _safe_div(rs_new, self._plus_eps(rs, rs))


def batched_cg(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    maxiter: int,
    x0: torch.Tensor | None = None,
    tol: float = 0.0,
    eps: float = 0.0,
    joint: bool = False,
    relative_eps: bool = False,
    aliased: bool = False,
    quad: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Solve ``matvec(x) = rhs`` for every row of ``rhs`` (shape ``(s, ...)``) by CG.

    ``matvec`` must be linear, symmetric positive definite and act on each row independently
    (unless ``joint``). Returns ``(x, iterations run)``. ``eps`` is added to both CG
    denominators (absolute, or times each block's current ``||r||^2`` with
    ``relative_eps``); ``eps=0`` is textbook CG. ``aliased``: the official code's iteration
    (module docstring). Vector updates are in place (one fused multiply-add each).
    ``quad``: optional ``v -> (s, 1)`` per-row ``v^T matvec(v)`` computed more cheaply (e.g.
    ``beta |v|^2 + s |A v|^2`` without the adjoint product); used in the last iteration,
    which needs only the step size, not ``matvec(p)``.
    """
    _check(maxiter, tol, eps)
    if rhs.dim() == 0:
        raise ValueError("rhs must have a leading row dimension, got a scalar")
    shape = rhs.shape
    flat = rhs.reshape(shape[0], -1)
    if x0 is None:
        x = torch.zeros_like(flat, memory_format=torch.contiguous_format)
        r = flat.clone(memory_format=torch.contiguous_format)
    else:
        if x0.shape != shape:
            raise ValueError(f"x0 has shape {tuple(x0.shape)}, rhs has {tuple(shape)}")
        x = x0.reshape(shape[0], -1).clone(memory_format=torch.contiguous_format)
        r = (rhs - matvec(x0)).reshape(shape[0], -1).contiguous()

    def op(v: torch.Tensor) -> torch.Tensor:
        return matvec(v.reshape(shape)).reshape(shape[0], -1)

    p = r.clone()
    rs = _rowdot(r, r, joint)
    loop = _Loop(rs, tol, eps, relative_eps, rhs.is_cuda)
    k = 0
    while True:
        k += 1
        if k >= maxiter and quad is not None:
            pap = quad(p.reshape(shape)).reshape(-1, 1)
            x.addcmul_(p, loop.alpha(rs, pap.sum().reshape(1, 1) if joint else pap))
            break
        ap = op(p)
        alpha = loop.alpha(rs, _rowdot(p, ap, joint))
        x.addcmul_(p, alpha)
        if k >= maxiter:
            break
        r.addcmul_(ap, alpha, value=-1.0)
        rs_new = _rowdot(r, r, joint)
        if loop.stop(rs_new):
            break
        b = loop.beta(rs_new, rs)
        if aliased and k == 1:
            p = r * (b + 1.0)  # p_0 was r itself, so it already holds r_1
        else:
            torch.addcmul(r, p, b, out=p)
        rs = rs_new
    return x.reshape(shape), k


def batch_space_cg(
    gram: torch.Tensor,
    gt: torch.Tensor,
    beta: float,
    s: float,
    maxiter: int,
    tol: float = 0.0,
    eps: float = 0.0,
    joint: bool = False,
    relative_eps: bool = False,
    aliased: bool = False,
) -> tuple[torch.Tensor, int]:
    """``batched_cg`` on ``v -> beta v + s (v a^T) a`` for the rows of ``rhs = gt @ a``,
    carried in batch coordinates ("dual" CG). Returns ``(q, iterations)``: the solution is
    ``x = q @ a`` (the caller forms it, e.g. as weight and bias parts).

    ``gram``: (B, B) ``G = a a^T`` for the (B, K) matrix ``a`` (the layer's augmented inputs
    Ã); ``gt``: (m, B) the BackProp signal transposed. Started at 0, every residual, direction
    and iterate is a combination of the rows of ``a``: ``v = q a`` with ``q`` in R^B, so
    ``<v, w> = q G q'^T`` and the operator is ``q -> beta q + s q G``. Carrying ``qG`` for the
    residual and the direction alongside ``q`` gives ``p^T M p = <q_p + (s/beta) q_p G,
    q_p G> beta`` without a product, and the residual update reuses the same combination, so
    N iterations cost N products with ``G`` (one per iteration but the last, plus one for
    the start). With forming ``G`` (2 B^2 K flops) and ``x = q a`` (2 m B K), the iterates
    equal ``batched_cg``'s up to round-off (same eps, tol and aliasing semantics).
    """
    _check(maxiter, tol, eps)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    c = s / beta
    rq = gt.clone(memory_format=torch.contiguous_format)
    rg = rq @ gram
    pq, pg = rq.clone(), rg.clone()
    xq = torch.zeros_like(rq)
    rs = _rowdot(rq, rg, joint)
    loop = _Loop(rs, tol, eps, relative_eps, gram.is_cuda)
    k = 0
    while True:
        k += 1
        v = torch.add(pq, pg, alpha=c)  # (M p) / beta in coefficients
        pap = _rowdot(v, pg, joint).mul_(beta)
        alpha = loop.alpha(rs, pap)
        xq.addcmul_(pq, alpha)
        if k >= maxiter:
            break
        ab = alpha * beta
        rq.addcmul_(v, ab, value=-1.0)
        rg.addcmul_(torch.addmm(pg, pg, gram, alpha=c), ab, value=-1.0)
        rs_new = _rowdot(rq, rg, joint)
        if loop.stop(rs_new):
            break
        b = loop.beta(rs_new, rs)
        if aliased and k == 1:  # p_0 was r itself, so it already holds r_1
            pq, pg = rq * (b + 1.0), rg * (b + 1.0)
        else:
            torch.addcmul(rq, pq, b, out=pq)
            torch.addcmul(rg, pg, b, out=pg)
        rs = rs_new
    return xq, k
