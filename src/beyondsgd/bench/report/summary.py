"""The summary rows: the stored trials grouped, with their statistics over seeds.

``summarize(store)`` groups finished/diverged trials by (problem, method, hyperparameters,
train fraction, tag, epochs) and computes over seeds: final and best test metric (mean, std, a
95% interval), training seconds and epochs to the target on the validation split (AlgoPerf; on
the test split beside it; target set from the tuned baselines, ``analysis.claims.targets``;
median over seeds, ``inf`` when a seed never reaches it, so the median is ``inf`` when half the
seeds or more never do), and seconds per epoch and per step. **Every seed counts**: a diverged
seed's final metric and training loss are its untrained network's (the epoch-0 evaluation:
chance-level accuracy, the initial MSE; the metric's worst where that is missing) and it never
reaches the target, so a method cannot look better by diverging. Rows come best-first within
each problem and comparable group (same tag, epochs and train fraction: ``_group_key``), the
best marked. :mod:`.tables` renders them.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from typing import Any

from ...methods import METHODS
from ..analysis.claims import targets
from ..analysis.intervals import seed_interval
from ..analysis.metrics import diverged_value, seconds_to_target
from ..problems import PROBLEMS
from ..protocol import DEFAULTS_TAG, FINAL_TAG, TUNE_TAG, study_of
from ..store import Store

__all__ = ["label", "summarize"]


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
    """One row per group of trials (module docstring), best-first within each problem and
    comparable group; ``problems``: only these."""
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
