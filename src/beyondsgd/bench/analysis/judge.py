"""How one claim's comparisons become a verdict: the tests behind :mod:`claims`.

Welch's t-test on finite values; where a seed never reached a target (an infinite value) an
exact permutation test over every split of the seeds (:func:`exact_permutation_p`, on mid-ranks),
whose smallest attainable p (:func:`smallest_p`) says when the seeds run cannot decide; Holm's
correction (:func:`holm`) over a claim's comparisons on the "not supported" side; every p labelled
with its direction and hypothesis; "underpowered: N seeds needed" from the measured spread.
Below the budget floor (:data:`BUDGET_FLOOR`, :func:`budget_limited`) a supported / not
supported verdict becomes "budget-limited": the direction seen, not a verdict.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass

from ..protocol.claims import KINDS
from .metrics import seeds_for_power

ALPHA = 0.05
LOWER_IS_BETTER = {"train_loss", "train_loss_auc", "train_seconds", "seconds_to_target"}
#: Below this fraction of the problem's full epoch budget (``trial epochs / Problem.epochs``; the
#: built-in problems' ``epochs`` are their convergence budgets) a claim cannot be supported or
#: not supported: it is "budget-limited" and says the direction it saw. A quarter of the budget
#: is where the papers' own curves (ProxProp Fig. 3, BPGrad's loss curves, DessiLBI's first lr
#: stage) have left the initial transient, so an ordering seen there is about the method, not
#: about the first epochs; below it the comparison is about the start. ``beyondsgd reproduce``
#: applies the same floor to the paper's optimizer steps (``reproduce.core.Outcome``).
BUDGET_FLOOR = 0.25


def _oriented(values: list[float], quantity: str, higher_is_better: bool) -> list[float]:
    lower = quantity in LOWER_IS_BETTER or (quantity == "test_metric" and not higher_is_better)
    return [-v for v in values] if lower else list(values)


def exact_permutation_p(a: list[float], b: list[float], alternative: str) -> float:
    """Exact one-sided two-sample permutation p-value on the difference of means, mean(a) -
    mean(b), enumerating every split of the pooled values into groups of len(a) and len(b):
    p = (splits whose difference is at least as extreme as the observed one) / (all splits).
    ``alternative``: ``"greater"`` (a above b) or ``"less"``. Values with an infinity (a seed that
    never reached the target) are replaced by their mid-ranks in the pool first, so the test is
    then on mean ranks (an exact Mann-Whitney test). The smallest p it can give is
    1 / C(len(a) + len(b), len(a)) (:func:`smallest_p`).

    >>> exact_permutation_p([3.0, 4.0], [1.0, 2.0], "greater")  # 1 split of C(4, 2) = 6
    0.16666666666666666
    """
    import itertools

    from scipy import stats

    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    pool = [float(v) for v in list(a) + list(b)]
    if any(math.isinf(v) for v in pool):
        pool = [float(r) for r in stats.rankdata(pool)]
    na, n = len(a), len(pool)
    total = sum(pool)
    sign = 1.0 if alternative == "greater" else -1.0

    def stat(sum_a: float) -> float:  # mean(a) - mean(b), oriented by ``alternative``
        return sign * (sum_a / na - (total - sum_a) / (n - na))

    obs = stat(sum(pool[:na]))
    tol = 1e-12 * max(1.0, abs(obs))
    hits = count = 0
    for idx in itertools.combinations(range(n), na):
        count += 1
        hits += stat(sum(pool[i] for i in idx)) >= obs - tol
    return hits / count


def smallest_p(na: int, nb: int) -> float:
    """The smallest one-sided p an exact permutation test of na vs nb seeds can give:
    1 / C(na + nb, na) (3 vs 3: 1/20 = 0.05, above alpha/2 = 0.025; 4 vs 4: 1/70; 5 vs 5: 1/252)."""
    return 1.0 / math.comb(na + nb, na)


def _uses_permutation(a: list[float], b: list[float]) -> bool:
    return any(math.isinf(v) for v in list(a) + list(b)) and len(set(list(a) + list(b))) > 1


def _welch(a: list[float], b: list[float], alternative: str, shift: float = 0.0) -> float:
    """One-sided p-value of Welch's t-test on a - shift vs b (``alternative``: ``"greater"`` or
    ``"less"``); with an infinity among the values, the exact permutation test on ranks
    (:func:`exact_permutation_p`); handles zero variance."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan
    aa = [v - shift for v in a]
    if len(set(aa + list(b))) == 1:  # every value equal (e.g. no seed reached the target)
        return 1.0
    if any(math.isinf(v) for v in aa + list(b)):
        # a seed that never reached the target (or diverged to inf): exact test on ranks
        return exact_permutation_p(aa, list(b), alternative)
    if statistics.pstdev(aa) == 0 and statistics.pstdev(b) == 0:
        diff = statistics.fmean(aa) - statistics.fmean(b)
        if alternative == "greater":
            return 0.0 if diff > 0 else 1.0
        if alternative == "less":
            return 0.0 if diff < 0 else 1.0
        return 0.0 if diff != 0 else 1.0
    with warnings.catch_warnings():  # nearly identical samples: scipy warns, p is still usable
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        return float(stats.ttest_ind(aa, b, equal_var=False, alternative=alternative).pvalue)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (step-down; each compared with the same alpha): the i-th smallest
    of m becomes max over j <= i of min(1, (m - j + 1) p_(j)).

    >>> holm({"x": 0.01, "y": 0.04, "z": 0.03})
    {'x': 0.03, 'y': 0.06, 'z': 0.06}
    """
    order = sorted(p_values, key=lambda k: p_values[k])
    m, out, run = len(order), {}, 0.0
    for i, k in enumerate(order):
        run = max(run, min(1.0, (m - i) * p_values[k]))
        out[k] = run
    return {k: out[k] for k in p_values}


@dataclass
class Judgement:
    """:func:`judge_claim`'s result: the verdict, its p-values (one per comparison), what each p
    is the p of (``p_label``: direction and hypothesis, ``{a}``/``{b}``/``{margin}`` to fill in)
    and, for an inconclusive verdict, why (``note``: untestable or underpowered)."""

    verdict: str
    p_values: dict[str, float]
    p_label: str = ""
    note: str = ""


def _seeds_needed(a: list[float], bs: dict[str, list[float]], margin: float) -> int | None:
    """Seeds per arm for 80% power to see ``margin`` at the measured spread (pooled sd of A and
    each B, :func:`metrics.seeds_for_power`), the most over the comparisons; None when a value is
    infinite or the margin is not positive."""
    if margin <= 0 or not math.isfinite(margin):
        return None
    need = []
    for b in bs.values():
        if any(not math.isfinite(v) for v in list(a) + list(b)):
            return None
        sd = math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)
        need.append(seeds_for_power(sd, margin, ALPHA))
    return max(need) if need else None


def judge_claim(a: list[float], bs: dict[str, list[float]], kind: str, margin: float = 0.0,
                power_margin: float = 0.0) -> Judgement:
    """Verdict for oriented values (higher is better), module docstring: one-sided tests per
    comparison; *supported* needs every comparison significant (an intersection-union test, each
    at its own level, no correction needed); *not supported* needs at least one comparison
    significantly the other way, Holm-corrected over the comparisons. An inconclusive verdict
    says why where it can: **untestable** when the seeds run cannot give a p below the level
    (the exact permutation test's smallest p, :func:`smallest_p`), **underpowered** when the
    seeds for 80% power to see ``power_margin`` (or ``margin``) at the measured spread exceed
    the seeds run."""
    if kind not in KINDS:
        raise ValueError(f"unknown claim kind {kind!r}; accepted: {', '.join(KINDS)}")
    if len(a) < 2 or not bs or any(len(b) < 2 for b in bs.values()):
        return Judgement("inconclusive", {}, note="fewer than 2 seeds")
    level = ALPHA / 2 if kind == "better" else ALPHA
    shift = 0.0 if kind == "better" else -margin
    good = {n: _welch(a, b, "greater", shift) for n, b in bs.items()}
    bad = holm({n: _welch(a, b, "less", shift) for n, b in bs.items()})
    if kind == "better":
        good_label, bad_label = "p({a} better than {b})", "p({a} worse than {b}), Holm"
    else:
        good_label = "p({a} not worse than {b} by {margin} or more)"
        bad_label = "p({a} worse than {b} by more than {margin}), Holm"
    if all(p < level for p in good.values()):
        return Judgement("supported", good, good_label)
    if any(p < level for p in bad.values()):
        return Judgement("not supported", bad, bad_label)
    note = ""
    floor = {n: smallest_p(len(a), len(b)) for n, b in bs.items()
             if _uses_permutation([v - shift for v in a], b)}
    if any(f >= level for f in floor.values()):
        n_seeds = sorted({len(a), *(len(bs[n]) for n in floor)})
        note = (f"untestable with {'/'.join(map(str, n_seeds))} seeds: smallest exact p "
                f"{max(floor.values()):.3g} ≥ {level:.3g}")
    else:
        need = _seeds_needed(a, bs, power_margin or margin)
        if need is not None and need > min([len(a), *(len(b) for b in bs.values())]):
            note = f"underpowered: {need} seeds needed"
    return Judgement("inconclusive", good, good_label, note)


def budget_text(fraction: float | None) -> str:
    """A budget fraction as a percentage, two significant digits (``–`` for None).

    >>> budget_text(0.0044), budget_text(0.15), budget_text(1.0), budget_text(None)
    ('0.44 %', '15 %', '100 %', '–')
    """
    if fraction is None:
        return "–"
    return f"{100 * fraction:.2g} %" if fraction < 1 else f"{100 * fraction:.0f} %"


def budget_limited(j: Judgement, budget: float | None) -> Judgement:
    """``j`` unchanged at or above :data:`BUDGET_FLOOR` (or without a known budget); below it
    any judgement (supported, not supported, inconclusive) becomes "budget-limited" with the
    note "direction at X % of the budget (would read <verdict>)" (p-values kept): a run that
    short can neither test the claim nor say it is undecided at the claim's budget."""
    if budget is None or budget >= BUDGET_FLOOR or j.verdict not in (
            "supported", "not supported", "inconclusive"):
        return j
    would = j.verdict + (f": {j.note}" if j.note else "")
    note = f"direction at {budget_text(budget)} of the budget (would read {would})"
    return Judgement("budget-limited", j.p_values, j.p_label, note)


def judge(a: list[float], bs: dict[str, list[float]], kind: str, margin: float = 0.0
          ) -> tuple[str, dict[str, float]]:
    """Verdict for oriented values (higher is better). Returns (verdict, p-values)
    (:func:`judge_claim` without the labels and notes)."""
    j = judge_claim(a, bs, kind, margin)
    return j.verdict, j.p_values
