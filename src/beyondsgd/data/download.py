"""Checked downloads into a local cache (for users with internet access).

A file is fetched once into ``cache_dir``, its SHA-256 is compared with the expected value, and
only then moved into place; a mismatch deletes the partial file and raises ``DataFileError``.
The cache directory defaults to ``$BEYONDSGD_DATA`` or ``~/.cache/beyondsgd``.
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


def default_cache_dir() -> Path:
    return Path(os.environ.get("BEYONDSGD_DATA", Path.home() / ".cache" / "beyondsgd"))


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: str | Path, sha256: str | None, timeout: float = 60.0,
          quiet: bool = False) -> Path:
    """Download ``url`` to ``dest`` unless a file with the right checksum is already there."""
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        if not quiet:
            print(f"downloading {url} -> {dest}", file=sys.stderr)
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    h.update(block)
                    out.write(block)
        except (urllib.error.URLError, OSError) as exc:
            raise DataFileError(f"could not download {url}: {exc}") from None
        digest = h.hexdigest()
        if sha256 is not None and digest != sha256:
            raise DataFileError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest}; "
                "the file was not kept (a corrupt download or a changed mirror)"
            )
        os.replace(tmp, dest)
        return dest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
