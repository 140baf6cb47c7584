"""``proxprop(model)``: convert a model's Linear/Conv2d layers in place (the output layer
keeps its explicit step, Eq. 12), and the registered runner methods ``proxprop`` (Adam) and
``proxprop_sgd`` (Nesterov SGD)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..base import SCHEDULE_HPARAMS, HParam, OptimizerMethod, register
from .config import CG_BLOCKS, CG_VARIANTS, GRAMS, SOLVERS, ProxConfig
from .layers import ProxConv2d, ProxLinear

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
    if not isinstance(model, nn.Module):
        raise TypeError(f"proxprop() needs a torch nn.Module, got {type(model).__name__} "
                        f"({model!r:.60})")
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
