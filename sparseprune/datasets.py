"""Datasets for the demo and the benchmarks, each with a fixed train/test split.

Every loader returns a :class:`Dataset` with float32 features and int64 labels:

- ``digits``: scikit-learn's bundled 8x8 digits, pixels scaled by 1/16, 70/30
  stratified split with ``random_state=0`` (the split the MLP issue's accuracy
  targets use).
- ``fashion-mnist``: the standard IDX files (gzipped or plain), pixels scaled by
  1/255, the official 60k/10k split. The Debian package ``dataset-fashion-mnist``
  installs them in ``/usr/share/datasets/fashion-mnist``.
- ``synthetic``: :func:`sklearn.datasets.make_classification`, any size, 70/30
  stratified split.

The IDX reader is strict: magic number, element type, dimension count, sizes
and the exact byte length are all checked, and every failure is a ``ValueError``
naming the file.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparseprune._validation import check_int

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "Dataset",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_synthetic",
    "read_idx",
]

DATASETS = ("digits", "fashion-mnist", "synthetic")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX element type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Dataset:
    """A classification dataset with a fixed train/test split.

    Attributes
    ----------
    name : str
        ``"digits"``, ``"fashion-mnist"`` or ``"synthetic"``.
    X_train, X_test : ndarray of shape (n, n_features), float32, C-contiguous
    y_train, y_test : ndarray of shape (n,), int64
    source : str
        Where the data came from (for results.json).
    """

    name: str
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    source: str

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def n_classes(self) -> int:
        return int(np.union1d(self.y_train, self.y_test).size)

    def describe(self) -> dict:
        """A JSON-ready summary (sizes and source, no data)."""
        return {
            "name": self.name,
            "source": self.source,
            "n_train": int(self.X_train.shape[0]),
            "n_test": int(self.X_test.shape[0]),
            "n_features": self.n_features,
            "n_classes": self.n_classes,
        }


def _split(name: str, X: np.ndarray, y: np.ndarray, source: str, seed: int) -> Dataset:
    from sklearn.model_selection import train_test_split

    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    return Dataset(name, np.ascontiguousarray(X_tr, dtype=np.float32),
                   np.ascontiguousarray(X_te, dtype=np.float32),
                   y_tr.astype(np.int64), y_te.astype(np.int64), source)


def load_digits(*, split_seed: int = 0) -> Dataset:
    """scikit-learn's digits (1797 x 64), scaled by 1/16, 70/30 stratified split.

    Parameters
    ----------
    split_seed : int, default=0
        ``random_state`` of the split; 0 is the split the project's accuracy targets use.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    X = bunch.data.astype(np.float32) / np.float32(16.0)
    return _split("digits", X, bunch.target, "sklearn.datasets.load_digits", split_seed)


def load_synthetic(n_samples: int = 20000, n_features: int = 40, n_classes: int = 10, *,
                   seed: int = 0) -> Dataset:
    """:func:`sklearn.datasets.make_classification` data, 70/30 stratified split.

    Parameters
    ----------
    n_samples : int, default=20000
        Total rows (train + test), at least 10 per class.
    n_features : int, default=40
        Columns; half of them (at least 2) are informative.
    n_classes : int, default=10
    seed : int, default=0
        Seed for the generator and the split.
    """
    from sklearn.datasets import make_classification

    n_classes = check_int(n_classes, "n_classes", low=2)
    n_features = check_int(n_features, "n_features", low=2)
    n_samples = check_int(n_samples, "n_samples", low=10 * n_classes)
    n_informative = max(2, n_features // 2)
    # make_classification needs n_classes * clusters <= 2 ** n_informative.
    if n_classes > 2 ** n_informative:
        raise ValueError(
            f"The 'n_classes' parameter ({n_classes}) is too large for {n_features} features; "
            f"use at most {2 ** n_informative} classes or more features."
        )
    X, y = make_classification(n_samples=n_samples, n_features=n_features,
                               n_informative=n_informative, n_redundant=n_features // 4,
                               n_classes=n_classes, n_clusters_per_class=1, random_state=seed)
    src = f"sklearn.datasets.make_classification(n_samples={n_samples}, n_features={n_features}, " \
          f"n_classes={n_classes}, random_state={seed})"
    return _split("synthetic", X, y, src, seed)


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, gunzipped when the file starts with the gzip magic."""
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise ValueError(f"IDX file {path} is a directory, not a file.") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"IDX file {path} is a corrupt or truncated gzip stream ({exc}).") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or plain) into a native-endian numpy array.

    The format: two zero bytes, an element-type byte (0x08 ubyte, 0x09 byte,
    0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), a dimension-count byte,
    then one big-endian uint32 per dimension and the data, exactly
    ``prod(dims) * itemsize`` bytes.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    ndarray with the file's shape and dtype (native byte order).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        Naming the file, for a bad magic number, unknown type code, zero
        dimensions, a header or body shorter than announced, trailing bytes,
        or a corrupt gzip stream.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise ValueError(f"IDX file {path} is truncated: {len(buf)} bytes, shorter than the 4-byte magic number.")
    zero, code, ndim = struct.unpack(">HBB", buf[:4])
    if zero != 0:
        raise ValueError(
            f"IDX file {path} has a bad magic number 0x{buf[:4].hex()}: it must start with two zero bytes "
            f"(is this an IDX file?)."
        )
    if code not in _IDX_DTYPES:
        raise ValueError(
            f"IDX file {path} has unknown element type code 0x{code:02x}; "
            f"expected one of {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}."
        )
    if ndim == 0:
        raise ValueError(f"IDX file {path} declares 0 dimensions; expected at least 1.")
    header_len = 4 + 4 * ndim
    if len(buf) < header_len:
        raise ValueError(
            f"IDX file {path} is truncated: header needs {header_len} bytes for {ndim} dimensions, "
            f"file has {len(buf)}."
        )
    dims = struct.unpack(f">{ndim}I", buf[4:header_len])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = len(buf) - header_len
    if body < expected:
        raise ValueError(
            f"IDX file {path} is truncated: dimensions {dims} need {expected} data bytes, file has {body}."
        )
    if body > expected:
        raise ValueError(
            f"IDX file {path} has {body - expected} unexpected trailing bytes after the data "
            f"for dimensions {dims}."
        )
    arr = np.frombuffer(buf, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    return arr.reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(data_dir: Path, stem: str) -> Path:
    for candidate in (data_dir / (stem + ".gz"), data_dir / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {data_dir}; it needs the four standard IDX files "
        f"({', '.join(_FASHION_FILES.values())}, gzipped or plain), e.g. from the Debian package "
        f"dataset-fashion-mnist."
    )


def _check_fashion_pair(img_path: Path, images: np.ndarray, lab_path: Path, labels: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"IDX file {img_path} must hold unsigned bytes of shape (n, rows, cols); "
            f"got {images.dtype} with shape {images.shape}."
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"IDX file {lab_path} must hold unsigned bytes of shape (n,); got {labels.dtype} with shape {labels.shape}."
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"IDX files {img_path} and {lab_path} disagree: {images.shape[0]} images but {labels.shape[0]} labels."
        )
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"IDX file {lab_path} has label {int(labels.max())}; Fashion-MNIST labels are 0..9.")


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, *, max_train: int | None = None) -> Dataset:
    """Fashion-MNIST from the standard IDX files, pixels scaled by 1/255, official 60k/10k split.

    Parameters
    ----------
    data_dir : path, optional
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each gzipped
        with a ``.gz`` suffix or plain). Default: ``/usr/share/datasets/fashion-mnist``.
    max_train : int, optional
        Keep only the first ``max_train`` training rows (the test split is unchanged).

    Raises
    ------
    FileNotFoundError
        If the folder or a file is missing (the message names it).
    ValueError
        If a file is not a valid IDX file or images and labels disagree.
    """
    data_dir = Path(FASHION_MNIST_DIR if data_dir is None else data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST folder {data_dir} does not exist; pass --data-dir with the IDX files "
            f"or install the Debian package dataset-fashion-mnist."
        )
    paths = {key: _find_idx(data_dir, stem) for key, stem in _FASHION_FILES.items()}
    parts = {key: read_idx(p) for key, p in paths.items()}
    for split in ("train", "test"):
        _check_fashion_pair(paths[f"{split}_images"], parts[f"{split}_images"],
                            paths[f"{split}_labels"], parts[f"{split}_labels"])
    scale = np.float32(1.0 / 255.0)

    def flat(images: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(images.reshape(images.shape[0], -1), dtype=np.float32) * scale

    X_tr, y_tr = parts["train_images"], parts["train_labels"]
    if max_train is not None:
        max_train = check_int(max_train, "max_train", low=1)
        X_tr, y_tr = X_tr[:max_train], y_tr[:max_train]
    return Dataset("fashion-mnist", flat(X_tr), flat(parts["test_images"]), y_tr.astype(np.int64),
                   parts["test_labels"].astype(np.int64), str(data_dir))


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, n_samples: int | None = None,
                 max_train: int | None = None) -> Dataset:
    """Load a dataset by name (``"digits"``, ``"fashion-mnist"`` or ``"synthetic"``).

    Parameters
    ----------
    name : str
    data_dir : path, optional
        Only for ``"fashion-mnist"``.
    n_samples : int, optional
        Only for ``"synthetic"`` (default 20000).
    max_train : int, optional
        Subsample the training split to its first ``max_train`` rows.
    """
    if name not in DATASETS:
        raise ValueError(f"The 'dataset' parameter must be one of {', '.join(DATASETS)}. Got {name!r} instead.")
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, max_train=max_train)
    if data_dir is not None:
        raise ValueError(f"The 'data_dir' parameter only applies to fashion-mnist, not to {name}.")
    ds = load_digits() if name == "digits" else load_synthetic(20000 if n_samples is None else n_samples)
    if max_train is not None:
        max_train = check_int(max_train, "max_train", low=1)
    if max_train is not None and ds.X_train.shape[0] > max_train:
        ds = Dataset(ds.name, ds.X_train[:max_train], ds.X_test, ds.y_train[:max_train], ds.y_test, ds.source)
    return ds
