"""benchmarks/speed.py (issue 26): the format of its output, never its timings."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["speed_script"] = mod               # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("speed_script", None)


def test_quick_slbi_row_prints_ratio_net_threads_load_and_writes_json(speed, tmp_path, capsys):
    out = tmp_path / "speed.json"
    speed.main(["--quick", "--only", "slbi_lenet5", "--out", str(out)])
    text = capsys.readouterr().out
    assert re.search(r"load average \(1/5/15 min\) [\d.]+ [\d.]+ [\d.]+", text)
    row = [ln for ln in text.splitlines() if ln.startswith("ROW slbi_lenet5 |")]
    assert len(row) == 1, text
    assert re.search(r"\| net fmnist_lenet5 .*\| B 128 \| threads 1 \| ratio [\d.]+ "
                     r"\[[\d.]+-[\d.]+\] \(from optimizer time [\d.]+\) \| goal <= 1.05 \| "
                     r"load [\d. ]+ -> [\d. ]+ \|", row[0]), row[0]
    assert "| ratio | net | shape, threads |" in text           # the Markdown table
    saved = json.loads(out.read_text())
    r = saved["rows"]["slbi_lenet5"]
    assert r["ratio"] > 0 and r["min"] <= r["ratio"] <= r["max"] and r["threads"] == 1
    assert {"net", "shape", "load_before", "load_after", "rounds"} <= set(r)
    assert saved["last_run"]["quick"] is True and saved["last_run"]["rows"] == ["slbi_lenet5"]

    speed.main(["--markdown", "--out", str(out)])                # the README table, from JSON
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| ratio | net |") and len(table) == 3
    assert "fmnist_lenet5 (LeNet-5)" in table[2]
    speed.main(["--markdown", "--out", str(out), "--before", str(out)])   # a before column
    table = capsys.readouterr().out.splitlines()
    assert "| before: median [min-max] |" in table[0] and table[2].count(" [") >= 2


def test_rows_and_groups_are_selectable(speed):
    names = {r.name for r in speed.ROWS}
    assert {"slbi_mlp", "slbi_lenet5", "slbi_2c2d", "proxprop_official"} <= names
    assert [r.name for r in speed.select("slbi")] == ["slbi_mlp", "slbi_lenet5", "slbi_2c2d"]
    assert speed.official_row(True)["ratio"] is None
    with pytest.raises(SystemExit, match="unknown rows"):
        speed.select("slbi,nonsense")


def test_official_needs_a_directory_with_the_official_code(speed, tmp_path, monkeypatch):
    """--official names a directory holding the official ProxProp.py; anything else is one
    clear refusal before any timing, and without it the row says it was not measured."""
    monkeypatch.delenv(speed.OFFICIAL_ENV, raising=False)
    with pytest.raises(SystemExit, match="no ProxProp.py there"):
        speed.main(["--official", str(tmp_path), "--only", "official", "--no-save"])
    assert "--official" in speed.official_row(True)["note"]
