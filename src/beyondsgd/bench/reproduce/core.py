"""The ``beyondsgd reproduce`` framework: experiments, outcomes, the trial context, verdicts.

An :class:`Experiment` is one paper experiment (its recipe at three scales, the paper's numbers)
whose ``run(ctx)`` trains trials through :meth:`Context.trial` and returns :class:`Outcome` rows
(paper number beside ours, one value per seed, a verdict). Every trial goes through
:func:`beyondsgd.bench.runner.run_trial` with the store, tagged
``reproduce:<experiment>:<scale>[:<tag>]``, so a re-run skips finished trials and a killed one
resumes. Outcomes are *recomputed from the store*: :func:`replay_context` gives a context whose
``trial`` returns the stored trial (never trains), so ``run`` yields the same rows again
(:func:`beyondsgd.bench.reproduce.report_section` does that).

Experiments that measure the *trained model* (pruning, test L1) pass ``analyse`` to
:func:`analysed_trial`: the runner calls it once on the trained model of a finished trial and
stores its dict as the last epoch's event ``{"kind": "analysis", ...}`` (:func:`analysis_of`), so
a re-run or a replay reads the measurement without the model.

Verdicts (:func:`compare`): one-sided Welch t-tests on the per-seed values (the claims table's
test, :func:`beyondsgd.bench.claims.judge`), alpha 0.05; ``kind="better"``: A significantly
better than B (supported) / significantly worse (not supported) / neither (inconclusive);
``kind="matches"``: non-inferiority with ``margin``.

Every seed counts, as in the suite: a diverged seed is a :class:`Diverged` value (a float equal to
its untrained network's epoch-0 value, :func:`beyondsgd.bench.analysis.metrics.diverged_value`),
kept in means and tests; only when every seed of a row diverged does it read "– (diverged)" (the
papers' '–'). A row whose method collapsed (:func:`collapsed`) in more than half its seeds is
"untested" (:func:`collapse_reason`). Each row carries its budget (:func:`steps_text`).

>>> compare([0.1, 0.11, 0.12], [0.5, 0.52, 0.49], higher_is_better=False)[0]
'supported'
>>> compare([0.1, 0.2], [0.1, 0.2], higher_is_better=False)[0]
'inconclusive'
>>> analysis_of([{"kind": "slbi_path"}, {"kind": "analysis", "acc": 0.9}])
{'kind': 'analysis', 'acc': 0.9}
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..analysis.judge import BUDGET_FLOOR, budget_text  # noqa: F401 (re-exported)
from ..problems import Problem
from ..run.runner import TrialResult, evaluate, run_trial
from ..store import DONE_STATUSES, Store, trial_key
from .values import (  # noqa: F401  (re-exported: the experiments' per-seed values and verdicts)
    Diverged,
    best_value,
    ci_text,
    collapse_reason,
    collapsed,
    compare,
    curve_mean,
    diverged_at_start,
    final_value,
    finite,
    is_diverged,
    mean_or_nan,
)

SCALES = ("paper", "cpu", "smoke")
VERDICTS = ("supported", "not supported", "inconclusive", "reference only", "budget-limited",
            "untested")
TAG_PREFIX = "reproduce"
DEFAULT_SEEDS = {"paper": 3, "cpu": 3, "smoke": 2}


@dataclass(frozen=True)
class PaperNumber:
    """One number a paper reports."""

    quantity: str                 # e.g. "test accuracy, ProxProp (%)"
    value: float | str | None
    source: str                   # "Table 1", "§5.3", "official script train.py"


@dataclass
class Outcome:
    """One row of the paper-vs-ours table."""

    experiment: str
    quantity: str
    paper: float | str | None
    paper_source: str
    ours: list[float]             # one value per seed (nan: diverged/missing, see verdict_reason)
    unit: str
    scale: str
    verdict: str                  # one of VERDICTS
    verdict_reason: str           # one line
    # our optimizer steps / the paper's for this row (None: not a training comparison, e.g. a
    # measurement of the selection path); below BUDGET_FLOOR a supported / not supported
    # verdict becomes "budget-limited" (see __post_init__)
    budget: float | None = None
    # (our optimizer steps, the paper's) behind ``budget``; sets it when budget is None
    steps: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.steps is not None and self.budget is None:
            self.budget = self.steps[0] / self.steps[1]
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}; accepted: {', '.join(VERDICTS)}")
        if self.budget is not None and not (math.isfinite(self.budget) and self.budget > 0):
            raise ValueError(f"budget {self.budget!r}: a positive fraction of the paper's steps")
        if (self.budget is not None and self.budget < BUDGET_FLOOR
                and self.verdict in ("supported", "not supported", "inconclusive")):
            self.verdict_reason = (f"direction at {budget_text(self.budget)} of the paper's "
                                   f"budget (would read {self.verdict}): {self.verdict_reason}")
            self.verdict = "budget-limited"


def steps_text(ours: int, paper: int) -> str:
    """A budget as optimizer steps: ``N of the paper's M steps (x %)``.

    >>> steps_text(20, 4500)
    "20 of the paper's 4500 steps (0.44 %)"
    """
    return f"{ours} of the paper's {paper} steps ({budget_text(ours / paper)})"


def recipe_steps(images: int, batch: int, epochs: int) -> int:
    """Optimizer steps of ``epochs`` over ``images`` training images at ``batch`` (the last
    batch of an epoch may be short: ceil).

    >>> recipe_steps(45000, 500, 50), recipe_steps(20000, 128, 1)
    (4500, 157)
    """
    return epochs * math.ceil(images / batch)


def outcome_budget_text(o: Outcome) -> str:
    """An outcome's budget: steps when known, else the fraction (``–`` for none)."""
    return steps_text(*o.steps) if o.steps is not None else budget_text(o.budget)


class NotRecorded(LookupError):
    """The trial is not (or not yet) finished in the store: replay of a partial run, or a trial
    another process is running."""


def full_tag(experiment: str, scale: str, tag: str = "") -> str:
    """The store tag of a reproduce trial: ``reproduce:<experiment>:<scale>[:<tag>]``."""
    return ":".join([TAG_PREFIX, experiment, scale] + ([tag] if tag else []))


Analyse = Callable[[Any, Any, Any], dict]  # (trained model, method object, data) -> numbers


@dataclass
class Context:
    """What an experiment's ``run()`` receives: the scale, the seeds, the store, a trial helper.

    ``replay=True``: :meth:`trial` only reads finished trials from the store (raises
    :class:`NotRecorded` for any other), so outcomes are recomputed without training.
    """

    scale: str
    seeds: int
    device: str
    store: Store
    progress: bool
    experiment: str = ""
    replay: bool = False
    trained: int = 0               # trials trained (or resumed) by this context
    skipped: int = 0               # trials found finished in the store
    trials_seen: int = 0           # trials returned by trial() (trained, resumed or stored)
    train_seconds: float = 0.0     # their training seconds (the runner's clock), summed
    trial_ids: set[int] = field(default_factory=set)  # store ids of the trials returned
    # "method[tag]" -> training seconds per epoch of each of its trials (measured costs)
    epoch_seconds: dict[str, list[float]] = field(default_factory=dict)
    log_fn: Callable[[str], None] | None = None
    data_override: dict[str, Any] = field(default_factory=dict)  # problem name -> Dataset (tests)

    def log(self, msg: str) -> None:
        """One progress line on stderr (when ``progress``)."""
        if self.log_fn is not None:
            self.log_fn(msg)
        elif self.progress:
            print(f"[{self.experiment or 'reproduce'}] {msg}", file=sys.stderr, flush=True)

    def trial(self, problem: Problem, method: str, hparams: dict, seed: int,
              epochs: int | None = None, tag: str = "", train_fraction: float = 1.0,
              analyse: Analyse | None = None) -> TrialResult:
        """Train (or find in the store) one trial; resumable through the store. ``analyse``:
        see :func:`analysed_trial`."""
        t = full_tag(self.experiment, self.scale, tag)
        if self.replay:
            return self._count(stored_trial(self.store, problem, method, hparams, seed, epochs,
                                            t, train_fraction), tag)
        label = f"{problem.name} {method}" + (f" [{tag}]" if tag and tag != method else "") + \
            f" seed {seed}"
        n_ep = problem.epochs if epochs is None else int(epochs)

        def show(row: dict) -> None:
            if self.progress:
                self.log(f"{label}: epoch {row['epoch']}/{n_ep} train loss "
                         f"{row['train_loss']:.4g} test {problem.metric} "
                         f"{row['test_metric']:.4f} ({row['train_seconds']:.1f}s)")

        res = run_trial(problem, method, hparams, seed=seed, epochs=epochs, device=self.device,
                        store=self.store, progress=show, train_fraction=train_fraction, tag=t,
                        dataset=self.data_override.get(problem.name), analyse=analyse)
        if res.skipped:
            self.skipped += 1
        elif res.busy:  # its numbers are not known yet: no outcome can be computed
            raise NotRecorded(f"{label} is being run by {res.holder or 'another process'}; "
                              "re-run this command when it has finished")
        else:
            self.trained += 1
            self.log(f"{label}: {res.status}")
        return self._count(res, tag)

    def _count(self, res: TrialResult, tag: str = "") -> TrialResult:
        self.trials_seen += 1
        if res.trial_id is not None:
            self.trial_ids.add(int(res.trial_id))
        if res.evals:
            last = res.evals[-1]
            sec = float(last.get("train_seconds") or 0.0)
            self.train_seconds += sec
            if last.get("epoch"):
                key = res.method + (f"[{tag}]" if tag and tag != res.method else "")
                self.epoch_seconds.setdefault(key, []).append(sec / float(last["epoch"]))
        return res


def stored_trial(store: Store, problem: Problem, method: str, hparams: dict, seed: int,
                 epochs: int | None, tag: str, train_fraction: float = 1.0) -> TrialResult:
    """The finished (or diverged) trial of these arguments from ``store``; NotRecorded else."""
    from ...methods import get_method_class
    from ...methods.base import resolve_hparams

    hp = resolve_hparams(get_method_class(method), hparams or {})
    n_ep = problem.epochs if epochs is None else int(epochs)
    key = trial_key(problem.name, method, hp, int(seed), n_ep, float(train_fraction), tag)
    row = store.trial_by_key(key)
    if row is None or row["status"] not in DONE_STATUSES:
        raise NotRecorded(f"{problem.name} {method} seed {seed} ({tag}) is not finished in "
                          f"{store.path}")
    return TrialResult(problem.name, method, hp, int(seed), row["status"],
                       evals=store.evals(row["id"]), events=store.events(row["id"]),
                       trial_id=row["id"], skipped=True)


def analysed_trial(ctx: Context, problem: Problem, method: str, hparams: dict, seed: int,
                   analyse: Analyse, epochs: int | None = None, tag: str = "",
                   train_fraction: float = 1.0) -> TrialResult:
    """:meth:`Context.trial` that also measures the trained model: ``analyse(model, method,
    data) -> dict`` (JSON-able numbers) runs once, on the trained model of a finished trial, and
    its dict is ``analysis_of(result.events)``. Replay contexts read the record only."""
    return ctx.trial(problem, method, hparams, seed, epochs, tag, train_fraction, analyse)


def analysis_of(events: list[dict]) -> dict:
    """The analysis event of a trial's events (``{}`` when there is none)."""
    found = [e for e in events if e.get("kind") == "analysis"]
    return found[-1] if found else {}


def eval_test_metric(prob: Problem, model: Any, data) -> float:
    """The problem's metric of ``model`` on the test set (as the runner records it)."""
    return evaluate(model, data.x_test, data.y_test, prob.loss_fn, prob.metric_fn)[1]


def replay_context(store: Store, scale: str, seeds: int, experiment: str) -> Context:
    """A context that recomputes outcomes from the stored trials only (no training)."""
    return Context(scale=scale, seeds=seeds, device="cpu", store=store, progress=False,
                   experiment=experiment, replay=True)


@dataclass(frozen=True)
class Experiment:
    """One paper experiment, its recipe at each scale, and how to run it."""

    name: str
    paper: str
    measures: str
    paper_numbers: tuple[PaperNumber, ...]
    data: dict[str, str]           # scale -> data used
    cost: dict[str, str]           # scale -> estimated cost (measured per-epoch cost x epochs)
    changes: dict[str, str]        # scale -> what differs from the paper's recipe at that scale
    run: Callable[[Context], list[Outcome]]
    # scale -> problems needed (their data_status() is checked before any work)
    problems: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # scale -> seeds when the user gives no --seeds
    seeds: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SEEDS))


REGISTRY: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    """Add ``exp`` to :data:`REGISTRY` (its name must be new) and return it."""
    if exp.name in REGISTRY and REGISTRY[exp.name] is not exp:
        raise ValueError(f"reproduce experiment {exp.name!r} is registered twice")
    for s in list(exp.data) + list(exp.cost) + list(exp.changes) + list(exp.problems):
        if s not in SCALES:
            raise ValueError(f"experiment {exp.name!r}: unknown scale {s!r}; accepted: "
                             f"{', '.join(SCALES)}")
    REGISTRY[exp.name] = exp
    return exp
