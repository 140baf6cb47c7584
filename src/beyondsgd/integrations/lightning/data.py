"""Whole tensors from a Lightning dataloader, for the epoch-level steps (GDSolver's solve, PHT's
per-epoch layer solve) that work on a whole split, as the benchmark runner's ``TrainContext``
gives them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader

__all__ = ["default_xy", "materialize"]


def default_xy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a batch that is a tuple/list whose first two items are the inputs and the
    targets (a ``TensorDataset``'s batches), or a dict with keys ``"x"`` and ``"y"``."""
    if isinstance(batch, dict) and "x" in batch and "y" in batch:
        return batch["x"], batch["y"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(f"cannot read (x, y) from a batch of type {type(batch).__name__}; pass "
                     "batch_to_xy=fn with fn(batch) -> (inputs, targets)")


def _sequential(loader: Iterable) -> Iterable:
    """The same rows in dataset order: a ``DataLoader`` is rebuilt without shuffling and without
    workers (so no random state is consumed and the rows come in a fixed order); any other
    iterable is used as it is."""
    if not isinstance(loader, DataLoader):
        return loader
    if loader.batch_size is None:  # a batch_sampler: keep its batches
        return DataLoader(loader.dataset, batch_sampler=loader.batch_sampler,
                          collate_fn=loader.collate_fn)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False,
                      collate_fn=loader.collate_fn, drop_last=False)


@torch.no_grad()
def materialize(
    loader: Iterable,
    device: torch.device | str = "cpu",
    batch_to_xy: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All rows of ``loader`` as two tensors ``(x, y)`` on ``device``, in dataset order.

    A ``DataLoader`` is read again without shuffling (see :func:`_sequential`), so reading it
    does not change the training run's random state. The rows must fit in memory.

    Example::

        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = TensorDataset(torch.arange(10.).reshape(5, 2), torch.arange(5))
        >>> x, y = materialize(DataLoader(ds, batch_size=2, shuffle=True))
        >>> y.tolist()
        [0, 1, 2, 3, 4]
    """
    split = batch_to_xy or default_xy
    xs, ys = [], []
    for batch in _sequential(loader):
        x, y = split(batch)
        xs.append(torch.as_tensor(x))
        ys.append(torch.as_tensor(y))
    if not xs:
        raise ValueError("the dataloader yielded no batches")
    return torch.cat(xs).to(device), torch.cat(ys).to(device)
