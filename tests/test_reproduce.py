"""``beyondsgd reproduce``: listing, bad input, a smoke run with resume, the report section,
the verdict helper and the papers' models (ProxProp, BPGrad)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from beyondsgd import models as M
from beyondsgd.bench.reproduce import REGISTRY, report_section
from beyondsgd.bench.reproduce.core import ci_text, compare
from beyondsgd.bench.reproduce.table import stored_outcomes
from beyondsgd.bench.store import Store
from beyondsgd.cli import main

torch.set_num_threads(1)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["reproduce", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_list_shows_every_experiment_with_paper_numbers(capsys):
    rc, out, _ = run_cli(capsys, "--list")
    assert rc == 0
    for name in ("proxprop_table1", "proxprop_convnet", "bpgrad_cifar"):
        assert name in out
    assert "0.091 (Table 1)" in out            # BackProp's best Table 1 entry
    assert "72.9 vs 71.7 (§5.3)" in out        # ProxProp ConvNet best validation accuracy
    for scale in ("paper", "cpu", "smoke"):
        assert f"  {scale:<6} data:" in out
    assert "cost:" in out


@pytest.mark.parametrize("argv, needle", [
    (["nope"], "unknown experiment(s) nope; accepted:"),
    (["proxprop_table1", "--scale", "huge"], "--scale 'huge'; accepted: paper, cpu, smoke"),
    (["proxprop_table1", "--scale", "smoke", "--seeds", "0"], "--seeds 0: accepted"),
    (["proxprop_table1", "--scale", "smoke", "--seeds", "two"], "--seeds 'two' is not"),
    (["proxprop_table1", "--scale", "smoke", "--device", "tpu9"], "--device 'tpu9'"),
    ([], "name an experiment"),
])
def test_bad_input_exits_2_with_one_line_before_any_work(capsys, tmp_path, argv, needle):
    store = tmp_path / "s.db"
    rc, out, err = run_cli(capsys, *argv, "--store", str(store), "--out", str(tmp_path / "o"))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not store.exists() and not (tmp_path / "o").exists()


def test_paper_scale_without_data_exits_2(capsys, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    store = tmp_path / "s.db"
    rc, _, err = run_cli(capsys, "bpgrad_cifar", "--scale", "paper", "--data-dir", str(empty),
                         "--store", str(store))
    assert rc == 2 and "data missing for the paper scale" in err and "CIFAR-10" in err
    assert len(err.strip().splitlines()) == 1 and not store.exists()


def test_smoke_run_resumes_and_report_section_recomputes_from_store(capsys, tmp_path):
    store, out = tmp_path / "s.db", tmp_path / "out"
    args = ("proxprop_convnet", "--scale", "smoke", "--store", str(store), "--out", str(out),
            "--no-plots")
    rc, stdout, err = run_cli(capsys, *args)
    assert rc == 0, err
    assert "4 trials trained, 0 found in the store" in err    # 2 seeds x (Adam, cg3)
    assert "| proxprop_convnet | test accuracy after 1 epochs, ProxProp cg3 (%) | 70.7 (§5.3)" \
        in stdout
    md = (out / "reproduce_smoke.md").read_text()
    assert "changed from the paper at this scale: synthetic data" in md
    rc, stdout2, err = run_cli(capsys, *args)
    assert rc == 0 and "0 trials trained, 4 found in the store" in err
    table = [ln for ln in stdout.splitlines() if ln.startswith("| proxprop_convnet")]
    assert table and table == [ln for ln in stdout2.splitlines()
                               if ln.startswith("| proxprop_convnet")]
    with Store(store, readonly=True) as s:
        runs = stored_outcomes(s)
        assert [(r.experiment.name, r.scale, r.seeds) for r in runs] == \
            [("proxprop_convnet", "smoke", 2)]
        cg3 = next(o for o in runs[0].outcomes
                   if o.quantity.startswith("test accuracy") and "cg3" in o.quantity)
        finals = sorted(100 * t["final_test_metric"] for t in s.trials(method="proxprop"))
        assert sorted(cg3.ours) == pytest.approx(finals, rel=1e-12)
        assert cg3.steps == (2, 4500)   # 1 epoch of 200 images at batch 500 (smoke)
        section = report_section(s, tmp_path / "rep", plots=False)
    assert section.startswith("## Paper vs ours")
    assert "### proxprop_convnet (smoke scale, 2 seeds, budget 2 of the paper's 4500 steps " \
        "(0.044 %))" in section
    with Store(tmp_path / "empty.db") as s:
        assert report_section(s, tmp_path / "rep2", plots=False) == ""


def _welch_p_less(a: list[float], b: list[float]) -> float:
    """One-sided p of mean(a) < mean(b), Welch's t (written out, scipy only for the t cdf)."""
    from scipy import stats

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(stats.t.cdf(t, df))


def test_compare_verdicts_on_hand_made_values():
    a, b = [0.10, 0.12, 0.11], [0.50, 0.55, 0.47]
    verdict, p = compare(a, b, higher_is_better=False)
    assert verdict == "supported"
    assert p == pytest.approx(_welch_p_less(a, b), rel=1e-9)
    assert compare(b, a, higher_is_better=False)[0] == "not supported"
    assert compare([1.0, 2.0, 3.0], [1.5, 2.5, 2.0], True)[0] == "inconclusive"
    assert compare([1.0], [0.0], True)[0] == "inconclusive"          # one seed: no test
    nan = math.nan
    # every baseline seed diverged, none of ours: qualitative win (and the reverse)
    assert compare([0.3, 0.4], [nan, nan], False) == ("supported", 0.0)
    assert compare([nan, nan], [0.3, 0.4], False) == ("not supported", 0.0)
    assert compare([nan, nan], [nan, nan], False)[0] == "inconclusive"
    # non-inferiority with a 1-point margin: 70.5 vs 71.0 is within it, 60 vs 71 is not
    assert compare([70.4, 70.5, 70.6], [70.9, 71.0, 71.1], True, "matches", 1.0)[0] == \
        "supported"
    assert compare([60.0, 60.2, 59.8], [70.9, 71.0, 71.1], True, "matches", 1.0)[0] == \
        "not supported"


def test_ci_text():
    # t(0.975, df=1) = 12.706; sd of (71, 72) = 0.7071 -> half-width 6.35
    assert ci_text([71.0, 72.0]) == "71.5 ± 6.4 (n=2)"
    assert ci_text([0.5, math.nan]) == "0.5 (n=1), 1 diverged"
    assert ci_text([math.nan, math.nan]) == "– (diverged)"


def test_registry_experiments_declare_every_scale():
    for name in ("proxprop_table1", "proxprop_convnet", "bpgrad_cifar"):
        e = REGISTRY[name]
        assert set(e.problems) == set(e.data) == set(e.changes) == {"paper", "cpu", "smoke"}
        assert e.paper_numbers


def test_paper_models_shapes_and_init():
    lin = [m for m in M.proxprop_mlp() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == \
        [(3072, 4000), (4000, 1000), (1000, 4000), (4000, 10)]
    assert M.proxprop_convnet()[-1].in_features == 1280                 # official code
    assert M.proxprop_convnet(third_pool=True)[-1].in_features == 320   # the paper's text
    net = M.bpgrad_cifar_quick(seed=3)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    # cnn_cifar_init.m: 0.01*randn (conv1, 2400 weights), 0.05*randn for the others; zero bias.
    # Sample std of n normals is within 4/sqrt(2n) relative of sigma with overwhelming odds.
    for conv, sigma in zip(convs, (0.01, 0.05, 0.05, 0.05, 0.05)):
        n = conv.weight.numel()
        assert abs(conv.weight.std().item() / sigma - 1) < 4 / math.sqrt(2 * n)
        assert torch.count_nonzero(conv.bias) == 0


def test_table1_value_counts_blown_up_runs_as_diverged():
    from beyondsgd.bench.reproduce.core import is_diverged
    from beyondsgd.bench.reproduce.proxprop import table1_value
    from beyondsgd.bench.run.runner import TrialResult

    def res(status: str, losses: list[float]) -> TrialResult:
        return TrialResult("p", "m", {}, 0, status,
                           evals=[{"epoch": i, "train_loss": v} for i, v in enumerate(losses)])

    assert table1_value(res("finished", [2.3, 1.0, 0.5])) == (0.5, "")
    # a blown-up or diverged run counts at its initial loss (as the suite counts it), marked
    v, note = table1_value(res("finished", [2.3, 5.0, 1.6e11]))
    assert is_diverged(v) and v == 2.3 and note == "seed 0: loss 1.6e+11 > initial 2.3"
    v = table1_value(res("diverged", [2.3, math.nan]))[0]
    assert is_diverged(v) and v == 2.3


def test_doctests_of_the_reproduce_modules_and_paper_models():
    import doctest

    from beyondsgd.bench.reproduce import core, table, values

    for mod in (core, table, values):
        assert doctest.testmod(mod).failed == 0, mod.__name__
    runner = doctest.DocTestRunner()
    for fn in (M.proxprop_mlp, M.proxprop_convnet, M.bpgrad_cifar_quick):
        for t in doctest.DocTestFinder().find(fn, globs={"torch": torch, "nn": torch.nn,
                                                         fn.__name__: fn}):
            runner.run(t)
    assert runner.summarize(verbose=False).failed == 0


def test_stored_wall_sums_the_trials_the_outcomes_use(tmp_path):
    """An experiment's wall time is the sum of its own trials' start-to-end times: trials of an
    earlier recipe under the same tag, and the idle time between invocations, do not count."""
    from beyondsgd.bench.reproduce.table import stored_wall

    tag = "reproduce:exp:cpu"
    with Store(tmp_path / "w.db") as st:
        ids = [st.record_trial(f"k{i}", "digits_mlp", "sgd", {"lr": 0.1}, i, 1, 1.0,
                               tag + (":sgd" if i else ""), {}, "finished", [], [], {},
                               started=s, finished=f)
               for i, (s, f) in enumerate([(100.0, 110.0), (500.0, 530.0), (0.0, 1000.0)])]
        st.record_trial("other", "digits_mlp", "sgd", {"lr": 0.1}, 9, 1, 1.0,
                        "reproduce:exp2:cpu", {}, "finished", [], [], {}, started=0.0,
                        finished=50.0)
        assert stored_wall(st, "exp", "cpu", set(ids[:2])) == pytest.approx(40.0)
        assert stored_wall(st, "exp", "cpu") == pytest.approx(1040.0)
        assert stored_wall(st, "exp", "smoke") is None


# Experiments whose cpu recipe changed (issue 24: 25 % of the paper's steps) and whose new
# trials are not in the committed store until the lead re-runs them; empty this set then.
RERUN_PENDING: set[str] = set()


def test_the_committed_cpu_results_replay_from_their_store(tmp_path):
    """The README's paper-vs-ours table is recomputed from docs/results/reproduce: every cpu
    experiment must still find all its trials there. Trials are keyed by their resolved
    hyperparameters, so a new hyperparameter default in a method the experiments use would
    silently orphan them; this fails first."""
    import shutil
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "docs/results/reproduce/reproduce_cpu.db"
    if not src.exists():
        pytest.skip("docs/results/reproduce/reproduce_cpu.db is not in this checkout")
    db = tmp_path / "copy.db"
    shutil.copyfile(src, db)
    with Store(db, readonly=True) as st:
        runs = stored_outcomes(st)
    assert {r.experiment.name for r in runs} == set(REGISTRY), "an experiment has no cpu results"
    for r in runs:
        assert r.scale == "cpu"
        if r.experiment.name in RERUN_PENDING and r.missing:
            continue   # its recipe changed (issue 24): the lead re-runs it into the store
        assert not r.missing, f"{r.experiment.name}: {r.missing}"
        assert r.outcomes and all(o.verdict for o in r.outcomes)
