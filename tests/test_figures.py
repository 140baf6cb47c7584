"""The report's figures: one distinct, stable style per method; legends never over the data
(checked with matplotlib's renderer on the figures as they are saved); the paper-vs-ours figure
draws the paper's number and our mean with its Student t interval."""

import math
import os
import subprocess
import sys

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.container import ErrorbarContainer  # noqa: E402
from scipy import stats  # noqa: E402

from beyondsgd.bench.problems import PROBLEMS  # noqa: E402
from beyondsgd.bench.protocol import FINAL_TAG, TUNE_TAG, search_space  # noqa: E402
from beyondsgd.bench.report import figures as F  # noqa: E402
from beyondsgd.bench.run.trial import summary  # noqa: E402
from beyondsgd.bench.store import Store, trial_key  # noqa: E402
from beyondsgd.methods import METHODS  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def hand_made_store(path, methods=None, problem="digits_mlp", seeds=3, epochs=8):
    """A real store with made-up curves, no training: ``final`` trials of every method (default:
    every registered one; method ``i`` converges at its own rate, the second method's last seed
    diverges at epoch 4) and ``tune`` trials at three values of each method's first tuned
    hyperparameter (the sensitivity plot). Returns the open Store."""
    methods = sorted(METHODS) if methods is None else methods
    prob = PROBLEMS[problem]
    st = Store(path)

    def put(method, hp, seed, tag, rate, diverge_at=None):
        evals = []
        for ep in range(epochs + 1):
            if diverge_at is not None and ep >= diverge_at:
                evals.append({"epoch": ep, "step": 10 * ep, "train_seconds": 0.3 * ep,
                              "train_loss": math.nan, "val_loss": math.nan, "val_metric": 0.1,
                              "test_loss": math.nan, "test_metric": 0.1})
                break
            acc = 0.1 + 0.88 * (1 - math.exp(-rate * ep)) - 0.005 * seed
            loss = 2.3 * math.exp(-rate * ep) + 0.02
            evals.append({"epoch": ep, "step": 10 * ep, "train_seconds": (0.3 + 0.01 * seed) * ep,
                          "train_loss": loss, "val_loss": loss, "val_metric": acc,
                          "test_loss": loss, "test_metric": acc})
        status = "diverged" if diverge_at is not None else "finished"
        st.record_trial(trial_key(problem, method, hp, seed, epochs, 1.0, tag), problem, method,
                        hp, seed, epochs, 1.0, tag, {"python": "3", "torch": "x"}, status,
                        evals, [], summary(prob, evals))

    for i, m in enumerate(methods):
        rate = 0.15 + 0.06 * i
        for seed in range(seeds):
            put(m, {}, seed, FINAL_TAG, rate, 4 if i == 1 and seed == seeds - 1 else None)
        space = search_space(m) if m in METHODS else []
        if space and space[0].low:
            for k, u in enumerate((0.2, 0.5, 0.8)):
                v = math.exp(math.log(space[0].low) + u * math.log(space[0].high / space[0].low))
                put(m, {space[0].name: v}, 0, TUNE_TAG, rate * (1 - abs(u - 0.5)),
                    3 if k == 2 and i % 4 == 0 else None)
    return st


# ---- styles -----------------------------------------------------------------------------
def test_every_registered_method_has_its_own_colour_marker_and_style():
    styles = {m: F.method_style(m) for m in METHODS}
    assert len(styles) >= 15
    colours = [s["color"] for s in styles.values()]
    markers = [s["marker"] for s in styles.values()]
    triples = [(s["color"], str(s["linestyle"]), s["marker"]) for s in styles.values()]
    assert len(set(colours)) == len(colours), sorted(colours)
    assert len(set(markers)) == len(markers)
    assert len(set(triples)) == len(triples)
    assert all(matplotlib.colors.is_color_like(c) for c in colours)
    # baselines solid, every method with a paper of its own not
    for m in ("sgd", "momentum", "adam", "adamw", "adagrad", "adadelta", "rmsprop"):
        assert styles[m]["linestyle"] == "-", m
    for m in set(styles) & {"bpgrad", "gdsolver", "pht_sgd", "proxprop", "slbi"}:
        assert styles[m]["linestyle"] != "-", m


def test_styles_depend_on_the_name_only(monkeypatch):
    """The same style whichever methods a store or the registry holds, in every process
    (the fallback for an unregistered name hashes with MD5, not the salted ``hash``)."""
    before = {m: F.method_style(m) for m in [*METHODS, "my_new_method", "x"]}
    monkeypatch.setattr(F, "METHODS", {"sgd": METHODS["sgd"]})
    assert {m: F.method_style(m) for m in before} == before
    code = ("from beyondsgd.bench.report.figures import method_style as s; "
            "print(repr([s('my_new_method'), s('x'), s('slbi')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, timeout=120, check=True)
    assert out.stdout.strip() == repr([before["my_new_method"], before["x"], before["slbi"]])
    assert F.method_style("my_new_method") != F.method_style("my_new_methoe")


def test_a_second_row_of_a_method_keeps_colour_and_changes_line_style():
    a, b, c = F._styles_for([{"method": "adam"}, {"method": "adam"}, {"method": "sgd"}])
    assert a["color"] == b["color"] and a["marker"] == b["marker"]
    assert a["linestyle"] != b["linestyle"] and c == F.method_style("sgd")


# ---- legends off the data -----------------------------------------------------------------
def _overlaps(fig):
    """(legend text, axes index) pairs whose display boxes intersect, after drawing."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [(leg.get_texts()[0].get_text(), i) for leg in legends
            for i, ax in enumerate(fig.axes)
            if leg.get_window_extent(r).overlaps(ax.get_window_extent(r))]


@pytest.fixture
def saved_figures(monkeypatch):
    """Every figure the module saves, kept open (with its legend positions) after saving."""
    kept = []
    real = F._save_figure

    class _KeepOpen:
        @staticmethod
        def close(fig):
            kept.append(fig)

    monkeypatch.setattr(F, "_save_figure", lambda plt, fig, path: real(_KeepOpen, fig, path))
    yield kept
    import matplotlib.pyplot as plt

    for fig in kept:
        plt.close(fig)


def test_the_overlap_check_sees_a_legend_inside_the_axes():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    for i in range(15):
        ax.plot([0, 1], [i, i + 1], label=f"method {i}")
    ax.legend(loc="center")
    assert _overlaps(fig)
    plt.close(fig)


def test_no_legend_covers_the_data(tmp_path, saved_figures):
    with hand_made_store(tmp_path / "s.db") as st:
        rows = [{"problem": "digits_mlp", "method": m, "label": f"{m}(lr=0.01)",
                 "trial_ids": [t["id"] for t in st.trials(tag=FINAL_TAG, method=m)],
                 "seconds_to_target": 1.0 + i} for i, m in enumerate(sorted(METHODS))]
        rows.append({**rows[0], "label": "adadelta(lr=1)"})  # a second row of one method
        rows.append({"problem": "linreg", "method": "sgd", "label": "sgd", "trial_ids": [],
                     "seconds_to_target": math.inf})
        curves = F.plot_curves(st, rows[:-1], tmp_path)
        _, profile = F.profile_section(rows, tmp_path)
        sens = F.sensitivity_section(st, tmp_path)
    pvo = F.paper_vs_ours(_rows(), tmp_path / "pvo.png")
    paths = [*curves, profile, *sens, pvo]
    assert len(saved_figures) == len(paths) == 4
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC
    for fig in saved_figures:
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert legends, fig
        assert not _overlaps(fig), fig.texts[0].get_text() if fig.texts else fig
    curves_fig = saved_figures[0]
    (leg,) = curves_fig.legends
    texts = [t.get_text() for t in leg.get_texts()]
    # every row once, the target line, and the note on the diverged seed of the second method
    assert len(texts) == len(rows) - 1 + 2
    # named by method, by full label where a method has two rows (the first method here)
    first, second = sorted(METHODS)[:2]
    assert texts[:3] == [f"{first}(lr=0.01)", f"{second} (1/3 div.)", sorted(METHODS)[2]]
    assert texts[-3] == "adadelta(lr=1)" and texts[-1].startswith("after a div")
    assert texts[-2].startswith("validation target")  # the target every time to target uses
    # every method drawn in its own style, in every panel
    for ax in curves_fig.axes:
        lines = {ln.get_label().split(" (")[0]: ln for ln in ax.get_lines()}
        for m in METHODS:
            ln = lines[f"{m}(lr=0.01)" if m == first else m]
            assert matplotlib.colors.same_color(ln.get_color(), F.method_style(m)["color"])
            assert ln.get_marker() == F.method_style(m)["marker"]


# ---- paper vs ours --------------------------------------------------------------------
def _rows():
    return [
        {"experiment": "gdsolver fmnist", "quantity": "test accuracy", "paper": 0.89,
         "ours": [0.87, 0.88, 0.885], "unit": "accuracy", "verdict": "supported"},
        {"experiment": "pht mnist", "quantity": "test accuracy", "paper": 0.98,
         "ours": [0.95, math.nan, 0.96], "unit": "accuracy", "verdict": "not supported"},
        {"experiment": "slbi", "quantity": "sparsity", "paper": None, "ours": [0.9],
         "unit": "accuracy", "verdict": "inconclusive"},
        {"experiment": "gdsolver toy", "quantity": "time to target", "paper": 10.0,
         "ours": [3.0, 5.0, math.inf, 4.0], "unit": "seconds", "verdict": "inconclusive"},
        {"experiment": "pht", "quantity": "empty", "paper": 3.0, "ours": [], "unit": "seconds",
         "verdict": "not run"},
    ]


def test_paper_vs_ours_draws_the_paper_mark_and_our_t_interval(tmp_path, saved_figures):
    path = F.paper_vs_ours(_rows(), tmp_path / "sub" / "pvo.png")
    assert path == tmp_path / "sub" / "pvo.png" and path.read_bytes()[:8] == PNG_MAGIC
    (fig,) = saved_figures
    acc, secs = fig.axes
    assert [t.get_text() for t in acc.get_yticklabels()] == [
        "slbi: sparsity [inconclusive, no paper number]",
        "pht mnist: test accuracy [not supported, 1 of 3 not finite]",
        "gdsolver fmnist: test accuracy [supported]"]
    assert "1 of 4 not finite" in secs.get_yticklabels()[1].get_text()
    # verdicts coloured: inconclusive amber, not supported red, supported green
    assert [matplotlib.colors.to_hex(t.get_color()) for t in acc.get_yticklabels()] == [
        "#b07d00", "#d62728", "#2ca02c"]
    assert F._verdict_colour("supported (unstable)") == F._verdict_colour("unstable")
    paper = [(ln.get_xdata()[0], ln.get_ydata()[0]) for ax in (acc, secs)
             for ln in ax.get_lines() if ln.get_marker() == "D"]
    assert paper == [(0.98, 1), (0.89, 2), (3.0, 0), (10.0, 1)]
    bars = {}
    for ax in (acc, secs):
        for c in ax.containers:
            assert isinstance(c, ErrorbarContainer)
            (seg,) = c.lines[2][0].get_segments()
            bars[(ax.get_xlabel(), seg[0][1])] = (seg[0][0], seg[1][0])
    # independent Student t intervals: gdsolver fmnist (3 seeds), toy (3 finite of 4)
    for key, vals, clip in ((("accuracy", 2), [0.87, 0.88, 0.885], (0.0, 1.0)),
                            (("seconds", 1), [3.0, 5.0, 4.0], (0.0, math.inf))):
        lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=sum(vals) / len(vals),
                                  scale=stats.sem(vals))
        assert bars[key] == pytest.approx((max(lo, clip[0]), min(hi, clip[1])), rel=1e-9)
    # pht mnist's interval (0.95, 0.96) reaches past 1: clipped at 1
    assert bars[("accuracy", 1)][1] == 1.0
    assert len(bars) == 3  # one seed (slbi) and no seeds: no interval


def test_paper_vs_ours_refuses_bad_rows_and_writes_nothing_for_none(tmp_path):
    assert F.paper_vs_ours([], tmp_path / "x.png") is None and not (tmp_path / "x.png").exists()
    bad = {k: v for k, v in _rows()[0].items() if k != "unit"}
    with pytest.raises(ValueError, match="row 0 .*lacks unit"):
        F.paper_vs_ours([bad], tmp_path / "x.png")
    with pytest.raises(ValueError, match="paper must be a number or None, got '0.9'"):
        F.paper_vs_ours([{**_rows()[0], "paper": "0.9"}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="ours must be a list"):
        F.paper_vs_ours([{**_rows()[0], "ours": 0.9}], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_sensitivity_of_an_error_metric_log_scale_and_divergence_at_the_worst_edge(
        tmp_path, saved_figures):
    """MSE over decades is drawn in log scale (else one bad setting flattens the rest), and a
    diverged setting is an x at the *top* (the worst MSE), not at the floor."""
    prob = PROBLEMS["diabetes_mlp"]
    assert not prob.higher_is_better
    with Store(tmp_path / "s.db") as st:
        for lr, val in ((1e-3, 0.5), (1e-2, 0.6), (1e-1, 1700.0), (1.0, None)):
            evals = [{"epoch": e, "step": e, "train_seconds": e, "train_loss": v, "val_loss": v,
                      "val_metric": v, "test_loss": v, "test_metric": v}
                     for e, v in ((0, 1.0), (1, math.nan if val is None else val))]
            st.record_trial(trial_key("diabetes_mlp", "sgd", {"lr": lr}, 0, 1, 1.0, TUNE_TAG),
                            "diabetes_mlp", "sgd", {"lr": lr}, 0, 1, 1.0, TUNE_TAG, {},
                            "diverged" if val is None else "finished", evals, [],
                            summary(prob, evals))
        (path,) = F.sensitivity_section(st, tmp_path)
    (fig,) = saved_figures
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    (curve, cross) = ax.get_lines()
    assert list(curve.get_xdata()) == [1e-3, 1e-2, 1e-1, 1.0]
    assert list(curve.get_ydata()[:3]) == [0.5, 0.6, 1700.0]
    assert cross.get_marker() == "x" and list(cross.get_xdata()) == [1.0]
    assert cross.get_ydata()[0] == ax.get_ylim()[1] > 1700.0
