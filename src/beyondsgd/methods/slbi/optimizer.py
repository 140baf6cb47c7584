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
  the momentum buffer.
* ``coupling="paper"``: b ← τb + ∇L̂(W) + ωW + (W - Γ)/ν, W ← W - καb. A literal reading of
  "SGD with momentum on L̄" that the paper does **not** confirm; the buffer amplifies the pull
  towards Γ by 1/(1-τ) = 10 (with ν = 20 the network collapses to Γ = 0).

Weight decay ω applies to parameters with two or more dimensions only (the official code exempts
biases and other 1-D parameters); ``weight_decay_1d=True`` decays them too (torch.optim.SGD).
Parameters without a Γ (biases, norm scales) take W ← W - καb on ∇L̂ (+ ωW).

**Defaults = the official code** (``code/slbi_opt.py`` and the LeNet demo ``example/train``):
α = 0.1, κ = 1, ν = 20, λ = 1, τ = 0.9, code coupling, and its coupling structure: conv weights
grouped by output filter, **every Linear weight element-wise, the classifier included**, biases
uncoupled. ``SLBI(model.parameters())`` (``structure="auto"``), ``SLBI(slbi_param_groups(model))``
and the benchmark method ``slbi`` all default to it, and each equals an independent
re-implementation of the official optimizer on the official LeNet to round-off, supports included
(``tests/test_slbi.py::test_defaults_equal_the_official_optimizer_on_the_official_lenet``).

**Entry time.** V^g grows by about (α/ν)‖W^g‖ per step while Γ^g = 0, so a group enters after
roughly λν/(α‖W^g‖) steps (≈ 330 for a freshly initialised LeNet filter; growing weights make it
sooner). λ, ν and α set the time scale together: to keep the path while changing α or ν, scale λ
by α/ν accordingly; for an epoch of n steps instead of the recipe's 469, scale λ by n/469.

**Options beyond the official defaults**: ``structure="auto_neuron"`` /
``slbi_param_groups(model, linear="neuron", output=...)`` group Linear weights by neuron (row) for
structured pruning of Linear layers; ``kappa_uncoupled=False`` (uncoupled parameters step with α,
not κα; identical for κ = 1); ``lambda_scaling="sqrt_size"`` (threshold λ·√(group size), as the
official "lottery" variant); ``maximize`` (ascend on the loss, as torch.optim.SGD).

Parameter groups carry the structure: ``{"params": [...], "structure": "filter" | "neuron" |
"element" | "auto" | "auto_neuron" | None, "lambda": float}``. ``"filter"``: groups are output
filters W[c_out] of a Conv1d/2d/3d weight; ``"neuron"``: rows of a Linear weight (a neuron's
incoming weights); ``"element"``: single weights (lasso); ``None``: no Γ; ``"auto"`` (the default
for groups that name none): by shape (:func:`auto_structure`: filters for 3-5-D weights,
element-wise for 2-D, no Γ for 1-D); ``"auto_neuron"``: the same with neurons for 2-D. The groups
stay the user's groups ("auto" is resolved per parameter, never by splitting a group), so LR
schedulers with one value per group and checkpoints see the groups they were given.

Example::

    >>> import torch
    >>> from beyondsgd.models import lenet5
    >>> from beyondsgd.methods.slbi import SLBI, slbi_param_groups
    >>> net = lenet5(seed=0)
    >>> opt = SLBI(slbi_param_groups(net))          # lr 0.1, kappa 1, nu 20, lambda 1
    >>> x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    >>> loss = torch.nn.functional.cross_entropy(net(x), y); loss.backward(); _ = opt.step()
    >>> sorted(opt.support_sizes(net))[:2]
    ['0.weight', '11.weight']
    >>> len(SLBI(net.parameters()).param_groups)   # a flat list stays one group
    1
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
from .groups import (
    AUTO,
    AUTOS,
    check_structure,
    resolve_structure,
)
from .update import (
    COUPLINGS,
    LAMBDA_SCALINGS,
    STRUCTURES,
    slbi_group_step,
)

LAMBDA_UNITS = ("entry", "absolute")
# The official LeNet-5 recipe (DessiLBI2020/DessiLBI, example/train): the defaults, and the
# reference of the benchmark's entry-time units (MNIST, batch 128: 469 steps per epoch).
OFFICIAL = {"lr": 0.1, "kappa": 1.0, "nu": 20.0, "lambda": 1.0, "momentum": 0.9,
            "steps_per_epoch": 469}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_scalar(name: str, value: Any, low: float, strict: bool = False, where: str = ""
                  ) -> None:
    ok = _number(value) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{where}{name} must be a finite number {'>' if strict else '>='} "
                         f"{low}, got {value!r}")


def check_hparams(hp: dict[str, Any], where: str = "") -> None:
    """One clear ``ValueError`` (``TypeError`` for a non-bool flag) for the first bad
    hyperparameter of ``hp`` (the constructor's arguments, or a parameter group); ``where``
    prefixes the message (e.g. ``"param group 1: "``)."""
    lr = hp["lr"]
    if isinstance(lr, torch.Tensor):                 # a tensor lr, as torch.optim.SGD
        if lr.numel() != 1:
            raise ValueError(f"{where}lr must be a number or a one-element tensor, got a tensor "
                             f"of shape {tuple(lr.shape)}")
        lr = float(lr)
    _check_scalar("lr", lr, low=0.0, where=where)
    _check_scalar("kappa", hp["kappa"], low=0.0, strict=True, where=where)
    nu = hp["nu"]
    if not (_number(nu) and nu > 0 and not math.isnan(nu)):
        raise ValueError(f"{where}nu must be a number > 0 (math.inf: no coupling), got {nu!r}")
    _check_scalar("lambda" if where else "lam", hp["lambda"], low=0.0, where=where)
    mom = hp["momentum"]
    if not (_number(mom) and 0.0 <= mom < 1.0):
        raise ValueError(f"{where}momentum must be a number >= 0 and < 1, got {mom!r}")
    damp = hp["dampening"]
    if not (_number(damp) and 0.0 <= damp <= 1.0):
        raise ValueError(f"{where}dampening must be a number >= 0 and <= 1, got {damp!r}")
    _check_scalar("weight_decay", hp["weight_decay"], low=0.0, where=where)
    for flag in ("nesterov", "weight_decay_1d", "kappa_uncoupled", "maximize"):
        if not isinstance(hp[flag], bool):
            raise TypeError(f"{where}{flag} must be True or False, got {hp[flag]!r}")
    if hp["foreach"] is not None and not isinstance(hp["foreach"], bool):
        raise TypeError(f"{where}foreach must be None, True or False, got {hp['foreach']!r}")
    if hp["nesterov"] and (mom <= 0 or damp != 0):
        raise ValueError(f"{where}Nesterov momentum requires momentum > 0 and dampening = 0, "
                         f"got momentum={mom}, dampening={damp}")
    if hp["coupling"] not in COUPLINGS:
        raise ValueError(f"{where}coupling must be one of {COUPLINGS}, got {hp['coupling']!r}")
    if hp["lambda_scaling"] not in LAMBDA_SCALINGS:
        raise ValueError(f"{where}lambda_scaling must be one of {LAMBDA_SCALINGS}, "
                         f"got {hp['lambda_scaling']!r}")
    s = hp["structure"]
    if s is not None and not (isinstance(s, str) and s in (*STRUCTURES, *AUTOS)):
        raise ValueError(f"{where}structure {s!r} is not one of {(*STRUCTURES, *AUTOS)} "
                         f"or None")


# --------------------------------------------------------------------------------------------
# The optimizer
# --------------------------------------------------------------------------------------------
class SLBI(Optimizer):
    r"""DessiLBI / Split LBI with momentum (see the module docstring for the update rule).

    Args:
        params: parameters, named parameters (``model.named_parameters()``, as torch.optim
            accepts) or parameter groups. A group's ``structure`` (``"filter"``, ``"neuron"``,
            ``"element"``, ``"auto"``, ``"auto_neuron"`` or ``None``) says whether its
            parameters carry a sparse Γ and how it is grouped; ``lambda`` is its threshold λ.
            ``slbi_param_groups(model)`` builds them from the layers.
        lr: step size α (official recipe: 0.1).
        kappa: damping κ > 0 (Γ = κ·Prox(V); every W step is scaled by κ). Official: 1.
        nu: coupling ν > 0 (``math.inf`` switches the coupling off: W follows SGD exactly).
            Official LeNet recipe: 20.
        lam: default threshold λ ≥ 0 for groups that do not set ``lambda`` (official: 1). A group
            enters supp(Γ) after roughly λν/(α‖W^g‖) steps.
        momentum: heavy-ball momentum τ in [0, 1); ``dampening`` in [0, 1] and ``nesterov`` as
            in ``torch.optim.SGD``.
        weight_decay: L2 weight decay ω (inside the momentum buffer, as torch.optim.SGD).
        weight_decay_1d: also decay 1-D parameters (biases, norm scales). Default False: the
            official code decays weights only.
        coupling: ``"code"`` (coupling term outside the momentum buffer; the official code) or
            ``"paper"`` (inside; a reading of the paper that could not be confirmed).
        kappa_uncoupled: scale the steps of uncoupled parameters by κ too (paper and code).
        lambda_scaling: ``"none"`` (λ per group) or ``"sqrt_size"`` (λ·√group size).
        structure: the structure of groups that do not set one. ``"auto"`` (default) resolves
            it per parameter by shape (:func:`auto_structure`): ``"filter"`` for conv weights
            (3-5 dims), ``"element"`` for 2-D weights (the classifier included), ``None`` for
            1-D: the official code's coupling. ``"auto_neuron"``: the same with ``"neuron"``
            (rows) for 2-D weights. The group itself is kept as given (``param_groups`` are the
            user's groups); :meth:`structure` answers per parameter. ``None`` gives unnamed
            groups no Γ. A ``UserWarning`` names the fix when no parameter gets a Γ (SLBI would
            then be SGD with momentum).
        maximize: ascend on the loss: the loss gradient is negated before the step, as in
            ``torch.optim.SGD`` (weight decay and the coupling term are not).
        foreach: accepted for ``torch.optim`` compatibility and stored in the groups; a no-op:
            the step always uses the multi-tensor (``torch._foreach_*``) kernels, which fall
            back to per-tensor loops on devices without fused ones.

    Every parameter group is checked (the constructor's, and any added later with
    :meth:`add_param_group`): a bad value raises one ``ValueError`` naming the group, the value
    and what is accepted.

    State per parameter: ``momentum_buffer``; coupled ones also ``V`` and ``Gamma``. The step
    allocates no parameter-sized temporaries in the usual case (momentum without Nesterov, after
    the first step, ``maximize=False``): buffers are updated in place and the prox is written
    straight into Γ.

    Reference: Fu et al., ICML 2020, Sec. 3 (DessiLBI and its momentum variant).
    """

    def __init__(self, params: Iterable[Any], lr: float = OFFICIAL["lr"],
                 kappa: float = OFFICIAL["kappa"], nu: float = OFFICIAL["nu"],
                 lam: float = OFFICIAL["lambda"], momentum: float = OFFICIAL["momentum"],
                 dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 weight_decay_1d: bool = False, coupling: str = "code",
                 kappa_uncoupled: bool = True, lambda_scaling: str = "none",
                 structure: str | None = AUTO, maximize: bool = False,
                 foreach: bool | None = None):
        defaults = dict(lr=lr, kappa=kappa, nu=nu, momentum=momentum, dampening=dampening,
                        nesterov=nesterov, weight_decay=weight_decay,
                        weight_decay_1d=weight_decay_1d, coupling=coupling,
                        kappa_uncoupled=kappa_uncoupled, lambda_scaling=lambda_scaling,
                        structure=structure, maximize=maximize, foreach=foreach)
        defaults["lambda"] = lam
        check_hparams(defaults)
        super().__init__(params, defaults)
        if all(self.structure(p) is None for g in self.param_groups for p in g["params"]):
            shapes = sorted({tuple(p.shape) for g in self.param_groups for p in g["params"]})
            warnings.warn(
                "SLBI: no parameter has a structure ('filter', 'neuron' or 'element'), so none "
                "gets a sparse copy Gamma and nothing will ever be selected (this is SGD with "
                f"momentum; parameter shapes {shapes[:6]}{' ...' if len(shapes) > 6 else ''}: "
                "structure='auto' couples only weights with 2 to 5 dims). Build the groups "
                "with slbi_param_groups(model), e.g. SLBI(slbi_param_groups(model)), or pass "
                "structure='element' for a flat list of such parameters.",
                UserWarning, stacklevel=2)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for g in self.param_groups:     # groups of checkpoints and pickles from older versions
            g.setdefault("maximize", False)
            g.setdefault("foreach", None)
            g.setdefault("structure", None)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch's (named parameters included), plus: the group's hyperparameters and every
        parameter's structure are checked; a bad group raises and is not added."""
        super().add_param_group(param_group)
        where = f"param group {len(self.param_groups) - 1}: "
        g = self.param_groups[-1]
        try:
            check_hparams(g, where)
            for p in g["params"]:
                check_structure(p, g["structure"], where.rstrip(": "))
        except (ValueError, TypeError):
            self.param_groups.pop()
            raise

    # ---- queries ------------------------------------------------------------------------------
    def structure(self, p: torch.Tensor) -> str | None:
        """The structure of parameter ``p`` (None: no Γ), its group's ``"auto"`` resolved by
        shape. Raises for unknown parameters.

        Read from ``param_groups`` (no cached map), so copies, pickles and ``load_state_dict``
        always answer for the parameters they hold."""
        for g in self.param_groups:
            for q in g["params"]:
                if q is p:
                    return resolve_structure(g["structure"], p)
        raise ValueError("parameter is not managed by this optimizer")

    def gamma(self, p: torch.Tensor) -> torch.Tensor:
        """Γ of a coupled parameter (zeros before its first step)."""
        if self.structure(p) is None:
            raise ValueError("parameter has no Γ (its structure is None)")
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
            s = group["structure"]
            structures = ([resolve_structure(s, p) for p in group["params"]] if s in AUTOS
                          else None)
            slbi_group_step(group, self.state, structures)
        return loss
