"""The report's figures (PNG, 110 dpi): curves per problem, performance profiles over problems,
hyperparameter sensitivity from the tuning trials. Each returns the paths it wrote."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path

from ..methods import METHODS
from .problems import PROBLEMS
from .protocol import TUNE_TAG
from .store import Store


def plot_curves(store: Store, rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per problem: train loss and test metric vs epochs and vs seconds."""
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
        for r in rs:
            curves = [store.evals(i) for i in r["trial_ids"]]
            n = min(len(c) for c in curves)
            if n == 0:
                continue
            ep = np.array([e["epoch"] for e in curves[0][:n]], float)
            secs = np.mean([[e["train_seconds"] for e in c[:n]] for c in curves], axis=0)
            for row, key in enumerate(("train_loss", "test_metric")):
                vals = np.array([[np.nan if e[key] is None else e[key] for e in c[:n]]
                                 for c in curves], float)
                with warnings.catch_warnings():  # all-NaN columns after a divergence
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean = np.nanmean(vals, axis=0)
                    lo, hi = np.nanmin(vals, axis=0), np.nanmax(vals, axis=0)
                for col, xs in enumerate((ep, secs)):
                    ax = axes[row, col]
                    (line,) = ax.plot(xs, mean, label=r["label"])
                    ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
        for col, xl in enumerate(("epoch", "training seconds")):
            axes[0, col].set_ylabel("train loss")
            axes[0, col].set_yscale("log")
            axes[1, col].set_ylabel(f"test {prob.metric}")
            axes[1, col].axhline(prob.target, color="gray", ls=":", lw=1)
            for row in range(2):
                axes[row, col].set_xlabel(xl)
                axes[row, col].grid(alpha=0.3)
        axes[0, 0].legend(fontsize=7)
        fig.suptitle(f"{prob_name}: {prob.description}", fontsize=10)
        paths.append(_save_figure(plt, fig, out_dir / f"curves_{prob_name}.png"))
    return paths


def _save_figure(plt, fig, path: Path) -> Path:
    """Lay out, write (PNG, 110 dpi) and close ``fig``; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def profile_section(rows: list[dict], out_dir: Path, tau_max: float = 4.0
                    ) -> tuple[str, Path | None]:
    """AlgoPerf-style performance profiles over problems from time-to-target (median seconds)."""
    from .metrics import performance_profile

    times: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        times[r["problem"]][r["method"]] = r["seconds_to_target"]
    if not times:
        return "", None
    taus, rho, score = performance_profile(dict(times), tau_max)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in sorted(score, key=lambda k: -score[k]):
        ax.step(taus, rho[m], where="post", label=f"{m} ({score[m]:.2f})")
    ax.set_xlabel("tau (time to target / fastest method's)")
    ax.set_ylabel("fraction of problems within tau")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = _save_figure(plt, fig, out_dir / "performance_profiles.png")
    lines = [f"Over {len(times)} problem(s); score = normalised area under the profile for "
             f"tau in [1, {tau_max:g}] (1: fastest to target everywhere, 0: never within "
             f"{tau_max:g}x).\n", "| method | score |", "|---|---|"]
    lines += [f"| {m} | {score[m]:.3f} |" for m in sorted(score, key=lambda k: -score[k])]
    return "\n".join(lines) + "\n", path


def sensitivity_section(store: Store, out_dir: Path, problems: list[str] | None = None
                        ) -> list[Path]:
    """Validation metric vs the first tuned hyperparameter, from the tuning trials."""
    from .protocol import search_space

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
        fig, ax = plt.subplots(figsize=(7, 4.5))
        by_method: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for t in ts:
            space = [h for h in search_space(t["method"])] if t["method"] in METHODS else []
            if not space or not isinstance(t["hparams"].get(space[0].name), (int, float)):
                continue
            x = float(t["hparams"][space[0].name])
            y = t["best_val_metric"] if t["status"] == "finished" else math.nan
            by_method[f"{t['method']} ({space[0].name})"].append((x, y))
        for m, pts in sorted(by_method.items()):
            pts.sort()
            xs, ys = zip(*pts)
            (line,) = ax.plot(xs, ys, "o-", label=m, ms=3)
            div = [x for x, y in pts if not math.isfinite(y)]
            if div:
                ax.plot(div, [ax.get_ylim()[0]] * len(div), "x", color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("tuned hyperparameter (lr, or L for BPGrad; x: diverged)")
        ax.set_ylabel(f"best validation {prob.metric}")
        ax.set_title(f"{prob_name}: sensitivity", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        paths.append(_save_figure(plt, fig, out_dir / f"sensitivity_{prob_name}.png"))
    return paths
