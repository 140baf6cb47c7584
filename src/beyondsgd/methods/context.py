"""What a method may see of the problem it trains on (:class:`TrainContext`), and the one
evaluation function (:func:`evaluate`) that the runner's rows and the methods' own validation
checks share, so a method sees exactly the numbers the store records."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..distributed import all_reduce_sum, local_rows

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# What a method may see of the problem
# --------------------------------------------------------------------------------------------
@dataclass
class TrainContext:
    """Everything a method may need from the problem it trains on.

    ``x_train``/``y_train`` and ``x_val``/``y_val`` are whole tensors on ``device`` (the built-in
    problems fit in memory); ``train_batches(epoch)`` yields the shuffled minibatches of an epoch.
    ``task`` is ``"classification"`` or ``"regression"``.

    Under data parallelism (``world_size > 1``) the tensors are still the *whole* sets on every
    rank, ``train_batches`` yields this rank's slices of the global minibatches, and
    :meth:`local` gives this rank's contiguous slice of any tensor (e.g. to split work that is
    summed over the ranks afterwards).
    """

    device: torch.device
    loss_fn: LossFn
    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    batch_size: int
    epochs: int
    steps_per_epoch: int
    num_classes: int | None = None
    batch_iter: Callable[[int], Iterator[Batch]] | None = None
    seed: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    metric_fn: LossFn | None = None  # batch *sum* of the problem's metric (see :func:`evaluate`)
    #: a streamed problem's whole validation set, in chunks (``x_val``/``y_val`` are then its
    #: first rows only, the method pool): ``val_loss``/``val_metric`` read all of it
    val_batches: Callable[[], Iterator[Batch]] | None = None
    #: whether ``x_train``/``y_train`` and ``x_val``/``y_val`` are a fixed sample (the method
    #: pool of a streamed problem, :mod:`beyondsgd.data.streamed`) rather than the whole sets
    pooled: bool = False

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of the rows of ``x`` (``x`` itself on one process)."""
        return local_rows(x, self.world_size, self.rank)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        if self.batch_iter is None:
            raise RuntimeError("this TrainContext has no batch iterator")
        return self.batch_iter(epoch)

    def evaluate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096
    ) -> float:
        """Mean loss of ``model`` on ``(x, y)`` in eval mode (restores the training mode): the
        loss of :func:`evaluate`, the one implementation the runner's evaluations use too."""
        return evaluate(model, x, y, self.loss_fn, chunk=chunk)[0]

    def _validate(self, model: nn.Module, metric_fn: LossFn | None
                  ) -> tuple[float, float | None]:
        """(loss, metric) on the whole validation set: streamed in chunks, or the tensors."""
        if self.val_batches is not None:
            return evaluate_batches(model, self.val_batches(), self.loss_fn, metric_fn)
        return evaluate(model, self.x_val, self.y_val, self.loss_fn, metric_fn)

    def val_loss(self, model: nn.Module) -> float:
        """Mean validation loss: the number the runner records as ``val_loss`` (over the whole
        validation set, streamed or not)."""
        return self._validate(model, None)[0]

    def val_metric(self, model: nn.Module) -> float:
        """Validation metric (accuracy, or MSE per sample): the runner's ``val_metric``.
        Needs ``metric_fn`` (the runner sets it)."""
        if self.metric_fn is None:
            raise RuntimeError("this TrainContext has no metric_fn")
        return self._validate(model, self.metric_fn)[1]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
             metric_fn: LossFn | None = None, chunk: int = 4096, distributed: bool = False
             ) -> tuple[float, float | None]:
    """``(mean loss, mean metric)`` of ``model`` on the ``n`` rows of ``(x, y)`` in eval mode
    (the training mode is restored). The one evaluation of the package: the runner's recorded
    losses and metrics and :meth:`TrainContext.evaluate` both come from here.

    Over chunks ``c`` of at most ``chunk`` rows, with ``loss_fn`` a batch *mean* and
    ``metric_fn`` a batch *sum* (number correct, summed squared error)::

        loss = (1/n) sum_c |c| * loss_fn(model(x_c), y_c)
        metric = (1/n) sum_c metric_fn(model(x_c), y_c)         (None without metric_fn)

    accumulated in float64 on the tensors' device (one host synchronisation at the end).
    ``distributed=True``: every rank of the initialised ``torch.distributed`` group evaluates
    its contiguous slice of the rows and the sums are all-reduced, so every rank returns the
    numbers of the whole set (every rank must call it).

    >>> m = nn.Linear(2, 1)
    >>> _ = [p.data.zero_() for p in m.parameters()]
    >>> evaluate(m, torch.ones(5, 2), torch.ones(5, 1), nn.functional.mse_loss, chunk=2)
    (1.0, None)
    """
    n = int(x.shape[0])
    if distributed:
        x, y = local_rows(x), local_rows(y)
    chunks = ((x[i:i + chunk], y[i:i + chunk]) for i in range(0, x.shape[0], chunk))
    return _accumulate(model, chunks, loss_fn, metric_fn, x.device, distributed, n)


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn,
                     metric_fn: LossFn | None = None) -> tuple[float, float | None]:
    """:func:`evaluate` over minibatches ``(x_c, y_c)`` (a streamed split: ``n`` is the rows
    seen), with the same sums; given the chunks :func:`evaluate` cuts, the same numbers."""
    return _accumulate(model, batches, loss_fn, metric_fn, None, False, None)


def _accumulate(model: nn.Module, chunks: Iterable[Batch], loss_fn: LossFn,
                metric_fn: LossFn | None, device: torch.device | None, distributed: bool,
                n: int | None) -> tuple[float, float | None]:
    was = model.training
    model.eval()
    sums = None  # loss, metric, rows
    try:
        for xb, yb in chunks:
            if sums is None:
                sums = torch.zeros(3, device=xb.device, dtype=torch.float64)
            out = model(xb)
            sums[0] += loss_fn(out, yb).double() * yb.shape[0]
            if metric_fn is not None:
                sums[1] += metric_fn(out, yb).double()
            sums[2] += yb.shape[0]
    finally:
        model.train(was)
    if sums is None:
        sums = torch.zeros(3, device=device, dtype=torch.float64)
    if distributed:
        all_reduce_sum(sums)
    loss_sum, metric_sum, rows = sums.tolist()
    n = int(rows) if n is None else n
    return loss_sum / max(n, 1), (metric_sum / max(n, 1) if metric_fn is not None else None)
