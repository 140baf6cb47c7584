"""Datasets: the IDX reader against hand-made bytes, checked downloads from a local HTTP server,
split determinism and clear errors."""

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from beyondsgd import data as D
from beyondsgd.data import datasets as DS
from beyondsgd.data import mnist as M
from beyondsgd.data.idx import DataFileError, parse_idx, read_idx, write_idx
from local_http import LocalServer


def _idx_bytes(code: int, shape: tuple, payload: bytes) -> bytes:
    """IDX bytes written by hand from the format description (not with write_idx)."""
    return bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape) \
        + payload


def test_idx_reader_uint8_by_hand(tmp_path):
    pixels = bytes(range(24))
    raw = _idx_bytes(0x08, (2, 3, 4), pixels)
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    for name in ("a", "a.gz"):
        arr = read_idx(tmp_path / name)
        assert arr.shape == (2, 3, 4) and arr.dtype == np.uint8
        assert arr[1, 2, 3] == 23 and arr[0, 1, 0] == 4


def test_idx_reader_big_endian_int32_and_float32():
    ints = parse_idx(_idx_bytes(0x0C, (3,), struct.pack(">iii", 1, -2, 70000)))
    assert ints.tolist() == [1, -2, 70000]
    floats = parse_idx(_idx_bytes(0x0D, (2,), struct.pack(">ff", 1.5, -0.25)))
    assert floats.tolist() == [1.5, -0.25]


def test_idx_roundtrip_writer(tmp_path):
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    b = np.array([[1.0, -2.0]], dtype=np.float64)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", a)), a)
    assert np.array_equal(read_idx(write_idx(tmp_path / "b", b)), b)


@pytest.mark.parametrize("raw,match", [
    (b"\x01\x02\x08\x01", "bad magic"),
    (_idx_bytes(0x07, (1,), b"\x00"), "unknown IDX type"),
    (_idx_bytes(0x08, (10,), b"\x00" * 9), "corrupt IDX"),
])
def test_idx_corrupt_files_name_the_path(tmp_path, raw, match):
    p = tmp_path / "bad-idx"
    p.write_bytes(raw)
    with pytest.raises(DataFileError, match=match) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_corrupt_gzip(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 10)[:15])
    with pytest.raises(DataFileError, match="corrupt gzip"):
        read_idx(p)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DataFileError) as e:
        D.load_fashion_mnist(root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "download" in msg


def _write_tiny_mnist(root: Path, n_train=20, n_test=10, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, a in arrays.items():
        write_idx(root / name, a)
    return arrays


_Server = LocalServer


def _sums(root: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir()}


def test_mnist_download_from_local_server(tmp_path, monkeypatch):
    served = tmp_path / "served"
    arrays = _write_tiny_mnist(served)
    monkeypatch.setattr(M, "MNIST_SHA256", _sums(served))
    monkeypatch.setattr(M, "MNIST_MD5", {})  # the real MD5s are for the real files
    cache = tmp_path / "cache"
    with _Server(served) as srv:
        ds = D.load_mnist(download=True, base_url=srv.url, cache_dir=cache, val_size=5)
        # second call uses the cache: works with the server gone
    ds2 = D.load_mnist(download=True, base_url="http://127.0.0.1:9/", cache_dir=cache, val_size=5)
    assert len(ds.x_train) == 15 and len(ds.x_val) == 5 and len(ds.x_test) == 10
    assert ds.x_train.shape[1:] == (1, 28, 28) and ds.x_train.max() <= 1.0
    assert torch.equal(ds.x_test, ds2.x_test)
    expect = torch.from_numpy(arrays["t10k-images-idx3-ubyte.gz"].astype(np.float32) / 255)
    assert torch.equal(ds.x_test[:, 0], expect)


def test_download_checksum_mismatch_fails_clearly(tmp_path, monkeypatch):
    served = tmp_path / "served"
    _write_tiny_mnist(served)
    bad = {k: "0" * 64 for k in _sums(served)}
    monkeypatch.setattr(M, "FASHION_MNIST_SHA256", bad)
    cache = tmp_path / "cache"
    with _Server(served) as srv, pytest.raises(DataFileError, match="checksum mismatch"):
        D.load_fashion_mnist(root=tmp_path / "empty", download=True, base_url=srv.url,
                             cache_dir=cache)
    assert not any(cache.glob("*.gz")), "a file with a bad checksum must not be kept"


def test_download_unreachable_server_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "MNIST_SHA256", {"train-images-idx3-ubyte.gz": "0" * 64})
    with pytest.raises(DataFileError, match="could not download"):
        D.load_mnist(download=True, base_url="http://127.0.0.1:9/", cache_dir=tmp_path)


def test_mnist_without_files_says_download():
    with pytest.raises(DataFileError, match="download=True"):
        D.load_mnist(root="/nonexistent/mnist")


@pytest.mark.skipif(not M.FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist missing")
def test_fashion_mnist_debian_package():
    ds = D.load_fashion_mnist(seed=0)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (55000, 5000, 10000)
    assert ds.x_train.dtype == torch.float32 and 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    assert sorted(ds.y_test.unique().tolist()) == list(range(10))
    ds1 = D.load_fashion_mnist(seed=1)
    assert not torch.equal(ds.y_val, ds1.y_val)
    assert torch.equal(ds.x_test, ds1.x_test)  # the official test set never changes


def test_splits_are_deterministic_and_disjoint():
    a, b, c = D.load_digits(seed=0), D.load_digits(seed=0), D.load_digits(seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    tr, va, te = DS._split_three(1797, 0, 0.2, 0.2)
    assert not (set(tr) & set(va)) and not (set(tr) & set(te)) and not (set(va) & set(te))
    # standardised with training statistics
    assert a.x_train.mean(0).abs().max() < 1e-5


def test_mnist1d_is_generated_locally_and_restores_numpy_rng(tmp_path, monkeypatch):
    monkeypatch.setenv("BEYONDSGD_DATA", str(tmp_path))  # empty cache: really generate
    np.random.seed(123)
    expected = np.random.get_state()[1].copy()
    ds = D.load_mnist1d(seed=0)
    assert np.array_equal(np.random.get_state()[1], expected)
    assert list(tmp_path.glob("mnist1d_*.npz")), "generated data are cached"
    cached = D.load_mnist1d(seed=0)
    assert torch.equal(cached.x_train, ds.x_train) and torch.equal(cached.y_test, ds.y_test)
    assert ds.x_train.shape[1:] == (40,) and ds.num_classes == 10
    assert len(ds.x_train) + len(ds.x_val) == 4000 and len(ds.x_test) == 1000


def test_regression_sets():
    for ds in (D.load_diabetes(), D.load_friedman1(), D.load_toy_regression("formula")):
        assert ds.task == "regression" and ds.y_train.ndim == 2
        assert abs(float(ds.y_train.mean())) < 1e-4  # standardised targets
    toy = D.load_toy_regression("affine", n_train=50, n_test=30, n_val=10)
    assert toy.y_train.shape == (50, 2) and len(toy.x_test) == 30
    with pytest.raises(ValueError, match="accepted: identity, affine"):
        D.load_toy_regression("cubic")


def test_subsample_train():
    ds = D.load_digits()
    half = ds.subsample_train(0.5, seed=0)
    assert len(half.x_train) == round(0.5 * len(ds.x_train))
    assert torch.equal(half.x_test, ds.x_test)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ds.subsample_train(1.5)


# --------------------------------------------------------------------------------------------
# data availability without loading (beyondsgd list, pre-flight checks)
# --------------------------------------------------------------------------------------------
def _no_reading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a status check must not read data files")
    monkeypatch.setattr(M, "read_idx", boom)


def test_fashion_mnist_status_agrees_with_the_loader(tmp_path, monkeypatch):
    monkeypatch.delenv("BEYONDSGD_FASHION_MNIST", raising=False)
    monkeypatch.delenv("BEYONDSGD_DOWNLOAD", raising=False)
    root = tmp_path / "fm"
    root.mkdir()
    with monkeypatch.context() as m:
        _no_reading(m)
        msg = D.fashion_mnist_status(root)
    assert str(root) in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and "--download" in msg and "\n" not in msg
    with pytest.raises(DataFileError):
        D.load_fashion_mnist(root=root)
    _write_tiny_mnist(root)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    msg = D.fashion_mnist_status(root)
    assert "lacks t10k-labels-idx1-ubyte" in msg and "train-images" not in msg
    with pytest.raises(DataFileError):
        D.load_fashion_mnist(root=root)
    _write_tiny_mnist(root)
    with monkeypatch.context() as m:
        _no_reading(m)
        assert D.fashion_mnist_status(root) is None
    assert len(D.load_fashion_mnist(root=root, val_size=5).x_test) == 10
    assert D.fashion_mnist_status(tmp_path / "none", download=True) is None


def test_fashion_mnist_status_default_search(tmp_path, monkeypatch):
    """No root: the Debian directory, then the cache; a partial Debian directory does not hide a
    complete cache (the loader picks the same directory)."""
    monkeypatch.delenv("BEYONDSGD_FASHION_MNIST", raising=False)
    monkeypatch.delenv("BEYONDSGD_DOWNLOAD", raising=False)
    debian, cache = tmp_path / "debian", tmp_path / "cache"
    monkeypatch.setattr(M, "FASHION_MNIST_DIR", debian)
    monkeypatch.setenv("BEYONDSGD_DATA", str(cache))
    msg = D.fashion_mnist_status()
    assert str(debian) in msg and str(cache / "fashion-mnist") in msg
    assert "$BEYONDSGD_FASHION_MNIST" in msg
    _write_tiny_mnist(debian, n_train=20)
    (debian / "t10k-images-idx3-ubyte.gz").unlink()
    _write_tiny_mnist(cache / "fashion-mnist", n_train=30)
    assert D.fashion_mnist_status() is None
    ds = D.load_fashion_mnist(val_size=5)
    assert ds.info["root"] == str(cache / "fashion-mnist") and len(ds.x_train) == 25
    monkeypatch.setenv("BEYONDSGD_FASHION_MNIST", str(tmp_path / "elsewhere"))
    assert "from --data-dir" in D.fashion_mnist_status()
    monkeypatch.setenv("BEYONDSGD_DOWNLOAD", "1")
    assert D.fashion_mnist_status() is None


def test_mnist_status(tmp_path, monkeypatch):
    monkeypatch.delenv("BEYONDSGD_DOWNLOAD", raising=False)
    monkeypatch.setenv("BEYONDSGD_MNIST", str(tmp_path))
    assert "--download" in D.mnist_status() and str(tmp_path) in D.mnist_status()
    _write_tiny_mnist(tmp_path)
    assert D.mnist_status() is None


def test_problem_data_status(tmp_path, monkeypatch):
    from beyondsgd.bench.problems import registry as P

    monkeypatch.delenv("BEYONDSGD_DOWNLOAD", raising=False)
    monkeypatch.setenv("BEYONDSGD_FASHION_MNIST", str(tmp_path))
    fmnist = [p for p in P.PROBLEMS.values() if p.name.startswith("fmnist")]
    assert len(fmnist) >= 3
    for p in fmnist:
        assert "apt-get install dataset-fashion-mnist" in p.data_status()
    _write_tiny_mnist(tmp_path)
    assert all(p.data_status() is None for p in fmnist)
    # the bench extra is installed in the test environment
    for name in ("digits_mlp", "mnist1d_mlp", "diabetes_mlp", "toy_identity_mlp"):
        assert P.PROBLEMS[name].data_status() is None
    check = P._needs_module("no_such_module_xyz", "no-such-package", "the XYZ data")
    assert check() == ("the XYZ data needs no-such-package, which is not installed; get it: "
                       "pip install 'beyondsgd[bench]'")


@pytest.mark.parametrize("loader", ["load_fashion_mnist", "load_mnist"])
@pytest.mark.parametrize("name,array,needle", [
    ("train-labels-idx1-ubyte.gz", np.array([0, 1, 200] + [3] * 17, dtype=np.uint8),
     "labels must be integers in 0..9, got 1 outside (e.g. 200"),
    ("t10k-labels-idx1-ubyte.gz", np.full(10, -1, dtype=np.int8), "e.g. -1"),
    ("t10k-labels-idx1-ubyte.gz", np.zeros(10, dtype=np.float32), "labels must be N integers"),
    ("train-labels-idx1-ubyte.gz", np.zeros((20, 2), dtype=np.uint8), "of shape (20, 2)"),
    ("train-images-idx3-ubyte.gz", np.zeros((20, 784), dtype=np.uint8), "images must be uint8"),
])
def test_idx_labels_and_images_are_checked(tmp_path, loader, name, array, needle):
    """A label byte of 200 was read as class 200 of a 10-class problem (the CIFAR-10 reader
    checks its labels; the IDX loaders did not)."""
    root = tmp_path / "data"
    _write_tiny_mnist(root)
    write_idx(root / name, array)
    with pytest.raises(DataFileError) as err:
        getattr(D, loader)(root=root, val_size=5)
    msg = str(err.value)
    assert needle in msg and name in msg and "\n" not in msg, msg
