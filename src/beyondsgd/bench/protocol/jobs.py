"""One suite job = one trial to run, and the local way to run a list of them.

Both executors import this module and nothing imports them back, so data flows one way:
``suite -> ray_executor -> jobs -> runner/store`` and ``suite -> jobs``. A :class:`Job` names a
trial (problem, method, hyperparameters, seed, epochs, tag, train fraction); :func:`run_job`
runs it into a store file and never raises; :func:`execute_local` runs many, in this process or
on a process pool.

A pool worker dies with the process that started the pool (:func:`init_worker`): on Linux the
kernel kills it when its parent exits (``PR_SET_PDEATHSIG``), and everywhere it checks that its
parent is still there before every store write and every job, exiting at once when it is not. A
worker of a killed suite therefore writes nothing after the suite's death; its trial keeps a lease
of a dead process, which the next run on this host takes over at once (``lease.py``).

>>> Job("digits_mlp", "sgd", {"lr": 0.1}, seed=1, epochs=2, tag="final").train_fraction
1.0
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from ..store import Store

BUSY_POLL_SECONDS = 1.0
EXIT_ORPHANED = 75  # a pool worker's exit status when its parent has died
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_parent_pid: int | None = None  # set in pool workers by init_worker
#: user problems this worker loads itself before their first job: name -> (ref, identity, cwd)
#: (``problems.user.job_source``); a file changed since the suite started is refused
_sources: dict[str, tuple[str, str, str]] = {}


def init_worker(parent_pid: int, sources: dict[str, tuple[str, str, str]] | None = None
                ) -> None:
    """Pool-worker initializer: die with the process ``parent_pid`` that started the pool.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (the kernel kills this worker when the thread
    that started it exits, so the pool must be used by the thread that created it, as
    ``run_suite`` does). Everywhere: :func:`exit_if_orphaned` before every job and store write.
    """
    global _parent_pid
    _parent_pid = parent_pid
    _sources.update(sources or {})
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl: the checks remain
            pass
    exit_if_orphaned()  # the parent may have died before prctl took effect


def orphaned() -> bool:
    """Whether this is a pool worker whose parent has died (it was re-parented)."""
    return _parent_pid is not None and os.getppid() != _parent_pid


def exit_if_orphaned() -> None:
    """End this pool worker at once, writing nothing more, if its parent has died."""
    if orphaned():
        os._exit(EXIT_ORPHANED)


@dataclass(frozen=True)
class Job:
    """One trial of the suite; ``train_fraction`` < 1 trains on that share of the training set
    (the GDSolver data-efficiency claim runs at 0.5)."""

    problem: str
    method: str
    hparams: dict[str, Any]
    seed: int
    epochs: int | None
    tag: str
    train_fraction: float = 1.0


def run_job(store_path: str, job: Job, device: str, threads: int | None) -> tuple[Job, str, str]:
    """Worker entry point: run one trial into the store; never raises.

    A trial that another live process runs (e.g. a worker of an interrupted suite still
    finishing it) is waited for, not skipped: the protocol needs every result before it picks
    the best setting. The wait ends when that process ends the trial, dies, or its lease
    expires (``lease.py``), and this worker then takes the trial over if it is unfinished."""
    import torch

    from ..run.runner import run_trial

    exit_if_orphaned()
    if threads:
        torch.set_num_threads(threads)
    try:
        if job.problem in _sources:  # a user problem: import its file here as the driver did
            from ..problems.user import ensure

            ensure(job.problem, *_sources[job.problem])
        with Store(store_path) as st:
            if _parent_pid is not None:
                st.before_write = exit_if_orphaned
            while True:
                res = run_trial(job.problem, job.method, job.hparams, seed=job.seed,
                                epochs=job.epochs, device=device, store=st, tag=job.tag,
                                train_fraction=job.train_fraction)
                if not res.busy:
                    break
                time.sleep(BUSY_POLL_SECONDS)
        return job, res.status, ""
    except Exception as exc:  # recorded as failed in the store by run_trial
        return job, "failed", f"{type(exc).__name__}: {exc}"


def execute_local(jobs: list[Job], store_path: str, pool: ProcessPoolExecutor | None,
                  threads: int | None, device: str,
                  on_done: Callable[[Job, str, str], None]) -> None:
    """Run ``jobs`` in this process (``pool=None``) or on a worker pool; ``on_done(job, status,
    error)`` once per job, in completion order."""
    if pool is None:
        for job in jobs:
            on_done(*run_job(store_path, job, device, threads))
        return
    futures = [pool.submit(run_job, store_path, job, device, threads) for job in jobs]
    for fut in as_completed(futures):
        on_done(*fut.result())
