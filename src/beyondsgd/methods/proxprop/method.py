"""ProxProp behind the runner's Method interface: the registered ``proxprop`` (Adam applies the
proximal directions) and ``proxprop_sgd`` (Nesterov SGD, the paper's Sec. 5.2 setting) methods,
each converting the model with :func:`~beyondsgd.methods.proxprop.convert.proxprop` first."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..base import SCHEDULE_HPARAMS, HParam, OptimizerMethod, register
from .config import CG_BLOCKS, CG_VARIANTS, GRAMS, SOLVERS, ProxConfig
from .convert import proxprop

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
        HParam("cg_block", "auto", str, "one CG per output unit (unit), or one per layer "
               "(layer); auto: unit, or the official blocking with cg_variant=official",
               choices=CG_BLOCKS),
        HParam("cg_variant", "textbook", str, "textbook CG, or the official code's iteration "
               "(aliased, absolute eps, its blocking; reproduces the paper's cgN numbers; not "
               "CG)", choices=CG_VARIANTS),
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
