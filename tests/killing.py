"""Kill -9 a training subprocess once its store shows enough finished epochs (the resume tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from beyondsgd.bench.store import Store


def kill_after_epochs(proc: subprocess.Popen, path: Path, epochs: int, timeout: float = 120,
                      poll: float = 0.1) -> None:
    """SIGKILL ``proc`` as soon as the first trial in the store at ``path`` (read-only, while
    the subprocess writes it) has ``epochs`` epochs done, or after ``timeout`` seconds; then
    reap it."""
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            time.sleep(poll)
            if path.exists():
                try:
                    with Store(path, readonly=True) as st:
                        rows = st.trials()
                except Exception:
                    continue
                if rows and rows[0]["epochs_done"] >= epochs:
                    break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
