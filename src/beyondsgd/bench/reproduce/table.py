"""The paper-vs-ours table: Markdown for the CLI's report and the benchmark report's section.

This room returns data and Markdown; the figure is drawn by whoever passes ``figure`` (the
report's ``figures.paper_vs_ours``): reproduce never imports the report, the report reads
these tables.

Outcomes are never stored as such: :func:`stored_outcomes` recomputes them from the store's
trials (tag ``reproduce:<experiment>:<scale>[:...]``) by running each experiment against a
replay context (:func:`.core.replay_context`), which reads finished trials and trains nothing.

>>> from beyondsgd.bench.reproduce.core import Outcome
>>> o = Outcome("x", "test accuracy (%)", 70.7, "§5.3", [71.0, 72.0], "%", "cpu", "supported",
...             "direction")
>>> print(outcome_table([o]).splitlines()[2])
| x | test accuracy (%) | 70.7 (§5.3) | 71.5 ± 6.4 (n=2) | cpu | – | **supported** | direction |
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..protocol.coverage import unchecked_markdown
from ..store import Store
from .core import (
    REGISTRY,
    SCALES,
    TAG_PREFIX,
    Context,
    Experiment,
    NotRecorded,
    Outcome,
    ci_text,
    outcome_budget_text,
    replay_context,
)

# draws the rows of :func:`figure_rows` into a PNG at the path, returns the path (or None)
Figure = Callable[[list[dict], Path], "Path | None"]


@dataclass
class ExperimentRun:
    """One experiment's outcomes at one scale, with what it cost."""

    experiment: Experiment
    scale: str
    seeds: int
    outcomes: list[Outcome] = field(default_factory=list)
    wall_seconds: float | None = None      # this invocation's wall time (None: from the store)
    train_seconds: float = 0.0             # training seconds summed over its trials (stored)
    trials: int = 0
    missing: str = ""                      # why outcomes are missing (replay of a partial run)
    stored_wall: float | None = None       # first trial start to last finish, from the store
    epoch_seconds: dict[str, list[float]] = field(default_factory=dict)  # Context.epoch_seconds


def stored_wall(store: Store, name: str, scale: str, ids: set[int] | None = None
                ) -> float | None:
    """Wall seconds of one experiment at one scale: the sum over its trials of each trial's
    start-to-end time (the experiment trains them one after another, so this is its wall time
    even when it ran in several invocations; None without finished trials). ``ids``: only these
    trials (those its outcomes come from), so trials of an earlier recipe left in the store do
    not count."""
    prefix = f"{TAG_PREFIX}:{name}:{scale}"
    rows = [t for t in store.trials() if ((t.get("tag") or "") == prefix
            or (t.get("tag") or "").startswith(prefix + ":"))
            and (ids is None or t["id"] in ids)]
    spans = [t["finished"] - t["started"] for t in rows
             if t.get("started") is not None and t.get("finished") is not None]
    return float(sum(spans)) if spans else None


def fmt_paper(v: float | str | None, source: str = "") -> str:
    if v is None:
        txt = "n/a"
    elif isinstance(v, float):
        txt = f"{v:g}"
    else:
        txt = str(v)
    return f"{txt} ({source})" if source else txt


def fmt_ours(o: Outcome) -> str:
    return ci_text(o.ours, digits=3)


def outcome_table(outcomes: list[Outcome]) -> str:
    """Markdown: experiment, quantity, paper (source), ours (mean ± 95% CI half-width, n
    seeds), scale, budget (our optimizer steps of the paper's, :func:`.core.steps_text`),
    verdict, reason."""
    lines = ["| experiment | quantity | paper (source) | ours: mean ± 95% CI | scale | budget "
             "| verdict | what was tested |", "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
        lines.append(f"| {o.experiment} | {cell(o.quantity)} | "
                     f"{cell(fmt_paper(o.paper, o.paper_source))} | {fmt_ours(o)} | {o.scale} | "
                     f"{cell(outcome_budget_text(o))} | **{o.verdict}** | "
                     f"{cell(o.verdict_reason)} |")
    return "\n".join(lines)


def budget_header(outcomes: list[Outcome]) -> str:
    """The budgets of an experiment's rows for its section header ("" when none has one)."""
    seen = list(dict.fromkeys(outcome_budget_text(o) for o in outcomes
                              if o.budget is not None))
    return "budget " + "; ".join(seen) if seen else ""


def verdict_counts(outcomes: list[Outcome]) -> str:
    c: dict[str, int] = defaultdict(int)
    for o in outcomes:
        c[o.verdict] += 1
    return ", ".join(f"{n} {v}" for v, n in sorted(c.items()))


def run_markdown(run: ExperimentRun) -> str:
    """One experiment's section: what it measures, data, what changed at this scale, table."""
    e = run.experiment
    cost = f"{run.train_seconds:.0f} s of training over {run.trials} trials"
    if run.stored_wall is not None:
        cost += f", {run.stored_wall:.0f} s wall (its trials' start-to-end times, summed)"
    if run.wall_seconds is not None:
        cost += f" ({run.wall_seconds:.0f} s wall this invocation)"
    head = ", ".join(x for x in (f"{run.scale} scale", f"{run.seeds} seeds",
                                 budget_header(run.outcomes)) if x)
    parts = [f"### {e.name} ({head})", "",
             f"*{e.paper}* — {e.measures}.", "",
             f"- data: {e.data.get(run.scale, 'n/a')}",
             f"- changed from the paper at this scale: {e.changes.get(run.scale, 'n/a')}",
             f"- cost: {cost} (estimate: {e.cost.get(run.scale, 'n/a')})"]
    if run.epoch_seconds:
        per = ", ".join(f"{k} {statistics.median(v):.3g}"
                        for k, v in sorted(run.epoch_seconds.items()))
        parts.append(f"- measured training seconds per epoch (median over seeds; trials that "
                     f"diverged early count their epochs done): {per}")
    if run.missing:
        parts += ["", f"Incomplete: {run.missing}"]
        return "\n".join(parts)
    if run.scale != "paper":
        parts.append("- at this scale the paper's absolute numbers are for reference only; the "
                     "verdicts test the claims' direction (and size where stated)")
    parts += ["", outcome_table(run.outcomes), "",
              f"Verdicts: {verdict_counts(run.outcomes) or 'none'}."]
    return "\n".join(parts)


def figure_rows(outcomes: list[Outcome]) -> list[dict]:
    """Rows for ``figures.paper_vs_ours``: numeric paper values only (else None)."""
    return [{"experiment": o.experiment, "quantity": o.quantity,
             "paper": float(o.paper) if isinstance(o.paper, (int, float))
             and not isinstance(o.paper, bool) and math.isfinite(o.paper) else None,
             "ours": [float(v) for v in o.ours], "unit": o.unit, "verdict": o.verdict,
             "budget": o.budget} for o in outcomes]


def try_figure(outcomes: list[Outcome], path: Path, figure: Figure | None = None
               ) -> Path | None:
    """``figure(figure_rows(outcomes), path)``: the drawing is the caller's (the report's
    ``figures.paper_vs_ours``), as this room does not import the report. None without a
    ``figure`` or without outcomes."""
    if figure is None or not outcomes:
        return None
    out = figure(figure_rows(outcomes), path)
    return Path(out) if out is not None else path


def stored_runs(store: Store) -> list[tuple[str, str, int]]:
    """(experiment, scale, seeds) of every reproduce experiment with trials in ``store``."""
    seeds: dict[tuple[str, str], set[int]] = defaultdict(set)
    for t in store.trials():
        parts = (t.get("tag") or "").split(":")
        if len(parts) >= 3 and parts[0] == TAG_PREFIX and parts[2] in SCALES:
            seeds[(parts[1], parts[2])].add(int(t["seed"]))
    order = {n: i for i, n in enumerate(REGISTRY)}
    keys = sorted(seeds, key=lambda k: (SCALES.index(k[1]), order.get(k[0], 99), k[0]))
    return [(e, s, len(seeds[(e, s)])) for e, s in keys]


def replay(store: Store, name: str, scale: str, seeds: int) -> ExperimentRun:
    """Recompute one experiment's outcomes from ``store`` (no training)."""
    exp = REGISTRY[name]
    ctx: Context = replay_context(store, scale, seeds, name)
    run = ExperimentRun(exp, scale, seeds)
    try:
        run.outcomes = exp.run(ctx)
    except NotRecorded as exc:
        run.missing = f"not every trial has finished ({exc})"
    run.train_seconds, run.trials = ctx.train_seconds, ctx.trials_seen
    run.epoch_seconds = ctx.epoch_seconds
    run.stored_wall = stored_wall(store, name, scale, ctx.trial_ids or None)
    return run


def stored_outcomes(store: Store) -> list[ExperimentRun]:
    return [replay(store, e, s, n) for e, s, n in stored_runs(store) if e in REGISTRY]


def report_section(store: Store, out_dir: str | Path, plots: bool = True,
                   figure: Figure | None = None) -> str:
    """The "Paper vs ours" section of the benchmark report ("" without reproduce results);
    with ``plots`` and a ``figure`` (see :func:`try_figure`), its figure too."""
    runs = stored_outcomes(store)
    if not runs:
        return ""
    out_dir = Path(out_dir)
    parts = ["## Paper vs ours (`beyondsgd reproduce`)", "",
             "Each paper's own experiment, recomputed from the stored trials. At the `cpu` scale "
             "(Fashion-MNIST, small budgets) the paper's numbers stand beside ours for reference "
             "and the verdict tests the claim's direction; at the `paper` scale it tests the "
             "value too. Ours: mean ± 95% CI half-width over seeds (n); '–' diverged.", ""]
    all_out = [o for r in runs for o in r.outcomes]
    if plots and all_out:
        out_dir.mkdir(parents=True, exist_ok=True)
        fig = try_figure(all_out, out_dir / "paper_vs_ours.png", figure)
        if fig is not None:
            parts += [f"![paper vs ours]({fig.name})", ""]
    for r in runs:
        parts += [run_markdown(r), ""]
    return "\n".join(parts)


def write_markdown(runs: list[ExperimentRun], path: str | Path, plots: bool = True,
                   figure: Figure | None = None) -> Path:
    """The CLI's report: one section per experiment run, and with ``plots`` and a ``figure``
    (the report's ``figures.paper_vs_ours``, see :func:`try_figure`) the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = ["# beyondsgd reproduce: paper vs ours", ""]
    all_out = [o for r in runs for o in r.outcomes]
    if all_out:
        parts += ["## Summary", "", outcome_table(all_out), ""]
    if plots and all_out:
        fig = try_figure(all_out, path.with_suffix(".png"), figure)
        if fig is not None:
            parts += [f"![paper vs ours]({fig.name})", ""]
    for r in runs:
        parts += [run_markdown(r), ""]
    parts += ["## Claims without a verdict row", "", unchecked_markdown()]
    path.write_text("\n".join(parts))
    return path
