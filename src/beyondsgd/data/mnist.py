"""MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao et al. 2017) from their four IDX files.

Each loader looks in a directory given by the caller (``root=``; CLI ``--data-dir``; or the
environment variable ``$BEYONDSGD_MNIST`` / ``$BEYONDSGD_FASHION_MNIST``), else in its default
places, and with ``download=True`` fetches the official gzip files into the cache
(``$BEYONDSGD_DATA/mnist``, ``.../fashion-mnist``), each checked against its published digests
before it is kept. Images become float32 (N, 1, 28, 28) in [0, 1]; 60000 training images
(``val_size`` held out for validation, chosen by ``seed``) and the 10000 test images.

Example (offline: point ``root`` at any folder with the four files)::

    >>> from beyondsgd.data import load_mnist, mnist_status
    >>> if mnist_status() is None:  # doctest: +SKIP
    ...     ds = load_mnist()       # x_train (55000, 1, 28, 28)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .datasets import Dataset, _images
from .download import default_cache_dir, fetch
from .idx import DataFileError, read_idx

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Official locations and SHA-256 of the gzip files (the values tensorflow/datasets publishes in
# its url_checksums files, mnist.txt and fashion_mnist.txt; sizes 26421880/29515/4422102/5148 and
# 9912422/28881/1648877/4542 bytes). The Debian package's files are recompressed (other bytes,
# same content), which is why the local reader never checks them.
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",  # noqa: E501
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",  # noqa: E501
}
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",  # noqa: E501
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",  # noqa: E501
}

# MD5 of the same four MNIST gzip files as listed by torchvision.datasets.MNIST (its
# ``resources``; identical bytes on the ossci-datasets mirror and yann.lecun.com). A download must
# match both tables.
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


# --------------------------------------------------------------------------------------------
# IDX image datasets
# --------------------------------------------------------------------------------------------
def _find_idx(root: Path, stem: str) -> Path | None:
    for cand in (root / f"{stem}.gz", root / stem):
        if cand.exists():
            return cand
    return None


def _missing_idx(root: Path) -> list[str]:
    """The IDX files (stems) absent from ``root``, gz or raw (file existence only)."""
    return [stem for stem in IDX_FILES.values() if _find_idx(root, stem) is None]


def _idx_status(name: str, places: list[Path], explicit: bool, env: str, how: str
                ) -> str | None:
    missing = {p: _missing_idx(p) for p in places}
    if any(not m for m in missing.values()):
        return None
    where = " or ".join(str(p) for p in places)
    src = f" (from --data-dir / ${env})" if explicit else f" (or ${env})"
    partial = "".join(f"; {p} lacks {', '.join(m)}" for p, m in missing.items()
                      if len(m) < len(IDX_FILES))
    return f"{name} IDX files not found in {where}{src}{partial}; get them: {how}"


FASHION_MNIST_HOW = ("apt-get install dataset-fashion-mnist (Debian/Ubuntu), or --data-dir DIR, "
                     "or --download")
MNIST_HOW = "--download (needs internet once), or --data-dir DIR"


def fashion_mnist_status(root: str | Path | None = None, download: bool | None = None
                         ) -> str | None:
    """``None`` when ``load_fashion_mnist(root, download)`` will find its four IDX files (or may
    download them); otherwise one line naming where it looked and how to get them.

    Cheap: checks file existence only, nothing is read. Uses the loader's search order
    (``root`` or ``$BEYONDSGD_FASHION_MNIST``, else the Debian directory, then the cache);
    ``download=None`` reads ``$BEYONDSGD_DOWNLOAD``.
    """
    if download is None:
        download = os.environ.get("BEYONDSGD_DOWNLOAD", "") == "1"
    explicit = root or os.environ.get("BEYONDSGD_FASHION_MNIST") or None
    places = [Path(explicit)] if explicit else [FASHION_MNIST_DIR,
                                                default_cache_dir() / "fashion-mnist"]
    if download:
        return None
    return _idx_status("Fashion-MNIST", places, bool(explicit), "BEYONDSGD_FASHION_MNIST",
                       FASHION_MNIST_HOW)


def mnist_status(root: str | Path | None = None, download: bool | None = None) -> str | None:
    """As ``fashion_mnist_status`` for ``load_mnist`` (``root``/``$BEYONDSGD_MNIST``, else the
    cache; there is no Debian package)."""
    if download is None:
        download = os.environ.get("BEYONDSGD_DOWNLOAD", "") == "1"
    explicit = root or os.environ.get("BEYONDSGD_MNIST") or None
    places = [Path(explicit) if explicit else default_cache_dir() / "mnist"]
    if download:
        return None
    return _idx_status("MNIST", places, bool(explicit), "BEYONDSGD_MNIST", MNIST_HOW)


NUM_CLASSES = 10  # MNIST digits 0..9, Fashion-MNIST's ten classes 0..9


def check_images_labels(key: str, a: np.ndarray, path: Path) -> None:
    """``DataFileError`` unless ``a`` is what an (Fashion-)MNIST IDX file holds: images uint8
    (N, H, W), labels N integers in 0..9 (as the CIFAR-10 reader checks its labels)."""
    if key.endswith("images"):
        if a.dtype != np.uint8 or a.ndim != 3:
            raise DataFileError(f"{path}: images must be uint8 of shape (N, 28, 28), got "
                                f"{a.dtype} {a.shape}")
        return
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise DataFileError(f"{path}: labels must be N integers in 0..{NUM_CLASSES - 1}, got "
                            f"{a.dtype} of shape {a.shape}")
    if a.size and (int(a.min()) < 0 or int(a.max()) >= NUM_CLASSES):
        bad = a[(a < 0) | (a >= NUM_CLASSES)]
        raise DataFileError(f"{path}: labels must be integers in 0..{NUM_CLASSES - 1}, got "
                            f"{len(bad)} outside (e.g. {int(bad[0])}; range "
                            f"{int(a.min())}..{int(a.max())})")


def _load_idx_dir(root: Path, how_to_get: str) -> dict[str, np.ndarray]:
    out = {}
    for key, stem in IDX_FILES.items():
        path = _find_idx(root, stem)
        if path is None:
            raise DataFileError(f"{root / (stem + '.gz')}: file not found (nor the uncompressed "
                                f"{stem}). {how_to_get}")
        try:
            out[key] = read_idx(path)
            check_images_labels(key, out[key], path)
        except DataFileError as exc:
            raise DataFileError(f"{exc}. {how_to_get}") from None
    n_tr, n_te = len(out["train_images"]), len(out["test_images"])
    if len(out["train_labels"]) != n_tr or len(out["test_labels"]) != n_te:
        raise DataFileError(f"{root}: image and label counts differ. {how_to_get}")
    return out


def _download_idx(base_url: str, dest: Path, sha256: dict[str, str],
                  md5: dict[str, str] | None = None) -> None:
    """Fetch the four gzip files into ``dest``; each must match its published digest(s)."""
    for fname, digest in sha256.items():
        fetch(base_url.rstrip("/") + "/" + fname, dest / fname, digest,
              md5=(md5 or {}).get(fname))


def load_fashion_mnist(root: str | Path | None = None, download: bool = False,
                       val_size: int = 5000, seed: int = 0, base_url: str = FASHION_MNIST_URL,
                       cache_dir: str | Path | None = None) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017) from a directory of the four IDX files (gz or raw).

    Looks in ``root`` (or ``$BEYONDSGD_FASHION_MNIST``), else
    ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``), else the
    cache; ``download=True`` fetches the official files
    (SHA-256 checked) into the cache. 60k train (``val_size`` held out for validation), 10k test.
    """
    how = ("Install it with `apt-get install dataset-fashion-mnist`, point root= (CLI: --data-dir) "
           "at a directory with the four IDX files, or pass download=True (CLI: --download)")
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "fashion-mnist"
    root = root or os.environ.get("BEYONDSGD_FASHION_MNIST") or None
    download = download or os.environ.get("BEYONDSGD_DOWNLOAD", "") == "1"
    if root is None:
        candidates = [FASHION_MNIST_DIR, cache]
        root = next((c for c in candidates if not _missing_idx(c)), None)
        if root is None:
            root = cache if download else FASHION_MNIST_DIR
    root = Path(root)
    if download and _missing_idx(root):
        root = cache
        _download_idx(base_url, root, FASHION_MNIST_SHA256)
    d = _load_idx_dir(root, how)
    return _images("fashion_mnist", d["train_images"], d["train_labels"], d["test_images"],
                   d["test_labels"], val_size, seed, root=str(root))


def load_mnist(root: str | Path | None = None, download: bool = False, val_size: int = 5000,
               seed: int = 0, base_url: str = MNIST_URL,
               cache_dir: str | Path | None = None) -> Dataset:
    """MNIST (LeCun et al. 1998): four IDX files in ``root`` or the cache; ``download=True``
    fetches them (SHA-256 checked). No Debian package exists, so this needs internet once."""
    how = ("MNIST is not bundled: pass download=True (CLI: --download) on a machine with internet, "
           "or point root= (CLI: --data-dir) at a directory with the four IDX files")
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "mnist"
    root = root or os.environ.get("BEYONDSGD_MNIST") or None
    download = download or os.environ.get("BEYONDSGD_DOWNLOAD", "") == "1"
    root = Path(root) if root is not None else cache
    if download and _missing_idx(root):
        root = cache
        _download_idx(base_url, root, MNIST_SHA256, MNIST_MD5)
    d = _load_idx_dir(root, how)
    return _images("mnist", d["train_images"], d["train_labels"], d["test_images"],
                   d["test_labels"], val_size, seed, root=str(root))

