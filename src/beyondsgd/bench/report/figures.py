"""The report's figures (PNG, 110 dpi): curves per problem, performance profiles over problems,
hyperparameter sensitivity from the tuning trials, and the paper-vs-ours comparison. Each
returns the path(s) it wrote.

Every method has one style (colour, line style, marker), the same in every figure and in every
report, from its name alone (:func:`.styles.method_style`, re-exported here). Legends are placed
outside the axes (to the right of, or below, the panels), never over the data.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ...methods import METHODS
from ..problems import PROBLEMS
from ..protocol import TUNE_TAG
from ..store import Store
from .styles import (  # noqa: F401 - re-exported: the figures' styles
    LINESTYLES,
    MARKERS,
    PALETTE,
    _styles_for,
    method_style,
)


def _legend_right(fig, handles=None, labels=None, fontsize: float = 7.5):
    """One legend for the figure, outside the axes, to the right of them (in one or two
    columns by length); saving with ``bbox_inches="tight"`` keeps it in the PNG."""
    if handles is None:
        handles, labels = [], []
        for ax in fig.axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
    if not handles:
        return None
    return fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.97),
                      fontsize=fontsize, ncol=1 if len(handles) <= 22 else 2, frameon=False,
                      borderaxespad=0.5)


def _save_figure(plt, fig, path: Path) -> Path:
    """Lay out, write (PNG, 110 dpi, cropped to the figure's contents, outside legends
    included) and close ``fig``; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- curves ------------------------------------------------------------------------------
def plot_curves(store: Store, rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per problem: train loss and test metric vs epochs and vs seconds, mean over
    seeds with a min-max band, each row named by its method (its full label where a method has
    several rows). Where a seed diverged (a non-finite loss, or fewer epochs than
    the others) the line goes on, lighter and without markers, as the mean of the seeds that
    did not, and the legend says how many diverged."""
    import numpy as np

    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_problem[r["problem"]].append(r)
    paths = []
    for prob_name, rs in by_problem.items():
        prob = PROBLEMS[prob_name]
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
        any_div = False
        names = _legend_names(rs)
        for r, st in zip(rs, _styles_for(rs)):
            curves = [c for c in (store.evals(i) for i in r["trial_ids"]) if c]
            if not curves:
                continue
            n_all, n_max = min(map(len, curves)), max(map(len, curves))
            n_div = sum(1 for c in curves if len(c) < n_max or not all(
                e["train_loss"] is not None and math.isfinite(e["train_loss"]) for e in c))
            any_div |= n_div > 0
            label = names[id(r)] + (f" ({n_div}/{len(curves)} div.)" if n_div else "")
            longest = max(curves, key=len)
            ep = np.array([e["epoch"] for e in longest], float)

            with warnings.catch_warnings():  # all-NaN columns after a divergence
                warnings.simplefilter("ignore", RuntimeWarning)
                secs = np.nanmean(_seed_matrix(curves, "train_seconds", n_max), axis=0)
                for row, key in enumerate(("train_loss", "test_metric")):
                    vals = _seed_matrix(curves, key, n_max)
                    mean = np.nanmean(vals, axis=0)
                    lo, hi = np.nanmin(vals, axis=0), np.nanmax(vals, axis=0)
                    for col, xs in enumerate((ep, secs)):
                        ax = axes[row, col]
                        ax.plot(xs[:n_all], mean[:n_all], label=label, lw=1.4, ms=4,
                                markevery=max(1, n_all // 6), **st)
                        if n_max > n_all:
                            ax.plot(xs[n_all - 1:], mean[n_all - 1:], lw=1.0, alpha=0.4,
                                    color=st["color"], linestyle=st["linestyle"])
                        ax.fill_between(xs, lo, hi, color=st["color"], alpha=0.12, lw=0)
        for col, xl in enumerate(("epoch", "training seconds")):
            axes[0, col].set_ylabel("train loss")
            axes[0, col].set_yscale("log")
            axes[1, col].set_ylabel(f"test {prob.metric}")
            axes[1, col].axhline(prob.target, color="gray", ls=":", lw=1, label="target")
            for row in range(2):
                axes[row, col].set_xlabel(xl)
                axes[row, col].grid(alpha=0.3)
        handles, labels = [], []
        for h, lab in zip(*axes[1, 0].get_legend_handles_labels()):
            handles.append(h)
            labels.append(lab)
        if any_div:
            handles.append(plt.Line2D([], [], color="gray", lw=1.0, alpha=0.4))
            labels.append("after a divergence:\nmean of the other seeds")
        _legend_right(fig, handles, labels)
        fig.suptitle(f"{prob_name}: {prob.description}", fontsize=10)
        paths.append(_save_figure(plt, fig, out_dir / f"curves_{prob_name}.png"))
    return paths


def _legend_names(rows: list[dict]) -> dict[int, str]:
    """A row's name in a legend: its method where the method has one row in the figure (the
    hyperparameters are in the report's tables), else its full label."""
    count: dict[str, int] = defaultdict(int)
    for r in rows:
        count[r["method"]] += 1
    return {id(r): r["method"] if count[r["method"]] == 1 else r["label"] for r in rows}


def _seed_matrix(curves: list[list[dict]], key: str, n: int):
    """Seeds x ``n`` epochs of ``key``; NaN where a seed has no value (None, or ended)."""
    import numpy as np

    return np.array([[np.nan if e.get(key) is None else e[key] for e in c[:n]]
                     + [np.nan] * (n - len(c[:n])) for c in curves], float)


# ---- performance profiles -----------------------------------------------------------------
def profile_section(rows: list[dict], out_dir: Path, tau_max: float = 4.0
                    ) -> tuple[str, Path | None]:
    """AlgoPerf-style performance profiles over problems from time-to-target (median seconds)."""
    from ..analysis.metrics import performance_profile

    times: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        times[r["problem"]][r["method"]] = r["seconds_to_target"]
    if not times:
        return "", None
    taus, rho, score = performance_profile(dict(times), tau_max)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    every = max(1, len(taus) // 8)
    for i, m in enumerate(sorted(score, key=lambda k: (-score[k], k))):
        # markers staggered along tau, so that lines lying on one another stay distinguishable
        ax.step(taus, rho[m], where="post", label=f"{m} ({score[m]:.2f})", lw=1.4, ms=4,
                markevery=((i * 5) % every, every), **method_style(m))
    ax.set_xlabel("tau (time to target / fastest method's)")
    ax.set_ylabel("fraction of problems within tau")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    _legend_right(fig)
    path = _save_figure(plt, fig, out_dir / "performance_profiles.png")
    lines = [f"Over {len(times)} problem(s); score = normalised area under the profile for "
             f"tau in [1, {tau_max:g}] (1: fastest to target everywhere, 0: never within "
             f"{tau_max:g}x).\n", "| method | score |", "|---|---|"]
    lines += [f"| {m} | {score[m]:.3f} |" for m in sorted(score, key=lambda k: -score[k])]
    return "\n".join(lines) + "\n", path


# ---- sensitivity ------------------------------------------------------------------------
def sensitivity_section(store: Store, out_dir: Path, problems: list[str] | None = None
                        ) -> list[Path]:
    """Validation metric vs the first tuned hyperparameter, from the tuning trials."""
    from ..protocol import search_space

    trials = [t for t in store.trials(tag=TUNE_TAG) if t["status"] in ("finished", "diverged")
              and (not problems or t["problem"] in problems)]
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for t in trials:
        by_problem[t["problem"]].append(t)
    plt = _plt()
    paths = []
    for prob_name, ts in by_problem.items():
        prob = PROBLEMS.get(prob_name)
        if prob is None:
            continue
        by_method: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        for t in ts:
            space = [h for h in search_space(t["method"])] if t["method"] in METHODS else []
            if not space or not isinstance(t["hparams"].get(space[0].name), (int, float)):
                continue
            x = float(t["hparams"][space[0].name])
            y = t["best_val_metric"] if t["status"] == "finished" else math.nan
            by_method[(t["method"], space[0].name)].append((x, y))
        if not by_method:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (m, hp), pts in sorted(by_method.items()):
            pts.sort()
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=f"{m} ({hp})", ms=4, lw=1.2, **method_style(m))
        ax.set_xscale("log")
        ys = [y for pts in by_method.values() for _, y in pts if y is not None and math.isfinite(y)]
        if not prob.higher_is_better and ys and min(ys) > 0 and max(ys) / min(ys) > 30:
            ax.set_yscale("log")  # an error metric over decades: the good settings stay apart
        ylim = ax.get_ylim()
        worst = ylim[0 if prob.higher_is_better else 1]
        for (m, _), pts in sorted(by_method.items()):
            div = [x for x, y in pts if y is None or not math.isfinite(y)]
            if div:  # diverged settings: an x at the worst edge of the axes
                ax.plot(div, [worst] * len(div), "x", color=method_style(m)["color"], ms=6,
                        clip_on=False)
        ax.set_ylim(ylim)
        ax.set_xlabel("tuned hyperparameter (lr, or L for BPGrad); x at the worst edge: diverged")
        ax.set_ylabel(f"best validation {prob.metric}")
        ax.set_title(f"{prob_name}: sensitivity", fontsize=10, pad=12)
        ax.grid(alpha=0.3)
        _legend_right(fig)
        paths.append(_save_figure(plt, fig, out_dir / f"sensitivity_{prob_name}.png"))
    return paths


# ---- paper vs ours ----------------------------------------------------------------------
PAPER_VS_OURS_KEYS = ("experiment", "quantity", "paper", "ours", "unit", "verdict")


def _verdict_colour(verdict: str) -> str:
    """Orange for a verdict marked unstable (it flips across studies), red for "not ...",
    green for supported/reproduced, grey otherwise (inconclusive, reference only)."""
    v = str(verdict).lower()
    if "unstable" in v:
        return "#d67e00"
    if v.startswith("not"):
        return "#d62728"
    if v.startswith(("supported", "reproduced")):
        return "#2ca02c"
    return "#444444"


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


def paper_vs_ours(rows: Sequence[dict], path: str | Path) -> Path | None:
    """The paper's numbers beside ours: one panel per unit, one line per (experiment,
    quantity). Ours: every seed as a small dot, the mean as a filled circle with its 95% CI
    (Student t over the finite seeds, :func:`beyondsgd.bench.metrics.mean_ci`, clipped to the
    quantity's range, see :func:`_value_range`); the paper's number as a red diamond. The
    line's label ends with the verdict (coloured: green supported, red not supported, orange
    unstable, grey otherwise) and counts seeds that were not finite (diverged, or never reached
    a target). A panel whose positive values span more than 30x is drawn in log scale.

    ``rows``: dicts with keys experiment, quantity, paper (float or None), ours (list of floats,
    one per seed), unit, verdict. Returns ``path``, or None (nothing written) for no rows.
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
    heights = [len(g) + 1.2 for g in groups.values()]
    plt = _plt()
    # labels are long (experiment: quantity [verdict]): wrapped to two lines beside a wide
    # figure, so the data area keeps most of the width and tight_layout can place them
    fig, axes = plt.subplots(len(groups), 1, figsize=(14, 0.9 + 0.5 * sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (unit, rs) in zip(axes[:, 0], groups.items()):
        values = [float(v) for r in rs for v in [*r["ours"], r["paper"]]
                  if v is not None and math.isfinite(float(v))]
        lo_clip, hi_clip = _value_range(unit, values)
        for y, r in enumerate(reversed(rs)):
            fin = [float(v) for v in r["ours"] if v is not None and math.isfinite(float(v))]
            if fin:
                m, _, lo, hi = mean_ci(fin)
                ax.plot(fin, [y] * len(fin), "o", ms=3, color="#1f77b4", alpha=0.45, lw=0,
                        label="ours: one seed")
                if math.isfinite(lo):
                    lo, hi = max(lo, lo_clip), min(hi, hi_clip)
                    ax.errorbar([m], [y], xerr=[[m - lo], [hi - m]], fmt="o", ms=7,
                                color="#1f77b4", capsize=4, lw=1.6,
                                label="ours: mean, 95% CI")
                else:
                    ax.plot([m], [y], "o", ms=7, color="#1f77b4", label="ours: mean, 95% CI")
            if r["paper"] is not None and math.isfinite(float(r["paper"])):
                ax.plot([r["paper"]], [y], "D", ms=8, mfc="none", mec="#d62728", mew=2,
                        label="paper")
        labels = []
        for r in reversed(rs):
            bad = sum(1 for v in r["ours"] if v is None or not math.isfinite(float(v)))
            extra = f", {bad} of {len(r['ours'])} not finite" if bad else ""
            extra += ", no paper number" if r["paper"] is None else ""
            labels.append(textwrap.fill(f"{r['experiment']}: {r['quantity']} "
                                        f"[{r['verdict']}{extra}]", 72))
        ax.set_yticks(range(len(rs)), labels, fontsize=8)
        for tick, r in zip(ax.get_yticklabels(), reversed(rs)):
            tick.set_color(_verdict_colour(r["verdict"]))
        ax.set_ylim(-0.7, len(rs) - 0.3)
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
    order = [k for k in ("ours: one seed", "ours: mean, 95% CI", "paper") if k in handles]
    axes[0, 0].set_title("The papers' numbers and ours", fontsize=10)  # (a suptitle overlapped)
    if order:
        fig.legend([handles[k] for k in order], order, loc="upper center", fontsize=8,
                   bbox_to_anchor=(0.5, 0.0), ncol=len(order), frameon=False)
    _save_figure(plt, fig, path)
    return path
