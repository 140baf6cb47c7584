"""The trial runner: one loop that trains every method.

A *trial* is (problem, method, hyperparameters, seed[, epochs, train fraction, tag]). The runner

1. loads the problem's data (split seed fixed at 0, so every trial of a problem sees the same
   train/validation/test split; the trial seed drives initialisation and minibatch order),
2. builds the model from the seed, lets the method ``prepare`` it,
3. evaluates before training (epoch 0) and after every epoch: training loss and metric
   (``train_metric``, stored with the row's extras) on a fixed subset of the training set
   (the problem's ``train_eval_size`` first rows), validation and test loss and metric, plus
   the method's ``metrics()``
   (:func:`beyondsgd.methods.base.evaluate`, the same function behind a method's
   ``TrainContext.evaluate``/``val_loss``/``val_metric``, so the numbers agree bit for bit),
4. counts only training time (steps and end-of-epoch hooks, e.g. GDSolver's MILP) in
   ``train_seconds`` (wall clock) and, around the same code, this process's CPU time
   (``time.process_time``, its threads summed: other jobs on the cores cannot inflate it) in
   ``train_cpu_seconds`` (on CPU only: on CUDA/MPS the device's work is not this process's CPU
   time, so only the wall clock, read after a synchronisation, is recorded); evaluation is
   excluded. The epoch-0 row records ``threads``
   (``torch.get_num_threads()``). A resume from a checkpoint without CPU seconds (older than
   them) records none from there on (its CPU clock is unknown),
5. ends the trial as ``diverged`` when a loss becomes NaN/inf (recorded, not raised), and a
   trial trained to the end whose final training loss is within 1 % of its epoch-0 one or above
   (:func:`beyondsgd.bench.store.ends_collapsed`) as ``collapsed``: it learnt nothing, and is
   done like a finished one (never re-run, skipped by a batch),
6. with a store, first claims the trial (``Store.claim_trial``: a trial another live process
   runs is left to it and returned with ``busy=True``), writes every evaluation and event as it
   happens and checkpoints model, method state and RNG states after every epoch, so a killed
   trial resumes from its last finished epoch and ends with the same numbers as an
   uninterrupted run. An unreadable checkpoint is reported (a warning naming the file),
   deleted, and the trial restarts from epoch 0,
7. with ``analyse``, measures the trained model of a finished trial once more (pruning, test
   L1: what an experiment needs beyond the evaluations): ``analyse(model, method, data)``
   returns a dict of JSON-able numbers, stored as the event ``{"kind": "analysis", ...}`` of the
   last epoch (after that epoch's method events), so a stored trial keeps its measurement.

Data parallelism: when ``torch.distributed`` is initialised with W > 1 processes (``torchrun``,
see :mod:`beyondsgd.distributed`), every rank loads the whole problem, the model is wrapped in
``DistributedDataParallel`` for ``train_step``, and each rank trains on its contiguous slice of
every global minibatch (the problem's ``batch_size`` is the *global* batch, so W processes
reproduce the one-process trial up to float round-off). Evaluations are split over the ranks and
summed; rank 0 alone writes the store, prints and checkpoints.

The minibatch order of epoch ``e`` is a permutation drawn from ``seed`` and ``e`` alone, so it
needs no saved state to resume. The result record, environment, minibatch order and summary live
in :mod:`beyondsgd.bench.trial` (re-exported here).
"""

from __future__ import annotations

import math
import random
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import distributed as D
from ...methods import get_method_class
from ...methods.base import Batch, evaluate, resolve_hparams
from ..problems import Problem, get_problem
from ..problems import user as U
from ..store import Store, TrialBusy, ends_collapsed, trial_key
from . import checkpoint as C
from .arguments import check_arguments
from .data import TrialData
from .trial import (
    DATA_SPLIT_SEED,
    TrialResult,
    device_sync,
    environment,
    epoch_batches,
    not_run,
    summary,
)

__all__ = ["DATA_SPLIT_SEED", "TrialResult", "default_checkpoint_dir", "environment",
           "epoch_batches", "evaluate", "run_trial"]

def default_checkpoint_dir(store: Store | None) -> Path | None:
    return C.default_dir(store.path if store is not None else None)


def run_trial(
    problem: str | Problem,
    method: str,
    hparams: dict[str, Any] | None = None,
    seed: int = 0,
    epochs: int | None = None,
    device: str | torch.device = "cpu",
    store: Store | None = None,
    progress: bool | Callable[[dict], None] = False,
    train_fraction: float = 1.0,
    tag: str = "",
    checkpoint_dir: str | Path | None = None,
    dataset=None,
    stop_after_epoch: int | None = None,
    distributed: bool | None = None,
    analyse: Callable[[torch.nn.Module, Any, Any], dict] | None = None,
) -> TrialResult:
    """Train ``method`` on ``problem`` for ``epochs`` (default: the problem's budget).

    ``progress`` may be a callable receiving each evaluation dict (the CLI's progress bar), or
    True to print one line per epoch. ``dataset`` overrides the problem's data (tests).
    ``stop_after_epoch`` stops early, leaving the trial resumable (tests of resume).
    ``distributed``: data parallelism over the initialised ``torch.distributed`` group (``None``:
    whenever one with more than one process is initialised). Every rank calls ``run_trial`` with
    the same arguments; only rank 0's ``store`` is used (the others may pass ``None``), and
    checkpoints must be on a filesystem every rank can read. ``analyse(model, method, data)``:
    see the module docstring (7.); it runs on every rank, rank 0 stores it.
    """
    device = check_arguments(problem, method, hparams, seed, epochs, device, store, progress,
                             train_fraction, tag, checkpoint_dir, stop_after_epoch, distributed)
    if analyse is not None and not callable(analyse):
        raise ValueError(f"analyse must be a callable (model, method, data) -> dict or None, "
                         f"got {analyse!r}")
    if isinstance(problem, U.Problem):  # a user's problem object: checked and registered
        prob = U.register(problem)
    else:
        prob = problem if isinstance(problem, Problem) else get_problem(problem)
    cls = get_method_class(method)
    hp = resolve_hparams(cls, hparams or {})
    epochs = prob.epochs if epochs is None else int(epochs)
    seed, train_fraction = int(seed), float(train_fraction)
    dp = D.resolve(distributed)
    if dp and D.rank() != 0:
        store = None  # rank 0 alone writes results

    key = trial_key(prob.name, method, hp, seed, epochs, train_fraction, tag)
    trial_id = None
    done = None
    if store is not None:
        U.check_store(store, prob)  # a changed user problem never mixes with its old trials
        env = environment(device)
        if prob.origin:
            env["problem"] = prob.origin
        if dp:
            env["world_size"] = D.world_size()
        claim = store.claim_trial(key, prob.name, method, hp, seed, epochs, train_fraction, tag,
                                  env)
        trial_id = claim.trial_id
        if not claim.claimed:
            done = not_run(store, prob.name, method, hp, seed, trial_id, claim.holder)
    if dp:
        state = D.broadcast_object((done.status, done.busy) if done is not None else None)
        if state is not None and done is None:
            done = TrialResult(prob.name, method, hp, seed, state[0], skipped=not state[1],
                               busy=state[1])
    if done is not None:
        return done
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(store)
    ckpt_path = ckpt_dir / f"{key}.pt" if ckpt_dir is not None else None
    if dp:
        ckpt_path = D.broadcast_object(ckpt_path)

    result = TrialResult(prob.name, method, hp, seed, "running", trial_id=trial_id)
    try:
        _train(prob, cls, hp, seed, epochs, device, store, trial_id, ckpt_path, progress,
               train_fraction, dataset, stop_after_epoch, result, dp, analyse)
    except _LeaseLost:  # another process took the trial over (or ended it): it is theirs
        if store is None:
            return TrialResult(prob.name, method, hp, seed, "running", busy=True)
        return not_run(store, prob.name, method, hp, seed, trial_id, "another process")
    except Exception as exc:  # a crash of one trial is recorded, then re-raised
        result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
        if store is not None and trial_id is not None:
            try:  # never over a finished trial, nor one another process has taken over
                store.end_trial(trial_id, "failed", {}, traceback.format_exc())
            except Exception:  # pragma: no cover - the trial's own error matters more
                pass
        raise
    except BaseException:  # interrupted (Ctrl-C): resumable at once by any process
        if store is not None and trial_id is not None:
            store.release(trial_id)
        raise
    return result


class _LeaseLost(Exception):
    """This process no longer holds the trial it was running."""


def _train(prob: Problem, cls, hp, seed, epochs, device, store, trial_id, ckpt_path, progress,
           train_fraction, dataset, stop_after_epoch, result: TrialResult, dp: bool,
           analyse=None) -> None:
    data = dataset if dataset is not None else prob.load(DATA_SPLIT_SEED)
    if train_fraction < 1.0:
        data = data.subsample_train(train_fraction, seed=DATA_SPLIT_SEED)
    data = data.to(device)
    td = TrialData(prob, data, seed, dp)  # in memory or streamed: batches, evaluations, ctx
    world = D.world_size() if dp else 1
    global_batches, measure = td.global_batches, td.measure

    def batches(epoch: int) -> Iterator[Batch]:  # this rank's slices of the global batches
        for xb, yb in global_batches(epoch):
            yield (D.local_rows(xb), D.local_rows(yb)) if dp else (xb, yb)

    ctx = td.context(device, epochs, batches, D.rank() if dp else 0, world)
    writer = not dp or D.rank() == 0
    own_ckpt = ckpt_path if writer else None  # the checkpoint file this process may delete

    def agree(ok: bool) -> bool:  # every rank's ``ok`` (one process: its own)
        return D.broadcast_object(all(D.gather_objects(ok) or [True])) if dp else ok

    def build() -> tuple[torch.nn.Module, Any]:  # the model and method of epoch 0
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        model = prob.build_model(data, "relu", seed).to(device)
        method = cls(hp)
        return method.prepare(model, ctx), method

    model, method = build()
    start_epoch, step, train_seconds = 0, 0, 0.0
    # None: resumed from a checkpoint without CPU seconds, or an accelerator (its work is not
    # this process's CPU time: time to target then reads the synchronised wall clock)
    cpu_seconds: float | None = 0.0 if device.type == "cpu" else None
    ck = None
    found = ckpt_path is not None and ckpt_path.exists()
    if dp:
        found = D.broadcast_object(found)  # rank 0's view decides, so all ranks agree
    if found:
        ck = C.load(ckpt_path, device, epochs)
        if not agree(isinstance(ck, dict)):
            if own_ckpt is not None:
                C.discard(own_ckpt, ck if isinstance(ck, str) else "unreadable on "
                                    "another rank")
            ck = None
    if ck is not None:
        # a checkpoint is only usable with the store rows it continues (not after the rows were
        # deleted, nor with another store): otherwise start from scratch
        usable = store is None or any(e["epoch"] == ck["epoch"] for e in store.evals(trial_id))
        if dp:
            usable = D.broadcast_object(usable)
        if not usable:
            if own_ckpt is not None and store is not None:
                own_ckpt.unlink(missing_ok=True)
            ck = None
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])
            method.load_state_dict(ck["method"])
            C.set_rng_state(ck["rng"])
            why = ""
        except Exception as exc:  # saved by another version of the model or method
            why = f"does not fit this trial ({type(exc).__name__}: " \
                f"{(str(exc).strip().splitlines() or [''])[0]})"
        if not agree(not why):
            if own_ckpt is not None:
                C.discard(own_ckpt, why or "does not fit on another rank")
            ck = None
            model, method = build()  # from scratch: nothing of the checkpoint may remain
    result.model = model
    train_model = model
    if dp:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)
    events: list[dict] = []  # the method's events of the last trained epoch
    if ck is not None:
        start_epoch, step, train_seconds = ck["epoch"], ck["step"], ck["train_seconds"]
        cpu_seconds = ck.get("train_cpu_seconds")
        events = ck.get("epoch_events") or []
    lost = False
    if store is not None:
        try:  # a re-run from scratch (-1) replaces any stale rows; a resume drops later ones
            store.truncate_after(trial_id, -1 if ck is None else start_epoch)
        except TrialBusy:
            lost = True
        if ck is not None and not lost:
            result.evals = store.evals(trial_id)
            result.events = store.events(trial_id)
    if dp:
        lost = D.broadcast_object(lost)  # every rank stops together
    if lost:
        raise _LeaseLost

    def record(epoch: int, events: list[dict] | None = None) -> dict:
        em = method.eval_model(model)
        tr_loss, tr_metric = measure(em, "train")
        va_loss, va_metric = measure(em, "val")
        te_loss, te_metric = measure(em, "test")
        row = {"epoch": epoch, "step": step, "train_seconds": train_seconds,
               **({"train_cpu_seconds": cpu_seconds} if cpu_seconds is not None else {}),
               **({"threads": torch.get_num_threads()} if epoch == 0 else {}),
               "train_loss": tr_loss, "val_loss": va_loss, "val_metric": va_metric,
               "test_loss": te_loss, "test_metric": te_metric, "train_metric": tr_metric,
               **method.metrics(model)}
        if dp:  # DDP keeps the replicas identical; anything else is a bug worth seeing
            row["replica_max_diff"] = D.replica_difference(model)
        result.evals.append(row)
        lost = False
        if store is not None:
            try:  # this epoch's events, then its evaluation (which renews the lease)
                if events:
                    store.add_events(trial_id, epoch, step, events)
                store.add_eval(trial_id, row)
            except TrialBusy:
                lost = True
        if dp:
            lost = D.broadcast_object(lost)  # every rank stops together
        if lost:
            raise _LeaseLost
        if not writer:
            pass
        elif callable(progress):
            progress(row)
        elif progress:
            print(f"  epoch {epoch:3d}  train {tr_loss:.4f}  val {va_loss:.4f}  "
                  f"test {prob.metric} {te_metric:.4f}  ({train_seconds:.1f}s)", flush=True)
        return row

    if start_epoch == 0:
        row = record(0)
        if not math.isfinite(row["train_loss"]):
            return _finish(prob, store, trial_id, result, "diverged", own_ckpt)

    sync = device_sync(device)  # training time on an accelerator: its queued work included
    model.train()
    for epoch in range(start_epoch, epochs):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        loss_sum = torch.zeros((), device=device)
        try:
            for xg, yg in global_batches(epoch):
                xb, yb = (D.local_rows(xg), D.local_rows(yg)) if dp else (xg, yg)
                loss_fn = D.scaled_loss_fn(prob.batch_loss, xb.shape[0], xg.shape[0], world) \
                    if dp else prob.batch_loss
                loss_sum += method.train_step(train_model, (xb, yb), loss_fn)
                step += 1
            if dp:
                D.all_reduce_sum(loss_sum)  # every rank takes the same divergence decision
            events = method.end_of_epoch(model, ctx, epoch)
        except (RuntimeError, ValueError, ArithmeticError) as exc:
            # A method that trips over NaN/inf weights (a linear solver, a MILP) has diverged;
            # anything else is a real failure and propagates.
            if _finite(model) and math.isfinite(float(loss_sum)):
                raise
            result.error = f"diverged: {type(exc).__name__}: {exc}"
            return _finish(prob, store, trial_id, result, "diverged", own_ckpt)
        sync()
        train_seconds += time.perf_counter() - t0
        if cpu_seconds is not None:
            cpu_seconds += time.process_time() - c0
        if events:
            result.events.extend({"epoch": epoch + 1, "step": step, **e} for e in events)
        row = record(epoch + 1, events)
        if not (math.isfinite(float(loss_sum)) and math.isfinite(row["train_loss"])):
            return _finish(prob, store, trial_id, result, "diverged", own_ckpt)
        if ckpt_path is not None and writer:
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            C.save_atomic({"epoch": epoch + 1, "step": step, "train_seconds": train_seconds,
                           "train_cpu_seconds": cpu_seconds,
                          "model": model.state_dict(), "method": method.state_dict(),
                          "rng": C.rng_state(), "epoch_events": events or []}, ckpt_path)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < epochs:
            result.status = "running"
            if store is not None:
                store.release(trial_id)  # resumable by any process
            return None
    if analyse is not None:
        found = {"kind": "analysis", **analyse(model, method, data)}
        result.events.append({"epoch": epochs, "step": step, **found})
        lost = False
        if store is not None:
            try:  # all of the last epoch's events: add_events replaces those stored
                store.add_events(trial_id, epochs, step, [*(events or []), found])
            except TrialBusy:
                lost = True
        if dp:
            lost = D.broadcast_object(lost)
        if lost:
            raise _LeaseLost
    # collapsed needs the epoch-0 row (a store-less resume has only the rows it ran)
    trained = result.evals if result.evals and result.evals[0]["epoch"] == 0 else []
    status = "collapsed" if ends_collapsed(trained) else "finished"
    _finish(prob, store, trial_id, result, status, own_ckpt)


def _finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _finish(prob: Problem, store, trial_id, result: TrialResult, status: str,
            ckpt_path: Path | None) -> None:
    result.status = status
    if store is not None and not store.end_trial(trial_id, status, summary(prob, result.evals)):
        raise _LeaseLost
    if ckpt_path is not None:
        C.remove(ckpt_path)

