r"""GDSolver as a Lightning callback: GD by your optimizer, a MILP on the last layer between epochs.

GDSolver (Ashok, Nagisetty, Srinivasa & Ganesh, IJCAI-22, Sec. 3, Algorithm 1) alternates a GD
phase with a solver phase. Lightning runs the GD phase with whatever optimizer
``configure_optimizers`` returns (our defaults assume SGD at lr 0.1, SGD's default; the paper's
is SGD, lr 0.05, no momentum); this callback adds the solver phase exactly as the registered
method ``gdsolver`` does it (``GDSolverMethod.end_of_epoch``):

1. once per training epoch, after its last batch, the validation loss
   :math:`v_e` of the model on the **validation dataloader** feeds the plateau counter
   (:class:`~beyondsgd.methods.gdsolver.points.PlateauDetector`: ``patience`` epochs with
   :math:`v_e \ge \text{best} - \text{min\_delta}`, the official early stopping);
2. at a plateau, after epochs ``floor(max_epochs * i / solves_per_run)`` (default 4 solves per
   run) or every ``solve_every`` epochs, one
   :meth:`GDSolver.step <beyondsgd.methods.gdsolver.solver.GDSolver.step>`: the MILP/LP over the
   last ``nn.Linear`` on training points, the new head **kept only if it raises the validation
   accuracy** (ties: lower validation loss; regression: lower validation error), else restored;
3. the next plateau solve waits ``patience * backoff**solves`` epochs (geometric GD phases),
   within the budgets ``max_solves`` and ``solver_seconds``.

When it runs: at the start of the validation that closes the epoch (so the epoch's validation
metrics and the checkpoint that ``ModelCheckpoint`` writes after it already include the solve,
as in the benchmark runner: end of epoch, then evaluation, then checkpoint), or at
``on_train_epoch_end`` when no validation ran after the epoch's last batch. The sanity check is
skipped. The training and validation rows are read once from the trainer's dataloaders in
dataset order (:func:`~beyondsgd.integrations.lightning.data.materialize`; they must fit in
memory, and the training rows are not augmented differently per epoch). Under DDP each rank
keeps its contiguous slice and :class:`GDSolver` gathers the points on rank 0 (untested under
Lightning).

Logged with ``pl_module.log_dict`` at each epoch end (through the trainer's logger):
``gdsolver/solves``, ``gdsolver/accepted`` and, for an epoch with a solve, ``gdsolver/solved``,
``gdsolver/val_acc_before|after``, ``gdsolver/val_loss_before|after``,
``gdsolver/solve_seconds``. Every event dict is kept in ``callback.events`` (with ``epoch``).
The callback's state (plateau counter, counts, seconds) is saved in Lightning checkpoints.

Example (see ``docs/integrations/lightning/gdsolver_digits.py``)::

    trainer = pl.Trainer(max_epochs=20, callbacks=[GDSolverCallback(radius=0.05)])
    trainer.fit(model, train_dl, val_dl)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...distributed import local_rows
from ...methods.gdsolver import GDSolverMethod, make_solver, run_solve
from ...methods.gdsolver.points import PlateauDetector, backoff_patience, scheduled
from ...methods.gdsolver.solver import GDSolver
from ._pl import pl
from .data import materialize

__all__ = ["GDSolverCallback"]

# the hyperparameters the callback shares with the registered method (same names, defaults and
# checks); lr / optimizer / momentum / schedule belong to configure_optimizers
_SHARED = ("preset", "radius", "box", "patience", "min_delta", "objective", "n_points",
           "selection", "time_limit", "node_limit", "check_limit", "iteration_limit", "mip_gap",
           "threads", "margin", "norm", "min_gain", "keep_worse", "max_solves", "solver_seconds",
           "solves_per_run", "solve_every", "backoff")


class GDSolverCallback(pl.Callback):
    """The GDSolver solver phase for ``trainer.fit(model, train_dl, val_dl)`` (see the module
    docstring).

    Args:
        module: the attribute of the LightningModule that is the network (e.g. ``"net"``);
            default the LightningModule itself. Its output must be the last ``nn.Linear``'s.
        head, task, loss_fn, seed: as :class:`~beyondsgd.methods.gdsolver.solver.GDSolver`
            (``loss_fn``: the validation loss; default cross-entropy / MSE by task).
        batch_to_xy: ``fn(batch) -> (x, y)`` for batches that are not ``(x, y, ...)`` tuples.
        **hparams: the registered method's solver settings, same names and defaults
            (``beyondsgd list``): ``preset`` "ours" ("published": the official recipe,
            ``GDSolverMethod.published_defaults``; its SGD lr 0.05 is configure_optimizers'
            business), ``radius`` 0.05, ``box`` "fit", ``patience`` 2, ``min_delta`` 0,
            ``objective`` "paper", ``n_points`` -1 (auto), ``selection`` "margin",
            ``time_limit`` 30 (a safety net), ``node_limit`` 100, ``check_limit`` 200,
            ``iteration_limit`` 100000, ``mip_gap`` 1e-4, ``threads`` 1, ``margin`` 1e-4,
            ``norm`` "l1", ``min_gain`` 0, ``keep_worse`` False, ``max_solves`` 0,
            ``solver_seconds`` 600, ``solves_per_run`` 4 (needs ``Trainer(max_epochs=...)``),
            ``solve_every`` 0, ``backoff`` 2.
    """

    def __init__(self, module: str | None = None, head: nn.Linear | str | None = None,
                 task: str | None = None, loss_fn: Any = None, seed: int = 0,
                 batch_to_xy: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 **hparams: Any):
        unknown = sorted(set(hparams) - set(_SHARED))
        if unknown:
            raise ValueError(f"GDSolverCallback has no setting {', '.join(map(repr, unknown))}; "
                             f"accepted: {', '.join(_SHARED)} (the optimizer and its lr belong to "
                             "configure_optimizers)")
        self.hp = {k: v for k, v in GDSolverMethod(hparams).hp.items() if k in _SHARED}
        self.module, self.head, self.task = module, head, task
        self.loss_fn, self.seed, self.batch_to_xy = loss_fn, seed, batch_to_xy
        self.solver: GDSolver | None = None
        self.plateau = PlateauDetector(self.hp["patience"], self.hp["min_delta"])
        self.solves = self.accepted = self.time_limited = 0
        self.seconds_used = 0.0
        self.events: list[dict[str, Any]] = []
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None
        self._epoch_done = self._ran = False
        self._pending: dict[str, Any] | None = None
        self._solver_calls = 0

    # ---- set-up ------------------------------------------------------------------------------
    def _network(self, pl_module: nn.Module) -> nn.Module:
        if self.module is None:
            return pl_module
        net = getattr(pl_module, self.module, None)
        if not isinstance(net, nn.Module):
            raise ValueError(f"GDSolverCallback(module={self.module!r}): the LightningModule has "
                             f"no nn.Module attribute {self.module!r}")
        return net

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        hp = self.hp
        self.solver = make_solver(self._network(pl_module), hp, head=self.head, task=self.task,
                                  loss_fn=self.loss_fn, seed=self.seed,
                                  distributed=trainer.world_size > 1)
        self.solver.n_solves = self._solver_calls
        self.plateau.patience = backoff_patience(hp["patience"], hp["backoff"], self.solves)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.val_dataloaders is None:  # not loaded yet without a sanity check
            val_loop = getattr(trainer.fit_loop.epoch_loop, "val_loop", None)
            try:
                val_loop.setup_data()
            except Exception:  # noqa: BLE001 - no validation data: refused just below
                pass
        if not trainer.val_dataloaders:
            raise ValueError("GDSolverCallback decides on the validation split: pass a "
                             "validation dataloader, trainer.fit(model, train_dl, val_dl)")

    def _rows(self, trainer: Any, pl_module: Any) -> None:
        if self._train is not None:
            return
        val = trainer.val_dataloaders
        val = val[0] if isinstance(val, (list, tuple)) else val
        train = trainer.train_dataloader
        device = pl_module.device
        world, rank = trainer.world_size, trainer.global_rank
        parts = []
        for loader in (train, val):  # each rank keeps its slice (GDSolver gathers them)
            x, y = materialize(loader, device, self.batch_to_xy)
            parts.append((local_rows(x, world, rank), local_rows(y, world, rank)))
        self._train, self._val = parts
        self.solver.check_targets(self._train[1])

    # ---- when -------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._epoch_done = self._ran = False
        self._pending = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n = trainer.num_training_batches
        if isinstance(n, int) and batch_idx + 1 >= n:
            self._epoch_done = True

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not self._epoch_done \
                or self._ran:
            return
        self._end_of_epoch(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._ran:
            self._end_of_epoch(trainer, pl_module)
        ev = self._pending
        logs = {"gdsolver/solves": float(self.solves), "gdsolver/accepted": float(self.accepted),
                "gdsolver/time_limited": float(self.time_limited)}
        if ev is not None:
            logs["gdsolver/solved"] = 1.0
            logs["gdsolver/accepted_now"] = float(ev["accepted"])
            logs["gdsolver/solve_seconds"] = float(ev["solve_seconds"] + ev["build_seconds"])
            for key in ("val_loss_before", "val_loss_after", "val_acc_before", "val_acc_after"):
                if ev.get(key) is not None:
                    logs[f"gdsolver/{key}"] = float(ev[key])
        pl_module.log_dict(logs, on_step=False, on_epoch=True)

    # ---- what: GDSolverMethod.end_of_epoch without the LR schedule ----------------------------
    def _end_of_epoch(self, trainer: Any, pl_module: Any) -> None:
        self._ran = True
        self._rows(trainer, pl_module)
        epoch = trainer.current_epoch
        val, _ = self.solver.validate(*self._val)
        plateau = self.plateau.update(val)
        epochs = trainer.max_epochs if (trainer.max_epochs or 0) > 0 else None
        if not (plateau or scheduled(self.hp, epoch, epochs)):
            return
        ev = run_solve(self, val, *self._train, *self._val)
        if ev is None:
            return
        ev.update(trigger="plateau" if plateau else "schedule", epoch=epoch)
        self.events.append(ev)
        self._pending = ev

    # ---- checkpoint ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"plateau": self.plateau.state_dict(), "solves": self.solves,
                "accepted": self.accepted, "seconds_used": self.seconds_used,
                "time_limited": self.time_limited,
                "solver_calls": self.solver.n_solves if self.solver else self._solver_calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau.load_state_dict(state["plateau"])
        self.solves, self.accepted = int(state["solves"]), int(state["accepted"])
        self.time_limited = int(state.get("time_limited", 0))
        self.seconds_used = float(state["seconds_used"])
        self._solver_calls = int(state["solver_calls"])
        self.plateau.patience = backoff_patience(self.hp["patience"], self.hp["backoff"],
                                                 self.solves)
        if self.solver is not None:
            self.solver.n_solves = self._solver_calls
