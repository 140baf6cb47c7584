"""The summary rows as text: Markdown tables, one-line verdicts, a terminal summary.

``markdown_table`` gives one section per problem (rows best-first within each comparable group,
the best in bold, tuning trials folded away) ending with ``verdict_line``: in one line who won
the problem and by how much, with the uncertainty. ``report_summary`` is a few such lines for a
terminal; ``overview_table`` is methods x problems (bold only where the best mean beats the
runner-up significantly); ``environment_section`` the machine the
trials ran on. A diverged seed counts everywhere, and the divergence rate ``div k/n`` is
printed beside every mean.

Intervals (``CI_METHOD``): the 95% interval of a mean over seeds is Student's t interval clipped
to the metric's range (accuracy [0, 1], MSE [0, inf)); the difference between two settings gets
Welch's t interval (paired t over the same seeds), clipped to the range of differences. With one
seed, or when every seed gave the same value, no interval is printed ("n=1", "all n equal"): a
zero-width interval would claim a certainty that a handful of identical seeds does not give.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence

from ..analysis.intervals import CI_METHOD, _finite, difference_interval, seed_interval
from ..problems import PROBLEMS, get_problem
from ..protocol import TUNE_TAG, study_of
from ..store import Store
from .summary import _group_key, _paired, _rank_key, summarize
from .yours import mark

__all__ = ["CI_METHOD", "environment_section", "markdown_table", "overview_table",
           "report_summary", "verdict_line"]


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
        out.append(f"### {mark(prob_name)}: {prob.description}\n")
        tgt = rs[0].get("target", prob.target)
        tgt_text = f"{tgt:.4g}" if tgt is not None and math.isfinite(tgt) else \
            "none (no target given and no tuned baselines' runs to set it from)"
        out.append(f"Test {prob.metric} ({arrow} is better, range {_range_text(prob)}); "
                   f"validation target {tgt_text} (median over the tuned baselines of their worst "
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


OVERVIEW_CAPTION = (
    "Cells: final test metric, mean ± std over seeds (every seed counted; `div k/n`: seeds that "
    "diverged). **Bold**: a problem's best mean, only where it is significantly better than the "
    "runner-up's (95% CI of the difference excludes 0: paired t over the same seeds, else Welch "
    "t); no bold where the difference is not significant.")


def _best_significant(r: dict, second: dict, prob) -> bool:
    """Whether row ``r``'s mean beats ``second``'s significantly (the difference's 95% interval,
    as in :func:`verdict_line`, excludes 0 on the better side)."""
    width = prob.metric_range[1] - prob.metric_range[0]
    pairs = _paired(r, second)
    if pairs:
        _, lo, hi = difference_interval(*pairs, width, paired=True)
    else:
        _, lo, hi = difference_interval(r["final_values"], second["final_values"], width)
    return (lo > 0) if prob.higher_is_better else (hi < 0)


def overview_table(rows: list[dict], tag: str) -> str:
    """Methods x problems: final test metric (mean ± std over seeds) of the ``tag`` runs, after
    a caption (:data:`OVERVIEW_CAPTION`) that says so; a problem's best mean is in bold only
    where it is significantly better than the runner-up's."""
    rows = [r for r in rows if r["tag"] == tag and r["train_fraction"] == 1.0]
    problems = sorted({r["problem"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    if not rows:
        return ""
    cell = {(r["problem"], r["method"]): r for r in rows}
    best = {}
    for p in problems:
        prob = PROBLEMS[p]
        ranked = sorted((cell[(p, m)] for m in methods if (p, m) in cell
                         and math.isfinite(cell[(p, m)]["final_mean"])),
                        key=lambda r: -r["final_mean"] if prob.higher_is_better
                        else r["final_mean"])
        if len(ranked) >= 2 and _best_significant(ranked[0], ranked[1], prob):
            best[p] = ranked[0]["method"]
    head = "| method | " + " | ".join(f"{mark(p)} ({PROBLEMS[p].metric})" for p in problems) \
        + " |"
    lines = [OVERVIEW_CAPTION, "", head, "|---" * (len(problems) + 1) + "|"]
    for m in methods:
        cells = []
        for p in problems:
            r = cell.get((p, m))
            if r is None:
                cells.append("–")
                continue
            text = _cell(r["final_values"], PROBLEMS[p].metric_range, 3, ci=False,
                         diverged=r["diverged"])
            if best.get(p) == m:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def environment_section(store: Store) -> str:
    # a user problem's card (env["problem"]) is the problem's, not the machine's: the
    # "Your problems" section shows it
    envs = {json.dumps({k: v for k, v in t["env"].items() if k != "problem"}, sort_keys=True)
            for t in store.trials() if t["env"]}
    envs.discard("{}")
    if not envs:
        return ""
    lines = ["| key | value |", "|---|---|"]
    env = json.loads(sorted(envs)[0])
    lines += [f"| {k} | {v} |" for k, v in sorted(env.items())]
    if len(envs) > 1:
        lines.append(f"| (note) | {len(envs)} different environments in this store |")
    return "\n".join(lines) + "\n"
