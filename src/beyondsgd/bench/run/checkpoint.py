"""Per-trial checkpoints of the runner: model, method state and RNG states after every epoch.

A checkpoint is ``<store stem>_checkpoints/<trial key>.pt`` next to the store. It is written
through a temporary file unique to the process and the call (``<name>.<pid>.<random>.tmp``), then
renamed, so a reader never sees half a file and two writers never share a temporary file. A
checkpoint that cannot be used (cut short, overwritten, another program's file, not fitting the
trial) is reported by :func:`discard` with a warning naming the file, deleted, and the trial
restarts from epoch 0.
"""

from __future__ import annotations

import os
import random
import secrets
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

KEYS = ("epoch", "step", "train_seconds", "model", "method", "rng")


def rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
          "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_atomic(obj: Any, path: Path) -> None:
    """Write ``path`` through a temporary file unique to this process and call."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def discard(path: Path, why: str) -> None:
    """Warn (naming the file and why) and delete an unusable checkpoint."""
    warnings.warn(f"discarding checkpoint {path}: {why}; restarting this trial from epoch 0",
                  RuntimeWarning, stacklevel=3)
    path.unlink(missing_ok=True)


def remove(path: Path) -> None:
    """Delete the checkpoint of an ended trial and temporary files killed writers left."""
    path.unlink(missing_ok=True)
    for tmp in path.parent.glob(path.name + ".*.tmp"):
        tmp.unlink(missing_ok=True)


def load(path: Path, device: torch.device, epochs: int) -> dict | str:
    """The checkpoint at ``path``, or why it cannot be used (one line)."""
    try:
        ck = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # truncated, garbled, not a torch file
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"unreadable ({type(exc).__name__}: {first})"
    if not isinstance(ck, dict) or any(k not in ck for k in KEYS):
        return f"not a checkpoint of this runner (expected the keys {', '.join(KEYS)})"
    if not (isinstance(ck["epoch"], int) and 1 <= ck["epoch"] <= epochs):
        return f"its epoch {ck['epoch']!r} is not in 1..{epochs}"
    return ck


def default_dir(store_path: str | None) -> Path | None:
    """``<store stem>_checkpoints`` next to the store file (None for no or in-memory store)."""
    if store_path is None or store_path == ":memory:":
        return None
    return Path(store_path).parent / (Path(store_path).stem + "_checkpoints")
