"""ProxProp directions for Linear layers (Eqs. 13-14) and the shared dense solves: the
exact solve, CG on the explicit Gram, primal batch products or batch-space (dual) CG, chosen
per layer and per batch by flop count (:func:`linear_cg_path`)."""

from __future__ import annotations

import torch

from ... import distributed as D
from .cg import batch_space_cg, batched_cg
from .config import ProxConfig, _cg_kwargs, _work_dtype


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


SYM_GRAM_MIN = 256  # rows of the product from which sym_outer uses its 3 half-size GEMMs
SYM_GRAM_MIN_INNER = 384  # ... and columns of x (shorter GEMMs lose more than they save)


def sym_outer(x: torch.Tensor) -> torch.Tensor:
    """``x @ x.T`` (symmetric) with 3/4 of the flops from ``SYM_GRAM_MIN`` rows on: the two
    diagonal blocks and one off-diagonal block of the row halves, the other block its
    transpose (torch has no ``syrk``). Its entries are the same dot products as ``x @ x.T``
    up to the GEMM's summation order (float64: 1e-15 relative). Measured on the 2-core CPU,
    1 thread (min of 15): x of 500 x 785 (fmnist_mlp layer 1, batch space at B 500) 4.08 ->
    3.42 ms, 1000 x 785 16.9 -> 13.3 ms, 257 x 500 (layer 2's K x K Gram at B 500) 0.70 ->
    0.57 ms; 128 x 785 equal, 500 x 257 1.36 -> 1.46 ms (short inner dimension), hence
    ``SYM_GRAM_MIN`` rows and ``SYM_GRAM_MIN_INNER`` columns."""
    n = x.shape[0]
    if n < SYM_GRAM_MIN or x.shape[1] < SYM_GRAM_MIN_INNER:
        return x @ x.T
    h = n // 2
    x1, x2 = x[:h], x[h:]
    out = x.new_empty(n, n)
    out[:h, :h] = x1 @ x1.T
    low = x2 @ x1.T
    out[h:, :h] = low
    out[:h, h:] = low.T
    out[h:, h:] = x2 @ x2.T
    return out


GRAM_CG_F64_RATIO = 64  # float64 Gram CG when iterations x rows(g) <= rows(A) / this


def _solve_gram(gram: torch.Tensor, g: torch.Tensor, s: float, beta: float, cfg: ProxConfig,
                rows: int, conv: bool) -> torch.Tensor:
    """Rows of ``g`` (C_out, K) through ``(beta I + s gram)^{-1}``; ``gram`` is (K, K), or
    (G, K, K) with the rows of ``g`` split into G consecutive groups, formed from ``rows``
    rows of A; ``conv``: the layer is a Conv2d (for the official blocking). Cholesky for
    ``solver="exact"``, else CG with the explicit matrix.

    CG in float32 on an ill-conditioned Gram loses accuracy in its recurrences, not in the
    Gram: for a float32 layer the CG runs in float64 on the float32 Gram whenever that is
    cheap, i.e. its products (2 N C_out K^2 flops) are at most 1/``GRAM_CG_F64_RATIO`` of
    forming the Gram (2 rows K^2): even at 1/64 of the float32 rate they cost no more than
    the Gram. The result is returned in ``g``'s dtype."""
    k = gram.shape[-1]
    out_dtype = g.dtype
    if (cfg.solver == "cg" and gram.dtype == torch.float32
            and cfg.cg_iters * g.shape[0] * GRAM_CG_F64_RATIO <= rows):
        gram, g = gram.double(), g.double()
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    m = gram.mul(s).add_(eye * beta)
    groups = m.shape[0] if m.dim() == 3 else 1

    def by_group(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(groups, v.shape[0] // groups, k) if m.dim() == 3 else v

    if cfg.solver == "exact":
        return _spd_solve_rows(m, by_group(g)).reshape(g.shape)

    def matvec(v: torch.Tensor) -> torch.Tensor:  # m is symmetric: rows @ m
        return (by_group(v) @ m).reshape(v.shape)

    d, _ = batched_cg(matvec, g, cfg.cg_iters, **_cg_kwargs(cfg, conv))
    return d.to(out_dtype)


# --------------------------------------------------------------------------------------------
# Pure maths: Linear
# --------------------------------------------------------------------------------------------
def linear_cg_flops(rows: int, k: int, m: int, iters: int) -> dict[str, int]:
    """Multiply-add flops (2 per multiply-add) of ``iters`` CG iterations for a Linear layer
    with ``rows`` batch rows, ``k`` = fan-in (+1 with bias) and ``m`` outputs, gradient
    included, on each path (they give the same iterates up to round-off):

    * ``gram``: form the explicit K x K Gram (2 B K^2), then one (m, K) x (K, K) product per
      iteration; needs the gradient (2 m B K);
    * ``primal``: two batch products per iteration, ``(v Ã^T) Ã`` (4 m B K), one for the last
      (only ``|v Ã^T|^2`` is needed there), plus the gradient;
    * ``dual``: batch-space CG (:func:`~beyondsgd.methods.proxprop.cg.batch_space_cg`): G = Ã Ã^T
      (2 B^2 K), one (m, B) x (B, B) product per iteration, and the final direction q Ã
      (2 m B K) instead of the gradient.
    """
    return {"gram": 2 * rows * k * k + 2 * iters * m * k * k + 2 * m * rows * k,
            "primal": (4 * iters - 2) * m * rows * k + 2 * m * rows * k,
            "dual": 2 * rows * rows * k + 2 * m * rows * k + 2 * iters * m * rows * rows}


def linear_cg_path(rows: int, k: int, m: int, iters: int) -> str:
    """The path of :func:`linear_cg_flops` with the fewest flops (first one on a tie)."""
    flops = linear_cg_flops(rows, k, m, iters)
    best = "gram"
    for path in ("primal", "dual"):         # a plain loop: torch.compile traces it unbroken
        if flops[path] < flops[best]:
            best = path
    return best


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
        return split(_solve_gram(gram, g, s, beta, cfg, rows, conv=False))
    s = 1.0 if cfg.gram == "sum" else 1.0 / max(rows, 1)
    path = "exact" if cfg.solver == "exact" else cfg.cg_path
    if path == "auto":
        path = linear_cg_path(rows, k, m_out, cfg.cg_iters)
    if path in ("dual", "exact") and (path == "dual" or rows < k):
        # batch space: Ã Ã^T = x x^T (+ 1 with a bias); the direction is q Ã = [q x, q 1]
        gram = sym_outer(xw)
        if has_bias:
            gram.add_(1.0)
        if path == "exact":
            # Woodbury: (beta I + s Ã^T Ã)^{-1} Ã^T go = Ã^T (beta I + s Ã Ã^T)^{-1} go
            kk = gram.mul(s).add_(torch.eye(rows, dtype=wd, device=xw.device), alpha=beta)
            q = _spd_solve_rows(kk, go.T)
        else:
            q, _ = batch_space_cg(gram, go.T, beta, s, cfg.cg_iters,
                                  **_cg_kwargs(cfg, conv=False))
        return q @ xw, (q.sum(1) if has_bias else None)
    a = augmented()
    if path == "exact":
        mm = torch.addmm(torch.eye(k, dtype=wd, device=a.device), a.T, a, beta=beta, alpha=s)
        return split(_spd_solve_rows(mm, gradient()))
    if path == "gram":
        return split(_solve_gram(sym_outer(a.T), gradient(), s, beta, cfg, rows, conv=False))

    def matvec(v: torch.Tensor) -> torch.Tensor:  # (beta I + s Ã^T Ã) applied to rows
        return torch.addmm(v, v @ a.T, a, beta=beta, alpha=s)

    def quad(v: torch.Tensor) -> torch.Tensor:  # v^T M v per row: beta |v|^2 + s |v Ã^T|^2
        u = v @ a.T
        return (v * v).sum(1).mul_(beta).add_((u * u).sum(1), alpha=s)

    d, _ = batched_cg(matvec, gradient(), cfg.cg_iters, quad=quad,
                      **_cg_kwargs(cfg, conv=False))
    return split(d)


def bias_prox_direction(grad_b: torch.Tensor, outputs: int, batch: int, cfg: ProxConfig,
                        conv: bool = False) -> torch.Tensor:
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
    return _solve_gram(gram, g, s, 1.0 / cfg.tau_theta, cfg, outputs, conv)[:, 0].to(
        grad_b.dtype)
