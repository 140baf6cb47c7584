"""The tuning check: does a claim's verdict survive twice the tuning draws?

``beyondsgd suite --tuning-check`` tunes study 0 again with twice its draws (the first half are
study 0's own draws: the Halton sequence is prefix-stable) and, for each (problem, method) whose
best setting changed, re-runs that setting with study 0's seeds under ``TUNING_CHECK_TAG``. A
pair whose best setting did not change has no such runs: its study-0 final runs are what twice
the draws would have run. :func:`check_values` therefore takes study 0's per-seed values and
replaces every pair that has ``TUNING_CHECK_TAG`` runs; the time-to-target targets stay study
0's (the check asks whether the *method's* verdict depends on its tuning budget). The check is
present when the store holds at least one ``TUNING_CHECK_TAG`` trial.

>>> check_text("supported", "supported"), check_text("supported", "inconclusive")
('survives', 'inconclusive (flips)')
"""

from __future__ import annotations

from ..protocol import FINAL_TAG, TUNING_CHECK_TAG
from ..store import Store
from .values import Values, collect


def check_values(store: Store) -> Values | None:
    """Study 0's values with the check's re-tuned pairs replaced (None: no check was run)."""
    x2 = collect(store, TUNING_CHECK_TAG)
    if not x2:
        return None
    base = collect(store, FINAL_TAG)
    merged = Values()
    merged.update(base)
    merged.update(x2)
    merged.targets, merged.study = base.targets, 0
    return merged


def check_text(study0: str, checked: str) -> str:
    """What the matrix shows after "2× tuning:": whether study 0's verdict is the verdict at
    twice the draws."""
    return "survives" if study0 == checked else f"{checked} (flips)"
