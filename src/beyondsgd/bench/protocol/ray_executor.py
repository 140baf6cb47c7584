"""Run the benchmark suite's trials as tasks on a Ray cluster (the optional ``[ray]`` extra).

``run_suite(..., executor="ray", address=...)`` hands its jobs to :class:`RayExecutor`. The
design keeps the results store safe when workers die:

* **The driver alone writes the store.** A task runs one trial against a private in-memory
  store (so the runner writes exactly the rows it always writes) and returns that trial as a
  plain dict (:meth:`Store.trial_record`: status, evaluations, events, summary, environment,
  error). The driver writes each returned trial into the SQLite store in one transaction
  (:meth:`Store.record_trial`) as soon as it completes, so the store never holds a half-written
  trial and a worker's death cannot corrupt it. The store file need not be reachable from the
  cluster; only the package and its data must be.
* **Finished trials are never redone.** Before submitting, the driver skips every job whose key
  is already ``finished`` or ``diverged`` in the store; ``running`` (an interrupted run) and
  ``failed`` trials are run again from scratch (tasks keep no checkpoints: they may run on
  another machine).
* **A lost task is retried.** Tasks are submitted with ``max_retries`` (system failures only: a
  worker or node that dies); exceptions inside a trial are not retried, the runner records them
  as a failed trial exactly like the local executor. When the retries are exhausted the trial is
  recorded as ``failed`` with Ray's error (e.g. ``WorkerCrashedError``) and the suite goes on.

Cluster: ``address`` (``"auto"``, ``"ray://host:10001"``, ...) connects to an existing cluster;
without it (and without ``$RAY_ADDRESS``) a local cluster is started with ``num_cpus`` CPUs,
which ``run_suite`` sets to ``workers * threads``: ``workers`` trials at once, as with the local
pool. If Ray is already initialised in this process (a notebook, the tests), that connection is
used as it is. A connection this module opened is closed at the end (for a cluster it only
connected to, that merely disconnects the driver; the cluster keeps running).

Each task reserves ``threads`` CPUs (and one GPU when ``device`` is CUDA) and sets that many
torch threads. Environment variables named ``BEYONDSGD_*`` (data directories, download switch)
are passed to the workers through ``runtime_env``, so they see the same data settings as the
driver; the cluster's Python environment must have ``beyondsgd`` installed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store import DONE_STATUSES, Store, trial_key
from .jobs import Job

INSTALL_HINT = "pip install 'beyondsgd[ray]'"
DEFAULT_MAX_RETRIES = 3

# Test hook (used by tests/test_ray.py only): a directory. When it holds a file named after a
# trial's key, the task running that trial renames the file to "<key>.killed" right after the
# trial's first epoch and kills its own worker process (SIGKILL): once, since the file is gone
# for the retry. A fixed directory keeps every task's runtime_env, hence Ray's worker pool, the
# same across tests.
KILL_DIR_ENV = "BEYONDSGD_TEST_KILL_DIR"


def require_ray() -> Any:
    """Import and return ``ray``, or raise ImportError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            f"the 'ray' executor needs Ray, which is not installed; install it with "
            f"{INSTALL_HINT} (or use executor='local', the default)") from exc
    return ray


@dataclass
class RayStats:
    """What one :meth:`RayExecutor.execute` call did with its jobs."""

    submitted: int = 0  # tasks sent to the cluster
    skipped: int = 0    # already finished/diverged in the store: not run again
    lost: int = 0       # tasks whose retries ran out (recorded as failed)


def trial_fields(job: Job) -> dict[str, Any]:
    """The identity of ``job``'s trial as the runner keys it: hyperparameters resolved (defaults
    filled in), epochs resolved, and ``key``. Raises ValueError for an unknown problem, method
    or hyperparameter, like ``run_trial``."""
    from ...methods import get_method_class
    from ...methods.base import resolve_hparams
    from ..problems import get_problem
    from ..problems.user import job_source

    prob = get_problem(job.problem)
    hp = resolve_hparams(get_method_class(job.method), job.hparams or {})
    epochs = prob.epochs if job.epochs is None else int(job.epochs)
    frac = float(job.train_fraction)
    fields = {"problem": prob.name, "method": job.method, "hparams": hp, "seed": job.seed,
              "epochs": epochs, "train_fraction": frac, "tag": job.tag}
    fields["key"] = trial_key(prob.name, job.method, hp, job.seed, epochs, frac, job.tag)
    fields["problem_source"] = list(job_source(prob))  # a user problem: the task imports it
    return fields


def _kill_hook(key: str) -> Callable[[dict], None] | None:
    """The test hook of ``KILL_DIR_ENV``, as a runner progress callback (None: not armed)."""
    kill_dir = os.environ.get(KILL_DIR_ENV)
    if not kill_dir or not (Path(kill_dir) / key).exists():
        return None
    armed = Path(kill_dir) / key

    def progress(row: dict) -> None:
        if row["epoch"] >= 1:
            try:
                armed.rename(armed.with_name(key + ".killed"))
            except FileNotFoundError:  # already used
                return
            os.kill(os.getpid(), signal.SIGKILL)

    return progress


def run_trial_task(fields: dict[str, Any], device: str, threads: int) -> dict[str, Any]:
    """The body of one Ray task (a plain function: it also runs without Ray).

    Runs the trial with ``run_trial`` against a private in-memory store and returns
    ``{"status", "error", "record"}``: ``error`` is the one-line message the progress display
    shows, ``record`` the trial as :meth:`Store.trial_record` gives it (None when the trial was
    rejected before it started, e.g. an invalid hyperparameter). Never raises for a failing
    trial: the runner has recorded the failure (with its traceback) in ``record``.
    """
    import torch

    from ..run.runner import run_trial

    if threads:
        torch.set_num_threads(threads)
    with Store(":memory:") as st:
        try:
            source = fields.get("problem_source") or ["", "", ""]
            if source[0]:  # a user problem: import its file in this worker, as the driver did
                from ..problems.user import ensure

                ensure(fields["problem"], *source)
            res = run_trial(fields["problem"], fields["method"], fields["hparams"],
                            seed=fields["seed"], epochs=fields["epochs"], device=device,
                            store=st, tag=fields["tag"], train_fraction=fields["train_fraction"],
                            progress=_kill_hook(fields["key"]) or False)
            status, error = res.status, ""
        except Exception as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        return {"status": status, "error": error, "record": st.trial_record(fields["key"])}


class RayExecutor:
    """Runs suite jobs as Ray tasks; the driver writes the store (see the module docstring).

    Use as a context manager (or call :meth:`start` / :meth:`stop`)::

        with RayExecutor(address="auto") as rx:
            stats = rx.execute(jobs, "results/suite.db", on_done)
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 threads: int = 1, device: str = "cpu",
                 max_retries: int = DEFAULT_MAX_RETRIES):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if num_cpus is not None and num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {num_cpus}")
        self.address = address
        self.num_cpus = num_cpus
        self.threads = threads
        self.device = str(device)
        self.max_retries = max_retries
        self._ray: Any = None
        self._owns_connection = False
        self._remote: Any = None

    # ---- connection ---------------------------------------------------------------------
    def start(self) -> RayExecutor:
        """Connect to (or start) the cluster, unless Ray is already initialised here."""
        ray = self._ray = require_ray()
        if not ray.is_initialized():
            if self.address is not None:
                ray.init(address=self.address)
            elif os.environ.get("RAY_ADDRESS"):
                ray.init()  # Ray's own convention: connect to $RAY_ADDRESS
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False)
            self._owns_connection = True
        self._remote = ray.remote(run_trial_task)
        return self

    def stop(self) -> None:
        """Close the connection if :meth:`start` opened it (never someone else's)."""
        if self._owns_connection and self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns_connection = False

    def __enter__(self) -> RayExecutor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def task_options(self) -> dict[str, Any]:
        """Ray options of every trial task: resources, retries, worker environment."""
        opts: dict[str, Any] = {"num_cpus": self.threads, "max_retries": self.max_retries,
                                "retry_exceptions": False}
        if self.device.startswith("cuda"):
            opts["num_gpus"] = 1
        env = {k: v for k, v in os.environ.items() if k.startswith("BEYONDSGD_")}
        if env:
            opts["runtime_env"] = {"env_vars": env}
        return opts

    # ---- running ------------------------------------------------------------------------
    def execute(self, jobs: list[Job], store_path: str,
                on_done: Callable[[Job, str, str], None]) -> RayStats:
        """Run ``jobs`` on the cluster, writing each trial into ``store_path`` as it completes.

        ``on_done(job, status, error)`` is called once per job, in completion order, after its
        trial is in the store (for skipped jobs: with the stored status, before any task runs).
        If the driver is interrupted, the tasks still pending are cancelled.
        """
        if self._remote is None:
            self.start()
        ray = self._ray
        stats = RayStats()
        opts = self.task_options()
        pending: dict[Any, tuple[Job, dict[str, Any]]] = {}
        with Store(store_path) as st:
            try:
                for job in jobs:
                    try:
                        fields = trial_fields(job)
                    except Exception as exc:  # rejected before it starts, as run_trial would
                        on_done(job, "failed", f"{type(exc).__name__}: {exc}")
                        continue
                    row = st.trial_by_key(fields["key"])
                    if row is not None and row["status"] in DONE_STATUSES:
                        stats.skipped += 1
                        on_done(job, row["status"], "")
                        continue
                    ref = self._remote.options(**opts).remote(fields, self.device, self.threads)
                    pending[ref] = (job, fields)
                    stats.submitted += 1
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        job, fields = pending.pop(ref)
                        try:
                            out = ray.get(ref)
                        except ray.exceptions.RayError as exc:  # retries exhausted
                            stats.lost += 1
                            out = _lost(fields, exc)
                        if out["record"] is not None:
                            st.record_trial(**out["record"])
                        on_done(job, out["status"], out["error"])
            finally:
                for ref in pending:  # only left when interrupted
                    try:
                        ray.cancel(ref, force=True)
                    except Exception:  # pragma: no cover - best effort while unwinding
                        pass
        return stats


def _lost(fields: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """The failed-trial record of a task Ray gave up on (its worker kept dying)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    error = f"{type(exc).__name__}: {first}"
    now = time.time()
    record = {k: fields[k] for k in ("key", "problem", "method", "hparams", "seed", "epochs",
                                     "train_fraction", "tag")}
    record.update(env={}, status="failed", evals=[], events=[], summary={},
                  error=f"{type(exc).__name__}: {exc}", started=now, finished=now)
    return {"status": "failed", "error": error, "record": record}
