"""Reports computed from the results store only: summary tables and curves.

``summarize(store)`` groups finished/diverged trials by (problem, method, hyperparameters,
train fraction, tag) and computes over seeds: final and best test metric (mean, std), training
seconds and epochs to the problem's target (median over seeds; ``inf`` when a seed never reaches
it, so the median is ``inf`` when half the seeds or more never do), and seconds per epoch.
``write_report`` renders a Markdown table and PNG curves (train loss and test metric vs epochs and
vs seconds, mean over seeds with a min-max band).
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..methods import METHODS
from .problems import PROBLEMS, Problem
from .store import Store


def label(method: str, hparams: dict, tag: str = "", train_fraction: float = 1.0) -> str:
    """``method`` plus the hyperparameters that differ from its declared defaults."""
    cls = METHODS.get(method)
    defaults = {h.name: h.default for h in cls.hparams} if cls else {}
    diff = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(hparams.items()) if defaults.get(k, object()) != v]
    text = method + (f"({', '.join(diff)})" if diff else "")
    if train_fraction < 1.0:
        text += f" [{train_fraction:.0%} data]"
    if tag:
        text += f" <{tag}>"
    return text


def time_to_target(problem: Problem, evals: list[dict]) -> tuple[float, float]:
    """(training seconds, epochs) at the first evaluation reaching the target; inf if never."""
    for e in evals:
        v = e.get("test_metric")
        if v is not None and math.isfinite(v) and problem.reached(v):
            return float(e["train_seconds"]), float(e["epoch"])
    return math.inf, math.inf


def _mean_std(vals: list[float]) -> tuple[float, float]:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _median(vals: list[float]) -> float:
    return statistics.median(vals) if vals else math.nan


def summarize(store: Store, problems: list[str] | None = None) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for t in store.trials():
        if t["status"] not in ("finished", "diverged"):
            continue
        if problems and t["problem"] not in problems:
            continue
        key = (t["problem"], t["method"], json.dumps(t["hparams"], sort_keys=True),
               t["train_fraction"], t["tag"], t["epochs"])
        groups[key].append(t)
    rows = []
    for (prob_name, method, hp_json, frac, tag, epochs), trials in groups.items():
        prob = PROBLEMS.get(prob_name)
        if prob is None:
            continue
        evals = {t["id"]: store.evals(t["id"]) for t in trials}
        finals = [t["final_test_metric"] if t["status"] == "finished" else math.nan
                  for t in trials]
        bests = [t["best_test_metric"] for t in trials]
        ttt = [time_to_target(prob, evals[t["id"]]) for t in trials]
        spe = [t["train_seconds"] / t["epochs_done"] for t in trials if t["epochs_done"]]
        fm, fs = _mean_std(finals)
        bm, bs = _mean_std([b if b is not None else math.nan for b in bests])
        rows.append({
            "problem": prob_name, "method": method, "hparams": json.loads(hp_json),
            "label": label(method, json.loads(hp_json), tag, frac), "tag": tag,
            "train_fraction": frac, "epochs": epochs, "seeds": len(trials),
            "diverged": sum(t["status"] == "diverged" for t in trials),
            "metric": prob.metric, "final_mean": fm, "final_std": fs, "best_mean": bm,
            "best_std": bs, "final_train_loss": _mean_std([t["final_train_loss"]
                                                          for t in trials])[0],
            "seconds_to_target": _median([s for s, _ in ttt]),
            "epochs_to_target": _median([e for _, e in ttt]),
            "seconds_per_epoch": statistics.fmean(spe) if spe else math.nan,
            "trial_ids": [t["id"] for t in trials],
        })
    rows.sort(key=lambda r: (r["problem"], r["label"]))
    return rows


def _fmt(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "never"
    return f"{v:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    """The summary table, one section per problem."""
    out = []
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_problem[r["problem"]].append(r)
    for prob_name, rs in by_problem.items():
        prob = PROBLEMS[prob_name]
        arrow = "higher" if prob.higher_is_better else "lower"
        out.append(f"### {prob_name}: {prob.description}\n")
        out.append(f"Test {prob.metric} ({arrow} is better), target {prob.target:g}; "
                   "mean ± std over seeds; time/epochs to target: median over seeds.\n")
        out.append(f"| method | seeds | final test {prob.metric} | best test {prob.metric} | "
                   "final train loss | s to target | epochs to target | s/epoch |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in rs:
            div = f" ({r['diverged']} diverged)" if r["diverged"] else ""
            out.append(
                f"| {r['label']} | {r['seeds']}{div} | {_fmt(r['final_mean'])} ± "
                f"{_fmt(r['final_std'])} | {_fmt(r['best_mean'])} ± {_fmt(r['best_std'])} | "
                f"{_fmt(r['final_train_loss'])} | {_fmt(r['seconds_to_target'], 1)} | "
                f"{_fmt(r['epochs_to_target'], 0)} | {_fmt(r['seconds_per_epoch'], 2)} |")
        out.append("")
    return "\n".join(out)


def plot_curves(store: Store, rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per problem: train loss and test metric vs epochs and vs seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
        fig.tight_layout()
        path = out_dir / f"curves_{prob_name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(store: Store, out_dir: str | Path, problems: list[str] | None = None,
                 plots: bool = True) -> Path:
    """Write ``report.md`` (summary tables + curve images) into ``out_dir``; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(store, problems)
    lines = ["# beyondsgd report", "", f"Store: `{store.path}`", ""]
    if not rows:
        lines.append("No finished trials in the store.")
    else:
        lines.append(markdown_table(rows))
        if plots:
            for p in plot_curves(store, rows, out_dir):
                lines.append(f"![{p.stem}]({p.name})\n")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
