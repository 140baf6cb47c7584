"""Checked downloads into a local cache (for users with internet access).

A file is fetched once into ``cache_dir`` under a temporary name, its SHA-256 and/or MD5 are
compared with the published values, and only then is it moved into place; a mismatch deletes the
partial file and raises ``DataFileError``. A file already in place whose digests match is reused
without any request. Every download must name at least one expected digest. The cache directory
defaults to ``$BEYONDSGD_DATA`` or ``~/.cache/beyondsgd``.

Example::

    >>> from beyondsgd.data.download import digest_of
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"
    >>> _ = p.write_bytes(b"abc")
    >>> digest_of(p, "md5")
    '900150983cd24fb0d6963f7d28e17f72'
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .idx import DataFileError

ALGORITHMS = ("sha256", "md5")


def default_cache_dir() -> Path:
    return Path(os.environ.get("BEYONDSGD_DATA", Path.home() / ".cache" / "beyondsgd"))


def digest_of(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``algorithm`` one of :data:`ALGORITHMS`), read in 1 MiB blocks."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown digest {algorithm!r}; accepted: {', '.join(ALGORITHMS)}")
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_of(path: str | Path) -> str:
    return digest_of(path, "sha256")


def md5_of(path: str | Path) -> str:
    return digest_of(path, "md5")


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    want = {k: v.lower() for k, v in (("sha256", sha256), ("md5", md5)) if v}
    if not want:
        raise ValueError("a download needs an expected sha256 or md5; none was given")
    return want


def matches(path: str | Path, sha256: str | None = None, md5: str | None = None) -> bool:
    """Whether the file at ``path`` exists and has every given digest."""
    want = _expected(sha256, md5)
    path = Path(path)
    return path.is_file() and all(digest_of(path, a) == d for a, d in want.items())


def _progress(url: str, done: int, total: int | None, last: int) -> int:
    """Print a progress line at every further 10 % (or 10 MiB when the size is unknown)."""
    step = done * 10 // total if total else done >> 23
    if step > last:
        size = f"{done / 2**20:.1f}/{total / 2**20:.1f} MiB" if total else f"{done / 2**20:.0f} MiB"
        print(f"  {url}: {size}", file=sys.stderr)
    return max(step, last)


def fetch(url: str, dest: str | Path, sha256: str | None = None, timeout: float = 60.0,
          quiet: bool = False, md5: str | None = None) -> Path:
    """Download ``url`` to ``dest`` unless a file with the right digests is already there.

    ``sha256`` and/or ``md5`` (at least one) are the published digests; every one given must
    match, else nothing is left at ``dest`` and ``DataFileError`` says what differed.
    """
    want = _expected(sha256, md5)
    dest = Path(dest)
    if dest.is_file() and all(digest_of(dest, a) == d for a, d in want.items()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        if not quiet:
            print(f"downloading {url} -> {dest}", file=sys.stderr)
        hashes = {a: hashlib.new(a) for a in want}
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() and int(length) > 0 else None
                done, last = 0, 0
                for block in iter(lambda: resp.read(1 << 20), b""):
                    for h in hashes.values():
                        h.update(block)
                    out.write(block)
                    done += len(block)
                    if not quiet:
                        last = _progress(url, done, total, last)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DataFileError(f"could not download {url}: {exc}") from None
        for algorithm, expected in want.items():
            got = hashes[algorithm].hexdigest()
            if got != expected:
                raise DataFileError(
                    f"checksum mismatch for {url}: expected {algorithm} {expected}, got {got}; "
                    "the file was not kept (a corrupt or truncated download, or a changed mirror)"
                )
        os.replace(tmp, dest)
        return dest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
