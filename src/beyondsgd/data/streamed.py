"""Data that is not held in memory: train/validation/test as ``torch.utils.data.Dataset``s,
served in minibatches by a ``DataLoader``.

:class:`StreamedData` is what a user problem built from ``Dataset``s loads to (a problem built
from tensors loads to the in-memory :class:`beyondsgd.data.Dataset`). It gives the runner what
the in-memory data gives, without reading the whole set into memory:

- **training minibatches** (:meth:`StreamedData.train_batches`): a ``DataLoader`` whose sampler
  is the permutation of epoch ``e`` drawn from ``(seed, e)`` alone, by the very rule of the
  in-memory batches (:func:`beyondsgd.bench.run.trial.epoch_batches`), so the order is
  deterministic per seed, needs no saved state to resume, and does not depend on
  ``num_workers``. A tensor-backed ``Dataset`` therefore trains on exactly the minibatches its
  tensors would. Worker processes (``num_workers``) and pinned memory (on CUDA) are the
  ``DataLoader``'s; batches reach the device with ``non_blocking`` copies.
- **evaluation** (:meth:`StreamedData.eval_batches`): the split in order, in chunks of
  ``eval_batch`` rows, optionally only its first ``limit`` rows (the training loss on a fixed
  subset). By default a chunk holds at most 32 MiB of inputs, at least the training batch and
  at most 4096 rows (the in-memory evaluation's chunk: small inputs give the same sums as in
  memory; larger ones differ from them by float32 round-off only).
- **a method pool** (``x_train``/``y_train``/``x_val``/``y_val``): methods that need data at the
  level of an epoch rather than a minibatch (GDSolver's candidate points and its accept check,
  PHT's epoch-level layer solves, SLBI's sparse-model accuracy, ProxProp's shape probe) get a
  fixed sample of ``pool`` training rows (drawn once with the split seed, the same for every
  trial) and the first ``pool`` validation rows, as tensors. Only these are materialised. By
  default ``pool`` is sized by memory: 32 MiB of inputs per split, at least 256 and at most
  4096 rows (CIFAR-sized images: 2730 rows; 224x224 RGB: 256).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from .datasets import epoch_permutation, fraction_rows, random_rows

DEFAULT_POOL = None  # sized by memory: POOL_BYTES of rows, between POOL_MIN and POOL_MAX
POOL_BYTES, POOL_MIN, POOL_MAX = 32 * 2**20, 256, 4096
EVAL_BATCH = 4096  # the in-memory evaluation's chunk
EVAL_BYTES = 32 * 2**20  # a streamed evaluation reads at most this many bytes of input a chunk


def rows_within(row_bytes: int, budget: int, low: int, high: int) -> int:
    """How many rows of ``row_bytes`` fit in ``budget`` bytes, clamped to [low, high]."""
    return int(min(high, max(low, budget // max(row_bytes, 1))))


def _pair(sample: Any, where: str) -> tuple[Any, Any]:
    if not (isinstance(sample, (tuple, list)) and len(sample) == 2):
        raise ValueError(f"{where} returned {type(sample).__name__}; accepted: a pair (x, y)")
    return sample[0], sample[1]


def collate_batch(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The collate function of every streamed loader: stack ``(x, y)`` samples; integer labels
    become int64 class indices, float targets keep a trailing output axis ((N,) -> (N, 1))."""
    xs, ys = zip(*samples)
    x = torch.stack([torch.as_tensor(v) for v in xs])
    y = torch.stack([torch.as_tensor(v) for v in ys])
    if y.is_floating_point():
        y = y.float()
        if y.dim() == 1:
            y = y[:, None]
    else:
        y = y.long()
    return x.float() if x.is_floating_point() else x, y


@dataclass
class StreamedData:
    """Train/validation/test ``Dataset``s read in minibatches (module docstring).

    ``task`` is ``"classification"`` (labels: integer class indices in ``[0, num_classes)``) or
    ``"regression"`` (float targets of shape ``(outputs,)``). ``num_workers``: the loaders'
    worker processes (0: in this process). ``pool``: rows of the method pool."""

    name: str
    task: str
    train: Any
    val: Any
    test: Any
    num_classes: int | None = None
    num_workers: int = 0
    pool: int | None = DEFAULT_POOL
    eval_batch: int | None = None
    batch_size: int = 1  # the training batch (an evaluation chunk is never smaller)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    info: dict[str, Any] = field(default_factory=dict)
    _pool_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict,
                                                                     repr=False)

    streamed = True  # the runner's switch (the in-memory Dataset has no such attribute)

    # ---- shape -------------------------------------------------------------------------
    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def input_shape(self) -> tuple[int, ...]:
        x, _ = _pair(self.train[0], "train[0]")
        return tuple(torch.as_tensor(x).shape)

    @property
    def output_dim(self) -> int:
        if self.task == "classification":
            return int(self.num_classes)
        _, y = _pair(self.train[0], "train[0]")
        y = torch.as_tensor(y)
        return 1 if y.dim() == 0 else int(y.shape[-1])

    def row_bytes(self) -> int:
        x, _ = _pair(self.train[0], "train[0]")
        x = torch.as_tensor(x)
        return x.numel() * 4  # as float32

    def pool_rows(self) -> int:
        """Rows of the method pool (``pool``, or sized by memory)."""
        if self.pool is not None:
            return self.pool
        return rows_within(self.row_bytes(), POOL_BYTES, POOL_MIN, POOL_MAX)

    def eval_rows(self) -> int:
        """Rows of an evaluation chunk (``eval_batch``, or sized by memory)."""
        if self.eval_batch is not None:
            return self.eval_batch
        return rows_within(self.row_bytes(), EVAL_BYTES, self.batch_size, EVAL_BATCH)

    def sizes(self) -> tuple[int, int, int]:
        return len(self.train), len(self.val), len(self.test)

    # ---- moving and subsetting -----------------------------------------------------------
    def to(self, device: str | torch.device) -> StreamedData:
        """The same data, delivering its batches (and pool) on ``device``."""
        return replace(self, device=torch.device(device), _pool_cache={})

    def subsample_train(self, fraction: float, seed: int = 0) -> StreamedData:
        """Keep a random ``fraction`` of the training rows: the rule of the in-memory
        ``Dataset.subsample_train`` (same rows for the same ``n``, fraction and seed)."""
        idx = fraction_rows(len(self.train), fraction, seed)
        return replace(self, train=Subset(self.train, idx.tolist()),
                       info={**self.info, "train_fraction": fraction}, _pool_cache={})

    # ---- loaders -----------------------------------------------------------------------
    def _loader(self, ds: Any, batch_size: int, order: list[int] | None) -> DataLoader:
        cuda = self.device.type == "cuda"
        return DataLoader(ds, batch_size=batch_size, sampler=order, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate_batch, pin_memory=cuda,
                          persistent_workers=False)

    def _deliver(self, loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        nb = self.device.type == "cuda"
        for x, y in loader:
            yield x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)

    def train_batches(self, batch_size: int, seed: int, epoch: int
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch ``epoch``'s shuffled minibatches (order from ``(seed, epoch)`` alone)."""
        order = epoch_permutation(len(self.train), seed, epoch).tolist()
        return self._deliver(self._loader(self.train, batch_size, order))

    def split(self, name: str) -> Any:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {name!r}")
        return getattr(self, name)

    def eval_batches(self, split: str, limit: int | None = None, batch: int | None = None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split in order (its first ``limit`` rows when given), ``batch`` rows at a time
        (default :meth:`eval_rows`)."""
        ds = self.split(split)
        if limit is not None and limit < len(ds):
            ds = Subset(ds, range(limit))
        return self._deliver(self._loader(ds, batch or self.eval_rows(), None))

    # ---- the method pool -----------------------------------------------------------------
    def _pool_rows(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self._pool_cache:
            ds = self.split(split)
            n = min(self.pool_rows(), len(ds))
            # training: a fixed random sample (the split seed); validation: the first rows
            rows = random_rows(len(ds), n, 0).tolist() if split == "train" else range(n)
            x, y = collate_batch([ds[i] for i in rows])
            self._pool_cache[split] = x.to(self.device), y.to(self.device)
        return self._pool_cache[split]

    @property
    def x_train(self) -> torch.Tensor:
        return self._pool_rows("train")[0]

    @property
    def y_train(self) -> torch.Tensor:
        return self._pool_rows("train")[1]

    @property
    def x_val(self) -> torch.Tensor:
        return self._pool_rows("val")[0]

    @property
    def y_val(self) -> torch.Tensor:
        return self._pool_rows("val")[1]

    def __repr__(self) -> str:
        tr, va, te = self.sizes()
        return (f"StreamedData({self.name!r}, {self.task}, train={tr}, val={va}, test={te}, "
                f"workers={self.num_workers}, pool={self.pool_rows()})")
