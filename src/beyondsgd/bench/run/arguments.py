"""Checks of ``run_trial``'s arguments: one ValueError naming the argument, its value and what
is accepted, before any data is loaded or anything is written."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from typing import Any

import torch

from ..problems import Problem
from ..store import Store

MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes 32 bits


def _bad(name: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"{name} must be {accepted}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_arguments(problem, method, hparams, seed, epochs, device, store, progress,
                    train_fraction, tag, checkpoint_dir, stop_after_epoch, distributed
                    ) -> torch.device:
    """ValueError naming the bad argument and what is accepted; returns the device."""
    from ..problems.user import Problem as UserProblem

    if not isinstance(problem, (str, Problem, UserProblem)):
        raise _bad("problem", problem, "a problem name or a Problem")
    if not isinstance(method, str):
        raise _bad("method", method, "a method name")
    if hparams is not None and not isinstance(hparams, Mapping):
        raise _bad("hparams", hparams, "a dict of hyperparameters or None")
    if not (_is_int(seed) and 0 <= seed <= MAX_SEED):
        raise _bad("seed", seed, f"an integer in [0, {MAX_SEED}]")
    if epochs is not None and not (_is_int(epochs) and epochs >= 1):
        raise _bad("epochs", epochs, "an integer >= 1 (or None: the problem's budget); 0 "
                   "trains nothing and would report the untrained network")
    if not (isinstance(train_fraction, numbers.Real) and not isinstance(train_fraction, bool)
            and 0.0 < train_fraction <= 1.0):
        raise _bad("train_fraction", train_fraction, "a number in (0, 1]")
    if not isinstance(tag, str):
        raise _bad("tag", tag, "a string")
    if store is not None and not isinstance(store, Store):
        raise _bad("store", store, "a Store or None")
    if store is not None and store.readonly:
        raise ValueError(f"store {store.path} is open read-only; open it with "
                         "Store(path) to record trials")
    if not (isinstance(progress, bool) or callable(progress)):
        raise _bad("progress", progress, "True, False or a callable taking each evaluation")
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise _bad("checkpoint_dir", checkpoint_dir, "a folder path or None")
    if stop_after_epoch is not None and not (_is_int(stop_after_epoch) and stop_after_epoch >= 1):
        raise _bad("stop_after_epoch", stop_after_epoch, "an integer >= 1 or None")
    if distributed is not None and not isinstance(distributed, bool):
        raise _bad("distributed", distributed, "True, False or None")
    return check_device(device)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device this machine has, or ValueError."""
    accepted = "cpu, cuda, cuda:N or mps (a device this machine has)"
    if not isinstance(device, (str, torch.device)):
        raise _bad("device", device, accepted)
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise _bad("device", device, accepted) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine; "
                             "use 'cpu'")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {str(device)!r}: this machine has {n} CUDA device(s), "
                             f"cuda:0..cuda:{n - 1}")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"device {str(device)!r}: MPS is not available on this machine; "
                             "use 'cpu'")
    elif dev.type != "cpu":
        raise _bad("device", device, accepted)
    return dev


