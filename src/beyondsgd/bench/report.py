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
from .metrics import mean_ci, time_to_target
from .problems import PROBLEMS
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
        sps = [t["train_seconds"] / t["steps"] for t in trials if t["steps"]]
        fm, fs, ci_lo, ci_hi = mean_ci(finals)
        bm, bs = _mean_std([b if b is not None else math.nan for b in bests])
        rows.append({
            "problem": prob_name, "method": method, "hparams": json.loads(hp_json),
            "label": label(method, json.loads(hp_json), tag, frac), "tag": tag,
            "train_fraction": frac, "epochs": epochs, "seeds": len(trials),
            "diverged": sum(t["status"] == "diverged" for t in trials),
            "metric": prob.metric, "final_mean": fm, "final_std": fs, "final_ci": (ci_lo, ci_hi),
            "best_mean": bm,
            "best_std": bs, "final_train_loss": _mean_std([t["final_train_loss"]
                                                          for t in trials])[0],
            "seconds_to_target": _median([s for s, _ in ttt]),
            "epochs_to_target": _median([e for _, e in ttt]),
            "seconds_per_epoch": statistics.fmean(spe) if spe else math.nan,
            "seconds_per_step": statistics.fmean(sps) if sps else math.nan,
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
        sgd = [r["seconds_per_step"] for r in rs if r["method"] == "sgd"
               and math.isfinite(r["seconds_per_step"])]
        out.append(f"### {prob_name}: {prob.description}\n")
        out.append(f"Test {prob.metric} ({arrow} is better), target {prob.target:g}; "
                   "mean ± std [95% CI] over seeds; time/epochs to target: median over seeds"
                   + ("; step cost relative to SGD in the same store." if sgd else ".") + "\n")
        out.append(f"| method | seeds | final test {prob.metric} | best test {prob.metric} | "
                   "final train loss | s to target | epochs to target | s/epoch | step cost |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            div = f" ({r['diverged']} diverged)" if r["diverged"] else ""
            lo, hi = r["final_ci"]
            ci = f" [{_fmt(lo)}, {_fmt(hi)}]" if math.isfinite(lo) else ""
            rel = _fmt(r["seconds_per_step"] / sgd[0], 2) + "x" if sgd else "–"
            out.append(
                f"| {r['label']} | {r['seeds']}{div} | {_fmt(r['final_mean'])} ± "
                f"{_fmt(r['final_std'])}{ci} | {_fmt(r['best_mean'])} ± {_fmt(r['best_std'])} | "
                f"{_fmt(r['final_train_loss'])} | {_fmt(r['seconds_to_target'], 1)} | "
                f"{_fmt(r['epochs_to_target'], 0)} | {_fmt(r['seconds_per_epoch'], 2)} | {rel} |")
        out.append("")
    return "\n".join(out)


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


def overview_table(rows: list[dict], tag: str) -> str:
    """Methods x problems: final test metric (mean ± std over seeds) of the ``tag`` runs, with
    the best mean per problem in bold."""
    rows = [r for r in rows if r["tag"] == tag]
    problems = sorted({r["problem"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    if not rows:
        return ""
    cell = {(r["problem"], r["method"]): r for r in rows}
    best = {}
    for p in problems:
        vals = [cell[(p, m)]["final_mean"] for m in methods if (p, m) in cell
                and math.isfinite(cell[(p, m)]["final_mean"])]
        if vals:
            best[p] = max(vals) if PROBLEMS[p].higher_is_better else min(vals)
    head = "| method | " + " | ".join(f"{p} ({PROBLEMS[p].metric})" for p in problems) + " |"
    lines = [head, "|---" * (len(problems) + 1) + "|"]
    for m in methods:
        cells = []
        for p in problems:
            r = cell.get((p, m))
            if r is None:
                cells.append("–")
                continue
            text = f"{_fmt(r['final_mean'], 3)} ± {_fmt(r['final_std'], 3)}"
            if r["diverged"]:
                text += f" ({r['diverged']} div.)"
            if p in best and r["final_mean"] == best[p]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    from .protocol import TUNE_TAG, search_space

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


def environment_section(store: Store) -> str:
    envs = {json.dumps(t["env"], sort_keys=True) for t in store.trials() if t["env"]}
    if not envs:
        return ""
    lines = ["| key | value |", "|---|---|"]
    env = json.loads(sorted(envs)[0])
    lines += [f"| {k} | {v} |" for k, v in sorted(env.items())]
    if len(envs) > 1:
        lines.append(f"| (note) | {len(envs)} different environments in this store |")
    return "\n".join(lines) + "\n"


def markdown_to_html(md: str, base: Path) -> str:
    """A small converter for what our reports contain (headers, tables, images, paragraphs);
    images are embedded as base64 so the HTML file is self-contained."""
    import base64
    import html
    import re

    out, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(set(c) <= set("-: ") for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                tag = "th"
            else:
                tag = "td"
            cells = [re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(c)) for c in cells]
            out.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        m = re.match(r"!\[(.*?)\]\((.+?)\)", line)
        if m:
            data = base64.b64encode((base / m.group(2)).read_bytes()).decode()
            out.append(f'<p><img alt="{html.escape(m.group(1))}" '
                       f'src="data:image/png;base64,{data}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("```"):
            continue
        elif line.strip():
            text = re.sub(r"`(.+?)`", r"<code>\1</code>", html.escape(line))
            out.append(f"<p>{text}</p>")
    if in_table:
        out.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;}"
             "table{border-collapse:collapse;font-size:12px;margin:1em 0;}"
             "td,th{border:1px solid #ccc;padding:3px 6px;}th{background:#f3f3f3;}"
             "img{max-width:100%;}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>beyondsgd report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def write_report(store: Store, out_dir: str | Path, problems: list[str] | None = None,
                 plots: bool = True) -> Path:
    """Write ``report.md`` and a self-contained ``report.html`` into ``out_dir``.

    Sections: summary tables (every group of trials; the suite's ``final`` runs are the tuned
    results, ``defaults`` the untuned ones), performance profiles, sensitivity plots, claims
    table, curves, environment. Returns the Markdown path.
    """
    from .claims import claims_markdown, collect, evaluate_claims
    from .protocol import FINAL_TAG

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(store, problems)
    lines = ["# beyondsgd report", "", f"Store: `{store.path}`", ""]
    if not rows:
        lines.append("No finished trials in the store.")
    else:
        for tag, title in ((FINAL_TAG, "tuned (best of the tuning trials, new seeds)"),
                           ("defaults", "untuned defaults")):
            table = overview_table(rows, tag)
            if table:
                lines += [f"## Overview: final test metric, {title}", "", table]
        lines += ["## Summary", "", markdown_table(rows)]
        finals = [r for r in rows if r["tag"] == FINAL_TAG] or rows
        if plots:
            text, path = profile_section(finals, out_dir)
            if path is not None:
                lines += ["## Performance profiles (time to target)", "", text,
                          f"![performance profiles]({path.name})", ""]
            sens = sensitivity_section(store, out_dir, problems)
            if sens:
                lines += ["## Sensitivity (tuning trials)", ""]
                lines += [f"![{p.stem}]({p.name})\n" for p in sens]
        values = {k: v for k, v in collect(store).items() if not problems or k[0] in problems}
        verdicts = evaluate_claims(values)
        if verdicts:
            lines += ["## Claims", "", "Per-seed final values of the tuned runs; tests as in "
                      "`beyondsgd/bench/claims.py` (Welch t, alpha 0.05; non-inferiority margin "
                      "1 accuracy point or 5%).", "", claims_markdown(verdicts)]
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
