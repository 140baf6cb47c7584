"""Your problem: the benchmark on your own model and data.

A :class:`Problem` fixes everything but the training method: a model factory (seed ->
``nn.Module``), the data, the loss, the metric, the batch size and the epoch budget::

    import beyondsgd as bs
    from torch import nn

    def model(seed):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    problem = bs.Problem("my_mlp", model, train=(x_tr, y_tr), val=(x_va, y_va),
                         test=(x_te, y_te), loss="cross_entropy", batch_size=64, epochs=20)

and ``beyondsgd bench --problem my_file.py:problem`` (or ``my.module:problem``) runs it, as do
``train``, ``suite --problems`` and :func:`beyondsgd.bench.compare`.

**Data.** Each split is a pair of tensors ``(x, y)`` (held in memory, like the built-in problems)
or a ``torch.utils.data.Dataset`` whose items are ``(x, y)`` pairs (streamed through a
``DataLoader``: :mod:`beyondsgd.data.streamed`, which also says how the methods that need more
than a minibatch get their data). Classification labels are integer class indices in
``[0, num_classes)``, ``num_classes`` being the model's output width; regression targets are
float vectors (or scalars) of the model's output width.

**Loss and metric.** ``loss``: ``"cross_entropy"`` (classification), ``"mse"`` (regression) or a
callable ``loss(out, y)`` returning the batch *mean* as a scalar tensor (then ``task`` is
needed). ``metric``: ``"accuracy"``, ``"mse"`` or a callable ``metric(out, y)`` returning the
batch mean (a number or scalar tensor) with ``higher_is_better`` saying its direction; it is
averaged over samples.

**Target.** ``target`` is a value of the validation/test metric for time to target; ``None``
(default): the suite sets it from the tuned baselines, as for the built-in problems.

**Search spaces.** ``search_space={"adam": {"lr": (1e-5, 1e-2)}, "pht_alt": {"tau": [0.0, 0.1]}}``
replaces a method's tuned range (a ``(low, high)`` pair keeps the method's log/linear scale; a
list is a set of choices) on this problem only.

**Identity.** A problem loaded from a file records the file's SHA-256 with every trial (a
problem object without a file records a fingerprint of its name, sizes, model and first
batch). A store holding trials of a problem of the same name with another hash is refused
before any work (:func:`check_store`): results of a changed problem never mix with old ones.

Every check here runs before any training (:func:`check_problem`); what is wrong is said in one
line naming the problem.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ... import data as D
from ...data.streamed import DEFAULT_POOL, StreamedData, collate_batch
from .registry import PROBLEMS
from .registry import Problem as Registered

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


# ------------------------------------------------------------------------------------------
# Checks (before any work)
# ------------------------------------------------------------------------------------------
def _is_dataset(d: Any) -> bool:
    return hasattr(d, "__getitem__") and hasattr(d, "__len__") and not isinstance(
        d, (tuple, list, torch.Tensor))


def _first_rows(d: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if _is_dataset(d):
        return collate_batch([d[i] for i in range(min(n, len(d)))])
    x, y = d
    return x[:n], y[:n]


def _check_split(name: str, split: str, d: Any) -> None:
    bad = ProblemError
    if _is_dataset(d):
        try:
            n = len(d)
        except Exception as exc:
            raise bad(f"problem {name}: len({split}) raised {type(exc).__name__}: {exc}") from None
        if n < 1:
            raise bad(f"problem {name}: {split} is empty; accepted: a Dataset with >= 1 item")
        try:
            item = d[0]
        except Exception as exc:
            raise bad(f"problem {name}: {split}[0] raised {type(exc).__name__}: {exc}") from None
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise bad(f"problem {name}: {split}[0] is a {type(item).__name__}; accepted: a pair "
                      "(x, y)")
        return
    if not (isinstance(d, (tuple, list)) and len(d) == 2
            and all(isinstance(t, torch.Tensor) for t in d)):
        raise bad(f"problem {name}: {split} is a {type(d).__name__}; accepted: a pair of tensors "
                  "(x, y) or a torch.utils.data.Dataset of (x, y) pairs")
    x, y = d
    if x.shape[0] != y.shape[0] or x.shape[0] < 1:
        raise bad(f"problem {name}: {split} has {x.shape[0]} inputs and {y.shape[0]} targets; "
                  "accepted: the same number (>= 1) of each")


def _check_fields(p: Problem) -> None:
    name = p.name if isinstance(p.name, str) else repr(p.name)
    bad = ProblemError
    if not (isinstance(p.name, str) and NAME_RE.match(p.name)):
        raise bad(f"problem name {name}: accepted: letters, digits, '_', '-', '.'")
    if not callable(p.model):
        raise bad(f"problem {name}: model is a {type(p.model).__name__}; accepted: a function "
                  "seed -> nn.Module")
    for attr, low in (("batch_size", 1), ("epochs", 1), ("train_eval_size", 1), ("pool", 1),
                      ("num_workers", 0), ("eval_batch_size", 1)):
        v = getattr(p, attr)
        if v is None and attr in ("pool", "eval_batch_size"):
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise bad(f"problem {name}: {attr}={v!r}; accepted: an integer >= {low}")
    if isinstance(p.loss, str) and p.loss not in LOSSES:
        raise bad(f"problem {name}: loss={p.loss!r}; accepted: {', '.join(LOSSES)} or a callable "
                  "loss(out, y) -> scalar tensor")
    if not (isinstance(p.loss, str) or callable(p.loss)):
        raise bad(f"problem {name}: loss={p.loss!r}; accepted: {', '.join(LOSSES)} or a callable")
    task = p.resolved_task()
    if task not in TASKS:
        raise bad(f"problem {name}: task={p.task!r}; accepted: {' or '.join(TASKS)} (needed "
                  "with a callable loss)")
    if isinstance(p.metric, str) and p.metric not in METRICS:
        raise bad(f"problem {name}: metric={p.metric!r}; accepted: {', '.join(METRICS)} or a "
                  "callable metric(out, y) -> batch mean, with higher_is_better")
    if p.metric == "accuracy" and task != "classification":
        raise bad(f"problem {name}: metric 'accuracy' needs task 'classification', got {task!r}")
    if callable(p.metric) and not isinstance(p.higher_is_better, bool):
        raise bad(f"problem {name}: a callable metric needs higher_is_better=True or False")
    if p.metric is not None and not (isinstance(p.metric, str) or callable(p.metric)):
        raise bad(f"problem {name}: metric={p.metric!r}; accepted: {', '.join(METRICS)} or a "
                  "callable")
    if p.target is not None and not (isinstance(p.target, (int, float))
                                     and not isinstance(p.target, bool)
                                     and math.isfinite(p.target)):
        raise bad(f"problem {name}: target={p.target!r}; accepted: a finite number or None")
    if p.metric_range is not None and not (
            isinstance(p.metric_range, (tuple, list)) and len(p.metric_range) == 2
            and p.metric_range[0] < p.metric_range[1]):
        raise bad(f"problem {name}: metric_range={p.metric_range!r}; accepted: (low, high)")
    _check_search_space(name, p.search_space)


def _check_search_space(name: str, space: Any) -> None:
    if space is None:
        return
    from ...methods import METHODS, get_method_class

    if not isinstance(space, Mapping):
        raise ProblemError(f"problem {name}: search_space must be a dict method -> "
                           "{hparam: (low, high) or [choices]}")
    for m, ranges in space.items():
        if m not in METHODS:
            raise ProblemError(f"problem {name}: search_space names unknown method {m!r}; "
                               f"available: {', '.join(METHODS)}")
        hps = {h.name: h for h in get_method_class(m).hparams}
        if not isinstance(ranges, Mapping):
            raise ProblemError(f"problem {name}: search_space[{m!r}] must be a dict")
        for h, r in ranges.items():
            if h not in hps:
                raise ProblemError(f"problem {name}: search_space[{m!r}] names unknown "
                                   f"hyperparameter {h!r}; {m} has {', '.join(hps)}")
            ok = (isinstance(r, list) and len(r) >= 1) or (
                isinstance(r, tuple) and len(r) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
                and r[0] < r[1] and not (hps[h].log and r[0] <= 0))
            if not ok:
                raise ProblemError(f"problem {name}: search_space[{m!r}][{h!r}]={r!r}; "
                                   "accepted: (low, high) with low < high (low > 0 on a log "
                                   "scale) or a non-empty list of choices")


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor):
        return float(v.detach()) if v.numel() == 1 else None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def check_problem(p: Problem) -> dict[str, Any]:
    """Every check of ``p`` that can run before training (:class:`ProblemError`, one line):
    fields, each split's shape, ``model(0)``, a forward pass and the loss and metric on the
    first rows of each split, the labels (every label of a tensor split; the first rows of a
    ``Dataset``). Returns what it learnt: ``num_classes``/``output_dim`` and ``streamed``."""
    if not isinstance(p, Problem):
        raise ProblemError(f"{p!r} is a {type(p).__name__}, not a beyondsgd.Problem")
    _check_fields(p)
    name, task = p.name, p.resolved_task()
    kinds = []
    for split in ("train", "val", "test"):
        _check_split(name, split, getattr(p, split))
        kinds.append(_is_dataset(getattr(p, split)))
    if len(set(kinds)) != 1:
        raise ProblemError(f"problem {name}: train, val and test mix tensors and Datasets; "
                           "accepted: all three the same kind")
    try:
        torch.manual_seed(0)
        model = p.model(0)
    except Exception as exc:
        raise ProblemError(f"problem {name}: model(0) raised {type(exc).__name__}: "
                           f"{_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ProblemError(f"problem {name}: model(0) returned a {type(model).__name__}; "
                           "accepted: a torch.nn.Module")
    width = None
    for split in ("train", "val", "test"):
        try:
            x, y = _first_rows(getattr(p, split), CHECK_ROWS)
        except Exception as exc:
            raise ProblemError(f"problem {name}: reading the first rows of {split} failed: "
                               f"{type(exc).__name__}: {_first_line(exc)}") from None
        try:
            with torch.no_grad():
                out = model.eval()(x.float() if x.is_floating_point() else x)
        except Exception as exc:
            raise ProblemError(f"problem {name}: the model fails on {split} inputs of shape "
                               f"{tuple(x.shape)}: {type(exc).__name__}: {_first_line(exc)}"
                               ) from None
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ProblemError(f"problem {name}: the model maps {split} inputs of shape "
                               f"{tuple(x.shape)} to {shape}; accepted: (batch, outputs)")
        width = out.shape[1]
        _check_targets(name, split, task, y, out, getattr(p, split))
        _check_loss_metric(p, split, out, y)
    return {"output_dim": width, "num_classes": width if task == "classification" else None,
            "streamed": kinds[0]}


def _check_targets(name: str, split: str, task: str, y: torch.Tensor, out: torch.Tensor,
                   d: Any) -> None:
    if task == "classification":
        labels = y if _is_dataset(d) else d[1]
        if labels.is_floating_point() or labels.dim() != 1:
            raise ProblemError(f"problem {name}: {split} labels have dtype {labels.dtype} and "
                               f"shape {tuple(labels.shape)}; accepted: integer class indices, "
                               "one per row")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= out.shape[1]:
            bad = lo if lo < 0 else hi
            raise ProblemError(f"problem {name}: {split} has label {bad}, out of range for the "
                               f"model's {out.shape[1]} outputs; accepted: 0..{out.shape[1] - 1}")
    else:
        yy = y if y.dim() == 2 else y.reshape(len(y), -1)
        if not y.is_floating_point() or yy.shape[1] != out.shape[1]:
            raise ProblemError(f"problem {name}: {split} targets have dtype {y.dtype} and shape "
                               f"{tuple(y.shape)}, the model gives {tuple(out.shape)}; accepted: "
                               "float targets of the model's output width")


def _check_loss_metric(p: Problem, split: str, out: torch.Tensor, y: torch.Tensor) -> None:
    loss_fn, metric_sum = loss_and_metric(p)
    if y.is_floating_point() and y.dim() == 1:
        y = y[:, None]
    out = out.detach().requires_grad_(True)
    try:
        v = loss_fn(out, y)
    except Exception as exc:
        raise ProblemError(f"problem {p.name}: the loss fails on {split}: {type(exc).__name__}: "
                           f"{_first_line(exc)}") from None
    if not isinstance(v, torch.Tensor) or v.numel() != 1:
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ProblemError(f"problem {p.name}: the loss returns {shape}, not a scalar; "
                           "accepted: the batch mean as a 0-d tensor (e.g. reduce with .mean())")
    if not v.requires_grad:
        raise ProblemError(f"problem {p.name}: the loss is not differentiable in the model's "
                           "output (no grad); accepted: a torch expression of out")
    try:
        m = metric_sum(out.detach(), y)
    except Exception as exc:
        raise ProblemError(f"problem {p.name}: the metric fails on {split}: "
                           f"{type(exc).__name__}: {_first_line(exc)}") from None
    if _scalar(m) is None:
        raise ProblemError(f"problem {p.name}: the metric returns {type(m).__name__}; accepted: "
                           "a number or scalar tensor (the batch mean)")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


# ------------------------------------------------------------------------------------------
# To the registry
# ------------------------------------------------------------------------------------------
def _accuracy_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(dim=1) == y).sum()


def _mse_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean(dim=1).sum()


def loss_and_metric(p: Problem) -> tuple[Callable, Callable]:
    """The loss (batch mean) and the metric as a batch *sum* (what the evaluation adds up)."""
    loss = LOSSES[p.loss][0] if isinstance(p.loss, str) else p.loss
    metric = p.metric if p.metric is not None else (
        "accuracy" if p.resolved_task() == "classification" else "mse")
    if metric == "accuracy":
        return loss, _accuracy_sum
    if metric == "mse":
        return loss, _mse_sum
    fn = metric

    def metric_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        v = fn(out, y)
        v = v.detach().double() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
        return v.reshape(()) * out.shape[0]
    return loss, metric_sum


def metric_info(p: Problem) -> tuple[str, bool, tuple[float, float]]:
    """(metric name, higher is better, range)."""
    metric = p.metric if p.metric is not None else (
        "accuracy" if p.resolved_task() == "classification" else "mse")
    if metric == "accuracy":
        return "accuracy", True, (0.0, 1.0)
    if metric == "mse":
        return "mse", False, (0.0, math.inf)
    hib = bool(p.higher_is_better)
    rng = tuple(p.metric_range) if p.metric_range is not None else (
        (0.0, 1.0) if hib else (0.0, math.inf))
    return getattr(metric, "__name__", "metric"), hib, rng


def fingerprint(p: Problem) -> str:
    """A hash of what defines the problem besides its file: name, task, sizes, the model's
    parameters at seed 0 and the first rows of every split."""
    h = hashlib.sha256()
    h.update(repr((p.name, p.resolved_task(), str(p.loss), str(p.metric), p.batch_size,
                   p.epochs, p.target, p.train_eval_size)).encode())
    torch.manual_seed(0)
    for k, v in p.model(0).state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    for split in ("train", "val", "test"):
        d = getattr(p, split)
        h.update(str(len(d) if _is_dataset(d) else d[0].shape[0]).encode())
        x, y = _first_rows(d, CHECK_ROWS)
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
        h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def to_registered(p: Problem, origin: dict[str, Any] | None = None) -> Registered:
    """Check ``p`` and turn it into the runner's problem (registry entry), with ``origin`` (how
    it was found: ``ref``, ``file``, ``sha256``) completed into its card."""
    info = check_problem(p)
    task = p.resolved_task()
    loss, metric_sum = loss_and_metric(p)
    name_m, hib, rng = metric_info(p)
    card = {"user": True, "name": p.name, "task": task, "metric": name_m,
            "higher_is_better": hib, "metric_range": list(rng), "epochs": p.epochs,
            "batch_size": p.batch_size, "target": p.target,
            "description": p.description or f"your problem {p.name}",
            "streamed": info["streamed"], **(origin or {})}
    card["fingerprint"] = fingerprint(p)
    card["identity"] = card.get("sha256") or card["fingerprint"]

    def load(seed: int):
        if info["streamed"]:
            return StreamedData(p.name, task, p.train, p.val, p.test,
                                num_classes=info["num_classes"], num_workers=p.num_workers,
                                pool=p.pool, eval_batch=p.eval_batch_size,
                                batch_size=p.batch_size, info={"user": True})
        (xt, yt), (xv, yv), (xs, ys) = p.train, p.val, p.test
        if task == "regression":
            yt, yv, ys = (t.reshape(len(t), -1).float() for t in (yt, yv, ys))
        return D.Dataset(p.name, task, xt, yt, xv, yv, xs, ys,
                         num_classes=info["num_classes"], info={"user": True})

    return Registered(
        p.name, card["description"], load, lambda data, activation, seed: p.model(seed), task,
        batch_size=p.batch_size, epochs=p.epochs,
        target=float(p.target) if p.target is not None else math.nan,
        target_note="given by the problem" if p.target is not None else
        "none given: set from the tuned baselines' runs (suite)",
        train_eval_size=p.train_eval_size, loss=loss, metric_sum=metric_sum, metric_name=name_m,
        higher=hib, range_=rng, origin=card,
        search_space={m: dict(r) for m, r in (p.search_space or {}).items()})


def register(p: Problem, origin: dict[str, Any] | None = None) -> Registered:
    """Check ``p`` and register it (replacing an earlier registration of the same user
    problem); refused when its name is a built-in problem's."""
    old = PROBLEMS.get(getattr(p, "name", None))
    if old is not None and not getattr(old, "origin", None):
        raise ProblemError(f"problem {p.name}: the name is a built-in problem's; accepted: "
                           "another name")
    reg = to_registered(p, origin)
    PROBLEMS[p.name] = reg
    return reg


# ------------------------------------------------------------------------------------------
# Finding a problem: path/to/file.py:NAME or module.path:NAME
# ------------------------------------------------------------------------------------------
def is_ref(text: str) -> bool:
    """Whether ``text`` names a problem in a file or module (``...:NAME``), not a built-in."""
    return ":" in text


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_ref(ref: str) -> Registered:
    """Import ``path/to/file.py:NAME`` or ``module.path:NAME`` and register the problem it names
    (``NAME``: a :class:`Problem`, or a function of no arguments returning one). Every failure
    is one :class:`ProblemError` line."""
    where, _, attr = ref.rpartition(":")
    accepted = "accepted: path/to/file.py:NAME or module.path:NAME"
    if not where or not attr.isidentifier():
        raise ProblemError(f"problem {ref!r}: cannot read it as FILE:NAME or MODULE:NAME; "
                           f"{accepted}")
    is_file = where.endswith(".py") or os.sep in where or "/" in where
    if is_file:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ProblemError(f"problem {ref!r}: no file {path}; {accepted}")
        module_name = f"_beyondsgd_problem_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}"
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # DataLoader workers and pickling find it
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ProblemError(f"problem {ref!r}: importing {path.name} raised "
                               f"{type(exc).__name__}: {_first_line(exc)}") from None
        origin = {"ref": f"{path}:{attr}", "file": str(path), "sha256": sha256_file(path)}
    else:
        if os.getcwd() not in sys.path:  # as `python -c "import module.path"` would
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name and where.startswith(exc.name):
                raise ProblemError(f"problem {ref!r}: no module named {where!r} (nor a file); "
                                   f"{accepted}") from None
            raise ProblemError(f"problem {ref!r}: importing {where} raised "
                               f"ModuleNotFoundError: {_first_line(exc)}") from None
        except Exception as exc:
            raise ProblemError(f"problem {ref!r}: importing {where} raised "
                               f"{type(exc).__name__}: {_first_line(exc)}") from None
        file = getattr(module, "__file__", None)
        origin = {"ref": ref, "file": file, "sha256": sha256_file(file) if file else None,
                  "cwd": os.getcwd()}
    if not hasattr(module, attr):
        found = [k for k, v in vars(module).items() if isinstance(v, Problem)]
        raise ProblemError(f"problem {ref!r}: {where} has no attribute {attr!r}; problems it "
                           f"defines: {', '.join(found) or 'none'}")
    obj = getattr(module, attr)
    if callable(obj) and not isinstance(obj, Problem):
        try:
            obj = obj()
        except Exception as exc:
            raise ProblemError(f"problem {ref!r}: {attr}() raised {type(exc).__name__}: "
                               f"{_first_line(exc)}") from None
    if not isinstance(obj, Problem):
        raise ProblemError(f"problem {ref!r}: {attr} is a {type(obj).__name__}, not a "
                           "beyondsgd.Problem (nor a function returning one)")
    return register(obj, origin)


def ensure(name: str, ref: str = "", identity: str = "", cwd: str = "") -> Registered:
    """The registered problem ``name``, loading ``ref`` first when this process has not (a suite
    worker, a Ray task; ``cwd``: the driver's working directory, where a ``module:NAME`` ref is
    imported from); ``identity``: the hash the driver saw (a changed file is refused)."""
    prob = PROBLEMS.get(name)
    if ref and (prob is None or (prob.origin or {}).get("ref") != ref):
        if cwd and cwd not in sys.path:
            sys.path.insert(0, cwd)
        prob = load_ref(ref)
    elif prob is None:
        from .registry import get_problem

        return get_problem(name)
    got = (prob.origin or {}).get("identity", "")
    if identity and got != identity:
        raise ProblemError(f"problem {name}: {ref} changed since the run started (now "
                           f"{got[:12]}, was {identity[:12]}); results of a changed problem are "
                           "never mixed: start again with a new --store or problem name")
    return prob


def job_source(prob: Registered) -> tuple[str, str, str]:
    """What a worker needs to load ``prob`` itself: (ref, identity, cwd); empty for ours."""
    card = getattr(prob, "origin", None) or {}
    if not card.get("ref"):
        return "", "", ""
    return card["ref"], card.get("identity", ""), card.get("cwd", "")


def check_store(store: Any, prob: Registered) -> None:
    """Refuse (:class:`ProblemError`) a store holding trials of a problem of this name that was
    defined differently (another file hash or fingerprint): results of a changed problem must
    not mix with the old ones."""
    card = getattr(prob, "origin", None)
    if not card:
        return
    other = {}
    for t in store.trials(problem=prob.name):
        got = ((t.get("env") or {}).get("problem") or {}).get("identity")
        if got and got != card["identity"]:
            other.setdefault(got, []).append(t)
    if other:
        got, trials = next(iter(other.items()))
        what = f"its file {card['file']}" if card.get("file") else "its definition"
        raise ProblemError(
            f"problem {prob.name} changed: {what} now hashes to {card['identity'][:12]}, but "
            f"{len(trials)} trial(s) in {store.path} ran with {got[:12]}; results of a changed "
            "problem are never mixed: use a new --store, or give the problem a new name")


def _stored_range(r: Any) -> tuple[float, float]:
    """A card's metric range as stored (JSON writes an infinite bound as null)."""
    lo, hi = (list(r) + [None, None])[:2] if r else (0.0, 1.0)
    return (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))


def register_stored(store: Any) -> list[str]:
    """Register, from a store's trial records alone, every user problem it holds that this
    process does not know (so ``report``/``export`` work without the user's file). Their data
    cannot be loaded; everything a report reads (task, metric, direction, epochs, target) is in
    the card. Returns the names registered."""
    out = []
    for t in store.trials():
        card = ((t.get("env") or {}).get("problem") or {})
        name = t["problem"]
        if not card.get("user") or name in PROBLEMS:
            continue

        def load(seed: int, name=name):
            raise ProblemError(f"problem {name}: its data is not available here (the store "
                               "holds its results only); load its file to train it")

        target = card.get("target")
        PROBLEMS[name] = Registered(
            name, card.get("description", ""), load, None, card["task"],
            batch_size=int(card.get("batch_size", 1)), epochs=int(card.get("epochs", 1)),
            target=float(target) if target is not None else math.nan,
            metric_name=card.get("metric"), higher=card.get("higher_is_better"),
            range_=_stored_range(card.get("metric_range")), origin=card)
        out.append(name)
    return out
