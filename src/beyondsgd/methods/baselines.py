"""Baselines: the standard ``torch.optim`` optimizers behind the same Method interface.

Every baseline takes ``lr`` and ``weight_decay`` plus its own knobs and an optional per-epoch LR
schedule (constant, step, cosine). Defaults are PyTorch's (Adadelta's lr=1.0 is Zeiler's).

``torch.optim`` checks its arguments' signs only; the decay factors that must also stay below 1
are checked here, when the method is built: a momentum of 1 or more makes the velocity grow
without bound, and RMSProp's ``alpha`` of 1 or more leaves its squared-gradient average at zero or
makes it negative, so those trials would only report "diverged".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import SCHEDULE_HPARAMS, HParam, OptimizerMethod, register


def _lr(default: float, low: float = 1e-5, high: float = 1.0) -> HParam:
    return HParam("lr", default, float, "learning rate", low=low, high=high, log=True, tune=True)


_WD = HParam("weight_decay", 0.0, float, "L2 weight decay")


def check_unit_interval(hp: dict[str, Any], *names: str) -> None:
    """``ValueError`` unless each of ``names`` is in [0, 1) (a decay factor or momentum)."""
    for name in names:
        v = hp[name]
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name}={v!r} is out of range; accepted: {name} >= 0 and "
                             f"{name} < 1, i.e. [0, 1) ({name} >= 1 diverges)")


@register
class SGD(OptimizerMethod):
    name = "sgd"
    summary = "plain minibatch SGD"
    paper = "Robbins & Monro 1951"
    hparams = (_lr(0.1, 1e-3, 3.0), _WD, *SCHEDULE_HPARAMS)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.hp["lr"],
                               weight_decay=self.hp["weight_decay"])


@register
class Momentum(OptimizerMethod):
    name = "momentum"
    summary = "SGD with heavy-ball (or Nesterov) momentum"
    paper = "Polyak 1964; Sutskever et al. 2013"
    hparams = (
        _lr(0.05, 1e-3, 1.0),
        HParam("momentum", 0.9, float, "momentum coefficient", low=0.0, high=0.999),
        HParam("nesterov", False, bool, "Nesterov momentum"),
        _WD,
        *SCHEDULE_HPARAMS,
    )

    def __init__(self, hp: dict[str, Any] | None = None):
        super().__init__(hp)
        check_unit_interval(self.hp, "momentum")

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.hp["lr"], momentum=self.hp["momentum"],
                               nesterov=self.hp["nesterov"], weight_decay=self.hp["weight_decay"])


@register
class Adam(OptimizerMethod):
    name = "adam"
    summary = "Adam"
    paper = "Kingma & Ba, ICLR 2015"
    hparams = (
        _lr(1e-3, 1e-5, 1e-1),
        HParam("beta1", 0.9, float, "first-moment decay"),
        HParam("beta2", 0.999, float, "second-moment decay"),
        HParam("eps", 1e-8, float, "denominator epsilon"),
        _WD,
        *SCHEDULE_HPARAMS,
    )
    optimizer_class = torch.optim.Adam

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return self.optimizer_class(
            model.parameters(), lr=self.hp["lr"], betas=(self.hp["beta1"], self.hp["beta2"]),
            eps=self.hp["eps"], weight_decay=self.hp["weight_decay"],
        )


@register
class AdamW(Adam):
    name = "adamw"
    summary = "Adam with decoupled weight decay"
    paper = "Loshchilov & Hutter, ICLR 2019"
    hparams = tuple(
        HParam("weight_decay", 1e-2, float, "decoupled weight decay") if h.name == "weight_decay"
        else h for h in Adam.hparams
    )
    optimizer_class = torch.optim.AdamW


@register
class Adagrad(OptimizerMethod):
    name = "adagrad"
    summary = "Adagrad"
    paper = "Duchi, Hazan & Singer, JMLR 2011"
    hparams = (_lr(1e-2, 1e-4, 1.0), _WD, *SCHEDULE_HPARAMS)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adagrad(model.parameters(), lr=self.hp["lr"],
                                   weight_decay=self.hp["weight_decay"])


@register
class Adadelta(OptimizerMethod):
    name = "adadelta"
    summary = "Adadelta"
    paper = "Zeiler 2012"
    hparams = (
        _lr(1.0, 1e-2, 10.0),
        HParam("rho", 0.9, float, "decay of the squared-gradient average"),
        _WD,
        *SCHEDULE_HPARAMS,
    )

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adadelta(model.parameters(), lr=self.hp["lr"], rho=self.hp["rho"],
                                    weight_decay=self.hp["weight_decay"])


@register
class RMSprop(OptimizerMethod):
    name = "rmsprop"
    summary = "RMSProp"
    paper = "Tieleman & Hinton 2012"
    hparams = (
        _lr(1e-3, 1e-5, 1e-1),
        HParam("alpha", 0.99, float, "decay of the squared-gradient average"),
        HParam("momentum", 0.0, float, "momentum"),
        _WD,
        *SCHEDULE_HPARAMS,
    )

    def __init__(self, hp: dict[str, Any] | None = None):
        super().__init__(hp)
        check_unit_interval(self.hp, "alpha", "momentum")

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(model.parameters(), lr=self.hp["lr"], alpha=self.hp["alpha"],
                                   momentum=self.hp["momentum"],
                                   weight_decay=self.hp["weight_decay"])
