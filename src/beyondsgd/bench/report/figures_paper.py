"""The paper-vs-ours figure: each paper's number beside ours and beside our baseline's.

:func:`paper_vs_ours` draws one line per row (experiment, quantity) of
:func:`beyondsgd.bench.reproduce.table.figure_rows`, one panel per unit. A method's row is
**paired with its baselines**: the reference-only rows of the same experiment and quantity kind
(the quantity without the part naming the method: "test accuracy after 3 epochs, Adam (%)" is a
baseline of "test accuracy after 3 epochs, BPGrad (%)"; :func:`quantity_kind`) are drawn right
below it, in grey, and their means are marked on the method's own line (grey squares) so that a
reader sees method, baseline and paper on one line. Only a verdict is coloured (green supported,
red not supported, amber inconclusive, orange unstable: :func:`.matrix.verdict_colour`); a
budget-limited, untested or reference row is neutral grey, and a row's label states its budget
(the fraction of the paper's optimizer steps) where the row has one.
"""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..analysis.judge import budget_text
from .matrix import NEUTRAL, verdict_colour
from .styles import _plt, _save_figure

__all__ = ["PAPER_VS_OURS_KEYS", "pair_rows", "paper_vs_ours", "quantity_kind"]

PAPER_VS_OURS_KEYS = ("experiment", "quantity", "paper", "ours", "unit", "verdict")
OURS, BASELINE, PAPER = "#1f77b4", "#8c8c8c", "#d62728"
MAX_MARKED = 4  # baselines marked on a method's line; more (a sweep): drawn below it only


def _verdict_colour(verdict: str) -> str:
    """A label's colour: only a verdict is coloured (:func:`.matrix.verdict_colour`);
    budget-limited, untested, reference only and anything else are neutral grey."""
    return verdict_colour(verdict)


def _is_reference(r: dict) -> bool:
    return str(r["verdict"]).lower().startswith("reference")


def quantity_kind(r: dict) -> tuple[str, str, str]:
    """(experiment, unit, quantity without the part naming the method): rows of one kind
    compare methods on the same quantity. The method is the second comma-separated part
    ("final training loss, cg3, τ=1" -> "final training loss, τ=1").

    >>> quantity_kind({"experiment": "e", "unit": "%", "quantity": "test accuracy, Adam (%)"})
    ('e', '%', 'test accuracy')
    """
    q = str(r["quantity"]).removesuffix(" (%)")
    parts = [p.strip() for p in q.split(",")]
    if len(parts) >= 2:
        parts = parts[:1] + parts[2:]
    return str(r["experiment"]), str(r["unit"]), ", ".join(parts)


def pair_rows(rows: Sequence[dict]) -> list[tuple[dict, list[dict], bool]]:
    """``(row, baselines, is_baseline)`` in drawing order: every method row followed by the
    reference rows of its kind (:func:`quantity_kind`) not yet drawn; a reference row that no
    method row shares a kind with stays where it was. ``baselines``: the reference rows of a
    method row's kind (empty for reference rows)."""
    refs: dict[tuple, list[dict]] = defaultdict(list)
    methods: set[tuple] = set()
    for r in rows:
        (refs[quantity_kind(r)].append(r) if _is_reference(r)
         else methods.add(quantity_kind(r)))
    placed: set[int] = set()
    out: list[tuple[dict, list[dict], bool]] = []
    for r in rows:
        k = quantity_kind(r)
        if _is_reference(r):
            if k not in methods and id(r) not in placed:
                placed.add(id(r))
                out.append((r, [], False))
            continue
        out.append((r, refs.get(k, []), False))
        for b in refs.get(k, []):
            if id(b) not in placed:
                placed.add(id(b))
                out.append((b, [], True))
    return out


def _check_rows(rows: Sequence[dict]) -> None:
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"paper_vs_ours: row {i} is {type(r).__name__}, expected a dict "
                             f"with keys {', '.join(PAPER_VS_OURS_KEYS)}")
        missing = [k for k in PAPER_VS_OURS_KEYS if k not in r]
        if missing:
            raise ValueError(f"paper_vs_ours: row {i} ({r.get('experiment', '?')}) lacks "
                             f"{', '.join(missing)}; expected keys {', '.join(PAPER_VS_OURS_KEYS)}")
        if r["paper"] is not None and not isinstance(r["paper"], (int, float)):
            raise ValueError(f"paper_vs_ours: row {i}: paper must be a number or None, got "
                             f"{r['paper']!r}")
        if isinstance(r["ours"], (str, bytes)) or not hasattr(r["ours"], "__iter__"):
            raise ValueError(f"paper_vs_ours: row {i}: ours must be a list of per-seed numbers, "
                             f"got {r['ours']!r}")


def _value_range(unit: str, values: list[float]) -> tuple[float, float]:
    """Where a 95% interval is clipped: at 0 when every value is >= 0 (times, accuracies,
    losses, ratios), at 1 for an accuracy or fraction unit whose values are <= 1, at 100 for a
    percentage."""
    lo = 0.0 if values and min(values) >= 0 else -math.inf
    u = unit.lower()
    if values and max(values) <= 1 and ("accuracy" in u or "fraction" in u):
        return lo, 1.0
    if values and max(values) <= 100 and "%" in u:
        return lo, 100.0
    return lo, math.inf


def _finite(vals) -> list[float]:
    return [float(v) for v in vals if v is not None and math.isfinite(float(v))]


def _label(r: dict, is_baseline: bool) -> str:
    bad = sum(1 for v in r["ours"] if v is None or not math.isfinite(float(v)))
    extra = f", {bad} of {len(r['ours'])} not finite" if bad else ""
    extra += ", no paper number" if r["paper"] is None else ""
    budget = r.get("budget")
    if budget is not None and math.isfinite(float(budget)):
        extra += f", at {budget_text(float(budget))} of the paper's budget"
    head = "↳ baseline: " if is_baseline else ""
    return textwrap.fill(f"{head}{r['experiment']}: {r['quantity']} [{r['verdict']}{extra}]", 72)


def paper_vs_ours(rows: Sequence[dict], path: str | Path, save=None) -> Path | None:
    """The paper's numbers beside ours (module docstring): one panel per unit, one line per
    row, method rows followed by their baselines (:func:`pair_rows`). Ours: every seed as a
    small dot, the mean as a filled circle with its 95% CI (Student t over the finite seeds,
    clipped to the quantity's range, :func:`_value_range`), blue for a method, grey for a
    baseline; a method's baselines' means as grey squares on its line; the paper's number as a
    red diamond. The label ends with the verdict (coloured only where it is one), counts seeds
    that were not finite and states the budget fraction (key ``budget``, optional). A panel
    whose positive values span more than 30x is drawn in log scale.

    ``rows``: dicts with keys experiment, quantity, paper (float or None), ours (list of floats,
    one per seed), unit, verdict, optionally budget. Returns ``path``, or None (nothing written)
    for no rows. ``save(plt, fig, path)``: how to write the figure (:func:`.styles._save_figure`).
    """
    from ..analysis.metrics import mean_ci

    _check_rows(rows)
    if not rows:
        return None
    rows = [{**r, "ours": list(r["ours"])} for r in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[str(r["unit"])].append(r)
    paired = {u: pair_rows(rs) for u, rs in groups.items()}
    heights = [len(g) + 1.2 for g in paired.values()]
    plt = _plt()
    fig, axes = plt.subplots(len(groups), 1, figsize=(14, 0.9 + 0.5 * sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (unit, items) in zip(axes[:, 0], paired.items()):
        values = [v for r, _, _ in items for v in _finite([*r["ours"], r["paper"]])]
        lo_clip, hi_clip = _value_range(unit, values)
        for y, (r, bases, is_base) in enumerate(reversed(items)):
            colour = BASELINE if is_base or _is_reference(r) else OURS
            fin = _finite(r["ours"])
            if fin:
                m, _, lo, hi = mean_ci(fin)
                name = "baseline" if colour == BASELINE else "ours"
                ax.plot(fin, [y] * len(fin), "o", ms=3, color=colour, alpha=0.45, lw=0,
                        label=f"{name}: one seed")
                if math.isfinite(lo):
                    lo, hi = max(lo, lo_clip), min(hi, hi_clip)
                    ax.errorbar([m], [y], xerr=[[m - lo], [hi - m]], fmt="o", ms=7,
                                color=colour, capsize=4, lw=1.6, label=f"{name}: mean, 95% CI")
                else:
                    ax.plot([m], [y], "o", ms=7, color=colour, label=f"{name}: mean, 95% CI")
            means = [sum(f) / len(f) for b in bases if (f := _finite(b["ours"]))]
            if means and len(bases) <= MAX_MARKED:
                ax.plot(means, [y] * len(means), "s", ms=6, mfc="none", mec=BASELINE, mew=1.5,
                        label="its baselines' means")
            if r["paper"] is not None and math.isfinite(float(r["paper"])):
                ax.plot([r["paper"]], [y], "D", ms=8, mfc="none", mec=PAPER, mew=2,
                        label="paper")
        ax.set_yticks(range(len(items)), [_label(r, b) for r, _, b in reversed(items)],
                      fontsize=8)
        for tick, (r, _, _) in zip(ax.get_yticklabels(), reversed(items)):
            tick.set_color(_verdict_colour(r["verdict"]))
            if _verdict_colour(r["verdict"]) == NEUTRAL:
                tick.set_fontstyle("italic")
        ax.set_ylim(-0.7, len(items) - 0.3)
        pos = [v for v in values if v > 0]
        if pos and len(pos) == len(values) and max(pos) / min(pos) > 30:
            ax.set_xscale("log")
        ax.set_xlabel(unit, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
        if not values:
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center",
                    color="gray")
    handles: dict[str, object] = {}
    for ax in axes[:, 0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    order = [k for k in ("ours: one seed", "ours: mean, 95% CI", "baseline: one seed",
                         "baseline: mean, 95% CI", "its baselines' means", "paper")
             if k in handles]
    axes[0, 0].set_title("The papers' numbers, ours and our baselines' (labels: green "
                         "supported, red not supported, amber inconclusive, grey italic: no "
                         "verdict — budget-limited, untested or reference)", fontsize=9)
    if order:
        fig.legend([handles[k] for k in order], order, loc="upper center", fontsize=8,
                   bbox_to_anchor=(0.5, 0.0), ncol=len(order), frameon=False)
    (save or _save_figure)(plt, fig, path)
    return path
