"""The report: ``summary.py`` (the trials grouped, statistics over seeds), ``tables.py``
(Markdown tables, verdict lines), ``build.py`` (the report file), ``figures.py`` (curves,
performance profiles, sensitivity plots, the papers' numbers beside ours; ``styles.py``: one
style per method) and ``html.py`` (the HTML page). The top room of the benchmark: it reads the
store, the analysis and the reproduce room's tables, and nothing below imports it.
"""

from . import build, figures, html, styles, summary, tables
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

__all__ = [
    "environment_section",
    "label",
    "markdown_table",
    "overview_table",
    "report_summary",
    "summarize",
    "verdict_line",
    "write_report",
    "build",
    "figures",
    "html",
    "styles",
    "summary",
    "tables",
]
