"""Pre-flight checks: everything that can be checked before the first trial starts.

The CLI calls :func:`preflight` once per command, so a bad hyperparameter, device, data
directory or missing optional package gives one message (and exit code 2) instead of one failed
trial per seed. Hyperparameters are checked by each method's *own* validation, not by bounds
repeated here: :func:`check_method` constructs the method (its ``__init__`` checks) and calls its
``prepare`` on the problem's freshly built model (which runs the optimizer constructors' argument
checks), without training. Two rules are ours and generic: ``lr=0`` (or a learning rate below
:data:`MIN_LR`, e.g. 1e-320, which is 0 in float32) and zero epochs train nothing, so they are
refused instead of reporting an untrained network as a result.

Nothing here imports the CLI; the data flows cli -> bench.validate -> bench.runner/problems ->
methods.
"""

from __future__ import annotations

import importlib
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data import DataFileError
from ...methods import TrainContext, get_method_class
from ...methods.base import resolve_hparams
from ..problems import Problem, get_problem

BENCH_EXTRA = "pip install 'beyondsgd[bench]'"
# the smallest learning rate accepted: an update of lr * gradient is below float32's resolution of
# any weight of order 1e-5 or more well before this (float32 has a relative precision of 6e-8)
MIN_LR = 1e-12
# import name -> distribution name of the packages of the ``bench`` extra
BENCH_MODULES = {"sklearn": "scikit-learn", "mnist1d": "mnist1d", "matplotlib": "matplotlib",
                 "tqdm": "tqdm", "scipy": "scipy"}

# torch.optim's own messages say what is wrong but not what is accepted; the ranges torch checks
_TORCH_ACCEPTS = {
    "Invalid learning rate": "lr > 0",
    "Invalid epsilon value": "eps >= 0",
    "Invalid beta parameter at index 0": "0 <= beta1 < 1",
    "Invalid beta parameter at index 1": "0 <= beta2 < 1",
    "Invalid weight_decay value": "weight_decay >= 0",
    "Invalid momentum value": "momentum >= 0",
    "Invalid rho value": "0 <= rho <= 1",
    "Invalid alpha value": "alpha >= 0",
    "Invalid lr_decay value": "lr_decay >= 0",
    "Nesterov momentum requires a momentum and zero dampening": "momentum > 0 with nesterov",
}


class PreflightError(ValueError):
    """Bad input found before any work started; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]):
        self.errors = list(dict.fromkeys(errors))  # distinct, in order
        super().__init__("\n".join(self.errors))


class MissingExtraError(PreflightError):
    """An optional package of the ``bench`` extra is not installed."""


def missing_modules(names: Iterable[str]) -> list[str]:
    """The import names among ``names`` that cannot be imported."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def require_bench_extra(what: str, modules: Iterable[str] = tuple(BENCH_MODULES)) -> None:
    """Raise :class:`MissingExtraError` (one line naming the extra) if a module is missing."""
    missing = missing_modules(modules)
    if missing:
        dists = ", ".join(BENCH_MODULES.get(m, m) for m in missing)
        raise MissingExtraError([f"{what} needs the 'bench' extra ({dists} not installed): "
                                 f"{BENCH_EXTRA}"])


def extra_hint(exc: BaseException) -> str | None:
    """The one-line 'install the extra' message if ``exc`` is an ImportError of a bench
    package, else None."""
    if not isinstance(exc, ImportError):
        return None
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if name in BENCH_MODULES:
        return f"{BENCH_MODULES[name]} is not installed (part of the 'bench' extra): {BENCH_EXTRA}"
    if "beyondsgd[bench]" in str(exc):
        return str(exc)
    return None


# ------------------------------------------------------------------------------------------
# Single values
# ------------------------------------------------------------------------------------------
def check_device(device: str | torch.device) -> torch.device:
    """The device, if this machine has it; ``ValueError`` naming what is available otherwise."""
    avail = ["cpu"]
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_cuda:
        avail += ["cuda"] + [f"cuda:{i}" for i in range(n_cuda)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        avail.append("mps")
    accepted = f"accepted on this machine: {', '.join(avail)}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device; {accepted}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not n_cuda:
            raise ValueError(f"--device {device!r}: CUDA is not available on this machine "
                             f"(torch {torch.__version__}, "
                             f"built with CUDA {torch.version.cuda or 'none'}); {accepted}")
        if dev.index is not None and dev.index >= n_cuda:
            raise ValueError(f"--device {device!r}: this machine has {n_cuda} CUDA device(s); "
                             f"{accepted}")
        return dev
    if dev.type == "mps" and "mps" in avail:
        return dev
    raise ValueError(f"--device {device!r} is not available; {accepted}")


def check_train_fraction(fraction: float) -> float:
    if not (isinstance(fraction, (int, float)) and math.isfinite(fraction)
            and 0.0 < fraction <= 1.0):
        raise ValueError(f"--train-fraction {fraction!r} is out of range; accepted: a number in "
                         f"(0, 1], e.g. 0.1 for a tenth of the training set")
    return float(fraction)


def check_epochs(epochs: int | None) -> int | None:
    """``None`` (the problem's budget) or an int >= 1: zero epochs would report an untrained
    network as a result."""
    if epochs is not None and epochs < 1:
        raise ValueError(f"--epochs {epochs} trains nothing (the results would be the untrained "
                         f"network); accepted: an integer >= 1, or omit it for the problem's "
                         f"budget")
    return epochs


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """``ValueError`` (one line) unless ``path`` is, or can be created as, a directory this
    process can write: checked before any work by creating (and removing) a probe file, so a
    report that cannot be written (``/proc/x``, read-only media, no permission) is refused up
    front instead of after the whole run. Leaves nothing behind: folders it created for the
    probe are removed again (the command creates them when it writes)."""
    p = Path(path)
    accepted = "accepted: a writable directory (created if missing)"
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                raise ValueError(f"{flag} {str(path)!r}: {q} is a file, not a directory; "
                                 f"{accepted}")
            break
    created: list[Path] = []
    try:
        for q in reversed((p, *p.parents)):
            if not q.exists():
                q.mkdir()
                created.append(q)
        fd, probe = tempfile.mkstemp(prefix=".beyondsgd-probe-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        raise ValueError(f"{flag} {str(path)!r} cannot be written ({exc.strerror or exc}"
                         f"{where}); {accepted}") from None
    finally:
        for q in reversed(created):
            try:
                q.rmdir()
            except OSError:  # pragma: no cover - someone put a file there meanwhile
                pass


# ------------------------------------------------------------------------------------------
# Data and hyperparameters
# ------------------------------------------------------------------------------------------
def load_data(problem: str | Problem):
    """The problem's dataset (cached by the problem), or ``ValueError`` with one line that says
    how to get the data or the extra."""
    prob = problem if isinstance(problem, Problem) else get_problem(problem)
    from .runner import DATA_SPLIT_SEED

    status = getattr(prob, "data_status", lambda: None)()  # cheap: files and packages present
    if status:
        cls = MissingExtraError if BENCH_EXTRA in status else PreflightError
        raise cls([f"problem {prob.name}: {status}"])
    try:
        return prob.load(DATA_SPLIT_SEED)
    except DataFileError as exc:
        raise ValueError(f"problem {prob.name}: data missing or unreadable: {exc}") from None
    except ImportError as exc:
        hint = extra_hint(exc)
        if hint is None:
            raise
        raise MissingExtraError([f"problem {prob.name}: {hint}"]) from None


def _explain(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    for prefix, accepted in _TORCH_ACCEPTS.items():
        if str(exc).startswith(prefix):
            return f"{text}; accepted: {accepted}"
    return text


def check_lr(lr: Any) -> str | None:
    """What is wrong with a learning rate that trains nothing (None if it can train): zero, or
    a positive one below :data:`MIN_LR`; the message says whether it is even 0 in float32 (the
    parameters' precision). Negative ones are each method's own refusal."""
    if isinstance(lr, bool) or not isinstance(lr, float) or lr < 0 or lr >= MIN_LR:
        return None
    untrained = "trains nothing (the results would be the untrained network)"
    if lr == 0.0:
        return f"lr=0.0 {untrained}; accepted: lr > 0"
    why = ("it is 0 in float32, the parameters' precision" if float(np.float32(lr)) == 0.0
           else f"below the floor {MIN_LR:g}, too small to change float32 weights")
    return f"lr={lr!r} {untrained}: {why}; accepted: lr > 0 and lr >= {MIN_LR:g}"


def describe(method: str, hparams: dict[str, Any] | None) -> str:
    """``method (name=value, ...)`` for messages."""
    shown = ", ".join(f"{k}={v!r}" for k, v in sorted((hparams or {}).items()))
    return f"{method} ({shown or 'defaults'})"


def check_method(prob: Problem, data, method: str, hparams: dict[str, Any] | None,
                 epochs: int | None = None, train_fraction: float = 1.0) -> str | None:
    """Construct ``method`` with ``hparams`` and let it ``prepare`` a freshly built model of
    ``prob`` (CPU, no training). Returns what is wrong (one line), or None when accepted."""
    cls = get_method_class(method)
    try:
        hp = resolve_hparams(cls, dict(hparams or {}))
    except ValueError as exc:
        return str(exc)
    lr_error = check_lr(hp.get("lr"))
    if lr_error:
        return lr_error
    epochs = prob.epochs if epochs is None else epochs
    try:
        if train_fraction < 1.0:
            from .runner import DATA_SPLIT_SEED

            data = data.subsample_train(train_fraction, seed=DATA_SPLIT_SEED)
        m = cls(hp)
        torch.manual_seed(0)
        model = prob.build_model(data, "relu", 0)
        n = data.x_train.shape[0]
        ctx = TrainContext(device=torch.device("cpu"), loss_fn=prob.loss_fn, task=prob.task,
                           x_train=data.x_train, y_train=data.y_train, x_val=data.x_val,
                           y_val=data.y_val, batch_size=prob.batch_size, epochs=max(1, epochs),
                           steps_per_epoch=max(1, math.ceil(n / prob.batch_size)),
                           num_classes=data.num_classes, seed=0,
                           extras={"problem": prob.name, "preflight": True})
        m.prepare(model, ctx)
    except ImportError:
        raise  # a missing package: the caller names the extra to install
    except Exception as exc:  # the method's own refusal (or a failure every trial would hit)
        return _explain(exc)
    return None


@dataclass(frozen=True)
class Plan:
    """What a command will run: problems x (method, hyperparameters)."""

    problems: tuple[str, ...]
    methods: tuple[tuple[str, dict[str, Any]], ...]
    device: str = "cpu"
    epochs: int | None = None
    train_fraction: float = 1.0


def preflight(plan: Plan) -> torch.device:
    """Check ``plan`` before any work: device, train fraction, epochs, data of every problem,
    every (problem, method, hyperparameters). Raises :class:`PreflightError` listing every
    distinct problem found (one line each); returns the device."""
    errors: list[str] = []
    device = torch.device("cpu")
    fraction, epochs = 1.0, None  # what the method checks use when these are refused
    try:
        fraction = check_train_fraction(plan.train_fraction)
    except ValueError as exc:
        errors.append(str(exc))
    try:
        epochs = check_epochs(plan.epochs)
    except ValueError as exc:
        errors.append(str(exc))
    try:
        device = check_device(plan.device)
    except ValueError as exc:
        errors.append(str(exc))
    # the same refusal on several problems is one line naming them all
    refused: dict[tuple[str, str], list[str]] = {}
    for name in plan.problems:
        prob = get_problem(name)
        try:
            data = load_data(prob)
        except PreflightError as exc:
            errors.extend(exc.errors)
            continue
        except ValueError as exc:
            errors.append(str(exc))
            continue
        for method, hp in plan.methods:
            err = check_method(prob, data, method, hp, epochs, fraction)
            if err:
                refused.setdefault((describe(method, hp), err), []).append(prob.name)
    for (what, err), probs in refused.items():
        errors.append(f"{what} on {', '.join(probs)}: {err}")
    if errors:
        raise PreflightError(errors)
    return device


def check_store_problems(path: str | os.PathLike | None, problems: Iterable[str]) -> None:
    """Refuse (:class:`~beyondsgd.bench.problems.ProblemError`, one line), before any work and
    opening it read-only, a store that holds trials of one of ``problems`` (a user's) defined
    differently, with another file hash: their results must not mix (a missing store holds
    none)."""
    from ..problems.user import check_store
    from ..store import Store

    users = [get_problem(p) for p in problems if get_problem(p).user]
    if not users or not path or not Path(path).exists():
        return
    with Store(path, readonly=True) as st:
        for prob in users:
            check_store(st, prob)
