"""The claims table: each paper's claim checked against stored results, with a verdict.

Per-seed values come from the suite's ``final`` trials (tuned setting, seeds 1..S). Two tests:

- **superiority** (``better``): Welch's two-sample t-test, two-sided, alpha = 0.05, on the
  per-seed values of method A and of each comparison method B. *supported*: A is significantly
  better than every B; *not supported*: A is significantly worse than at least one B;
  *inconclusive*: otherwise (including too few seeds).
- **non-inferiority** (``matches``): one-sided Welch t-tests with margin delta (1 accuracy point,
  or 5% of B's mean for losses/MSE). *supported*: A - B > -delta is significant against every B;
  *not supported*: A - B < -delta is significant against at least one B; *inconclusive*:
  otherwise.

Values are oriented so that "better" means higher (losses and MSE are negated internally).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

from .metrics import time_to_target
from .problems import PROBLEMS
from .protocol import FINAL_TAG
from .store import Store

ALPHA = 0.05


@dataclass(frozen=True)
class Claim:
    paper: str
    text: str
    method: str
    versus: tuple[str, ...]
    quantity: str  # test_metric | train_loss | train_seconds | seconds_to_target
    kind: str  # better | matches
    task: str | None = None  # restrict to classification/regression problems
    paper_numbers: str = ""


CLAIMS: tuple[Claim, ...] = (
    Claim("BPGrad (CVPR 2018)", "beats Adagrad, Adadelta, RMSProp and Adam in test accuracy at "
          "equal epochs", "bpgrad", ("adagrad", "adadelta", "rmsprop", "adam"), "test_metric",
          "better", "classification",
          "DFW paper, CIFAR-10 WRN: BPGrad 88.62 vs Adam 84.86, Adagrad 86.07"),
    Claim("BPGrad (CVPR 2018)", "reaches a lower training loss than Adagrad, Adadelta, RMSProp "
          "and Adam at equal epochs", "bpgrad", ("adagrad", "adadelta", "rmsprop", "adam"),
          "train_loss", "better", None, "paper figures (numbers not confirmed)"),
    Claim("ProxProp (ICLR 2018)", "lowers the training loss faster per epoch than BackProp "
          "(both with Adam)", "proxprop", ("adam",), "train_loss", "better", "classification",
          "CIFAR-10 ConvNet: faster per-epoch decrease; test 70.7% vs 69.6%"),
    Claim("ProxProp (ICLR 2018)", "generalises at least as well as BackProp (both with Adam)",
          "proxprop", ("adam",), "test_metric", "matches", "classification",
          "test 70.7% vs 69.6%; MLP ~56% vs ~54%"),
    Claim("DessiLBI (ICML 2020)", "test accuracy comparable to SGD and Adam", "slbi",
          ("momentum", "adam"), "test_metric", "matches", "classification",
          "Table 1 (not confirmed): DessiLBI Mom-Wd ~= SGD Mom-Wd"),
    Claim("GDSolver (IJCAI 2022)", "lower regression test MSE than SGD and Adam", "gdsolver",
          ("sgd", "adam"), "test_metric", "better", "regression", "31.5% lower MSE"),
    Claim("GDSolver (IJCAI 2022)", "less training time than SGD and Adam on regression",
          "gdsolver", ("sgd", "adam"), "train_seconds", "better", "regression",
          "48% less time"),
    Claim("PHT alternation (arXiv 2017)", "substantially faster convergence (training loss at "
          "equal epochs) than SGD", "pht_alt", ("sgd",), "train_loss", "better", None,
          "no numbers published"),
)

LOWER_IS_BETTER = {"train_loss", "train_seconds", "seconds_to_target"}


@dataclass
class Verdict:
    claim: Claim
    problem: str
    verdict: str
    a_values: list[float]
    b_values: dict[str, list[float]]
    p_values: dict[str, float] = field(default_factory=dict)
    note: str = ""


def collect(store: Store, tag: str = FINAL_TAG) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Per-seed values of each (problem, method) among ``tag`` trials (train fraction 1)."""
    out: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in store.trials(tag=tag):
        if t["train_fraction"] != 1.0 or t["problem"] not in PROBLEMS:
            continue
        prob = PROBLEMS[t["problem"]]
        d = out[(t["problem"], t["method"])]
        if t["status"] == "diverged":
            d["test_metric"].append(-math.inf if prob.higher_is_better else math.inf)
            d["train_loss"].append(math.inf)
        elif t["status"] == "finished":
            d["test_metric"].append(t["final_test_metric"])
            d["train_loss"].append(t["final_train_loss"])
        else:
            continue
        d["train_seconds"].append(t["train_seconds"])
        d["seconds_to_target"].append(time_to_target(prob, store.evals(t["id"]))[0])
    return out


def _oriented(values: list[float], quantity: str, higher_is_better: bool) -> list[float]:
    lower = quantity in LOWER_IS_BETTER or (quantity == "test_metric" and not higher_is_better)
    return [-v for v in values] if lower else list(values)


def _welch(a: list[float], b: list[float], alternative: str, shift: float = 0.0) -> float:
    """p-value of Welch's t-test on a - shift vs b; handles infinities and zero variance."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan
    if any(math.isinf(v) for v in a + b):
        # a diverged seed: compare by ranks (Mann-Whitney) instead of means
        return float(stats.mannwhitneyu([v - shift for v in a], b,
                                        alternative=alternative).pvalue)
    aa = [v - shift for v in a]
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


def judge(a: list[float], bs: dict[str, list[float]], kind: str, margin: float = 0.0
          ) -> tuple[str, dict[str, float]]:
    """Verdict for oriented values (higher is better). Returns (verdict, p-values)."""
    if len(a) < 2 or not bs or any(len(b) < 2 for b in bs.values()):
        return "inconclusive", {}
    pv: dict[str, float] = {}
    if kind == "better":
        better = {n: _welch(a, b, "greater") for n, b in bs.items()}
        worse = {n: _welch(a, b, "less") for n, b in bs.items()}
        pv = better
        if all(p < ALPHA / 2 for p in better.values()):
            return "supported", pv
        if any(p < ALPHA / 2 for p in worse.values()):
            return "not supported", {n: worse[n] for n in bs}
        return "inconclusive", pv
    if kind == "matches":
        noninf = {n: _welch(a, b, "greater", shift=-margin) for n, b in bs.items()}
        inferior = {n: _welch(a, b, "less", shift=-margin) for n, b in bs.items()}
        if all(p < ALPHA for p in noninf.values()):
            return "supported", noninf
        if any(p < ALPHA for p in inferior.values()):
            return "not supported", inferior
        return "inconclusive", noninf
    raise ValueError(f"unknown claim kind {kind!r}; accepted: better, matches")


def evaluate_claims(values: dict[tuple[str, str], dict[str, list[float]]],
                    claims: tuple[Claim, ...] = CLAIMS) -> list[Verdict]:
    """One verdict per (claim, problem) where the method and all comparisons have results."""
    problems = sorted({p for p, _ in values})
    out = []
    for c in claims:
        for p in problems:
            prob = PROBLEMS[p]
            if c.task and prob.task != c.task:
                continue
            if (p, c.method) not in values or any((p, b) not in values for b in c.versus):
                continue
            hib = prob.higher_is_better
            a = _oriented(values[(p, c.method)][c.quantity], c.quantity, hib)
            bs = {b: _oriented(values[(p, b)][c.quantity], c.quantity, hib) for b in c.versus}
            margin = 0.0
            if c.kind == "matches":
                ref = max(abs(statistics.fmean(v)) for v in bs.values()
                          if all(math.isfinite(x) for x in v)) if bs else 1.0
                margin = 0.01 if (c.quantity == "test_metric" and hib) else 0.05 * ref
            verdict, pv = judge(a, bs, c.kind, margin)
            out.append(Verdict(c, p, verdict, values[(p, c.method)][c.quantity],
                               {b: values[(p, b)][c.quantity] for b in c.versus}, pv))
    return out


def _ms(vals: list[float]) -> str:
    fin = [v for v in vals if math.isfinite(v)]
    if not fin:
        return "diverged"
    s = statistics.stdev(fin) if len(fin) > 1 else 0.0
    extra = f" ({len(vals) - len(fin)} div.)" if len(fin) < len(vals) else ""
    return f"{statistics.fmean(fin):.4g} ± {s:.2g}{extra}"


def claims_markdown(verdicts: list[Verdict]) -> str:
    if not verdicts:
        return "No claim could be checked: the store lacks the needed methods' final runs.\n"
    lines = ["| paper | claim | problem | quantity | ours: method | ours: comparisons | test, "
             "p | verdict | paper |", "|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        comps = "; ".join(f"{b} {_ms(x)}" for b, x in v.b_values.items())
        test = "Welch t" if v.claim.kind == "better" else "non-inferiority"
        pv = ", ".join(f"{b} {p:.3g}" for b, p in v.p_values.items()) or "n<2"
        lines.append(f"| {v.claim.paper} | {v.claim.text} | {v.problem} | {v.claim.quantity} | "
                     f"{v.claim.method} {_ms(v.a_values)} | {comps} | {test}: {pv} | "
                     f"**{v.verdict}** | {v.claim.paper_numbers} |")
    return "\n".join(lines) + "\n"
