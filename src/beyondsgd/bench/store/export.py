"""Export a store.

* :func:`export_store` (``beyondsgd export``, the default ``--format json``): one JSON file per
  trial (``problem/method/hyperparameters/seedS.json``, our own nested record: ``trial``,
  ``evals``, ``events``) and one CSV of every evaluation. Folder names are the hyperparameter
  string when it is short and file-system safe; otherwise a shortened, sanitised form plus a
  hash of the full string, so that distinct trials never share a file. Two trials that still
  map to one name (e.g. the same setting with another epoch budget) are told apart by the trial
  key.
* :func:`export_deepobs` (``--format deepobs``): DeepOBS 1.1.2's own result layout, which its
  analyzer (``deepobs.analyzer.shared_utils``) reads.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any

from ..problems import PROBLEMS
from .db import Store

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



# --------------------------------------------------------------------------------------------
# DeepOBS 1.1.2's layout
# --------------------------------------------------------------------------------------------
DEEPOBS_STATUSES = ("finished", "diverged")
_NAME_MAX = 255  # bytes in one path component on common file systems


def deepobs_value(v: Any) -> str:
    """A hyperparameter value as DeepOBS 1.1.2 writes it in a folder name: floats as the
    mantissa of ``"{:.10e}"`` without trailing zeros plus the exponent (0.1 -> ``1.e-01``),
    anything else as ``str``."""
    if isinstance(v, float):
        mantissa, exponent = f"{v:.10e}".split("e")
        return f"{mantissa.rstrip('0')}e{exponent}"
    return str(v)


def _kept_evals(t: dict, evals: list[dict]) -> list[dict]:
    """The evaluations DeepOBS's runner would have made: the leading ones with finite losses,
    and for a diverged trial not the one recorded after the diverging epoch (DeepOBS stops
    without evaluating)."""
    kept = []
    for e in sorted(evals, key=lambda e: e["epoch"]):
        losses = (e.get("train_loss"), e.get("val_loss"), e.get("test_loss"))
        if any(x is None or not math.isfinite(x) for x in losses):
            break
        kept.append(e)
    if t["status"] == "diverged" and len(kept) == len(evals) and len(kept) > 1:
        kept = kept[:-1]
    return kept


def deepobs_record(t: dict, evals: list[dict], batch_size: int | None) -> dict:
    """One trial (a ``Store.trials()`` row and its evaluations) as DeepOBS 1.1.2's runner writes
    a run: flat metadata and per-epoch lists of length ``num_epochs + 1`` (epoch 0 = before
    training); a diverged run is padded with its initial values, as DeepOBS's abort routine
    does. Accuracies are written for classification problems when every evaluation holds the
    training accuracy (``train_metric``); DeepOBS's analyzer reads all three or none.
    ``minibatch_train_losses`` is empty (the store keeps per-epoch evaluations only)."""
    n = int(t["epochs"])
    kept = _kept_evals(t, evals)
    if not kept:
        raise ValueError(f"trial {t['id']} has no finite evaluation to export")
    if kept[-1]["epoch"] < n and t["status"] != "diverged":
        raise ValueError(f"trial {t['id']} ({t['status']}) stops at epoch {kept[-1]['epoch']} "
                         f"of {n} and did not diverge")
    pad = n + 1 - len(kept)
    rows = kept + [kept[0]] * pad
    problem = PROBLEMS.get(t["problem"])
    training_params: dict[str, Any] = {}
    if t.get("train_fraction", 1.0) < 1:
        training_params["train_fraction"] = t["train_fraction"]
    if t.get("tag"):
        training_params["tag"] = t["tag"]
    rec: dict[str, Any] = {
        "testproblem": t["problem"], "batch_size": batch_size, "num_epochs": n,
        "random_seed": t["seed"], "weight_decay": None, "optimizer_name": t["method"],
        "optimizer_hyperparams": t["hparams"], "training_params": training_params,
        "train_losses": [r["train_loss"] for r in rows],
        "valid_losses": [r["val_loss"] for r in rows],
        "test_losses": [r["test_loss"] for r in rows],
        "minibatch_train_losses": [],
    }
    accuracy = problem is None or problem.metric == "accuracy"
    if accuracy and all(r.get("train_metric") is not None for r in rows):
        rec["train_accuracies"] = [r["train_metric"] for r in rows]
        rec["valid_accuracies"] = [r["val_metric"] for r in rows]
        rec["test_accuracies"] = [r["test_metric"] for r in rows]
    return rec


def deepobs_setting_name(rec: dict, hparams: list[str]) -> str:
    """DeepOBS's setting folder: ``num_epochs__E__batch_size__B`` then ``__name__value`` for
    the hyperparameters ``hparams`` and for the training parameters (sorted). A name longer
    than a path component allows keeps its start and gets a hash of the whole name."""
    name = f"num_epochs__{rec['num_epochs']}__batch_size__{rec['batch_size']}"
    for k in sorted(hparams):
        name += f"__{k}__{deepobs_value(rec['optimizer_hyperparams'][k])}"
    for k, v in sorted(rec["training_params"].items()):
        name += f"__{k}__{deepobs_value(v)}"
    return export_name(name, _NAME_MAX - 10)


def export_deepobs(store: Store, out: str | Path) -> dict:
    """Write every finished or diverged trial of ``store`` under ``out`` as DeepOBS 1.1.2 does:
    ``<testproblem>/<optimizer>/<setting>/random_seed__<seed>__<timestamp>.json``.

    The setting folder names the hyperparameters that differ between that method's trials on
    that problem (all of them are in each file's ``optimizer_hyperparams``; DeepOBS reads them
    from there), so names stay within file-system limits. ``batch_size`` is the trial's
    recorded one (``env["batch_size"]``) or else the problem's. The timestamp is the trial's
    finish time (UTC). Returns counts: ``written``, ``skipped`` (reason -> number: trials
    neither finished nor diverged, and trials without a finite evaluation), and ``accuracies``
    (files with accuracies).
    """
    out = Path(out)
    trials = store.trials()
    keep = [t for t in trials if t["status"] in DEEPOBS_STATUSES]
    skipped: dict[str, int] = {}
    for t in trials:
        if t["status"] not in DEEPOBS_STATUSES:
            skipped[t["status"]] = skipped.get(t["status"], 0) + 1
    varying: dict[tuple[str, str], list[str]] = {}
    for t in keep:
        same = [u["hparams"] for u in keep
                if (u["problem"], u["method"]) == (t["problem"], t["method"])]
        names = sorted({k for h in same for k in h})
        varying[t["problem"], t["method"]] = [
            k for k in names if len({json.dumps(h.get(k), sort_keys=True) for h in same}) > 1]
    written, with_acc = 0, 0
    out.mkdir(parents=True, exist_ok=True)
    for t in keep:
        env = t.get("env") or {}
        problem = PROBLEMS.get(t["problem"])
        batch = env.get("batch_size", problem.batch_size if problem else None)
        try:
            rec = deepobs_record(t, store.evals(t["id"]), batch)
        except ValueError:  # no finite evaluation (e.g. a NaN initial loss): not a run
            skipped[f"{t['status']} without a finite evaluation"] = skipped.get(
                f"{t['status']} without a finite evaluation", 0) + 1
            continue
        folder = (out / export_name(t["problem"]) / export_name(t["method"]) /
                  deepobs_setting_name(rec, varying[t["problem"], t["method"]]))
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(t.get("finished") or 0))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"random_seed__{t['seed']}__{stamp}.json"
        if path.exists():
            raise FileExistsError(f"{path} exists: export into an empty folder")
        path.write_text(json.dumps(rec, indent=4))
        written += 1
        with_acc += "train_accuracies" in rec
    return {"written": written, "skipped": skipped, "accuracies": with_acc}
