"""Export a store: one JSON file per trial in a DeepOBS-like layout
(``problem/method/hyperparameters/seedS.json``) and one CSV of every evaluation.

Folder names are the hyperparameter string when it is short and file-system safe; otherwise a
shortened, sanitised form plus a hash of the full string, so that distinct trials never share a
file. Two trials that still map to one name (e.g. the same setting with another epoch budget)
are told apart by the trial key.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

from .store import Store

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")
MAX_NAME = 120
CSV_FIELDS = ("epoch", "step", "train_seconds", "train_loss", "val_loss", "val_metric",
              "test_loss", "test_metric")


def export_name(text: str, max_len: int | None = None) -> str:
    """A folder name for ``text``: unsafe characters replaced; when that changed or shortened
    it, a hash of the full text is appended so that distinct texts get distinct names."""
    max_len = MAX_NAME if max_len is None else max_len
    safe = _UNSAFE.sub("_", text)
    if safe == text and len(safe) <= max_len and safe not in (".", ".."):
        return safe
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{safe[:max(0, max_len - 12)]}__{digest}"


def trial_path(out: Path, t: dict, max_len: int | None = None) -> Path:
    """Where trial ``t`` (a ``Store.trials()`` row) is written under ``out``."""
    hp = "__".join(f"{k}={v}" for k, v in sorted(t["hparams"].items())) or "default"
    folder = out / export_name(t["problem"], max_len) / export_name(t["method"], max_len) / \
        export_name(hp, max_len)
    stem = f"seed{t['seed']}"
    if t["tag"] or t["train_fraction"] < 1:
        stem += "_" + export_name(f"{t['tag']}_{t['train_fraction']:g}", max_len)
    return folder / f"{stem}.json"


def export_store(store: Store, out: str | Path, max_len: int | None = None
                 ) -> tuple[int, int]:
    """Write every trial of ``store`` under ``out``; returns (trials, JSON files written)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: set[Path] = set()
    trials = store.trials()
    with open(out / "evals.csv", "w", newline="") as fcsv:
        writer = None
        for t in trials:
            data = store.export_json(t["id"])
            path = trial_path(out, t, max_len)
            if path in written:
                path = path.with_name(f"{path.stem}_{t.get('key') or t['id']}.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, default=str, indent=1))
            written.add(path)
            for e in data["evals"]:
                row = {"trial_id": t["id"], "problem": t["problem"], "method": t["method"],
                       "hparams": json.dumps(t["hparams"], sort_keys=True), "seed": t["seed"],
                       "status": t["status"], **{k: e.get(k) for k in CSV_FIELDS}}
                if writer is None:
                    writer = csv.DictWriter(fcsv, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
    return len(trials), len(written)
