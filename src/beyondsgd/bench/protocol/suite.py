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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from ...methods import METHODS
from ..problems import get_problem
from ..store import Store
from .claims import fraction_runs
from .jobs import BUSY_POLL_SECONDS, Job, execute_local, init_worker, run_job
from .tuning import (
    DEFAULTS_TAG,
    TUNE_TAG,
    Scored,
    final_seeds,
    pick_best,
    sample_configs,
    study_tag,
    validation_score,
)

__all__ = ["BUDGETS", "BUSY_POLL_SECONDS", "Budget", "Job", "SuiteResult", "best_settings",
           "final_jobs", "get_budget", "run_job", "run_suite", "tuning_jobs"]


@dataclass(frozen=True)
class Budget:
    """Which problems, how many tuning trials and seeds, and epochs per problem."""

    name: str
    problems: dict[str, int | None]  # problem -> epochs (None: the problem's budget)
    n_tune: int
    seeds: int
    methods: tuple[str, ...] | None = None  # None: every registered method
    description: str = ""
    final_seeds: dict[str, int] = field(default_factory=dict)  # problem -> seeds of final runs
    studies: int = 1  # independent tuning studies (protocol.py, step 5)

    def n_final(self, problem: str) -> int:
        """Seeds of each final run on ``problem`` (``seeds`` unless ``final_seeds`` says)."""
        return self.final_seeds.get(problem, self.seeds)


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        "smoke", {"digits_mlp": 3, "diabetes_mlp": 4}, n_tune=2, seeds=2,
        description="pipeline check for CI: two tiny problems, 2 tuning trials, 2 seeds "
                    "(a few minutes on 2 cores)"),
    "small": Budget(
        "small", {"digits_mlp": 20, "diabetes_mlp": 100, "friedman_mlp": 50,
                  "toy_polynomial_mlp": 15, "mnist1d_mlp": 30, "fmnist_mlp": 3},
        n_tune=4, seeds=3,
        # more final seeds where the seed-to-seed spread demands it (docs/protocol.md, "Seeds"):
        # seeds giving 80% power to see the claims' margin at the measured spread, capped at 5
        final_seeds={"digits_mlp": 4, "friedman_mlp": 5, "toy_polynomial_mlp": 5,
                     "mnist1d_mlp": 5},
        description="the README numbers: six problems, 4 tuning trials, 3-5 seeds "
                    "(about 25 min on 2 idle cores)"),
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


@dataclass
class SuiteResult:
    budget: str
    store: str
    jobs: int = 0
    failed: list[str] = field(default_factory=list)
    best: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


def tuning_jobs(budget: Budget, methods: list[str], studies: int | None = None) -> list[Job]:
    """Every study's tuning trials (seed 0; a setting drawn by two studies runs once) and the
    defaults runs (seeds 1..S), per problem and method."""
    k = budget.studies if studies is None else studies
    jobs = []
    for problem, epochs in budget.problems.items():
        for m in methods:
            seen: list[dict] = []
            for study in range(k):
                for cfg in sample_configs(m, budget.n_tune, seed=study):
                    if cfg not in seen:
                        seen.append(cfg)
                        jobs.append(Job(problem, m, cfg, 0, epochs, TUNE_TAG))
            for s in range(1, budget.seeds + 1):
                jobs.append(Job(problem, m, {}, s, epochs, DEFAULTS_TAG))
    return jobs


def best_settings(store: Store, budget: Budget, methods: list[str], study: int = 0
                  ) -> dict[tuple[str, str], Scored]:
    """Best of study ``study``'s tuning settings per (problem, method) by validation score,
    from the store."""
    out = {}
    for problem, epochs in budget.problems.items():
        prob = get_problem(problem)
        n_ep = prob.epochs if epochs is None else epochs
        for m in methods:
            tuned = store.trials(problem=problem, method=m, tag=TUNE_TAG, seed=0, epochs=n_ep)
            scored = []
            for cfg in sample_configs(m, budget.n_tune, seed=study):
                rows = [t for t in tuned if t["train_fraction"] == 1.0
                        and all(t["hparams"].get(k) == v for k, v in cfg.items())]
                if not rows:
                    continue
                t = rows[0]
                score = validation_score(store.evals(t["id"]), prob.higher_is_better,
                                         t["status"])
                scored.append(Scored(cfg, score, t["status"]))
            if scored:
                out[(problem, m)] = pick_best(scored)
    return out


def final_jobs(budget: Budget, best: dict[tuple[str, str], Scored], study: int = 0
               ) -> list[Job]:
    """Study ``study``'s final runs: each best setting with the study's seeds, plus the runs at
    a smaller train fraction that a claim needs (``claims.fraction_runs``: GDSolver at 50% on
    classification problems), same setting, tag and seeds."""
    tag = study_tag(study)
    jobs = []
    for (p, m), sc in best.items():
        epochs = budget.problems[p]
        seeds = final_seeds(study, budget.n_final(p))
        jobs += [Job(p, m, sc.hparams, s, epochs, tag) for s in seeds]
        for method, frac, task in fraction_runs():
            if method == m and get_problem(p).task == task:
                jobs += [Job(p, m, sc.hparams, s, epochs, tag, frac) for s in seeds]
    return jobs


def _count_jobs(b: Budget, methods: list[str], studies: int) -> int:
    """Jobs the suite will run (for the progress bar): tuning + defaults + finals + fractions."""
    n = len(tuning_jobs(b, methods, studies))
    for p in b.problems:
        extra = sum(1 for m, _, task in fraction_runs()
                    if m in methods and get_problem(p).task == task)
        n += studies * b.n_final(p) * (len(methods) + extra)
    return n


def run_suite(budget: str | Budget, store_path: str, methods: list[str] | None = None,
              workers: int | None = None, threads: int | None = None, device: str = "cpu",
              progress: bool = True, executor: str = "local", address: str | None = None,
              max_retries: int = 3, studies: int | None = None) -> SuiteResult:
    """Run the tuning protocol for every problem x method of ``budget`` into ``store_path``.

    ``studies``: independent tuning studies (default: the budget's, 1 for the built-in ones);
    study ``k`` draws its own settings and re-runs its best one with its own seeds
    (``protocol.py`` step 5), so the claims get one verdict per study.

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
    if studies is not None and (isinstance(studies, bool) or not isinstance(studies, int)
                                or studies < 1):
        raise ValueError(f"studies must be an integer >= 1, got {studies!r}")
    if studies is not None:
        b = replace(b, studies=studies)
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
        # not fork: forking a process whose OpenMP threads have run can deadlock; the workers
        # die with this process and never write after it (jobs.init_worker)
        pool = ProcessPoolExecutor(max_workers=workers,
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker, initargs=(os.getpid(),))
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

            total = _count_jobs(b, methods, b.studies)
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
            execute_local(jobs, store_path, pool, threads, device, done)
        else:
            ray_executor.execute(jobs, store_path, done)

    # problem by problem, so an interrupted suite leaves complete results for finished problems
    best: dict[tuple[str, str], Scored] = {}
    for problem, epochs in b.problems.items():
        one = replace(b, problems={problem: epochs})
        execute(tuning_jobs(one, methods))
        with Store(store_path) as st:
            per_study = [best_settings(st, one, methods, k) for k in range(b.studies)]
        execute([j for k, bp in enumerate(per_study) for j in final_jobs(one, bp, k)])
        best.update(per_study[0])
    if bar is not None:
        bar.close()
    result.best = {k: {"hparams": v.hparams, "val_score": v.score} for k, v in best.items()}
    result.seconds = time.time() - t0
    return result
