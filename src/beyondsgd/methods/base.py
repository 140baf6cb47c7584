"""The one small interface every training method implements, and the method registry.

The benchmark runner trains *every* method (baselines included) with the same loop::

    method = make_method("adam", {"lr": 3e-4})
    model = method.prepare(model, ctx)            # ProxProp swaps layers, PHT activations, ...
    for epoch in range(epochs):
        for batch in ctx.train_batches(epoch):
            loss = method.train_step(model, batch, ctx.loss_fn)   # detached scalar tensor
        events = method.end_of_epoch(model, ctx, epoch)           # list of dicts
    state = method.state_dict()                    # checkpoint / resume

Nothing here knows about the benchmark store, the CLI or datasets: a ``TrainContext`` carries what
a method may need (device, loss function, task, the training and validation tensors; it and the
one evaluation function live in ``context.py``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from .context import (  # noqa: F401  (re-exported)
    Batch,
    LossFn,
    TrainContext,
    evaluate,
    evaluate_batches,
)


# --------------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HParam:
    """A declared hyperparameter: its type, default, allowed values and tuning range.

    ``low``/``high`` give the search space used by the tuning protocol (``log=True`` means the
    range is sampled uniformly in log space); ``choices`` restricts string/int values.
    """

    name: str
    default: Any
    type: type = float
    help: str = ""
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    tune: bool = False  # part of the tuning search space

    def parse(self, value: Any) -> Any:
        """Convert ``value`` (maybe a string from the CLI) to this parameter's type, validated."""
        if isinstance(value, str) and self.type is not str:
            text = value.strip()
            try:
                if self.type is bool:
                    if text.lower() in ("1", "true", "yes", "on"):
                        value = True
                    elif text.lower() in ("0", "false", "no", "off"):
                        value = False
                    else:
                        raise ValueError
                elif self.type is int:
                    value = int(float(text)) if float(text).is_integer() else int(text)
                else:
                    value = self.type(text)
            except (TypeError, ValueError):
                raise ValueError(
                    f"hyperparameter {self.name!r}: cannot read {value!r} as {self.type.__name__}"
                ) from None
        elif self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif self.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if value is not None and not isinstance(value, self.type):
            raise ValueError(
                f"hyperparameter {self.name!r}: expected {self.type.__name__}, got {value!r}"
            )
        if self.choices is not None and value not in self.choices:
            raise ValueError(
                f"hyperparameter {self.name!r}: {value!r} is not one of {list(self.choices)}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"hyperparameter {self.name!r}: {value!r} is not finite")
        return value


# --------------------------------------------------------------------------------------------
# The Method interface
# --------------------------------------------------------------------------------------------
class Method:
    """Base class of every training method the runner can train.

    Subclasses declare ``name``, ``summary``, ``paper`` and ``hparams`` and override what they need.
    ``self.hp`` holds the validated hyperparameters (defaults filled in).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    hparams: ClassVar[tuple[HParam, ...]] = ()
    # Published defaults differ from our per-problem defaults for some methods; the tuning
    # protocol's "defaults" column uses these when given.
    published_defaults: ClassVar[dict[str, Any]] = {}
    # Named sets of hyperparameter values (e.g. "published": a paper's recipe) chosen by a
    # hyperparameter named ``preset``: a value not given explicitly comes from the chosen set,
    # else from the declared default (``resolve_hparams``), so stored trials record the values
    # actually used.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # Renamed hyperparameters, old name -> new name: the old name is still accepted (with a
    # DeprecationWarning), stored rows that use it read as the new one, and trial keys hash the
    # old name, so trials stored before the rename keep their keys (``key_hparams``).
    renamed_hparams: ClassVar[dict[str, str]] = {}

    def __init__(self, hp: dict[str, Any] | None = None):
        self.hp = resolve_hparams(type(self), hp or {})
        if "step_size" in self.hp:
            check_schedule(self.hp)

    # ---- the four hooks -------------------------------------------------------------------
    def prepare(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        """Adapt the model (swap layers/activations) and build optimizers. Returns the model."""
        return model

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> torch.Tensor:
        """One optimisation step on ``batch``. Returns the minibatch loss as a detached tensor."""
        raise NotImplementedError

    def end_of_epoch(self, model: nn.Module, ctx: TrainContext, epoch: int) -> list[dict]:
        """Called after each epoch's steps (``epoch`` counts from 0). Returns method events."""
        return []

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Extra numbers recorded with every evaluation (e.g. SLBI support size)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The model to evaluate (SLBI may evaluate the sparse model); default: ``model``."""
        return model


def canonical_hparams(cls: type[Method] | None, given: dict[str, Any],
                      warn: bool = False) -> dict[str, Any]:
    """``given`` with renamed hyperparameters under their new names (``Method.renamed_hparams``;
    ``warn``: a ``DeprecationWarning`` per old name). An old and a new name together are a
    ``ValueError``."""
    renamed = getattr(cls, "renamed_hparams", None) or {}
    if not renamed or not any(k in renamed for k in given):
        return dict(given)
    out = {}
    for k, v in given.items():
        new = renamed.get(k)
        if new is None:
            out[k] = v
            continue
        if new in given:
            raise ValueError(f"method {cls.name!r}: {k!r} is the old name of {new!r}; give "
                             f"one of them, got both ({k}={v!r}, {new}={given[new]!r})")
        if warn:
            warnings.warn(f"method {cls.name!r}: hyperparameter {k!r} is deprecated, use "
                          f"{new!r}", DeprecationWarning, stacklevel=3)
        out[new] = v
    return out


def key_hparams(cls: type[Method] | None, hp: dict[str, Any]) -> dict[str, Any]:
    """``hp`` as trial keys hash it: renamed hyperparameters under their old names, so that a
    rename leaves the keys of stored trials unchanged."""
    renamed = getattr(cls, "renamed_hparams", None) or {}
    if not renamed:
        return hp
    old = {new: o for o, new in renamed.items()}
    return {old.get(k, k): v for k, v in hp.items()}


def resolve_hparams(cls: type[Method], given: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in, every value parsed and validated; unknown names raise ``ValueError``;
    old names of renamed hyperparameters are accepted with a ``DeprecationWarning``. A
    ``preset`` given names one of ``cls.presets``, whose values replace the declared defaults of
    the hyperparameters not given."""
    renamed = getattr(cls, "renamed_hparams", None) or {}
    old_name = {renamed[k]: k for k in given if k in renamed}  # new -> the old name given
    given = canonical_hparams(cls, given, warn=True)
    known = {h.name: h for h in cls.hparams}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(
            f"method {cls.name!r} has no hyperparameter {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(sorted(known)) or '(none)'}"
        )
    preset: dict[str, Any] = {}
    if "preset" in known and "preset" in given:  # Method.presets: values not given explicitly
        preset = (getattr(cls, "presets", None) or {}).get(known["preset"].parse(given["preset"]),
                                                            {})
    out = {}
    for name, h in known.items():
        if name in old_name:  # errors name what the caller wrote
            h = replace(h, name=f"{old_name[name]} (renamed {name})")
        out[name] = h.parse(given[name]) if name in given else \
            h.parse(preset[name]) if name in preset else h.default
    return out


# --------------------------------------------------------------------------------------------
# Methods that are "a torch optimizer + an optional LR schedule"
# --------------------------------------------------------------------------------------------
SCHEDULE_HPARAMS = (
    HParam("schedule", "constant", str, "LR schedule per epoch",
           choices=("constant", "step", "cosine")),
    HParam("step_size", 0, int, "epochs between LR drops for schedule=step (0: epochs/3)"),
    HParam("gamma", 0.1, float, "LR factor at each drop for schedule=step"),
)


def check_schedule(hp: dict[str, Any]) -> None:
    """The LR-schedule settings are valid whether or not ``schedule`` uses them (a bad value
    must not wait for someone to switch the schedule on)."""
    if int(hp.get("step_size", 0)) < 0:
        raise ValueError(f"step_size={hp['step_size']}: accepted step_size >= 0 (0: epochs/3)")
    if not float(hp.get("gamma", 0.1)) > 0:
        raise ValueError(f"gamma={hp['gamma']}: accepted gamma > 0 (the LR factor at each drop)")


def make_scheduler(
    optimizer: torch.optim.Optimizer, hp: dict[str, Any], epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch LR scheduler named by ``hp['schedule']`` (None for constant)."""
    kind = hp.get("schedule", "constant")
    if kind == "constant":
        return None
    if kind == "step":
        step = hp.get("step_size") or max(1, epochs // 3)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=hp["gamma"])
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    raise ValueError(f"unknown schedule {kind!r}; accepted: constant, step, cosine")


class OptimizerMethod(Method):
    """A method that is one ``torch.optim.Optimizer`` over ``model.parameters()``.

    Subclasses implement ``make_optimizer``. Steps go through ``optimizer.step(closure)`` so that
    optimizers that need the loss value (BPGrad, L-BFGS) work unchanged.
    """

    hparams = SCHEDULE_HPARAMS

    def __init__(self, hp: dict[str, Any] | None = None):
        super().__init__(hp)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.distributed = False  # data parallel (ctx.world_size > 1), set by prepare

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        raise NotImplementedError

    def prepare(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        self.distributed = ctx.world_size > 1
        self.optimizer = self.make_optimizer(model)
        self.scheduler = make_scheduler(self.optimizer, self.hp, ctx.epochs)
        return model

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> torch.Tensor:
        x, y = batch
        opt = self.optimizer
        out: list[torch.Tensor] = []

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            out.append(loss)
            return loss

        opt.step(closure)
        return out[0].detach()

    def end_of_epoch(self, model: nn.Module, ctx: TrainContext, epoch: int) -> list[dict]:
        if self.scheduler is not None:
            self.scheduler.step()
        return []

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"optimizer": self.optimizer.state_dict()}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a Method available to the runner and CLI under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is already registered")
    METHODS[cls.name] = cls
    return cls


def get_method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}"
        ) from None


def make_method(name: str, hp: dict[str, Any] | None = None) -> Method:
    """Instantiate registered method ``name`` with hyperparameters ``hp`` (validated)."""
    return get_method_class(name)(hp)
