"""The command line: list, bench, train, report, export; bad input exits non-zero with a message
listing what is accepted."""

import json

import pytest

from beyondsgd.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in ("digits_mlp", "fmnist_mlp", "fmnist_2c2d", "adam", "sgd", "rmsprop"):
        assert name in out
    assert "lr=0.001" in out


@pytest.mark.parametrize("argv,needle", [
    (["bench", "--problem", "imagenet"], "available: digits_mlp"),
    (["bench", "--methods", "adam,lion"], "unknown method(s) lion; available:"),
    (["bench", "--methods", "adam", "--set", "adam.learning_rate=1"], "accepted: beta1"),
    (["bench", "--methods", "adam", "--set", "adam.lr=fast"], "cannot read 'fast' as float"),
    (["bench", "--methods", "adam", "--set", "sgd.lr=1"], "not among the methods run"),
    (["bench", "--methods", "adam", "--set", "lr=1"], "name the method"),
    (["bench", "--methods", "adam", "--set", "adam.schedule=linear"], "is not one of"),
    (["train", "--problem", "digits_mlp", "--method", "adam", "--set", "lr=nan"], "not finite"),
])
def test_bad_input_exits_2_with_message(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert needle in err


@pytest.mark.parametrize("argv", [["bench", "--epochs", "-3"], ["bench", "--seeds", "0"],
                                  ["train", "--problem", "digits_mlp"]])
def test_argparse_errors(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_bench_report_export(capsys, tmp_path):
    store = str(tmp_path / "r.db")
    code, out, _ = run(capsys, "bench", "--problem", "digits_mlp", "--methods", "sgd,adam",
                       "--seeds", "2", "--epochs", "2", "--store", store, "--set", "adam.lr=3e-3",
                       "--quiet")
    assert code == 0
    assert "| adam(lr=0.003) | 2 |" in out and "| sgd | 2 |" in out
    # re-running skips finished trials and prints the same table
    code2, out2, _ = run(capsys, "bench", "--problem", "digits_mlp", "--methods", "sgd,adam",
                         "--seeds", "2", "--epochs", "2", "--store", store, "--set",
                         "adam.lr=3e-3", "--quiet")
    assert code2 == 0 and out2 == out
    rep = tmp_path / "rep"
    code, out, _ = run(capsys, "report", store, "--out", str(rep))
    assert code == 0 and "digits_mlp" in out
    assert (rep / "report.md").exists() and (rep / "curves_digits_mlp.png").stat().st_size > 1000
    exp = tmp_path / "exp"
    code, out, _ = run(capsys, "export", store, "--out", str(exp))
    assert code == 0 and "exported 4 trials" in out
    files = sorted(exp.rglob("*.json"))
    assert len(files) == 4
    doc = json.loads(files[0].read_text())
    assert {"trial", "evals", "events"} <= set(doc) and len(doc["evals"]) == 3
    assert len((exp / "evals.csv").read_text().strip().splitlines()) == 1 + 4 * 3


def test_train_prints_curve(capsys):
    code, out, _ = run(capsys, "train", "--problem", "digits_mlp", "--method", "sgd",
                       "--epochs", "2", "--set", "lr=0.05")
    assert code == 0
    assert "epoch   2" in out and "status: finished" in out


def test_report_missing_store(capsys, tmp_path):
    code, _, err = run(capsys, "report", str(tmp_path / "none.db"))
    assert code == 2 and "no store" in err
