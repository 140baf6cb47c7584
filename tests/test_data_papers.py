"""The papers' data (MNIST, CIFAR-10 python version): checked downloads from a local HTTP server
on 127.0.0.1 serving tiny files in the real formats written here, cache reuse, refused archives
and pickles, --data-dir copies and status lines.

The CIFAR-10 batches are written the way the real ones were (Python 2 cPickle, protocol 2: str
as BINSTRING opcodes, numpy's reconstruction named numpy.core.multiarray) by a small pickler
below, so the restricted unpickler sees the same opcodes and globals as with the real files.
"""

import argparse
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from beyondsgd import cli
from beyondsgd import data as D
from beyondsgd.data import cifar as C
from beyondsgd.data import mnist as M
from beyondsgd.data.download import fetch
from beyondsgd.data.idx import DataFileError, write_idx
from local_http import LocalServer

torch.set_num_threads(1)
N_PER_BATCH = 3  # images per tiny batch (the real ones have 10000)

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickles as Python 2 wrote them: every str/bytes as (SHORT_)BINSTRING."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_str8(self, obj):
        raw = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str8

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:  # numpy 1.x's module name, as in the real files
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def _py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def _write_batches(folder: Path, seed: int = 0) -> dict:
    """Six tiny batches + batches.meta in the real layout; returns the uint8 rows and labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in C.BATCHES:
        rows = rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, N_PER_BATCH)]
        (folder / name).write_bytes(_py2_dumps({
            b"batch_label": f"tiny {name}", b"data": rows, b"labels": labels,
            b"filenames": [f"img_{i}.png" for i in range(N_PER_BATCH)]}))
        out[name] = (rows, labels)
    (folder / "batches.meta").write_bytes(_py2_dumps(
        {b"label_names": list(C.CIFAR10_CLASSES), b"num_cases_per_batch": N_PER_BATCH,
         b"num_vis": 3072}))
    return out


def _tar(archive: Path, files: dict[str, bytes], links: dict[str, str] = ()) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        for name, target in dict(links).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return archive


def _cifar_archive(archive: Path, tmp: Path, extra: dict[str, bytes] | None = None) -> dict:
    """A tiny cifar-10-python.tar.gz (members cifar-10-batches-py/<name>, plus readme.html)."""
    arrays = _write_batches(tmp / "batches")
    files = {f"{C.CIFAR10_DIR}/{n}": (tmp / "batches" / n).read_bytes() for n in C.MEMBERS}
    files[f"{C.CIFAR10_DIR}/readme.html"] = b"<html></html>"
    _tar(archive, {**files, **(extra or {})})
    return arrays


def _trust(monkeypatch, archive: Path | None, batches: Path) -> None:
    """Tests substitute the digests of their tiny files for the real ones."""
    if archive is not None:
        monkeypatch.setattr(C, "CIFAR10_ARCHIVE_MD5", {C.CIFAR10_ARCHIVE: _md5(archive)})
    monkeypatch.setattr(C, "CIFAR10_MEMBER_MD5", {n: _md5(batches / n) for n in C.MEMBERS})


_Server = LocalServer


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    # setenv first so that monkeypatch restores whatever cli._apply_flags sets later
    for var in cli.DATA_ENV:
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setenv("BEYONDSGD_DATA", str(tmp_path / "default-cache"))
    return monkeypatch


def _left_in(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


# ---- CIFAR-10 --------------------------------------------------------------------------------
def test_cifar_download_extract_load_and_cache_reuse(tmp_path, clean_env):
    served = tmp_path / "served"
    arrays = _cifar_archive(served / C.CIFAR10_ARCHIVE, tmp_path)
    _trust(clean_env, served / C.CIFAR10_ARCHIVE, tmp_path / "batches")
    cache = tmp_path / "default-cache" / "cifar10"
    assert "--download" in C.cifar10_status()
    with _Server(served) as srv:
        ds = D.load_cifar10(download=True, base_url=srv.url, val_size=4)
        assert srv.requests == ["/" + C.CIFAR10_ARCHIVE]
        again = D.load_cifar10(download=True, base_url=srv.url, val_size=4)
        assert srv.requests == ["/" + C.CIFAR10_ARCHIVE], "the second call must use the cache"
    assert C.cifar10_status() is None
    # only the expected members were extracted (readme.html skipped), no temporary leftovers
    assert sorted(os.listdir(cache / C.CIFAR10_DIR)) == sorted(C.MEMBERS)
    assert sorted(os.listdir(cache)) == sorted([C.CIFAR10_ARCHIVE, C.CIFAR10_DIR])
    n_train = 5 * N_PER_BATCH
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (n_train - 4, 4, N_PER_BATCH)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0
    assert ds.info["checksum_verified"] is True
    rows, labels = arrays["test_batch"]
    assert torch.equal(ds.x_test, torch.from_numpy(rows.reshape(-1, 3, 32, 32) / np.float32(255)))
    assert ds.y_test.tolist() == labels
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_val, again.y_val)
    # train + val are exactly the five training batches, in file order within each part
    all_rows = np.concatenate([arrays[b][0] for b in C.TRAIN_BATCHES])
    all_labels = sum((arrays[b][1] for b in C.TRAIN_BATCHES), [])
    got = torch.cat([ds.x_train, ds.x_val]).reshape(n_train, -1).mul(255).round().to(torch.uint8)
    assert sorted(map(bytes, got.numpy())) == sorted(map(bytes, all_rows))
    assert sorted(ds.y_train.tolist() + ds.y_val.tolist()) == sorted(all_labels)
    other = D.load_cifar10(val_size=4, seed=1)
    assert not torch.equal(other.x_val, ds.x_val) and torch.equal(other.x_test, ds.x_test)


def test_cifar_pixel_layout_is_planes_of_rows(tmp_path, clean_env):
    """A row is 1024 red, 1024 green, 1024 blue values, each plane row-major (the format page):
    so pixel (row r, column c) of channel k is at k*1024 + r*32 + c."""
    folder = tmp_path / "dir" / C.CIFAR10_DIR
    _write_batches(folder)
    row = np.concatenate([np.full(1024, v, np.uint8) for v in (10, 20, 30)])
    row[0 * 1024 + 0 * 32 + 1] = 200  # red, row 0, column 1
    row[1 * 1024 + 31 * 32 + 0] = 201  # green, row 31, column 0
    row[2 * 1024 + 5 * 32 + 7] = 255  # blue, row 5, column 7
    (folder / "test_batch").write_bytes(_py2_dumps({b"data": np.stack([row, row[::-1]]),
                                                    b"labels": [7, 2]}))
    ds = D.load_cifar10(root=tmp_path / "dir", val_size=1)
    img = ds.x_test[0] * 255
    assert img.shape == (3, 32, 32)
    for k, v in enumerate((10, 20, 30)):
        assert int((img[k].round() == v).sum()) == 1023, f"channel {k}"
    assert img[0, 0, 1] == 200 and img[1, 31, 0] == 201 and img[2, 5, 7] == 255
    assert ds.y_test.tolist() == [7, 2]


def test_cifar_checksum_mismatch_keeps_nothing(tmp_path, clean_env):
    served = tmp_path / "served"
    _cifar_archive(served / C.CIFAR10_ARCHIVE, tmp_path)
    clean_env.setattr(C, "CIFAR10_ARCHIVE_MD5", {C.CIFAR10_ARCHIVE: "0" * 32})
    cache = tmp_path / "cache"
    with _Server(served) as srv, pytest.raises(DataFileError, match="checksum mismatch") as e:
        D.load_cifar10(download=True, base_url=srv.url, cache_dir=cache)
    assert "md5 " + "0" * 32 in str(e.value) and C.CIFAR10_ARCHIVE in str(e.value)
    assert _left_in(cache) == [], "a file with a bad checksum must not be kept"


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_cifar_corrupt_archive_with_matching_checksum(tmp_path, clean_env, damage):
    """The checksum table could be wrong or the user's own archive damaged: the tar reader's
    failure is one clear error and nothing is extracted."""
    served = tmp_path / "served"
    archive = served / C.CIFAR10_ARCHIVE
    _cifar_archive(archive, tmp_path)
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2] if damage == "truncated"
                        else bytes(b ^ 0x5A for b in raw))
    _trust(clean_env, archive, tmp_path / "batches")
    cache = tmp_path / "cache"
    with _Server(served) as srv, pytest.raises(DataFileError, match="corrupt or truncated"):
        D.load_cifar10(download=True, base_url=srv.url, cache_dir=cache)
    assert _left_in(cache) == [C.CIFAR10_ARCHIVE], "nothing extracted, no temporary folder"


def test_cifar_truncated_download_fails_the_checksum(tmp_path, clean_env):
    served = tmp_path / "served"
    archive = served / C.CIFAR10_ARCHIVE
    _cifar_archive(archive, tmp_path)
    _trust(clean_env, archive, tmp_path / "batches")
    archive.write_bytes(archive.read_bytes()[:-100])
    with _Server(served) as srv, pytest.raises(DataFileError, match="checksum mismatch"):
        D.load_cifar10(download=True, base_url=srv.url, cache_dir=tmp_path / "cache")
    assert _left_in(tmp_path / "cache") == []


@pytest.mark.parametrize("name,match", [
    ("../evil", "outside"),
    (f"{C.CIFAR10_DIR}/../../evil", "outside"),
    ("/tmp/beyondsgd-test-evil", "outside"),
    ("..\\evil", "outside"),
])
def test_cifar_archive_with_path_traversal_is_refused(tmp_path, clean_env, name, match):
    archive = tmp_path / "user" / C.CIFAR10_ARCHIVE
    _cifar_archive(archive, tmp_path, extra={name: b"owned"})
    _trust(clean_env, archive, tmp_path / "batches")
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(DataFileError, match=match) as e:
        D.load_cifar10(root=tmp_path / "user", cache_dir=cache)
    assert repr(name) in str(e.value)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "evil").exists()
    assert not Path("/tmp/beyondsgd-test-evil").exists()
    assert _left_in(cache) == []


def test_cifar_archive_with_a_link_member_is_refused(tmp_path, clean_env):
    batches = tmp_path / "batches"
    _write_batches(batches)
    files = {f"{C.CIFAR10_DIR}/{n}": (batches / n).read_bytes() for n in C.MEMBERS
             if n != "data_batch_2"}
    archive = _tar(tmp_path / "user" / C.CIFAR10_ARCHIVE, files,
                   links={f"{C.CIFAR10_DIR}/data_batch_2": "/etc/passwd"})
    _trust(clean_env, archive, batches)
    with pytest.raises(DataFileError, match="not a regular file"):
        D.load_cifar10(root=tmp_path / "user", cache_dir=tmp_path / "cache")


def test_cifar_user_archive_in_data_dir_is_checked_and_extracted_to_the_cache(tmp_path,
                                                                              clean_env):
    user = tmp_path / "user"
    _cifar_archive(user / C.CIFAR10_ARCHIVE, tmp_path)
    before = _md5(user / C.CIFAR10_ARCHIVE)
    clean_env.setenv("BEYONDSGD_CIFAR10", str(user))
    assert C.cifar10_status() is None
    with pytest.raises(DataFileError, match="differs from the published"):
        D.load_cifar10()  # the real digest: a tiny archive is not CIFAR-10
    _trust(clean_env, user / C.CIFAR10_ARCHIVE, tmp_path / "batches")
    ds = D.load_cifar10(val_size=1)
    cache = tmp_path / "default-cache" / "cifar10"
    assert ds.info["root"] == str(cache / C.CIFAR10_DIR)
    assert os.listdir(user) == [C.CIFAR10_ARCHIVE] and _md5(user / C.CIFAR10_ARCHIVE) == before


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_pickles(marker: Path) -> dict[str, tuple[bytes, str]]:
    """Pickles that a plain pickle.load would turn into code execution or foreign objects."""
    return {
        "os.system": (pickle.dumps(_Evil(marker), protocol=2), f"{os.system.__module__}.system"),
        "os.system in data": (_py2_dumps({b"data": _Evil(marker), b"labels": []}),
                              f"{os.system.__module__}.system"),
        "eval": (b"cbuiltins\neval\n(Vopen(%r,'w')\ntR." % str(marker), "builtins.eval"),
        "unimportable": (b"cno_such_module_xyz\nf\n(tR.", "no_such_module_xyz.f"),
        # a modern protocol-2 pickle of bytes needs _codecs.encode: the real files do not
        "py3 bytes": (pickle.dumps({b"data": b"x"}, protocol=2), "_codecs.encode"),
        "object dtype": (_py2_dumps({b"data": np.array([marker], dtype=object)}), "dtype"),
        "ndarray subclass": (_py2_dumps({b"data": np.ma.masked_array([1, 2])}), "refus"),
    }


@pytest.mark.parametrize("case", list(_evil_pickles(Path("x"))))
def test_malicious_pickle_is_refused_without_running(tmp_path, clean_env, case):
    marker = tmp_path / "pwned"
    raw, named = _evil_pickles(marker)[case]
    folder = tmp_path / "dir"
    _write_batches(folder)
    (folder / "data_batch_3").write_bytes(raw)
    with pytest.raises(D.UnsafePickleError, match="refus") as e:
        D.load_cifar10(root=folder, val_size=1)  # explicit: the user pointed at these files
    assert named in str(e.value) and str(folder / "data_batch_3") in str(e.value)
    assert not marker.exists(), "the pickle's payload ran"
    assert isinstance(e.value, DataFileError)  # the CLI prints it as one line, exit 2


def test_the_evil_pickle_is_live(tmp_path):
    """The payload above really runs under a plain pickle.loads (so the refusal test can fail)."""
    marker = tmp_path / "pwned"
    pickle.loads(_evil_pickles(marker)["os.system in data"][0], encoding="bytes")
    assert marker.exists()


def test_cached_batches_are_unpickled_only_when_their_md5_matches(tmp_path, clean_env):
    cache = tmp_path / "cache"
    _write_batches(cache / C.CIFAR10_DIR)
    _trust(clean_env, None, cache / C.CIFAR10_DIR)
    assert len(D.load_cifar10(cache_dir=cache, val_size=1).x_test) == N_PER_BATCH
    (cache / C.CIFAR10_DIR / "data_batch_4").write_bytes(
        pickle.dumps({b"data": _Evil(tmp_path / "pwned")}, protocol=2))

    def boom(raw):
        raise AssertionError("a cached batch with a wrong md5 was unpickled")
    clean_env.setattr(C, "restricted_loads", boom)
    with pytest.raises(DataFileError, match="data_batch_4: md5 .* differs from the published"):
        D.load_cifar10(cache_dir=cache)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("case", ["truncated", "not a dict", "wrong shape", "bad labels"])
def test_garbled_batches_are_clear_errors(tmp_path, clean_env, case):
    folder = tmp_path / "dir" / C.CIFAR10_DIR
    _write_batches(folder)
    good = (folder / "data_batch_1").read_bytes()
    raw = {"truncated": good[: len(good) // 2],
           "not a dict": _py2_dumps([1, 2, 3]),
           "wrong shape": _py2_dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
           "bad labels": _py2_dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}),
           }[case]
    (folder / "data_batch_1").write_bytes(raw)
    with pytest.raises(DataFileError, match="data_batch_1") as e:
        D.load_cifar10(root=tmp_path / "dir")
    assert "\n" not in str(e.value)


def test_cifar_data_dir_flag_and_extracted_copies(tmp_path, clean_env):
    parent = tmp_path / "copy"
    arrays = _write_batches(parent / C.CIFAR10_DIR)
    assert "BEYONDSGD_CIFAR10" in cli.DATA_ENV
    cli._apply_flags(argparse.Namespace(data_dir=str(parent), threads=1))
    assert os.environ["BEYONDSGD_CIFAR10"] == str(parent)
    assert C.cifar10_status() is None
    a = D.load_cifar10(val_size=2)
    b = D.load_cifar10(root=parent / C.CIFAR10_DIR, val_size=2)  # the folder itself
    assert a.info["root"] == b.info["root"] == str(parent / C.CIFAR10_DIR)
    assert a.info["checksum_verified"] is False  # pointed at by the user, not checked
    assert torch.equal(a.x_train, b.x_train)
    assert torch.equal(a.x_test[0].flatten(),
                       torch.from_numpy(arrays["test_batch"][0][0] / np.float32(255)))
    with pytest.raises(ValueError, match=r"val_size must be in \[0, 15\), got 15"):
        D.load_cifar10(val_size=15)
    with pytest.raises(ValueError, match="val_size must be an integer >= 0, got -1"):
        D.load_cifar10(val_size=-1)


def test_cifar_missing_data_status_line_and_error(tmp_path, clean_env):
    cache = tmp_path / "default-cache" / "cifar10"
    msg = C.cifar10_status()
    assert msg.count("\n") == 0 and str(cache / C.CIFAR10_DIR) in msg
    assert "--download" in msg and "--data-dir" in msg and "$BEYONDSGD_CIFAR10" in msg
    with pytest.raises(DataFileError, match="--download") as e:
        D.load_cifar10()
    assert str(cache / C.CIFAR10_DIR) in str(e.value)
    user = tmp_path / "user"
    _write_batches(user / C.CIFAR10_DIR)
    for name in ("data_batch_4", "test_batch"):
        (user / C.CIFAR10_DIR / name).unlink()
    msg = C.cifar10_status(root=user)
    assert "from --data-dir" in msg and "lacks data_batch_4, test_batch" in msg
    assert C.cifar10_status(root=user, download=True) is None
    clean_env.setenv("BEYONDSGD_DOWNLOAD", "1")
    assert C.cifar10_status() is None
    clean_env.delenv("BEYONDSGD_DOWNLOAD")
    cache.mkdir(parents=True)
    (cache / C.CIFAR10_ARCHIVE).write_bytes(b"")  # an archive to extract counts as present
    assert C.cifar10_status() is None


# ---- MNIST -----------------------------------------------------------------------------------
def _tiny_mnist(root: Path) -> dict:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 12, dtype=np.uint8),
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 4, dtype=np.uint8)}
    for name, a in arrays.items():
        write_idx(root / name, a)
    return arrays


def _trust_mnist(monkeypatch, served: Path) -> None:
    names = list(M.MNIST_SHA256)
    monkeypatch.setattr(M, "MNIST_SHA256", {
        n: hashlib.sha256((served / n).read_bytes()).hexdigest() for n in names})
    monkeypatch.setattr(M, "MNIST_MD5", {n: _md5(served / n) for n in names})


def test_mnist_download_checks_both_digests_and_reuses_the_cache(tmp_path, clean_env):
    served = tmp_path / "served"
    arrays = _tiny_mnist(served)
    _trust_mnist(clean_env, served)
    cache = tmp_path / "default-cache" / "mnist"
    assert "--download" in D.mnist_status()
    with _Server(served) as srv:
        ds = D.load_mnist(download=True, base_url=srv.url, val_size=2)
        assert sorted(srv.requests) == sorted("/" + n for n in arrays)
        D.load_mnist(download=True, base_url=srv.url, val_size=2)
        assert len(srv.requests) == 4, "the second call must use the cache"
    assert D.mnist_status() is None and sorted(os.listdir(cache)) == sorted(arrays)
    assert ds.x_train.shape == (10, 1, 28, 28) and ds.x_test.dtype == torch.float32
    expect = torch.from_numpy(arrays["t10k-images-idx3-ubyte.gz"] / np.float32(255))
    assert torch.equal(ds.x_test[:, 0], expect)


def test_mnist_md5_mismatch_alone_refuses_the_file(tmp_path, clean_env):
    served = tmp_path / "served"
    _tiny_mnist(served)
    _trust_mnist(clean_env, served)
    clean_env.setitem(M.MNIST_MD5, "t10k-labels-idx1-ubyte.gz", "f" * 32)
    cache = tmp_path / "cache"
    with _Server(served) as srv, pytest.raises(DataFileError, match="expected md5 f{32}"):
        D.load_mnist(download=True, base_url=srv.url, cache_dir=cache)
    assert "t10k-labels-idx1-ubyte.gz" not in os.listdir(cache)
    assert not any(p.suffix == ".part" for p in cache.iterdir())


def test_mnist_corrupt_download_with_matching_digests(tmp_path, clean_env):
    served = tmp_path / "served"
    _tiny_mnist(served)
    p = served / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:40])
    _trust_mnist(clean_env, served)
    with _Server(served) as srv, pytest.raises(DataFileError, match="corrupt gzip"):
        D.load_mnist(download=True, base_url=srv.url, cache_dir=tmp_path / "cache")


def test_mnist_data_dir(tmp_path, clean_env):
    user = tmp_path / "user"
    arrays = _tiny_mnist(user)
    for name, a in arrays.items():  # uncompressed copies are read too
        (user / name).unlink()
        write_idx(user / name[:-3], a)
    assert all((user / n[:-3]).read_bytes()[:2] == b"\x00\x00" for n in arrays)  # raw IDX
    cli._apply_flags(argparse.Namespace(data_dir=str(user), threads=1))
    assert D.mnist_status() is None
    ds = D.load_mnist(val_size=2)
    assert ds.info["root"] == str(user) and len(ds.x_test) == 4


def test_real_digest_tables_are_complete_and_well_formed():
    assert set(M.MNIST_SHA256) == set(M.MNIST_MD5) == {n + ".gz" for n in M.IDX_FILES.values()}
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in M.MNIST_SHA256.values())
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in M.MNIST_MD5.values())
    assert set(C.CIFAR10_MEMBER_MD5) == set(C.MEMBERS)
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in C.CIFAR10_MEMBER_MD5.values())
    assert list(C.CIFAR10_ARCHIVE_MD5) == ["cifar-10-python.tar.gz"]


def test_fetch_refuses_a_download_without_a_digest(tmp_path):
    with pytest.raises(ValueError, match="needs an expected sha256 or md5"):
        fetch("http://127.0.0.1:9/x", tmp_path / "x", None)
    assert not (tmp_path / "x").exists()
