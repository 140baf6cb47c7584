"""The results store's file: schema, versions, and opening a file safely.

``open_connection(path, readonly)`` returns an SQLite connection to a results store, or raises
:class:`StoreError` (one line naming the file and the reason) and leaves the file as it was:

* a path that cannot hold a file (a directory, a path under a regular file), and, read-only, a
  missing or empty file;
* a file that is not ours: not SQLite (a text file, an overwritten header), another program's
  SQLite database (its ``application_id``, or tables other than ours);
* a damaged file (SQLite's ``quick_check`` fails: truncated or garbled pages);
* a store of a newer schema version than this code knows.

Read-only connections never write and never leave files beside the store (a store is kept in WAL
mode, whose ``-wal``/``-shm`` side files a plain ``mode=ro`` reader creates and cannot remove, and
cannot create at all on read-only media). :func:`readonly_mode` picks how:

* ``shared``: side files already exist (a writer is running, or crashed): ``mode=ro`` with them,
  as any SQLite reader (they are the writer's, not ours);
* ``query-only``: the file and its folder are writable: a read-write connection with
  ``PRAGMA query_only`` (SQLite refuses every change) that takes part in locking like any reader
  and, being the last connection, removes the side files it needed when it closes;
* ``immutable``: read-only media or no write permission: ``immutable=1``, nothing created, no
  locks (nobody can be writing a file that cannot be written).

No schema, no migration, no journal-mode change in any of them.

A writable connection creates the schema in an empty file, migrates a store of an older version
(version 0: the stores written before versions were recorded, recognised by their exact tables),
and switches it to WAL, always inside one ``BEGIN IMMEDIATE`` transaction so that processes
opening one file at the same time agree.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path

SCHEMA_VERSION = 1
APPLICATION_ID = 0x42534744  # "BSGD"
_TRIALS_V0 = """id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, problem TEXT NOT NULL,
    method TEXT NOT NULL, hparams TEXT NOT NULL, seed INTEGER NOT NULL, epochs INTEGER NOT NULL,
    train_fraction REAL NOT NULL DEFAULT 1.0, tag TEXT NOT NULL DEFAULT '', status TEXT NOT NULL,
    error TEXT, started REAL, finished REAL, epochs_done INTEGER DEFAULT 0,
    steps INTEGER DEFAULT 0, train_seconds REAL DEFAULT 0, final_train_loss REAL,
    final_val_metric REAL, final_test_metric REAL, best_val_metric REAL, best_test_metric REAL,
    env TEXT"""
_LEASE = ("owner_host TEXT", "owner_pid INTEGER", "owner_token TEXT", "heartbeat REAL",
          "attempts INTEGER NOT NULL DEFAULT 0")
LEASE_COLUMNS = tuple(c.split()[0] for c in _LEASE)
TABLES = {
    "trials": f"CREATE TABLE trials ({_TRIALS_V0}, {', '.join(_LEASE)})",
    "evals": """CREATE TABLE evals (
        trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
        epoch INTEGER NOT NULL, step INTEGER NOT NULL, train_seconds REAL NOT NULL,
        train_loss REAL, val_loss REAL, val_metric REAL, test_loss REAL, test_metric REAL,
        extras TEXT, PRIMARY KEY (trial_id, epoch))""",
    "events": """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
        epoch INTEGER NOT NULL, step INTEGER NOT NULL, kind TEXT NOT NULL, data TEXT,
        seq INTEGER)""",
}
INDEXES = (
    "CREATE INDEX IF NOT EXISTS trials_by_problem ON trials(problem, method)",
    "CREATE INDEX IF NOT EXISTS events_by_trial ON events(trial_id, epoch)",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_once ON events(trial_id, epoch, seq)",
)
# version 0 -> 1: leases and attempts on trials, a position for every event
MIGRATE_0_1 = (
    *(f"ALTER TABLE trials ADD COLUMN {c}" for c in _LEASE),
    "ALTER TABLE events ADD COLUMN seq INTEGER",
    "UPDATE events SET seq = (SELECT COUNT(*) FROM events AS e WHERE e.trial_id = events.trial_id"
    " AND e.epoch = events.epoch AND e.id < events.id)",
)
# the columns every version has (a version-0 store has exactly these tables and columns)
V0_COLUMNS = {
    "trials": {c.split()[0] for c in _TRIALS_V0.split(",")},
    "evals": {"trial_id", "epoch", "step", "train_seconds", "train_loss", "val_loss",
              "val_metric", "test_loss", "test_metric", "extras"},
    "events": {"id", "trial_id", "epoch", "step", "kind", "data"},
}
V1_COLUMNS = {**V0_COLUMNS, "trials": V0_COLUMNS["trials"] | set(LEASE_COLUMNS),
               "events": V0_COLUMNS["events"] | {"seq"}}


class StoreError(Exception):
    """A results store that cannot be used: one line naming the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), " ".join(str(reason).split())
        super().__init__(f"results store {self.path}: {self.reason}")


def open_connection(path: str, readonly: bool) -> sqlite3.Connection:
    """A connection to the results store at ``path`` (see the module docstring)."""
    conn = _connect(path, readonly)
    try:
        _prepare(conn, path, readonly)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect(path: str, readonly: bool) -> sqlite3.Connection:
    if path == ":memory:":
        if readonly:
            raise StoreError(path, "an in-memory store cannot be opened read-only")
        conn = sqlite3.connect(":memory:", isolation_level=None)
    else:
        p = Path(path)
        check_path(p, readonly)
        how = readonly_mode(p) if readonly else "rwc"
        query = {"shared": "mode=ro", "query-only": "mode=rw", "immutable": "mode=ro&immutable=1",
                 "rwc": "mode=rwc"}[how]
        uri = f"file:{urllib.parse.quote(str(p.absolute()))}?{query}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
            if how == "query-only":
                conn.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            raise StoreError(p, f"cannot be opened ({exc})") from exc
    conn.row_factory = sqlite3.Row
    return conn


SIDE_FILES = ("-wal", "-shm", "-journal")


def side_files(p: Path) -> list[Path]:
    """SQLite's files beside the store ``p`` that exist now."""
    return [q for q in (p.with_name(p.name + s) for s in SIDE_FILES) if q.exists()]


def writable(p: Path) -> bool:
    """Whether this process may write ``p`` and create files beside it (``os.access`` also says
    no on a read-only file system, even to root)."""
    return os.access(p, os.W_OK) and os.access(p.absolute().parent, os.W_OK | os.X_OK)


def readonly_mode(p: Path) -> str:
    """How a read-only connection opens the existing store ``p`` (see the module docstring):
    ``shared``, ``query-only`` or ``immutable``."""
    if side_files(p):
        return "shared"
    return "query-only" if writable(p) else "immutable"

def _prepare(conn: sqlite3.Connection, path: str, readonly: bool) -> None:
    version = inspect(conn, path)
    if readonly:
        if version < 0:
            raise StoreError(path, "is empty, not a beyondsgd results store")
        return
    if path != ":memory:":
        conn.execute("PRAGMA journal_mode=WAL")
    if version == SCHEMA_VERSION:
        conn.execute("PRAGMA foreign_keys=ON")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = inspect(conn, path, check=False)  # again, now that we hold the write lock
        if version < 0:
            for sql in (*TABLES.values(), *INDEXES):
                conn.execute(sql)
        elif version == 0:
            for sql in (*MIGRATE_0_1, *INDEXES):
                conn.execute(sql)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    conn.execute("PRAGMA foreign_keys=ON")

def inspect(conn: sqlite3.Connection, path: str, check: bool = True) -> int:
    """The schema version of the file (-1: empty), or StoreError if it is not ours."""
    try:
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        columns = {n: {r[1] for r in conn.execute(f"PRAGMA table_info('{n}')")}
                   for n in names if n in TABLES}
    except sqlite3.DatabaseError as exc:
        what = "is not an SQLite database" if "not a database" in str(exc) else "is damaged"
        raise StoreError(path, f"{what} ({exc})") from exc
    if app not in (0, APPLICATION_ID):
        raise StoreError(path, f"is an SQLite database of another application "
                                    f"(application_id {app:#x}), not a beyondsgd store")
    if not names and version == 0:
        return -1
    if version > SCHEMA_VERSION:
        raise StoreError(path, f"was written by a newer beyondsgd (schema version "
                                    f"{version}; this version reads up to {SCHEMA_VERSION})"
                                    "; upgrade beyondsgd")
    expected = V1_COLUMNS if version >= 1 else V0_COLUMNS
    if set(names) != set(TABLES) or any(not expected[t] <= columns[t] for t in TABLES):
        shown = ", ".join(sorted(names)) or "none"
        raise StoreError(path, f"is an SQLite database but not a beyondsgd results "
                                    f"store (schema version {version}, tables: {shown})")
    if check:
        try:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            raise StoreError(path, f"is damaged ({exc})") from exc
        if problems != ["ok"]:
            raise StoreError(path, f"is damaged (SQLite quick_check: {problems[0]})")
    return int(version)


def check_path(p: Path, readonly: bool) -> None:
    """StoreError for a path that cannot hold a store (before SQLite sees it)."""
    if p.is_dir():
        raise StoreError(p, "is a directory, not a results file")
    for parent in p.parents:  # the nearest existing ancestor must be a folder
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise StoreError(p, f"cannot be created: {parent} is a file, not a folder")
            break
    if p.exists() and not p.is_file():
        raise StoreError(p, "is not a regular file")
    if readonly:
        if not p.exists():
            raise StoreError(p, "does not exist")
        return
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(p, f"cannot be created ({exc.strerror or exc})") from exc
    ok = writable(p) if p.exists() else os.access(p.absolute().parent, os.W_OK | os.X_OK)
    if not ok:
        what = "cannot be written" if p.exists() else "cannot be created"
        raise StoreError(p, f"{what}: read-only file system or no write permission (a store "
                            f"is written with SQLite files beside it, so its folder must be "
                            f"writable too); accepted: a writable path, or read it with "
                            f"`beyondsgd report` / `export`, which never write")
