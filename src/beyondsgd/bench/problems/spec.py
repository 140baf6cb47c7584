"""Your problem's spec: :class:`Problem` (what ``beyondsgd.Problem`` is), its losses and
metrics as the runner evaluates them. The whole story is in :mod:`.user`."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...data.streamed import DEFAULT_POOL, collate_batch
from .registry import accuracy_sum, mse_sum

TASKS = ("classification", "regression")
LOSSES: dict[str, tuple[Callable, str]] = {"cross_entropy": (F.cross_entropy, "classification"),
                                           "mse": (F.mse_loss, "regression")}
METRICS = ("accuracy", "mse")
CHECK_ROWS = 8  # rows of each split the pre-flight forward pass uses
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class ProblemError(ValueError):
    """A problem that cannot run: one line naming it and what is wrong."""


@dataclass(frozen=True)
class Problem:
    """Your problem (module docstring): everything but the training method."""

    name: str
    model: Callable[[int], nn.Module]
    train: Any
    val: Any
    test: Any
    loss: str | Callable = "cross_entropy"
    metric: str | Callable | None = None  # None: accuracy for cross_entropy, else mse
    higher_is_better: bool | None = None  # needed with a callable metric
    task: str | None = None  # needed with a callable loss
    batch_size: int = 128
    epochs: int = 10
    target: float | None = None
    search_space: Mapping[str, Mapping[str, Any]] | None = None
    description: str = ""
    num_workers: int = 0  # DataLoader workers of a streamed problem
    pool: int | None = DEFAULT_POOL  # rows of the method pool, streamed (None: by memory)
    eval_batch_size: int | None = None  # rows per evaluation chunk, streamed (None: by memory)
    train_eval_size: int = 10000  # the training loss is measured on this many first rows
    metric_range: tuple[float, float] | None = None  # values a callable metric can take
    extras: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Problem({self.name!r}, task={self.resolved_task()!r}, epochs={self.epochs})"

    def resolved_task(self) -> str | None:
        if self.task is not None:
            return self.task
        return LOSSES[self.loss][1] if isinstance(self.loss, str) and self.loss in LOSSES \
            else None

    def resolved_metric(self) -> str | Callable:
        """``metric``, or its default: accuracy for classification, else mse."""
        if self.metric is not None:
            return self.metric
        return "accuracy" if self.resolved_task() == "classification" else "mse"


def _is_dataset(d: Any) -> bool:
    return hasattr(d, "__getitem__") and hasattr(d, "__len__") and not isinstance(
        d, (tuple, list, torch.Tensor))


def _first_rows(d: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if _is_dataset(d):
        return collate_batch([d[i] for i in range(min(n, len(d)))])
    x, y = d
    return x[:n], y[:n]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def loss_and_metric(p: Problem) -> tuple[Callable, Callable]:
    """The loss (batch mean) and the metric as a batch *sum* (what the evaluation adds up)."""
    loss = LOSSES[p.loss][0] if isinstance(p.loss, str) else p.loss
    metric = p.resolved_metric()
    if metric == "accuracy":
        return loss, accuracy_sum
    if metric == "mse":
        return loss, mse_sum
    fn = metric

    def metric_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        v = fn(out, y)
        v = v.detach().double() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
        return v.reshape(()) * out.shape[0]
    return loss, metric_sum


def metric_info(p: Problem) -> tuple[str, bool, tuple[float, float]]:
    """(metric name, higher is better, range)."""
    metric = p.resolved_metric()
    if metric == "accuracy":
        return "accuracy", True, (0.0, 1.0)
    if metric == "mse":
        return "mse", False, (0.0, math.inf)
    hib = bool(p.higher_is_better)
    rng = tuple(p.metric_range) if p.metric_range is not None else (
        (0.0, 1.0) if hib else (0.0, math.inf))
    return getattr(metric, "__name__", "metric"), hib, rng


