"""Results store: one SQLite file, written as results happen.

Schema (``SCHEMA`` below is the source of truth)::

    trials  one row per trial (problem, method, resolved hyperparameters as JSON, seed, epochs,
            train_fraction, tag) identified by ``key``, a hash of exactly those fields; ``status``
            is running | finished | diverged | failed; summary columns are filled when it ends.
    evals   one row per evaluation (trial_id, epoch): step, cumulative training seconds
            (evaluation excluded), train loss (fixed train subset), validation and test loss and
            metric, and ``extras`` (JSON: method metrics such as SLBI support sizes).
    events  method events (trial_id, epoch, step, kind, JSON data): MILP solves, support updates.

The store uses WAL mode and a busy timeout so several worker processes can write to it.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    id              INTEGER PRIMARY KEY,
    key             TEXT UNIQUE NOT NULL,
    problem         TEXT NOT NULL,
    method          TEXT NOT NULL,
    hparams         TEXT NOT NULL,
    seed            INTEGER NOT NULL,
    epochs          INTEGER NOT NULL,
    train_fraction  REAL NOT NULL DEFAULT 1.0,
    tag             TEXT NOT NULL DEFAULT '',
    status          TEXT NOT NULL,
    error           TEXT,
    started         REAL,
    finished        REAL,
    epochs_done     INTEGER DEFAULT 0,
    steps           INTEGER DEFAULT 0,
    train_seconds   REAL DEFAULT 0,
    final_train_loss  REAL,
    final_val_metric  REAL,
    final_test_metric REAL,
    best_val_metric   REAL,
    best_test_metric  REAL,
    env             TEXT
);
CREATE TABLE IF NOT EXISTS evals (
    trial_id      INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    epoch         INTEGER NOT NULL,
    step          INTEGER NOT NULL,
    train_seconds REAL NOT NULL,
    train_loss    REAL,
    val_loss      REAL,
    val_metric    REAL,
    test_loss     REAL,
    test_metric   REAL,
    extras        TEXT,
    PRIMARY KEY (trial_id, epoch)
);
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY,
    trial_id  INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    epoch     INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    data      TEXT
);
CREATE INDEX IF NOT EXISTS trials_by_problem ON trials(problem, method);
CREATE INDEX IF NOT EXISTS events_by_trial ON events(trial_id, epoch);
"""

EVAL_FIELDS = ("epoch", "step", "train_seconds", "train_loss", "val_loss", "val_metric",
               "test_loss", "test_metric")


def _clean(v: Any) -> Any:
    """JSON/SQLite-friendly value: NaN/inf become None, numpy/torch scalars become floats."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            v = v.item()
        except (ValueError, RuntimeError):
            return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), sort_keys=True, default=str)


def trial_key(problem: str, method: str, hparams: dict, seed: int, epochs: int,
              train_fraction: float = 1.0, tag: str = "") -> str:
    payload = dumps({"problem": problem, "method": method, "hparams": hparams, "seed": seed,
                     "epochs": epochs, "train_fraction": train_fraction, "tag": tag})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class Store:
    """The results database (SQLite). ``Store(":memory:")`` works for tests."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        if self.path != ":memory:":
            self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ------------------------------------------------------------------------
    def begin_trial(self, key: str, problem: str, method: str, hparams: dict, seed: int,
                    epochs: int, train_fraction: float, tag: str, env: dict) -> int:
        """Create the trial row (or reset a failed one); returns its id."""
        row = self.trial_by_key(key)
        if row is not None:
            self.conn.execute("UPDATE trials SET status='running', error=NULL WHERE id=?",
                              (row["id"],))
            return int(row["id"])
        cur = self.conn.execute(
            "INSERT INTO trials (key, problem, method, hparams, seed, epochs, train_fraction, tag,"
            " status, started, env) VALUES (?,?,?,?,?,?,?,?,'running',?,?)",
            (key, problem, method, dumps(hparams), seed, epochs, train_fraction, tag, time.time(),
             dumps(env)),
        )
        return int(cur.lastrowid)

    def add_eval(self, trial_id: int, row: dict) -> None:
        extras = {k: v for k, v in row.items() if k not in EVAL_FIELDS}
        vals = [_clean(row.get(k)) for k in EVAL_FIELDS]
        self.conn.execute(
            "INSERT OR REPLACE INTO evals (trial_id, epoch, step, train_seconds, train_loss,"
            " val_loss, val_metric, test_loss, test_metric, extras) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (trial_id, *vals, dumps(extras)),
        )
        self.conn.execute("UPDATE trials SET epochs_done=?, steps=?, train_seconds=? WHERE id=?",
                          (row["epoch"], row["step"], row["train_seconds"], trial_id))

    def add_events(self, trial_id: int, epoch: int, step: int, events: Iterable[dict]) -> None:
        rows = [(trial_id, epoch, step, str(e.get("kind", "event")), dumps(e)) for e in events]
        if rows:
            self.conn.executemany(
                "INSERT INTO events (trial_id, epoch, step, kind, data) VALUES (?,?,?,?,?)", rows)

    def truncate_after(self, trial_id: int, epoch: int) -> None:
        """Drop evaluations and events after ``epoch`` (used when resuming from a checkpoint)."""
        self.conn.execute("DELETE FROM evals WHERE trial_id=? AND epoch>?", (trial_id, epoch))
        self.conn.execute("DELETE FROM events WHERE trial_id=? AND epoch>?", (trial_id, epoch))

    def end_trial(self, trial_id: int, status: str, summary: dict, error: str | None = None
                  ) -> None:
        cols = ("final_train_loss", "final_val_metric", "final_test_metric", "best_val_metric",
                "best_test_metric")
        self.conn.execute(
            f"UPDATE trials SET status=?, error=?, finished=?, {', '.join(c + '=?' for c in cols)}"
            " WHERE id=?",
            (status, error, time.time(), *[_clean(summary.get(c)) for c in cols], trial_id),
        )

    def record_trial(self, key: str, problem: str, method: str, hparams: dict, seed: int,
                     epochs: int, train_fraction: float, tag: str, env: dict, status: str,
                     evals: Iterable[dict], events: Iterable[dict], summary: dict,
                     error: str | None = None, started: float | None = None,
                     finished: float | None = None) -> int:
        """Write one whole trial, run elsewhere, in a single transaction; returns its id.

        This is how a driver stores trials computed by remote workers (the Ray executor): the
        rows are exactly those ``begin_trial`` / ``add_eval`` / ``add_events`` / ``end_trial``
        would have written had the trial run against this store, and a reader never sees a
        half-written trial. ``evals`` are the evaluation dicts the runner records (the
        ``EVAL_FIELDS`` plus method metrics); ``events`` are ``{"epoch", "step", "data"}`` dicts,
        ``data`` being the method's event as the runner passed it to ``add_events`` (the shape
        :meth:`trial_record` returns). An existing row with the same ``key`` (a failed or
        interrupted trial) keeps its id and first ``started`` time, and its evaluations and
        events are replaced, not appended to. ``started`` and ``finished`` default to now.
        """
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            row = self.trial_by_key(key)
            if row is None:
                cur = self.conn.execute(
                    "INSERT INTO trials (key, problem, method, hparams, seed, epochs,"
                    " train_fraction, tag, status, started, env)"
                    " VALUES (?,?,?,?,?,?,?,?,'running',?,?)",
                    (key, problem, method, dumps(hparams), seed, epochs, train_fraction, tag,
                     now if started is None else started, dumps(env)))
                trial_id = int(cur.lastrowid)
            else:
                trial_id = int(row["id"])
                self.conn.execute("DELETE FROM evals WHERE trial_id=?", (trial_id,))
                self.conn.execute("DELETE FROM events WHERE trial_id=?", (trial_id,))
                self.conn.execute(
                    "UPDATE trials SET status='running', error=NULL, epochs_done=0, steps=0,"
                    " train_seconds=0, env=? WHERE id=?", (dumps(env), trial_id))
            for e in evals:
                self.add_eval(trial_id, e)
            for ev in events:
                self.add_events(trial_id, int(ev["epoch"]), int(ev["step"]), [ev["data"]])
            self.end_trial(trial_id, status, summary, error)
            if finished is not None:
                self.conn.execute("UPDATE trials SET finished=? WHERE id=?", (finished, trial_id))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return trial_id

    # ---- reading ------------------------------------------------------------------------
    def trial_record(self, key: str) -> dict | None:
        """One trial as the keyword arguments of :meth:`record_trial` (None if absent).

        ``store_b.record_trial(**store_a.trial_record(key))`` copies a trial between stores
        with identical rows (ids aside); every value is plain Python, so the dict pickles.
        """
        row = self.trial_by_key(key)
        if row is None:
            return None
        t = dict(row)
        raw_events = [
            {"epoch": r["epoch"], "step": r["step"], "data": json.loads(r["data"] or "{}")}
            for r in self.conn.execute(
                "SELECT epoch, step, data FROM events WHERE trial_id=? ORDER BY id", (t["id"],))]
        summary_cols = ("final_train_loss", "final_val_metric", "final_test_metric",
                        "best_val_metric", "best_test_metric")
        return {
            "key": t["key"], "problem": t["problem"], "method": t["method"],
            "hparams": json.loads(t["hparams"]), "seed": t["seed"], "epochs": t["epochs"],
            "train_fraction": t["train_fraction"], "tag": t["tag"],
            "env": json.loads(t["env"]) if t["env"] else {}, "status": t["status"],
            "evals": self.evals(t["id"]), "events": raw_events,
            "summary": {c: t[c] for c in summary_cols}, "error": t["error"],
            "started": t["started"], "finished": t["finished"],
        }

    def trial_by_key(self, key: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM trials WHERE key=?", (key,)).fetchone()

    def trials(self, **where: Any) -> list[dict]:
        sql, args = "SELECT * FROM trials", []
        if where:
            sql += " WHERE " + " AND ".join(f"{k}=?" for k in where)
            args = list(where.values())
        rows = [dict(r) for r in self.conn.execute(sql + " ORDER BY id", args)]
        for r in rows:
            r["hparams"] = json.loads(r["hparams"])
            r["env"] = json.loads(r["env"]) if r.get("env") else {}
        return rows

    def evals(self, trial_id: int) -> list[dict]:
        out = []
        for r in self.conn.execute("SELECT * FROM evals WHERE trial_id=? ORDER BY epoch",
                                   (trial_id,)):
            d = dict(r)
            d.update(json.loads(d.pop("extras") or "{}"))
            d.pop("trial_id")
            out.append(d)
        return out

    def events(self, trial_id: int) -> list[dict]:
        return [{"epoch": r["epoch"], "step": r["step"], **json.loads(r["data"] or "{}")}
                for r in self.conn.execute(
                    "SELECT * FROM events WHERE trial_id=? ORDER BY id", (trial_id,))]

    def export_json(self, trial_id: int) -> dict:
        """One trial with all evaluations and events, as a JSON-ready dict."""
        t = next(r for r in self.trials(id=trial_id))
        return {"trial": t, "evals": self.evals(trial_id), "events": self.events(trial_id)}
