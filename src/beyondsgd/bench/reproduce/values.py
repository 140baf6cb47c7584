"""Per-seed values and verdicts of ``beyondsgd reproduce`` (re-exported by :mod:`.core`).

Every seed counts, as in the suite: a diverged seed is a :class:`Diverged` value (a float equal to
its untrained network's epoch-0 value, :func:`beyondsgd.bench.analysis.metrics.diverged_value`),
kept in means and tests; only when every seed of a row diverged does it read "– (diverged)" (the
papers' '–'). A row whose method collapsed (:func:`collapsed`) in more than half of its seeds is
"untested" (:func:`collapse_reason`).

>>> compare([0.1, 0.11, 0.12], [0.5, 0.52, 0.49], higher_is_better=False)[0]
'supported'
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from ..run.runner import TrialResult
from ..store import learnt_nothing


# ---- per-seed values and verdicts -----------------------------------------------------------
class Diverged(float):
    """A diverged seed's value: its untrained network's (epoch 0) value, counted in means and
    tests as the suite counts it; ``is_diverged`` tells it from a trained value.

    A change of unit keeps the mark (``100 * v``: a percentage); other arithmetic gives floats.

    >>> v = Diverged(0.1); v + 1, is_diverged(v), is_diverged(100 * v), is_diverged(0.1)
    (1.1, True, True, False)
    """

    def __mul__(self, other: Any) -> Any:
        out = float(self) * other
        return Diverged(out) if isinstance(out, float) else out

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"Diverged({float(self)!r})"


def is_diverged(v: Any) -> bool:
    """Whether ``v`` stands for a diverged seed (a :class:`Diverged` value, or NaN: diverged
    with no finite epoch-0 value to count)."""
    return isinstance(v, Diverged) or (isinstance(v, float) and math.isnan(v))


def finite(values: list[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def collapsed(res: TrialResult) -> bool:
    """Whether a trial learnt nothing: stored as ``collapsed``, or (a store written before that
    status existed) finished with a final training loss within 1 % of its initial one or above
    it (``store.ends_collapsed``)."""
    return learnt_nothing(res.status, res.evals)


def collapse_reason(**groups: list[TrialResult]) -> str | None:
    """"untested: collapsed in k of n seeds (name)" when more than half the trials of any named
    group collapsed (learnt nothing: the row would compare an untrained network); else None."""
    bad = [(name, sum(map(collapsed, rs)), len(rs)) for name, rs in groups.items() if rs]
    bad = [f"collapsed in {k} of {n} seeds ({name})" for name, k, n in bad if 2 * k > n]
    return "untested: " + "; ".join(bad) if bad else None


def diverged_at_start(res: TrialResult, key: str) -> Diverged | float:
    """A diverged trial's ``key`` at epoch 0 (its untrained network), as the suite counts it
    (:func:`beyondsgd.bench.analysis.metrics.diverged_value`); nan without such a value."""
    from ..analysis.metrics import diverged_value

    v = diverged_value(res.evals, key, math.nan)
    return Diverged(v) if math.isfinite(v) else math.nan


def final_value(res: TrialResult, key: str = "train_loss") -> float:
    """The last evaluation's ``key``; a diverged trial (or a last value that is not finite)
    counts at its epoch-0 value (:func:`diverged_at_start`: a :class:`Diverged`); nan when
    there is no evaluation to read."""
    if not res.evals:
        return math.nan
    if res.status == "diverged":
        return diverged_at_start(res, key)
    v = res.evals[-1].get(key)
    return float(v) if v is not None and math.isfinite(v) else diverged_at_start(res, key)


def curve_mean(res: TrialResult, key: str = "train_loss") -> float:
    """Mean of ``key`` over the trained epochs 1..E (the normalised area under the training
    curve: a per-epoch speed, not the converged tail); a diverged trial counts at its epoch-0
    value (:func:`diverged_at_start`)."""
    if res.status == "diverged":
        return diverged_at_start(res, key)
    vals = finite([e.get(key) for e in res.evals if e.get("epoch", 0) >= 1])
    return statistics.fmean(vals) if vals else math.nan


def best_value(res: TrialResult, key: str = "val_metric", higher: bool = True) -> float:
    """Best ``key`` over the trained epochs (a diverged trial: its epoch-0 value, see
    :func:`final_value`; nan when there is none)."""
    if res.status == "diverged":
        return diverged_at_start(res, key)
    vals = finite([e.get(key) for e in res.evals[1:]])
    if not vals:
        return math.nan
    return max(vals) if higher else min(vals)


def compare(a: list[float], b: list[float], higher_is_better: bool, kind: str = "better",
            margin: float = 0.0) -> tuple[str, float]:
    """Verdict on A vs B from per-seed values: (verdict, p-value of the deciding test).

    ``kind="better"``: one-sided Welch tests at alpha/2 each way (claims.judge). ``"matches"``:
    non-inferiority, A - B > -margin (margin in the values' units). A diverged seed
    (:class:`Diverged`) counts at its epoch-0 value, as the suite counts it; when every seed of
    one side diverged and none of the other's, the other side wins outright (p = 0). A NaN
    (diverged with no value to count) is the worst possible value (+inf loss / -inf accuracy),
    compared on ranks (Mann-Whitney, as claims.judge does). Fewer than 2 seeds per side:
    inconclusive.
    """
    from ..analysis.claims import judge

    def orient(vs: list[float]) -> list[float]:
        out = []
        for v in vs:
            v = float(v) if v is not None else math.nan
            if not math.isfinite(v):
                out.append(-math.inf)
            else:
                out.append(v if higher_is_better else -v)
        return out

    aa, bb = orient(a), orient(b)
    da, db = [is_diverged(v) for v in a], [is_diverged(v) for v in b]
    if all(da + db):
        return "inconclusive", math.nan
    # divergence is qualitative: every seed of one side diverged, none of the other's
    if len(aa) >= 2 and len(bb) >= 2:
        if all(db) and not any(da):
            return "supported", 0.0
        if all(da) and not any(db):
            return "not supported", 0.0
    verdict, pv = judge(aa, {"b": bb}, kind, margin)
    return verdict, float(pv.get("b", math.nan))


def ci_text(values: list[float], digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± half-width of the 95% CI (n=k)`` over the seeds: a diverged seed with an epoch-0
    value (:class:`Diverged`) is in the mean and n, and named; a NaN seed (no value) is counted
    as diverged; a +inf seed (a time to target that was never reached) as never reaching it.
    When every seed diverged the row reads "– (diverged)" (the papers' '–').

    >>> ci_text([1.0, 2.0, float("inf"), float("nan")])
    '1.5 ± 6.4 (n=2), 1 never reached, 1 diverged'
    >>> ci_text([1.0, 2.0, Diverged(3.0)])
    '2 ± 2.5 (n=3), 1 diverged (counted at its epoch-0 value)'
    """
    from ..analysis.metrics import mean_ci

    if values and all(is_diverged(v) for v in values):
        return "– (diverged)"
    fin = [v * scale for v in finite(values)]
    n_never = sum(1 for v in values if v == math.inf)
    n_counted = sum(1 for v in values if isinstance(v, Diverged) and math.isfinite(v))
    n_bad = len(values) - len(fin) - n_never
    if not fin:
        if not values:
            return "–"
        return "never reached" if n_never == len(values) else \
            ("– (diverged)" if not n_never else f"– ({n_never} never reached, {n_bad} diverged)")
    m, _, lo, hi = mean_ci(fin)
    txt = f"{m:.{digits}g}" if len(fin) == 1 or math.isnan(lo) else \
        f"{m:.{digits}g} ± {(hi - lo) / 2:.{digits - 1 if digits > 1 else 1}g}"
    txt += f" (n={len(fin)})"
    if n_never:
        txt += f", {n_never} never reached"
    if n_counted:
        txt += f", {n_counted} diverged (counted at {'its' if n_counted == 1 else 'their'} " \
            "epoch-0 value)"
    if n_bad:
        txt += f", {n_bad} diverged"
    return txt


def mean_or_nan(values: list[float]) -> float:
    fin = finite(values)
    return statistics.fmean(fin) if fin else math.nan
