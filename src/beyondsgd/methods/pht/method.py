"""Runner integration: the registered methods ``pht_alt``, ``pht_sgd`` and ``pht_adam``.

The runner builds models with ReLU; each method's ``prepare`` swaps in PHT with :func:`pht`.
Data parallelism: masks are per sample, so each rank records and freezes the supports of its own
samples and DDP averages the gradients of the K frozen-support steps; per-step layer solves
(``layer_solve_on="step"``) gather the global minibatch and its masks and solve identically on
every rank; per-epoch solves run on the whole training set on every rank.

Streamed problems (``ctx.pooled``: the data is a ``Dataset`` read in minibatches): the K steps
and per-step solves use the minibatches as always; per-epoch layer solves run on the method pool
(a fixed sample of the training rows, :mod:`beyondsgd.data.streamed`) instead of the whole set;
``refresh="epoch"`` (one mask per training row) is refused.

``layer_solve`` / ``layer_solve_on`` were called ``exact`` / ``exact_on`` until issue 22 (the
cross-entropy solve is ``solver_iters`` L-BFGS iterations, not an exact minimiser): the old
names are accepted with a ``DeprecationWarning`` and trial keys still hash the old names, so
stored trials keep their keys. The per-epoch events are ``layer_solve`` (were ``exact_solve``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ... import distributed as D
from ..base import (
    SCHEDULE_HPARAMS,
    Batch,
    HParam,
    LossFn,
    Method,
    TrainContext,
    make_scheduler,
    register,
)
from ..baselines import SGD as _SGDMethod
from ..baselines import Adam as _AdamMethod
from ..baselines import check_unit_interval
from .activation import DEFAULT_TAU, _check_tau, pht
from .alternating import Alternating
from .solvers import solvable_layers


# --------------------------------------------------------------------------------------------
# Runner integration
# --------------------------------------------------------------------------------------------
class _RowIndex:
    """Finds the rows of a training tensor that a minibatch consists of (exact integer hashing of
    the float bits, verified), so per-epoch supports can be looked up from the runner's batches."""

    def __init__(self, x: torch.Tensor, chunk: int = 8192):
        self.x = x
        gen = torch.Generator().manual_seed(12345)
        width = x[0].numel()
        self.r = torch.randint(1, 2**20, (width,), generator=gen, dtype=torch.int64).to(
            x.device)
        keys = torch.cat([self._keys(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
        self.sorted, self.order = torch.sort(keys)

    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        bits = x.reshape(x.shape[0], -1).float().contiguous().view(torch.int32).to(torch.int64)
        # |bits| < 2^31 and r < 2^20: each term < 2^51, so sums of < 4096 terms stay exact
        return (bits * self.r).sum(1)

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        keys = self._keys(xb)
        pos = torch.searchsorted(self.sorted, keys).clamp_max(self.sorted.numel() - 1)
        idx = self.order[pos]
        if not torch.equal(self.x[idx], xb):
            raise ValueError(
                "refresh='epoch' looks the minibatch rows up in ctx.x_train, and some rows were "
                "not found there (augmented or foreign batches?); use refresh='minibatch'"
            )
        return idx


def _make_inner(name: str, params: Iterator[nn.Parameter], hp: dict[str, Any]
                ) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    if name == "momentum":
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"],
                               weight_decay=hp["weight_decay"])
    if name == "adam":
        # foreach: one multi-tensor kernel per Adam operation instead of a Python loop over
        # the parameter tensors; bit-identical to the default single-tensor loop on CPU
        # (tests/test_pht.py pins a run); fused=True would be faster still but rounds
        # differently
        return torch.optim.Adam(params, lr=hp["lr"], weight_decay=hp["weight_decay"],
                                foreach=True)
    raise ValueError(f"inner optimizer must be 'sgd', 'momentum' or 'adam', got {name!r}")


_TAU = HParam("tau", DEFAULT_TAU, float, "PHT threshold (>= 0; 0 equals ReLU)", low=0.0,
              high=1.0)


@register
class PHTAlternation(Method):
    """PHT alternation (reconstruction): support step, then K frozen-support optimizer steps
    (Adam by default); optional single-layer solves under frozen support (``layer_solve``:
    the exact least-squares minimiser for MSE on a Linear layer, ``solver_iters`` = 20 damped
    L-BFGS iterations otherwise, which stop short of the optimum: measured 9-16 % above it on
    mnist1d_mlp) per epoch or per step, each kept only when the real network's loss on the
    solve's data does not rise. Each per-epoch ``layer_solve`` event also carries
    ``loss_previous_solve``, the training loss right after the previous epoch's solves: the K
    steps in between can raise it (docs/methods/pht.md, "Between solves")."""

    name = "pht_alt"
    summary = ("PHT network trained by alternating supports and weights (K frozen-support "
               "steps + single-layer solves); reconstruction from the abstract")
    paper = "Huang, Kong & Lucey, arXiv:1712.02501 (2017)"
    hparams = (
        HParam("lr", 1e-3, float, "inner optimizer learning rate (the default suits "
               "inner=adam; with inner=sgd lr 0.1 diverges on diabetes_mlp and 0.01 on 1 of 10 "
               "seeds)", low=1e-5, high=1e-1, log=True, tune=True),
        HParam("inner", "adam", str, "optimizer of the weight step (adam: the one default "
               "that trains every registered problem, measured)",
               choices=("sgd", "momentum", "adam")),
        HParam("momentum", 0.9, float, "momentum for inner=momentum"),
        HParam("weight_decay", 0.0, float, "L2 weight decay of the inner optimizer"),
        HParam("inner_steps", 5, int, "K: optimizer steps per support step", low=1, high=50),
        _TAU,
        HParam("refresh", "minibatch", str, "support refresh: per minibatch or per epoch "
               "(per-epoch caches the masks of the whole training set)",
               choices=("minibatch", "epoch")),
        HParam("max_mask_mb", 1024.0, float, "refuse per-epoch refresh beyond this many MiB"),
        HParam("layer_solve", "last", str, "single-layer solves under frozen support (lstsq "
               "for MSE on Linear, else solver_iters L-BFGS iterations); was 'exact'",
               choices=("none", "last", "all")),
        HParam("layer_solve_on", "epoch", str, "layer solves on the whole training set after "
               "each epoch, or on each minibatch after the K steps; was 'exact_on'",
               choices=("epoch", "step")),
        HParam("solver", "auto", str, "layer solver (auto: lstsq for MSE Linear, else L-BFGS)",
               choices=("auto", "lstsq", "lbfgs")),
        HParam("solver_iters", 20, int, "L-BFGS iterations per layer solve"),
        HParam("damping", 1e-3, float, "proximal weight lambda of the layer solves "
               "(lambda/2 ||theta - theta_0||^2; use > 0 with layer_solve_on=step)"),
        *SCHEDULE_HPARAMS,
    )
    renamed_hparams = {"exact": "layer_solve", "exact_on": "layer_solve_on"}

    def __init__(self, hp: dict[str, Any] | None = None):
        super().__init__(hp)
        if self.hp["inner_steps"] < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.hp['inner_steps']}")
        _check_tau(self.hp["tau"])
        if self.hp["lr"] <= 0:
            raise ValueError(f"lr must be > 0, got {self.hp['lr']}")
        check_unit_interval(self.hp, "momentum")  # inner=momentum's, checked whatever the inner
        if self.hp["damping"] < 0 or self.hp["max_mask_mb"] < 0 or self.hp["solver_iters"] < 1:
            raise ValueError("damping and max_mask_mb must be >= 0 and solver_iters >= 1, got "
                             f"{self.hp['damping']}, {self.hp['max_mask_mb']}, "
                             f"{self.hp['solver_iters']}")
        self.alt: Alternating | None = None
        self.scheduler = None
        self.rows: _RowIndex | None = None
        self._model: nn.Module | None = None
        self.distributed = False  # data parallel (ctx.world_size > 1), set by prepare
        self._loss_after_solve: float | None = None  # training loss after the last solves

    def prepare(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        self.distributed = ctx.world_size > 1
        model = pht(model, self.hp["tau"])
        opt = _make_inner(self.hp["inner"], model.parameters(), self.hp)
        loss = "mse" if ctx.task == "regression" else "cross_entropy"
        self.alt = Alternating(model, opt, loss, self.hp["inner_steps"],
                               int(self.hp["max_mask_mb"] * 2**20))
        self.scheduler = make_scheduler(opt, self.hp, ctx.epochs)
        self._model = model
        if self.hp["layer_solve"] != "none" and not solvable_layers(model):
            raise ValueError(f"layer_solve={self.hp['layer_solve']!r}: this model has no "
                             f"solvable layer (a Linear/Conv followed only by modules linear "
                             f"under frozen support); use layer_solve='none'")
        if self.hp["refresh"] == "epoch" and ctx.pooled:
            raise ValueError("refresh='epoch' keeps one support mask per training row, and a "
                             "streamed problem holds only a sample of its rows; use "
                             "refresh='minibatch' (the default)")
        if self.hp["refresh"] == "epoch":
            self.alt.refresh(ctx.x_train)  # refuses clearly when the masks do not fit
            self.rows = _RowIndex(ctx.x_train)
        return model

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> torch.Tensor:
        x, y = batch
        index = self.rows(x) if self.rows is not None else None
        loss = self.alt.step(x, y, index, model=model, loss_fn=loss_fn)
        if self.hp["layer_solve"] != "none" and self.hp["layer_solve_on"] == "step":
            masks = self.alt.last_masks
            if self.distributed:  # solve on the global batch, identically on every rank
                x, y = D.all_gather_rows(x), D.all_gather_rows(y)
                masks = [D.all_gather_rows(m) for m in masks]
            self.alt.solve(x, y, self.hp["layer_solve"], masks=masks,
                           solver=self.hp["solver"], iters=self.hp["solver_iters"],
                           damping=self.hp["damping"])
        return loss

    def end_of_epoch(self, model: nn.Module, ctx: TrainContext, epoch: int) -> list[dict]:
        events: list[dict] = []
        if self.hp["layer_solve"] != "none" and self.hp["layer_solve_on"] == "epoch":
            infos = self.alt.solve(ctx.x_train, ctx.y_train, self.hp["layer_solve"],
                                   solver=self.hp["solver"], iters=self.hp["solver_iters"],
                                   damping=self.hp["damping"])
            for info in infos:
                # the training loss right after the previous epoch's solves: compared with
                # this epoch's loss_before it shows what the K steps in between did to it
                events.append({"kind": "layer_solve", **info,
                               "loss_previous_solve": self._loss_after_solve})
            if infos:
                self._loss_after_solve = infos[-1]["loss_after"]
        if self.hp["refresh"] == "epoch":
            events.append({"kind": "support_refresh",
                           **self.alt.refresh(ctx.x_train)})
        if self.scheduler is not None:
            self.scheduler.step()
        return events

    def metrics(self, model: nn.Module) -> dict[str, float]:
        if self.alt is None or self.alt.density is None:
            return {}
        return {"support_density": float(self.alt.density)}

    def state_dict(self) -> dict[str, Any]:
        state = self.alt.state_dict()
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        state["loss_after_solve"] = self._loss_after_solve
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alt.load_state_dict(state)
        self._loss_after_solve = state.get("loss_after_solve")
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])


_LEARN_TAU = HParam("learnable_tau", False, bool, "learn tau (surrogate gradient)")


@register
class PHTSGD(_SGDMethod):
    """Plain SGD on a PHT network (the activation alone, no alternation)."""

    name = "pht_sgd"
    summary = "PHT network (ReLUs swapped for positive hard-thresholding) trained by plain SGD"
    paper = "Huang, Kong & Lucey, arXiv:1712.02501 (2017) (activation only)"
    hparams = (*_SGDMethod.hparams, _TAU, _LEARN_TAU)

    def prepare(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        return super().prepare(pht(model, self.hp["tau"], self.hp["learnable_tau"]), ctx)


@register
class PHTAdam(_AdamMethod):
    """Adam on a PHT network (the activation alone, no alternation)."""

    name = "pht_adam"
    summary = "PHT network (ReLUs swapped for positive hard-thresholding) trained by Adam"
    paper = "Huang, Kong & Lucey, arXiv:1712.02501 (2017) (activation only)"
    hparams = (*_AdamMethod.hparams, _TAU, _LEARN_TAU)

    def prepare(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        return super().prepare(pht(model, self.hp["tau"], self.hp["learnable_tau"]), ctx)
