"""Trials whose *trained model* is measured after training (pruning, test L1): the helper of the
DessiLBI and GDSolver experiments.

:meth:`Context.trial <beyondsgd.bench.reproduce.core.Context.trial>` returns the stored
evaluations only: neither the method object (SLBI's Γ and selection path) nor, for a trial found
finished in the store, the model. :func:`analysed_trial` therefore trains the trial itself, with
the registered method's own hooks (``prepare``, ``train_step``, ``end_of_epoch``, ``metrics``,
``eval_model``: the same training as :func:`beyondsgd.bench.runner.run_trial`, the same
minibatch order :func:`~beyondsgd.bench.runner.epoch_batches` and evaluation
:func:`~beyondsgd.bench.runner.evaluate`), calls ``analyse(model, method, data)`` on the trained
model, and writes the whole trial to the store in one :meth:`Store.record_trial` under the key
``Context.trial`` would use, with the analysis as an event ``{"kind": "analysis", ...}`` of the
last epoch. A re-run (or a replay context) finds the record and trains nothing; a killed run
resumes from its per-epoch checkpoint (``<store stem>_checkpoints/<key>.pt``, model, method
state, RNG states and the evaluations so far), like the runner's.

>>> from beyondsgd.bench.reproduce.trained import analysis_of
>>> analysis_of([{"kind": "slbi_path"}, {"kind": "analysis", "acc": 0.9}])
{'kind': 'analysis', 'acc': 0.9}
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ...methods import TrainContext, get_method_class
from ...methods.base import evaluate, resolve_hparams
from ..problems import Problem
from ..run import checkpoint as C
from ..run.runner import default_checkpoint_dir
from ..run.trial import DATA_SPLIT_SEED, TrialResult, environment, epoch_batches, summary
from ..store import trial_key
from .core import Context, full_tag, stored_trial

Analyse = Callable[[torch.nn.Module, Any, Any], dict]


def eval_test_metric(prob: Problem, model: torch.nn.Module, data) -> float:
    """The problem's metric of ``model`` on the test set (as the runner records it)."""
    return evaluate(model, data.x_test, data.y_test, prob.loss_fn, prob.metric_fn)[1]


def analysis_of(events: list[dict]) -> dict:
    """The analysis event of a trial's events (``{}`` when there is none)."""
    found = [e for e in events if e.get("kind") == "analysis"]
    return found[-1] if found else {}


def analysed_trial(ctx: Context, problem: Problem, method: str, hparams: dict, seed: int,
                   analyse: Analyse, epochs: int | None = None, tag: str = "",
                   train_fraction: float = 1.0) -> TrialResult:
    """Train one trial and measure the trained model with ``analyse``; resumable, stored.

    ``analyse(model, method, data) -> dict`` (JSON-able numbers) runs once, on the trained model
    of a finished trial; its dict is ``analysis_of(result.events)``. Replay contexts read the
    record only (``NotRecorded`` if absent)."""
    t = full_tag(ctx.experiment, ctx.scale, tag)
    if ctx.replay:
        return _counted(ctx, stored_trial(ctx.store, problem, method, hparams, seed, epochs, t,
                                          train_fraction), tag)
    cls = get_method_class(method)
    hp = resolve_hparams(cls, hparams or {})
    n_ep = problem.epochs if epochs is None else int(epochs)
    key = trial_key(problem.name, method, hp, int(seed), n_ep, float(train_fraction), t)
    store = ctx.store
    if store is not None:
        row = store.trial_by_key(key)
        if row is not None and row["status"] in ("finished", "diverged"):
            ctx.skipped += 1
            return _counted(ctx, stored_trial(store, problem, method, hparams, seed, epochs, t,
                                              train_fraction), tag)
    label = f"{problem.name} {method} {tag} seed {seed}".replace("  ", " ")
    started = time.time()
    evals, events, status = _train(ctx, problem, cls, hp, int(seed), n_ep, train_fraction,
                                   key, analyse, label)
    ctx.trained += 1
    ctx.log(f"{label}: {status}")
    res = TrialResult(problem.name, method, hp, int(seed), status, evals=evals, events=[
        {"epoch": e["epoch"], "step": e["step"], **e["data"]} for e in events])
    if store is not None:
        res.trial_id = store.record_trial(
            key, problem.name, method, hp, int(seed), n_ep, float(train_fraction), t,
            environment(), status, evals, events, summary(problem, evals), started=started)
        ckpt = _ckpt_path(ctx, key)
        if ckpt is not None:
            C.remove(ckpt)
    return _counted(ctx, res, tag)


def _counted(ctx: Context, res: TrialResult, tag: str = "") -> TrialResult:
    """Count the trial in the context's totals (trials seen, training seconds, seconds per
    epoch) through the context's own bookkeeping, as ``Context.trial`` does."""
    count = getattr(ctx, "_count", None)
    if count is not None:
        return count(res, tag)
    return res


def _ckpt_path(ctx: Context, key: str):
    d = default_checkpoint_dir(ctx.store)
    return d / f"{key}.pt" if d is not None else None


def _train(ctx: Context, prob: Problem, cls, hp: dict, seed: int, epochs: int,
           train_fraction: float, key: str, analyse: Analyse, label: str
           ) -> tuple[list[dict], list[dict], str]:
    device = torch.device(ctx.device)
    data = ctx.data_override.get(prob.name) or prob.load(DATA_SPLIT_SEED)
    if train_fraction < 1.0:
        data = data.subsample_train(train_fraction, seed=DATA_SPLIT_SEED)
    data = data.to(device)
    n_eval = min(prob.train_eval_size, data.x_train.shape[0])
    steps_per_epoch = math.ceil(data.x_train.shape[0] / prob.batch_size)

    def batches(epoch: int):
        return epoch_batches(data.x_train, data.y_train, prob.batch_size, seed, epoch)

    tctx = TrainContext(device=device, loss_fn=prob.loss_fn, task=prob.task,
                        x_train=data.x_train, y_train=data.y_train, x_val=data.x_val,
                        y_val=data.y_val, batch_size=prob.batch_size, epochs=epochs,
                        steps_per_epoch=steps_per_epoch, num_classes=data.num_classes,
                        batch_iter=batches, seed=seed, extras={"problem": prob.name},
                        metric_fn=prob.metric_fn)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    model = prob.build_model(data, "relu", seed).to(device)
    method = cls(hp)
    model = method.prepare(model, tctx)
    start, step, seconds, evals, events = 0, 0, 0.0, [], []
    ckpt = _ckpt_path(ctx, key)
    if ckpt is not None and ckpt.exists():
        ck = C.load(ckpt, device, epochs)
        try:
            if not isinstance(ck, dict):
                raise ValueError(ck)
            model.load_state_dict(ck["model"])
            method.load_state_dict(ck["method"])
            C.set_rng_state(ck["rng"])
            start, step, seconds = ck["epoch"], ck["step"], ck["train_seconds"]
            evals, events = ck["evals"], ck["events"]
            ctx.log(f"{label}: resumed after epoch {start}")
        except Exception as exc:  # another version's checkpoint: start again
            C.discard(ckpt, f"does not fit this trial ({type(exc).__name__})")
            return _train(ctx, prob, cls, hp, seed, epochs, train_fraction, key, analyse,
                          label)

    def record(epoch: int) -> dict:
        em = method.eval_model(model)
        tr, trm = evaluate(em, data.x_train[:n_eval], data.y_train[:n_eval], prob.loss_fn,
                           prob.metric_fn)
        vl, vm = evaluate(em, data.x_val, data.y_val, prob.loss_fn, prob.metric_fn)
        tl, tm = evaluate(em, data.x_test, data.y_test, prob.loss_fn, prob.metric_fn)
        row = {"epoch": epoch, "step": step, "train_seconds": seconds, "train_loss": tr,
               "train_metric": trm, "val_loss": vl, "val_metric": vm, "test_loss": tl,
               "test_metric": tm,
               **method.metrics(model)}
        evals.append(row)
        if ctx.progress:
            ctx.log(f"{label}: epoch {epoch}/{epochs} train loss {tr:.4g} test {prob.metric} "
                    f"{tm:.4f} ({seconds:.1f}s)")
        return row

    if start == 0 and not evals:
        if not math.isfinite(record(0)["train_loss"]):
            return evals, events, "diverged"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.train()
    for epoch in range(start, epochs):
        sync()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for xb, yb in batches(epoch):
            loss_sum += method.train_step(model, (xb, yb), prob.loss_fn)
            step += 1
        new = method.end_of_epoch(model, tctx, epoch)
        sync()
        seconds += time.perf_counter() - t0
        events.extend({"epoch": epoch + 1, "step": step, "data": e} for e in new or [])
        row = record(epoch + 1)
        if not (math.isfinite(float(loss_sum)) and math.isfinite(row["train_loss"])):
            return evals, events, "diverged"
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            C.save_atomic({"epoch": epoch + 1, "step": step, "train_seconds": seconds,
                           "model": model.state_dict(), "method": method.state_dict(),
                           "rng": C.rng_state(), "evals": evals, "events": events}, ckpt)
    out = analyse(model, method, data)
    events.append({"epoch": epochs, "step": step, "data": {"kind": "analysis", **out}})
    return evals, events, "finished"
