"""The tuning protocol: ``tuning.py`` (search spaces, quasi-random configurations, the validation
score, study tags), ``suite.py`` (a budget's problems x methods: tune, pick, re-run with seeds),
``jobs.py`` (one trial as a job for a worker process) and ``ray_executor.py`` (the same jobs on
Ray). The claims' run requirements come from :mod:`beyondsgd.bench.analysis.claims` when a suite
plans its runs.
"""

from . import tuning
from .tuning import (
    BASELINES,
    DEFAULTS_TAG,
    FINAL_TAG,
    TUNE_TAG,
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
    "BASELINES",
    "Scored",
    "final_seeds",
    "pick_best",
    "sample_configs",
    "search_space",
    "study_of",
    "study_tag",
    "validation_score",
    "tuning",
]
