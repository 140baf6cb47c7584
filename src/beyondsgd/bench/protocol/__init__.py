"""The tuning protocol: ``tuning.py`` (search spaces, quasi-random configurations, the validation
score, study tags), ``suite.py`` (a budget's problems x methods: tune, pick, re-run with seeds),
``jobs.py`` (one trial as a job for a worker process), ``ray_executor.py`` (the same jobs on
Ray) and ``claims.py`` (the papers' claims and the runs they need, which a suite plans; their
verdicts are :mod:`beyondsgd.bench.analysis.claims`).
"""

from . import claims, tuning
from .tuning import (
    BASELINES,
    DEFAULTS_TAG,
    FINAL_TAG,
    TUNE_TAG,
    TUNING_CHECK_TAG,
    TUNING_CHECK_TUNE_TAG,
    Scored,
    final_seeds,
    pick_best,
    sample_configs,
    search_space,
    study_of,
    study_tag,
    validation_score,
)

__all__ = [
    "DEFAULTS_TAG",
    "FINAL_TAG",
    "TUNE_TAG",
    "TUNING_CHECK_TAG",
    "TUNING_CHECK_TUNE_TAG",
    "BASELINES",
    "Scored",
    "final_seeds",
    "pick_best",
    "sample_configs",
    "search_space",
    "study_of",
    "study_tag",
    "validation_score",
    "claims",
    "tuning",
]
