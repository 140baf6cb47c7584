"""Datasets as in-memory tensors with a fixed train/validation/test split chosen by a seed.

Every loader returns a ``Dataset``. Classification labels are int64 class indices; regression
targets are float32 of shape (N, outputs), standardised with the *training* mean and std (the
scaling is kept in ``info`` so MSE can be converted back to the original units).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
FASHION_MNIST_SHA256: dict[str, str | None] = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",  # noqa: E501
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",  # noqa: E501
}
MNIST_SHA256: dict[str, str | None] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",  # noqa: E501
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",  # noqa: E501
}


@dataclass
class Dataset:
    """Train/validation/test tensors of one dataset (on one device)."""

    name: str
    task: str  # "classification" | "regression"
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def output_dim(self) -> int:
        return self.num_classes if self.task == "classification" else self.y_train.shape[1]

    def to(self, device: str | torch.device) -> Dataset:
        t = {k: getattr(self, k).to(device) for k in
             ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return replace(self, **t)

    def subsample_train(self, fraction: float, seed: int = 0) -> Dataset:
        """Keep a random ``fraction`` of the training set (validation and test unchanged)."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        n = self.x_train.shape[0]
        keep = max(1, int(round(fraction * n)))
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep]
        idx = idx.sort().values.to(self.x_train.device)
        return replace(self, x_train=self.x_train[idx], y_train=self.y_train[idx],
                       info={**self.info, "train_fraction": fraction})

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, {self.task}, train={len(self.x_train)}, "
                f"val={len(self.x_val)}, test={len(self.x_test)}, input={self.input_shape})")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _perm(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def _split_three(n: int, seed: int, val: float, test: float) -> tuple[np.ndarray, ...]:
    p = _perm(n, seed)
    n_test, n_val = int(round(test * n)), int(round(val * n))
    return p[n_test + n_val:], p[n_test:n_test + n_val], p[:n_test]


def _standardise(train: np.ndarray, *others: np.ndarray) -> tuple[list[np.ndarray], dict]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    out = [(a - mean) / std for a in (train, *others)]
    return out, {"mean": mean.tolist(), "std": std.tolist()}


def _classification(name: str, x: np.ndarray, y: np.ndarray, seed: int, val: float = 0.2,
                    test: float = 0.2, num_classes: int | None = None, **info: Any) -> Dataset:
    tr, va, te = _split_three(len(x), seed, val, test)
    (xtr, xva, xte), _ = _standardise(x[tr].astype(np.float64), x[va], x[te])
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    g = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return Dataset(name, "classification", f(xtr), g(y[tr]), f(xva), g(y[va]), f(xte), g(y[te]),
                   num_classes=num_classes or int(y.max()) + 1, info={"seed": seed, **info})


def _regression(name: str, x: np.ndarray, y: np.ndarray, seed: int, val: float = 0.2,
                test: float = 0.2, split: tuple[np.ndarray, ...] | None = None,
                **info: Any) -> Dataset:
    y = y.reshape(len(y), -1)
    tr, va, te = split if split is not None else _split_three(len(x), seed, val, test)
    (xtr, xva, xte), _ = _standardise(x[tr].astype(np.float64), x[va], x[te])
    (ytr, yva, yte), yscale = _standardise(y[tr].astype(np.float64), y[va], y[te])
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return Dataset(name, "regression", f(xtr), f(ytr), f(xva), f(yva), f(xte), f(yte),
                   info={"seed": seed, "y_scale": yscale, **info})


def _images(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
            test_y: np.ndarray, val_size: int, seed: int, **info: Any) -> Dataset:
    """28x28 uint8 images -> float32 in [0, 1], shape (N, 1, 28, 28); val carved from train."""
    if not 0 <= val_size < len(train_x):
        raise ValueError(f"val_size must be in [0, {len(train_x)}), got {val_size}")
    p = _perm(len(train_x), seed)
    va, tr = p[:val_size], np.sort(p[val_size:])
    va = np.sort(va)
    f = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)  # noqa: E731
    g = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return Dataset(name, "classification", f(train_x[tr]), g(train_y[tr]), f(train_x[va]),
                   g(train_y[va]), f(test_x), g(test_y), num_classes=10,
                   info={"seed": seed, **info})


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


def _load_idx_dir(root: Path, how_to_get: str) -> dict[str, np.ndarray]:
    out = {}
    for key, stem in IDX_FILES.items():
        path = _find_idx(root, stem)
        if path is None:
            raise DataFileError(f"{root / (stem + '.gz')}: file not found (nor the uncompressed "
                                f"{stem}). {how_to_get}")
        try:
            out[key] = read_idx(path)
        except DataFileError as exc:
            raise DataFileError(f"{exc}. {how_to_get}") from None
    n_tr, n_te = len(out["train_images"]), len(out["test_images"])
    if len(out["train_labels"]) != n_tr or len(out["test_labels"]) != n_te:
        raise DataFileError(f"{root}: image and label counts differ. {how_to_get}")
    return out


def _download_idx(base_url: str, dest: Path, sums: dict[str, str | None]) -> None:
    for fname, digest in sums.items():
        fetch(base_url.rstrip("/") + "/" + fname, dest / fname, digest)


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
    if download and _find_idx(root, IDX_FILES["train_images"]) is None:
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
    if download and _find_idx(root, IDX_FILES["train_images"]) is None:
        root = cache
        _download_idx(base_url, root, MNIST_SHA256)
    d = _load_idx_dir(root, how)
    return _images("mnist", d["train_images"], d["train_labels"], d["test_images"],
                   d["test_labels"], val_size, seed, root=str(root))


# --------------------------------------------------------------------------------------------
# scikit-learn bundled sets, MNIST-1D, synthetic regression
# --------------------------------------------------------------------------------------------
def _sklearn():
    try:
        import sklearn.datasets as skd
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("this dataset needs scikit-learn: pip install 'beyondsgd[bench]'") \
            from None
    return skd


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn digits: 1797 8x8 images, 10 classes, features standardised; 60/20/20 split."""
    d = _sklearn().load_digits()
    return _classification("digits", d.data, d.target, seed)


def load_breast_cancer(seed: int = 0) -> Dataset:
    """scikit-learn breast cancer (569 samples, 30 features, 2 classes); 60/20/20 split."""
    d = _sklearn().load_breast_cancer()
    return _classification("breast_cancer", d.data, d.target, seed)


def load_diabetes(seed: int = 0) -> Dataset:
    """scikit-learn diabetes regression (442 samples, 10 features); 60/20/20 split."""
    d = _sklearn().load_diabetes()
    return _regression("diabetes", d.data, d.target, seed)


def load_mnist1d(seed: int = 0, num_samples: int = 5000, val_fraction: float = 0.1) -> Dataset:
    """MNIST-1D (Greydanus 2020) generated locally with ``mnist1d.data.make_dataset``.

    The generator's own seed is fixed (42, its default) so the *data* are the standard ones;
    ``seed`` chooses the validation split. numpy's global RNG, which the generator reseeds, is
    restored afterwards. The generated arrays are cached in the data cache directory (about 1 MB)
    so worker processes do not regenerate them.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:  # pragma: no cover
        raise ImportError("MNIST-1D needs the mnist1d package: pip install 'beyondsgd[bench]'") \
            from None
    args = get_dataset_args()
    args.num_samples = num_samples
    cache = default_cache_dir() / f"mnist1d_{num_samples}_seed{args.seed}.npz"
    d = None
    if cache.exists():
        try:
            with np.load(cache) as z:
                d = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            d = None  # unreadable cache: regenerate
    if d is None:
        state = np.random.get_state()
        try:
            d = make_dataset(args)
        finally:
            np.random.set_state(state)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.npz")
            np.savez(tmp, **{k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")})
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only cache directory only costs the regeneration next time
    x, y = np.asarray(d["x"], np.float32), np.asarray(d["y"], np.int64)
    p = _perm(len(x), seed)
    n_val = int(round(val_fraction * len(x)))
    va, tr = np.sort(p[:n_val]), np.sort(p[n_val:])
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    g = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return Dataset("mnist1d", "classification", f(x[tr]), g(y[tr]), f(x[va]), g(y[va]),
                   f(d["x_test"]), g(np.asarray(d["y_test"])), num_classes=10,
                   info={"seed": seed, "generator_seed": args.seed})


def load_friedman1(seed: int = 0, n_samples: int = 2000, noise: float = 1.0) -> Dataset:
    """Friedman #1 (y = 10 sin(pi x1 x2) + 20 (x3 - 1/2)^2 + 10 x4 + 5 x5 + noise, 10 inputs).

    The data are drawn from a fixed generator seed (0) so every split seed sees the same points;
    ``seed`` chooses the 60/20/20 split.
    """
    x, y = _sklearn().make_friedman1(n_samples=n_samples, n_features=10, noise=noise,
                                     random_state=0)
    return _regression("friedman1", x, y, seed)


# The GDSolver toy regression functions (../shared/papers/gdsolver.md, official code):
TOY_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "affine": lambda x: 3 * x + 4,
    "polynomial": lambda x: 3 * x**4 + 6 * x**3 + 2 * x**2 + x + 9,
    "formula": lambda x: 2 * np.exp(x) + 3 * np.sin(x) * x**5,
}


def load_toy_regression(function: str = "polynomial", seed: int = 0, n_train: int = 1000,
                        n_test: int = 1000, n_val: int = 200) -> Dataset:
    """GDSolver toy task: x ~ U(-1, 1)^3, targets f(x1), f(x2) (2 outputs; x3 is a distractor).

    The digest gives input dim 3, output dim 2 and the four functions, not how three inputs map
    to two outputs; applying f elementwise to the first two inputs is our choice.
    1000 training points and 1000 freshly sampled test points as in the official code.
    """
    if function not in TOY_FUNCTIONS:
        raise ValueError(f"unknown toy function {function!r}; accepted: {', '.join(TOY_FUNCTIONS)}")
    rng = np.random.default_rng(1000 + seed)
    n = n_train + n_val + n_test
    x = rng.uniform(-1, 1, size=(n, 3))
    y = TOY_FUNCTIONS[function](x[:, :2])
    idx = np.arange(n)
    split = (idx[:n_train], idx[n_train:n_train + n_val], idx[n_train + n_val:])
    return _regression(f"toy_{function}", x, y, seed, split=split, function=function)
