"""What one trial of the runner produces, and the pieces of a trial that need no training loop:
the result record, the recorded environment, the minibatch order, the end-of-trial summary.

:mod:`beyondsgd.bench.runner` trains; this module describes. The minibatch order of epoch ``e``
is a permutation drawn from ``(seed, e)`` alone, so resuming a trial needs no saved state for it:

>>> x, y = torch.arange(5.0)[:, None], torch.arange(5)
>>> [b[1].tolist() for b in epoch_batches(x, y, 2, seed=0, epoch=0)] == \\
...     [b[1].tolist() for b in epoch_batches(x, y, 2, seed=0, epoch=0)]
True
"""

from __future__ import annotations

import functools
import math
import os
import platform
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.datasets import epoch_permutation
from ...methods.base import Batch
from ..problems import Problem, get_problem
from ..store import DONE_STATUSES, Store

# Every trial of a problem sees the same train/validation/test split; the trial seed drives
# initialisation and minibatch order only.
DATA_SPLIT_SEED = 0


@dataclass
class TrialResult:
    """One trial's outcome: its evaluation rows (epoch 0 first), events and status."""

    problem: str
    method: str
    hparams: dict[str, Any]
    seed: int
    status: str
    evals: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    trial_id: int | None = None
    error: str | None = None
    skipped: bool = False  # already done in the store (finished, diverged or collapsed)
    busy: bool = False     # another live process runs this trial: not run here (status running)
    holder: str = ""       # who runs it, when busy
    # the trained model (None when the trial was skipped); not stored
    model: torch.nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def final(self) -> dict:
        return self.evals[-1] if self.evals else {}

    @property
    def best(self) -> float | None:
        vals = [e["test_metric"] for e in self.evals[1:] if e.get("test_metric") is not None]
        if not vals:
            return None
        prob = get_problem(self.problem)
        return max(vals) if prob.higher_is_better else min(vals)


@functools.lru_cache(maxsize=1)
def _git_commit() -> str:
    """The checkout's commit, looked up once per process (it cannot change while we run)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def device_name(device: str | torch.device | None) -> str:
    """The device's name: the GPU's (``torch.cuda.get_device_name``), ``mps`` (Apple), or the
    CPU's."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "Apple MPS"
    return platform.processor() or platform.machine()


def device_sync(device: torch.device):
    """A function waiting for ``device``'s queued work (CUDA, MPS), so wall and CPU clocks
    around it measure the work done, not just its launch; nothing on the CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def environment(device: str | torch.device | None = None) -> dict[str, Any]:
    """Versions, CPU and threads, the git commit, and the training device and its name:
    recorded with every trial."""
    return {
        "device": str(torch.device(device)) if device is not None else "cpu",
        "device_name": device_name(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": _git_commit(),
    }


def epoch_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, epoch: int
                  ) -> Iterator[Batch]:
    """Shuffled minibatches of one epoch; the order depends only on (seed, epoch)
    (:func:`~beyondsgd.data.datasets.epoch_permutation`, also a streamed problem's order)."""
    perm = epoch_permutation(x.shape[0], seed, epoch).to(x.device)
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i:i + batch_size]
        yield x[idx], y[idx]


def not_run(store: Store, problem: str, method: str, hp: dict, seed: int, trial_id: int,
            holder: str) -> TrialResult:
    """The result of a trial this process does not run: ended (skipped) or busy elsewhere."""
    row = store.trials(id=trial_id)[0]
    if row["status"] in DONE_STATUSES:
        return TrialResult(problem, method, hp, seed, row["status"], evals=store.evals(trial_id),
                           events=store.events(trial_id), trial_id=trial_id, skipped=True)
    return TrialResult(problem, method, hp, seed, "running", trial_id=trial_id, busy=True,
                       holder=holder)


def summary(prob: Problem, evals: list[dict]) -> dict[str, Any]:
    """The trial's stored summary: final train loss, final and best (over epochs >= 1, finite)
    validation and test metric."""
    if not evals:
        return {}
    pick = max if prob.higher_is_better else min
    trained = evals[1:] or evals

    def best(k: str) -> float | None:
        vals = [e[k] for e in trained if e.get(k) is not None and math.isfinite(e[k])]
        return pick(vals) if vals else None

    last = evals[-1]
    return {"final_train_loss": last.get("train_loss"), "final_val_metric": last.get("val_metric"),
            "final_test_metric": last.get("test_metric"), "best_val_metric": best("val_metric"),
            "best_test_metric": best("test_metric")}
