"""The summary table and its verdicts: intervals inside the metric's range, no interval where
none is honest (one seed, identical seeds), rows best-first with the best marked, one verdict
line per problem, and the short terminal summary."""

import math

import pytest
from scipy import stats

from beyondsgd.bench.report import build as R


class FakeStore:
    """The two read methods the report uses, over hand-written trials (no training)."""

    path = ":memory:"

    def __init__(self, trials):
        self._trials = trials

    def trials(self, tag=None):
        return [t for t in self._trials if tag is None or t["tag"] == tag]

    def evals(self, trial_id):
        t = self._trials[trial_id]
        return [{"epoch": 1, "train_seconds": 1.0, "test_metric": t["final_test_metric"],
                 "train_loss": 0.5}]


def _trials(spec):
    """spec: (problem, method, hparams, [final values; None = diverged], tag[, first seed])."""
    out = []
    for problem, method, hp, values, tag, *first in spec:
        for seed, v in enumerate(values, start=first[0] if first else 0):
            out.append({
                "id": len(out), "problem": problem, "method": method, "hparams": hp,
                "seed": seed, "train_fraction": 1.0, "tag": tag, "epochs": 2,
                "status": "diverged" if v is None else "finished", "final_test_metric": v,
                "best_test_metric": v, "final_train_loss": 0.5, "train_seconds": 2.0,
                "epochs_done": 2, "steps": 20, "env": {}})
    return out


def test_seed_interval_is_student_t_clipped_to_the_range():
    vals = [0.98, 0.99, 1.0]
    m, s, lo, hi = R.seed_interval(vals, (0.0, 1.0))
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)  # 0.0248 > 1 - 0.99
    assert m == pytest.approx(0.99) and s == pytest.approx(0.01)
    assert lo == pytest.approx(0.99 - half, rel=1e-9) and hi == 1.0
    # unclipped where the range allows it (MSE), clipped at 0 below
    assert R.seed_interval(vals, (0.0, math.inf))[3] == pytest.approx(0.99 + half, rel=1e-9)
    assert R.seed_interval([0.01, 0.03, 0.02], (0.0, math.inf))[2] == 0.0


@pytest.mark.parametrize("vals", [[0.9], [0.9, 0.9, 0.9], [0.1 + 0.2] * 3, [0.9, math.nan]])
def test_no_interval_for_one_seed_or_identical_seeds(vals):
    m, s, lo, hi = R.seed_interval(vals, (0.0, 1.0))
    assert math.isfinite(m) and s == 0.0 and math.isnan(lo) and math.isnan(hi)


def test_difference_interval_matches_scipy_welch():
    a, b = [0.91, 0.93, 0.92, 0.95], [0.90, 0.89, 0.93]
    d, lo, hi = R.difference_interval(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d == pytest.approx(sum(a) / 4 - sum(b) / 3)
    assert lo == pytest.approx(ci.low, rel=1e-9) and hi == pytest.approx(ci.high, rel=1e-9)
    assert R.difference_interval([0.5, 0.9], [0.1, 0.5], width=1.0)[2] <= 1.0
    b4 = [0.90, 0.89, 0.93, 0.94]
    d, lo, hi = R.difference_interval(a, b4, paired=True)
    ci = stats.ttest_rel(a, b4).confidence_interval(0.95)
    assert d == pytest.approx(sum(a) / 4 - sum(b4) / 4)
    assert lo == pytest.approx(ci.low, rel=1e-9) and hi == pytest.approx(ci.high, rel=1e-9)
    assert math.isnan(R.difference_interval([0.9, 0.8], [0.8, 0.7], paired=True)[1])
    with pytest.raises(ValueError, match="equal lengths"):
        R.difference_interval(a, b, paired=True)
    assert math.isnan(R.difference_interval([0.9], [0.8, 0.7])[1])
    assert math.isnan(R.difference_interval([0.9, 0.9], [0.8, 0.8])[1])


DIGITS = [
    ("digits_mlp", "sgd", {"lr": 0.01}, [0.90, 0.91, 0.92], ""),
    ("digits_mlp", "adam", {"lr": 0.001}, [0.96, 0.97, 0.965], ""),
    # higher mean of the seeds that finished, but one diverged: it counts (here at the metric's
    # worst, 0, as these trials have no untrained evaluation), so bpgrad ranks third
    ("digits_mlp", "bpgrad", {}, [0.99, None, 0.995], ""),
    ("digits_mlp", "momentum", {}, [0.5], ""),
]


def test_rows_best_first_best_marked_and_table_honest():
    rows = R.summarize(FakeStore(_trials(DIGITS)))
    assert [r["method"] for r in rows] == ["adam", "sgd", "bpgrad", "momentum"]
    assert rows[2]["final_mean"] == pytest.approx((0.99 + 0.0 + 0.995) / 3)
    assert [r["best"] for r in rows] == [True, False, False, False]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    table = R.markdown_table(rows)
    assert "| **adam** (best) |" in table
    assert "0.5000 (n=1)" in table and "± 0.0000" not in table
    for r in rows:
        lo, hi = r["final_ci"]
        assert not math.isfinite(lo) or 0.0 <= lo <= hi <= 1.0
    assert "Student t clipped to the metric's range" in table and "Verdict: adam" in table


def test_verdict_line_significant_and_not():
    rows = R.summarize(FakeStore(_trials(DIGITS)))
    line = R.verdict_line(rows)
    assert "\n" not in line
    assert line.startswith("adam best on digits_mlp (final test accuracy, higher is better): "
                           "0.965 vs sgd(lr=0.01) 0.91 (+0.055, 95% CI of difference [")
    assert line.endswith("(paired t over the same seeds), n=3 seeds: significant)")
    close = [("digits_mlp", "sgd", {}, [0.95, 0.97, 0.96], ""),
             ("digits_mlp", "adam", {}, [0.96, 0.97, 0.955], "")]
    line = R.verdict_line(R.summarize(FakeStore(_trials(close))))
    assert line.startswith("adam best") and line.endswith("n=3 seeds: not significant)")
    # other seeds on each side: unpaired (Welch); the same numbers are then not significant
    shifted = [("digits_mlp", "sgd", {}, [0.90, 0.93, 0.96], "", 0),
               ("digits_mlp", "adam", {}, [0.91, 0.94, 0.97], "", 3)]
    line = R.verdict_line(R.summarize(FakeStore(_trials(shifted))))
    assert line.endswith("(Welch t), n=3 seeds: not significant)")
    paired = [shifted[0], (*shifted[1][:5], 0)]
    line = R.verdict_line(R.summarize(FakeStore(_trials(paired))))
    assert line.endswith("every seed's difference equal: no interval)")


def test_verdict_line_lower_is_better_and_few_seeds():
    spec = [("diabetes_mlp", "adam", {}, [0.50, 0.52], ""),
            ("diabetes_mlp", "gdsolver", {}, [0.45], "")]
    line = R.verdict_line(R.summarize(FakeStore(_trials(spec))))
    assert line.startswith("gdsolver best on diabetes_mlp (final test mse, lower is better): "
                           "0.45 vs adam 0.51 (-0.06, n=1 vs 2 seeds: no interval)")
    same = [("digits_mlp", "adam", {}, [0.9, 0.9], "", 0),
            ("digits_mlp", "sgd", {}, [0.8, 0.8], "", 5)]
    assert "every seed equal within each: no interval" in R.verdict_line(
        R.summarize(FakeStore(_trials(same))))
    same[1] = (*same[1][:5], 0)  # the same seeds: paired, constant differences
    assert "every seed's difference equal: no interval" in R.verdict_line(
        R.summarize(FakeStore(_trials(same))))
    alone = [("digits_mlp", "adam", {}, [0.9, 0.92], "")]
    assert R.verdict_line(R.summarize(FakeStore(_trials(alone)))).endswith(
        "(n=2 seeds); nothing to compare with")
    with pytest.raises(ValueError, match="exactly one problem, got 2"):
        R.verdict_line(R.summarize(FakeStore(_trials(spec + alone))))


def test_verdict_prefers_final_runs_over_tuning_trials():
    spec = [("digits_mlp", "sgd", {"lr": 0.5}, [0.99], "tune"),  # selected on validation
            ("digits_mlp", "sgd", {}, [0.93, 0.94], "final"),
            ("digits_mlp", "adam", {}, [0.95, 0.96], "final")]
    rows = R.summarize(FakeStore(_trials(spec)))
    assert [r["tag"] for r in rows] == ["final", "final", "tune"]
    assert rows[2]["best"]  # the best of its own group (the only tuning row)
    assert R.verdict_line(rows).startswith("adam <final> best on digits_mlp")


def test_report_summary():
    spec = DIGITS + [("diabetes_mlp", "adam", {}, [0.50, 0.52], "")]
    trials = _trials(spec) + [{**_trials(DIGITS[:1])[0], "id": 99, "status": "failed"}]
    text = R.report_summary(FakeStore(trials))
    lines = text.splitlines()
    assert lines[0] == "13 trials (11 finished, 1 diverged, 1 failed) on 2 problem(s) with results"
    assert len(lines) == 3
    assert lines[1].startswith("adam best on diabetes_mlp") and lines[1].endswith("compare with")
    assert lines[2] == R.verdict_line(R.summarize(FakeStore(_trials(DIGITS))))
    one = R.report_summary(FakeStore(trials), ["diabetes_mlp"]).splitlines()
    assert one[0].startswith("2 trials (2 finished) on 1 problem(s)") and len(one) == 2
    with pytest.raises(ValueError, match="unknown problem 'nosuch'"):
        R.report_summary(FakeStore(trials), ["nosuch"])


def test_overview_labels_the_std():
    """Issue 24: the overview's caption says what '±' is and when a mean is bold."""
    spec = [("digits_mlp", "adam", {}, [0.95, 0.96, 0.955], "final"),
            ("digits_mlp", "sgd", {}, [0.70, 0.72, 0.705], "final")]
    table = R.overview_table(R.summarize(FakeStore(_trials(spec))), "final")
    caption = table.split("|", 1)[0]
    assert "mean ± std over seeds" in caption and "significant" in caption


def test_overview_bolds_only_a_significant_best():
    """Issue 24: the best mean is bold only where it beats the runner-up significantly: digits
    (0.95-0.96 vs 0.70-0.72, same seeds) yes; fmnist (two noisy, overlapping settings) no."""
    spec = [("digits_mlp", "adam", {}, [0.95, 0.96, 0.955], "final"),
            ("digits_mlp", "sgd", {}, [0.70, 0.72, 0.705], "final"),
            ("fmnist_mlp", "adam", {}, [0.80, 0.90, 0.85], "final"),
            ("fmnist_mlp", "sgd", {}, [0.82, 0.86, 0.84], "final")]
    table = R.overview_table(R.summarize(FakeStore(_trials(spec))), "final")
    row = {line.split("|")[1].strip(): line for line in table.splitlines()
           if line.startswith("| adam") or line.startswith("| sgd")}
    assert "**0.955 ± 0.005" in row["adam"]          # digits: significant
    assert "**" not in row["adam"].split("|")[3]      # fmnist: 0.85 vs 0.84, not significant
    assert "**" not in row["sgd"]
