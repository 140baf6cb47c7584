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

**Momentum: where the coupling term goes.** With heavy-ball momentum τ (the paper's Mom / Mom-Wd
variants; torch.optim.SGD's buffer convention, ``nesterov`` and ``dampening`` as in torch):

* ``coupling="code"`` (default; the official code, DessiLBI2020/DessiLBI, which produced the
  paper's numbers): b ← τb + ∇L̂(W) + ωW, then W ← W - κα(b + (W - Γ)/ν): the coupling bypasses
  the momentum buffer. Our implementation equals the official optimizer to 4e-10 (float64).
* ``coupling="paper"``: b ← τb + ∇L̂(W) + ωW + (W - Γ)/ν, W ← W - καb. A literal reading of
  "SGD with momentum on L̄" that the paper does **not** confirm; the buffer amplifies the pull
  towards Γ by 1/(1-τ) = 10 (with ν = 20 the network collapses to Γ = 0).

Weight decay ω applies to parameters with two or more dimensions only (the official code exempts
biases and other 1-D parameters); ``weight_decay_1d=True`` decays them too (torch.optim.SGD).
Parameters without a Γ (biases, the output layer by default) take W ← W - καb on ∇L̂ (+ ωW).

**Defaults = the official LeNet recipe**: α = 0.1, κ = 1, ν = 20, λ = 1, τ = 0.9, code coupling.
**Entry time.** V^g grows by about (α/ν)‖W^g‖ per step while Γ^g = 0, so a group enters after
roughly λν/(α‖W^g‖) steps (≈ 330 for a freshly initialised LeNet filter; growing weights make it
sooner). λ, ν and α set the time scale together: to keep the path while changing α or ν, scale λ
by α/ν accordingly; for an epoch of n steps instead of the recipe's 469, scale λ by n/469.

**Other options reproducing variants of the official code**: ``kappa_uncoupled=False`` (uncoupled
parameters step with α, not κα; identical for κ = 1); ``lambda_scaling="sqrt_size"`` (threshold
λ·√(group size), as the official "lottery" variant); ``structure="element"`` for Linear weights
(the base official optimizer shrinks FC weights element-wise, the classifier included).

Parameter groups carry the structure: ``{"params": [...], "structure": "filter" | "neuron" |
"element" | "auto" | None, "lambda": float}``. ``"filter"``: groups are output filters W[c_out]
of a Conv1d/2d/3d weight; ``"neuron"``: rows of a Linear weight (a neuron's incoming weights);
``"element"``: single weights (lasso); ``None``: no Γ; ``"auto"`` (the default for groups that
name none, so for a flat ``model.parameters()``): by shape (:func:`auto_structure`: filters for
3-5-D weights, neurons for 2-D, no Γ for 1-D). ``slbi_param_groups(model)`` builds groups from
the layers instead (and keeps the classifier dense, as the benchmark does).

Example::

    >>> import torch
    >>> from beyondsgd.models import lenet5
    >>> from beyondsgd.methods.slbi import SLBI, slbi_param_groups
    >>> net = lenet5(seed=0)
    >>> opt = SLBI(slbi_param_groups(net))          # lr 0.1, kappa 1, nu 20, lambda 1
    >>> x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    >>> loss = torch.nn.functional.cross_entropy(net(x), y); loss.backward(); _ = opt.step()
    >>> sorted(opt.support_sizes(net))[:2]
    ['0.weight', '3.weight']
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from . import sparsity
from .base import SCHEDULE_HPARAMS, HParam, OptimizerMethod, TrainContext, register
from .slbi_groups import AUTO, auto_structure, check_structure, slbi_param_groups, split_auto_group

__all__ = ["OFFICIAL", "SLBI", "SLBIMethod", "auto_structure", "entry_lambda", "slbi_param_groups"]
from .slbi_update import (
    COUPLINGS,
    LAMBDA_SCALINGS,
    STRUCTURES,
    group_thresholds,
    prox_group_lasso,
    prox_group_lasso_,
    slbi_group_step,
)

LAMBDA_UNITS = ("entry", "absolute")
# The official LeNet-5 recipe (DessiLBI2020/DessiLBI, example/train): the defaults, and the
# reference of the benchmark's entry-time units (MNIST, batch 128: 469 steps per epoch).
OFFICIAL = {"lr": 0.1, "kappa": 1.0, "nu": 20.0, "lambda": 1.0, "momentum": 0.9,
            "steps_per_epoch": 469}


def _check_scalar(name: str, value: Any, low: float, strict: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, "
                         f"got {value!r}")


# --------------------------------------------------------------------------------------------
# The optimizer
# --------------------------------------------------------------------------------------------
class SLBI(Optimizer):
    r"""DessiLBI / Split LBI with momentum (see the module docstring for the update rule).

    Args:
        params: parameters or parameter groups. A group's ``structure`` (``"filter"``,
            ``"neuron"``, ``"element"`` or ``None``) says whether its parameters carry a sparse Γ
            and how it is grouped; ``lambda`` is its threshold λ. ``slbi_param_groups(model)``
            builds them from the layers; a flat ``model.parameters()`` takes ``structure``.
        lr: step size α (official recipe: 0.1).
        kappa: damping κ > 0 (Γ = κ·Prox(V); every W step is scaled by κ). Official: 1.
        nu: coupling ν > 0 (``math.inf`` switches the coupling off: W follows SGD exactly).
            Official LeNet recipe: 20.
        lam: default threshold λ ≥ 0 for groups that do not set ``lambda`` (official: 1). A group
            enters supp(Γ) after roughly λν/(α‖W^g‖) steps.
        momentum, dampening, nesterov: as in ``torch.optim.SGD``.
        weight_decay: L2 weight decay ω (inside the momentum buffer, as torch.optim.SGD).
        weight_decay_1d: also decay 1-D parameters (biases, norm scales). Default False: the
            official code decays weights only.
        coupling: ``"code"`` (coupling term outside the momentum buffer; the official code) or
            ``"paper"`` (inside; a reading of the paper that could not be confirmed).
        kappa_uncoupled: scale the steps of uncoupled parameters by κ too (paper and code).
        lambda_scaling: ``"none"`` (λ per group) or ``"sqrt_size"`` (λ·√group size).
        structure: the structure of groups that do not set one. ``"auto"`` (default) picks it
            per parameter by shape (:func:`auto_structure`): ``"filter"`` for conv weights (3-5
            dims), ``"neuron"`` for 2-D weights (the classifier included), ``None`` for 1-D;
            an ``"auto"`` group is split into one group per structure when it is added, so
            ``param_groups`` holds only resolved structures. ``None`` gives unnamed groups no Γ
            (the default before issue 18). A ``UserWarning`` names the fix when no parameter
            gets a Γ (SLBI would then be SGD with momentum).

    State per parameter: ``momentum_buffer``; coupled ones also ``V`` and ``Gamma``. The step
    allocates no parameter-sized temporaries in the usual case (momentum without Nesterov, after
    the first step): buffers are updated in place and the prox is written straight into Γ.

    Reference: Fu et al., ICML 2020, Sec. 3 (DessiLBI and its momentum variant).
    """

    def __init__(self, params: Iterable[Any], lr: float = OFFICIAL["lr"],
                 kappa: float = OFFICIAL["kappa"], nu: float = OFFICIAL["nu"],
                 lam: float = OFFICIAL["lambda"], momentum: float = OFFICIAL["momentum"],
                 dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 weight_decay_1d: bool = False, coupling: str = "code",
                 kappa_uncoupled: bool = True, lambda_scaling: str = "none",
                 structure: str | None = AUTO):
        if isinstance(lr, torch.Tensor):                 # a tensor lr, as torch.optim.SGD
            if lr.numel() != 1:
                raise ValueError(f"lr must be a number or a one-element tensor, got a tensor of "
                                 f"shape {tuple(lr.shape)}")
            _check_scalar("lr", float(lr), low=0.0)
        else:
            _check_scalar("lr", lr, low=0.0)
        _check_scalar("kappa", kappa, low=0.0, strict=True)
        if not (isinstance(nu, int | float) and not isinstance(nu, bool) and nu > 0
                and not math.isnan(nu)):
            raise ValueError(f"nu must be a number > 0 (math.inf: no coupling), got {nu!r}")
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
        if structure is not None and structure not in (*STRUCTURES, AUTO):
            raise ValueError(f"structure {structure!r} is not one of {(*STRUCTURES, AUTO)} "
                             f"or None")
        defaults = dict(lr=lr, kappa=kappa, nu=nu, momentum=momentum, dampening=dampening,
                        nesterov=nesterov, weight_decay=weight_decay,
                        weight_decay_1d=weight_decay_1d, coupling=coupling,
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
                check_structure(p, group["structure"], f"param group {gi}")
        if all(g["structure"] is None for g in self.param_groups):
            shapes = sorted({tuple(p.shape) for g in self.param_groups for p in g["params"]})
            warnings.warn(
                "SLBI: no parameter has a structure ('filter', 'neuron' or 'element'), so none "
                "gets a sparse copy Gamma and nothing will ever be selected (this is SGD with "
                f"momentum; parameter shapes {shapes[:6]}{' ...' if len(shapes) > 6 else ''}: "
                "structure='auto' couples only weights with 2 to 5 dims). Build the groups "
                "with slbi_param_groups(model), e.g. SLBI(slbi_param_groups(model)), or pass "
                "structure='element' for a flat list of such parameters.",
                UserWarning, stacklevel=2)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch's, plus: a group whose structure is ``"auto"`` (its own, or the default) is
        added as one group per resolved structure (:func:`auto_structure`); every parameter's
        structure is checked against its shape."""
        structure = param_group.get("structure", self.defaults.get("structure"))
        pieces = split_auto_group(param_group) if structure == AUTO else [param_group]
        for piece in pieces:
            super().add_param_group(piece)
            g = self.param_groups[-1]
            for p in g["params"]:
                check_structure(p, g.get("structure"),
                                f"param group {len(self.param_groups) - 1}")

    # ---- queries ------------------------------------------------------------------------------
    def structure(self, p: torch.Tensor) -> str | None:
        """The structure of parameter ``p`` (None: no Γ). Raises for unknown parameters.

        Read from ``param_groups`` (no cached map), so copies, pickles and ``load_state_dict``
        always answer for the parameters they hold."""
        for g in self.param_groups:
            for q in g["params"]:
                if q is p:
                    return g["structure"]
        raise ValueError("parameter is not managed by this optimizer")

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
            slbi_group_step(group, self.state)
        return loss


# --------------------------------------------------------------------------------------------
# The registered method
# --------------------------------------------------------------------------------------------
def entry_lambda(lam: float, lr: float, nu: float, steps_per_epoch: int) -> float:
    """The optimizer's λ for a threshold ``lam`` given in *entry-time units*: a group of a given
    norm enters after the same fraction of an epoch as under the official LeNet recipe
    (α = 0.1, ν = 20, 469 steps per epoch) times ``lam``. Entry takes about λν/(α‖W^g‖) steps, so
    λ_opt = lam · (α/0.1) · (20/ν) · (steps_per_epoch/469); with the official α, ν and epoch
    length it is ``lam`` itself."""
    return (lam * (lr / OFFICIAL["lr"]) * (OFFICIAL["nu"] / nu)
            * (steps_per_epoch / OFFICIAL["steps_per_epoch"]))


@register
class SLBIMethod(OptimizerMethod):
    """DessiLBI behind the Method interface: SLBI over ``slbi_param_groups(model)``; records the
    support size per layer with every evaluation (``metrics``) and the regularisation path
    (units entering/leaving supp(Γ)) at the end of every epoch (``end_of_epoch`` events).

    Defaults are the official LeNet recipe (code coupling, α 0.1, κ 1, ν 20, λ 1, momentum 0.9).
    With ``lambda_unit="entry"`` (default) λ is in entry-time units (``entry_lambda``): the
    selection path keeps its place within an epoch whatever the problem's epoch length and
    whatever α and ν the tuner picks, so tuning α and ν does not also move the path."""

    name = "slbi"
    summary = "DessiLBI: Split LBI with momentum; structural sparsity path (filters/neurons)"
    paper = "Fu, Liu, Li, Sun, Zeng & Yao, ICML 2020 (arXiv 2007.02010)"
    hparams = (
        HParam("lr", OFFICIAL["lr"], float, "step size alpha (official recipe: 0.1)", low=0.01,
               high=0.5, log=True, tune=True),
        HParam("kappa", OFFICIAL["kappa"], float, "damping kappa (Gamma = kappa * Prox(V))",
               low=0.5, high=10.0, log=True),
        HParam("nu", OFFICIAL["nu"], float, "coupling nu (smaller: tighter W-Gamma coupling; "
               "official: 20)", low=5.0, high=200.0, log=True, tune=True),
        HParam("lambda", OFFICIAL["lambda"], float, "threshold lambda (official: 1); see "
               "lambda_unit"),
        HParam("lambda_unit", "entry", str, "'entry': lambda * (lr/0.1) * (20/nu) * "
               "(steps per epoch/469), the official recipe's entry time; 'absolute': as given",
               choices=LAMBDA_UNITS),
        HParam("lambda_scaling", "none", str, "'sqrt_size': lambda * sqrt(group size)",
               choices=LAMBDA_SCALINGS),
        HParam("momentum", OFFICIAL["momentum"], float, "heavy-ball momentum", low=0.0,
               high=0.99),
        HParam("nesterov", False, bool, "Nesterov momentum"),
        HParam("weight_decay", 0.0, float, "L2 weight decay (inside the momentum buffer)"),
        HParam("weight_decay_1d", False, bool, "decay biases and 1-D parameters too "
               "(the official code does not)"),
        HParam("conv", "filter", str, "structure of conv weights", choices=("filter", "element",
                                                                              "none")),
        HParam("linear", "neuron", str, "structure of hidden Linear weights",
               choices=("neuron", "element", "none")),
        HParam("output", "none", str, "structure of the last Linear layer",
               choices=("neuron", "element", "none")),
        HParam("coupling", "code", str, "'code': coupling outside momentum (official code); "
               "'paper': inside (unconfirmed reading of the paper)", choices=COUPLINGS),
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

    def optimizer_lambda(self) -> float:
        """The λ handed to the optimizer (``entry_lambda`` unless ``lambda_unit='absolute'``;
        the epoch length comes from the training context, the official one without)."""
        hp = self.hp
        if hp["lambda_unit"] == "absolute" or not hp["nu"] > 0:   # nu <= 0: SLBI refuses it
            return hp["lambda"]
        steps = self._ctx.steps_per_epoch if self._ctx is not None else OFFICIAL[
            "steps_per_epoch"]
        return entry_lambda(hp["lambda"], hp["lr"], hp["nu"], steps)

    def make_optimizer(self, model: nn.Module) -> SLBI:
        hp = self.hp
        none = lambda s: None if s == "none" else s  # noqa: E731
        groups = slbi_param_groups(model, conv=none(hp["conv"]), linear=none(hp["linear"]),
                                   output=none(hp["output"]))
        for g in groups:
            g.pop("name", None)
        return SLBI(groups, lr=hp["lr"], kappa=hp["kappa"], nu=hp["nu"],
                    lam=self.optimizer_lambda(), momentum=hp["momentum"],
                    nesterov=hp["nesterov"], weight_decay=hp["weight_decay"],
                    weight_decay_1d=hp["weight_decay_1d"], coupling=hp["coupling"],
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
        return [{"kind": "slbi_path", "support": rec["sizes"], "lambda": self.optimizer_lambda(),
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


__all__ = ["OFFICIAL", "SLBI", "SLBIMethod", "entry_lambda", "group_thresholds",
           "prox_group_lasso", "prox_group_lasso_", "slbi_param_groups"]
