"""The page a reader takes in at a glance (issue 24): the verdict matrix at the top of the report
(claims x problems coloured by verdict, budget-limited and untested neutral, the reproduce
experiments' verdict counts), the paper-vs-ours figure that pairs each method with its baseline
and never colours a row without a verdict, and the curves' target line, which is the validation
target every time to target uses."""

import importlib.util
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from beyondsgd.bench.analysis.claims import (  # noqa: E402
    CLAIMS,
    StudyVerdicts,
    Verdict,
    targets,
)
from beyondsgd.bench.problems import PROBLEMS  # noqa: E402
from beyondsgd.bench.protocol import FINAL_TAG  # noqa: E402
from beyondsgd.bench.report import figures as F  # noqa: E402
from beyondsgd.bench.report import matrix as M  # noqa: E402
from beyondsgd.bench.report import summarize, write_report  # noqa: E402
from beyondsgd.bench.report.html import STYLE, markdown_to_html  # noqa: E402
from test_figures import hand_made_store, saved_figures  # noqa: E402,F401

CLAIM = {c.id: c for c in CLAIMS}
GREEN, RED, AMBER = "#c7e9c0", "#f7c5c0", "#ffe39a"


def _sv(cid, problem, verdict, note="", unstable=False, budget=None):
    v = Verdict(CLAIM[cid], problem, verdict, [1.0, 2.0], {"adam": [1.0, 2.0]}, note=note)
    if budget is not None:
        v.budget = budget
    return StudyVerdicts(CLAIM[cid], problem, [v], verdict, unstable)


def _cells(html_text: str) -> list[list[tuple[str, str]]]:
    """(class, text) of every cell, row by row, of the first table after the legend."""
    tables = re.findall(r"<table>(.*?)</table>", html_text, re.S)
    rows = re.findall(r"<tr>(.*?)</tr>", tables[1], re.S)
    return [[(c or "", re.sub("<[^>]+>", "", t)) for c, t in
             re.findall(r'<t[dh](?: class="([^"]*)")?>(.*?)</t[dh]>', r)] for r in rows]


RESULTS = [
    _sv("bpgrad_accuracy", "digits_mlp", "supported"),
    _sv("bpgrad_accuracy", "fmnist_mlp", "not supported"),
    _sv("proxprop_test", "digits_mlp", "inconclusive", "underpowered: 31 seeds needed"),
    _sv("proxprop_test", "fmnist_mlp", "supported", unstable=True),
    _sv("gdsolver_mse", "diabetes_mlp", "budget-limited", budget=0.04),
    _sv("gdsolver_time", "diabetes_mlp", "untested", "0 of 9 solves accepted"),
]


def test_matrix_lists_every_claim_and_problem_with_its_verdict_colour():
    md = M.claims_matrix(RESULTS)
    cells = _cells(markdown_to_html(M.legend_table() + "\n" + md, Path("."), standalone=False))
    assert [t for _, t in cells[0]] == ["claim", "diabetes_mlp", "digits_mlp", "fmnist_mlp"]
    body = {row[0][1].split()[0]: row[1:] for row in cells[1:]}
    assert list(body) == ["bpgrad_accuracy", "proxprop_test", "gdsolver_mse", "gdsolver_time"]
    cls = {cid: [c for c, _ in row] for cid, row in body.items()}
    # a classification claim on a regression problem: not applicable, and the reverse
    assert cls["bpgrad_accuracy"] == ["na", "v-supported", "v-not-supported"]
    assert cls["proxprop_test"] == ["na", "v-inconclusive", "v-supported unstable"]
    assert cls["gdsolver_mse"] == ["v-budget-limited", "na", "na"]
    assert cls["gdsolver_time"] == ["v-untested", "na", "na"]
    assert "underpowered: 31 seeds needed" in body["proxprop_test"][1][1]
    assert "unstable" in body["proxprop_test"][2][1]
    # one short line per claim: id, paper, at most eight words
    for row in cells[1:]:
        cid, rest = row[0][1].split(" ", 1)
        assert len(rest.split(":", 1)[1].split()) <= 8, rest
    # the colours: supported green, not supported red, inconclusive amber
    for name, colour in (("supported", GREEN), ("not-supported", RED),
                         ("inconclusive", AMBER)):
        assert re.search(rf"td\.v-{name}[^{{]*\{{background:{colour}", STYLE)


def test_budget_limited_and_untested_are_drawn_neutral():
    md = M.claims_matrix(RESULTS)
    assert "⬜ budget-limited · 4 % of the budget" in md
    assert "⬚ untested: 0 of 9 solves accepted" in md
    for name in ("budget-limited", "untested", "reference-only"):
        rule = re.search(rf"td\.v-{name}[^{{]*\{{([^}}]*)\}}", STYLE).group(1)
        assert not any(c in rule for c in (GREEN, RED, AMBER)), rule
    for v in ("budget-limited", "untested (no solve accepted)", "reference only", "not run"):
        assert M.verdict_colour(v) == M.NEUTRAL
    assert M.verdict_colour("supported") != M.NEUTRAL != M.verdict_colour("not supported")


def test_reproduce_matrix_counts_verdicts_and_states_budgets():
    outs = [SimpleNamespace(experiment="proxprop_table1", verdict=v, budget=b)
            for v, b in (("budget-limited", 0.0044), ("budget-limited", 0.004),
                         ("reference only", None), ("inconclusive", 0.5))]
    outs.append(SimpleNamespace(experiment="bpgrad_cifar", verdict="untested", budget=None))
    md = M.reproduce_matrix(outs)
    cells = _cells("<table></table>" + markdown_to_html(md, Path("."), standalone=False))
    assert [t for _, t in cells[0]][:7] == ["experiment", *M.ORDER]
    pp = dict(zip([t for _, t in cells[0]], cells[1]))
    assert pp["budget-limited"] == ("v-budget-limited", "2")
    assert pp["inconclusive"] == ("v-inconclusive", "1")
    assert pp["supported"] == ("na", "·")
    assert pp["budget (of the paper's steps)"][1] == "0.4 % – 50 %"
    assert dict(zip([t for _, t in cells[0]], cells[2]))["untested"] == ("v-untested", "1")


def _pvo_rows():
    row = {"experiment": "bpgrad_cifar", "paper": None, "unit": "%"}
    return [
        {**row, "quantity": "test accuracy after 3 epochs, BPGrad (%)", "ours": [68.0, 69.0, 70.0],
         "verdict": "budget-limited", "budget": 0.004},
        {**row, "quantity": "test accuracy after 3 epochs, Adam (%)", "ours": [71.0, 72.0, 71.5],
         "verdict": "reference only"},
        {**row, "quantity": "test accuracy after 3 epochs, Adagrad (%)", "ours": [70.0, 70.5],
         "verdict": "reference only"},
        {**row, "experiment": "gdsolver", "quantity": "test accuracy, GDSolver (%)",
         "ours": [80.0, 81.0], "verdict": "untested", "paper": 97.6},
        {**row, "experiment": "pp", "quantity": "test accuracy, ProxProp (%)", "ours": [74.0, 75.0],
         "verdict": "supported", "paper": 70.7, "budget": 0.6},
    ]


def test_paper_vs_ours_pairs_baselines_and_never_colours_a_budget_limited_row(
        tmp_path, saved_figures):  # noqa: F811
    F.paper_vs_ours(_pvo_rows(), tmp_path / "pvo.png")
    (fig,) = saved_figures
    (ax,) = fig.axes
    ticks = [(t.get_text().replace("\n", " "), matplotlib.colors.to_hex(t.get_color()))
             for t in reversed(ax.get_yticklabels())]  # top to bottom
    texts = [t for t, _ in ticks]
    # the method row, then its two baselines right below it
    assert texts[0].startswith("bpgrad_cifar: test accuracy after 3 epochs, BPGrad")
    assert texts[1].startswith("↳ baseline: bpgrad_cifar: test accuracy after 3 epochs, Adam")
    assert texts[2].startswith("↳ baseline: bpgrad_cifar: test accuracy after 3 epochs, Adagrad")
    assert "0.4 % of the paper's budget" in texts[0] and "60 % of the paper's budget" in texts[4]
    colours = [c for _, c in ticks]
    assert colours[:4] == [M.NEUTRAL] * 4  # budget-limited, reference, reference, untested
    assert colours[4] == "#2ca02c"
    # the baselines' means marked on the method's line, their seeds in grey
    squares = [ln for ln in ax.get_lines() if ln.get_marker() == "s"]
    assert len(squares) == 1 and sorted(squares[0].get_xdata()) == pytest.approx([70.25, 71.5])
    assert squares[0].get_ydata()[0] == 4  # the top line: the BPGrad row
    grey = [ln for ln in ax.get_lines() if ln.get_marker() == "o"
            and matplotlib.colors.to_hex(ln.get_color()) == "#8c8c8c"]
    assert {ln.get_ydata()[0] for ln in grey} == {2, 3}


def test_curves_draw_the_validation_target(tmp_path, saved_figures):  # noqa: F811
    with hand_made_store(tmp_path / "s.db", methods=["sgd", "adam", "bpgrad"]) as st:
        rows = [r for r in summarize(st) if r["tag"] == FINAL_TAG]
        F.plot_curves(st, rows, tmp_path)
        tg = targets(st, FINAL_TAG)["digits_mlp"]
    assert not math.isclose(tg, PROBLEMS["digits_mlp"].target)
    fig = saved_figures[0]
    for ax in fig.axes[2:4]:  # the test-metric panels
        (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("validation target")]
        assert line.get_ydata()[0] == pytest.approx(tg)


def test_sensitivity_gives_bpgrad_its_own_axis(tmp_path, saved_figures):  # noqa: F811
    with hand_made_store(tmp_path / "s.db", methods=["sgd", "adam", "bpgrad"]) as st:
        F.sensitivity_section(st, tmp_path)
    (fig,) = saved_figures
    assert len(fig.axes) == 2
    lr, lip = fig.axes
    assert "learning rate" in lr.get_xlabel() and "Lipschitz" in lip.get_xlabel()
    def named(ax):
        return {ln.get_label().split(" (")[0] for ln in ax.get_lines()
                if not ln.get_label().startswith("_")}  # the diverged settings' x marks
    assert named(lr) == {"sgd", "adam"} and named(lip) == {"bpgrad"}


def test_report_and_readme_put_the_matrix_on_top(tmp_path, capsys):
    db = tmp_path / "s.db"
    hand_made_store(db, methods=["sgd", "momentum", "adam", "adagrad", "adadelta", "rmsprop",
                                 "bpgrad", "proxprop", "slbi"]).close()
    from beyondsgd.bench.store import Store

    with Store(db) as st:
        md = write_report(st, tmp_path / "rep", plots=False).read_text()
    assert md.index("## Verdicts at a glance") < md.index("## Overview")
    top = md.index("| claim | digits_mlp |")
    assert top < md.index("<details>") < md.index("| claim | problem")
    html_text = (tmp_path / "rep" / "report.html").read_text()
    assert 'class="v-' in html_text and "<details>" in html_text
    spec = importlib.util.spec_from_file_location(
        "readme_tables", Path(__file__).parents[1] / "benchmarks" / "readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import sys

    argv, sys.argv = sys.argv, ["readme_tables.py", str(db)]
    try:
        mod.main()
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert out.index("| claim | digits_mlp |") < out.index("| method |")


def test_doctests_of_the_matrix_the_converter_and_the_paper_figure():
    import doctest

    from beyondsgd.bench.report import figures_paper, html

    for mod in (M, html, figures_paper):
        assert doctest.testmod(mod).failed == 0, mod.__name__


MATRIX_PROBE = """<script>
window.addEventListener("load", () => {
  const cells = Array.from(document.querySelectorAll("td[class], th[class]")).map(c => ({
    cls: c.className, text: c.textContent, bg: getComputedStyle(c).backgroundColor,
    image: getComputedStyle(c).backgroundImage, top: c.getBoundingClientRect().top}));
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(cells);
  document.body.appendChild(pre);
});
</script>
"""


def test_chromium_shows_the_matrix_coloured_at_the_top(tmp_path):
    """The report as headless Chromium renders it: the legend and the matrix's cells carry
    their verdict's colour (green, red, amber; grey and hatched for budget-limited and
    untested) and the matrix is on the first screen."""
    import html as html_mod
    import json

    from test_report_html import CHROMIUM, _run_chromium

    if CHROMIUM is None:
        pytest.skip("headless Chromium not found (Debian's `chromium` package)")
    db = tmp_path / "s.db"
    hand_made_store(db, methods=["sgd", "momentum", "adam", "adagrad", "adadelta", "rmsprop",
                                 "bpgrad", "proxprop", "slbi"]).close()
    from beyondsgd.bench.store import Store

    with Store(db) as st:
        md_path = write_report(st, tmp_path / "rep", plots=False)
    page = tmp_path / "probe.html"
    page.write_text((md_path.parent / "report.html").read_text()
                    .replace("</body>", MATRIX_PROBE + "</body>"))
    res = _run_chromium(tmp_path, "--dump-dom", "--virtual-time-budget=10000",
                        "--window-size=1280,1000", page.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"no probe in Chromium's DOM (exit {res.returncode}): {res.stderr[-2000:]}"
    cells = json.loads(html_mod.unescape(m.group(1)))
    legend = {c["cls"]: c for c in cells if c["text"] in M.ORDER}
    assert legend["v-supported"]["bg"] == "rgb(199, 233, 192)"
    assert legend["v-not-supported"]["bg"] == "rgb(247, 197, 192)"
    assert legend["v-inconclusive"]["bg"] == "rgb(255, 227, 154)"
    assert legend["v-budget-limited"]["bg"] == "rgb(212, 212, 212)"
    assert "repeating-linear-gradient" in legend["v-untested"]["image"]
    verdict_cells = [c for c in cells if c["cls"].startswith("v-") and c["text"] not in M.ORDER]
    assert verdict_cells, "no coloured cell in the matrix"
    for c in verdict_cells:
        assert c["bg"] == legend[c["cls"].split()[0]]["bg"], c
        assert c["top"] < 1000  # on the first screen


def test_reproduce_matrix_names_an_incomplete_experiment_and_one_budget_once():
    outs = [SimpleNamespace(experiment="gdsolver", verdict="budget-limited", budget=0.0667),
            SimpleNamespace(experiment="gdsolver", verdict="untested", budget=0.06670001),
            SimpleNamespace(experiment="dessilbi", verdict="", budget=None,
                            missing="not every trial has finished (a | b)")]
    lines = M.reproduce_matrix(outs).splitlines()
    assert lines[2].endswith("| 6.7 % |")
    assert lines[3].startswith("| dessilbi | – |")
    assert lines[3].endswith("| incomplete: not every trial has finished (a \\| b) |")


@pytest.mark.parametrize("check, shown", [(True, "survives"), (False, "flips"),
                                          ("flips to inconclusive", "flips to inconclusive"),
                                          (SimpleNamespace(verdict="supported"), "supported")])
def test_the_2x_tuning_check_is_shown_where_the_analysis_gives_one(check, shown):
    r = _sv("bpgrad_accuracy", "digits_mlp", "supported")
    assert "2× tuning" not in M.claims_matrix([r])
    r.tuning_check = check
    assert f"🟩 supported · 2× tuning: {shown} |" in M.claims_matrix([r])
