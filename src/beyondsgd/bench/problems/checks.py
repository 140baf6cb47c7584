"""Every check of a user's :class:`~.spec.Problem` that can run before training: one
:class:`~.spec.ProblemError` line naming the problem (:func:`check_problem`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .spec import (
    CHECK_ROWS,
    LOSSES,
    METRICS,
    NAME_RE,
    TASKS,
    Problem,
    ProblemError,
    _first_line,
    _first_rows,
    _is_dataset,
    loss_and_metric,
)


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
    ``Dataset``). Returns what it learnt: ``num_classes``/``output_dim``, ``streamed``, and the
    ``model`` at seed 0 and each split's first ``rows`` it read (the fingerprint hashes them)."""
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
    width, rows = None, {}
    for split in ("train", "val", "test"):
        try:
            x, y = rows[split] = _first_rows(getattr(p, split), CHECK_ROWS)
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
            "streamed": kinds[0], "model": model, "rows": rows}


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


