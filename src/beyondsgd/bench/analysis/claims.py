"""The claims table: each paper's claim, as the paper states it, checked against stored results.

The claims themselves (:class:`Claim`, :data:`CLAIMS`, :func:`fraction_runs`: method,
comparisons, quantity, kind of test, the **kind of problem the paper ran** and **where the paper
states it**) are defined in :mod:`beyondsgd.bench.protocol.claims`, where the suite reads which
runs they need, and re-exported here. A claim is only checked on problems of its ``task`` (the
table says so); one made across data fractions compares the method's runs at ``fraction`` with
the comparisons' at 1.0.

Per-seed values (:func:`collect`) come from the suite's final runs (tuned setting, fresh seeds).
**A diverged seed counts** (it is never dropped): its test/validation metric and training loss
are those of its untrained network (the epoch-0 evaluation of the same trial: chance level for
accuracy, the initial MSE; where that is missing, the metric's worst value: accuracy 0, MSE and
loss inf), and it never reaches the target. The divergence rate is shown beside every mean.

**Time to target** (AlgoPerf's convention): training seconds until the *validation* metric first
reaches the problem's target (test beside it in the report), ``inf`` if never. The target is set
from the tuned baselines (``protocol.BASELINES``) of the same study (:func:`targets`): for each
baseline, the worst seed's best validation metric (a level every seed of it reached); the target
is the median over the baselines. With no baseline runs, the problem's fixed target is used.

Two tests, on values oriented so that higher is better (losses, MSE and seconds are negated),
each one-sided per comparison B, every printed p labelled with its direction and hypothesis
(``p(A better than B)``, ``p(A worse than B by more than margin)``):

- **superiority** (``better``): Welch's t-test, one-sided each way at alpha/2 = 0.025 (so
  two-sided alpha = 0.05), of method A against each comparison B. When a value is infinite (a
  seed that never reached the target) the **exact permutation test** on ranks replaces it
  (:func:`exact_permutation_p`, every split of the pooled seeds enumerated): its smallest p is
  1 / C(n_A + n_B, n_A), so **3 vs 3 seeds cannot reach 0.025** (smallest p 1/20 = 0.05; 4 vs 4:
  1/70; 5 vs 5: 1/252), and such a verdict says "untestable with 3 seeds" instead of passing
  for an ordinary inconclusive one. *supported*: A significantly better than every B (an
  intersection-union test: every comparison at its own level, no multiplicity correction
  needed); *not supported*: A significantly worse than at least one B after **Holm's
  correction** over the claim's comparisons; *inconclusive*: otherwise.
- **non-inferiority** (``matches``): the same one-sided tests at alpha = 0.05 on A + delta vs B,
  margin delta (1 accuracy point, or 5% of B's mean for losses/MSE). *supported*: A - B > -delta
  significant against every B (so against the best B); *not supported*: A - B < -delta
  significant against at least one B, Holm-corrected; *inconclusive*: otherwise.

An inconclusive verdict says why where it can: **untestable** (above) or **underpowered: N seeds
needed**, where N, the seeds per arm giving 80% power to see the claim's margin (1 accuracy
point; 5% of the comparisons' mean otherwise, also for "better" claims) at the measured spread
(pooled sd of A and B, :func:`metrics.seeds_for_power`, the most over the comparisons), exceeds
the seeds run.

**Studies**: a store holding K independent tuning studies (``protocol.study_tag``) gets one
verdict per study (:func:`evaluate_store`); the table shows the median verdict (not supported <
inconclusive < supported; the lower middle for even K) and marks a claim whose verdict differs
between studies as **unstable**.

>>> [c.id for c in CLAIMS if c.fraction < 1]
['gdsolver_data']
>>> median_verdict(["supported", "inconclusive", "supported"])
('supported', True)
>>> smallest_p(3, 3)
0.05
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from ..problems import PROBLEMS
from ..protocol import BASELINES, FINAL_TAG, study_of, study_tag
from ..protocol.claims import (  # noqa: F401 - the claims' definitions, re-exported
    CLAIMS,
    KINDS,
    QUANTITIES,
    Claim,
    fraction_runs,
)
from ..store import Store
from .judge import (  # noqa: F401 - the tests behind a verdict, re-exported
    ALPHA,
    LOWER_IS_BETTER,
    Judgement,
    _oriented,
    _uses_permutation,
    _welch,
    exact_permutation_p,
    holm,
    judge,
    judge_claim,
    smallest_p,
)
from .metrics import diverged_value, seconds_to_target, set_target

VERDICTS = ("not supported", "inconclusive", "supported")  # ordered, for the median


@dataclass
class Verdict:
    claim: Claim
    problem: str
    verdict: str
    a_values: list[float]
    b_values: dict[str, list[float]]
    p_values: dict[str, float] = field(default_factory=dict)
    note: str = ""
    a_diverged: int = 0
    b_diverged: dict[str, int] = field(default_factory=dict)
    target: float | None = None
    study: int = 0
    test_seconds: dict[str, list[float]] = field(default_factory=dict)  # time claims: test split
    p_label: str = ""  # what each p is the p of: direction and hypothesis (Judgement.p_label)
    margin: float = 0.0  # the non-inferiority margin of a "matches" claim

    def p_text(self) -> str:
        """The p-values, each labelled with its direction and hypothesis."""
        if not self.p_values:
            return "n<2"
        return "; ".join(
            self.p_label.format(a=self.claim.method, b=b, margin=f"{self.margin:.3g}")
            + f" = {p:.3g}" for b, p in self.p_values.items())

    def verdict_text(self) -> str:
        """The verdict with its reason where inconclusive (untestable / underpowered)."""
        return self.verdict + (f" ({self.note})" if self.note else "")


class Values(dict):
    """``collect``'s result: ``{(problem, method, train_fraction): {quantity: per-seed list}}``
    with ``targets`` (the time-to-target target per problem) and ``study``."""

    targets: dict[str, float]
    study: int = 0


def targets(store: Store, tag: str = FINAL_TAG) -> dict[str, float]:
    """Validation target per problem from the tuned baselines' ``tag`` runs (module docstring);
    problems without baseline runs get their fixed ``Problem.target``."""
    best: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in store.trials(tag=tag):
        if (t["method"] in BASELINES and t["train_fraction"] == 1.0 and t["problem"] in PROBLEMS
                and t["status"] in ("finished", "diverged")):
            best[t["problem"]][t["method"]].append(
                _best_val(store.evals(t["id"]), PROBLEMS[t["problem"]].higher_is_better))
    out = {name: p.target for name, p in PROBLEMS.items()}
    for p, by_method in best.items():
        out[p] = set_target(list(by_method.values()), PROBLEMS[p].higher_is_better)
    return out


def _best_val(evals: list[dict], higher_is_better: bool) -> float:
    vals = [e["val_metric"] for e in evals[1:]
            if e.get("val_metric") is not None and math.isfinite(e["val_metric"])]
    if not vals:
        return -math.inf if higher_is_better else math.inf
    return max(vals) if higher_is_better else min(vals)


def collect(store: Store, tag: str = FINAL_TAG) -> Values:
    """Per-seed values of each (problem, method, train fraction) among ``tag`` trials, diverged
    seeds counted (module docstring). Quantities: test_metric, val_metric, train_loss,
    seconds_to_target (validation), test_seconds_to_target, diverged (1.0 or 0.0), seed."""
    tg = targets(store, tag)
    out = Values()
    out.targets, out.study = tg, study_of(tag) or 0
    for t in store.trials(tag=tag):
        if t["problem"] not in PROBLEMS or t["status"] not in ("finished", "diverged"):
            continue
        prob = PROBLEMS[t["problem"]]
        hib = prob.higher_is_better
        evals = store.evals(t["id"])
        d = out.setdefault((t["problem"], t["method"], t["train_fraction"]), defaultdict(list))
        div = t["status"] == "diverged"
        worst = prob.metric_range[0] if hib else math.inf
        if div:
            d["test_metric"].append(diverged_value(evals, "test_metric", worst))
            d["val_metric"].append(diverged_value(evals, "val_metric", worst))
            d["train_loss"].append(diverged_value(evals, "train_loss", math.inf))
            d["seconds_to_target"].append(math.inf)
            d["test_seconds_to_target"].append(math.inf)
        else:
            d["test_metric"].append(t["final_test_metric"])
            d["val_metric"].append(t["final_val_metric"])
            d["train_loss"].append(t["final_train_loss"])
            d["seconds_to_target"].append(
                seconds_to_target(evals, tg[prob.name], hib, "val_metric")[0])
            d["test_seconds_to_target"].append(
                seconds_to_target(evals, tg[prob.name], hib, "test_metric")[0])
        d["diverged"].append(1.0 if div else 0.0)
        d["seed"].append(float(t["seed"]))
    return out


def _margin(c: Claim, bs: dict[str, list[float]], hib: bool, power: bool = False) -> float:
    """The non-inferiority margin of a "matches" claim (0 for "better" claims); ``power``: the
    difference a claim of either kind should be able to see (docs/protocol.md, "Seeds")."""
    if c.kind != "matches" and not power:
        return 0.0
    if c.quantity == "test_metric" and hib:
        return 0.01
    means = [abs(statistics.fmean(v)) for v in bs.values() if all(math.isfinite(x) for x in v)]
    return 0.05 * (max(means) if means else 1.0)


def evaluate_claims(values: dict, claims: tuple[Claim, ...] = CLAIMS) -> list[Verdict]:
    """One verdict per (claim, problem of the claim's task) where the method (at the claim's
    fraction) and every comparison (at 1.0) have results."""
    problems = sorted({k[0] for k in values})
    tg = getattr(values, "targets", {})
    out = []
    for c in claims:
        for p in problems:
            prob = PROBLEMS[p]
            a_key, b_keys = (p, c.method, c.fraction), {b: (p, b, 1.0) for b in c.versus}
            if prob.task != c.task or a_key not in values or any(
                    k not in values for k in b_keys.values()):
                continue
            hib = prob.higher_is_better
            a = _oriented(values[a_key][c.quantity], c.quantity, hib)
            bs = {b: _oriented(values[k][c.quantity], c.quantity, hib) for b, k in b_keys.items()}
            margin = _margin(c, bs, hib)
            j = judge_claim(a, bs, c.kind, margin, _margin(c, bs, hib, power=True))
            out.append(Verdict(
                c, p, j.verdict, list(values[a_key][c.quantity]),
                {b: list(values[k][c.quantity]) for b, k in b_keys.items()}, j.p_values,
                note=j.note, p_label=j.p_label, margin=margin,
                a_diverged=int(sum(values[a_key]["diverged"])),
                b_diverged={b: int(sum(values[k]["diverged"])) for b, k in b_keys.items()},
                target=tg.get(p) if c.quantity == "seconds_to_target" else None,
                study=getattr(values, "study", 0),
                test_seconds={m: list(values[k].get("test_seconds_to_target", []))
                              for m, k in [(c.method, a_key), *b_keys.items()]}
                if c.quantity == "seconds_to_target" else {}))
    return out


def median_verdict(verdicts: list[str]) -> tuple[str, bool]:
    """(median verdict over studies, whether the studies disagree)."""
    ranks = sorted(VERDICTS.index(v) for v in verdicts)
    return VERDICTS[statistics.median_low(ranks)], len(set(verdicts)) > 1


@dataclass
class StudyVerdicts:
    """A claim on one problem over the studies of a store."""

    claim: Claim
    problem: str
    studies: list[Verdict]
    verdict: str
    unstable: bool

    def verdict_text(self) -> str:
        """The median verdict with the reason of a study that gave it (untestable /
        underpowered), if any."""
        notes = [s.note for s in self.studies if s.verdict == self.verdict and s.note]
        return self.verdict + (f" ({notes[0]})" if notes else "")


def studies_in(store: Store) -> list[int]:
    """The studies whose final runs are in the store (``[0]`` for a classic store)."""
    found = {study_of(t["tag"]) for t in store.trials()}
    return sorted(k for k in found if k is not None) or [0]


def evaluate_store(store: Store, claims: tuple[Claim, ...] = CLAIMS,
                   problems: list[str] | None = None) -> list[StudyVerdicts]:
    """Every claim on every problem, one verdict per study, median and stability."""
    by: dict[tuple[str, str], list[Verdict]] = defaultdict(list)
    for k in studies_in(store):
        values = collect(store, study_tag(k))
        for v in evaluate_claims(values, claims):
            if not problems or v.problem in problems:
                by[(v.claim.id, v.problem)].append(v)
    out = []
    for vs in by.values():
        verdict, unstable = median_verdict([v.verdict for v in vs])
        out.append(StudyVerdicts(vs[0].claim, vs[0].problem, vs, verdict, unstable))
    return out


def mean_text(vals: list[float], diverged: int, quantity: str = "test_metric") -> str:
    """Mean ± std over every seed (diverged ones counted), with the divergence rate; times to
    target: median and how many seeds reached the target."""
    n = len(vals)
    rate = f"div {diverged}/{n}"
    if quantity == "seconds_to_target":
        reached = sum(math.isfinite(v) for v in vals)
        med = statistics.median(vals) if vals else math.nan
        med_s = "never" if math.isinf(med) else f"{med:.3g} s"
        return f"median {med_s}, reached {reached}/{n}, {rate}"
    if not vals:
        return "no seeds"
    if not all(math.isfinite(v) for v in vals):
        return f"inf ({rate})"
    s = statistics.stdev(vals) if n > 1 else 0.0
    return f"{statistics.fmean(vals):.4g} ± {s:.2g} ({rate})"


def _median_s(vals: list[float]) -> str:
    if not vals:
        return "–"
    med = statistics.median(vals)
    return "never" if math.isinf(med) else f"{med:.3g} s"


def claims_legend(results: list[StudyVerdicts] | list[Verdict]) -> str:
    """The claims of ``results``, each once: its id, the paper, the claim's full text, the kind
    of problem it is checked on, where the paper states it and the paper's numbers (a Markdown
    list, so the table's rows name a claim by its id only)."""
    seen: dict[str, Claim] = {}
    for r in results:
        seen.setdefault(r.claim.id, r.claim)
    lines = []
    for c in seen.values():
        frac = f" (method at {c.fraction:.0%} data)" if c.fraction < 1 else ""
        nums = f" Paper: {c.paper_numbers}." if c.paper_numbers else ""
        lines.append(f"- `{c.id}`: {c.paper}: {c.text}{frac} ({c.task} only). "
                     f"Source: {c.source}.{nums}")
    return "\n".join(lines) + "\n"


def claims_markdown(results: list[StudyVerdicts] | list[Verdict]) -> str:
    """The claims table; ``results`` from :func:`evaluate_store` (or single-study verdicts):
    the claims listed once (:func:`claims_legend`), then one row per claim and problem naming the
    claim by its id."""
    if not results:
        return "No claim could be checked: the store lacks the needed methods' final runs.\n"
    if isinstance(results[0], Verdict):
        results = [StudyVerdicts(v.claim, v.problem, [v], v.verdict, False) for v in results]
    multi = max(len(r.studies) for r in results) > 1
    lines = [claims_legend(results),
             "| claim | problem | quantity | ours: method (mean ± std over seeds) | "
             "ours: comparisons | test, p | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        v, c = r.studies[0], r.claim
        q = c.quantity + (f" (val target {v.target:.4g})" if v.target is not None else "")
        frac = f" at {c.fraction:.0%} data" if c.fraction < 1 else ""
        comps = "; ".join(f"{b} {mean_text(x, v.b_diverged.get(b, 0), c.quantity)}"
                          for b, x in v.b_values.items())
        if v.test_seconds:
            comps += " (on the test split, medians: " + ", ".join(
                f"{m} {_median_s(x)}" for m, x in v.test_seconds.items()) + ")"
        test = "Welch t" if c.kind == "better" else "non-inferiority"
        if any(_uses_permutation(v.a_values, x) for x in v.b_values.values()):
            test += " / exact permutation"
        pv = v.p_text()
        verdict = f"**{r.verdict}**" + r.verdict_text()[len(r.verdict):]
        if r.unstable:
            verdict = f"**unstable** (median {r.verdict_text()})"
        if multi:
            verdict += " — studies: " + ", ".join(s.verdict_text() for s in r.studies)
        lines.append(f"| `{c.id}` | {r.problem} | {q} | "
                     f"{c.method}{frac} {mean_text(v.a_values, v.a_diverged, c.quantity)} | "
                     f"{comps} | {test}: {pv} | {verdict} |")
    note = ("\nValues of study 0; " if multi else "\n") + (
        "every seed counted: a diverged seed at its untrained network's value (never reaching "
        "the target); `x ± s`: mean ± std over seeds; `div k/n`: seeds that diverged. "
        "p-values are one-sided, labelled with their direction and hypothesis; \"Holm\": "
        "Holm-adjusted over the claim's comparisons.\n")
    return "\n".join(lines) + "\n" + note
