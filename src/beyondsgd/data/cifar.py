"""CIFAR-10 (Krizhevsky 2009), the "python version": checked download, safe extraction, and a
restricted reader of its pickled batches.

Format (https://www.cs.toronto.edu/~kriz/cifar.html): ``cifar-10-python.tar.gz`` holds the
folder ``cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5`` (10000 training images
each), ``test_batch`` (10000) and ``batches.meta``. Each batch is a Python 2 pickle of a dict;
``b'data'`` is a uint8 array of shape (10000, 3072) whose row is one 32x32 image stored as three
1024-value planes (red, green, blue), each plane row-major; ``b'labels'`` is a list of 10000
ints in 0..9. So ``data.reshape(-1, 3, 32, 32)`` is (N, channel, row, column).

Safety: a pickle can run code when loaded. Batches are unpickled only when their MD5 matches the
published value (files from a download or from the cache) or when the user pointed at them
explicitly (``root=`` / ``--data-dir`` / ``$BEYONDSGD_CIFAR10``), and always with
:class:`RestrictedUnpickler`, which resolves only the globals the real files use (numpy's array
reconstruction and dtype) and refuses any other global with :class:`UnsafePickleError`. The
archive is extracted member by member (only the expected regular files, read through
``TarFile.extractfile``); a member whose name is absolute or contains ``..`` makes the whole
archive refused.

Example (needs the data; ``--download`` fetches 163 MiB once)::

    >>> from beyondsgd.data import cifar10_status, load_cifar10
    >>> if cifar10_status() is None:  # doctest: +SKIP
    ...     ds = load_cifar10()       # x_train (45000, 3, 32, 32) float32 in [0, 1]
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .datasets import Dataset, _images
from .download import default_cache_dir, fetch, md5_of
from .idx import DataFileError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BATCHES = (*TRAIN_BATCHES, TEST_BATCH)
MEMBERS = (*BATCHES, "batches.meta")  # what extraction writes (readme.html is skipped)
# MD5 of the archive as published on https://www.cs.toronto.edu/~kriz/cifar.html
# (170498071 bytes). The table is keyed by file name so tests can substitute tiny files.
CIFAR10_ARCHIVE_MD5: dict[str, str] = {CIFAR10_ARCHIVE: "c58f30108f718f92721af3b95e74349a"}
# MD5 of each extracted member of that archive, as listed by torchvision.datasets.CIFAR10
# (train_list / test_list / meta); used to trust the cached copy before unpickling it.
CIFAR10_MEMBER_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR10_ENV = "BEYONDSGD_CIFAR10"
CIFAR10_HOW = (f"--download (needs internet once: 163 MiB from {CIFAR10_URL}{CIFAR10_ARCHIVE}), "
               f"or --data-dir DIR with an extracted copy in DIR/{CIFAR10_DIR}/")
_MAX_MEMBER_BYTES = 64 << 20  # a real batch is 31 MB; anything far larger is not CIFAR-10


class UnsafePickleError(DataFileError):
    """A pickle asked for a global that the restricted unpickler does not allow."""


# ---- the restricted unpickler ---------------------------------------------------------------
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, wherever it lives
_NUMERIC_KINDS = "biuf"


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """numpy's array reconstruction, for a plain ``ndarray`` only (no subclass)."""
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"array reconstruction of {subtype!r} refused; only numpy.ndarray")
    return _RECONSTRUCT(subtype, shape, dtype_code)


def _dtype(spec: Any, *args: Any) -> np.dtype:
    """``numpy.dtype`` for plain numeric types only (bool, int, uint, float): no object or
    structured dtypes, whose state could carry further objects."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str) or not spec or spec[0] not in _NUMERIC_KINDS:
        raise UnsafePickleError(f"numpy dtype {spec!r} refused; only numeric dtypes "
                                f"(kinds {', '.join(_NUMERIC_KINDS)})")
    return np.dtype(spec, *args)


# The globals the real files reference (written by Python 2 with numpy 1.x); numpy 2 names its
# module numpy._core, accepted too.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only :data:`ALLOWED_GLOBALS`.

    Dicts, lists, tuples, ints, floats, strings and bytes need no global. Anything else
    (``os.system``, ``builtins.eval``, ``_codecs.encode``, ...) raises ``UnsafePickleError``
    naming the global, before it is imported or called.

    >>> import pickle, io
    >>> RestrictedUnpickler(io.BytesIO(pickle.dumps({"k": [1, 2.5]}, protocol=2)),
    ...                     encoding="bytes").load()
    {'k': [1, 2.5]}
    >>> RestrictedUnpickler(io.BytesIO(b"cos\\nsystem\\n(S'echo hi'\\ntR."),
    ...                     encoding="bytes").load()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    beyondsgd.data.cifar.UnsafePickleError: refusing to load global 'os.system': ...
    """

    def find_class(self, module: str, name: str) -> Any:
        obj = ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to load global '{module}.{name}': a CIFAR-10 batch only needs "
                "numpy array reconstruction (numpy.core.multiarray._reconstruct, numpy.ndarray, "
                "numpy.dtype)")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r}")


def restricted_loads(raw: bytes) -> Any:
    """Unpickle ``raw`` (a Python 2 pickle, encoding='bytes') with the restricted unpickler."""
    return RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 images (N, 3, 32, 32), int64 labels (N,)), validated."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found") from None
    try:
        d = restricted_loads(raw)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except Exception as exc:  # truncated or garbled pickle: any decoding error
        raise DataFileError(f"{path}: not a readable CIFAR-10 batch "
                            f"({type(exc).__name__}: {exc})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        keys = list(d)[:6] if isinstance(d, dict) else type(d).__name__
        raise DataFileError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and "
                            f"b'labels', got {keys})")
    data, labels = d[b"data"], d[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        what = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise DataFileError(f"{path}: b'data' must be uint8 of shape (N, 3072), got {what}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataFileError(f"{path}: b'labels' is not a list of integers") from None
    if y.shape != (len(data),) or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DataFileError(f"{path}: b'labels' must be {len(data)} integers in 0..9, got shape "
                            f"{y.shape}" + (f", range {y.min()}..{y.max()}" if y.size else ""))
    return data.reshape(-1, 3, 32, 32), y


# ---- safe extraction -------------------------------------------------------------------------
def _member_name(name: str, archive: Path) -> tuple[str, ...]:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
        raise DataFileError(f"refusing archive {archive}: member {name!r} would be written "
                            "outside the target directory (absolute path or '..')")
    return tuple(p for p in parts if p != ".")


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract the expected members of ``cifar-10-python.tar.gz`` into ``dest/cifar-10-batches-py``.

    Every member name is checked first (absolute or ``..`` -> the archive is refused); only
    regular files named ``cifar-10-batches-py/<member>`` for the members in :data:`MEMBERS` are
    written, through a temporary folder renamed into place, so a failure leaves nothing behind.
    """
    archive, dest = Path(archive), Path(dest)
    target = dest / CIFAR10_DIR
    wanted = {(CIFAR10_DIR, m): m for m in MEMBERS}
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{CIFAR10_DIR}."))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()  # reads the whole archive: truncation shows here
                found = {}
                for m in members:
                    key = _member_name(m.name, archive)
                    if key in wanted:
                        if not m.isfile():
                            raise DataFileError(f"refusing archive {archive}: member {m.name!r} "
                                                "is not a regular file (link or device)")
                        if m.size > _MAX_MEMBER_BYTES:
                            raise DataFileError(f"refusing archive {archive}: member {m.name!r} "
                                                f"has {m.size} bytes, far more than CIFAR-10's")
                        found[wanted[key]] = m
                missing = [n for n in BATCHES if n not in found]
                if missing:
                    raise DataFileError(f"{archive}: not the CIFAR-10 python archive (no "
                                        f"{CIFAR10_DIR}/{', '.join(missing)})")
                for name, m in found.items():
                    src = tar.extractfile(m)
                    with open(tmp / name, "wb") as out:
                        shutil.copyfileobj(src, out)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DataFileError(f"{archive}: corrupt or truncated archive ({exc}); delete it "
                                "and download again") from None
        if target.exists() and not _missing(target):
            return target  # another process finished the same extraction meanwhile
        if target.exists():  # an earlier, incomplete extraction in our cache
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if _missing(target):  # not a concurrent extraction that won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


# ---- locating, status, loading ---------------------------------------------------------------
def _batch_dir(root: Path) -> Path:
    """``root/cifar-10-batches-py`` or, when ``root`` itself holds the batches, ``root``."""
    if (root / CIFAR10_DIR).is_dir() or not any((root / b).exists() for b in BATCHES):
        return root / CIFAR10_DIR
    return root


def _missing(folder: Path) -> list[str]:
    return [b for b in BATCHES if not (folder / b).is_file()]


def _explicit(root: str | Path | None) -> Path | None:
    root = root or os.environ.get(CIFAR10_ENV) or None
    return Path(root) if root is not None else None


def _places(explicit: Path | None, cache: Path) -> list[Path]:
    """Where batches or the archive may be: the user's directory (if any), then the cache."""
    return [explicit, cache] if explicit is not None else [cache]


def cifar10_status(root: str | Path | None = None, download: bool | None = None) -> str | None:
    """``None`` when ``load_cifar10(root, download)`` will find the six batches (or the archive
    to extract, or may download it); otherwise one line naming where it looked, what is
    missing, and how to get it. Checks file existence only; ``download=None`` reads
    ``$BEYONDSGD_DOWNLOAD``.
    """
    if download is None:
        download = os.environ.get("BEYONDSGD_DOWNLOAD", "") == "1"
    explicit = _explicit(root)
    places = _places(explicit, default_cache_dir() / "cifar10")
    if download or any(not _missing(_batch_dir(p)) or (p / CIFAR10_ARCHIVE).is_file()
                       for p in places):
        return None
    where = " or ".join(str(_batch_dir(p)) for p in places)
    src = f" (from --data-dir / ${CIFAR10_ENV})" if explicit else f" (or ${CIFAR10_ENV})"
    lacks = "".join(f"; {_batch_dir(p)} lacks {', '.join(_missing(_batch_dir(p)))}"
                    for p in places if len(_missing(_batch_dir(p))) < len(BATCHES))
    return f"CIFAR-10 batches not found in {where}{src}{lacks}; get them: {CIFAR10_HOW}"


def _checked(folder: Path) -> None:
    """Refuse to unpickle cached batches whose MD5 differs from the published one."""
    for name in BATCHES:
        got, want = md5_of(folder / name), CIFAR10_MEMBER_MD5.get(name)
        if got != want:
            raise DataFileError(
                f"{folder / name}: md5 {got} differs from the published {want}; the file was not "
                f"unpickled. Delete {folder} and run again with --download, or point --data-dir "
                "at a copy you trust")


def _archive(explicit: Path | None, cache: Path, download: bool, base_url: str) -> Path:
    """The MD5-checked archive: the user's, else the cached one, else a download."""
    digest = CIFAR10_ARCHIVE_MD5[CIFAR10_ARCHIVE]
    if explicit is not None and (explicit / CIFAR10_ARCHIVE).is_file():
        archive = explicit / CIFAR10_ARCHIVE
    elif download:
        return fetch(base_url.rstrip("/") + "/" + CIFAR10_ARCHIVE, cache / CIFAR10_ARCHIVE,
                     md5=digest)
    elif (cache / CIFAR10_ARCHIVE).is_file():
        archive = cache / CIFAR10_ARCHIVE
    else:
        where = " or ".join(str(_batch_dir(p)) for p in _places(explicit, cache))
        raise DataFileError(f"CIFAR-10 batches not found in {where}; get them: {CIFAR10_HOW} "
                            "(Python: download=True or root=DIR)")
    got = md5_of(archive)
    if got != digest:
        raise DataFileError(f"{archive}: md5 {got} differs from the published {digest}; delete "
                            "it and download again")
    return archive


def load_cifar10(root: str | Path | None = None, download: bool = False, val_size: int = 5000,
                 seed: int = 0, base_url: str = CIFAR10_URL,
                 cache_dir: str | Path | None = None) -> Dataset:
    """CIFAR-10: 50000 training images (``val_size`` of them, chosen by ``seed``, held out for
    validation) and the 10000 of ``test_batch``.

    ``x`` is float32 of shape (N, 3, 32, 32) (channels red, green, blue), pixel / 255 so in
    [0, 1], no mean/std normalisation; ``y`` int64 in 0..9 (:data:`CIFAR10_CLASSES`).

    Looks in ``root`` (or ``$BEYONDSGD_CIFAR10``; CLI ``--data-dir``): ``root/cifar-10-batches-py``
    or ``root`` itself, or an archive ``root/cifar-10-python.tar.gz`` (MD5 checked, extracted into
    the cache); else the cache (``cache_dir`` or ``$BEYONDSGD_DATA/cifar10``), whose batches are
    MD5-checked before unpickling. ``download=True`` (or ``$BEYONDSGD_DOWNLOAD=1``) fetches the
    archive from ``base_url`` into the cache when nothing is found.
    """
    if not isinstance(val_size, int) or val_size < 0:
        raise ValueError(f"val_size must be an integer >= 0, got {val_size!r}")
    download = download or os.environ.get("BEYONDSGD_DOWNLOAD", "") == "1"
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "cifar10"
    explicit = _explicit(root)
    folder = _batch_dir(explicit) if explicit is not None else cache / CIFAR10_DIR
    trusted_by_user = explicit is not None and not _missing(folder)
    if not trusted_by_user:
        folder = cache / CIFAR10_DIR
        if _missing(folder):
            extract_archive(_archive(explicit, cache, download, base_url), cache)
        _checked(folder)
    parts = [read_batch(folder / b) for b in TRAIN_BATCHES]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = read_batch(folder / TEST_BATCH)
    return _images("cifar10", x_train, y_train, x_test, y_test, val_size, seed,
                   root=str(folder), classes=list(CIFAR10_CLASSES),
                   checksum_verified=not trusted_by_user)
