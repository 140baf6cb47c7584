"""The command line: list, bench, train, report, export; bad input exits non-zero with a message
listing what is accepted."""

import json
import re

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
    assert "| adam(lr=0.003) | 2 |" in out.replace("**", "").replace(" (best)", "")
    assert "| sgd | 2 |" in out and "Verdict: " in out
    # re-running skips finished trials, says so, and prints the same table
    code2, out2, err2 = run(capsys, "bench", "--problem", "digits_mlp", "--methods", "sgd,adam",
                            "--seeds", "2", "--epochs", "2", "--store", store, "--set",
                            "adam.lr=3e-3", "--quiet")
    assert code2 == 0 and out2 == out and "skipped 4 finished trials" in err2
    rep = tmp_path / "rep"
    code, out, _ = run(capsys, "report", store, "--out", str(rep))
    # a short summary and the report's path, not the whole report
    assert code == 0 and "digits_mlp" in out and f"report: {rep / 'report.md'}" in out
    assert len(out.splitlines()) < 10
    assert (rep / "report.md").exists() and (rep / "curves_digits_mlp.png").stat().st_size > 1000
    exp = tmp_path / "exp"
    code, out, _ = run(capsys, "export", store, "--out", str(exp))
    assert code == 0 and "exported 4 trials: 4 JSON files" in out
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
    status = out.strip().splitlines()[-1]
    assert re.fullmatch(r"status: finished; final test accuracy 0\.\d{4}; best 0\.\d{4}", status)


def test_report_missing_store(capsys, tmp_path):
    code, _, err = run(capsys, "report", str(tmp_path / "none.db"))
    assert code == 2 and "no store" in err


def test_version(capsys):
    import beyondsgd

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"beyondsgd {beyondsgd.__version__}"


def test_runtime_failures_are_printed_once_with_a_count(capsys, tmp_path, monkeypatch):
    from beyondsgd.methods.baselines import SGD

    def boom(self, model, batch, loss_fn):
        raise ValueError("boom at run time")

    monkeypatch.setattr(SGD, "train_step", boom)
    code, _, err = run(capsys, "bench", "--problem", "digits_mlp", "--methods", "sgd",
                       "--seeds", "3", "--epochs", "1", "--store", str(tmp_path / "r.db"))
    assert code == 1  # (with the progress bar: it must survive failed trials)
    assert err.count("boom at run time") == 2  # the first failure, then the count
    assert "3 trials failed: ValueError: boom at run time (first: digits_mlp/sgd/seed0)" in err


def test_bench_says_resumed_and_busy(capsys, tmp_path, monkeypatch):
    from beyondsgd import cli
    from beyondsgd.bench.run import batch as batch
    from beyondsgd.bench.run.runner import TrialResult
    from beyondsgd.bench.store import Store

    store = tmp_path / "r.db"
    with Store(store) as st:  # a trial interrupted after its first epoch
        cli.run_trial("digits_mlp", "sgd", {}, seed=0, epochs=2, store=st, stop_after_epoch=1)
    code, _, err = run(capsys, "bench", "--problem", "digits_mlp", "--methods", "sgd",
                       "--seeds", "1", "--epochs", "2", "--store", str(store), "--quiet")
    assert code == 0 and "resumed trial digits_mlp/sgd/seed0 at epoch 1" in err

    def busy(problem, method, hp, seed, **kw):
        return TrialResult(problem, method, hp, seed, "running", skipped=False, busy=True)

    monkeypatch.setattr(batch, "run_trial", busy)
    code, _, err = run(capsys, "bench", "--problem", "digits_mlp", "--methods", "sgd",
                       "--seeds", "2", "--epochs", "3", "--store", str(store), "--quiet")
    assert code == 0 and "2 trials busy in another process" in err


def test_export_names_are_unique(capsys, tmp_path, monkeypatch):
    from beyondsgd.bench.store import Store
    from beyondsgd.bench.store.export import export_name

    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert export_name(long_a) != export_name(long_b) and len(export_name(long_a)) <= 120
    assert export_name("lr=0.1") == "lr=0.1" and "/" not in export_name("a/../b")
    store = tmp_path / "r.db"
    with Store(store) as st:  # two trials whose hyperparameter strings differ only late
        for i, hp in enumerate(({"lr": 0.1, "schedule": "step", "step_size": 1},
                                {"lr": 0.1, "schedule": "step", "step_size": 2})):
            key = f"k{i}"
            tid = st.claim_trial(key, "digits_mlp", "sgd", hp, 0, 1, 1.0, "", {}).trial_id \
                if hasattr(st, "claim_trial") else \
                st.begin_trial(key, "digits_mlp", "sgd", hp, 0, 1, 1.0, "", {})
            st.end_trial(tid, "finished", {})
    from beyondsgd.bench.store import export as export

    monkeypatch.setattr(export, "MAX_NAME", 30)  # makes both folder names shortened
    code, out, _ = run(capsys, "export", str(store), "--out", str(tmp_path / "exp"))
    assert code == 0 and "exported 2 trials: 2 JSON files" in out
    assert len(list((tmp_path / "exp").rglob("*.json"))) == 2


def test_suite_prints_a_summary_and_the_report_path(capsys, tmp_path, monkeypatch):
    from beyondsgd.bench.protocol import suite as suite

    store = str(tmp_path / "s.db")
    code, _, _ = run(capsys, "bench", "--problem", "digits_mlp", "--methods", "sgd,adam",
                     "--seeds", "2", "--epochs", "1", "--store", store, "--quiet")
    assert code == 0

    def fake_suite(budget, store_path, methods, **kw):  # the trials above stand for the suite
        return suite.SuiteResult(budget, store_path, jobs=4, seconds=1.0, failed=[
            f"digits_mlp/slbi/tune/seed{s}: ValueError: refused" for s in range(3)])

    monkeypatch.setattr(suite, "run_suite", fake_suite)
    code, out, err = run(capsys, "suite", "--budget", "smoke", "--store", store, "--out",
                         str(tmp_path / "rep"), "--quiet")
    assert code == 1
    assert len(out.splitlines()) < 10 and f"report: {tmp_path / 'rep' / 'report.md'}" in out
    assert "4 trials (4 finished)" in out
    assert err.count("refused") == 1
    assert "3 trials failed: ValueError: refused (first: digits_mlp/slbi/tune/seed0)" in err


def test_train_failure_at_run_time_is_one_line(capsys, monkeypatch):
    from beyondsgd.methods.baselines import SGD

    def boom(self, model, batch, loss_fn):
        raise ValueError("boom at run time")

    monkeypatch.setattr(SGD, "train_step", boom)
    monkeypatch.delenv("BEYONDSGD_DEBUG", raising=False)
    code, _, err = run(capsys, "train", "--problem", "digits_mlp", "--method", "sgd",
                       "--epochs", "1")
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "beyondsgd train: error: the trial failed at run time: ValueError: boom at run time "
        "(run with BEYONDSGD_DEBUG=1 for the traceback)")


def test_out_on_read_only_media_is_refused_before_any_work(tmp_path):
    """`bench --out DIR` on read-only media ran the whole bench, then failed writing the report
    (exit 2 after the work); now a probe file is tried first: nothing trained, no store made."""
    import sys

    import read_only_media

    media = tmp_path / "ro"
    media.mkdir()
    if not read_only_media.available(media):
        pytest.skip("no read-only bind mount here (unshare --mount --map-root-user)")
    store = tmp_path / "s.db"
    res = read_only_media.run(media, f"{sys.executable} -m beyondsgd.cli bench --methods sgd "
                                     f"--epochs 1 --seeds 1 --quiet --store {store} "
                                     f"--out {media}/report")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert f"--out '{media}/report' cannot be written (Read-only file system" in line, line
    assert not store.exists() and list(media.iterdir()) == []


def test_ci_run_says_it_installs_system_packages_and_prints_a_line_before_each():
    """A newcomer running .ci/run learns at its top, and from a printed line, that it installs
    system packages with apt-get (it did so silently, output sent to /dev/null)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    header = text.split("set -euo pipefail")[0]
    assert "SYSTEM packages" in header
    assert "dataset-fashion-mnist" in header and "chromium" in header
    lines = text.splitlines()
    installs = [(i, m.group(1)) for i, line in enumerate(lines)
                if not line.lstrip().startswith("#")
                for m in [re.search(r"apt-get install -y ([\w-]+)", line)] if m]
    assert [pkg for _, pkg in installs] == ["dataset-fashion-mnist", "chromium"]
    for i, pkg in installs:
        said = [x for x in lines[max(0, i - 2):i] if x.strip().startswith("echo")]
        assert any(f"installing the system package {pkg}" in x for x in said), (pkg, said)
