"""The claims table: each paper's claim, as the paper states it, checked against stored results.

The claims themselves (:class:`Claim`, :data:`CLAIMS`, :func:`fraction_runs`: method,
comparisons, quantity, kind of test, the **kind of problem the paper ran** and **where the paper
states it**) are defined in :mod:`beyondsgd.bench.protocol.claims`, where the suite reads which
runs they need, and re-exported here. A claim is only checked on problems of its ``task`` (the
table says so); one made across data fractions compares the method's runs at ``fraction`` with
the comparisons' at 1.0.

Per-seed values (:func:`collect`, :mod:`.values`) come from the suite's final runs (tuned
setting, fresh seeds). **A diverged or collapsed seed counts** (never dropped) at its untrained
network's value and never reaches the target; the divergence and collapse rates are shown beside
every mean (``div k/n``, ``coll k/n``).

**Time to target** (AlgoPerf's convention): training seconds until the *validation* metric first
reaches the target (test beside it), ``inf`` if never; the target is the median over the tuned
baselines of the worst seed's best validation metric, a level reached late in a tuned baseline's
budget (:mod:`.values` says why). The seconds are per-process **CPU seconds** (``CPU s, 1
thread``: the runner records them and its thread count) when every seed of every arm has them,
otherwise **wall seconds** (``wall s (store predates CPU time)``); ``Verdict.clock`` says which,
and the table shows wall seconds beside CPU ones. "Faster per epoch" claims are decided on the
curve (``train_loss_auc``: the mean training loss over epochs 1..E), not on its last point.

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

Two verdicts stand outside that scale, because they are properties of the runs, not outcomes of
the tests: **untested** (the method never acted: more than half of its seeds collapsed or, for
GDSolver, accepted no solve, :mod:`.mechanism`; the text gives the counts: "untested: 2 of 3
seeds accepted no solve (1 of 9 solves accepted)") and **budget-limited** (a supported / not
supported verdict whose runs had less than :data:`BUDGET_FLOOR` = 25 % of the problem's epoch
budget, ``trial epochs / Problem.epochs``: "budget-limited: direction at 15 % of the budget
(would read supported)"). ``Verdict.budget`` is that fraction (the smallest over the claim's
runs); untested is decided first.

**Studies**: a store holding K independent tuning studies (``protocol.study_tag``) gets one
verdict per study (:func:`evaluate_store`); the table shows the median verdict (not supported <
inconclusive < supported; the lower middle for even K) and marks a claim whose verdict differs
between studies as **unstable**. If any study is untested (else budget-limited) the claim shows
that instead of a median: a verdict over runs in which the method never acted, or too short to
test it, is no verdict, whatever the other studies say.

>>> [c.id for c in CLAIMS if c.fraction < 1]
['gdsolver_data']
>>> median_verdict(["supported", "inconclusive", "supported"])
('supported', True)
>>> median_verdict(["supported", "untested", "supported"])
('untested', True)
>>> smallest_p(3, 3)
0.05
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from ..problems import PROBLEMS
from ..protocol import study_of, study_tag
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
    BUDGET_FLOOR,
    LOWER_IS_BETTER,
    Judgement,
    _oriented,
    _uses_permutation,
    _welch,
    budget_limited,
    budget_text,
    exact_permutation_p,
    holm,
    judge,
    judge_claim,
    smallest_p,
)
from .mechanism import untested_note
from .tuning_check import check_text, check_values
from .values import Values, collect, targets  # noqa: F401 - re-exported

VERDICTS = ("not supported", "inconclusive", "supported")  # ordered, for the median
#: verdicts outside the ordering, properties of the runs (module docstring), by precedence
RUN_VERDICTS = ("untested", "budget-limited")
CPU_LABEL, WALL_LABEL = "CPU s", "wall s (store predates CPU time)"
MIXED_LABEL = "wall s (not every run has CPU time)"


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
    a_collapsed: int = 0
    b_collapsed: dict[str, int] = field(default_factory=dict)
    budget: float | None = None  # trial epochs / the problem's epochs (smallest over the runs)
    clock: str = ""  # time claims: "CPU s, 1 thread" or "wall s (store predates CPU time)"
    wall_seconds: dict[str, list[float]] = field(default_factory=dict)  # time claims, CPU clock

    def p_text(self) -> str:
        """The p-values, each labelled with its direction and hypothesis."""
        if not self.p_values:
            return "n<2"
        return "; ".join(
            self.p_label.format(a=self.claim.method, b=b, margin=f"{self.margin:.3g}")
            + f" = {p:.3g}" for b, p in self.p_values.items())

    def verdict_text(self) -> str:
        """The verdict with its reason: "untested: <counts>", "budget-limited: direction at X %
        of the budget (would read ...)", "inconclusive (untestable / underpowered ...)"."""
        return _with_note(self.verdict, self.note)


def _with_note(verdict: str, note: str) -> str:
    if not note:
        return verdict
    return f"{verdict}: {note}" if verdict in RUN_VERDICTS else f"{verdict} ({note})"


def _margin(c: Claim, bs: dict[str, list[float]], hib: bool, power: bool = False,
            metric_range: tuple[float, float] = (0.0, 1.0)) -> float:
    """The non-inferiority margin of a "matches" claim (0 for "better" claims); ``power``: the
    difference a claim of either kind should be able to see (docs/protocol.md, "Seeds").

    A higher-is-better test metric: 1 % of its range ``metric_range`` (0.01 for accuracy; 1.0 on
    [0, 100]); unbounded, and everything else: 5 % of the comparisons' mean."""
    if c.kind != "matches" and not power:
        return 0.0
    lo, hi = metric_range
    if c.quantity == "test_metric" and hib and math.isfinite(lo) and math.isfinite(hi) \
            and hi > lo:
        return 0.01 * (hi - lo)
    means = [abs(statistics.fmean(v)) for v in bs.values() if all(math.isfinite(x) for x in v)]
    return 0.05 * (max(means) if means else 1.0)


def _clock(arms: list[dict[str, list[float]]]) -> str:
    """The clock a time claim reads (module docstring): CPU seconds, with the thread count, when
    every seed of every arm has them; "" for values that do not say."""
    if any("cpu_clock" not in d for d in arms):
        return ""
    cpu = [x for d in arms for x in d["cpu_clock"]]
    if cpu and all(cpu):
        threads = sorted({int(x) for d in arms for x in d.get("threads", []) if x == x})
        if not threads:
            return CPU_LABEL
        n = str(threads[0]) if len(threads) == 1 else f"{threads[0]}–{threads[-1]}"
        return f"{CPU_LABEL}, {n} thread{'' if threads == [1] else 's'}"
    return MIXED_LABEL if any(cpu) else WALL_LABEL


def evaluate_claims(values: dict, claims: tuple[Claim, ...] = CLAIMS) -> list[Verdict]:
    """One verdict per (claim, problem of the claim's task) where the method (at the claim's
    fraction) and every comparison (at 1.0) have results; untested where the method never acted
    (:func:`mechanism.untested_note`), budget-limited below the budget floor
    (:func:`judge.budget_limited`); time claims on CPU seconds where every run has them."""
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
            arms = {c.method: values[a_key], **{b: values[k] for b, k in b_keys.items()}}
            q, clock, test_q = c.quantity, "", "test_seconds_to_target"
            if q == "seconds_to_target":
                clock = _clock(list(arms.values()))
                if clock and not clock.startswith(CPU_LABEL):
                    q, test_q = "wall_seconds_to_target", "wall_test_seconds_to_target"
            a = _oriented(values[a_key][q], c.quantity, hib)
            bs = {b: _oriented(values[k][q], c.quantity, hib) for b, k in b_keys.items()}
            rng = prob.metric_range
            margin = _margin(c, bs, hib, metric_range=rng)
            j = judge_claim(a, bs, c.kind, margin,
                            _margin(c, bs, hib, power=True, metric_range=rng))
            epochs = [x for d in arms.values() for x in d.get("epochs", [])]
            budget = min(epochs) / prob.epochs if epochs else None
            why = untested_note(c.method, values[a_key], {b: values[k] for b, k in b_keys.items()})
            j = Judgement("untested", j.p_values, j.p_label, why) if why else \
                budget_limited(j, budget)
            timed = c.quantity == "seconds_to_target"
            out.append(Verdict(
                c, p, j.verdict, list(values[a_key][q]),
                {b: list(values[k][q]) for b, k in b_keys.items()}, j.p_values,
                note=j.note, p_label=j.p_label, margin=margin,
                a_diverged=int(sum(values[a_key]["diverged"])),
                b_diverged={b: int(sum(values[k]["diverged"])) for b, k in b_keys.items()},
                target=tg.get(p) if timed else None,
                study=getattr(values, "study", 0),
                test_seconds={m: list(d.get(test_q, [])) for m, d in arms.items()}
                if timed else {},
                a_collapsed=int(sum(values[a_key].get("collapsed", []))),
                b_collapsed={b: int(sum(values[k].get("collapsed", [])))
                             for b, k in b_keys.items()},
                budget=budget, clock=clock,
                wall_seconds={m: list(d.get("wall_seconds_to_target", []))
                              for m, d in arms.items()} if clock.startswith(CPU_LABEL) else {}))
    return out


def median_verdict(verdicts: list[str]) -> tuple[str, bool]:
    """(verdict over studies, whether the studies disagree): "untested" if any study is, else
    "budget-limited" if any study is (properties of the runs, not test outcomes: module
    docstring), else the median on the ordering not supported < inconclusive < supported (the
    lower middle for an even number)."""
    for v in RUN_VERDICTS:
        if v in verdicts:
            return v, len(set(verdicts)) > 1
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
    tuning_check: str | None = None  # tuning_check.check_text, where the store has the check

    def verdict_text(self) -> str:
        """The verdict over the studies with the reason of a study that gave it (untested,
        budget-limited, untestable, underpowered), if any."""
        notes = [s.note for s in self.studies if s.verdict == self.verdict and s.note]
        return _with_note(self.verdict, notes[0] if notes else "")


def studies_in(store: Store) -> list[int]:
    """The studies whose final runs are in the store (``[0]`` for a classic store)."""
    found = {study_of(t["tag"]) for t in store.trials()}
    return sorted(k for k in found if k is not None) or [0]


def evaluate_store(store: Store, claims: tuple[Claim, ...] = CLAIMS,
                   problems: list[str] | None = None) -> list[StudyVerdicts]:
    """Every claim on every problem, one verdict per study, median and stability, and whether
    study 0's verdict survives twice the tuning draws where the store has that check
    (:mod:`.tuning_check`)."""
    by: dict[tuple[str, str], list[Verdict]] = defaultdict(list)
    for k in studies_in(store):
        values = collect(store, study_tag(k))
        for v in evaluate_claims(values, claims):
            if not problems or v.problem in problems:
                by[(v.claim.id, v.problem)].append(v)
    checked = check_values(store)
    rechecked = {(v.claim.id, v.problem): v for v in evaluate_claims(checked, claims)} \
        if checked is not None else {}
    out = []
    for (cid, prob), vs in by.items():
        verdict, unstable = median_verdict([v.verdict for v in vs])
        sv = StudyVerdicts(vs[0].claim, vs[0].problem, vs, verdict, unstable)
        s0 = [v for v in vs if v.study == 0]
        if (cid, prob) in rechecked and s0:
            sv.tuning_check = check_text(s0[0].verdict, rechecked[(cid, prob)].verdict)
        out.append(sv)
    return out


def mean_text(vals: list[float], diverged: int, quantity: str = "test_metric",
              collapsed: int = 0) -> str:
    """Mean ± std over every seed (diverged and collapsed ones counted), with the divergence
    rate (and ``coll k/n`` where seeds collapsed); times to target: median and how many seeds
    reached the target."""
    n = len(vals)
    rate = f"div {diverged}/{n}" + (f", coll {collapsed}/{n}" if collapsed else "")
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
             "ours: comparisons | test, p | budget | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        v, c = r.studies[0], r.claim
        q = c.quantity + (f" (val target {v.target:.4g}; {v.clock})" if v.target is not None
                          else "")
        frac = f" at {c.fraction:.0%} data" if c.fraction < 1 else ""
        comps = "; ".join(
            f"{b} {mean_text(x, v.b_diverged.get(b, 0), c.quantity, v.b_collapsed.get(b, 0))}"
            for b, x in v.b_values.items())
        if v.test_seconds:
            comps += " (on the test split, medians: " + ", ".join(
                f"{m} {_median_s(x)}" for m, x in v.test_seconds.items()) + ")"
        if v.wall_seconds:
            comps += " (wall s beside, medians: " + ", ".join(
                f"{m} {_median_s(x)}" for m, x in v.wall_seconds.items()) + ")"
        budget = "–" if v.budget is None else budget_text(v.budget)
        test = "Welch t" if c.kind == "better" else "non-inferiority"
        if any(_uses_permutation(v.a_values, x) for x in v.b_values.values()):
            test += " / exact permutation"
        pv = v.p_text()
        verdict = f"**{r.verdict}**" + r.verdict_text()[len(r.verdict):]
        if r.unstable:
            median = "median " if r.verdict in VERDICTS else ""
            verdict = f"**unstable** ({median}{r.verdict_text()})"
        if multi:
            verdict += " — studies: " + ", ".join(s.verdict_text() for s in r.studies)
        ours = mean_text(v.a_values, v.a_diverged, c.quantity, v.a_collapsed)
        lines.append(f"| `{c.id}` | {r.problem} | {q} | {c.method}{frac} {ours} | "
                     f"{comps} | {test}: {pv} | {budget} | {verdict} |")
    note = ("\nValues of study 0; " if multi else "\n") + (
        "every seed counted: a diverged or collapsed seed at its untrained network's value "
        "(never reaching the target); `x ± s`: mean ± std over seeds; `div k/n`, `coll k/n`: "
        "seeds that diverged, collapsed (ended at or above their initial loss). budget: the "
        "runs' epochs as a fraction of the problem's epoch budget; below "
        f"{budget_text(BUDGET_FLOOR)} a verdict is budget-limited. Times: CPU seconds of one "
        "process where every run has them, else wall seconds (the quantity says which). "
        "p-values are one-sided, labelled with their direction and hypothesis; \"Holm\": "
        "Holm-adjusted over the claim's comparisons.\n")
    return "\n".join(lines) + "\n" + note
