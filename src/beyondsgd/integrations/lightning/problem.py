"""A ``LightningDataModule`` (and a ``LightningModule``) as a benchmark problem.

:func:`problem_from_datamodule` turns the data of a DataModule and a model into a
:class:`beyondsgd.Problem` that ``beyondsgd bench --problem my_file.py:problem`` (or ``train``,
``suite --problems``, :func:`beyondsgd.bench.compare`) runs like any other problem.

**Datasets, not loaders.** The DataModule's ``prepare_data()`` and ``setup("fit")`` /
``setup("test")`` are called, and the *Datasets* behind ``train_dataloader()``,
``val_dataloader()`` and ``test_dataloader()`` (their ``.dataset``) become the problem's splits.
The loaders themselves are not used: the benchmark draws its own minibatch order, a
permutation per seed and epoch (:mod:`beyondsgd.data.streamed`), so that every method sees the
same batches and a trial can resume; the loader's shuffling, sampler and ``collate_fn`` are
therefore ignored, and each dataset item must be an ``(x, y)`` pair. Only the loaders'
``batch_size`` and ``num_workers`` are taken, when not given here.

**Model.** ``model`` is a function ``seed -> nn.Module``, or a ``LightningModule`` class (or
any function of no arguments returning a ``LightningModule``), wrapped by
:func:`model_from_lightning`: the module itself is the network (its ``forward`` must map a
batch of inputs to outputs ``(batch, outputs)``); its ``training_step`` and
``configure_optimizers`` are not used, the training method is the benchmark's.

Example (runnable)::

    >>> import torch, pytorch_lightning as pl
    >>> from torch import nn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from beyondsgd.integrations.lightning import problem_from_datamodule
    >>> class Data(pl.LightningDataModule):
    ...     def setup(self, stage=None):
    ...         g = torch.Generator().manual_seed(0)
    ...         self.sets = [TensorDataset(torch.randn(n, 8, generator=g),
    ...                                    torch.randint(0, 3, (n,), generator=g))
    ...                      for n in (96, 32, 32)]
    ...     def train_dataloader(self):
    ...         return DataLoader(self.sets[0], batch_size=16, shuffle=True)
    ...     def val_dataloader(self):
    ...         return DataLoader(self.sets[1], batch_size=16)
    ...     def test_dataloader(self):
    ...         return DataLoader(self.sets[2], batch_size=16)
    >>> class Net(pl.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    ...     def forward(self, x):
    ...         return self.net(x)
    >>> problem = problem_from_datamodule("tiny_dm", Data(), Net, epochs=2)
    >>> problem.batch_size, len(problem.train)
    (16, 96)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...bench.problems.user import Problem, ProblemError

__all__ = ["model_from_lightning", "problem_from_datamodule"]

SPLITS = (("train", "train_dataloader"), ("val", "val_dataloader"), ("test", "test_dataloader"))


def model_from_lightning(factory: Callable[[], nn.Module], attr: str | None = None
                         ) -> Callable[[int], nn.Module]:
    """A model factory ``seed -> nn.Module`` from ``factory`` (a ``LightningModule`` class, or
    a function of no arguments returning one): ``torch.manual_seed(seed)``, ``factory()``, its
    ``configure_model()`` when it defines one (Lightning's hook for building layers late), then
    the module itself, or its attribute ``attr`` (e.g. ``"net"``) when given."""
    def model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        module = factory()
        hook = getattr(module, "configure_model", None)
        if callable(hook):
            hook()
        return module if attr is None else getattr(module, attr)

    model.__name__ = f"model_from_lightning({getattr(factory, '__name__', 'factory')})"
    return model


def _dataset(datamodule: Any, hook: str) -> tuple[Any, Any, str]:
    """(dataset, loader, "") of ``datamodule.<hook>()``, or (None, None, why not)."""
    fn = getattr(datamodule, hook, None)
    if not callable(fn):
        return None, None, f"no {hook}()"
    try:
        loader = fn()
    except Exception as exc:  # Lightning's default hooks raise when not implemented
        return None, None, f"{hook}() raised {type(exc).__name__}: {str(exc).strip()[:120]}"
    if isinstance(loader, (list, tuple)) and len(loader) == 1:
        loader = loader[0]
    ds = getattr(loader, "dataset", None)
    if ds is None:
        return None, None, f"{hook}() returned a {type(loader).__name__}, not one DataLoader"
    if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
        return None, None, (f"{hook}() is over a {type(ds).__name__}, not a map-style Dataset "
                            "(__getitem__ and __len__)")
    return ds, loader, ""


def problem_from_datamodule(
    name: str,
    datamodule: Any,
    model: Callable[[int], nn.Module] | type,
    *,
    loss: str | Callable = "cross_entropy",
    metric: str | Callable | None = None,
    higher_is_better: bool | None = None,
    task: str | None = None,
    batch_size: int | None = None,
    epochs: int = 10,
    target: float | None = None,
    search_space: dict | None = None,
    num_workers: int | None = None,
    test_from: str | None = None,
    **kw: Any,
) -> Problem:
    """The :class:`~beyondsgd.Problem` ``name`` on ``datamodule``'s datasets (module
    docstring). ``batch_size``/``num_workers``: the training loader's when ``None``.
    ``test_from="val"``: a DataModule without a test set is tested on its validation set
    (said in the problem's description). The other arguments, and ``**kw`` (``description``,
    ``pool``, ``train_eval_size``, ``metric_range``, ...), are :class:`Problem`'s. A DataModule
    that cannot give all three splits is refused with one :class:`ProblemError` (a
    ``ValueError``) naming it and what is missing."""
    dm = type(datamodule).__name__
    if test_from not in (None, "val"):
        raise ProblemError(f"problem {name}: test_from={test_from!r}; accepted: None or 'val'")
    if callable(getattr(datamodule, "prepare_data", None)):
        datamodule.prepare_data()
    failed = {}
    for stage in ("fit", "test"):  # a module may implement only some stages
        try:
            datamodule.setup(stage)
        except Exception as exc:
            failed[stage] = f"setup({stage!r}) raised {type(exc).__name__}: {exc}"
    sets, loaders, missing = {}, {}, []
    for split, hook in SPLITS:
        if split == "test" and test_from == "val":
            continue
        sets[split], loaders[split], why = _dataset(datamodule, hook)
        if why:
            stage = "test" if split == "test" else "fit"
            missing.append(why + (f" (after {failed[stage]})" if stage in failed else ""))
    if missing:
        hint = ("; without a test set, pass test_from='val' to test on the validation set"
                if test_from is None and any("test_dataloader" in m for m in missing) else "")
        raise ProblemError(
            f"problem {name}: datamodule {dm} gives no usable dataset: {'; '.join(missing)}. "
            "Accepted: train_dataloader(), val_dataloader() and test_dataloader() each returning "
            f"a DataLoader over a map-style Dataset of (x, y) pairs{hint}")
    description = kw.pop("description", "") or f"LightningDataModule {dm}" + (
        " (tested on its validation set)" if test_from == "val" else "")
    if test_from == "val":
        sets["test"] = sets["val"]
    train = loaders["train"]
    if batch_size is None:
        batch_size = train.batch_size or getattr(train.batch_sampler, "batch_size", None)
        if batch_size is None:
            raise ProblemError(f"problem {name}: datamodule {dm}'s train_dataloader() has no "
                               "batch_size (a custom batch_sampler); pass batch_size=")
    if num_workers is None:
        num_workers = int(getattr(train, "num_workers", 0) or 0)
    if isinstance(model, type) and issubclass(model, nn.Module):
        model = model_from_lightning(model)
    extras = {"lightning_datamodule": dm, **kw.pop("extras", {})}
    return Problem(name, model, sets["train"], sets["val"], sets["test"], loss=loss,
                   metric=metric, higher_is_better=higher_is_better, task=task,
                   batch_size=batch_size, epochs=epochs, target=target,
                   search_space=search_space, description=description,
                   num_workers=num_workers, extras=extras, **kw)
