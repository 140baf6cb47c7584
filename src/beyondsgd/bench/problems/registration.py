"""A user's problem into the runner's registry: its card (file, hash, fingerprint, task,
metric) and its data as in-memory tensors or streamed ``Dataset``s."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

from ... import data as D
from ...data.streamed import StreamedData
from .checks import check_problem
from .registry import PROBLEMS
from .registry import Problem as Registered
from .spec import (
    CHECK_ROWS,
    Problem,
    ProblemError,
    _first_rows,
    _is_dataset,
    loss_and_metric,
    metric_info,
)


def fingerprint(p: Problem, checked: dict[str, Any] | None = None) -> str:
    """A hash of what defines the problem besides its file: name, task, sizes, the model's
    parameters at seed 0 and the first rows of every split (``checked``: what
    :func:`check_problem` returned, whose model and rows are those; else they are built and
    read here)."""
    if checked is None:
        torch.manual_seed(0)
        checked = {"model": p.model(0),
                   "rows": {s: _first_rows(getattr(p, s), CHECK_ROWS)
                            for s in ("train", "val", "test")}}
    h = hashlib.sha256()
    h.update(repr((p.name, p.resolved_task(), str(p.loss), str(p.metric), p.batch_size,
                   p.epochs, p.target, p.train_eval_size)).encode())
    for k, v in checked["model"].state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    for split in ("train", "val", "test"):
        d = getattr(p, split)
        h.update(str(len(d) if _is_dataset(d) else d[0].shape[0]).encode())
        x, y = checked["rows"][split]
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
    card["fingerprint"] = fingerprint(p, info)
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


