"""``compare``: the benchmark on one problem from Python (a notebook), returning what the CLI
prints.

>>> import beyondsgd as bs                                          # doctest: +SKIP
>>> res = bs.bench.compare(problem, methods=["sgd", "adam", "slbi"], budget="smoke",
...                        store="results/mine.db")                 # doctest: +SKIP
>>> res.table        # the Markdown table of ``beyondsgd bench``       doctest: +SKIP
>>> res.frame        # the same rows as a pandas DataFrame (pandas installed)  # doctest: +SKIP

``budget`` ``"smoke"``/``"small"``/``"full"`` runs the suite's protocol on the problem
(tuning draws per tuned hyperparameter, final runs of the best setting with fresh seeds, the
defaults column; the smoke budget caps a user problem at 2 epochs, the others run its own
epoch budget) and adds the claims that apply to the problem's kind (``res.claims``).
``budget=None`` runs each method at its defaults (or ``hparams``) with ``seeds`` seeds, as
``beyondsgd bench`` does. Everything goes into ``store`` (default
``results/compare_<problem>.db``), so calling it again resumes and skips finished trials; a
store holding a changed version of the problem is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..methods import METHODS
from .problems import PROBLEMS, get_problem
from .problems import user as U


@dataclass
class Comparison:
    """What :func:`compare` found: the summary rows (one per method setting and tag, statistics
    over seeds), the Markdown table, the verdict line, the claims' verdicts and the store."""

    problem: str
    store: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    table: str = ""
    verdict: str = ""
    claims: str = ""
    failed: list[str] = field(default_factory=list)

    @property
    def frame(self):
        """The rows as a ``pandas.DataFrame`` (one row per method setting; the per-seed lists
        dropped), or ``None`` when pandas is not installed."""
        try:
            import pandas as pd
        except ImportError:
            return None
        keep = ("method", "label", "tag", "train_fraction", "epochs", "seeds", "diverged",
                "metric", "final_mean", "final_std", "best_mean", "final_train_loss", "target",
                "seconds_to_target", "epochs_to_target", "seconds_per_epoch")
        return pd.DataFrame([{k: r.get(k) for k in keep} for r in self.rows])

    def __str__(self) -> str:
        return "\n\n".join(t for t in (self.table, self.verdict, self.claims) if t)

    def _repr_markdown_(self) -> str:  # Jupyter shows the tables
        return str(self)


def _problem(problem: Any) -> str:
    if isinstance(problem, U.Problem):
        return U.register(problem).name
    if isinstance(problem, str) and U.is_ref(problem):
        return U.load_ref(problem).name
    if isinstance(problem, str) and problem in PROBLEMS:
        return problem
    raise ValueError(f"problem {problem!r}: accepted: a beyondsgd.Problem, a built-in problem "
                     "name, or 'path/to/file.py:NAME' / 'module.path:NAME'")


def compare(problem: Any, methods: list[str] | None = None, budget: str | None = "smoke",
            store: str | Path | None = None, *, seeds: int = 2, epochs: int | None = None,
            hparams: dict[str, dict[str, Any]] | None = None, device: str = "cpu",
            workers: int = 1, threads: int | None = None, progress: bool = False
            ) -> Comparison:
    """Run ``methods`` (default: every registered method) on ``problem`` and return the tables
    (module docstring). ``workers`` > 1 runs the suite's trials in that many processes;
    ``epochs`` overrides the epochs of a ``budget=None`` run."""
    from .protocol.suite import get_budget, run_suite
    from .report import markdown_table, summarize, verdict_line
    from .run.batch import TrialSpec, run_batch
    from .run.validate import Plan, check_store_problems, preflight
    from .store import Store

    name = _problem(problem)
    methods = list(methods or METHODS)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {', '.join(bad)}; available: {', '.join(METHODS)}")
    hparams = {m: dict((hparams or {}).get(m, {})) for m in methods}
    path = str(store or Path("results") / f"compare_{name}.db")
    preflight(Plan((name,), tuple((m, hparams[m]) for m in methods), device, epochs))
    check_store_problems(path, [name])
    failed: list[str] = []
    if budget is None:
        plan = [TrialSpec(name, m, hparams[m], s, f"{name}/{m}/seed{s}")
                for m in methods for s in range(seeds)]
        with Store(path) as st:
            res = run_batch(plan, st, epochs=epochs, device=device)
        failed = [f"{n}: {msg}" for msg, names in res.failures.items() for n in names]
        tags = None
    else:
        b = get_budget(budget)
        eps = b.problems[name] if name in b.problems else b.epochs_for(get_problem(name))
        b = dataclasses.replace(b, problems={name: eps})
        res = run_suite(b, path, methods, workers=workers, threads=threads, device=device,
                        progress=progress)
        failed = list(res.failed)
        tags = ("final",)
    with Store(path, readonly=True) as st:
        rows = [r for r in summarize(st, [name]) if r["method"] in methods
                and (tags is None or r["tag"] in tags)]
        claims = ""
        if budget is not None:
            from .analysis.claims import claims_markdown, evaluate_store

            results = evaluate_store(st, problems=[name])
            claims = claims_markdown(results) if results else ""
    return Comparison(name, path, rows, markdown_table(rows), verdict_line(rows) if rows else "",
                      claims, failed)
