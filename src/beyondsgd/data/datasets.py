"""Datasets as in-memory tensors with a fixed train/validation/test split chosen by a seed.

Every loader returns a ``Dataset``. Classification labels are int64 class indices; regression
targets are float32 of shape (N, outputs), standardised with the *training* mean and std (the
scaling is kept in ``info`` so MSE can be converted back to the original units).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .download import default_cache_dir


def random_rows(n: int, keep: int, seed: int) -> torch.Tensor:
    """``keep`` of the row indices ``0..n-1``, drawn by ``seed``, in increasing order (the rule
    of every fixed random subset: a train fraction, a streamed problem's method pool)."""
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep]
    return idx.sort().values


def fraction_rows(n: int, fraction: float, seed: int) -> torch.Tensor:
    """:func:`random_rows` keeping ``round(fraction * n)`` rows (at least one)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return random_rows(n, max(1, int(round(fraction * n))), seed)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The minibatch order of epoch ``epoch``: a permutation of ``0..n-1`` drawn from
    ``(seed, epoch)`` alone, so a resumed trial needs no saved state (in memory and streamed)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


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
        idx = fraction_rows(self.x_train.shape[0], fraction, seed).to(self.x_train.device)
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
    """uint8 images -> float32 pixel / 255 in [0, 1]; (N, H, W) gets a channel axis
    (N, 1, H, W), (N, C, H, W) is kept. ``val_size`` images, chosen by ``seed``, are carved from
    the training set (both parts keep the file order)."""
    if not 0 <= val_size < len(train_x):
        raise ValueError(f"val_size must be in [0, {len(train_x)}), got {val_size}")
    p = _perm(len(train_x), seed)
    va, tr = np.sort(p[:val_size]), np.sort(p[val_size:])

    def f(a: np.ndarray) -> torch.Tensor:
        x = a.astype(np.float32)
        x /= np.float32(255.0)  # in place: CIFAR-10's training set is 0.6 GB as float32
        x = torch.from_numpy(x)
        return x.unsqueeze(1) if x.ndim == 3 else x

    g = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return Dataset(name, "classification", f(train_x[tr]), g(train_y[tr]), f(train_x[va]),
                   g(train_y[va]), f(test_x), g(test_y), num_classes=10,
                   info={"seed": seed, **info})


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
