"""The benchmark suite: problems x methods x (tuning + seed re-runs + defaults), resumable and
parallel over worker processes.

``run_suite("smoke", "results/smoke.db")`` runs the tuning protocol (``tuning.py``, which also
defines the budgets) for every problem and method of the budget. Every trial is keyed in the
store, so re-running the same command skips finished trials and resumes interrupted ones from
their last epoch checkpoint.

Two executors run the trials. ``executor="local"`` (the default) uses a pool of ``workers``
processes on this machine, each writing its trials into the store itself. ``executor="ray"``
sends trials to a Ray cluster as tasks (``address``; without one, a local cluster) and the
driver alone writes the store, so a dying worker loses nothing: its task is retried, and
finished trials are never redone (``ray_executor.py``; needs ``pip install 'beyondsgd[ray]'``).

Per problem the suite runs two batches: (1) every study's tuning draws (``n_tune`` per tuned
hyperparameter, ``tuning.n_draws``), the tuning check's extra draws when asked for, and the
defaults runs; (2) every study's final runs and, where the check changed the best setting, its
``final-x2`` runs (``tuning.py``, steps 2-6).
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
from ..problems.user import job_source
from ..store import Store
from .claims import fraction_runs
from .jobs import BUSY_POLL_SECONDS, Job, execute_local, init_worker, run_job
from .tuning import (
    BUDGETS,
    DEFAULTS_TAG,
    TUNE_TAG,
    TUNING_CHECK_FACTOR,
    TUNING_CHECK_TAG,
    Budget,
    Scored,
    final_seeds,
    get_budget,
    pick_best,
    sample_configs,
    search_space,
    study_tag,
    validation_score,
)

__all__ = ["BUDGETS", "BUSY_POLL_SECONDS", "Budget", "Job", "SuiteResult", "best_settings",
           "check_final_jobs", "check_tuning_check", "check_tuning_jobs", "final_jobs",
           "get_budget", "run_job", "run_suite", "tuning_jobs"]


EXECUTORS = ("local", "ray")


@dataclass
class SuiteResult:
    budget: str
    store: str
    jobs: int = 0
    failed: list[str] = field(default_factory=list)
    best: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    #: the tuning check: (problem, method) -> the best of twice the draws, for every pair whose
    #: best setting changed (those got ``final-x2`` runs); empty without the check
    check_changed: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


def _draws(budget: Budget, m: str, study: int, factor: int = 1, problem: str | None = None
           ) -> list[dict]:
    n = budget.draws(m, factor, problem)
    return sample_configs(m, n, seed=study, problem=problem) if n else []


def tuning_jobs(budget: Budget, methods: list[str], studies: int | None = None) -> list[Job]:
    """Every study's tuning trials (``budget.draws(m)`` per method and study, seed 0; a setting
    drawn by two studies runs once) and the defaults runs (seeds 1..S), per problem and
    method."""
    k = budget.studies if studies is None else studies
    jobs = []
    for problem, epochs in budget.problems.items():
        for m in methods:
            seen: list[dict] = []
            for study in range(k):
                for cfg in _draws(budget, m, study, problem=problem):
                    if cfg not in seen:
                        seen.append(cfg)
                        jobs.append(Job(problem, m, cfg, 0, epochs, TUNE_TAG))
            for s in range(1, budget.seeds + 1):
                jobs.append(Job(problem, m, {}, s, epochs, DEFAULTS_TAG))
    return jobs


def check_tuning_jobs(budget: Budget, methods: list[str], studies: int | None = None
                      ) -> list[Job]:
    """The tuning check's extra draws: study 0's draws ``n+1 .. 2n`` per method (seed 0, tag
    ``tune``; prefix stability keeps draws 1..n those of study 0), less any setting another
    study drew (that trial runs once)."""
    k = budget.studies if studies is None else studies
    jobs = []
    for problem, epochs in budget.problems.items():
        for m in methods:
            seen = [c for study in range(k) for c in _draws(budget, m, study, problem=problem)]
            for cfg in _draws(budget, m, 0, TUNING_CHECK_FACTOR, problem)[
                    budget.draws(m, problem=problem):]:
                if cfg not in seen:
                    seen.append(cfg)
                    jobs.append(Job(problem, m, cfg, 0, epochs, TUNE_TAG))
    return jobs


def best_settings(store: Store, budget: Budget, methods: list[str], study: int = 0,
                  factor: int = 1) -> dict[tuple[str, str], Scored]:
    """Best of study ``study``'s tuning settings per (problem, method) by validation score,
    from the store; ``factor`` 2 with study 0: the tuning check's best of twice the draws."""
    out = {}
    for problem, epochs in budget.problems.items():
        prob = get_problem(problem)
        n_ep = prob.epochs if epochs is None else epochs
        for m in methods:
            tuned = store.trials(problem=problem, method=m, tag=TUNE_TAG, seed=0, epochs=n_ep)
            scored = []
            for cfg in _draws(budget, m, study, factor, problem):
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


def final_jobs(budget: Budget, best: dict[tuple[str, str], Scored], study: int = 0,
               tag: str | None = None) -> list[Job]:
    """Study ``study``'s final runs: each best setting with the study's seeds, plus the runs at
    a smaller train fraction that a claim needs (``claims.fraction_runs``: GDSolver at 50% on
    classification problems), same setting, tag and seeds. ``tag``: the study's unless given
    (the tuning check's runs are study 0's seeds under ``final-x2``)."""
    tag = study_tag(study) if tag is None else tag
    jobs = []
    for (p, m), sc in best.items():
        epochs = budget.problems[p]
        seeds = final_seeds(study, budget.n_final(p))
        jobs += [Job(p, m, sc.hparams, s, epochs, tag) for s in seeds]
        for method, frac, task in fraction_runs():
            if method == m and get_problem(p).task == task:
                jobs += [Job(p, m, sc.hparams, s, epochs, tag, frac) for s in seeds]
    return jobs


def changed_settings(best: dict[tuple[str, str], Scored], best2: dict[tuple[str, str], Scored]
                     ) -> dict[tuple[str, str], Scored]:
    """The pairs whose best setting with twice the draws (``best2``) differs from study 0's
    (``best``): only an extra draw scoring strictly higher changes it (ties go to the earlier
    draw, and draws 1..n are study 0's)."""
    return {k: v for k, v in best2.items() if k in best and v.hparams != best[k].hparams}


def check_final_jobs(budget: Budget, best: dict[tuple[str, str], Scored],
                     best2: dict[tuple[str, str], Scored]) -> list[Job]:
    """The tuning check's final runs: study 0's seeds (and fraction runs) under ``final-x2``,
    only for the pairs whose best setting changed; the others' would equal study 0's
    ``final`` runs, which the claims read instead."""
    return final_jobs(budget, changed_settings(best, best2), 0, TUNING_CHECK_TAG)


def check_tuning_check(budget: Budget, methods: list[str]) -> None:
    """Refuse a tuning check that has nothing to double (ValueError, one line)."""
    why = (f"budget {budget.name!r} has no tuning (n_tune=0)" if not budget.n_tune else None
           if any(search_space(m) for m in methods) else
           f"none of {', '.join(methods)} has a tuned hyperparameter")
    if why:
        raise ValueError(f"--tuning-check: {why}, so there is no tuning budget to double")


def _count_jobs(b: Budget, methods: list[str], studies: int, check: bool = False) -> int:
    """Jobs the suite will run (for the progress bar): tuning + defaults + finals + fractions,
    and the check's extra draws (its ``final-x2`` runs are added once known)."""
    n = len(tuning_jobs(b, methods, studies) + (check_tuning_jobs(b, methods, studies)
                                                 if check else []))
    for p in b.problems:
        extra = sum(1 for m, _, task in fraction_runs()
                    if m in methods and get_problem(p).task == task)
        n += studies * b.n_final(p) * (len(methods) + extra) if b.n_tune else 0
    return n


def run_suite(budget: str | Budget, store_path: str, methods: list[str] | None = None,
              workers: int | None = None, threads: int | None = None, device: str = "cpu",
              progress: bool = True, executor: str = "local", address: str | None = None,
              max_retries: int = 3, studies: int | None = None, tuning_check: bool = False
              ) -> SuiteResult:
    """Run the tuning protocol for every problem x method of ``budget`` into ``store_path``.

    ``studies``: independent tuning studies (default: the budget's, 1 for the built-in ones);
    study ``k`` draws its own settings and re-runs its best one with its own seeds
    (``protocol.py`` step 5), so the claims get one verdict per study.

    ``tuning_check``: tune study 0 again with twice its draws and re-run with study 0's seeds,
    under tag ``final-x2``, every pair whose best setting changed (``tuning.py`` step 6);
    ``SuiteResult.check_changed`` lists those pairs. Refused (ValueError) where nothing is tuned.

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
    # user problems: worker processes and Ray tasks import each from its file themselves
    sources = {p: job_source(get_problem(p)) for p in b.problems if get_problem(p).user}
    if workers > 1 or executor == "ray":
        inline = [p for p, (ref, _, _) in sources.items() if not ref]
        if inline:
            raise ValueError(f"problem {inline[0]} is defined in this process, not in a file, so "
                             "worker processes cannot import it; accepted: workers=1 (local), "
                             "or the problem in a file passed as 'path/to/file.py:NAME'")
    if studies is not None and (isinstance(studies, bool) or not isinstance(studies, int)
                                or studies < 1):
        raise ValueError(f"studies must be an integer >= 1, got {studies!r}")
    if studies is not None:
        b = replace(b, studies=studies)
    if not isinstance(tuning_check, bool):
        raise ValueError(f"tuning_check must be True or False, got {tuning_check!r}")
    if tuning_check:
        check_tuning_check(b, methods)
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
                                   initializer=init_worker, initargs=(os.getpid(), sources))
    try:
        return _run_suite(b, store_path, methods, threads, device, progress, ray_executor,
                          pool, tuning_check)
    finally:
        if ray_executor is not None:
            ray_executor.stop()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _run_suite(b: Budget, store_path: str, methods: list[str], threads: int, device: str,
               progress: bool, ray_executor: Any, pool: ProcessPoolExecutor | None,
               check: bool = False) -> SuiteResult:
    t0 = time.time()
    result = SuiteResult(b.name, store_path)
    Store(store_path).close()  # create the schema once, before workers race to do it

    bar = None
    if progress:
        try:
            from tqdm import tqdm

            total = _count_jobs(b, methods, b.studies, check)
            bar = tqdm(total=total, unit="trial", dynamic_ncols=True, file=sys.stderr,
                       desc=f"suite {b.name}")
        except ImportError:  # pragma: no cover
            bar = None

    def say(line: str) -> None:
        if progress:
            (print if bar is None else bar.write)(line, file=sys.stderr)

    checking: set[str] = set()  # the check's extra draws (tag tune), named so in the bar

    def done(job: Job, status: str, error: str) -> None:
        result.jobs += 1
        if status == "failed":
            result.failed.append(f"{job.problem}/{job.method}/{job.tag}/seed{job.seed}: {error}")
        if bar is not None:
            what = job.tag + (" (tuning check)" if repr(job) in checking else "")
            bar.update(1)
            bar.set_postfix_str(f"{job.problem}/{job.method}/{what}: {status}")

    def execute(jobs: list[Job]) -> None:
        if ray_executor is None:
            execute_local(jobs, store_path, pool, threads, device, done)
        else:
            ray_executor.execute(jobs, store_path, done)

    # problem by problem, so an interrupted suite leaves complete results for finished problems;
    # the check's runs join the protocol's two batches (no extra wait for the slowest trial)
    best: dict[tuple[str, str], Scored] = {}
    for problem, epochs in b.problems.items():
        one = replace(b, problems={problem: epochs})
        extra = check_tuning_jobs(one, methods) if check else []
        checking.update(repr(j) for j in extra)
        if check:
            say(f"tuning check, {problem}: {len(extra)} more tuning draws (tag {TUNE_TAG}: "
                f"study 0's draws n+1..2n, n = {b.n_tune} x the method's tuned hyperparameters)")
        execute(tuning_jobs(one, methods) + extra)
        with Store(store_path) as st:
            per_study = [best_settings(st, one, methods, k) for k in range(b.studies)]
            best2 = best_settings(st, one, methods, 0, TUNING_CHECK_FACTOR) if check else {}
        jobs = [j for k, bp in enumerate(per_study) for j in final_jobs(one, bp, k)]
        if check:
            changed = changed_settings(per_study[0], best2)
            x2 = check_final_jobs(one, per_study[0], best2)
            result.check_changed.update(
                {k: {"hparams": v.hparams, "val_score": v.score} for k, v in changed.items()})
            say(f"tuning check, {problem}: best setting changed with twice the draws for "
                f"{', '.join(m for _, m in changed) or 'no method'} ({len(changed)} of "
                f"{len(methods)}): {len(x2)} {TUNING_CHECK_TAG} runs with study 0's seeds")
            if bar is not None:
                bar.total += len(x2)
                bar.refresh()
            jobs += x2
        execute(jobs)
        best.update(per_study[0])
    if bar is not None:
        bar.close()
    result.best = {k: {"hparams": v.hparams, "val_score": v.score} for k, v in best.items()}
    result.seconds = time.time() - t0
    return result
