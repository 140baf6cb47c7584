"""The report file: ``write_report`` puts the sections together into ``report.md`` and a
self-contained ``report.html``.

Sections: overview tables (methods x problems, tuned and untuned), the summary tables with their
verdicts (:mod:`.summary`, :mod:`.tables`), performance profiles and sensitivity plots
(:mod:`.figures`), the claims table (:mod:`beyondsgd.bench.analysis.claims`), the papers'
numbers beside ours (from :mod:`beyondsgd.bench.reproduce.table`, its figure drawn here), curves
(mean over seeds with a min-max band) and the environment. The names of :mod:`.summary` and
:mod:`.tables` are re-exported here, as before the split.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..analysis.claims import claims_markdown, evaluate_store
from ..analysis.intervals import CI_METHOD, difference_interval, seed_interval
from ..protocol import FINAL_TAG
from ..protocol.coverage import unchecked_markdown
from ..store import Store
from .figures import paper_vs_ours, plot_curves, profile_section, sensitivity_section
from .html import markdown_to_html
from .matrix import matrix_markdown, stored_reproduce_outcomes
from .summary import label, summarize
from .tables import (
    environment_section,
    markdown_table,
    overview_table,
    report_summary,
    verdict_line,
)
from .yours import ensure_registered, mark
from .yours import section as yours_section

__all__ = ["CI_METHOD", "difference_interval", "environment_section", "label", "markdown_table",
           "markdown_to_html", "overview_table", "report_summary", "seed_interval", "summarize",
           "verdict_line", "write_report"]


CLAIMS_INTRO = (
    "Each claim as the paper states it, where it states it, checked only on the kind of problem "
    "the paper ran. Per-seed final values of the tuned runs, every seed counted (a diverged "
    "seed at its untrained network's value; `div k/n` beside every mean); time to target on "
    "the validation split, target from the tuned baselines; tests as in "
    "`beyondsgd/bench/analysis/claims.py` (one-sided tests, each p labelled with its direction "
    "and hypothesis; exact permutation where a seed never reached the target; Holm over a "
    "claim's comparisons; non-inferiority margin 1 accuracy point or 5%). With several tuning "
    "studies (`suite --studies K`): the median verdict, and **unstable** where the studies "
    "disagree.")


def _reproduce_section(store: Store, out_dir: Path, plots: bool) -> str:
    """The paper-vs-ours section of ``beyondsgd reproduce`` ("" when the store holds no
    reproduce results), with its figure. Imported here, lazily: the reproduce room trains
    models (torch), which a report of a plain store does not need."""
    from ..reproduce.table import report_section

    return report_section(store, out_dir, plots, figure=paper_vs_ours) or ""


def write_report(store: Store, out_dir: str | Path, problems: list[str] | None = None,
                 plots: bool = True) -> Path:
    """Write ``report.md`` and a self-contained ``report.html`` into ``out_dir``.

    Sections: your problems (the user's problems in the store, :mod:`.yours`; their results
    need no file: registered from the store's cards), the verdicts at a glance
    (:mod:`.matrix`) with the claims in detail folded below them, summary tables (every group
    of trials; the suite's ``final`` runs are the tuned results, ``defaults`` the untuned
    ones), performance profiles, sensitivity plots, claims table, curves, environment.
    Returns the Markdown path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ensure_registered(store)  # user problems from the store's cards: no file needed
    rows = summarize(store, problems)
    lines = ["# beyondsgd report", "", f"Store: `{store.path}`", ""]
    yours = yours_section(store, problems)
    if yours:
        lines += [yours]
    verdicts = evaluate_store(store, problems=problems)
    glance = matrix_markdown(store, problems, verdicts, stored_reproduce_outcomes(store))
    if glance:
        lines += ["## Verdicts at a glance", "", glance]
    if verdicts:
        lines += ["<details>", "<summary>The claims in detail: each claim's text and source, "
                  "our values, the tests and p-values (click to show)</summary>", "",
                  CLAIMS_INTRO, "",
                  claims_markdown([replace(r, problem=mark(r.problem)) for r in verdicts]),
                  "</details>", ""]
        lines += ["## Claims without a verdict row", "", unchecked_markdown()]
    if not rows:
        lines.append("No finished trials in the store.")
    else:
        for tag, title in ((FINAL_TAG, "tuned (best of the tuning trials, new seeds)"),
                           ("defaults", "untuned defaults")):
            table = overview_table(rows, tag)
            if table:
                lines += [f"## Overview: final test metric, {title}", "", table]
        lines += ["## Summary", "", markdown_table(rows)]
        finals = [r for r in rows if r["tag"] == FINAL_TAG and r["train_fraction"] == 1.0] \
            or rows
        if plots:
            text, path = profile_section(finals, out_dir)
            if path is not None:
                lines += ["## Performance profiles (time to target)", "", text,
                          f"![performance profiles]({path.name})", ""]
            sens = sensitivity_section(store, out_dir, problems)
            if sens:
                lines += ["## Sensitivity (tuning trials)", ""]
                lines += [f"![{p.stem}]({p.name})\n" for p in sens]
        section = _reproduce_section(store, out_dir, plots)
        if section:
            lines += [section.rstrip(), ""]
        if plots:
            lines += ["## Curves", "", "Mean over seeds with a min-max band.", ""]
            for p in plot_curves(store, finals, out_dir):
                lines.append(f"![{p.stem}]({p.name})\n")
        env = environment_section(store)
        if env:
            lines += ["## Environment", "", env]
    path = out_dir / "report.md"
    md = "\n".join(lines) + "\n"
    path.write_text(md)
    (out_dir / "report.html").write_text(markdown_to_html(md, out_dir))
    return path
