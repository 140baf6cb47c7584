"""The verdicts at a glance: the matrix at the top of the report and the README.

:func:`claims_matrix` is claims x problems, one short line per claim (its id and a summary of at
most eight words), one cell per problem coloured by the verdict; :func:`reproduce_matrix` counts
the verdicts of each ``beyondsgd reproduce`` experiment. :func:`matrix_markdown` gives both for a
store (``benchmarks/readme_tables.py`` prints it for the README).

A cell starts with a marker (:data:`MARKS`): an emoji square that GitHub shows in colour, and
that :mod:`.html` turns into the cell's background (:data:`CELL_STYLE`): supported green, not
supported red, inconclusive amber, budget-limited grey (too little of the paper's budget to
decide), untested light grey and hatched (the method never acted), reference only (a baseline's
number, no verdict) light grey. A verdict that differs between tuning studies is marked
**unstable** (the median verdict's colour, a dashed orange frame in HTML).

>>> print(cell_text("supported", note="", budget=0.4))
🟩 supported · 40 % of the budget
>>> short_text(type("C", (), {"id": "x", "text": "one two three four five six seven eight nine"})())
'one two three four five six seven eight …'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from types import SimpleNamespace

from ..analysis.claims import BUDGET_FLOOR, CLAIMS, evaluate_store
from ..analysis.judge import budget_text
from ..problems import PROBLEMS
from ..store import Store
from . import yours as _yours

__all__ = ["CELL_STYLE", "MARKS", "NEUTRAL", "VERDICT_COLOURS", "cell_text", "claims_matrix",
           "matrix_markdown", "reproduce_matrix", "short_text", "verdict_colour"]

ORDER = ("supported", "not supported", "inconclusive", "budget-limited", "untested",
         "reference only")
MARKS = {"supported": "🟩", "not supported": "🟥", "inconclusive": "🟨",
         "budget-limited": "⬜", "untested": "⬚", "reference only": "▫"}
NA = "·"  # a problem of another kind than the claim's
# text colours (figures) and cell backgrounds (HTML), one per verdict
NEUTRAL = "#7f7f7f"
VERDICT_COLOURS = {"supported": "#2ca02c", "not supported": "#d62728", "inconclusive": "#b07d00",
                   "unstable": "#d67e00"}
CELL_STYLE = {
    "supported": "background:#c7e9c0;",
    "not supported": "background:#f7c5c0;",
    "inconclusive": "background:#ffe39a;",
    "budget-limited": "background:#d4d4d4;color:#333;",
    "untested": "background:repeating-linear-gradient(45deg,#f2f2f2 0 5px,#dcdcdc 5px 10px);"
                "color:#555;",
    "reference only": "background:#eeeeee;color:#555;",
}
# the short line of each claim (at most eight words); a claim not listed: its ``short``
# attribute, else the first eight words of its text
SHORT = {
    "bpgrad_accuracy": "higher test accuracy than adaptive methods",
    "bpgrad_loss": "lower training loss than adaptive methods",
    "proxprop_loss": "training loss falls faster than BackProp",
    "proxprop_test": "generalises at least as well as BackProp",
    "slbi_accuracy": "test accuracy comparable to SGD and Adam",
    "gdsolver_mse": "lower regression test MSE than SGD, Adam",
    "gdsolver_time": "reaches the regression target sooner",
    "gdsolver_data": "half the data, baselines' full-data accuracy",
    "pht_speed": "reaches the target sooner than SGD",
    "pht_accuracy": "test accuracy at least Adam's, same budget",
}


def verdict_colour(verdict: str) -> str:
    """A verdict's text colour: green supported, red not supported, amber inconclusive, orange
    unstable; neutral grey for budget-limited, untested, reference only and anything else."""
    v = str(verdict).lower().strip()
    if "unstable" in v:
        return VERDICT_COLOURS["unstable"]
    for key in ("not supported", "supported", "inconclusive"):
        if v == key or v.startswith(key + " ") or v.startswith(key + "("):
            return VERDICT_COLOURS[key]
    return NEUTRAL


def _kind(verdict: str) -> str:
    v = str(verdict).lower().strip()
    return next((k for k in sorted(ORDER, key=len, reverse=True) if v.startswith(k)),
                "untested" if v.startswith("untest") else "")


def short_text(claim) -> str:
    """A claim's short line: :data:`SHORT`, its ``short`` attribute, or its first 8 words."""
    s = SHORT.get(claim.id) or getattr(claim, "short", "") or ""
    if s:
        return s
    words = str(claim.text).split()
    return " ".join(words[:8]) + (" …" if len(words) > 8 else "")


def cell_text(verdict: str, note: str = "", budget: float | None = None,
              unstable: bool = False, tuning: str = "", of: str = "the budget") -> str:
    """One matrix cell: marker, verdict, its note ("untested: ...", "budget-limited: ..." as
    the analysis words them; "inconclusive (...)"), the budget fraction (of ``of``) where it is
    below 1 and the note does not already state it, **unstable**, and the 2x-tuning check
    where there is one."""
    kind = _kind(verdict)
    text = f"{MARKS.get(kind, '')} {verdict}".strip()
    if note:
        text += f": {note}" if kind in ("untested", "budget-limited") else f" ({note})"
    if budget is not None and budget < 1 and "%" not in note:
        text += f" · {budget_text(budget)} of {of}"
    if unstable:
        text += " · **unstable**"
    if tuning:
        text += f" · 2× tuning: {tuning}"
    return text.replace("|", "\\|")


def _tuning_text(r) -> str:
    """The "survives 2x tuning" check, where the analysis provides one (``tuning_check``)."""
    tc = getattr(r, "tuning_check", None)
    if tc is None:
        return ""
    if isinstance(tc, bool):
        return "survives" if tc else "flips"
    if isinstance(tc, str):
        return tc
    v = getattr(tc, "verdict", None)
    return str(v) if v is not None else str(tc)


LEGEND = {"supported": "the claim holds, significantly",
          "not supported": "significantly contradicted",
          "inconclusive": "the seeds cannot decide (why, in brackets)",
          "budget-limited": f"too little of the budget to decide (below "
                            f"{100 * BUDGET_FLOOR:.0f} %)",
          "untested": "the method never acted (no solve kept, a collapsed run)",
          "reference only": "a baseline's number, no verdict"}


def legend_table() -> str:
    """The colours: a table whose header is the verdicts (coloured in HTML, emoji squares on
    GitHub), their meaning below."""
    return ("| " + " | ".join(f"{MARKS[k]} {k}" for k in ORDER) + " |\n|" + "---|" * len(ORDER)
            + "\n| " + " | ".join(LEGEND[k] for k in ORDER) + " |\n")


def claims_matrix(results: Sequence) -> str:
    """Claims x problems (``results``: :func:`~beyondsgd.bench.analysis.claims.evaluate_store`'s
    :class:`StudyVerdicts`): one row per claim (id, paper, short line), one column per problem
    with a verdict (a user's problem marked ``(yours)``); a cell per verdict
    (:func:`cell_text`), ``·`` where the problem is not of the claim's kind, ``–`` where it is
    but the runs are missing. "" without results."""
    if not results:
        return ""
    problems = sorted({r.problem for r in results})
    order = {c.id: i for i, c in enumerate(CLAIMS)}
    claims = {}
    for r in sorted(results, key=lambda r: (order.get(r.claim.id, len(order)), r.claim.id)):
        claims.setdefault(r.claim.id, r.claim)
    by = {(r.claim.id, r.problem): r for r in results}
    lines = ["| claim | " + " | ".join(_yours.mark(p) for p in problems) + " |",
             "|---" * (len(problems) + 1) + "|"]
    for cid, c in claims.items():
        paper = str(c.paper).split(" (")[0]
        cells = []
        for p in problems:
            r = by.get((cid, p))
            if r is None:
                task = getattr(PROBLEMS.get(p), "task", None)
                cells.append(NA if task is not None and task != c.task else "–")
                continue
            v = r.studies[0] if r.studies else None
            notes = [n for s in r.studies if s.verdict == r.verdict
                     and (n := getattr(s, "note", "") or getattr(s, "reason", ""))]
            budgets = [b for s in r.studies if (b := getattr(s, "budget", None)) is not None]
            cells.append(cell_text(r.verdict, notes[0] if notes else "",
                                   min(budgets) if budgets and v is not None else None,
                                   r.unstable, _tuning_text(r)))
        lines.append(f"| `{cid}` {paper}: {short_text(c)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reproduce_matrix(outcomes: Sequence) -> str:
    """Experiments x verdicts (``outcomes``: :class:`~beyondsgd.bench.reproduce.core.Outcome`):
    how many rows of each experiment got each verdict, and the budgets (fractions of the
    paper's optimizer steps) of its rows. "" without outcomes."""
    if not outcomes:
        return ""
    exps = list(dict.fromkeys(o.experiment for o in outcomes))
    missing = {o.experiment: o.missing for o in outcomes if getattr(o, "missing", "")}
    outcomes = [o for o in outcomes if not getattr(o, "missing", "")]
    lines = ["| experiment | " + " | ".join(ORDER) + " | budget (of the paper's steps) |",
             "|---" * (len(ORDER) + 2) + "|"]
    for e in exps:
        if e in missing:  # a replay of a partial run: no verdict to count
            why = str(missing[e]).replace("|", "\\|")
            lines.append(f"| {e} | " + " | ".join("–" for _ in ORDER) + f" | incomplete: {why} |")
            continue
        rows = [o for o in outcomes if o.experiment == e]
        counts = Counter(_kind(o.verdict) or o.verdict for o in rows)
        cells = [f"{MARKS[k]} {counts[k]}" if counts[k] else NA for k in ORDER]
        budgets = sorted(b for o in rows if (b := getattr(o, "budget", None)) is not None)
        lo, hi = (budget_text(budgets[0]), budget_text(budgets[-1])) if budgets else ("–", "–")
        btext = lo if lo == hi else f"{lo} – {hi}"
        lines.append(f"| {e} | " + " | ".join(cells) + f" | {btext} |")
    return "\n".join(lines) + "\n"


def stored_reproduce_outcomes(store: Store) -> list:
    """The reproduce outcomes recomputed from ``store`` (none without reproduce trials;
    imported lazily: the reproduce room trains models, which a plain store does not need); an
    experiment whose trials are incomplete (a partial run, an earlier recipe) as one entry with
    ``missing`` (its reason)."""
    from ..reproduce.table import stored_outcomes, stored_runs

    if not stored_runs(store):
        return []
    out: list = []
    for run in stored_outcomes(store):
        out += run.outcomes
        if run.missing and not run.outcomes:
            out.append(SimpleNamespace(experiment=run.experiment.name, verdict="",
                                       budget=None, missing=run.missing))
    return out


def matrix_markdown(store: Store, problems: list[str] | None = None, results=None,
                    outcomes=None) -> str:
    """The verdict matrices of ``store``: the legend, the claims x problems matrix, and where
    the store holds ``beyondsgd reproduce`` results the reproduce matrix. "" when there is
    neither. ``results``/``outcomes``: already computed (else computed here)."""
    _yours.ensure_registered(store)  # user problems from the store's cards
    if results is None:
        results = evaluate_store(store, problems=problems)
    if outcomes is None:
        outcomes = stored_reproduce_outcomes(store)
    parts = []
    if results:
        parts += ["Claims (rows) on the problems run (columns): each paper's claim checked on "
                  "the kind of problem the paper ran; over tuning studies, untested or "
                  "budget-limited if any study is, else the median verdict. "
                  f"`{NA}`: a problem of another kind; `–`: runs missing; a budget: the "
                  "fraction of the problem's epochs run."
                  + (" " + _yours.YOURS_LEGEND
                     if any(_yours.is_user(r.problem) for r in results) else ""), "",
                  claims_matrix(results)]
    if outcomes:
        parts += ["The papers' own experiments (`beyondsgd reproduce`): rows per verdict and the "
                  "budget as a fraction of the paper's optimizer steps; below the floor a "
                  "verdict is budget-limited. Each row in detail: the report's \"Paper vs ours\" "
                  "section.", "", reproduce_matrix(outcomes)]
    if not parts:
        return ""
    return legend_table() + "\n" + "\n".join(parts)
