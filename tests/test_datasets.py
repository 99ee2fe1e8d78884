"""Dataset loaders and the strict IDX reader, on small files the tests write themselves."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits
from sklearn.model_selection import train_test_split

from sparseprune.datasets import (
    FASHION_MNIST_DIR,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_synthetic,
    read_idx,
)

# Reference IDX encoder, written from the format description (not from the reader).
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
          np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr)
    head = bytes([0, 0, _CODES[arr.dtype], arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_roundtrip(tmp_path, gz, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    p = write(tmp_path / "x-idx3", idx_bytes(arr), gz)
    got = read_idx(p)
    assert got.shape == arr.shape
    assert got.dtype == np.dtype(dtype)  # native byte order
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, arr)


def test_read_idx_one_dim_and_empty(tmp_path):
    p = write(tmp_path / "lab", idx_bytes(np.arange(7, dtype=np.uint8)), False)
    np.testing.assert_array_equal(read_idx(p), np.arange(7))
    p = write(tmp_path / "empty", idx_bytes(np.zeros((0, 28, 28), dtype=np.uint8)), True)
    assert read_idx(p).shape == (0, 28, 28)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("mutate, match", [
    (lambda b: b"\x01" + b[1:], "bad magic number"),
    (lambda b: b[:2] + b"\x07" + b[3:], "unknown element type code 0x07"),
    (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
    (lambda b: b[:2], "shorter than the 4-byte magic"),
    (lambda b: b[:9], "header needs 16 bytes"),
    (lambda b: b[:-1], "truncated: dimensions"),
    (lambda b: b + b"\x00\x00", "2 unexpected trailing bytes"),
])
def test_read_idx_rejects_corrupt(tmp_path, gz, mutate, match):
    good = idx_bytes(np.ones((2, 3, 4), dtype=np.uint8))
    p = write(tmp_path / "bad-idx3-ubyte", mutate(good), gz)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(p)
    assert str(p) in str(info.value)


def test_read_idx_corrupt_gzip(tmp_path):
    full = gzip.compress(idx_bytes(np.ones((50, 50), dtype=np.uint8)))
    p = tmp_path / "cut.gz"
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated gzip") as info:
        read_idx(p)
    assert str(p) in str(info.value)


def test_read_idx_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


def make_fashion_dir(root: Path, gz: bool, n_train: int = 12, n_test: int = 5, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labs = rng.integers(0, 10, size=n, dtype=np.uint8)
        write(root / f"{split}-images-idx3-ubyte", idx_bytes(imgs), gz)
        write(root / f"{split}-labels-idx1-ubyte", idx_bytes(labs), gz)
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_loader_on_small_files(tmp_path, gz):
    d = make_fashion_dir(tmp_path / "fm", gz)
    ds = load_fashion_mnist(d)
    # Independent expectation: decode with the reference layout directly.
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, size=12, dtype=np.uint8)
    np.testing.assert_allclose(ds.X_train, imgs.reshape(12, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, labs)
    assert ds.X_train.dtype == np.float32 and ds.X_train.flags.c_contiguous
    assert ds.y_train.dtype == np.int64
    assert ds.X_test.shape == (5, 784)
    assert load_fashion_mnist(d, max_train=4).X_train.shape == (4, 784)


def test_fashion_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_fashion_mnist(tmp_path / "missing")
    d = make_fashion_dir(tmp_path / "fm", gz=True)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist(d)
    # images and labels disagree in count
    write(d / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(4, dtype=np.uint8)), False)
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        load_fashion_mnist(d)
    # labels of the wrong type
    (d / "t10k-labels-idx1-ubyte").unlink()
    write(d / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(5, dtype=np.int32)), False)
    with pytest.raises(ValueError, match="unsigned bytes"):
        load_fashion_mnist(d)


def test_digits_split_matches_sklearn():
    ds = load_digits()
    b = sk_load_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(b.data / 16.0, b.target, test_size=0.3, stratify=b.target,
                                              random_state=0)
    np.testing.assert_allclose(ds.X_train, X_tr, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, y_te)
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.describe() == {"name": "digits", "source": "sklearn.datasets.load_digits", "n_train": 1257,
                             "n_test": 540, "n_features": 64, "n_classes": 10}


def test_synthetic_and_dispatch():
    ds = load_synthetic(500, n_features=12, n_classes=3)
    assert ds.X_train.shape == (350, 12) and ds.X_test.shape == (150, 12)
    assert set(np.unique(ds.y_train)) == {0, 1, 2}
    assert load_dataset("synthetic", n_samples=300).X_train.shape[0] == 210
    assert load_dataset("digits", max_train=100).X_train.shape == (100, 64)
    with pytest.raises(ValueError, match="'dataset' parameter must be one of"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="only applies to fashion-mnist"):
        load_dataset("digits", data_dir="/tmp")
    with pytest.raises(ValueError, match="n_samples"):
        load_synthetic(5)


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_if_installed():
    ds = load_fashion_mnist(max_train=1000)
    assert ds.X_train.shape == (1000, 784) and ds.X_test.shape == (10000, 784)
    assert 0.0 <= ds.X_test.min() and ds.X_test.max() <= 1.0
    assert set(np.unique(ds.y_test)) == set(range(10))
