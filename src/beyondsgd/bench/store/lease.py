"""Trial leases: which process is running a trial, and whether it is still alive.

A process that claims a trial in the results store writes its identity into the trial's row:
the *host* (host name and PID namespace: two processes with the same host see each other's
process ids), its *pid*, and a *token* (boot id and the process's start time, so that a pid
reused after a crash or a reboot is not mistaken for the original owner), plus a *heartbeat*
timestamp it refreshes after every epoch. Another process that finds the trial ``running``
decides with :func:`holder_alive`:

* same host: the holder is alive exactly when its pid exists, is not a zombie and has the same
  start token (a crashed holder is taken over at once, however fresh its heartbeat);
* another host (or another container): the holder is alive while its heartbeat is younger than
  the lease (``lease_seconds``; default :data:`DEFAULT_LEASE_SECONDS`, or the environment
  variable :data:`LEASE_ENV`). An epoch longer than the lease lets a second host start the same
  trial; the first one then stops at its next heartbeat (results are deterministic, so nothing
  is recorded twice, only work is wasted).
"""

from __future__ import annotations

import functools
import math
import os
import socket
import time
from dataclasses import dataclass

DEFAULT_LEASE_SECONDS = 1800.0
LEASE_ENV = "BEYONDSGD_LEASE_SECONDS"


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    token: str


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def _boot_id() -> str:
    return (_read("/proc/sys/kernel/random/boot_id") or "").strip()


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """Host name plus PID namespace (containers on one machine are different hosts)."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return socket.gethostname() + (f"/{ns}" if ns else "")


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of ``pid`` from ``/proc`` (None where there is no ``/proc``)."""
    text = _read(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def start_token(pid: int) -> str:
    """The boot id and start time of ``pid`` ('' where ``/proc`` does not tell)."""
    st = _stat(pid)
    return f"{_boot_id()}:{st[1]}" if st is not None else ""


def current_owner() -> Owner:
    """This process (computed per call: a forked child is another owner)."""
    pid = os.getpid()
    return Owner(host_id(), pid, start_token(pid))


def pid_alive(pid: int, token: str | None) -> bool:
    """Whether process ``pid`` of this host runs and is the one that wrote ``token``."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    except OSError:
        return False
    st = _stat(pid)
    if st is None:
        return True  # no /proc: the pid exists, trust it
    if st[0] in ("Z", "X"):  # a zombie has finished running
        return False
    return not token or token == f"{_boot_id()}:{st[1]}"


def holder_alive(host: str | None, pid: int | None, token: str | None,
                 heartbeat: float | None, lease_seconds: float, me: Owner,
                 now: float | None = None) -> bool:
    """True when a process other than ``me`` holds the lease and must be left alone."""
    if pid is None or host is None:
        return False  # nobody holds it (released, or written by an older version)
    if host == me.host:
        if pid == me.pid and (token or "") == me.token:
            return False  # our own (e.g. a trial this process stopped early)
        return pid_alive(pid, token)
    now = time.time() if now is None else now
    return heartbeat is not None and now - heartbeat < lease_seconds


def describe(host: str | None, pid: int | None, heartbeat: float | None,
             now: float | None = None) -> str:
    """``pid 123 on host h, heartbeat 4 s ago`` (for messages)."""
    now = time.time() if now is None else now
    age = ("no heartbeat" if heartbeat is None
           else f"heartbeat {max(0.0, now - heartbeat):.0f} s ago")
    return f"pid {pid} on host {(host or '?').split('/')[0]}, {age}"


def lease_seconds(value: float | str | None = None) -> float:
    """A validated lease length: ``value``, else ``$BEYONDSGD_LEASE_SECONDS``, else the default."""
    source = "lease_seconds"
    if value is None:
        value = os.environ.get(LEASE_ENV)
        source = LEASE_ENV
        if value is None or value == "":
            return DEFAULT_LEASE_SECONDS
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    if isinstance(value, bool) or not (math.isfinite(out) and out > 0):
        raise ValueError(f"{source} must be a positive number of seconds, got {value!r}")
    return out
