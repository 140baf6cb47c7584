"""The DessiLBI update itself: the group-lasso prox and one optimizer step over a parameter group.

Pure tensor maths with no module state, used by ``beyondsgd.methods.slbi.SLBI`` (where the update
rule is stated with the paper's equations: Fu et al., ICML 2020, Sec. 3). Written for speed
without changing the maths: momentum buffers, V, W and Γ are updated in place and the prox is
written straight into Γ, so the usual step (momentum, no Nesterov, after the first step)
allocates no parameter-sized temporaries (as torch.optim.SGD). One step over the parameters of
one structure is a fixed sequence of multi-tensor (``torch._foreach_*``) in-place passes:
b ← ∇L̂ + τb (one pass per tensor on CPU), Γ ← Γ - W (Γ's storage holds W - Γ, negated, until
the prox overwrites it), V ← V - α/ν·(Γ - W), W ← W + κα/ν·(Γ - W), W ← W - κα·b and
Γ ← κ·Prox(V) (element-wise: one ``softshrink`` pass; groups: row norms, one scaling pass).
``tests/test_slbi``
checks it against a straightforward transcription of the equations in float64.
"""

from __future__ import annotations

import math
from typing import Any

import torch

STRUCTURES = ("filter", "neuron", "element")
LAMBDA_SCALINGS = ("none", "sqrt_size")
COUPLINGS = ("code", "paper")


# --------------------------------------------------------------------------------------------
# Pure maths
# --------------------------------------------------------------------------------------------
def group_thresholds(v: torch.Tensor, lam: float, structure: str,
                     lambda_scaling: str = "none") -> float:
    """Threshold λ_g of each group of ``v``: λ, or λ√|g| with ``lambda_scaling='sqrt_size'``."""
    if lambda_scaling == "none" or structure == "element":
        return lam
    return lam * math.sqrt(v[0].numel())


def prox_group_lasso_(out: torch.Tensor, v: torch.Tensor, lam: float, structure: str,
                      lambda_scaling: str = "none", scale: float = 1.0) -> torch.Tensor:
    """``out ← scale · Prox_{λΩ₁}(V)`` in place, without parameter-sized temporaries (Fu et al.
    2020, Sec. 3): group soft-thresholding max(0, 1 - λ_g/‖V^g‖₂)·V^g of the rows of
    ``v.reshape(rows, -1)`` ('filter'/'neuron'), or element-wise sign(V)·max(|V| - λ, 0)
    ('element', computed as V - clamp(V, -λ, λ), the same numbers; a complex entry z is shrunk
    by its modulus, max(0, 1 - λ/|z|)·z, the prox of λ|z|). Returns ``out``."""
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    if not (v.is_contiguous() and out.is_contiguous()):     # e.g. channels_last: via copies
        return out.copy_(prox_group_lasso_(torch.empty(v.shape, dtype=v.dtype, device=v.device),
                                           v.contiguous(), lam, structure, lambda_scaling, scale))
    if structure == "element" and v.is_complex():           # prox of λ|z|: shrink the modulus
        mod = v.abs().clamp_min_(torch.finfo(mod_dtype(v)).tiny)
        factor = (1 - lam / mod).clamp_min_(0)
        torch.mul(v, factor.mul_(scale) if scale != 1.0 else factor, out=out)
        return out
    if structure == "element":                              # sign(V) max(|V| - λ, 0): one pass
        _soft_threshold_(out, v, lam)
        return out.mul_(scale) if scale != 1.0 else out
    lam_g = group_thresholds(v, lam, structure, lambda_scaling)
    rows = v.view(v.shape[0], -1)
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    factor = (1 - lam_g / norms.clamp_min_(torch.finfo(mod_dtype(v)).tiny)).clamp_min_(0)
    if scale != 1.0:
        factor.mul_(scale)
    torch.mul(rows, factor, out=out.view_as(rows))
    return out


def _soft_threshold_(out: torch.Tensor, v: torch.Tensor, lam: float) -> torch.Tensor:
    """``out ← sign(V)·max(|V| - λ, 0)`` for a real ``v``, in one pass (``softshrink``: V ∓ λ
    outside [-λ, λ], 0 inside; the same numbers as V - clamp(V, -λ, λ), NaN kept)."""
    return torch._C._nn.softshrink(v, lam, out=out)


def mod_dtype(v: torch.Tensor) -> torch.dtype:
    """The real dtype of a (possibly complex) tensor's modulus."""
    return v.abs().dtype if v.is_complex() else v.dtype


def prox_group_lasso(v: torch.Tensor, lam: float, structure: str,
                     lambda_scaling: str = "none") -> torch.Tensor:
    """Prox of λΩ₁ at V (a new tensor); see ``prox_group_lasso_``."""
    out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    return prox_group_lasso_(out, v.contiguous(), lam, structure, lambda_scaling)



def _direction(params: list[torch.Tensor], grads: list[torch.Tensor], coupled: list[int],
               gammas: list[torch.Tensor] | None, inv_nu: float, decayed: list[int],
               group: dict[str, Any], state: dict) -> list[torch.Tensor]:
    """The step direction: the momentum buffer b ← τb + (1-δ)u (or u + τb with Nesterov; u with
    no momentum), u = ∇L̂ + ωW [+ (W - Γ)/ν for the parameters ``coupled`` (indices into
    ``params``) when ``gammas`` (theirs, same order) is given: paper coupling].
    In the usual case (momentum, no Nesterov, every buffer exists) b is updated in place."""
    mom, damp, wd = group["momentum"], group["dampening"], group["weight_decay"]
    bufs = [state[p].get("momentum_buffer") for p in params] if mom != 0 else []
    if mom != 0 and not group["nesterov"] and all(b is not None for b in bufs):
        if damp == 0 and bufs[0].device.type == "cpu":   # b ← ∇L̂ + τb: one pass into b
            for b, g in zip(bufs, grads):
                torch.add(g, b, alpha=mom, out=b)
        elif damp == 0:                         # accelerators: two multi-tensor kernels
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, grads)
        else:
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, grads, alpha=1 - damp)
        if decayed:
            torch._foreach_add_([bufs[i] for i in decayed], [params[i] for i in decayed],
                                alpha=(1 - damp) * wd)
        if gammas is not None:
            cb = [bufs[i] for i in coupled]
            torch._foreach_add_(cb, [params[i] for i in coupled], alpha=(1 - damp) * inv_nu)
            torch._foreach_sub_(cb, gammas, alpha=(1 - damp) * inv_nu)
        return bufs
    us = list(grads)                            # the general path: first step, Nesterov, τ = 0
    if decayed or gammas is not None:
        us = [g.clone() for g in grads]
        for i in decayed:
            us[i].add_(params[i], alpha=wd)
        if gammas is not None:
            for i, gam in zip(coupled, gammas):
                us[i].add_(params[i] - gam, alpha=inv_nu)
    if mom == 0:
        return us
    for i, p in enumerate(params):
        if bufs[i] is None:
            bufs[i] = state[p]["momentum_buffer"] = torch.clone(us[i]).detach()
        else:
            bufs[i].mul_(mom).add_(us[i], alpha=1 - damp)
    return torch._foreach_add(us, bufs, alpha=mom) if group["nesterov"] else bufs


def slbi_group_step(group: dict[str, Any], state: dict,
                    structures: list[str | None] | None = None) -> None:
    """One DessiLBI step for every parameter of ``group`` (multi-tensor, in place).

    ``structures``: the resolved structure of each parameter of ``group["params"]`` (same
    order; ``None``: no Γ); without it every parameter takes ``group["structure"]``. All
    parameters of the group are stepped by the same multi-tensor calls (the group's
    hyperparameters are shared); only the prox is taken per structure.
    ``group["maximize"]`` ascends on the loss: the loss gradient is negated (as in
    ``torch.optim.SGD``); weight decay and the coupling are not."""
    if structures is None:
        structures = [group["structure"]] * len(group["params"])
    ps: list[torch.Tensor] = []
    gs: list[torch.Tensor] = []
    ss: list[str | None] = []
    for p, s in zip(group["params"], structures):
        if p.grad is not None:
            if p.grad.is_sparse:
                raise RuntimeError("SLBI does not support sparse gradients")
            ps.append(p)
            gs.append(p.grad)
            ss.append(s)
    if not ps:
        return
    if group.get("maximize", False):
        gs = torch._foreach_neg(gs)
    _step_tensors(ps, gs, ss, group, state)


def _step_tensors(params: list[torch.Tensor], grads: list[torch.Tensor],
                  structures: list[str | None], group: dict[str, Any], state: dict) -> None:
    """One DessiLBI step for ``params`` (``structures``: each one's, ``None``: no Γ) with the
    hyperparameters of ``group`` (Fu et al., ICML 2020, Sec. 3; see ``beyondsgd.methods.slbi``)."""
    lr, kappa, nu = group["lr"], group["kappa"], group["nu"]
    lr = float(lr) if isinstance(lr, torch.Tensor) else lr
    with_gamma = [i for i, s in enumerate(structures) if s is not None]
    coupled = with_gamma if nu != math.inf else []
    inv_nu = 1.0 / nu if coupled else 0.0
    paper = bool(coupled) and group["coupling"] == "paper"
    step = lr * kappa                                   # parameters with a Γ
    step_free = step if group["kappa_uncoupled"] else lr   # those without
    decayed: list[int] = []
    if group["weight_decay"] != 0:
        all_1d = group.get("weight_decay_1d", False)
        decayed = [i for i, p in enumerate(params) if all_1d or p.dim() > 1]
    vs: list[torch.Tensor] = []
    gammas: list[torch.Tensor] = []
    for i in with_gamma:
        st = state[params[i]]
        if "V" not in st:
            st["V"] = torch.zeros_like(params[i], memory_format=torch.preserve_format)
            st["Gamma"] = torch.zeros_like(params[i], memory_format=torch.preserve_format)
        vs.append(st["V"])
        gammas.append(st["Gamma"])
    if not coupled:
        vs, gammas = [], []
    dirs = _direction(params, grads, coupled, gammas if paper else None, inv_nu, decayed,
                      group, state)
    if coupled:
        cp = [params[i] for i in coupled]
        # Γ_k is read only through W_k - Γ_k and rewritten by the prox below: its storage holds
        # Γ_k - W_k meanwhile, so V and W each take one in-place pass (no temporaries)
        torch._foreach_sub_(gammas, cp)                      # Γ ← Γ_k - W_k
        torch._foreach_add_(vs, gammas, alpha=-lr * inv_nu)  # V_{k+1} = V_k + α/ν (W_k - Γ_k)
        if not paper:                                        # code: W - κα/ν (W - Γ)
            torch._foreach_add_(cp, gammas, alpha=step * inv_nu)
    if step_free == step or len(with_gamma) == len(params):  # W_{k+1} = W - κα·direction
        torch._foreach_add_(params, dirs, alpha=-step)
    else:
        free = sorted(set(range(len(params))) - set(with_gamma))
        if with_gamma:
            torch._foreach_add_([params[i] for i in with_gamma], [dirs[i] for i in with_gamma],
                                alpha=-step)
        torch._foreach_add_([params[i] for i in free], [dirs[i] for i in free],
                            alpha=-step_free)
    if coupled:                                              # Γ_{k+1} = κ Prox(V_{k+1})
        by: dict[str, list[int]] = {}
        for k, i in enumerate(coupled):
            by.setdefault(structures[i], []).append(k)
        for s, ks in by.items():
            _prox_list_([gammas[k] for k in ks], [vs[k] for k in ks], group["lambda"], s,
                        group["lambda_scaling"], kappa)


def _prox_list_(gammas: list[torch.Tensor], vs: list[torch.Tensor], lam: float, structure: str,
                lambda_scaling: str, kappa: float) -> None:
    """``prox_group_lasso_`` over a list of tensors, with the per-group factors
    κ·max(0, 1 - λ_g/‖V^g‖) of all tensors computed by a handful of multi-tensor ops."""
    if structure == "element" and not any(v.is_complex() for v in vs):
        for g, v in zip(gammas, vs):                # Γ ← sign(V) max(|V| - λ, 0), one pass
            _soft_threshold_(g, v, lam)             # (any layout: out keeps Γ's strides)
        if kappa != 1.0:
            torch._foreach_mul_(gammas, kappa)
        return
    fast = [i for i, (v, g) in enumerate(zip(vs, gammas))
            if structure != "element" and v.is_contiguous() and g.is_contiguous()]
    for i in sorted(set(range(len(vs))) - set(fast)):
        prox_group_lasso_(gammas[i], vs[i], lam, structure, lambda_scaling, kappa)
    if not fast:
        return
    rows = [vs[i].view(vs[i].shape[0], -1) for i in fast]
    factors = [torch.linalg.vector_norm(r, dim=1, keepdim=True) for r in rows]
    torch._foreach_clamp_min_(factors, torch.finfo(rows[0].dtype).tiny)
    torch._foreach_reciprocal_(factors)             # 1/‖V^g‖
    torch._foreach_mul_(factors, [-group_thresholds(r, lam, structure, lambda_scaling)
                                  for r in rows])
    torch._foreach_add_(factors, 1.0)               # 1 - λ_g/‖V^g‖
    torch._foreach_clamp_min_(factors, 0.0)
    if kappa != 1.0:
        torch._foreach_mul_(factors, kappa)
    for i, r, f in zip(fast, rows, factors):
        torch.mul(r, f, out=gammas[i].view_as(r))
