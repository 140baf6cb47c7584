"""The report: ``build.py`` (summaries, Markdown tables, the report file), ``figures.py`` (curves,
performance profiles, sensitivity plots) and ``html.py`` (the HTML page). Reads the store only.
"""

from . import build, figures, html
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
]
