"""A trial's data, in memory or streamed: its minibatches, its evaluations and what its
method may see (:class:`TrialData`).

In memory (the built-in problems, a user's tensors): the minibatches of
:func:`~beyondsgd.bench.run.trial.epoch_batches`, evaluations by
:func:`~beyondsgd.methods.base.evaluate` (split over the ranks under data parallelism). Streamed
(a user's ``Dataset``\\ s, :mod:`beyondsgd.data.streamed`): the same minibatch order rule through a
``DataLoader``, evaluations over every row in chunks (every rank reads the whole split: there
are no rows in memory to split), and the method pool as ``x_train``/``y_train``/``x_val``/
``y_val``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ...methods import TrainContext
from ...methods.base import Batch, evaluate, evaluate_batches
from ..problems import Problem
from .trial import epoch_batches


class TrialData:
    """``data`` (a ``Dataset`` of tensors or ``StreamedData``, on the trial's device) as the
    runner reads it for ``prob`` and ``seed``."""

    def __init__(self, prob: Problem, data: Any, seed: int, distributed: bool):
        self.prob, self.data, self.seed, self.dp = prob, data, seed, distributed
        self.streamed = bool(getattr(data, "streamed", False))
        self.n_train = data.n_train if self.streamed else data.x_train.shape[0]
        self.n_eval = min(prob.train_eval_size, self.n_train)  # the training-loss subset
        self.steps_per_epoch = math.ceil(self.n_train / prob.batch_size)

    def global_batches(self, epoch: int) -> Iterator[Batch]:
        """Epoch ``epoch``'s minibatches (global, before a rank takes its slice)."""
        d, bs = self.data, self.prob.batch_size
        if self.streamed:
            return d.train_batches(bs, self.seed, epoch)
        return epoch_batches(d.x_train, d.y_train, bs, self.seed, epoch)

    def measure(self, model, split: str) -> tuple[float, float | None]:
        """(mean loss, mean metric) of ``model`` on the training subset, ``val`` or ``test``."""
        d, p = self.data, self.prob
        if self.streamed:
            limit = self.n_eval if split == "train" else None
            return evaluate_batches(model, d.eval_batches(split, limit), p.loss_fn, p.metric_fn)
        x, y = {"train": (d.x_train[:self.n_eval], d.y_train[:self.n_eval]),
                "val": (d.x_val, d.y_val), "test": (d.x_test, d.y_test)}[split]
        return evaluate(model, x, y, p.loss_fn, p.metric_fn, distributed=self.dp)

    def context(self, device, epochs: int, batch_iter, rank: int, world: int) -> TrainContext:
        """What the method may see (``TrainContext``); streamed: the pool and a full-validation
        evaluator."""
        d, p = self.data, self.prob
        return TrainContext(
            device=device, loss_fn=p.batch_loss, task=p.task, x_train=d.x_train,
            y_train=d.y_train, x_val=d.x_val, y_val=d.y_val, batch_size=p.batch_size,
            epochs=epochs, steps_per_epoch=self.steps_per_epoch, num_classes=d.num_classes,
            batch_iter=batch_iter, seed=self.seed, extras={"problem": p.name}, rank=rank,
            world_size=world, metric_fn=p.metric_fn,
            val_batches=(lambda: d.eval_batches("val")) if self.streamed else None,
            pooled=self.streamed)
