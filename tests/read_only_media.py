"""A folder on read-only media, for tests: ``folder`` bind-mounted read-only in a private mount
namespace while one shell command runs (``unshare --mount --map-root-user``).

Tests run as root, whom ``chmod 555`` does not stop; a read-only mount stops everyone, and
``os.access`` reports it. Where unshare or mounts are not allowed, :func:`available` says so and
the tests that need it are skipped.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def run(folder: Path, command: str) -> subprocess.CompletedProcess:
    """Run the shell line ``command`` while ``folder`` is read-only (for this command only)."""
    line = f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder} && " \
        + command
    return subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", line],
                          capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def available(folder: Path) -> bool:
    """Whether ``run`` works here (and really makes ``folder`` read-only)."""
    try:
        return run(folder, f"! touch {folder}/.probe").returncode == 0
    except FileNotFoundError:  # no unshare
        return False
