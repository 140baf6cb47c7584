"""DessiLBI behind the runner's Method interface: the registered ``slbi`` method (SLBI over
``slbi_param_groups(model)``, the support per layer with every evaluation, the selection path as
end-of-epoch events) and the entry-time units of its threshold λ (:func:`entry_lambda`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..base import SCHEDULE_HPARAMS, HParam, OptimizerMethod, TrainContext, register
from . import sparsity
from .groups import slbi_param_groups
from .optimizer import LAMBDA_UNITS, OFFICIAL, SLBI
from .update import COUPLINGS, LAMBDA_SCALINGS


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

    Defaults are the official code (code coupling, α 0.1, κ 1, ν 20, λ 1, momentum 0.9; conv
    weights by filter, every Linear weight element-wise, the classifier included; ``linear=
    "neuron"`` groups hidden Linear weights by neuron instead).
    With ``lambda_unit="entry"`` (default) λ is in entry-time units (``entry_lambda``): the
    selection path keeps its place within an epoch whatever the problem's epoch length and
    whatever α and ν the tuner picks, so tuning α and ν does not also move the path."""

    name = "slbi"
    summary = "DessiLBI: Split LBI with momentum; structural sparsity path (filters/weights)"
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
        HParam("linear", "element", str, "structure of hidden Linear weights ('element': "
               "the official code; 'neuron': rows, for structured pruning)",
               choices=("neuron", "element", "none")),
        HParam("output", "element", str, "structure of the last Linear layer ('element': "
               "the official code, which couples the classifier too)",
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
