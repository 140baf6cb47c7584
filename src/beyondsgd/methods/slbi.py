r"""DessiLBI: Deep structurally splitting Linearized Bregman Iteration (Split LBI for deep nets).

Fu, Liu, Li, Sun, Zeng & Yao, *DessiLBI: Exploring Structural Sparsity of Deep Networks via
Differential Inclusion Paths*, ICML 2020 (arXiv 2007.02010); extended in TPAMI 2022
(arXiv 1905.09449). Lineage: Split LBI (Huang, Sun, Xiong & Yao, NIPS 2016).

Dense weights W are trained by (momentum) SGD on the coupled loss

.. math::  \bar L(W, \Gamma) = \hat L_n(W) + \frac{1}{2\nu}\|W - \Gamma\|_2^2,

while a sparse "structure" copy Γ follows an inverse-scale-space path: Γ starts at 0 and a group
(conv filter, Linear neuron, or single weight) enters supp(Γ) once its accumulated signal
‖V^g‖ exceeds the threshold λ. The discretisation (the paper's DessiLBI iteration, Sec. 3) is

.. math::

    W_{k+1} &= W_k - \kappa \alpha_k \nabla_W \bar L(W_k, \Gamma_k)
              = W_k - \kappa\alpha_k\big(\nabla \hat L_n(W_k) + (W_k - \Gamma_k)/\nu\big) \\
    V_{k+1} &= V_k - \alpha_k \nabla_\Gamma \bar L(W_k, \Gamma_k)
              = V_k + \frac{\alpha_k}{\nu}(W_k - \Gamma_k) \\
    \Gamma_{k+1} &= \kappa \cdot \mathrm{Prox}_{\lambda\Omega_1}(V_{k+1}),

with V₀ = Γ₀ = 0 and, for the group lasso Ω₁(Γ) = Σ_g ‖Γ^g‖₂, the group soft-threshold
Prox(V)^g = max(0, 1 - λ_g/‖V^g‖₂) V^g (element-wise lasso: sign(V) max(|V| - λ, 0)).
With momentum τ (the paper's Mom / Mom-Wd variants) the gradient of the *coupled* loss, weight
decay included, goes through the heavy-ball buffer,

.. math::  b_{k+1} = \tau b_k + \nabla_W \bar L(W_k,\Gamma_k) + \omega W_k, \qquad
           W_{k+1} = W_k - \kappa\alpha_k b_{k+1}

(torch.optim.SGD's buffer convention: the first buffer is the first gradient; ``nesterov`` and
``dampening`` as in torch). Parameters without a Γ (biases, norms, the output layer by default)
take the plain step W - κ α b on ∇L̂_n (+ weight decay).

**Where the official code (DessiLBI2020/DessiLBI) differs**, and the options that reproduce it:

* ``coupling="code"``: the coupling term (W - Γ)/ν bypasses the momentum buffer
  (W ← W - κα(b + (W-Γ)/ν) with b built from ∇L̂_n only). Default ``"paper"``: inside.
* ``kappa_uncoupled=False``: uncoupled parameters step with α instead of κα. The paper's W-step
  scales all of W by κ, as the code does; the two agree for the default κ = 1.
* ``lambda_scaling="sqrt_size"``: threshold λ·√(group size) per group (the official "lottery"
  variant normalises conv group norms by the filter size before thresholding); default
  ``"none"``: the paper's λ. The base official optimizer hard-wires λ = 1 (our default) and uses
  element-wise shrinkage on FC weights; ``structure="element"`` reproduces that.

Parameter groups carry the structure: ``{"params": [...], "structure": "filter" | "neuron" |
"element" | None, "lambda": float}``. ``"filter"``: groups are output filters W[c_out] of a
Conv1d/2d/3d weight; ``"neuron"``: rows of a Linear weight (a neuron's incoming weights);
``"element"``: single weights (lasso); ``None``: no Γ. ``slbi_param_groups(model)`` builds them.

Example::

    >>> import torch
    >>> from beyondsgd.models import lenet5
    >>> from beyondsgd.methods.slbi import SLBI, slbi_param_groups
    >>> net = lenet5(seed=0)
    >>> opt = SLBI(slbi_param_groups(net), lr=0.1, kappa=1.0, nu=100.0)
    >>> x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    >>> loss = torch.nn.functional.cross_entropy(net(x), y); loss.backward(); _ = opt.step()
    >>> sorted(opt.support_sizes(net))[:2]
    ['0.weight', '3.weight']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from . import sparsity
from .base import SCHEDULE_HPARAMS, HParam, OptimizerMethod, TrainContext, register

STRUCTURES = ("filter", "neuron", "element")
LAMBDA_SCALINGS = ("none", "sqrt_size")
COUPLINGS = ("paper", "code")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------------------------
# Pure maths
# --------------------------------------------------------------------------------------------
def group_thresholds(v: torch.Tensor, lam: float, structure: str,
                     lambda_scaling: str = "none") -> torch.Tensor | float:
    """Threshold λ_g of each group of ``v``: λ, or λ√|g| with ``lambda_scaling='sqrt_size'``."""
    if lambda_scaling == "none" or structure == "element":
        return lam
    return lam * math.sqrt(v[0].numel())


def prox_group_lasso(v: torch.Tensor, lam: float, structure: str,
                     lambda_scaling: str = "none") -> torch.Tensor:
    """Prox of λΩ₁ at V (Fu et al. 2020, Sec. 3): group soft-thresholding of the rows of
    ``v.reshape(rows, -1)`` (``structure`` 'filter'/'neuron'), or element-wise soft-thresholding
    sign(V)·max(|V| - λ, 0) ('element')."""
    if structure == "element":
        return torch.sign(v) * (v.abs() - lam).clamp_min(0)
    if structure not in ("filter", "neuron"):
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    lam_g = group_thresholds(v, lam, structure, lambda_scaling)
    rows = v.reshape(v.shape[0], -1)
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    factor = (1 - lam_g / norms.clamp_min(torch.finfo(v.dtype).tiny)).clamp_min(0)
    return (rows * factor).view_as(v)


def _check_structure(p: torch.Tensor, structure: Any, where: str) -> None:
    if structure is None:
        return
    if structure not in STRUCTURES:
        raise ValueError(f"{where}: structure {structure!r} is not one of "
                         f"{', '.join(map(repr, STRUCTURES))} or None")
    if structure == "filter" and p.dim() < 3:
        raise ValueError(f"{where}: structure 'filter' needs a conv weight (3 to 5 dims: "
                         f"out, in, kernel...), got a tensor of shape {tuple(p.shape)}")
    if structure == "neuron" and p.dim() != 2:
        raise ValueError(f"{where}: structure 'neuron' needs a Linear weight (2 dims: out, in), "
                         f"got a tensor of shape {tuple(p.shape)}")


# --------------------------------------------------------------------------------------------
# The optimizer
# --------------------------------------------------------------------------------------------
class SLBI(Optimizer):
    r"""DessiLBI / Split LBI with momentum (see the module docstring for the update rule).

    Args:
        params: parameters or parameter groups. A group's ``structure`` (``"filter"``,
            ``"neuron"``, ``"element"`` or ``None``) says whether its parameters carry a sparse Γ
            and how it is grouped; ``lambda`` is its threshold λ. Use ``slbi_param_groups``.
        lr: step size α.
        kappa: damping κ > 0 (Γ = κ·Prox(V); every W step is scaled by κ).
        nu: coupling ν > 0 (``math.inf`` switches the coupling off: W follows SGD exactly).
        lam: default threshold λ ≥ 0 for groups that do not set ``lambda``.
        momentum, dampening, nesterov, weight_decay: as in ``torch.optim.SGD``.
        coupling: ``"paper"`` (coupling term inside the momentum buffer) or ``"code"``.
        kappa_uncoupled: scale the steps of uncoupled parameters by κ too (paper and code).
        lambda_scaling: ``"none"`` (λ per group) or ``"sqrt_size"`` (λ·√group size).
        structure: default structure for groups that do not set one (default None: no Γ).

    State per parameter: ``momentum_buffer``; coupled ones also ``V`` and ``Gamma``.

    Reference: Fu et al., ICML 2020, Sec. 3 (DessiLBI and its momentum variant).
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, kappa: float = 1.0,
                 nu: float = 100.0, lam: float = 1.0, momentum: float = 0.9,
                 dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 coupling: str = "paper", kappa_uncoupled: bool = True,
                 lambda_scaling: str = "none", structure: str | None = None):
        _check_scalar("lr", lr, low=0.0)
        _check_scalar("kappa", kappa, low=0.0, strict=True)
        if not (isinstance(nu, int | float) and not isinstance(nu, bool) and nu > 0
                and not math.isnan(nu)):
            raise ValueError(f"nu must be a positive number (math.inf: no coupling), got {nu!r}")
        _check_scalar("lam", lam, low=0.0)
        _check_scalar("momentum", momentum, low=0.0)
        _check_scalar("dampening", dampening, low=0.0)
        _check_scalar("weight_decay", weight_decay, low=0.0)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0, got "
                             f"momentum={momentum}, dampening={dampening}")
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
        if lambda_scaling not in LAMBDA_SCALINGS:
            raise ValueError(f"lambda_scaling must be one of {LAMBDA_SCALINGS}, "
                             f"got {lambda_scaling!r}")
        if structure is not None and structure not in STRUCTURES:
            raise ValueError(f"structure {structure!r} is not one of {STRUCTURES} or None")
        defaults = dict(lr=lr, kappa=kappa, nu=nu, momentum=momentum, dampening=dampening,
                        nesterov=nesterov, weight_decay=weight_decay, coupling=coupling,
                        kappa_uncoupled=kappa_uncoupled, lambda_scaling=lambda_scaling,
                        structure=structure)
        defaults["lambda"] = lam
        super().__init__(params, defaults)
        for gi, group in enumerate(self.param_groups):
            _check_scalar("lambda", group["lambda"], low=0.0)
            if group["lambda_scaling"] not in LAMBDA_SCALINGS:
                raise ValueError(f"param group {gi}: lambda_scaling must be one of "
                                 f"{LAMBDA_SCALINGS}, got {group['lambda_scaling']!r}")
            if group["coupling"] not in COUPLINGS:
                raise ValueError(f"param group {gi}: coupling must be one of {COUPLINGS}, "
                                 f"got {group['coupling']!r}")
            for p in group["params"]:
                _check_structure(p, group["structure"], f"param group {gi}")
        self._structure = {p: g["structure"] for g in self.param_groups for p in g["params"]}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        for p in g["params"]:
            _check_structure(p, g.get("structure"), f"param group {len(self.param_groups) - 1}")
        if hasattr(self, "_structure"):
            self._structure.update({p: g["structure"] for p in g["params"]})

    # ---- queries ------------------------------------------------------------------------------
    def structure(self, p: torch.Tensor) -> str | None:
        """The structure of parameter ``p`` (None: no Γ). Raises for unknown parameters."""
        try:
            return self._structure[p]
        except KeyError:
            raise ValueError("parameter is not managed by this optimizer") from None

    def gamma(self, p: torch.Tensor) -> torch.Tensor:
        """Γ of a coupled parameter (zeros before its first step)."""
        if self.structure(p) is None:
            raise ValueError("parameter has no Γ (its group's structure is None)")
        st = self.state.get(p, {})
        return st["Gamma"] if "Gamma" in st else torch.zeros_like(p)

    def support_sizes(self, model: nn.Module) -> dict[str, int]:
        """Selected units (filters/neurons/weights with Γ ≠ 0) per parameter name, and total."""
        return sparsity.support_sizes(sparsity.unit_masks_from_gamma(model, self))

    # ---- the step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            _slbi_group_step(group, self.state)
        return loss


def _check_scalar(name: str, value: Any, low: float, strict: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, "
                         f"got {value!r}")


def _slbi_group_step(group: dict[str, Any], state: dict) -> None:
    """One DessiLBI step for every parameter of ``group`` (multi-tensor, torch._foreach_*)."""
    params = [p for p in group["params"] if p.grad is not None]
    if not params:
        return
    lr, kappa, nu = group["lr"], group["kappa"], group["nu"]
    mom, damp, wd = group["momentum"], group["dampening"], group["weight_decay"]
    structure = group["structure"]
    coupled = structure is not None and nu != math.inf
    inv_nu = 0.0 if nu == math.inf else 1.0 / nu
    grads = [p.grad for p in params]
    if any(g.is_sparse for g in grads):
        raise RuntimeError("SLBI does not support sparse gradients")

    if structure is not None:
        for p in params:
            st = state[p]
            if "V" not in st:
                st["V"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["Gamma"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        vs = [state[p]["V"] for p in params]
        gammas = [state[p]["Gamma"] for p in params]
    diff: list[torch.Tensor] = []
    if coupled:
        diff = torch._foreach_sub(params, gammas)           # W_k - Γ_k

    # d = ∇L̂ + ωW (+ (W - Γ)/ν inside the buffer: the paper)
    d = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else list(grads)
    if coupled and group["coupling"] == "paper":
        d = torch._foreach_add(d, diff, alpha=inv_nu)
    if mom != 0:
        bufs = [state[p].get("momentum_buffer") for p in params]
        if any(b is None for b in bufs):
            for i, (p, b) in enumerate(zip(params, bufs)):
                if b is None:
                    bufs[i] = state[p]["momentum_buffer"] = torch.clone(d[i]).detach()
                else:
                    b.mul_(mom).add_(d[i], alpha=1 - damp)
        else:
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, d, alpha=1 - damp)
        d = torch._foreach_add(d, bufs, alpha=mom) if group["nesterov"] else bufs
    if coupled and group["coupling"] == "code":
        d = torch._foreach_add(d, diff, alpha=inv_nu)       # coupling outside the momentum
    step = lr * kappa if (structure is not None or group["kappa_uncoupled"]) else lr
    torch._foreach_add_(params, d, alpha=-step)              # W_{k+1}

    if coupled:
        torch._foreach_add_(vs, diff, alpha=lr * inv_nu)     # V_{k+1} = V_k + α/ν (W_k - Γ_k)
        for v, gam in zip(vs, gammas):                       # Γ_{k+1} = κ Prox(V_{k+1})
            gam.copy_(prox_group_lasso(v, group["lambda"], structure, group["lambda_scaling"]))
            if kappa != 1.0:
                gam.mul_(kappa)


# --------------------------------------------------------------------------------------------
# Parameter groups from a model
# --------------------------------------------------------------------------------------------
def slbi_param_groups(model: nn.Module, conv: str | None = "filter",
                      linear: str | None = "neuron", output: str | None = None,
                      lam: float | None = None, conv_lambda: float | None = None,
                      linear_lambda: float | None = None) -> list[dict[str, Any]]:
    """Parameter groups for ``SLBI`` built from the layers of ``model``.

    Conv1d/2d/3d weights get structure ``conv`` ('filter', 'element' or None), Linear weights
    ``linear`` ('neuron', 'element' or None), except the *last* Linear layer (the classifier,
    whose rows are classes), which gets ``output`` (default None: dense, as removing a class is
    rarely wanted). Everything else (biases, norm layers, other modules) is uncoupled. Optional
    thresholds per kind override the optimizer's ``lam``. Nothing depends on parameter order:
    groups hold the parameter objects, and ``SLBI.structure(p)`` maps them back.
    """
    for name, val, allowed in (("conv", conv, ("filter", "element", None)),
                               ("linear", linear, ("neuron", "element", None)),
                               ("output", output, ("neuron", "element", None))):
        if val not in allowed:
            raise ValueError(f"{name}={val!r} is not accepted; accepted: {allowed}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    last = linears[-1] if linears else None
    kinds: dict[str, list[nn.Parameter]] = {"conv": [], "linear": [], "output": []}
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, _CONV):
            kinds["conv"].append(m.weight)
        elif isinstance(m, nn.Linear):
            kinds["output" if m is last else "linear"].append(m.weight)
    groups: list[dict[str, Any]] = []
    lambdas = {"conv": conv_lambda, "linear": linear_lambda, "output": linear_lambda}
    structures = {"conv": conv, "linear": linear, "output": output}
    for kind, ps in kinds.items():
        ps = [p for p in ps if id(p) not in seen and p.requires_grad]
        if not ps or structures[kind] is None:
            continue
        seen.update(id(p) for p in ps)
        g: dict[str, Any] = {"params": ps, "structure": structures[kind], "name": kind}
        lam_k = lambdas[kind] if lambdas[kind] is not None else lam
        if lam_k is not None:
            g["lambda"] = lam_k
        groups.append(g)
    rest = [p for p in model.parameters() if id(p) not in seen and p.requires_grad]
    if rest:
        groups.append({"params": rest, "structure": None, "name": "uncoupled"})
    return groups


# --------------------------------------------------------------------------------------------
# The registered method
# --------------------------------------------------------------------------------------------
@register
class SLBIMethod(OptimizerMethod):
    """DessiLBI behind the Method interface: SLBI over ``slbi_param_groups(model)``; records the
    support size per layer with every evaluation (``metrics``) and the regularisation path
    (units entering/leaving supp(Γ)) at the end of every epoch (``end_of_epoch`` events)."""

    name = "slbi"
    summary = "DessiLBI: Split LBI with momentum; structural sparsity path (filters/neurons)"
    paper = "Fu, Liu, Li, Sun, Zeng & Yao, ICML 2020 (arXiv 2007.02010)"
    hparams = (
        HParam("lr", 0.1, float, "step size alpha", low=1e-3, high=1.0, log=True, tune=True),
        HParam("kappa", 1.0, float, "damping kappa (Gamma = kappa * Prox(V))", low=0.5,
               high=10.0, log=True),
        HParam("nu", 100.0, float, "coupling nu (smaller: tighter W-Gamma coupling)", low=1.0,
               high=1000.0, log=True, tune=True),
        HParam("lambda", 1.0, float, "group-lasso threshold lambda (official code: 1)"),
        HParam("lambda_scaling", "none", str, "'sqrt_size': lambda * sqrt(group size)",
               choices=LAMBDA_SCALINGS),
        HParam("momentum", 0.9, float, "heavy-ball momentum", low=0.0, high=0.99),
        HParam("nesterov", False, bool, "Nesterov momentum"),
        HParam("weight_decay", 0.0, float, "L2 weight decay (inside the momentum buffer)"),
        HParam("conv", "filter", str, "structure of conv weights", choices=("filter", "element",
                                                                              "none")),
        HParam("linear", "neuron", str, "structure of hidden Linear weights",
               choices=("neuron", "element", "none")),
        HParam("output", "none", str, "structure of the last Linear layer",
               choices=("neuron", "element", "none")),
        HParam("coupling", "paper", str, "'paper': coupling inside momentum; 'code': outside",
               choices=COUPLINGS),
        HParam("kappa_uncoupled", True, bool, "scale uncoupled parameters' steps by kappa"),
        HParam("eval", "dense", str, "model the runner evaluates: dense W or sparse W*1[G!=0]",
               choices=("dense", "sparse")),
        *SCHEDULE_HPARAMS,
    )

    def __init__(self, hp: dict[str, Any] | None = None):
        super().__init__(hp)
        self.path = sparsity.SelectionPath()
        self._model: nn.Module | None = None
        self._ctx: TrainContext | None = None

    def make_optimizer(self, model: nn.Module) -> SLBI:
        hp = self.hp
        none = lambda s: None if s == "none" else s  # noqa: E731
        groups = slbi_param_groups(model, conv=none(hp["conv"]), linear=none(hp["linear"]),
                                   output=none(hp["output"]))
        for g in groups:
            g.pop("name", None)
        return SLBI(groups, lr=hp["lr"], kappa=hp["kappa"], nu=hp["nu"], lam=hp["lambda"],
                    momentum=hp["momentum"], nesterov=hp["nesterov"],
                    weight_decay=hp["weight_decay"], coupling=hp["coupling"],
                    kappa_uncoupled=hp["kappa_uncoupled"], lambda_scaling=hp["lambda_scaling"])

    def prepare(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        self._model, self._ctx = model, ctx
        return super().prepare(model, ctx)

    def unit_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return sparsity.unit_masks_from_gamma(model, self.optimizer)

    def end_of_epoch(self, model: nn.Module, ctx: TrainContext, epoch: int) -> list[dict]:
        super().end_of_epoch(model, ctx, epoch)
        rec = self.path.update(epoch + 1, self.unit_masks(model))
        entered = {k: v.tolist() for k, v in rec["entered"].items()}
        left = {k: v.tolist() for k, v in rec["left"].items()}
        return [{"kind": "slbi_path", "support": rec["sizes"],
                 "entered": {k: v for k, v in entered.items() if v},
                 "left": {k: v for k, v in left.items() if v}}]

    @torch.no_grad()
    def metrics(self, model: nn.Module) -> dict[str, float]:
        masks = self.unit_masks(model)
        sizes = sparsity.support_sizes(masks)
        units = sum(m.numel() for m in masks.values())
        out: dict[str, float] = {f"support/{k.removesuffix('.weight')}": float(v)
                                 for k, v in sizes.items() if k != "total"}
        out["support_total"] = float(sizes["total"])
        out["support_frac"] = sizes["total"] / max(units, 1)
        out["sparse_weight_frac"] = sparsity.mask_density(
            model, sparsity.gamma_masks(model, self.optimizer)) if masks else 1.0
        ctx = self._ctx
        if ctx is not None and ctx.task == "classification" and ctx.x_val.shape[0] > 0:
            sm = sparsity.sparse_model(model, self.optimizer)
            sm.eval()
            correct = 0
            for i in range(0, ctx.x_val.shape[0], 4096):
                correct += int((sm(ctx.x_val[i:i + 4096]).argmax(1)
                                == ctx.y_val[i:i + 4096]).sum())
            out["sparse_val_metric"] = correct / ctx.x_val.shape[0]
        return out

    def eval_model(self, model: nn.Module) -> nn.Module:
        if self.hp["eval"] == "sparse":
            return sparsity.sparse_model(model, self.optimizer)
        return model

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["path"] = self.path.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.path.load_state_dict(state["path"])


__all__ = ["SLBI", "SLBIMethod", "group_thresholds", "prox_group_lasso", "slbi_param_groups"]
