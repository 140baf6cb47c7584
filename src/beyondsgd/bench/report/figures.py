"""The report's figures (PNG, 110 dpi): curves per problem, performance profiles over problems,
hyperparameter sensitivity from the tuning trials, and the paper-vs-ours comparison
(:mod:`.figures_paper`, re-exported). Each
returns the path(s) it wrote.

Every method has one style (colour, line style, marker), the same in every figure and in every
report, from its name alone (:func:`.styles.method_style`, re-exported here). Legends are placed
outside the axes (to the right of, or below, the panels), never over the data.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ...methods import METHODS
from ..problems import PROBLEMS
from ..protocol import FINAL_TAG, TUNE_TAG
from ..store import Store
from . import figures_paper as _paper
from .figures_paper import (  # noqa: F401 - re-exported, as before the split
    PAPER_VS_OURS_KEYS,
    _check_rows,
    _value_range,
    _verdict_colour,
    pair_rows,
)
from .styles import (  # noqa: F401 - re-exported: the figures' styles
    LINESTYLES,
    MARKERS,
    PALETTE,
    _plt,
    _save_figure,
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


# ---- curves ------------------------------------------------------------------------------
def plot_curves(store: Store, rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per problem: train loss and test metric vs epochs and vs seconds, mean over
    seeds with a min-max band, each row named by its method (its full label where a method has
    several rows), and the validation target that every time to target uses (a dotted line,
    :func:`_validation_target`). Where a seed diverged (a non-finite loss, or fewer epochs than
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
        tg = _validation_target(store, rs, prob_name)
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
            axes[1, col].axhline(tg, color="gray", ls=":", lw=1,
                                 label=f"validation target {tg:.4g}\n(time to target)")
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


def _validation_target(store: Store, rows: list[dict], problem: str) -> float:
    """The target every time to target uses: the rows' (``summarize``'s ``target``), else the
    one computed from the tuned baselines of the rows' tag
    (:func:`beyondsgd.bench.analysis.claims.targets`; the problem's fixed target without
    them)."""
    for r in rows:
        if r.get("target") is not None and math.isfinite(r["target"]):
            return float(r["target"])
    from ..analysis.claims import targets

    tag = next((r["tag"] for r in rows if r.get("tag")), FINAL_TAG)
    return targets(store, tag).get(problem, PROBLEMS[problem].target)


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
_HP_AXIS = {"lr": "learning rate lr (log)",
            "lipschitz": "BPGrad's Lipschitz constant L (log; its step is about 1/L)"}


def sensitivity_section(store: Store, out_dir: Path, problems: list[str] | None = None
                        ) -> list[Path]:
    """Validation metric vs each method's first tuned hyperparameter, from the tuning trials:
    one panel per hyperparameter (lr, and BPGrad's L, about 1/lr, on its own axis), sharing
    the metric's axis."""
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
        hps = sorted({hp for _, hp in by_method}, key=lambda h: (h != "lr", h))
        fig, axs = plt.subplots(1, len(hps), figsize=(7 if len(hps) == 1 else 5 * len(hps), 4.5),
                                sharey=True, squeeze=False)
        ys = [y for pts in by_method.values() for _, y in pts if y is not None and math.isfinite(y)]
        for ax, hp in zip(axs[0], hps):  # one panel per hyperparameter: lr and L have own axes
            mine = {m: pts for (m, h), pts in sorted(by_method.items()) if h == hp}
            for m, pts in mine.items():
                pts.sort()
                xs, yv = zip(*pts)
                ax.plot(xs, yv, label=f"{m} ({hp})", ms=4, lw=1.2, **method_style(m))
            ax.set_xscale("log")
            ax.set_xlabel(_HP_AXIS.get(hp, f"tuned hyperparameter {hp}"))
            ax.grid(alpha=0.3)
        ax0 = axs[0, 0]
        if not prob.higher_is_better and ys and min(ys) > 0 and max(ys) / min(ys) > 30:
            ax0.set_yscale("log")  # an error metric over decades: the good settings stay apart
        ylim = ax0.get_ylim()
        worst = ylim[0 if prob.higher_is_better else 1]
        for ax, hp in zip(axs[0], hps):
            for (m, h), pts in sorted(by_method.items()):
                div = [x for x, y in pts if h == hp and (y is None or not math.isfinite(y))]
                if div:  # diverged settings: an x at the worst edge of the axes
                    ax.plot(div, [worst] * len(div), "x", color=method_style(m)["color"], ms=6,
                            clip_on=False)
        ax0.set_ylim(ylim)
        ax0.set_ylabel(f"best validation {prob.metric}")
        fig.suptitle(f"{prob_name}: sensitivity (tuning trials; x at the worst edge: diverged)",
                     fontsize=10)
        _legend_right(fig)
        paths.append(_save_figure(plt, fig, out_dir / f"sensitivity_{prob_name}.png"))
    return paths


# ---- paper vs ours: figures_paper.py ----------------------------------------------------
def paper_vs_ours(rows: Sequence[dict], path: str | Path) -> Path | None:
    """:func:`.figures_paper.paper_vs_ours` (the papers' numbers, ours and our baselines'),
    saved through this module's ``_save_figure`` like every other figure."""
    return _paper.paper_vs_ours(rows, path, save=lambda plt, fig, p: _save_figure(plt, fig, p))
