"""Results store: one SQLite file, written as results happen, safe for several writers.

Schema (``store_file.TABLES`` is the source of truth; version ``SCHEMA_VERSION`` in
``PRAGMA user_version``, ``APPLICATION_ID`` in ``PRAGMA application_id``)::

    trials  one row per trial (problem, method, resolved hyperparameters as JSON, seed, epochs,
            train_fraction, tag) identified by ``key``, a hash of exactly those fields; ``status``
            is running | finished | diverged | failed; summary columns are filled when it ends.
            Bookkeeping (not returned by :meth:`Store.trials`): the lease of the process running
            it (``owner_host``, ``owner_pid``, ``owner_token``, ``heartbeat``; see ``lease.py``)
            and ``attempts``, how many times a process started (or resumed) it.
    evals   one row per evaluation (trial_id, epoch): step, cumulative training seconds
            (evaluation excluded), train loss (fixed train subset), validation and test loss and
            metric, and ``extras`` (JSON: method metrics such as SLBI support sizes).
    events  method events (trial_id, epoch, seq, step, kind, JSON data): MILP solves, support
            updates; ``(trial_id, epoch, seq)`` is unique and an epoch's events are written at
            once, so writing them again replaces them.

Concurrency: WAL mode, a busy timeout, and every read-modify-write in one ``BEGIN IMMEDIATE``
transaction. :meth:`Store.claim_trial` gives a trial to one process at a time (a lease); a
finished or diverged trial is never changed again. Files that are not ours (another program's
SQLite file, a text file), damaged, or written by a newer version are refused with
:class:`StoreError` and left untouched; ``Store(path, readonly=True)`` never writes. Stores of
schema version 0 (before versions were recorded) are read as they are and migrated when opened
for writing.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import lease
from .file import (  # noqa: F401 - re-exported: the store's public names
    APPLICATION_ID,
    LEASE_COLUMNS,
    SCHEMA_VERSION,
    V0_COLUMNS,
    StoreError,
    open_connection,
)
from .records import (  # noqa: F401 - re-exported: the store's public names
    DONE_STATUSES,
    EVAL_FIELDS,
    SUMMARY_FIELDS,
    Claim,
    TrialBusy,
    _clean,
    _method_class,
    dumps,
    trial_key,
)


def _reading(fn):
    """SQLite errors while reading become one-line StoreErrors naming the file."""
    @functools.wraps(fn)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise StoreError(self.path, f"cannot be read ({exc})") from exc
    return wrapper


class Store:
    """The results database (SQLite). ``Store(":memory:")`` works for tests.

    ``readonly=True`` opens an existing store without ever writing to it, also on read-only
    media, and leaves no SQLite side files beside it (``store_file.readonly_mode``): no schema,
    no migration, no journal-mode change. ``lease_seconds``: how long a trial
    claimed by a process on another host stays reserved without a heartbeat (``lease.py``).
    Raises :class:`StoreError` for a path that cannot be a store, a foreign, damaged or newer
    file, and (read-only) a missing or empty one; the file is then left as it was.
    """

    def __init__(self, path: str | Path, readonly: bool = False,
                 lease_seconds: float | None = None):
        self.path = str(path)
        self.readonly = bool(readonly)
        self.lease_seconds = lease.lease_seconds(lease_seconds)
        self.conn = open_connection(self.path, self.readonly)
        self.conn.row_factory = sqlite3.Row
        # called before every write transaction; may raise or end the process (a suite worker
        # whose suite has died must not write: ``jobs.exit_if_orphaned``)
        self.before_write: Callable[[], None] | None = None

    # ---- opening ------------------------------------------------------------------------
    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction (re-entrant: inside another one it is part of it)."""
        if self.conn.in_transaction:
            yield
            return
        if self.before_write is not None:
            self.before_write()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ---- leases -------------------------------------------------------------------------
    def _holder(self, row: sqlite3.Row, me: lease.Owner, now: float) -> str:
        """Who holds ``row``'s trial, if another live process does ('' otherwise)."""
        r = dict(row)
        if r.get("status") != "running" or not lease.holder_alive(
                r.get("owner_host"), r.get("owner_pid"), r.get("owner_token"),
                r.get("heartbeat"), self.lease_seconds, me, now):
            return ""
        return lease.describe(r["owner_host"], r["owner_pid"], r["heartbeat"], now)

    def _take(self, trial_id: int, me: lease.Owner, now: float) -> None:
        self.conn.execute(
            "UPDATE trials SET status='running', error=NULL, owner_host=?, owner_pid=?,"
            " owner_token=?, heartbeat=?, attempts=attempts+1 WHERE id=?",
            (me.host, me.pid, me.token, now, trial_id))

    def _insert(self, key: str, problem: str, method: str, hparams: dict, seed: int,
                epochs: int, train_fraction: float, tag: str, env: dict, started: float,
                me: lease.Owner) -> int:
        cur = self.conn.execute(
            "INSERT INTO trials (key, problem, method, hparams, seed, epochs, train_fraction, tag,"
            " status, started, env, owner_host, owner_pid, owner_token, heartbeat, attempts)"
            " VALUES (?,?,?,?,?,?,?,?,'running',?,?,?,?,?,?,1)",
            (key, problem, method, dumps(hparams), seed, epochs, train_fraction, tag, started,
             dumps(env), me.host, me.pid, me.token, time.time()))
        return int(cur.lastrowid)

    def claim_trial(self, key: str, problem: str, method: str, hparams: dict, seed: int,
                    epochs: int, train_fraction: float, tag: str, env: dict) -> Claim:
        """Atomically give the trial to this process, unless it has ended or another live
        process runs it: creates the row, or takes over a failed, interrupted or abandoned one
        (keeping its id, first ``started`` time and environment)."""
        me, now = lease.current_owner(), time.time()
        with self._tx():
            row = self.trial_by_key(key)
            if row is None:
                tid = self._insert(key, problem, method, hparams, seed, epochs, train_fraction,
                                   tag, env, now, me)
                return Claim(tid, "running", True)
            tid = int(row["id"])
            if row["status"] in DONE_STATUSES:
                return Claim(tid, row["status"], False)
            holder = self._holder(row, me, now)
            if holder:
                return Claim(tid, "running", False, holder)
            self._take(tid, me, now)
            return Claim(tid, "running", True)

    def begin_trial(self, key: str, problem: str, method: str, hparams: dict, seed: int,
                    epochs: int, train_fraction: float, tag: str, env: dict) -> int:
        """:meth:`claim_trial` that returns the trial id, or raises TrialBusy."""
        c = self.claim_trial(key, problem, method, hparams, seed, epochs, train_fraction, tag,
                             env)
        if not c.claimed:
            raise TrialBusy(f"trial {c.trial_id} is {c.status}"
                            + (f" in another process ({c.holder})" if c.holder else ""))
        return c.trial_id

    def _own(self, trial_id: int) -> None:
        """Raise TrialBusy unless this process holds ``trial_id`` (call inside a transaction)."""
        row = self.conn.execute("SELECT * FROM trials WHERE id=?", (trial_id,)).fetchone()
        me = lease.current_owner()
        if row is None or row["status"] != "running" or (
                row["owner_host"], row["owner_pid"], row["owner_token"] or "") != \
                (me.host, me.pid, me.token):
            what = "gone" if row is None else (
                row["status"] if row["status"] != "running" else "held by another process")
            raise TrialBusy(f"trial {trial_id} is no longer this process's: {what}")

    def release(self, trial_id: int) -> None:
        """Give up this process's lease, leaving the trial resumable by anyone."""
        with self._tx():
            self.conn.execute(
                "UPDATE trials SET owner_host=NULL, owner_pid=NULL, owner_token=NULL WHERE id=?"
                " AND status='running' AND owner_pid=? AND owner_host=?",
                (trial_id, lease.current_owner().pid, lease.host_id()))

    # ---- writing ------------------------------------------------------------------------
    def add_eval(self, trial_id: int, row: dict) -> None:
        """Store one evaluation (replacing one of the same epoch) and renew the lease;
        raises TrialBusy if this process no longer holds the trial."""
        extras = {k: v for k, v in row.items() if k not in EVAL_FIELDS}
        vals = [_clean(row.get(k)) for k in EVAL_FIELDS]
        with self._tx():
            self._own(trial_id)
            self.conn.execute(
                "INSERT OR REPLACE INTO evals (trial_id, epoch, step, train_seconds, train_loss,"
                " val_loss, val_metric, test_loss, test_metric, extras)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)", (trial_id, *vals, dumps(extras)))
            self.conn.execute(
                "UPDATE trials SET epochs_done=?, steps=?, train_seconds=?, heartbeat=?"
                " WHERE id=?", (row["epoch"], row["step"], row["train_seconds"], time.time(),
                                trial_id))

    def add_events(self, trial_id: int, epoch: int, step: int, events: Iterable[dict]) -> None:
        """The events of ``epoch`` (all of them: they replace any stored for that epoch)."""
        self._put_events(trial_id, epoch, [(step, e) for e in events])

    def _put_events(self, trial_id: int, epoch: int, items: list[tuple[int, dict]]) -> None:
        with self._tx():
            self._own(trial_id)
            self.conn.execute("DELETE FROM events WHERE trial_id=? AND epoch=?", (trial_id, epoch))
            self.conn.executemany(
                "INSERT INTO events (trial_id, epoch, seq, step, kind, data)"
                " VALUES (?,?,?,?,?,?)",
                [(trial_id, epoch, i, int(step), str(e.get("kind", "event")), dumps(e))
                 for i, (step, e) in enumerate(items)])

    def truncate_after(self, trial_id: int, epoch: int) -> None:
        """Drop evaluations and events after ``epoch`` (used when resuming from a checkpoint;
        the caller has just claimed the trial; raises TrialBusy if it no longer holds it)."""
        with self._tx():
            self._own(trial_id)
            self.conn.execute("DELETE FROM evals WHERE trial_id=? AND epoch>?", (trial_id, epoch))
            self.conn.execute("DELETE FROM events WHERE trial_id=? AND epoch>?", (trial_id, epoch))

    def end_trial(self, trial_id: int, status: str, summary: dict, error: str | None = None
                  ) -> bool:
        """Set the final status and summary and release the lease, if this process holds the
        trial; returns whether it did (a finished or diverged trial is never changed)."""
        with self._tx():
            try:
                self._own(trial_id)
            except TrialBusy:
                return False
            self.conn.execute(
                f"UPDATE trials SET status=?, error=?, finished=?, "
                f"{', '.join(c + '=?' for c in SUMMARY_FIELDS)}, owner_host=NULL, owner_pid=NULL,"
                " owner_token=NULL WHERE id=?",
                (status, error, time.time(), *[_clean(summary.get(c)) for c in SUMMARY_FIELDS],
                 trial_id))
        return True

    def record_trial(self, key: str, problem: str, method: str, hparams: dict, seed: int,
                     epochs: int, train_fraction: float, tag: str, env: dict, status: str,
                     evals: Iterable[dict], events: Iterable[dict], summary: dict,
                     error: str | None = None, started: float | None = None,
                     finished: float | None = None) -> int:
        """Write one whole trial, run elsewhere, in a single transaction; returns its id.

        This is how a driver stores trials computed by remote workers (the Ray executor): the
        rows are exactly those ``claim_trial`` / ``add_eval`` / ``add_events`` / ``end_trial``
        would have written had the trial run against this store, and a reader never sees a
        half-written trial. ``evals`` are the evaluation dicts the runner records (the
        ``EVAL_FIELDS`` plus method metrics); ``events`` are ``{"epoch", "step", "data"}`` dicts,
        ``data`` being the method's event as the runner passed it to ``add_events`` (the shape
        :meth:`trial_record` returns). An existing row with the same ``key`` (a failed or
        interrupted trial) keeps its id and first ``started`` time, and its evaluations and
        events are replaced, not appended to. A finished or diverged trial is left as it is,
        and so is one that another live process runs, unless this record has ended it.
        ``started`` and ``finished`` default to now.
        """
        me, now = lease.current_owner(), time.time()
        with self._tx():
            row = self.trial_by_key(key)
            if row is None:
                trial_id = self._insert(key, problem, method, hparams, seed, epochs,
                                        train_fraction, tag, env,
                                        now if started is None else started, me)
            else:
                trial_id = int(row["id"])
                if row["status"] in DONE_STATUSES or (
                        status not in DONE_STATUSES and self._holder(row, me, now)):
                    return trial_id
                self._take(trial_id, me, now)
                self.conn.execute("DELETE FROM evals WHERE trial_id=?", (trial_id,))
                self.conn.execute("DELETE FROM events WHERE trial_id=?", (trial_id,))
                self.conn.execute("UPDATE trials SET epochs_done=0, steps=0, train_seconds=0,"
                                  " env=? WHERE id=?", (dumps(env), trial_id))
            for e in evals:
                self.add_eval(trial_id, e)
            by_epoch: dict[int, list[tuple[int, dict]]] = {}
            for ev in events:
                by_epoch.setdefault(int(ev["epoch"]), []).append((int(ev["step"]), ev["data"]))
            for epoch, items in by_epoch.items():
                self._put_events(trial_id, epoch, items)
            self.end_trial(trial_id, status, summary, error)
            if finished is not None:
                self.conn.execute("UPDATE trials SET finished=? WHERE id=?", (finished, trial_id))
        return trial_id

    # ---- reading ------------------------------------------------------------------------
    def _loads(self, text: str | None, what: str) -> Any:
        try:
            return json.loads(text) if text else {}
        except ValueError as exc:
            raise StoreError(self.path, f"is damaged: unreadable {what} ({exc})") from exc

    @_reading
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
            {"epoch": r["epoch"], "step": r["step"],
             "data": self._loads(r["data"], f"event data of trial {t['id']}")}
            for r in self.conn.execute(
                "SELECT epoch, step, data FROM events WHERE trial_id=? ORDER BY epoch, id",
                (t["id"],))]
        return {
            "key": t["key"], "problem": t["problem"], "method": t["method"],
            "hparams": self._loads(t["hparams"], f"hparams of trial {t['id']}"),
            "seed": t["seed"], "epochs": t["epochs"],
            "train_fraction": t["train_fraction"], "tag": t["tag"],
            "env": self._loads(t["env"], f"env of trial {t['id']}"), "status": t["status"],
            "evals": self.evals(t["id"]), "events": raw_events,
            "summary": {c: t[c] for c in SUMMARY_FIELDS}, "error": t["error"],
            "started": t["started"], "finished": t["finished"],
        }

    @_reading
    def trial_by_key(self, key: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM trials WHERE key=?", (key,)).fetchone()

    @_reading
    def lease_info(self, trial_id: int) -> dict[str, Any] | None:
        """The trial's bookkeeping: owner, heartbeat, attempts, and ``busy`` (another live
        process holds it now)."""
        row = self.conn.execute("SELECT * FROM trials WHERE id=?", (trial_id,)).fetchone()
        if row is None:
            return None
        r = dict(row)
        out = {c: r.get(c) for c in LEASE_COLUMNS}
        out["busy"] = bool(self._holder(row, lease.current_owner(), time.time()))
        return out

    @_reading
    def trials(self, **where: Any) -> list[dict]:
        unknown = sorted(set(where) - V0_COLUMNS["trials"])
        if unknown:
            raise ValueError(f"unknown trial field(s) {unknown}; accepted: "
                             f"{', '.join(sorted(V0_COLUMNS['trials']))}")
        sql, args = "SELECT * FROM trials", []
        if where:
            sql += " WHERE " + " AND ".join(f"{k}=?" for k in where)
            args = list(where.values())
        rows = [dict(r) for r in self.conn.execute(sql + " ORDER BY id", args)]
        for r in rows:
            for c in LEASE_COLUMNS:
                r.pop(c, None)
            r["hparams"] = self._loads(r["hparams"], f"hparams of trial {r['id']}")
            if isinstance(r["hparams"], dict):  # renamed hyperparameters: the new names
                from ...methods.base import canonical_hparams

                r["hparams"] = canonical_hparams(_method_class(r["method"]), r["hparams"])
            r["env"] = self._loads(r.get("env"), f"env of trial {r['id']}")
        return rows

    @_reading
    def evals(self, trial_id: int) -> list[dict]:
        out = []
        for r in self.conn.execute("SELECT * FROM evals WHERE trial_id=? ORDER BY epoch",
                                   (trial_id,)):
            d = dict(r)
            d.update(self._loads(d.pop("extras"), f"evaluation extras of trial {trial_id}"))
            d.pop("trial_id")
            out.append(d)
        return out

    @_reading
    def events(self, trial_id: int) -> list[dict]:
        return [{"epoch": r["epoch"], "step": r["step"],
                 **self._loads(r["data"], f"event data of trial {trial_id}")}
                for r in self.conn.execute(
                    "SELECT * FROM events WHERE trial_id=? ORDER BY epoch, id", (trial_id,))]

    def export_json(self, trial_id: int) -> dict:
        """One trial with all evaluations and events, as a JSON-ready dict."""
        t = next(r for r in self.trials(id=trial_id))
        return {"trial": t, "evals": self.evals(trial_id), "events": self.events(trial_id)}
