"""Reports computed from the results store only: summary tables and curves.

``summarize(store)`` groups finished/diverged trials by (problem, method, hyperparameters,
train fraction, tag) and computes over seeds: final and best test metric (mean, std, a 95%
interval), training seconds and epochs to the target on the validation split (AlgoPerf; on the
test split beside it; target set from the tuned baselines, ``claims.targets``; median over seeds,
``inf`` when a seed never reaches it, so the median is ``inf`` when half the seeds or more never
do), and seconds per epoch. **Every seed counts**: a diverged seed's final metric and training
loss are its untrained network's (the epoch-0 evaluation: chance-level accuracy, the initial
MSE; the metric's worst where that is missing), it never reaches the target, and the divergence
rate ``div k/n`` is printed beside every mean, so a method cannot look better by diverging.
Rows come best-first within each problem and comparable group (same tag, epochs and train
fraction). ``verdict_line`` says in one line who won a problem and by how much, with the
uncertainty; ``report_summary`` is a few such lines for a terminal. ``write_report`` renders
Markdown/HTML tables and PNG curves (train loss and test metric vs epochs and vs seconds, mean
over seeds with a min-max band).

Intervals (``CI_METHOD``): the 95% interval of a mean over seeds is Student's t interval clipped
to the metric's range (accuracy [0, 1], MSE [0, inf)); the difference between two settings gets
Welch's t interval, clipped to the range of differences. With one seed, or when every seed gave
the same value, no interval is printed ("n=1", "all n equal"): a zero-width interval would claim
a certainty that a handful of identical seeds does not give.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...methods import METHODS
from ..analysis.intervals import CI_METHOD, _finite, difference_interval, seed_interval
from ..analysis.metrics import diverged_value, seconds_to_target
from ..problems import PROBLEMS, get_problem
from ..protocol import DEFAULTS_TAG, FINAL_TAG, TUNE_TAG, study_of
from ..store import Store
from .figures import plot_curves, profile_section, sensitivity_section
from .html import markdown_to_html

__all__ = ["CI_METHOD", "difference_interval", "label", "markdown_table", "markdown_to_html",
           "overview_table", "report_summary", "seed_interval", "summarize", "verdict_line",
           "write_report"]


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


def _paired(r1: dict, r2: dict) -> tuple[list[float], list[float]] | None:
    """The two rows' final values aligned by seed when both ran the same seeds and no seed
    diverged (same seed: same initial weights and batch order), else None."""
    s1, s2 = r1["final_by_seed"], r2["final_by_seed"]
    if sorted(s1) != sorted(s2) or len(s1) < 2:
        return None
    a, b = [s1[k] for k in sorted(s1)], [s2[k] for k in sorted(s1)]
    return (a, b) if all(math.isfinite(v) for v in a + b) else None


def _group_key(r: dict) -> tuple:
    """Rows comparable with each other: same tag, epochs and train fraction. Order: the tuned
    ``final`` runs and plain ``bench`` runs first, then defaults, other tags, tuning trials."""
    order = {FINAL_TAG: 0, "": 0, DEFAULTS_TAG: 1, TUNE_TAG: 3}
    return order.get(r["tag"], 2), r["tag"], -r["train_fraction"], -r["epochs"]


def _rank_key(r: dict) -> tuple:
    """Best first by the mean over every seed (diverged ones counted), then fewer diverged."""
    m = r["final_mean"]
    if not math.isfinite(m):
        return True, 0.0, r["diverged"]
    return False, -m if PROBLEMS[r["problem"]].higher_is_better else m, r["diverged"]


def _mark_best(rows: list[dict]) -> None:
    """Set ``rank`` (1 = best) and ``best`` within each (problem, group) of sorted rows."""
    first: dict[tuple, dict] = {}
    counts: Counter = Counter()
    for r in rows:
        g = (r["problem"], _group_key(r))
        counts[g] += 1
        r["rank"] = counts[g]
        top = first.setdefault(g, r)
        r["best"] = math.isfinite(top["final_mean"]) and _rank_key(r) == _rank_key(top)


def _seed_values(prob, t: dict, evals: list[dict], target: float) -> dict[str, float]:
    """One seed's final/best test metric, final training loss and times to target (val, test),
    a diverged seed counted as its untrained network and never reaching the target."""
    hib = prob.higher_is_better
    worst = prob.metric_range[0] if hib else math.inf
    if t["status"] == "diverged":
        best = t.get("best_test_metric")
        return {"final": diverged_value(evals, "test_metric", worst),
                "best": best if best is not None and math.isfinite(best) else worst,
                "loss": diverged_value(evals, "train_loss", math.inf),
                "ttt": (math.inf, math.inf), "ttt_test": (math.inf, math.inf)}
    return {"final": t["final_test_metric"], "best": t["best_test_metric"],
            "loss": t["final_train_loss"],
            "ttt": seconds_to_target(evals, target, hib, "val_metric"),
            "ttt_test": seconds_to_target(evals, target, hib, "test_metric")}


def summarize(store: Store, problems: list[str] | None = None) -> list[dict[str, Any]]:
    from ..analysis.claims import targets

    cache: dict[str, dict[str, float]] = {}

    def target(tag: str, problem: str) -> float:  # a study's own targets; others: study 0's
        k = tag if study_of(tag) is not None else FINAL_TAG
        if k not in cache:
            cache[k] = targets(store, k)
        return cache[k][problem]

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
        tg = target(tag, prob_name)
        per = [_seed_values(prob, t, store.evals(t["id"]), tg) for t in trials]
        finals = [v["final"] for v in per]
        bests = [v["best"] for v in per]
        ttt, ttt_test = [v["ttt"] for v in per], [v["ttt_test"] for v in per]
        spe = [t["train_seconds"] / t["epochs_done"] for t in trials if t["epochs_done"]]
        sps = [t["train_seconds"] / t["steps"] for t in trials if t["steps"]]
        fm, fs, ci_lo, ci_hi = seed_interval(finals, prob.metric_range)
        if any(v is None or not math.isfinite(v) for v in finals):
            fm, fs, ci_lo, ci_hi = math.inf, math.nan, math.nan, math.nan
        bm, bs = _mean_std([b if b is not None else math.nan for b in bests])
        rows.append({
            "problem": prob_name, "method": method, "hparams": json.loads(hp_json),
            "label": label(method, json.loads(hp_json), tag, frac), "tag": tag,
            "train_fraction": frac, "epochs": epochs, "seeds": len(trials),
            "diverged": sum(t["status"] == "diverged" for t in trials),
            "metric": prob.metric, "final_mean": fm, "final_std": fs, "final_ci": (ci_lo, ci_hi),
            "final_values": finals, "best_values": bests, "best_mean": bm,
            "final_by_seed": {t["seed"]: f for t, f in zip(trials, finals)},
            "best_std": bs, "final_train_loss": _mean_std([v["loss"] for v in per])[0],
            "target": tg, "seconds_to_target": _median([s for s, _ in ttt]),
            "epochs_to_target": _median([e for _, e in ttt]),
            "seconds_to_target_test": _median([s for s, _ in ttt_test]),
            "seconds_per_epoch": statistics.fmean(spe) if spe else math.nan,
            "seconds_per_step": statistics.fmean(sps) if sps else math.nan,
            "trial_ids": [t["id"] for t in trials],
        })
    rows.sort(key=lambda r: (r["problem"], _group_key(r), _rank_key(r), r["label"]))
    _mark_best(rows)
    return rows


def _fmt(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "never"
    return f"{v:.{digits}f}"


def _range_text(prob) -> str:
    lo, hi = prob.metric_range
    return f"[{lo:g}, {hi:g}]" if math.isfinite(hi) else f"[{lo:g}, inf)"


def _cell(values: Sequence[float | None], bounds: tuple[float, float], digits: int = 4,
          ci: bool = True, diverged: int | None = None) -> str:
    """``mean ± std [lo, hi]`` over every seed; ``mean (n=1)``; ``mean (all n equal)``; with
    ``diverged``, the divergence rate ``div k/n`` after it (``inf`` when a seed is not finite,
    e.g. a diverged MSE run without an untrained evaluation)."""
    rate = "" if diverged is None else f", div {diverged}/{len(values)}"
    if values and not all(v is not None and math.isfinite(v) for v in values):
        return f"inf{rate}" if _finite(values) or diverged else "–"
    vals = _finite(values)
    if not vals:
        return "–"
    m, s, lo, hi = seed_interval(vals, bounds)
    if len(vals) == 1:
        return f"{_fmt(m, digits)} (n=1{rate})"
    if len(set(vals)) == 1:
        return f"{_fmt(m, digits)} (all {len(vals)} equal{rate})"
    return f"{_fmt(m, digits)} ± {_fmt(s, digits)}" + (
        f" [{_fmt(lo, digits)}, {_fmt(hi, digits)}]" if ci else "") + rate


def _num(v: float) -> str:
    return f"{v:.4g}"


def _seeds_text(na: int, nb: int) -> str:
    return f"n={na} seed{'s' * (na != 1)}" if na == nb else f"n={na} vs {nb} seeds"


def verdict_line(rows: list[dict]) -> str:
    """One line for one problem's rows (from ``summarize``): the best setting of the first
    comparable group (see ``_group_key``), the runner-up (the best row of another method, else
    the second row), the difference of their mean final test metric with its 95% interval
    (paired t when both ran the same seeds, else Welch t), and whether it excludes 0."""
    problems = sorted({r["problem"] for r in rows})
    if len(problems) != 1:
        raise ValueError(f"verdict_line needs the rows of exactly one problem, got "
                         f"{len(problems)}: {', '.join(problems) or 'none'}")
    prob = PROBLEMS[problems[0]]
    first_group = min(_group_key(r) for r in rows)
    ranked = sorted((r for r in rows if _group_key(r) == first_group), key=_rank_key)
    top = ranked[0]
    if not math.isfinite(top["final_mean"]):
        return f"{prob.name}: no finished seed to compare (every trial diverged)"
    rest = [r for r in ranked[1:] if math.isfinite(r["final_mean"])]
    others = [r for r in rest if r["method"] != top["method"]] or rest
    head = (f"{top['label']} best on {prob.name} (final test {prob.metric}, "
            f"{'higher' if prob.higher_is_better else 'lower'} is better): "
            f"{_num(top['final_mean'])}")
    notes = "".join(f"; {r['label']}: {r['diverged']} of {r['seeds']} seeds diverged"
                    for r in [top] + others[:1] if r["diverged"])
    if not others:
        n = len(_finite(top["final_values"]))
        return f"{head} (n={n} seeds); nothing to compare with{notes}"
    second = others[0]
    lo_r, hi_r = prob.metric_range
    pairs = _paired(top, second)
    if pairs:
        d, lo, hi = difference_interval(*pairs, hi_r - lo_r, paired=True)
    else:
        d, lo, hi = difference_interval(top["final_values"], second["final_values"], hi_r - lo_r)
    na, nb = len(_finite(top["final_values"])), len(_finite(second["final_values"]))
    test = "paired t over the same seeds" if pairs else "Welch t"
    if min(na, nb) < 2:
        unc = f"{_seeds_text(na, nb)}: no interval"
    elif not math.isfinite(lo):
        same = "every seed's difference equal" if pairs else "every seed equal within each"
        unc = f"{_seeds_text(na, nb)}, {same}: no interval"
    else:
        sig = "significant" if lo > 0 or hi < 0 else "not significant"
        unc = (f"95% CI of difference [{lo:+.3g}, {hi:+.3g}] ({test}), "
               f"{_seeds_text(na, nb)}: {sig}")
    return f"{head} vs {second['label']} {_num(second['final_mean'])} ({d:+.3g}, {unc}){notes}"


def _table_rows(rs: list[dict], prob, sgd: list[float]) -> list[str]:
    bounds = prob.metric_range
    out = [f"| method | seeds | final test {prob.metric} | best test {prob.metric} | "
           "final train loss | s to target: val (test) | epochs to target (val) | s/epoch | "
           "step cost |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        div = f" ({r['diverged']} diverged)" if r["diverged"] else ""
        name = f"**{r['label']}** (best)" if r.get("best") else r["label"]
        rel = _fmt(r["seconds_per_step"] / sgd[0], 2) + "x" if sgd else "–"
        out.append(
            f"| {name} | {r['seeds']}{div} | "
            f"{_cell(r['final_values'], bounds, diverged=r['diverged'])} | "
            f"{_cell(r['best_values'], bounds, ci=False)} | "
            f"{_fmt(r['final_train_loss'])} | {_fmt(r['seconds_to_target'], 1)} "
            f"({_fmt(r['seconds_to_target_test'], 1)}) | "
            f"{_fmt(r['epochs_to_target'], 0)} | {_fmt(r['seconds_per_epoch'], 2)} | {rel} |")
    return out


def markdown_table(rows: list[dict]) -> str:
    """The summary table, one section per problem: rows best-first within each comparable group
    (the best in bold), then the one-line verdict."""
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
        tgt = rs[0].get("target", prob.target)
        out.append(f"Test {prob.metric} ({arrow} is better, range {_range_text(prob)}); "
                   f"validation target {tgt:.4g} (median over the tuned baselines of their worst "
                   "seed's best validation metric; the problem's fixed target without them); "
                   "best first, **best** in bold; mean ± std [95% CI of the mean: Student t "
                   "clipped to the metric's range] over every seed, a diverged seed counted at "
                   "its untrained network's value, `div k/n` = seeds diverged; no interval for "
                   "n=1 or identical seeds; time/epochs to target: median over seeds (a "
                   "diverged seed never reaches it)"
                   + ("; step cost relative to SGD in the same store and group." if sgd
                      else ".") + "\n")
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in rs:
            groups[_group_key(r)].append(r)
        for grs in groups.values():
            r0 = grs[0]
            # the tuning trials (one row per setting: 45+ per problem) fold away, as on GitHub
            fold = len(groups) > 1 and study_of(r0["tag"]) is None and \
                r0["tag"].split("-")[0] == TUNE_TAG
            if len(groups) > 1:
                head = (f"{'Tag ' + repr(r0['tag']) if r0['tag'] else 'No tag'}, "
                        f"{r0['epochs']} epochs"
                        + (f", {r0['train_fraction']:.0%} of the training data"
                           if r0["train_fraction"] < 1 else ""))
                out += (["<details>", f"<summary>{head}: {len(grs)} tuning trials (click to "
                         "show)</summary>", ""] if fold else [head + ":\n"])
            ref = [r["seconds_per_step"] for r in grs if r["method"] == "sgd"
                   and math.isfinite(r["seconds_per_step"])] or sgd
            out += _table_rows(grs, prob, ref)
            out.append("")
            if fold:
                out += ["</details>", ""]
        out.append(f"Verdict: {verdict_line(rs)}\n")
    return "\n".join(out)


def report_summary(store: Store, problems: list[str] | None = None) -> str:
    """A few lines for a terminal: trials by status, then one verdict line per problem.

    Unknown names in ``problems`` raise ``ValueError`` naming them and the known problems."""
    for name in problems or ():
        get_problem(name)
    trials = [t for t in store.trials() if not problems or t["problem"] in problems]
    counts = Counter(t["status"] for t in trials)
    order = ["finished", "diverged", "failed", "running"]
    status = ", ".join(f"{counts[k]} {k}" for k in sorted(counts, key=lambda k: (
        order.index(k) if k in order else len(order), k)))
    rows = summarize(store, problems)
    names = list(dict.fromkeys(r["problem"] for r in rows))
    lines = [f"{len(trials)} trials ({status or 'none'}) on {len(names)} problem(s) with "
             "results" + (f" (of {', '.join(problems)})" if problems else "")]
    lines += [verdict_line([r for r in rows if r["problem"] == p]) for p in names]
    return "\n".join(lines)


def overview_table(rows: list[dict], tag: str) -> str:
    """Methods x problems: final test metric (mean ± std over seeds) of the ``tag`` runs, with
    the best mean per problem in bold."""
    rows = [r for r in rows if r["tag"] == tag and r["train_fraction"] == 1.0]
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
            text = _cell(r["final_values"], PROBLEMS[p].metric_range, 3, ci=False,
                         diverged=r["diverged"])
            if p in best and r["final_mean"] == best[p]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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


def _reproduce_section(store: Store, out_dir: Path, plots: bool) -> str:
    """The paper-vs-ours section of ``beyondsgd reproduce`` ("" when that module or its
    ``report_section`` is not there, or the store holds no reproduce results)."""
    try:
        from .. import reproduce

        section = reproduce.report_section
    except (ImportError, AttributeError):
        return ""
    return section(store, out_dir, plots) or ""


def write_report(store: Store, out_dir: str | Path, problems: list[str] | None = None,
                 plots: bool = True) -> Path:
    """Write ``report.md`` and a self-contained ``report.html`` into ``out_dir``.

    Sections: summary tables (every group of trials; the suite's ``final`` runs are the tuned
    results, ``defaults`` the untuned ones), performance profiles, sensitivity plots, claims
    table, curves, environment. Returns the Markdown path.
    """
    from ..analysis.claims import claims_markdown, evaluate_store

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
        finals = [r for r in rows if r["tag"] == FINAL_TAG and r["train_fraction"] == 1.0] \
            or rows
        if plots:
            text, path = profile_section(finals, out_dir)
            if path is not None:
                lines += ["## Performance profiles (time to target)", "", text,
                          f"![performance profiles]({path.name})", ""]
            sens = sensitivity_section(store, out_dir, problems)
            if sens:
                lines += ["## Sensitivity (tuning trials)", ""]
                lines += [f"![{p.stem}]({p.name})\n" for p in sens]
        verdicts = evaluate_store(store, problems=problems)
        if verdicts:
            lines += ["## Claims", "", "Each claim as the paper states it, where it states it, "
                      "checked only on the kind of problem the paper ran. Per-seed final values "
                      "of the tuned runs, every seed counted (a diverged seed at its untrained "
                      "network's value; `div k/n` beside every mean); time to target on the "
                      "validation split, target from the tuned baselines; tests as in "
                      "`beyondsgd/bench/claims.py` (Welch t, alpha 0.05; Mann-Whitney U when a "
                      "seed never reached the target; non-inferiority margin 1 accuracy point or "
                      "5%). With several tuning studies (`suite --studies K`): the median "
                      "verdict, and **unstable** where the studies disagree.", "",
                      claims_markdown(verdicts)]
        section = _reproduce_section(store, out_dir, plots)
        if section:
            lines += [section.rstrip(), ""]
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
