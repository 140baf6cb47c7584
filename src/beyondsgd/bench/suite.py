"""The benchmark suite: problems x methods x (tuning + seed re-runs + defaults), resumable and
parallel over worker processes.

``run_suite("smoke", "results/smoke.db")`` runs the protocol of ``protocol.py`` for every problem
and method of the budget. Every trial is keyed in the store, so re-running the same command
skips finished trials and resumes interrupted ones from their last epoch checkpoint.

Two executors run the trials. ``executor="local"`` (the default) uses a pool of ``workers``
processes on this machine, each writing its trials into the store itself. ``executor="ray"``
sends trials to a Ray cluster as tasks (``address``; without one, a local cluster) and the
driver alone writes the store, so a dying worker loses nothing: its task is retried, and
finished trials are never redone (``ray_executor.py``; needs ``pip install 'beyondsgd[ray]'``).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from ..methods import METHODS
from .problems import get_problem
from .protocol import (
    DEFAULTS_TAG,
    FINAL_TAG,
    TUNE_TAG,
    Scored,
    pick_best,
    sample_configs,
    validation_score,
)
from .store import Store


@dataclass(frozen=True)
class Budget:
    """Which problems, how many tuning trials and seeds, and epochs per problem."""

    name: str
    problems: dict[str, int | None]  # problem -> epochs (None: the problem's budget)
    n_tune: int
    seeds: int
    methods: tuple[str, ...] | None = None  # None: every registered method
    description: str = ""


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        "smoke", {"digits_mlp": 3, "diabetes_mlp": 4}, n_tune=2, seeds=2,
        description="pipeline check for CI: two tiny problems, 2 tuning trials, 2 seeds "
                    "(a few minutes on 2 cores)"),
    "small": Budget(
        "small", {"digits_mlp": 20, "diabetes_mlp": 100, "friedman_mlp": 50,
                  "toy_polynomial_mlp": 15, "mnist1d_mlp": 30, "fmnist_mlp": 3},
        n_tune=4, seeds=3,
        description="the README numbers: six problems, 4 tuning trials, 3 seeds "
                    "(about an hour on 2 cores)"),
    "full": Budget(
        "full", {"digits_mlp": None, "mnist1d_mlp": None, "mnist1d_cnn": None,
                 "fmnist_mlp": None, "fmnist_2c2d": None, "fmnist_lenet5": None,
                 "diabetes_mlp": None, "friedman_mlp": None, "toy_identity_mlp": None,
                 "toy_polynomial_mlp": None, "toy_formula_mlp": None},
        n_tune=16, seeds=5,
        description="every problem at its full epoch budget, 16 tuning trials, 5 seeds "
                    "(for a multi-core or GPU machine; days on 2 cores)"),
}


EXECUTORS = ("local", "ray")


def get_budget(name: str) -> Budget:
    try:
        return BUDGETS[name]
    except KeyError:
        raise ValueError(f"unknown budget {name!r}; accepted: {', '.join(BUDGETS)}") from None


@dataclass(frozen=True)
class Job:
    problem: str
    method: str
    hparams: dict[str, Any]
    seed: int
    epochs: int | None
    tag: str


@dataclass
class SuiteResult:
    budget: str
    store: str
    jobs: int = 0
    failed: list[str] = field(default_factory=list)
    best: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


def tuning_jobs(budget: Budget, methods: list[str]) -> list[Job]:
    jobs = []
    for problem, epochs in budget.problems.items():
        for m in methods:
            for cfg in sample_configs(m, budget.n_tune):
                jobs.append(Job(problem, m, cfg, 0, epochs, TUNE_TAG))
            for s in range(1, budget.seeds + 1):
                jobs.append(Job(problem, m, {}, s, epochs, DEFAULTS_TAG))
    return jobs


def best_settings(store: Store, budget: Budget, methods: list[str]
                  ) -> dict[tuple[str, str], Scored]:
    """Best tuning setting per (problem, method) by validation score, from the store."""
    out = {}
    for problem, epochs in budget.problems.items():
        prob = get_problem(problem)
        n_ep = prob.epochs if epochs is None else epochs
        for m in methods:
            tuned = store.trials(problem=problem, method=m, tag=TUNE_TAG, seed=0, epochs=n_ep)
            scored = []
            for cfg in sample_configs(m, budget.n_tune):
                rows = [t for t in tuned
                        if all(t["hparams"].get(k) == v for k, v in cfg.items())]
                if not rows:
                    continue
                t = rows[0]
                score = validation_score(store.evals(t["id"]), prob.higher_is_better,
                                         t["status"])
                scored.append(Scored(cfg, score, t["status"]))
            if scored:
                out[(problem, m)] = pick_best(scored)
    return out


BUSY_POLL_SECONDS = 1.0


def _run_job(store_path: str, job: Job, device: str, threads: int | None) -> tuple[Job, str, str]:
    """Worker entry point: run one trial into the store; never raises.

    A trial that another live process runs (e.g. a worker of an interrupted suite still
    finishing it) is waited for, not skipped: the protocol needs every result before it picks
    the best setting. The wait ends when that process ends the trial, dies, or its lease
    expires (``lease.py``), and this worker then takes the trial over if it is unfinished."""
    import torch

    from .runner import run_trial

    if threads:
        torch.set_num_threads(threads)
    try:
        with Store(store_path) as st:
            while True:
                res = run_trial(job.problem, job.method, job.hparams, seed=job.seed,
                                epochs=job.epochs, device=device, store=st, tag=job.tag)
                if not res.busy:
                    break
                time.sleep(BUSY_POLL_SECONDS)
        return job, res.status, ""
    except Exception as exc:  # recorded as failed in the store by run_trial
        return job, "failed", f"{type(exc).__name__}: {exc}"


def _execute(jobs: list[Job], store_path: str, pool: ProcessPoolExecutor | None,
             threads: int | None, device: str, on_done: Callable[[Job, str, str], None]) -> None:
    """Run ``jobs`` in this process (``pool=None``) or on the suite's worker pool."""
    if pool is None:
        for job in jobs:
            on_done(*_run_job(store_path, job, device, threads))
        return
    futures = [pool.submit(_run_job, store_path, job, device, threads) for job in jobs]
    for fut in as_completed(futures):
        on_done(*fut.result())


def run_suite(budget: str | Budget, store_path: str, methods: list[str] | None = None,
              workers: int | None = None, threads: int | None = None, device: str = "cpu",
              progress: bool = True, executor: str = "local", address: str | None = None,
              max_retries: int = 3) -> SuiteResult:
    """Run the tuning protocol for every problem x method of ``budget`` into ``store_path``.

    ``executor="local"``: ``workers`` processes on this machine (default: one per core; 1: in
    this process), each with ``threads`` torch threads (default: cores / workers). Measured on 2
    cores: 2 workers x 1 thread ran the smoke budget in 23.3 s vs 32.6 s for 1 worker x 2 threads
    (30.1 s for 1 x 1), and 32 mnist1d_mlp trials in 19.7 s vs 24.9 s (28.2 s).
    ``executor="ray"``: every trial is a Ray task reserving ``threads`` CPUs (default 1) on the
    cluster at ``address`` (e.g. ``"auto"``, ``"ray://host:10001"``); without an address a
    local Ray cluster with ``workers * threads`` CPUs is started (and stopped at the end), and
    if Ray is already initialised in this process that connection is used. A Ray task whose
    worker dies is retried up to ``max_retries`` times, then recorded as failed;
    ``max_retries`` is unused locally.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; accepted: {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise ValueError(f"address={address!r} is for executor='ray', "
                         f"not executor={executor!r}")
    b = get_budget(budget) if isinstance(budget, str) else budget
    methods = list(methods or b.methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(METHODS)}")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if threads is None:
        # a cluster's cores are not this machine's: one CPU per Ray task unless told otherwise
        threads = 1 if executor == "ray" else max(1, (os.cpu_count() or 1) // workers)
    ray_executor = pool = None
    if executor == "ray":
        from .ray_executor import RayExecutor

        ray_executor = RayExecutor(address=address, num_cpus=workers * threads, threads=threads,
                                   device=device, max_retries=max_retries).start()
    elif workers > 1:
        # one pool for the whole suite (each worker's start-up imports cost seconds); spawn,
        # not fork: forking a process whose OpenMP threads have run can deadlock
        pool = ProcessPoolExecutor(max_workers=workers,
                                   mp_context=multiprocessing.get_context("spawn"))
    try:
        return _run_suite(b, store_path, methods, threads, device, progress, ray_executor,
                          pool)
    finally:
        if ray_executor is not None:
            ray_executor.stop()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _run_suite(b: Budget, store_path: str, methods: list[str], threads: int, device: str,
               progress: bool, ray_executor: Any, pool: ProcessPoolExecutor | None
               ) -> SuiteResult:
    t0 = time.time()
    result = SuiteResult(b.name, store_path)
    Store(store_path).close()  # create the schema once, before workers race to do it

    bar = None
    if progress:
        try:
            from tqdm import tqdm

            total = len(methods) * len(b.problems) * (b.n_tune + 2 * b.seeds)
            bar = tqdm(total=total, unit="trial", dynamic_ncols=True, file=sys.stderr,
                       desc=f"suite {b.name}")
        except ImportError:  # pragma: no cover
            bar = None

    def done(job: Job, status: str, error: str) -> None:
        result.jobs += 1
        if status == "failed":
            result.failed.append(f"{job.problem}/{job.method}/{job.tag}/seed{job.seed}: {error}")
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{job.problem}/{job.method}/{job.tag}: {status}")

    def execute(jobs: list[Job]) -> None:
        if ray_executor is None:
            _execute(jobs, store_path, pool, threads, device, done)
        else:
            ray_executor.execute(jobs, store_path, done)

    # problem by problem, so an interrupted suite leaves complete results for finished problems
    best: dict[tuple[str, str], Scored] = {}
    for problem, epochs in b.problems.items():
        one = Budget(b.name, {problem: epochs}, b.n_tune, b.seeds, b.methods)
        execute(tuning_jobs(one, methods))
        with Store(store_path) as st:
            best_p = best_settings(st, one, methods)
        finals = [Job(p, m, sc.hparams, s, epochs, FINAL_TAG)
                  for (p, m), sc in best_p.items() for s in range(1, b.seeds + 1)]
        execute(finals)
        best.update(best_p)
    if bar is not None:
        bar.close()
    result.best = {k: {"hparams": v.hparams, "val_score": v.score} for k, v in best.items()}
    result.seconds = time.time() - t0
    return result
