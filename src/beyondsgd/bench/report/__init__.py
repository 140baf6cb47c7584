"""The report: ``summary.py`` (the trials grouped, statistics over seeds), ``tables.py``
(Markdown tables, verdict lines), ``matrix.py`` (the verdicts at a glance: claims x problems
coloured by verdict, the reproduce experiments' verdict counts; ``matrix_markdown`` for the
README), ``build.py`` (the report file), ``figures.py`` (curves, performance profiles,
sensitivity plots; ``figures_paper.py``: the papers' numbers beside ours and our baselines';
``styles.py``: one style per method) and ``html.py`` (the HTML page). The top room of the
benchmark: it reads the store, the analysis and the reproduce room's tables, and nothing below
imports it.
"""

from . import build, figures, figures_paper, html, matrix, styles, summary, tables
from .build import (
    environment_section,
    label,
    markdown_table,
    overview_table,
    report_summary,
    summarize,
    verdict_line,
    write_report,
)
from .matrix import matrix_markdown

__all__ = [
    "environment_section",
    "label",
    "markdown_table",
    "matrix_markdown",
    "overview_table",
    "report_summary",
    "summarize",
    "verdict_line",
    "write_report",
    "build",
    "figures",
    "figures_paper",
    "html",
    "matrix",
    "styles",
    "summary",
    "tables",
]
