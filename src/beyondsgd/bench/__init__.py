"""The benchmark: problems (``problems``: ours, the papers', and yours as ``beyondsgd.Problem``),
the runner (``run``), the results store (``store``), the protocol (``protocol``), the analysis
(``analysis``), the report (``report``) and the papers' experiments (``reproduce``).

``compare(problem, methods=[...], budget="smoke", store=...)`` runs it on one problem from
Python and returns the tables the CLI prints (:mod:`beyondsgd.bench.comparison`).
"""


def compare(*args, **kwargs):
    """:func:`beyondsgd.bench.comparison.compare` (imported on first use: the benchmark's
    dependencies are not loaded by ``import beyondsgd``)."""
    from .comparison import compare as run

    return run(*args, **kwargs)
