"""``bs.bench.compare``: the benchmark on one problem from Python, returning the CLI's tables."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import beyondsgd as bs
from beyondsgd.bench.problems import PROBLEMS
from beyondsgd.bench.problems.user import ProblemError
from beyondsgd.bench.store import Store


def problem(name: str = "cmp_lin", shift: float = 0.0) -> bs.Problem:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g) + shift
    y = (x[:, 0] + x[:, 1] > 0).long()

    def model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))

    return bs.Problem(name, model, (x[:200], y[:200]), (x[200:250], y[200:250]),
                      (x[250:], y[250:]), batch_size=25, epochs=3)


@pytest.fixture(autouse=True)
def clean():
    torch.set_num_threads(1)
    yield
    for n in [n for n, p in PROBLEMS.items() if p.user]:
        del PROBLEMS[n]


def test_defaults_run_returns_the_bench_table_and_resumes(tmp_path):
    store = tmp_path / "c.db"
    res = bs.bench.compare(problem(), methods=["sgd", "adam"], budget=None, seeds=2,
                           store=store)
    assert res.problem == "cmp_lin" and not res.failed
    assert {r["method"] for r in res.rows} == {"sgd", "adam"}
    assert all(r["seeds"] == 2 for r in res.rows)
    assert "| method |" in res.table and "cmp_lin" in res.verdict
    assert str(res).startswith(res.table)
    with Store(store, readonly=True) as st:
        n = len(st.trials())
    again = bs.bench.compare(problem(), methods=["sgd", "adam"], budget=None, seeds=2,
                             store=store)
    assert [r["final_values"] for r in again.rows] == [r["final_values"] for r in res.rows]
    with Store(store, readonly=True) as st:
        assert len(st.trials()) == n == 4


def test_smoke_budget_runs_the_protocol_and_the_claims_of_its_kind(tmp_path):
    res = bs.bench.compare(problem(), methods=["momentum", "adam", "slbi"], budget="smoke",
                           store=tmp_path / "s.db")
    assert not res.failed
    assert {r["tag"] for r in res.rows} == {"final"}
    assert {r["method"] for r in res.rows} == {"momentum", "adam", "slbi"}
    assert "slbi_accuracy" in res.claims  # a classification claim whose methods ran
    assert "gdsolver_mse" not in res.claims


def test_a_changed_problem_in_the_same_store_is_refused(tmp_path):
    store = tmp_path / "c.db"
    bs.bench.compare(problem(), methods=["sgd"], budget=None, seeds=1, store=store)
    del PROBLEMS["cmp_lin"]
    with pytest.raises(ProblemError, match="changed"):
        bs.bench.compare(problem(shift=1.0), methods=["sgd"], budget=None, seeds=1,
                         store=store)


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        bs.bench.compare(problem(), methods=["nope"], store=tmp_path / "x.db")
    with pytest.raises(ValueError, match="accepted: a beyondsgd.Problem"):
        bs.bench.compare(42, store=tmp_path / "x.db")
    assert not (tmp_path / "x.db").exists()


def test_frame_is_a_dataframe_when_pandas_is_installed(tmp_path):
    pd = pytest.importorskip("pandas")
    res = bs.bench.compare(problem(), methods=["sgd"], budget=None, seeds=1,
                           store=tmp_path / "c.db")
    assert isinstance(res.frame, pd.DataFrame) and list(res.frame["method"]) == ["sgd"]


def test_workers_need_the_problem_in_a_file(tmp_path):
    with pytest.raises(ValueError, match="defined in this process, not in a file"):
        bs.bench.compare(problem(), methods=["sgd"], budget="smoke", workers=2,
                         store=tmp_path / "w.db")
