"""Run a batch of trials into one store and account for each: finished here, skipped (already
finished), resumed from a checkpoint, busy in another process, or failed.

A failure of one trial does not stop the batch (the runner records it as ``failed`` in the
store); failures are grouped by their message, so N trials failing the same way are reported
once with a count instead of N times. Store errors and a missing optional package stop the batch
at once: every further trial would fail the same way.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..store import Store, StoreError
from .runner import TrialResult, run_trial
from .validate import extra_hint

STORE_ERRORS = (StoreError, sqlite3.DatabaseError)


@dataclass(frozen=True)
class TrialSpec:
    problem: str
    method: str
    hparams: dict[str, Any]
    seed: int
    name: str  # for messages, e.g. digits_mlp/adam(lr=0.003)/seed0


@dataclass
class BatchResult:
    ran: int = 0
    skipped: int = 0
    resumed: list[tuple[str, int]] = field(default_factory=list)  # (trial, epoch)
    busy: list[str] = field(default_factory=list)
    failures: dict[str, list[str]] = field(default_factory=dict)  # message -> trials

    @property
    def failed(self) -> int:
        return sum(len(v) for v in self.failures.values())

    def messages(self, store_path: str) -> list[str]:
        """What a user wants to know after the batch, one line each."""
        out = [f"resumed trial {name} at epoch {epoch}" for name, epoch in self.resumed]
        if self.skipped:
            out.append(f"skipped {_n(self.skipped, 'finished trial')} (already in {store_path})")
        if self.busy:
            out.append(f"{_n(len(self.busy), 'trial')} busy in another process (first: "
                       f"{self.busy[0]}); re-run when it ends to include them")
        out += failure_lines(self.failures)
        return out


def _n(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


def failure_text(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def failure_lines(failures: dict[str, list[str]]) -> list[str]:
    return [f"{_n(len(names), 'trial')} failed: {msg} (first: {names[0]})"
            for msg, names in failures.items()]


def run_batch(trials: list[TrialSpec], store: Store, *, epochs: int | None, device: Any,
              train_fraction: float = 1.0, tag: str = "",
              on_start: Callable[[TrialSpec], None] | None = None,
              on_eval: Callable[[dict], None] | None = None,
              on_end: Callable[[TrialSpec, TrialResult | None, int], None] | None = None,
              on_new_failure: Callable[[TrialSpec, str], None] | None = None) -> BatchResult:
    """Run ``trials`` in order into ``store``. Callbacks (all optional) drive a progress display:
    ``on_start(spec)``, ``on_eval(row)`` for every evaluation, ``on_end(spec, result or None,
    trained epochs evaluated here)``, ``on_new_failure(spec, message)`` the first time a
    message is seen."""
    out = BatchResult()
    for spec in trials:
        seen: list[int] = []

        def record(row: dict, seen=seen) -> None:
            seen.append(int(row["epoch"]))
            if on_eval is not None:
                on_eval(row)

        if on_start is not None:
            on_start(spec)
        try:
            res = run_trial(spec.problem, spec.method, spec.hparams, seed=spec.seed,
                            epochs=epochs, device=device, store=store, progress=record,
                            train_fraction=train_fraction, tag=tag)
        except STORE_ERRORS:
            raise
        except Exception as exc:  # recorded as failed in the store; keep going
            if extra_hint(exc):
                raise
            msg = failure_text(exc)
            if msg not in out.failures and on_new_failure is not None:
                on_new_failure(spec, msg)
            out.failures.setdefault(msg, []).append(spec.name)
            if on_end is not None:
                on_end(spec, None, sum(e > 0 for e in seen))
            continue
        if seen and seen[0] > 1:  # the first new evaluation follows the checkpoint's epoch
            out.resumed.append((spec.name, seen[0] - 1))
        if res.skipped:
            out.skipped += 1
        elif getattr(res, "busy", False):
            out.busy.append(spec.name)
        else:
            out.ran += 1
        if on_end is not None:
            on_end(spec, res, sum(e > 0 for e in seen))
    return out
