"""The results store: concurrent writers, trial leases, never-downgrade, idempotent events,
schema versions and migration, and files that are not ours or are broken (refused with one line,
left untouched)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import read_only_media
from beyondsgd.bench.store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    Store,
    StoreError,
    TrialBusy,
    lease,
)

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "docs" / "results" / "small" / "suite_small.db"
TRIAL = ("digits_mlp", "sgd", {"lr": 0.1}, 0, 2, 1.0, "")


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def claim(st: Store, key: str = "k1"):
    return st.claim_trial(key, *TRIAL, env={})


def fill(path: Path, n: int = 60) -> None:
    """A store with ``n`` finished trials of 3 evaluations and 2 events each."""
    with Store(path) as st:
        for i in range(n):
            tid = st.begin_trial(f"key{i}", "digits_mlp", "sgd", {"lr": i}, i, 2, 1.0, "", {})
            for e in range(3):
                st.add_eval(tid, {"epoch": e, "step": 10 * e, "train_seconds": 0.5 * e,
                                  "train_loss": 1.0 / (e + 1), "test_metric": 0.1 * e})
            st.add_events(tid, 1, 10, [{"kind": "a", "x": i}, {"kind": "b", "x": -i}])
            st.end_trial(tid, "finished", {"final_test_metric": 0.2})


# ---- claims, leases, never-downgrade, events ----------------------------------------------
HOLD = textwrap.dedent("""
    import pathlib, sys, time
    from beyondsgd.bench.store import Store
    path, key, release = sys.argv[1:4]
    with Store(path) as st:
        c = st.claim_trial(key, "digits_mlp", "sgd", {"lr": 0.1}, 0, 2, 1.0, "", env={})
        print(int(c.claimed), c.status, flush=True)
        while not pathlib.Path(release).exists():   # hold the lease until told
            time.sleep(0.05)
""")


def _holders(tmp_path: Path, n: int, key: str = "k1") -> tuple[list[subprocess.Popen], Path]:
    script, release = tmp_path / "hold.py", tmp_path / "release"
    script.write_text(HOLD)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "s.db"), key,
                               str(release)], stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    return procs, release


def test_concurrent_claims_give_the_trial_to_exactly_one_process(tmp_path):
    """Four processes claim one new trial at the same time; each holds on until all have
    answered, so no claim can see a finished holder: exactly one gets it, nobody crashes
    (before: IntegrityError 'UNIQUE constraint failed: trials.key')."""
    Store(tmp_path / "s.db").close()
    procs, release = _holders(tmp_path, 4)
    try:
        answers = sorted(p.stdout.readline().strip() for p in procs)
    finally:
        release.touch()
        for p in procs:
            p.wait()
    assert answers == ["0 running", "0 running", "0 running", "1 running"]
    assert all(p.returncode == 0 for p in procs)
    with Store(tmp_path / "s.db") as st:
        (t,) = st.trials()
        assert st.lease_info(t["id"])["attempts"] == 1


def test_a_crashed_holder_on_this_host_is_taken_over_at_once(tmp_path):
    Store(tmp_path / "s.db").close()
    (proc,), release = _holders(tmp_path, 1)
    try:
        assert proc.stdout.readline().strip() == "1 running"
        with Store(tmp_path / "s.db") as st:
            c = claim(st)
            assert c.busy and not c.claimed and f"pid {proc.pid}" in c.holder
            assert st.lease_info(c.trial_id)["busy"]
            with pytest.raises(TrialBusy, match="in another process"):
                st.begin_trial("k1", *TRIAL, env={})
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            c2 = claim(st)
            assert c2.claimed and c2.trial_id == c.trial_id
            info = st.lease_info(c.trial_id)
            assert info["owner_pid"] == os.getpid() and info["attempts"] == 2
    finally:
        release.touch()
        proc.kill()
        proc.wait()


def test_a_suite_worker_waits_for_a_busy_trial_then_takes_it_over(tmp_path):
    """The suite needs every result: its worker waits while another live process holds the
    trial (here: until that process dies without ending it), then runs it."""
    import threading

    from beyondsgd.bench.protocol.jobs import Job, run_job
    from beyondsgd.bench.store import trial_key
    from beyondsgd.methods import get_method_class
    from beyondsgd.methods.base import resolve_hparams

    job = Job("digits_mlp", "sgd", {"lr": 0.1}, 0, 2, "")
    hp = resolve_hparams(get_method_class("sgd"), job.hparams)
    key = trial_key("digits_mlp", "sgd", hp, 0, 2, 1.0, "")
    Store(tmp_path / "s.db").close()
    (proc,), release = _holders(tmp_path, 1, key)
    try:
        assert proc.stdout.readline().strip() == "1 running"
        threading.Timer(1.0, release.touch).start()  # the holder exits, the trial unfinished
        done = run_job(str(tmp_path / "s.db"), job, "cpu", 1)
    finally:
        release.touch()
        proc.wait()
    assert done == (job, "finished", "")
    with Store(tmp_path / "s.db") as st:
        (t,) = st.trials()
        assert t["status"] == "finished" and st.lease_info(t["id"])["attempts"] == 2
        assert [e["epoch"] for e in st.evals(t["id"])] == [0, 1, 2]


def test_a_live_pid_that_is_not_the_holder_does_not_block(tmp_path):
    """Same host, the holder's pid now belongs to another process (its start token differs),
    or is a zombie: the trial is free."""
    with Store(tmp_path / "s.db") as st:
        tid = claim(st).trial_id
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            token = lease.start_token(sleeper.pid)
            assert lease.pid_alive(sleeper.pid, token)
            assert not lease.pid_alive(sleeper.pid, token + "0")
            st.conn.execute("UPDATE trials SET owner_pid=?, owner_token=? WHERE id=?",
                            (sleeper.pid, token, tid))
            assert claim(st).busy
            st.conn.execute("UPDATE trials SET owner_token='reused' WHERE id=?", (tid,))
            assert claim(st).claimed
        finally:
            sleeper.kill()
            sleeper.wait()
    assert not lease.pid_alive(sleeper.pid, token)


def test_a_holder_on_another_host_is_taken_over_when_its_lease_expires(tmp_path):
    with Store(tmp_path / "s.db", lease_seconds=60) as st:
        tid = claim(st).trial_id
        now = time.time()
        st.conn.execute("UPDATE trials SET owner_host='elsewhere', owner_pid=1, heartbeat=?"
                        " WHERE id=?", (now - 30, tid))
        c = claim(st)
        assert c.busy and "host elsewhere" in c.holder and "heartbeat 30 s ago" in c.holder
        st.conn.execute("UPDATE trials SET heartbeat=? WHERE id=?", (now - 61, tid))
        assert claim(st).claimed


def test_lease_length_is_validated(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"lease_seconds must be a positive number .*got 0"):
        Store(tmp_path / "s.db", lease_seconds=0)
    monkeypatch.setenv(lease.LEASE_ENV, "soon")
    with pytest.raises(ValueError, match=r"BEYONDSGD_LEASE_SECONDS must be .*got 'soon'"):
        Store(tmp_path / "s.db")
    monkeypatch.setenv(lease.LEASE_ENV, "90")
    with Store(tmp_path / "s.db") as st:
        assert st.lease_seconds == 90.0


def test_a_finished_trial_is_never_downgraded(tmp_store):
    tid = tmp_store.begin_trial("k1", *TRIAL, env={})
    tmp_store.add_eval(tid, {"epoch": 0, "step": 0, "train_seconds": 0.0, "train_loss": 1.0})
    assert tmp_store.end_trial(tid, "finished", {"final_test_metric": 0.9})
    before = tmp_store.trials()
    assert not tmp_store.end_trial(tid, "failed", {}, "late crash of a second runner")
    c = claim(tmp_store)
    assert (c.claimed, c.status) == (False, "finished")
    with pytest.raises(TrialBusy, match="finished"):
        tmp_store.add_eval(tid, {"epoch": 1, "step": 1, "train_seconds": 1.0})
    with pytest.raises(TrialBusy, match="finished"):
        tmp_store.add_events(tid, 1, 1, [{"kind": "x"}])
    rec = tmp_store.trial_record("k1")
    assert tmp_store.record_trial(**dict(rec, status="failed", error="boom")) == tid
    assert tmp_store.trials() == before
    assert [e["epoch"] for e in tmp_store.evals(tid)] == [0]


def test_ending_needs_the_lease(tmp_store):
    """A process that lost its lease cannot end (nor mark failed) the new holder's trial."""
    tid = tmp_store.begin_trial("k1", *TRIAL, env={})
    tmp_store.conn.execute("UPDATE trials SET owner_host='elsewhere', heartbeat=? WHERE id=?",
                           (time.time(), tid))
    assert not tmp_store.end_trial(tid, "failed", {}, "boom")
    assert tmp_store.trials()[0]["status"] == "running"
    with pytest.raises(TrialBusy, match="held by another process"):
        tmp_store.add_eval(tid, {"epoch": 0, "step": 0, "train_seconds": 0.0})


def test_release_leaves_the_trial_resumable(tmp_store):
    tid = tmp_store.begin_trial("k1", *TRIAL, env={})
    tmp_store.release(tid)
    info = tmp_store.lease_info(tid)
    assert info["owner_pid"] is None and not info["busy"]
    assert tmp_store.trials()[0]["status"] == "running"


def test_events_are_idempotent(tmp_store):
    tid = tmp_store.begin_trial("k1", *TRIAL, env={})
    for _ in range(3):  # a retried write of the same epoch replaces, never appends
        tmp_store.add_events(tid, 1, 5, [{"kind": "a"}, {"kind": "b"}])
    tmp_store.add_events(tid, 2, 9, [{"kind": "c"}])
    tmp_store.add_events(tid, 1, 5, [{"kind": "a"}, {"kind": "b"}])
    assert [(e["epoch"], e["kind"]) for e in tmp_store.events(tid)] == \
        [(1, "a"), (1, "b"), (2, "c")]
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        tmp_store.conn.execute("INSERT INTO events (trial_id, epoch, seq, step, kind, data)"
                               " VALUES (?, 1, 0, 5, 'a', '{}')", (tid,))


def test_trials_hide_the_bookkeeping(tmp_store):
    tmp_store.begin_trial("k1", *TRIAL, env={"torch": "x"})
    (t,) = tmp_store.trials()
    assert not {"owner_host", "owner_pid", "owner_token", "heartbeat", "attempts"} & set(t)
    assert t["env"] == {"torch": "x"} and t["hparams"] == {"lr": 0.1}
    with pytest.raises(ValueError, match=r"unknown trial field\(s\) \['colour'\]"):
        tmp_store.trials(colour="red")


# ---- two and three `beyondsgd bench` processes on one store ---------------------------------
BENCH = ["--problem", "digits_mlp", "--methods", "sgd,adam,slbi", "--seeds", "2", "--epochs",
         "2", "--threads", "1", "--quiet"]


def _bench(store: Path, n: int) -> list[subprocess.CompletedProcess]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    procs = [subprocess.Popen([sys.executable, "-m", "beyondsgd.cli", "bench", *BENCH,
                               "--store", str(store)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _content(path: Path) -> tuple[dict, int, list[int]]:
    """Every trial's record minus timestamps, training seconds and the git commit; the number of
    event rows; every trial's attempts."""
    recs, attempts = {}, []
    with Store(path, readonly=True) as st:
        for t in st.trials():
            rec = st.trial_record(t["key"])
            del rec["started"], rec["finished"]
            rec["env"].pop("git_commit", None)
            for e in rec["evals"]:
                del e["train_seconds"]
                e.pop("train_cpu_seconds", None)  # a clock, like the wall seconds
            recs[t["key"]] = rec
            attempts.append(st.lease_info(t["id"])["attempts"])
        n_events = st.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    return recs, n_events, attempts


@pytest.fixture(scope="module")
def one_process_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("one") / "one.db"
    (res,) = _bench(path, 1)
    assert res.returncode == 0, res.stderr[-2000:]
    return path


@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_bench_processes_run_every_trial_once(n, one_process_store, tmp_path):
    """n `beyondsgd bench` processes started together on one store: every trial finished exactly
    once (one attempt each), no failed rows, no duplicate events, and the same numbers as one
    process."""
    path = tmp_path / "shared.db"
    results = _bench(path, n)
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and "FAILED" not in r.stderr, r.stderr[-2000:]
    ref, ref_events, _ = _content(one_process_store)
    got, n_events, attempts = _content(path)
    assert len(ref) == 6 and ref_events > 0  # 3 methods x 2 seeds; slbi writes events
    assert {r["status"] for r in got.values()} == {"finished"}
    assert attempts == [1] * len(ref)
    assert n_events == ref_events
    assert got == ref


# ---- schema versions, read-only opening, migration ----------------------------------------
V0_SCHEMA = """
CREATE TABLE trials (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, problem TEXT NOT NULL,
    method TEXT NOT NULL, hparams TEXT NOT NULL, seed INTEGER NOT NULL, epochs INTEGER NOT NULL,
    train_fraction REAL NOT NULL DEFAULT 1.0, tag TEXT NOT NULL DEFAULT '', status TEXT NOT NULL,
    error TEXT, started REAL, finished REAL, epochs_done INTEGER DEFAULT 0,
    steps INTEGER DEFAULT 0, train_seconds REAL DEFAULT 0, final_train_loss REAL,
    final_val_metric REAL, final_test_metric REAL, best_val_metric REAL, best_test_metric REAL,
    env TEXT);
CREATE TABLE evals (trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL, step INTEGER NOT NULL, train_seconds REAL NOT NULL,
    train_loss REAL, val_loss REAL, val_metric REAL, test_loss REAL, test_metric REAL,
    extras TEXT, PRIMARY KEY (trial_id, epoch));
CREATE TABLE events (id INTEGER PRIMARY KEY,
    trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL, step INTEGER NOT NULL, kind TEXT NOT NULL, data TEXT);
CREATE INDEX trials_by_problem ON trials(problem, method);
CREATE INDEX events_by_trial ON events(trial_id, epoch);
PRAGMA journal_mode=WAL;
INSERT INTO trials (key, problem, method, hparams, seed, epochs, status, env)
    VALUES ('old1', 'digits_mlp', 'slbi', '{"lr": 0.1}', 0, 2, 'finished', '{}'),
           ('old2', 'digits_mlp', 'sgd', '{"lr": 0.1}', 1, 2, 'running', '{}');
INSERT INTO evals VALUES (1, 0, 0, 0.0, 2.0, 2.0, 0.1, 2.0, 0.1, '{}'),
                         (1, 1, 9, 0.5, 1.0, 1.0, 0.5, 1.0, 0.5, '{"support": 3}');
INSERT INTO events (trial_id, epoch, step, kind, data) VALUES
    (1, 1, 9, 'slbi_path', '{"kind": "slbi_path", "n": 1}'),
    (1, 1, 9, 'slbi_path', '{"kind": "slbi_path", "n": 2}'),
    (1, 2, 18, 'slbi_path', '{"kind": "slbi_path", "n": 3}');
"""


def _v0_store(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(V0_SCHEMA)
    conn.close()
    return path


def _schema(path: Path) -> dict:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    out = {name: conn.execute(f"PRAGMA table_info('{name}')").fetchall()
           for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    out["indexes"] = sorted(conn.execute(
        "SELECT name, tbl_name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"))
    out["versions"] = (conn.execute("PRAGMA user_version").fetchone()[0],
                       conn.execute("PRAGMA application_id").fetchone()[0])
    conn.close()
    return out


def test_a_new_store_records_its_schema_version(tmp_path):
    Store(tmp_path / "new.db").close()
    assert _schema(tmp_path / "new.db")["versions"] == (SCHEMA_VERSION, APPLICATION_ID)


def test_a_version_0_store_is_read_as_it_is_and_migrated_when_written(tmp_path):
    path = _v0_store(tmp_path / "old.db")
    digest = sha(path)
    with Store(path, readonly=True) as st:
        old = [(t, st.evals(t["id"]), st.events(t["id"])) for t in st.trials()]
    assert sha(path) == digest
    assert [t["key"] for t, _, _ in old] == ["old1", "old2"]
    assert old[0][1][1]["support"] == 3 and [e["n"] for e in old[0][2]] == [1, 2, 3]
    with Store(path) as st:  # writable: migrated in place, same rows
        assert [(t, st.evals(t["id"]), st.events(t["id"])) for t in st.trials()] == old
        c = claim(st, "old2")  # an interrupted trial of the old version (no lease): free
        assert c.claimed
        st.add_events(c.trial_id, 1, 9, [{"kind": "x"}, {"kind": "y"}])
        st.add_events(c.trial_id, 1, 9, [{"kind": "x"}, {"kind": "y"}])
        assert [e["kind"] for e in st.events(c.trial_id)] == ["x", "y"]
    Store(tmp_path / "new.db").close()
    assert _schema(path) == _schema(tmp_path / "new.db")  # the same schema as a new store


def test_the_committed_store_opens_and_reads_and_is_not_changed(tmp_path):
    digest = sha(COMMITTED)
    with Store(COMMITTED, readonly=True) as st:
        trials = st.trials()
        assert len(trials) > 100
        assert {t["status"] for t in trials} <= {"finished", "diverged", "collapsed"}
        assert st.evals(trials[0]["id"]) and st.trial_record(trials[-1]["key"])
    assert sha(COMMITTED) == digest
    copy = tmp_path / "copy.db"
    shutil.copy(COMMITTED, copy)
    with Store(copy) as st:  # writable: migrates the copy
        assert st.trials() == trials
    assert _schema(copy)["versions"] == (SCHEMA_VERSION, APPLICATION_ID)


# ---- files that are not ours, or broken -----------------------------------------------------
def _foreign_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT);"
                       "INSERT INTO photos (name) VALUES ('cat.jpg');")
    conn.close()


def _other_application(path: Path) -> None:
    fill(path, 2)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id=1234")
    conn.close()


def _newer(path: Path) -> None:
    fill(path, 2)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()


def _truncated(path: Path) -> None:
    fill(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _garbled(path: Path) -> None:
    fill(path)
    data = bytearray(path.read_bytes())
    rng = random.Random(0)
    for i in range(4096, len(data)):  # every page but the first (the schema)
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))


def _header(path: Path) -> None:
    fill(path, 2)
    data = path.read_bytes()
    path.write_bytes(b"#" * 100 + data[100:])


BAD_FILES = {
    "text file": (lambda p: p.write_text("problem,method\ndigits,adam\n"),
                  "is not an SQLite database"),
    "truncated store": (_truncated, "damaged"),
    "garbled store": (_garbled, "damaged"),
    "overwritten header": (_header, "is not an SQLite database"),
    "SQLite file of another schema": (_foreign_sqlite, "not a beyondsgd results store"),
    "SQLite file of another application": (_other_application, "another application"),
    "store of a newer version": (_newer, "newer beyondsgd"),
}


@pytest.mark.parametrize("readonly", [True, False], ids=["readonly", "writable"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_foreign_and_broken_files_are_refused_and_left_unchanged(case, readonly, tmp_path):
    make, reason = BAD_FILES[case]
    path = tmp_path / "results.db"
    make(path)
    digest = sha(path)
    with pytest.raises(StoreError) as err:
        Store(path, readonly=readonly)
    msg = str(err.value)
    assert str(path) in msg and reason in msg and "\n" not in msg, msg
    assert sha(path) == digest  # no tables added, no switch to WAL


@pytest.mark.parametrize("readonly", [True, False], ids=["readonly", "writable"])
def test_paths_that_cannot_be_stores(readonly, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    cases = {tmp_path / "folder": "is a directory",
             tmp_path / "notes.txt" / "results.db": "notes.txt is a file, not a folder",
             tmp_path / "notes.txt" / "sub" / "results.db": "notes.txt is a file, not a folder"}
    for path, reason in cases.items():
        with pytest.raises(StoreError, match=reason) as err:
            Store(path, readonly=readonly)
        assert str(path) in str(err.value)
    assert (tmp_path / "notes.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "notes.txt"]


def test_readonly_needs_an_existing_store_and_never_creates_one(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "missing.db", readonly=True)
    (tmp_path / "empty.db").touch()
    with pytest.raises(StoreError, match="is empty"):
        Store(tmp_path / "empty.db", readonly=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]
    assert (tmp_path / "empty.db").stat().st_size == 0
    with Store(tmp_path / "empty.db") as st:  # writable: an empty file becomes a store
        assert st.trials() == []


def test_readonly_never_writes(tmp_path):
    fill(tmp_path / "s.db", 3)
    digest = sha(tmp_path / "s.db")
    with Store(tmp_path / "s.db", readonly=True) as st:
        assert len(st.trials()) == 3
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            st.claim_trial("new", *TRIAL, env={})
    assert sha(tmp_path / "s.db") == digest


def test_unreadable_json_in_a_row_is_a_store_error(tmp_path):
    fill(tmp_path / "s.db", 2)
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("UPDATE trials SET hparams='{\"lr\": 0.' WHERE id=2")
    conn.commit()
    conn.close()
    with Store(tmp_path / "s.db", readonly=True) as st:
        with pytest.raises(StoreError, match=r"s.db: is damaged: unreadable hparams of trial 2"):
            st.trials()


# ---- reading on read-only media, no side files left ------------------------------------------
def test_readonly_opens_leave_no_side_files_even_for_refused_stores(tmp_path):
    """A store is in WAL mode; a plain ``mode=ro`` reader created ``-wal``/``-shm`` beside the
    user's file and left them there, for stores it read and stores it refused alike."""
    fill(tmp_path / "s.db", 3)
    _newer(tmp_path / "newer.db")
    before = {p.name: sha(p) for p in tmp_path.iterdir()}
    with Store(tmp_path / "s.db", readonly=True) as st:
        assert len(st.trials()) == 3
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            st.claim_trial("new", *TRIAL, env={})
    with pytest.raises(StoreError, match="newer beyondsgd"):
        Store(tmp_path / "newer.db", readonly=True)
    assert {p.name: sha(p) for p in tmp_path.iterdir()} == before


def test_readonly_shares_the_side_files_of_a_running_writer(tmp_path):
    """While a writer holds the store (its -wal has rows not yet in the file), a reader sees
    them, and leaves the writer's side files alone."""
    with Store(tmp_path / "s.db") as writer:
        writer.begin_trial("k1", *TRIAL, env={})
        with Store(tmp_path / "s.db", readonly=True) as reader:
            assert [t["key"] for t in reader.trials()] == ["k1"]
        assert (tmp_path / "s.db-wal").exists()
        writer.begin_trial("k2", *TRIAL, env={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]


def test_readonly_mode_without_write_access_is_immutable(tmp_path, monkeypatch):
    """Where the store cannot be written (read-only media, no permission: ``os.access`` says so
    even to root on a read-only file system) it is opened immutable, creating nothing."""
    from beyondsgd.bench.store import file as store_file

    fill(tmp_path / "s.db", 2)
    monkeypatch.setattr(store_file.os, "access", lambda *a, **k: False)
    assert store_file.readonly_mode(tmp_path / "s.db") == "immutable"
    with Store(tmp_path / "s.db", readonly=True) as st:
        assert len(st.trials()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]
    with pytest.raises(StoreError, match="cannot be written: read-only file system"):
        Store(tmp_path / "s.db")
    with pytest.raises(StoreError, match="cannot be created: read-only file system"):
        Store(tmp_path / "new.db")


def test_a_store_on_read_only_media_is_read_and_a_writer_refused_in_one_line(tmp_path):
    media = tmp_path / "ro"
    media.mkdir()
    fill(media / "good.db", 2)
    if not read_only_media.available(media):
        pytest.skip("no read-only bind mount here (unshare --mount --map-root-user)")
    digest = sha(media / "good.db")
    read = read_only_media.run(media, f"{sys.executable} -c \"from beyondsgd.bench.store import "
                                   f"Store; print(len(Store('{media}/good.db', readonly=True)"
                                   ".trials()))\"")
    assert read.returncode == 0 and read.stdout.strip() == "2", read.stderr
    out = tmp_path / "rep"
    cli = f"{sys.executable} -m beyondsgd.cli"
    report = read_only_media.run(media, f"{cli} report {media}/good.db --out {out} --no-plots")
    assert report.returncode == 0, report.stderr
    assert "damaged" not in report.stderr and (out / "report.md").exists()
    bench = read_only_media.run(media, f"{cli} bench --methods sgd --epochs 1 --seeds 1 --quiet "
                                    f"--store {media}/good.db")
    assert bench.returncode == 2 and "Traceback" not in bench.stderr, bench.stderr
    (line,) = bench.stderr.strip().splitlines()
    assert "good.db: cannot be written: read-only file system" in line
    assert sorted(p.name for p in media.iterdir()) == ["good.db"]
    assert sha(media / "good.db") == digest


# ---- a killed suite: its pool workers die with it and write nothing after -----------------------
def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _rows(path: Path) -> int:
    """Evaluation rows in the store (0 before it exists)."""
    try:
        with Store(path, readonly=True) as st:
            return st.conn.execute("SELECT COUNT(*) FROM evals").fetchone()[0]
    except StoreError:
        return 0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc")
def test_pool_workers_of_a_killed_suite_exit_and_write_nothing_after(tmp_path):
    """kill -9 of `beyondsgd suite` (the main process only) once its workers train: before, the
    2 pool workers outlived it and wrote per-epoch rows into the store after its death. No clock:
    polls until a worker has written, then until every worker is gone (or a row appears)."""
    store = tmp_path / "s.db"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        [sys.executable, "-m", "beyondsgd.cli", "suite", "--budget", "smoke", "--methods",
         "sgd,adam,momentum", "--workers", "2", "--threads", "1", "--store", str(store),
         "--out", str(tmp_path / "report"), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while proc.poll() is None and not (_rows(store) and len(_children(proc.pid)) >= 2):
            time.sleep(0.02)
        assert proc.poll() is None, f"the suite ended before the test could kill it: " \
                                    f"{proc.stderr.read()[-2000:]}"
        workers = {pid: lease.start_token(pid) for pid in _children(proc.pid)}
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    # a commit under way at the kill may still land (one per worker); nothing after it may
    written, cap = _rows(store), len(workers)
    alive = list(workers)
    for _ in range(20_000):  # a hang guard counted in polls, far beyond any worker's exit
        alive = [pid for pid, token in workers.items() if lease.pid_alive(pid, token)]
        if not alive or _rows(store) > written + cap:
            break
        time.sleep(0.05)
    after = _rows(store)
    assert after <= written + cap, f"workers wrote {after - written} rows after the suite died"
    assert not alive, f"workers {alive} outlived the suite"


def test_a_store_write_asks_before_write_first(tmp_store):
    """The hook a pool worker sets (``jobs.exit_if_orphaned``) runs before every write
    transaction, so a refusal there leaves the store as it was."""
    tid = tmp_store.begin_trial("k1", *TRIAL, env={})
    calls = []

    def refuse():
        calls.append(1)
        raise RuntimeError("orphaned")

    tmp_store.before_write = refuse
    for write in (lambda: tmp_store.add_eval(tid, {"epoch": 0, "step": 0, "train_seconds": 0.0}),
                  lambda: tmp_store.add_events(tid, 1, 1, [{"kind": "x"}]),
                  lambda: tmp_store.truncate_after(tid, -1),
                  lambda: tmp_store.end_trial(tid, "finished", {})):
        with pytest.raises(RuntimeError, match="orphaned"):
            write()
    assert len(calls) == 4 and tmp_store.evals(tid) == [] and tmp_store.events(tid) == []
    assert tmp_store.trials()[0]["status"] == "running"
