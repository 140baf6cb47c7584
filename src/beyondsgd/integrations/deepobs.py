r"""Running beyondsgd's methods under DeepOBS 1.1.2's PyTorch runner (extra ``deepobs``).

DeepOBS's ``StandardRunner`` builds the optimizer as ``optimizer_class(net.parameters(), **hp)``
and trains with ``zero_grad(); loss, _ = tproblem.get_batch_loss_and_accuracy();
loss.backward(); opt.step()`` -- the optimizer never sees the loss value, and the only hook into
the model is the parameter list. What each method needs:

* **BPGrad**: :class:`BeyondSGDRunner` (``make_runner("bpgrad")``) passes the minibatch loss
  whose gradient ``backward()`` just computed to ``step(loss=...)``, calls ``new_epoch()`` at
  every epoch start (``loss_estimate="running_mean"``), and turns a refused step (NaN/inf, or a
  loss below ``loss_lower_bound`` with ``on_below_bound="diverge"``, this spec's default) into
  DeepOBS's own divergence record: the remaining training losses are NaN, so the runner's
  end-of-epoch check pads the metrics with the initial values, as for any diverged run.
* **SLBI**: DeepOBS's own ``StandardRunner(SLBI, HYPERPARAMS["SLBI"])``; the flat parameter list
  takes ``structure="auto"`` (filters for conv weights, 2-D weights element-wise, no
  :math:`\Gamma` for 1-D; a warning when nothing gets one).
* **ProxProp**: ``make_runner("proxprop")`` (SGD) or ``make_runner("proxprop",
  optimizer_class=torch.optim.Adam)``: a model hook converts the test problem's
  ``nn.Linear``/``nn.Conv2d`` layers with ``proxprop(net, tau_theta, cg_iters)`` before the
  optimizer is built; ``tau_theta`` and ``cg_iters`` are hyperparameters (they name the results
  folder); results are filed as ``ProxProp<Optimizer>``.
* **PHT + SGD/Adam**: ``make_runner("pht_sgd")`` / ``"pht_adam"``: a model hook swaps every
  ``nn.ReLU`` for positive hard-thresholding with threshold ``tau`` (a hyperparameter).
* **PHT alternation**: no hook. Each weight step needs the minibatch itself (record the
  supports, then ``K`` steps or layer solves with them frozen,
  :class:`~beyondsgd.methods.pht.Alternating`), which DeepOBS's loop keeps inside the test
  problem. Train it with beyondsgd's runner or your own loop.
* **GDSolver**: no hook. Its solver phase is an epoch-level MILP over stored training points
  with a validation split at plateaus; DeepOBS's runner hands the optimizer neither. Use
  ``beyondsgd bench`` (or the Lightning callback).

``HYPERPARAMS`` holds each method's hyperparameter spec in DeepOBS's format (``{name: {"type":
T, "default": v}}``; no default = required); the defaults are the constructors' except
``on_below_bound="diverge"`` for BPGrad (DeepOBS records bad runs rather than crashing). No
spec has ``weight_decay``: DeepOBS adds weight decay to the test problem's loss itself (its
``weight_decay`` run argument, whose ``--weight_decay`` option a hyperparameter of that name
would clash with), so the optimizers keep their own at 0.

DeepOBS reads ``sys.argv`` for every run argument left ``None`` (``weight_decay``,
``data_dir``, ...): inside another program give them all, or clear ``sys.argv``.

Importing this module does not import DeepOBS; :class:`BeyondSGDRunner` and
:func:`make_runner` do (:func:`import_standard_runner`). DeepOBS 1.1.2's ``__init__`` imports its
TensorFlow half even for PyTorch runs: without TensorFlow installed, DeepOBS is imported without
it. Its PyTorch half needs torchvision, the build that matches your torch (PyPI's wheels are
CUDA builds; a CPU torch needs the CPU one): the ImportError gives the exact command, e.g.
``pip install 'torchvision==0.28.*' --index-url https://download.pytorch.org/whl/cpu`` for torch
2.13 CPU.

Example (needs DeepOBS)::

    from beyondsgd.integrations.deepobs import make_runner
    runner = make_runner("bpgrad")
    runner.run(testproblem="quadratic_deep", hyperparams={"lipschitz": 100.0},
               num_epochs=10, output_dir="results")
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..methods.bpgrad import BPGrad, NonFiniteLossError
from ..methods.slbi import SLBI

__all__ = ["HYPERPARAMS", "hyperparameter_spec", "make_runner",  # + BeyondSGDRunner (lazy)
           "name_problems"]

Spec = dict[str, dict[str, Any]]

_SGD: Spec = {"lr": {"type": float}, "momentum": {"type": float, "default": 0.0},
              "nesterov": {"type": bool, "default": False}}
_ADAM: Spec = {"lr": {"type": float, "default": 1e-3}}
HYPERPARAMS: dict[str, Spec] = {
    "BPGrad": {
        "lipschitz": {"type": float},
        "rho": {"type": float, "default": 0.1},
        "momentum": {"type": float, "default": 0.9},
        "momentum_form": {"type": str, "default": "paper"},
        "loss_estimate": {"type": str, "default": "minibatch"},
        "loss_lower_bound": {"type": float, "default": 0.0},
        "on_below_bound": {"type": str, "default": "diverge"},
    },
    "SLBI": {
        "lr": {"type": float, "default": 0.1},
        "kappa": {"type": float, "default": 1.0},
        "nu": {"type": float, "default": 20.0},
        "lam": {"type": float, "default": 1.0},
        "momentum": {"type": float, "default": 0.9},
        "coupling": {"type": str, "default": "code"},
        "lambda_scaling": {"type": str, "default": "none"},
        "structure": {"type": str, "default": "auto"},
    },
    "ProxPropSGD": {**_SGD, "tau_theta": {"type": float, "default": 1.0},
                    "cg_iters": {"type": int, "default": 3}},
    "ProxPropAdam": {**_ADAM, "tau_theta": {"type": float, "default": 1.0},
                     "cg_iters": {"type": int, "default": 3}},
    "PHTSGD": {**_SGD, "tau": {"type": float, "default": 0.0}},
    "PHTAdam": {**_ADAM, "tau": {"type": float, "default": 0.0}},
}
_NO_HOOK = {
    "gdsolver": "GDSolver's solver phase is an epoch-level MILP over stored training points "
                "with a validation split; DeepOBS's runner gives the optimizer neither",
    "pht_alt": "PHT alternation needs each minibatch to record and freeze the supports; "
               "DeepOBS's loop keeps the batch inside the test problem",
}


def hyperparameter_spec(name: str) -> Spec:
    """A copy of ``HYPERPARAMS[name]`` (names: ``BPGrad``, ``SLBI``, ``ProxPropSGD``,
    ``ProxPropAdam``, ``PHTSGD``, ``PHTAdam``)."""
    if name not in HYPERPARAMS:
        raise ValueError(f"no DeepOBS hyperparameter spec {name!r}; accepted: "
                         f"{', '.join(HYPERPARAMS)}")
    return {k: dict(v) for k, v in HYPERPARAMS[name].items()}


# --------------------------------------------------------------------------------------------
# The loss feed: what the test problem returned last, for the optimizer's step
# --------------------------------------------------------------------------------------------
class _Feed:
    """Wraps one test problem's ``get_batch_loss_and_accuracy`` and ``train_init_op`` (instance
    attributes, removed by :meth:`close`): keeps the last *training* loss for ``step(loss=...)``,
    calls the optimizer's ``new_epoch()`` at every epoch start, and once the run has diverged
    returns the training losses as NaN, so DeepOBS's end-of-epoch check ends the run."""

    def __init__(self, tproblem: Any):
        self.tproblem = tproblem
        self.loss: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.diverged = False
        self._get = tproblem.get_batch_loss_and_accuracy
        self._init = tproblem.train_init_op
        tproblem.get_batch_loss_and_accuracy = self._batch
        tproblem.train_init_op = self._train_init

    def close(self) -> None:
        for name in ("get_batch_loss_and_accuracy", "train_init_op"):
            self.tproblem.__dict__.pop(name, None)

    def _train_init(self) -> None:
        self._init()
        new_epoch = getattr(self.optimizer, "new_epoch", None)
        if callable(new_epoch):
            new_epoch()

    def is_diverged(self) -> bool:
        return self.diverged or bool(getattr(self.optimizer, "diverged", False))

    def _batch(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        loss, acc = self._get(*args, **kwargs)
        if getattr(self.tproblem, "phase", None) == "train":
            if self.is_diverged():
                loss = loss * math.nan  # DeepOBS's own test ends the run after this epoch
            self.loss = loss
        return loss, acc

    def take(self) -> torch.Tensor:
        if self.loss is None:
            raise RuntimeError("BeyondSGDRunner: step() was called without a new training loss "
                               "from the test problem (get_batch_loss_and_accuracy in the "
                               "training phase); the runner's loop is not DeepOBS's")
        loss, self.loss = self.loss, None
        return loss


def _fed_class(cls: type[torch.optim.Optimizer], feed: _Feed) -> type[torch.optim.Optimizer]:
    """A subclass of ``cls`` (same ``__name__``) that registers itself with ``feed`` and, when
    ``cls.step`` takes ``loss=``, passes the fed loss to it and treats a refused step
    (:class:`NonFiniteLossError`) as the run diverging."""
    takes_loss = "loss" in inspect.signature(cls.step).parameters

    class Fed(cls):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            feed.optimizer = self

        if takes_loss:
            def step(self, closure: Callable[[], Any] | None = None, *,
                     loss: Any = None) -> Any:
                if closure is None and loss is None:
                    loss = feed.take()
                try:
                    return super().step(closure, loss=loss)
                except NonFiniteLossError:
                    feed.diverged = True
                    return math.nan

    Fed.__name__ = Fed.__qualname__ = cls.__name__
    return Fed


# --------------------------------------------------------------------------------------------
# Importing DeepOBS's PyTorch half (without its TensorFlow half)
# --------------------------------------------------------------------------------------------
def torchvision_install_command(torch_version: str | None = None,
                                cuda: str | None | bool = False) -> str:
    """The pip command that installs the torchvision release built for this torch (torch 2.N
    pairs with torchvision 0.(N+15)), from PyTorch's CPU index for a CPU-only torch: PyPI's
    torchvision wheels are CUDA builds, which a CPU torch refuses ("operator torchvision::nms
    does not exist").

    >>> torchvision_install_command("2.13.0+cpu", None)
    "pip install 'torchvision==0.28.*' --index-url https://download.pytorch.org/whl/cpu"
    >>> torchvision_install_command("2.13.0", "12.8")
    "pip install 'torchvision==0.28.*'"
    """
    version = torch.__version__ if torch_version is None else torch_version
    if cuda is False:
        cuda = torch.version.cuda or getattr(torch.version, "hip", None)
    major, minor = (int(x) for x in version.split("+")[0].split(".")[:2])
    spec = f"torchvision==0.{minor + 15}.*" if major == 2 else "torchvision"
    cmd = f"pip install '{spec}'"
    return cmd if cuda else cmd + " --index-url https://download.pytorch.org/whl/cpu"


def _import_without_tensorflow() -> None:
    """Put the ``deepobs`` package into ``sys.modules`` without running its ``__init__``, which
    imports DeepOBS's TensorFlow half (and its analyzer); the PyTorch half and ``deepobs.config``
    import from it as usual (submodules still load on demand: ``import deepobs.analyzer``)."""
    spec = importlib.util.find_spec("deepobs")
    package = importlib.util.module_from_spec(spec)  # not executed
    sys.modules["deepobs"] = package


def import_standard_runner() -> type:
    """DeepOBS 1.1.2's ``StandardRunner``, or ImportError saying exactly what is missing.

    DeepOBS's ``__init__`` imports its TensorFlow half even for PyTorch runs; when TensorFlow is
    not installed the package is imported without it (:func:`_import_without_tensorflow`), so
    only its PyTorch half's own need remains: torchvision (its data sets import it), which must
    be the build that matches this torch (:func:`torchvision_install_command`).
    """
    before = set(sys.modules)
    if "deepobs" not in sys.modules:
        if importlib.util.find_spec("deepobs") is None:
            raise ImportError("DeepOBS is not installed: pip install 'beyondsgd[deepobs]' "
                              "(DeepOBS 1.1.2)", name="deepobs")
        if importlib.util.find_spec("tensorflow") is None:
            _import_without_tensorflow()
    try:
        from deepobs.pytorch.runners import StandardRunner
    except (ImportError, RuntimeError) as exc:
        for name in set(sys.modules) - before:  # no half-imported DeepOBS stays behind
            if name.split(".")[0] in ("deepobs", "torchvision"):
                del sys.modules[name]
        missing = getattr(exc, "name", None) or ""
        if missing.split(".")[0] == "torchvision" or "torchvision" in str(exc):
            have = importlib.util.find_spec("torchvision") is not None
            what = ("does not work with this torch " if have else "is not installed ") + \
                f"({type(exc).__name__}: {exc})"
            raise ImportError(
                f"DeepOBS 1.1.2's PyTorch runner imports torchvision (its data sets), which "
                f"{what}; install the build for torch {torch.__version__}: "
                f"{torchvision_install_command()} (TensorFlow is not needed)",
                name="torchvision") from exc
        raise ImportError(f"importing DeepOBS 1.1.2's PyTorch runner failed: "
                          f"{type(exc).__name__}: {exc} (module {missing or '?'})",
                          name=missing or None) from exc
    return StandardRunner


# --------------------------------------------------------------------------------------------
# The runner (built on first use: DeepOBS is imported only then)
# --------------------------------------------------------------------------------------------
_RUNNER: type | None = None


def _runner_class() -> type:
    global _RUNNER
    if _RUNNER is not None:
        return _RUNNER
    StandardRunner = import_standard_runner()

    class BeyondSGDRunner(StandardRunner):
        """DeepOBS's ``StandardRunner`` (its training loop unchanged) plus, for the run:

        * ``step(loss=...)`` for optimizers whose ``step`` takes ``loss`` (BPGrad), with the
          loss the test problem just returned; ``new_epoch()`` at every epoch start;
        * a diverged run (see the module docstring) recorded as DeepOBS records one;
        * ``model_hook(net, **hook_hp)`` on the test problem's network before the optimizer is
          built, with ``hook_hp`` the hyperparameters named in ``hook_hyperparams`` (the rest
          go to the optimizer; all of them name the results folder);
        * ``name``: the optimizer name in the results (default the class's name).
        """

        def __init__(self, optimizer_class: type[torch.optim.Optimizer],
                     hyperparameter_names: Spec, *, name: str | None = None,
                     model_hook: Callable[..., Any] | None = None,
                     hook_hyperparams: Iterable[str] = ()):
            super().__init__(optimizer_class, hyperparameter_names)
            self._hook_hp = tuple(hook_hyperparams)
            missing = [k for k in self._hook_hp if k not in hyperparameter_names]
            if missing:
                raise ValueError(f"hook_hyperparams {missing} are not in hyperparameter_names "
                                 f"({', '.join(hyperparameter_names)})")
            if self._hook_hp and model_hook is None:
                raise ValueError("hook_hyperparams given without a model_hook")
            self._model_hook = model_hook
            if name is not None:
                self._optimizer_name = name

        def training(self, tproblem: Any, hyperparams: dict[str, Any], *args: Any,
                     **kwargs: Any) -> dict[str, Any]:
            hook_hp = {k: hyperparams[k] for k in self._hook_hp}
            opt_hp = {k: v for k, v in hyperparams.items() if k not in self._hook_hp}
            if self._model_hook is not None:
                self._model_hook(tproblem.net, **hook_hp)
            feed = _Feed(tproblem)
            cls = self._optimizer_class
            self._optimizer_class = _fed_class(cls, feed)
            try:
                return super().training(tproblem, opt_hp, *args, **kwargs)
            finally:
                self._optimizer_class = cls
                feed.close()

    _RUNNER = BeyondSGDRunner
    return _RUNNER


def __getattr__(name: str) -> Any:
    if name == "BeyondSGDRunner":
        return _runner_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _proxprop_hook(net: torch.nn.Module, tau_theta: float, cg_iters: int) -> None:
    from ..methods.proxprop import proxprop
    proxprop(net, tau_theta=tau_theta, cg_iters=cg_iters)


def _pht_hook(net: torch.nn.Module, tau: float) -> None:
    from ..methods.pht import pht
    pht(net, tau=tau)


def make_runner(method: str, optimizer_class: type[torch.optim.Optimizer] | None = None,
                hyperparameter_names: Spec | None = None) -> Any:
    """A :class:`BeyondSGDRunner` for ``method``: ``"bpgrad"``, ``"slbi"``, ``"proxprop"``
    (SGD unless ``optimizer_class`` is given; then give its ``hyperparameter_names`` too, or
    ``torch.optim.Adam`` takes ``HYPERPARAMS["ProxPropAdam"]``), ``"pht_sgd"``, ``"pht_adam"``.
    ``"gdsolver"`` and ``"pht_alt"`` raise with the reason (see the module docstring)."""
    if method in _NO_HOOK:
        raise ValueError(f"{method!r} cannot run under DeepOBS's StandardRunner: "
                         f"{_NO_HOOK[method]}")
    runner = _runner_class()
    if method == "bpgrad":
        return runner(BPGrad, hyperparameter_spec("BPGrad"))
    if method == "slbi":
        return runner(SLBI, hyperparameter_spec("SLBI"))
    if method in ("proxprop", "pht_sgd", "pht_adam"):
        if method == "pht_adam" and optimizer_class is None:
            optimizer_class = torch.optim.Adam
        cls = optimizer_class or torch.optim.SGD
        stem = "ProxProp" if method == "proxprop" else "PHT"
        hook, hook_hp = ((_proxprop_hook, ("tau_theta", "cg_iters")) if stem == "ProxProp"
                         else (_pht_hook, ("tau",)))
        if hyperparameter_names is None:
            key = stem + cls.__name__
            if key not in HYPERPARAMS:
                raise ValueError(f"give hyperparameter_names for {cls.__name__} (specs exist "
                                 f"for SGD and Adam only)")
            spec = hyperparameter_spec(key)
        else:
            spec = {**hyperparameter_names, **{k: HYPERPARAMS[stem + "SGD"][k] for k in hook_hp}}
        return runner(cls, spec, name=stem + cls.__name__, model_hook=hook,
                      hook_hyperparams=hook_hp)
    raise ValueError(f"make_runner: unknown method {method!r}; accepted: bpgrad, slbi, "
                     f"proxprop, pht_sgd, pht_adam (gdsolver and pht_alt have no DeepOBS hook)")


def name_problems(problems: Iterable[str]) -> None:
    """Teach DeepOBS's analyzer display names for test problems it does not know (beyondsgd's,
    from ``beyondsgd export --format deepobs``): its ranking splits a problem name at the first
    ``_`` into data set and model and looks both up in ``deepobs.config``'s naming tables
    (``digits_mlp`` -> "Digits", "MLP"); unknown parts get their own text. Known names are
    kept."""
    import deepobs.config as config

    for name in problems:
        data, _, model = name.partition("_")
        config.get_data_set_naming().setdefault(data, data.replace("-", " ").title())
        config.get_tp_naming().setdefault(model, model.upper() if len(model) <= 4 else model)
