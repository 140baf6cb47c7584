"""BPGrad as a registered runner method (``bpgrad``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..base import SCHEDULE_HPARAMS, Batch, HParam, LossFn, OptimizerMethod, register
from .maths import LOSS_ESTIMATES, MOMENTUM_FORMS, NonFiniteLossError
from .optimizer import BPGrad


# --------------------------------------------------------------------------------------------
# The runner method
# --------------------------------------------------------------------------------------------
@register
class BPGradMethod(OptimizerMethod):
    """BPGrad through the runner: one :class:`BPGrad` over all parameters (any layer types).

    ``end_of_epoch`` restarts the running-mean loss estimate (``BPGrad.new_epoch``) and steps
    the optional LR schedule (which scales ``1/L``). Records the last step length and
    ``min f`` with every evaluation.
    """

    name = "bpgrad"
    summary = "step length (f_t - rho*min f)/L along the globally normalised gradient, momentum"
    paper = "Zhang, Wu & Wang, CVPR 2018 (arXiv 1711.06959)"
    hparams = (
        HParam("lipschitz", 10.0, float, "Lipschitz constant L (acts as 1/lr)",
               low=1.0, high=1000.0, log=True, tune=True),
        HParam("rho", 0.1, float, "lower bound factor: f* ~ rho * min f", low=0.0, high=1.0),
        HParam("momentum", 0.9, float, "heavy-ball momentum", low=0.0, high=0.99),
        HParam("weight_decay", 0.0, float, "L2 weight decay, added after the normalisation"),
        HParam("momentum_form", "paper", str, "v=mu*v-eta*d (paper) or s=mu*s-d; x+=eta*s",
               choices=MOMENTUM_FORMS),
        HParam("loss_estimate", "minibatch", str,
               "f_t: minibatch loss or running mean since the epoch start (official)",
               choices=LOSS_ESTIMATES),
        *SCHEDULE_HPARAMS,
    )
    published_defaults = {"lipschitz": 50.0, "rho": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                          "momentum_form": "official", "loss_estimate": "running_mean"}

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        hp = self.hp
        return BPGrad(model.parameters(), lipschitz=hp["lipschitz"], rho=hp["rho"],
                      momentum=hp["momentum"], weight_decay=hp["weight_decay"],
                      momentum_form=hp["momentum_form"], loss_estimate=hp["loss_estimate"],
                      distributed=self.distributed)

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> torch.Tensor:
        """As the base class's. A refused step (:class:`NonFiniteLossError`: NaN/inf loss or
        gradient, nothing changed) returns a non-finite loss (NaN when only the gradient was
        non-finite) instead of raising: the runner sums the epoch's losses and ends the trial
        as ``diverged``, as it does for the baselines whose weights turn NaN. An optimizer
        built with ``on_below_bound="diverge"`` that has ended the run (a loss below its
        ``loss_lower_bound``) returns NaN the same way."""
        try:
            loss = super().train_step(model, batch, loss_fn)
        except NonFiniteLossError as exc:
            bad = exc.loss if not math.isfinite(exc.loss) else math.nan
            return torch.tensor(bad, device=next(model.parameters()).device)
        if self.optimizer.diverged:
            return torch.full_like(loss, math.nan)
        return loss

    def end_of_epoch(self, model: nn.Module, ctx, epoch: int) -> list[dict]:
        self.optimizer.new_epoch()
        return super().end_of_epoch(model, ctx, epoch)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        if self.optimizer is None:
            return {}
        st = self.optimizer.global_state
        if st["step"] == 0:
            return {}
        return {"bpgrad_step_length": float(st["step_length"]), "bpgrad_f_min": float(st["f_min"])}
