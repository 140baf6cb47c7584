"""The report on a user's problem: claims of its kind, said to be about the user's problem.

A tiny problem defined in a file (200 rows of 2-class data, a linear model, 2 epochs) is run
with four methods and two seeds into a store; then the problem is removed from the registry
(a fresh process without the user's file) and the report and export are made from the store
alone. The report names the problem in a "Your problems" section (file, sha256, task, metric,
epochs) with the sentence that its verdicts are not a test of the paper's experiment, marks it
``(yours)`` wherever the verdicts name it, and runs the classification claims on it.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch

from beyondsgd.bench.problems import PROBLEMS
from beyondsgd.bench.problems.user import load_ref, sha256_file
from beyondsgd.bench.protocol import FINAL_TAG
from beyondsgd.bench.report import write_report
from beyondsgd.bench.run.runner import run_trial
from beyondsgd.bench.store import Store
from beyondsgd.cli import main

NAME = "tiny_user_cls"
FILE = textwrap.dedent(f'''
    import torch
    from torch import nn
    from beyondsgd.bench.problems.user import Problem

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()

    def model(seed):
        torch.manual_seed(seed)
        return nn.Linear(8, 2)

    problem = Problem("{NAME}", model, train=(x[:120], y[:120]), val=(x[120:160], y[120:160]),
                      test=(x[160:], y[160:]), loss="cross_entropy", batch_size=32, epochs=2,
                      description="a tiny two-class problem of the tests")
''')
METHODS = ("adam", "sgd", "momentum", "slbi")


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """(store path, problem file): the trials run, the problem then forgotten."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("user_report")
    path = d / "my_problem.py"
    path.write_text(FILE)
    try:
        prob = load_ref(f"{path}:problem")
        with Store(d / "store.db") as st:
            for m in METHODS:
                for seed in (1, 2):
                    res = run_trial(prob, m, seed=seed, store=st, tag=FINAL_TAG)
                    assert res.status in ("finished", "diverged", "collapsed")
        PROBLEMS.pop(NAME)  # a fresh process: the user's file is not loaded
        yield d / "store.db", path
    finally:
        PROBLEMS.pop(NAME, None)
        torch.set_num_threads(threads)


@pytest.fixture
def forgotten(stored):
    """Each test starts without the problem registered (the report registers it)."""
    PROBLEMS.pop(NAME, None)
    yield stored
    PROBLEMS.pop(NAME, None)


def _section(md: str, heading: str) -> str:
    start = md.index(heading)
    end = md.find("\n## ", start + len(heading))
    return md[start:end if end >= 0 else len(md)]


def test_the_report_names_your_problem_and_runs_the_claims_of_its_kind(forgotten, tmp_path):
    store_path, file = forgotten
    with Store(store_path, readonly=True) as st:
        md_path = write_report(st, tmp_path / "rep", plots=False)
    md = md_path.read_text()
    assert NAME in PROBLEMS and PROBLEMS[NAME].user  # registered from the stored card

    yours = _section(md, "## Your problems")
    assert md.index("## Your problems") < md.index("## Verdicts at a glance")
    assert f"{NAME} (yours)" in yours
    assert str(file) in yours and sha256_file(file)[:12] in yours
    assert "classification" in yours and "accuracy (higher is better)" in yours
    assert "a tiny two-class problem of the tests" in yours
    assert "not a test of the paper's own experiment" in yours
    assert "`beyondsgd reproduce`" in yours
    row = next(line for line in yours.splitlines() if line.startswith(f"| {NAME} (yours)"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "2"  # epochs
    assert "`slbi_accuracy`" in row and "`gdsolver_mse`" not in row  # the claims of its kind

    glance = _section(md, "## Verdicts at a glance")
    head = next(line for line in glance.splitlines() if line.startswith("| claim |"))
    assert f"{NAME} (yours)" in head
    assert "`(yours)`: a problem you defined" in glance
    slbi = next(line for line in glance.splitlines() if line.startswith("| `slbi_accuracy`"))
    assert "🟩" in slbi or "🟥" in slbi or "🟨" in slbi or "⬜" in slbi or "⬚" in slbi
    assert not any(line.startswith("| `gdsolver_mse`") for line in glance.splitlines())

    detail = md[md.index("The claims in detail"):md.index("</details>")]
    rows = [line for line in detail.splitlines() if line.startswith("| `")]
    assert rows and all(f"| {NAME} (yours) |" in line for line in rows)
    assert any(line.startswith("| `slbi_accuracy` |") for line in rows)
    claim_ids = {line.split("`")[1] for line in rows}
    assert claim_ids <= {"slbi_accuracy"}  # only claims whose methods ran, all classification

    assert f"### {NAME} (yours): a tiny two-class problem" in md
    env = _section(md, "## Environment")
    assert "sha256" not in env  # the card is in "Your problems", not the machine's table
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Your problems" in html and f"{NAME} (yours)" in html


def test_cli_report_and_export_work_from_the_store_alone(forgotten, tmp_path, capsys):
    store_path, _ = forgotten
    out = tmp_path / "rep"
    assert main(["report", str(store_path), "--out", str(out), "--no-plots"]) == 0
    assert f"{NAME} (yours)" in (out / "report.md").read_text()
    PROBLEMS.pop(NAME, None)
    assert main(["report", str(store_path), "--out", str(tmp_path / "rep2"), "--no-plots",
                 "--problem", NAME]) == 0
    PROBLEMS.pop(NAME, None)
    exp = tmp_path / "exp"
    assert main(["export", str(store_path), "--out", str(exp)]) == 0
    files = [p for p in Path(exp).rglob("*.json")]
    assert len(files) == len(METHODS) * 2
    recs = [json.loads(p.read_text())["trial"] for p in files]
    assert all(r["problem"] == NAME and r["env"]["problem"]["user"] for r in recs)
    assert (exp / "evals.csv").is_file()
    PROBLEMS.pop(NAME, None)
    deepobs = tmp_path / "deepobs"
    assert main(["export", str(store_path), "--out", str(deepobs), "--format", "deepobs"]) == 0
    runs = [json.loads(p.read_text()) for p in deepobs.rglob("*.json")]
    assert len(runs) == len(METHODS) * 2 and all(r["testproblem"] == NAME for r in runs)
    assert all(r["batch_size"] == 32 and "train_accuracies" in r for r in runs)
    capsys.readouterr()


def test_a_regression_problem_with_its_own_metric_and_no_target(tmp_path):
    """A user problem defined in code (no file), a callable metric (lower is better), no target
    and no tuned baselines' runs: the report says so and does not break, plots included."""
    from torch import nn

    from beyondsgd.bench.problems.user import Problem

    def mae(out, y):
        return (out - y).abs().mean()

    g = torch.Generator().manual_seed(1)
    x = torch.randn(120, 4, generator=g)
    y = x[:, :1] * 2.0 - x[:, 1:2]
    prob = Problem("tiny_user_reg", lambda seed: nn.Linear(4, 1), train=(x[:80], y[:80]),
                   val=(x[80:100], y[80:100]), test=(x[100:], y[100:]), loss="mse", metric=mae,
                   higher_is_better=False, batch_size=20, epochs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Store(tmp_path / "reg.db") as st:
            for seed in (1, 2):
                run_trial(prob, "sgd", seed=seed, store=st)
        PROBLEMS.pop("tiny_user_reg")
        with Store(tmp_path / "reg.db", readonly=True) as st:
            md = write_report(st, tmp_path / "rep", plots=True).read_text()
        PROBLEMS.pop("tiny_user_reg")
        assert main(["report", str(tmp_path / "reg.db"), "--out", str(tmp_path / "cli"),
                     "--no-plots"]) == 0
        assert PROBLEMS["tiny_user_reg"].metric_range == (0.0, math.inf)
    finally:
        PROBLEMS.pop("tiny_user_reg", None)
        torch.set_num_threads(threads)
    yours = _section(md, "## Your problems")
    row = next(line for line in yours.splitlines() if line.startswith("| tiny_user_reg (yours)"))
    assert "defined in code, no file (fingerprint `" in row
    assert "| regression | mae (lower is better) | 2 | from the tuned baselines |" in row
    assert "`gdsolver_mse`" in row and "`slbi_accuracy`" not in row
    assert "### tiny_user_reg (yours): your problem tiny_user_reg" in md
    assert "Test mae (lower is better, range [0, inf))" in md
    assert "validation target none (no target given" in md
    assert (tmp_path / "rep" / "curves_tiny_user_reg.png").is_file()
